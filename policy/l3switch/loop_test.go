package l3switch

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ipn-project/ipn/endpoint/endpointtest"
	"github.com/ipn-project/ipn/engine"
	"github.com/ipn-project/ipn/policy"
	"github.com/ipn-project/ipn/policy/loop"
)

// recNet is a policy.Network that records what is emitted, by port.
type recNet struct {
	mu      sync.Mutex
	emitted map[int][][]byte
}

func (*recNet) NumPorts() int { return 8 }
func (n *recNet) Emit(p int, m []byte) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.emitted[p] = append(n.emitted[p], append([]byte(nil), m...))
	return nil
}

func (n *recNet) count(p int) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.emitted[p])
}

func (n *recNet) last(p int) []byte {
	n.mu.Lock()
	defer n.mu.Unlock()
	l := n.emitted[p]
	if len(l) == 0 {
		return nil
	}
	return l[len(l)-1]
}

// loopRig is a switch on a fake clock (its loop detector's too, with no
// prober: tests call Probe) with ports 0..4 connected; 1, 2 and 3 are
// links, 0 and 4 ordinary members.
type loopRig struct {
	t       *testing.T
	s       *Switch
	net     *recNet
	clk     *fakeClock
	members policy.PortSet
	out     []policy.Delivery
}

var loopLinks = []int{1, 2, 3}

func newLoopRig(t *testing.T) *loopRig {
	t.Helper()
	r := &loopRig{t: t, net: &recNet{emitted: map[int][][]byte{}}, clk: newFakeClock(), out: make([]policy.Delivery, 8)}
	r.s = newSwitch(r.net, r.clk.Now)
	t.Cleanup(r.s.Close)
	for p := range 5 {
		r.s.PostNewPort(p)
		r.members.Add(p)
	}
	for _, p := range loopLinks {
		r.s.LinkPort(p)
	}
	if err := r.s.SetOption("loop.interval", "1s"); err != nil {
		t.Fatal(err)
	}
	return r
}

// send routes f from src and returns its delivery.
func (r *loopRig) send(src int, f []byte) policy.Delivery {
	out := r.out[:1]
	out[0].Reset()
	r.s.Route(src, [][]byte{f}, &r.members, out)
	return out[0]
}

func portList(s policy.PortSet) []int {
	var l []int
	for p := s.Next(0); p >= 0; p = s.Next(p + 1) {
		l = append(l, p)
	}
	return l
}

// expect checks that d goes, unchanged, to want only.
func (r *loopRig) expect(d policy.Delivery, want ...int) {
	r.t.Helper()
	if got := portList(d.Ports); !slices.Equal(got, want) || d.AltPorts.Len() != 0 || d.Invalid {
		r.t.Fatalf("delivered to %v (rewritten to %v, invalid %v), want %v", got, portList(d.AltPorts), d.Invalid, want)
	}
}

// probe sends a probe out of every link and returns the one port p got.
func (r *loopRig) probe(p int) []byte {
	r.t.Helper()
	before := r.net.count(p)
	r.s.loop.Probe()
	if r.net.count(p) != before+1 {
		r.t.Fatalf("port %d got %d probes, want 1", p, r.net.count(p)-before)
	}
	return r.net.last(p)
}

func (r *loopRig) blocked() string {
	r.t.Helper()
	v, err := r.s.Option("loop.blocked")
	if err != nil {
		r.t.Fatal(err)
	}
	return v
}

// foreign returns probe as another switch's, of ID id.
func foreign(probe []byte, id byte) []byte {
	f := append([]byte(nil), probe...)
	copy(f[ethHeader+8:ethHeader+16], bytes.Repeat([]byte{id}, 8))
	return f
}

// host is an address of the loop tests: 02:00:00:00:00:i, 10.0.0.i.
func host(i byte) (mac, netip.Addr) {
	return mac{2, 0, 0, 0, 0, i}, netip.AddrFrom4([4]byte{10, 0, 0, i})
}

