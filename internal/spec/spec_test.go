package spec

import (
	"errors"
	"syscall"
	"testing"
)

func TestNames(t *testing.T) {
	for name, tag := range map[string]Tag{"hub": Broadcast, "switch": VDESwitch, "l3switch": VDESwitchL3} {
		if got, ok := TagOf(name); !ok || got != tag {
			t.Errorf("TagOf(%q) = %v %v, want %v", name, got, ok, tag)
		}
		if tag.String() != name {
			t.Errorf("%d.String() = %q, want %q", tag, tag.String(), name)
		}
	}
	if Any.String() != "any" || Tag(999).String() != "proto999" {
		t.Errorf("Any %q, 999 %q", Any.String(), Tag(999).String())
	}
	if err := RegisterName(Broadcast, "hub"); err != nil {
		t.Errorf("naming hub again: %v", err)
	}
	if err := RegisterName(Broadcast, "other"); !errors.Is(err, syscall.EEXIST) {
		t.Errorf("renaming tag 1: %v, want EEXIST", err)
	}
	if err := RegisterName(700, "switch"); !errors.Is(err, syscall.EEXIST) {
		t.Errorf("tag 700 named switch: %v, want EEXIST", err)
	}
	if err := RegisterName(Any, "x"); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("naming Any: %v, want EINVAL", err)
	}
	if err := RegisterName(701, "spec-test"); err != nil {
		t.Fatal(err)
	}
	if got, ok := TagOf("spec-test"); !ok || got != 701 || Tag(701).String() != "spec-test" {
		t.Errorf("a registered name: %v %v %q", got, ok, Tag(701).String())
	}
}

func TestIsProbe(t *testing.T) {
	f := make([]byte, ProbeLen)
	copy(f, ProbeDst[:])
	f[12], f[13] = ProbeEtherType>>8, ProbeEtherType&0xff
	if !IsProbe(f) || !IsProbe(f[:14]) {
		t.Fatal("a probe is not one")
	}
	for _, bad := range [][]byte{f[:13], nil, append([]byte{0xff}, f[1:]...)} {
		if IsProbe(bad) {
			t.Errorf("IsProbe(%x)", bad)
		}
	}
	g := append([]byte(nil), f...)
	g[13]++
	if IsProbe(g) {
		t.Error("another ethertype is a probe")
	}
}
