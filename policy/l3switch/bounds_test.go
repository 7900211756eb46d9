package l3switch

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestExpireBounds sets expire just inside and just outside its range:
// the first are taken, the others refused with EINVAL and an error that
// names the option, the value and the range.
func TestExpireBounds(t *testing.T) {
	const ns = time.Nanosecond
	p, err := New(&nullNet{})
	if err != nil {
		t.Fatal(err)
	}
	sw := p.(*Switch)
	defer sw.Close()
	rng := fmt.Sprintf("want a duration in %v..%v", MinExpire, MaxExpire)
	for _, c := range []struct {
		value string
		ok    bool
	}{
		{(MinExpire - ns).String(), false},
		{MinExpire.String(), true},
		{MaxExpire.String(), true},
		{(MaxExpire + ns).String(), false},
		{"0", false},
		{"-1s", false},
		{"1ns", false},
		{"soon", false},
	} {
		before, _ := sw.Option("expire")
		err := sw.SetOption("expire", c.value)
		got, _ := sw.Option("expire")
		if c.ok {
			if want, _ := time.ParseDuration(c.value); err != nil || got != want.String() {
				t.Errorf("expire %q: %v, reads back %q", c.value, err, got)
			}
			continue
		}
		if err == nil {
			t.Errorf("expire %q accepted, want %s", c.value, rng)
			continue
		}
		msg := err.Error()
		if !errors.Is(err, syscall.EINVAL) || !strings.Contains(msg, "option expire") ||
			!strings.Contains(msg, strconv.Quote(c.value)) || !strings.Contains(msg, rng) {
			t.Errorf("expire %q: error %q, want EINVAL naming the option, the value and %q", c.value, msg, rng)
		}
		if got != before {
			t.Errorf("expire %q refused but changed it from %q to %q", c.value, before, got)
		}
	}
	for _, name := range []string{"ips", "macs"} {
		if err := sw.SetOption(name, "[]"); !errors.Is(err, syscall.EINVAL) {
			t.Errorf("setting read-only %s: %v, want EINVAL", name, err)
		}
	}
}