// Probes go out of the links only, one each, naming the port; another
// switch's probe from a link goes to the other links, never to the
// ordinary members, and teaches the switch nothing; from an ordinary
// member, any probe goes nowhere.
func TestLoopProbeFromLinkNotDeliveredToMembers(t *testing.T) {
	r := newLoopRig(t)
	r.s.loop.Probe()
	for p := range 5 {
		want := 0
		if slices.Contains(loopLinks, p) {
			want = 1
		}
		if n := r.net.count(p); n != want {
			t.Fatalf("port %d got %d probes, want %d", p, n, want)
		}
	}
	probe := r.net.last(1)
	if !loop.IsProbe(probe) || len(probe) != loop.FrameLen || binary.BigEndian.Uint16(probe[ethHeader+16:]) != 1 {
		t.Fatalf("probe %x", probe)
	}
	high := foreign(probe, 0xff)
	r.expect(r.send(1, high), 2, 3)
	r.expect(r.send(3, high), 1, 2)
	r.expect(r.send(0, high))
	r.expect(r.send(4, probe))
	// A lower ID's probe is not ours to pass on: that detector sees its
	// loops through ours.
	r.expect(r.send(1, foreign(probe, 0)))
	// Nothing was learnt from the probes.
	if m := r.s.MACs(); len(m) != 0 {
		t.Fatalf("learnt from probes: %+v", m)
	}
	// Frames that are not probes still reach everyone.
	am, a4 := host(1)
	r.expect(r.send(0, ipv4Frame(broadcast, am, a4, netip.MustParseAddr("10.0.0.99"), "x")), 1, 2, 3, 4)
	// A frame of the probes' ethertype but another destination is no probe.
	r.expect(r.send(0, eth(broadcast, am, loop.EtherType, []byte("not a probe"))), 1, 2, 3, 4)
	// A probe too short for its content is invalid.
	if d := r.send(1, probe[:ethHeader+4]); !d.Invalid || d.Ports.Len() != 0 {
		t.Fatalf("truncated probe: %+v", d)
	}
}

