package vdeswitch

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// boundCase is a value of an option and what SetOption must make of it.
type boundCase struct {
	name, value string
	ok          bool
	read        string // when ok: what Option reads back, if not ""
	bad, rng    string // when not ok: the part of value and the range the error names
}

// in is a value SetOption takes.
func in(name, value, read string) boundCase {
	return boundCase{name: name, value: value, ok: true, read: read}
}

// out is a value SetOption refuses, naming bad (all of value or the field
// that is wrong) and the range rng.
func out(name, value, bad, rng string) boundCase {
	return boundCase{name: name, value: value, bad: bad, rng: rng}
}

// TestOptionBounds sets every option just inside and just outside its
// range: the first are taken, the others refused with EINVAL and an error
// that names the option, the value and the range.
func TestOptionBounds(t *testing.T) {
	const ns = time.Nanosecond
	durs := fmt.Sprintf("a duration in %v..%v", MinExpire, MaxExpire)
	loops := fmt.Sprintf("0 (off) or a duration in %v..%v", MinLoopInterval, MaxLoopInterval)
	sizes := fmt.Sprintf("%d..%d", MinHashSize, MaxHashSize)
	vlans := fmt.Sprintf("1..%d", MaxVLAN)
	ports := "0..7" // the rig's network has 8 ports
	for _, c := range []boundCase{
		out("expire", (MinExpire - ns).String(), (MinExpire - ns).String(), durs),
		in("expire", MinExpire.String(), "100ms"),
		in("expire", MaxExpire.String(), "24h0m0s"),
		out("expire", (MaxExpire + ns).String(), (MaxExpire + ns).String(), durs),
		out("expire", "0", "0", durs),
		out("expire", "-1s", "-1s", durs),
		out("expire", "soon", "soon", durs),

		in("loop.interval", "0", "0s"),
		out("loop.interval", "1ns", "1ns", loops),
		out("loop.interval", (MinLoopInterval - ns).String(), (MinLoopInterval - ns).String(), loops),
		in("loop.interval", MinLoopInterval.String(), "10ms"),
		in("loop.interval", MaxLoopInterval.String(), "1h0m0s"),
		out("loop.interval", (MaxLoopInterval + ns).String(), (MaxLoopInterval + ns).String(), loops),
		out("loop.interval", "-1s", "-1s", loops),

		out("hashsize", strconv.Itoa(MinHashSize-1), strconv.Itoa(MinHashSize-1), sizes),
		in("hashsize", strconv.Itoa(MinHashSize), "1"),
		in("hashsize", strconv.Itoa(MaxHashSize), "1048576"),
		out("hashsize", strconv.Itoa(MaxHashSize+1), strconv.Itoa(MaxHashSize+1), sizes),
		out("hashsize", "-1", "-1", sizes),
		out("hashsize", "many", "many", sizes),

		out("vlan.add", "0", "0", vlans),
		in("vlan.add", "1", ""),
		in("vlan.add", strconv.Itoa(MaxVLAN), ""),
		out("vlan.add", strconv.Itoa(MaxVLAN+1), strconv.Itoa(MaxVLAN+1), vlans),
		out("vlan.del", "0", "0", vlans),
		in("vlan.del", strconv.Itoa(MaxVLAN), ""),
		out("vlan.del", strconv.Itoa(MaxVLAN+1), strconv.Itoa(MaxVLAN+1), vlans),

		out("port.vlan", "-1 1", "-1", ports),
		in("port.vlan", "0 1", ""),
		in("port.vlan", "7 4095", ""),
		out("port.vlan", "8 1", "8", ports),
		in("port.vlan", "7 0", ""),
		out("port.vlan", "7 -1", "-1", vlans+", or 0 for none"),
		out("port.vlan", "7 4096", "4096", vlans+", or 0 for none"),

		out("port.trunk", "-1 1", "-1", ports),
		in("port.trunk", "0 1", ""),
		in("port.trunk", "7 1,4095", ""),
		out("port.trunk", "8 1", "8", ports),
		in("port.trunk", "7", ""),
		out("port.trunk", "7 0", "0", vlans),
		out("port.trunk", "7 1,4096", "4096", vlans),
	} {
		r := newRig(t, 2)
		if err := r.sw.SetOption("vlan.add", strconv.Itoa(MaxVLAN)); err != nil {
			t.Fatal(err)
		}
		err := r.sw.SetOption(c.name, c.value)
		if c.ok {
			if err != nil {
				t.Errorf("%s %q: %v", c.name, c.value, err)
				continue
			}
			if c.read != "" {
				if v, err := r.sw.Option(c.name); err != nil || v != c.read {
					t.Errorf("%s %q: reads back %q %v, want %q", c.name, c.value, v, err, c.read)
				}
			}
			continue
		}
		if err == nil {
			t.Errorf("%s %q accepted, want %s", c.name, c.value, c.rng)
			continue
		}
		msg := err.Error()
		if !errors.Is(err, syscall.EINVAL) || !strings.Contains(msg, "option "+c.name) ||
			!strings.Contains(msg, strconv.Quote(c.bad)) || !strings.Contains(msg, "want "+c.rng) {
			t.Errorf("%s %q: error %q, want EINVAL naming the option, %q and %q", c.name, c.value, msg, c.bad, c.rng)
		}
	}
}

// TestRefusedKeepsSetting checks that a refused value leaves the setting
// as it was.
func TestRefusedKeepsSetting(t *testing.T) {
	r := newRig(t, 2)
	for _, c := range [][3]string{
		{"expire", "25h", "2m0s"},
		{"loop.interval", "1ns", "2s"},
		{"hashsize", "1048577", "4096"},
	} {
		if err := r.sw.SetOption(c[0], c[1]); err == nil {
			t.Errorf("%s %q accepted", c[0], c[1])
		}
		if v, _ := r.sw.Option(c[0]); v != c[2] {
			t.Errorf("%s = %q after a refused %q, want %q", c[0], v, c[1], c[2])
		}
	}
}
