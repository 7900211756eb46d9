package policy

import (
	"errors"
	"fmt"
	"slices"
	"syscall"
	"testing"
)

func members(s *PortSet) []int {
	var ps []int
	for p := s.Next(0); p >= 0; p = s.Next(p + 1) {
		ps = append(ps, p)
	}
	return ps
}

func TestPortSet(t *testing.T) {
	s := NewPortSet(10)
	for _, p := range []int{0, 3, 63, 64, 130} {
		s.Add(p)
	}
	if got := members(&s); !slices.Equal(got, []int{0, 3, 63, 64, 130}) {
		t.Fatalf("members %v", got)
	}
	if s.Len() != 5 || !s.Has(64) || s.Has(65) || s.Has(-1) || s.Has(1000) {
		t.Fatalf("Len/Has wrong: %d", s.Len())
	}
	s.Remove(63)
	o := NewPortSet(200)
	o.Add(3)
	o.Add(130)
	o.Add(7)
	s.Intersect(o)
	if got := members(&s); !slices.Equal(got, []int{3, 130}) {
		t.Fatalf("after intersect %v", got)
	}
	var c PortSet
	c.CopyFrom(s)
	s.Clear()
	if s.Len() != 0 || c.Len() != 2 {
		t.Fatalf("copy shares storage: %d %d", s.Len(), c.Len())
	}
}

func TestFirstFree(t *testing.T) {
	var used PortSet
	used.Add(0)
	used.Add(2)
	if p, err := FirstFree(-1, &used, 4); p != 1 || err != nil {
		t.Fatalf("any: %d %v", p, err)
	}
	if p, err := FirstFree(3, &used, 4); p != 3 || err != nil {
		t.Fatalf("want 3: %d %v", p, err)
	}
	for _, want := range []int{2, 4} {
		if _, err := FirstFree(want, &used, 4); !errors.Is(err, syscall.EADDRNOTAVAIL) {
			t.Fatalf("want %d: %v", want, err)
		}
	}
	used.Add(1)
	used.Add(3)
	if _, err := FirstFree(-1, &used, 4); !errors.Is(err, syscall.EADDRNOTAVAIL) {
		t.Fatalf("full: %v", err)
	}
}

// registerRuns makes each run of TestRegister (go test -count) use new tags.
var registerRuns Tag

func TestRegister(t *testing.T) {
	registerRuns++
	tag, name := 1000+2*registerRuns, fmt.Sprint("test-reg-", registerRuns)
	f := func(Network) (Policy, error) { return nil, nil }
	if err := Register(Any, "x", f); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("tag any: %v", err)
	}
	if err := Register(tag, name, f); err != nil {
		t.Fatal(err)
	}
	if err := Register(tag, "other", f); !errors.Is(err, syscall.EEXIST) {
		t.Fatalf("tag twice: %v", err)
	}
	if err := Register(tag+1, name, f); !errors.Is(err, syscall.EEXIST) {
		t.Fatalf("name twice: %v", err)
	}
	if got, ok := TagOf(name); !ok || got != tag || tag.String() != name {
		t.Fatalf("lookup: %v %v", got, ok)
	}
}