// Our probe sent out of link 1 coming back in on link 3 blocks 3, the
// higher: 3's frames go nowhere and teach nothing, nothing goes to 3,
// addresses learnt on it are not forwarded to nor answered for, and
// other switches' probes do not cross it. A probe reflected on the port
// it left by blocks nothing.
func TestLoopOwnProbeBlocksHigherPort(t *testing.T) {
	r := newLoopRig(t)
	am, a4 := host(1) // behind ordinary port 0
	cm, c4 := host(3) // behind link 3, before the loop
	r.send(0, arpFrame(broadcast, am, 1, am, a4, mac{}, a4))
	r.send(3, arpFrame(broadcast, cm, 1, cm, c4, mac{}, c4))
	if d := r.send(0, ipv4Frame(broadcast, am, a4, c4, "to c")); !d.AltPorts.Has(3) {
		t.Fatalf("before the loop, c is not reached: %+v", d)
	}

	r.expect(r.send(2, r.probe(2))) // reflected: no loop
	if v := r.blocked(); v != "[]" {
		t.Fatalf("reflected probe blocked %s", v)
	}
	r.expect(r.send(3, r.probe(1))) // out of 1, in on 3: goes nowhere
	if v := r.blocked(); v != "[3]" {
		t.Fatalf("loop.blocked %s, want [3]", v)
	}
	if d := r.s.DescribePort(3); !strings.HasPrefix(d, "BLOCKED(loop)") || !strings.Contains(d, "10.0.0.3") {
		t.Fatalf("describe blocked port: %q", d)
	}
	if d := r.s.DescribePort(1); strings.Contains(d, "BLOCKED") {
		t.Fatalf("describe port 1: %q", d)
	}

	// Nothing from 3, of any kind, and nothing learnt from it.
	dm, d4 := host(4)
	r.expect(r.send(3, arpFrame(broadcast, dm, 1, dm, d4, mac{}, a4)))
	r.expect(r.send(3, ipv4Frame(am, dm, d4, a4, "to a")))
	r.expect(r.send(3, eth(broadcast, dm, 0x9000, nil)))
	for _, m := range r.s.MACs() {
		if m.MAC == dm.String() {
			t.Fatalf("learnt %s from the blocked port", m.MAC)
		}
	}
	// Nothing to 3: floods skip it, c (learnt there) is unknown, and the
	// switch does not answer for it, so the request reaches c elsewhere.
	r.expect(r.send(0, eth(broadcast, am, 0x9000, nil)), 1, 2, 4)
	r.expect(r.send(0, ipv4Frame(broadcast, am, a4, c4, "to c")), 1, 2, 4)
	r.expect(r.send(0, eth(cm, am, 0x9000, nil)), 1, 2, 4)
	before := r.net.count(0)
	r.expect(r.send(0, arpFrame(broadcast, am, 1, am, a4, mac{}, c4)), 1, 2, 4)
	if r.net.count(0) != before {
		t.Fatal("the switch answered ARP for an address behind a blocked port")
	}
	// Other switches' probes go to the links that are not blocked, and
	// not at all when they come in on the blocked one.
	high := foreign(r.net.last(1), 0xff)
	r.expect(r.send(1, high), 2)
	r.expect(r.send(3, high))
	// c, seen on link 2 now, is reached there.
	r.send(2, arpFrame(broadcast, cm, 1, cm, c4, mac{}, c4))
	if d := r.send(0, ipv4Frame(broadcast, am, a4, c4, "to c")); !slices.Equal(portList(d.AltPorts), []int{2}) || d.Ports.Len() != 0 {
		t.Fatalf("c on port 2: delivered to %v, rewritten to %v", portList(d.Ports), portList(d.AltPorts))
	}

	// The other way round, out of 3 and in on 1, it is 3 again; and when
	// 3 leaves, its block goes.
	r.expect(r.send(1, r.probe(3)))
	if v := r.blocked(); v != "[3]" {
		t.Fatalf("loop.blocked %s, want [3]", v)
	}
	r.s.DeletePort(3)
	r.members.Remove(3)
	if v := r.blocked(); v != "[]" {
		t.Fatalf("loop.blocked %s after port 3 left", v)
	}
	r.expect(r.send(0, eth(broadcast, am, 0x9000, nil)), 1, 2, 4)
}

// A block stays while the probes keep coming back, and ends once they have
// stopped for three to five intervals.
func TestLoopRecovers(t *testing.T) {
	r := newLoopRig(t)
	am, _ := host(1)
	bcast := eth(broadcast, am, 0x9000, nil)
	r.expect(r.send(2, r.probe(1)))
	for range 10 {
		r.clk.Advance(time.Second)
		r.expect(r.send(2, r.probe(1)))
		if v := r.blocked(); v != "[2]" {
			t.Fatalf("loop.blocked %s while the loop lasts, want [2]", v)
		}
	}
	r.expect(r.send(0, bcast), 1, 3, 4)
	// The loop is gone: probes go out, none comes back.
	for range 3 {
		r.clk.Advance(time.Second)
		r.probe(1)
		if v := r.blocked(); v != "[2]" {
			t.Fatalf("loop.blocked %s within three intervals of the loop", v)
		}
	}
	r.clk.Advance(3 * time.Second)
	r.probe(1)
	if v := r.blocked(); v != "[]" {
		t.Fatalf("loop.blocked %s six intervals after the loop", v)
	}
	r.expect(r.send(0, bcast), 1, 2, 3, 4)
	r.expect(r.send(2, bcast), 0, 1, 3, 4)
}

