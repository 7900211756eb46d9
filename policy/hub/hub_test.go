package hub

import (
	"errors"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ipn-project/ipn/policy"
	"github.com/ipn-project/ipn/policy/loop"
)

type fakeNet struct {
	mu      sync.Mutex
	emitted map[int][][]byte
}

func (f *fakeNet) NumPorts() int { return 8 }
func (f *fakeNet) Emit(p int, m []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.emitted[p] = append(f.emitted[p], append([]byte(nil), m...))
	return nil
}

func ports(s policy.PortSet) []int {
	var l []int
	for p := s.Next(0); p >= 0; p = s.Next(p + 1) {
		l = append(l, p)
	}
	return l
}

// A hub floods to every member but the sender; with links 1 and 2 making
// a loop, its probes find it and block port 2, which then neither sends
// nor receives; members that are not links never get a probe.
func TestHubLoop(t *testing.T) {
	fn := &fakeNet{emitted: map[int][][]byte{}}
	clk := time.Unix(1000, 0)
	h := newHub(fn, func() time.Time { return clk })
	defer h.Close()
	var members policy.PortSet
	for p := range 4 {
		members.Add(p)
	}
	send := func(src int, m []byte) policy.Delivery {
		out := make([]policy.Delivery, 1)
		h.Route(src, [][]byte{m}, &members, out)
		return out[0]
	}
	expect := func(d policy.Delivery, want ...int) {
		t.Helper()
		if got := ports(d.Ports); !slices.Equal(got, want) {
			t.Fatalf("delivered to %v, want %v", got, want)
		}
	}
	line := []byte("a line, not a frame")
	expect(send(0, line), 1, 2, 3)
	expect(send(0, []byte("hi")), 1, 2, 3)
	h.LinkPort(1)
	h.LinkPort(2)
	if err := h.SetOption("loop.interval", "1s"); err != nil {
		t.Fatal(err)
	}
	h.loop.Probe()
	if len(fn.emitted[0])+len(fn.emitted[3]) != 0 || len(fn.emitted[1]) != 1 {
		t.Fatalf("probes emitted to %v", fn.emitted)
	}
	probe := fn.emitted[1][0]
	if !loop.IsProbe(probe) || len(probe) < 60 {
		t.Fatalf("probe %x", probe)
	}
	// From a member that is not a link, a probe goes nowhere.
	expect(send(0, probe))
	expect(send(2, probe)) // back through the loop: port 2 is blocked
	if v, _ := h.Option("loop.blocked"); v != "[2]" {
		t.Fatalf("loop.blocked %s", v)
	}
	if d := h.DescribePort(2); d != "BLOCKED(loop)" {
		t.Fatalf("describe blocked port: %q", d)
	}
	expect(send(0, line), 1, 3)
	expect(send(2, line))
	h.DeletePort(2)
	expect(send(0, line), 1, 2, 3)
}

func TestHubOptions(t *testing.T) {
	h := newHub(&fakeNet{emitted: map[int][][]byte{}}, nil)
	defer h.Close()
	if v, err := h.Option("loop.interval"); err != nil || v != "2s" {
		t.Fatalf("loop.interval %q %v", v, err)
	}
	for _, bad := range []string{"1ns", "2h", "-1s", "soon"} {
		err := h.SetOption("loop.interval", bad)
		if !errors.Is(err, syscall.EINVAL) {
			t.Errorf("loop.interval %q: %v", bad, err)
		}
	}
	if err := h.SetOption("loop.interval", "0"); err != nil {
		t.Fatal(err)
	}
	if v, _ := h.Option("loop.interval"); v != "0s" {
		t.Fatalf("loop.interval %q after 0", v)
	}
	if err := h.SetOption("expire", "1s"); !errors.Is(err, syscall.ENOPROTOOPT) {
		t.Fatalf("expire: %v", err)
	}
	if _, err := h.Option("macs"); !errors.Is(err, syscall.ENOPROTOOPT) || !strings.Contains(err.Error(), "loop.interval") {
		t.Fatalf("macs: %v, want ENOPROTOOPT listing the options", err)
	}
	if err := h.SetOption("loop.blocked", "[]"); !errors.Is(err, syscall.EINVAL) || !strings.Contains(err.Error(), "read only") {
		t.Fatalf("setting loop.blocked: %v, want EINVAL, read only", err)
	}
}