// loop.interval 0 turns loop protection off: it ends the blocks, no probe
// goes out, our probes coming back block nothing; other switches' probes
// are still passed to the other links only, whatever their ID.
func TestLoopIntervalZeroDisables(t *testing.T) {
	r := newLoopRig(t)
	probe := r.probe(1)
	r.expect(r.send(3, probe))
	if v := r.blocked(); v != "[3]" {
		t.Fatalf("loop.blocked %s, want [3]", v)
	}
	if err := r.s.SetOption("loop.interval", "0"); err != nil {
		t.Fatal(err)
	}
	if v, _ := r.s.Option("loop.interval"); v != "0s" {
		t.Fatalf("loop.interval %q after 0", v)
	}
	if v := r.blocked(); v != "[]" {
		t.Fatalf("loop.blocked %s after loop.interval 0", v)
	}
	before := [5]int{}
	for p := range before {
		before[p] = r.net.count(p)
	}
	r.s.loop.Probe()
	for p := range before {
		if r.net.count(p) != before[p] {
			t.Fatalf("port %d got a probe with loop protection off", p)
		}
	}
	r.expect(r.send(3, probe))
	if v := r.blocked(); v != "[]" {
		t.Fatalf("loop.blocked %s with loop protection off", v)
	}
	r.expect(r.send(1, foreign(probe, 0)), 2, 3)
	r.expect(r.send(0, foreign(probe, 0xff)))
	am, _ := host(1)
	r.expect(r.send(3, eth(broadcast, am, 0x9000, nil)), 0, 1, 2, 4)
}

// TestLoopIntervalBounds sets loop.interval just inside and just outside
// its range: the first are taken, the others refused with EINVAL and an
// error naming the option and the value, leaving the setting. loop.blocked
// is read only.
func TestLoopIntervalBounds(t *testing.T) {
	const ns = time.Nanosecond
	s := newSwitch(&nullNet{}, nil)
	defer s.Close()
	if v, err := s.Option("loop.interval"); err != nil || v != DefaultLoopInterval.String() {
		t.Fatalf("loop.interval %q %v, want %v", v, err, DefaultLoopInterval)
	}
	for _, c := range []struct {
		value string
		ok    bool
	}{
		{(MinLoopInterval - ns).String(), false},
		{MinLoopInterval.String(), true},
		{MaxLoopInterval.String(), true},
		{(MaxLoopInterval + ns).String(), false},
		{"0", true},
		{"-1s", false},
		{"soon", false},
		{"", false},
	} {
		before, _ := s.Option("loop.interval")
		err := s.SetOption("loop.interval", c.value)
		got, _ := s.Option("loop.interval")
		if c.ok {
			if want, _ := time.ParseDuration(c.value); err != nil || got != want.String() {
				t.Errorf("loop.interval %q: %v, reads back %q", c.value, err, got)
			}
			continue
		}
		if err == nil {
			t.Errorf("loop.interval %q accepted", c.value)
			continue
		}
		if msg := err.Error(); !errors.Is(err, syscall.EINVAL) || !strings.Contains(msg, "option loop.interval") || !strings.Contains(msg, strconv.Quote(c.value)) {
			t.Errorf("loop.interval %q: error %q, want EINVAL naming the option and the value", c.value, msg)
		}
		if got != before {
			t.Errorf("loop.interval %q refused but changed it from %q to %q", c.value, before, got)
		}
	}
	if v, err := s.Option("loop.blocked"); err != nil || v != "[]" {
		t.Fatalf("loop.blocked %q %v", v, err)
	}
	if err := s.SetOption("loop.blocked", "[1]"); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("setting loop.blocked: %v, want EINVAL", err)
	}
	for _, err := range []error{s.SetOption("nope", ""), func() error { _, err := s.Option("nope"); return err }()} {
		if !errors.Is(err, syscall.ENOPROTOOPT) || !strings.Contains(err.Error(), "loop.interval") {
			t.Errorf("unknown option: %v, want ENOPROTOOPT listing loop.interval", err)
		}
	}
}

// Routing probes, a looping probe of ours, floods past a blocked port and
// frames from it allocates nothing.
func TestLoopRouteDoesNotAllocate(t *testing.T) {
	r := newLoopRig(t)
	probe := r.probe(1)
	r.send(3, probe) // port 3 blocked: later returns only refresh it
	am, a4 := host(1)
	r.send(0, arpFrame(broadcast, am, 1, am, a4, mac{}, a4))
	msgs := [][]byte{
		probe,
		foreign(probe, 0xff),
		foreign(probe, 0),
		eth(broadcast, am, 0x9000, nil),
		ipv4Frame(broadcast, am, a4, netip.MustParseAddr("10.0.0.99"), "flood"),
	}
	fromBlocked := [][]byte{probe, ipv4Frame(broadcast, am, a4, a4, "x"), eth(broadcast, am, 0x9000, nil)}
	out := r.out[:len(msgs)]
	run := func() {
		for i := range out {
			out[i].Reset()
		}
		r.s.Route(3, msgs[:1], &r.members, out[:1])
		r.s.Route(1, msgs[1:3], &r.members, out[:2])
		r.s.Route(0, msgs[3:], &r.members, out[:2])
		for i := range out {
			out[i].Reset()
		}
		r.s.Route(3, fromBlocked, &r.members, out[:len(fromBlocked)])
	}
	run()
	if n := testing.AllocsPerRun(100, run); n != 0 {
		t.Fatalf("%v allocations per run", n)
	}
	if v := r.blocked(); v != "[3]" {
		t.Fatalf("loop.blocked %s, want [3]", v)
	}
}

// Through the engine: a port that joins as a link gets the switch's
// probes, an ordinary member none; another switch's probe from one link
// reaches the other link and not the member.
func TestLoopProbesGoToLinksOnly(t *testing.T) {
	tn := newNet(t)
	if err := tn.sw.SetOption("loop.interval", "1h"); err != nil {
		t.Fatal(err)
	}
	a := tn.join(1)
	l1, l2 := tn.joinLink(), tn.joinLink()
	p := tn.nextForeign(l1, nil)
	if binary.BigEndian.Uint16(p[ethHeader+16:]) != uint16(l1.port.Num()) {
		t.Fatalf("probe to port %d names port %d", l1.port.Num(), binary.BigEndian.Uint16(p[ethHeader+16:]))
	}
	high := foreign(p, 0xff)
	tn.send(l1, high)
	if got := tn.nextForeign(l2, p); !bytes.Equal(got, high) {
		t.Fatalf("link %d got %x, want the other switch's probe", l2.port.Num(), got)
	}
	// The delivery to l2 is done: a member would have had it too.
	select {
	case f := <-a.ep.C():
		t.Fatalf("ordinary member got %x", f)
	default:
	}
}

// joinLink adds a port that joins as a link.
func (tn *testNet) joinLink() *node {
	tn.t.Helper()
	ep := endpointtest.New(64)
	p, err := tn.n.Join(ep, engine.PortOptions{Want: -1, Link: true})
	if err != nil {
		tn.t.Fatal(err)
	}
	tn.t.Cleanup(p.Close)
	return &node{ep: ep, port: p}
}

// nextForeign returns the next frame to n that is not one of the switch's
// own probes (by ID, taken from ours, if ours is not nil); with ours nil,
// the first probe.
func (tn *testNet) nextForeign(n *node, ours []byte) []byte {
	tn.t.Helper()
	for {
		f := tn.recv(n)
		if ours == nil {
			if !loop.IsProbe(f) {
				tn.t.Fatalf("link %d got %x, want a probe", n.port.Num(), f)
			}
			return f
		}
		if !loop.IsProbe(f) || len(f) < ethHeader+16 || !bytes.Equal(f[ethHeader+8:ethHeader+16], ours[ethHeader+8:ethHeader+16]) {
			return f
		}
	}
}
