package loop

import (
	"bytes"
	"encoding/binary"
	"errors"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ipn-project/ipn/policy"
)

// fakeNet records what a Detector emits, per port.
type fakeNet struct {
	mu      sync.Mutex
	emitted map[int][][]byte
	wake    chan struct{} // signalled at each Emit, if not nil
}

func newFakeNet() *fakeNet { return &fakeNet{emitted: map[int][][]byte{}} }

func (f *fakeNet) NumPorts() int { return 64 }

func (f *fakeNet) Emit(p int, m []byte) error {
	f.mu.Lock()
	f.emitted[p] = append(f.emitted[p], append([]byte(nil), m...))
	f.mu.Unlock()
	if f.wake != nil {
		select {
		case f.wake <- struct{}{}:
		default:
		}
	}
	return nil
}

// take returns and forgets what was emitted to p.
func (f *fakeNet) take(p int) [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	l := f.emitted[p]
	delete(f.emitted, p)
	return l
}

func (f *fakeNet) ports() []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	var l []int
	for p := range f.emitted {
		l = append(l, p)
	}
	slices.Sort(l)
	return l
}

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func set(ports ...int) *policy.PortSet {
	s := &policy.PortSet{}
	for _, p := range ports {
		s.Add(p)
	}
	return s
}

func list(s *policy.PortSet) []int {
	var l []int
	for p := s.Next(0); p >= 0; p = s.Next(p + 1) {
		l = append(l, p)
	}
	return l
}

// route hands f, sent by src, to d and returns where it goes.
func route(d *Detector, src int, f []byte, members *policy.PortSet) policy.Delivery {
	var out policy.Delivery
	d.Route(src, f, members, &out)
	return out
}

// rig is a manual Detector with links 1, 2, 3 among members 0..4.
func rig(t *testing.T) (*Detector, *fakeNet, *clock, *policy.PortSet) {
	t.Helper()
	net, clk := newFakeNet(), &clock{t: time.Unix(1000, 0)}
	d := New(net, clk.now)
	t.Cleanup(d.Close)
	for _, p := range []int{1, 2, 3} {
		d.LinkPort(p)
	}
	if err := d.SetInterval(time.Second); err != nil {
		t.Fatal(err)
	}
	return d, net, clk, set(0, 1, 2, 3, 4)
}

// Probes are well-formed Ethernet frames of at least 60 bytes, and go out
// of link ports only.
func TestProbeFrame(t *testing.T) {
	d, net, _, _ := rig(t)
	d.Probe()
	if got := net.ports(); !slices.Equal(got, []int{1, 2, 3}) {
		t.Fatalf("probes went to ports %v, want the links 1 2 3", got)
	}
	for _, p := range []int{1, 2, 3} {
		l := net.take(p)
		if len(l) != 1 {
			t.Fatalf("port %d: %d probes", p, len(l))
		}
		f := l[0]
		switch {
		case len(f) < 60 || len(f) != FrameLen:
			t.Errorf("probe of %d bytes, want %d", len(f), FrameLen)
		case !IsProbe(f) || !bytes.Equal(f[:6], Dst[:]) || binary.BigEndian.Uint16(f[12:]) != EtherType:
			t.Errorf("not a probe: %x", f)
		case f[0]&1 == 0 || f[0]&2 == 0:
			t.Errorf("destination %x: want locally administered multicast", f[:6])
		case f[6]&1 != 0 || f[6]&2 == 0:
			t.Errorf("source %x: want locally administered unicast", f[6:12])
		case int(binary.BigEndian.Uint16(f[etherHeader+16:])) != p:
			t.Errorf("probe out of %d names port %d", p, binary.BigEndian.Uint16(f[etherHeader+16:]))
		case binary.BigEndian.Uint64(f[contentLen:]) == 0:
			t.Errorf("probe out of %d has no nonce", p)
		case !bytes.Equal(f[ownLen:], make([]byte, FrameLen-ownLen)):
			t.Errorf("padding not zero: %x", f[ownLen:])
		}
	}
	d.DeletePort(2)
	d.Probe()
	if got := net.ports(); !slices.Equal(got, []int{1, 3}) {
		t.Fatalf("after port 2 left, probes went to %v", got)
	}
}

// Our probe out of link 1 that comes back on link 3 blocks 3 until the
// probes stop coming back; one reflected on its own port is no loop.
func TestBlockAndRecover(t *testing.T) {
	d, net, clk, members := rig(t)
	d.Probe()
	p1, p2 := net.take(1)[0], net.take(2)[0]
	if o := route(d, 2, p2, members); o.Ports.Len() != 0 || o.Invalid {
		t.Fatalf("reflected probe: %v invalid=%v", list(&o.Ports), o.Invalid)
	}
	if b := d.BlockedList(); len(b) != 0 {
		t.Fatalf("reflection blocked %v", b)
	}
	if o := route(d, 3, p1, members); o.Ports.Len() != 0 {
		t.Fatalf("own probe forwarded to %v", list(&o.Ports))
	}
	if got := d.BlockedJSON(); got != "[3]" {
		t.Fatalf("blocked %s, want [3]", got)
	}
	blocked := d.Blocked()
	// The loop goes on: the block holds past three intervals.
	for range 5 {
		clk.t = clk.t.Add(time.Second)
		d.Probe()
		route(d, 3, net.take(1)[0], members)
	}
	if !d.Blocked().Has(3) {
		t.Fatal("block lifted while the loop goes on")
	}
	// The loop is gone: within five intervals, the block goes.
	clk.t = clk.t.Add(5*time.Second + time.Millisecond)
	d.Probe()
	if b := d.BlockedList(); len(b) != 0 {
		t.Fatalf("still blocked %v after the loop went", b)
	}
	if !blocked.Has(3) {
		t.Fatal("a snapshot of the blocked ports changed")
	}
}

// A blocked port that leaves, or loop protection turned off, ends blocks.
func TestBlockEnds(t *testing.T) {
	d, net, _, members := rig(t)
	d.Probe()
	route(d, 3, net.take(1)[0], members)
	d.DeletePort(3)
	if b := d.BlockedList(); len(b) != 0 {
		t.Fatalf("left port still blocked: %v", b)
	}
	d.LinkPort(3)
	d.Probe()
	route(d, 3, net.take(2)[0], members)
	if d.BlockedJSON() != "[3]" {
		t.Fatalf("blocked %s", d.BlockedJSON())
	}
	net.take(1)
	net.take(3)
	if err := d.SetInterval(0); err != nil {
		t.Fatal(err)
	}
	if b := d.BlockedList(); len(b) != 0 {
		t.Fatalf("blocked %v with loop protection off", b)
	}
	d.Probe()
	if got := net.ports(); len(got) != 0 {
		t.Fatalf("probes to %v with loop protection off", got)
	}
}

// Another detector's probe goes to the other link ports that are members
// and not blocked, if its ID is higher than ours; with our probes off, all
// pass. Nothing that is not a link sends or receives a probe.
func TestForeignProbes(t *testing.T) {
	d, net, _, members := rig(t)
	d.Probe()
	mine := net.take(1)[0]
	other := func(b byte) []byte {
		f := append([]byte(nil), mine...)
		copy(f[etherHeader+8:etherHeader+16], bytes.Repeat([]byte{b}, 8))
		return f
	}
	high, low := other(0xff), other(0)
	if o := route(d, 1, high, members); !slices.Equal(list(&o.Ports), []int{2, 3}) {
		t.Fatalf("higher ID's probe went to %v, want the other links 2 3", list(&o.Ports))
	}
	if o := route(d, 1, high, set(0, 1, 2, 4)); !slices.Equal(list(&o.Ports), []int{2}) {
		t.Fatalf("to members 0 1 2 4: went to %v, want 2", list(&o.Ports))
	}
	if o := route(d, 1, low, members); o.Ports.Len() != 0 {
		t.Fatalf("lower ID's probe went to %v", list(&o.Ports))
	}
	for _, src := range []int{0, 4} {
		if o := route(d, src, high, members); o.Ports.Len() != 0 || o.Invalid {
			t.Fatalf("probe from member %d, not a link, went to %v", src, list(&o.Ports))
		}
		if o := route(d, src, mine, members); o.Ports.Len() != 0 || len(d.BlockedList()) != 0 {
			t.Fatalf("our probe from member %d, not a link, blocked %v", src, d.BlockedList())
		}
	}
	route(d, 3, mine, members) // block 3
	if o := route(d, 1, high, members); !slices.Equal(list(&o.Ports), []int{2}) {
		t.Fatalf("with 3 blocked, went to %v, want 2", list(&o.Ports))
	}
	if o := route(d, 3, high, members); o.Ports.Len() != 0 {
		t.Fatalf("from blocked 3, went to %v", list(&o.Ports))
	}
	d.SetInterval(0)
	if o := route(d, 1, low, members); !slices.Equal(list(&o.Ports), []int{2, 3}) {
		t.Fatalf("probes off: lower ID's probe went to %v, want 2 3", list(&o.Ports))
	}
}

func TestMalformedProbes(t *testing.T) {
	d, net, _, members := rig(t)
	d.Probe()
	f := net.take(1)[0]
	bad := append([]byte(nil), f...)
	bad[etherHeader] ^= 1
	for _, m := range [][]byte{f[:contentLen-1], bad} {
		if o := route(d, 1, m, members); !o.Invalid || o.Ports.Len() != 0 {
			t.Errorf("%x: invalid=%v to %v", m, o.Invalid, list(&o.Ports))
		}
	}
	// Ours without its nonce proves nothing; unpadded, it is read.
	if o := route(d, 3, f[:contentLen], members); o.Invalid || d.BlockedJSON() != "[]" {
		t.Errorf("our probe without its nonce: invalid=%v blocked %s", o.Invalid, d.BlockedJSON())
	}
	if o := route(d, 3, f[:ownLen], members); o.Invalid || d.BlockedJSON() != "[3]" {
		t.Errorf("unpadded probe: invalid=%v blocked %s", o.Invalid, d.BlockedJSON())
	}
	if IsProbe(f[:etherHeader-1]) || IsProbe([]byte("a line of text, not a probe")) {
		t.Error("IsProbe of a short message or text")
	}
}

// Two detectors joined by two cables (A's ports 1, 2 to B's ports 1, 2)
// make one loop: exactly one port of one of them is blocked, so the two
// networks stay joined.
func TestTwoDetectorsBlockOnce(t *testing.T) {
	for range 20 { // random IDs: either may be the higher
		nets := [2]*fakeNet{newFakeNet(), newFakeNet()}
		clk := &clock{t: time.Unix(1000, 0)}
		var ds [2]*Detector
		for i := range ds {
			ds[i] = New(nets[i], clk.now)
			ds[i].LinkPort(1)
			ds[i].LinkPort(2)
			ds[i].SetInterval(time.Second)
		}
		members := set(0, 1, 2)
		// Each round, every probe crosses its cable and is routed by
		// the other side until none is left.
		for range 5 {
			clk.t = clk.t.Add(time.Second)
			ds[0].Probe()
			ds[1].Probe()
			for moved := true; moved; {
				moved = false
				for i := range 2 {
					for _, p := range []int{1, 2} {
						for _, f := range nets[i].take(p) {
							moved = true
							o := route(ds[1-i], p, f, members)
							for q := o.Ports.Next(0); q >= 0; q = o.Ports.Next(q + 1) {
								nets[1-i].Emit(q, f)
							}
						}
					}
				}
			}
		}
		a, b := ds[0].BlockedList(), ds[1].BlockedList()
		if len(a)+len(b) != 1 {
			t.Fatalf("blocked: A %v, B %v; want one port of one detector", a, b)
		}
		for _, d := range ds {
			d.Close()
		}
	}
}

// The prober starts with the first link, probes at once and then every
// interval, and stops with Close.
func TestProber(t *testing.T) {
	net := newFakeNet()
	net.wake = make(chan struct{}, 1)
	d := New(net, nil)
	if err := d.SetInterval(MinInterval); err != nil {
		t.Fatal(err)
	}
	d.LinkPort(5)
	deadline := time.After(10 * time.Second)
	for n := 0; n < 3; n += len(net.take(5)) {
		select {
		case <-net.wake:
		case <-deadline:
			t.Fatalf("%d probes in 10s", n)
		}
	}
	d.Close()
	d.Close()
	net.take(5)
	d.Probe() // by hand, after Close: still harmless
	if d.Interval() != MinInterval {
		t.Fatalf("interval %v", d.Interval())
	}
}

func TestParseInterval(t *testing.T) {
	for _, c := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"0", 0, true}, {"10ms", MinInterval, true}, {"2s", DefaultInterval, true}, {"1h", MaxInterval, true},
		{"9ms", 0, false}, {"1h1ns", 0, false}, {"-1s", 0, false}, {"soon", 0, false},
	} {
		got, err := ParseInterval(c.in)
		if c.ok != (err == nil) || got != c.want {
			t.Errorf("ParseInterval(%q) = %v, %v", c.in, got, err)
		}
		if err != nil && !errors.Is(err, syscall.EINVAL) {
			t.Errorf("ParseInterval(%q): %v does not wrap EINVAL", c.in, err)
		}
	}
	d := New(newFakeNet(), (&clock{}).now)
	defer d.Close()
	if err := d.SetInterval(time.Nanosecond); !errors.Is(err, syscall.EINVAL) || d.Interval() != DefaultInterval {
		t.Fatalf("SetInterval(1ns): %v, interval %v", err, d.Interval())
	}
}

// A member on a link reads the probe sent out of its own port: naming
// another port in it, with any nonce, or sending it back rounds later,
// blocks nothing. Only what the detector sent, this round or the last,
// counts.
func TestForgedProbesBlockNothing(t *testing.T) {
	d, net, _, members := rig(t)
	d.Probe()
	mine := net.take(3)[0] // what a member behind link 3 reads
	from1 := net.take(1)[0]
	forged := append([]byte(nil), mine...)
	binary.BigEndian.PutUint16(forged[etherHeader+16:], 1) // "sent out of 1"
	route(d, 3, forged, members)
	guessed := append([]byte(nil), forged...)
	binary.BigEndian.PutUint64(guessed[contentLen:], 1)
	route(d, 3, guessed, members)
	if b := d.BlockedJSON(); b != "[]" {
		t.Fatalf("forged probes blocked %s", b)
	}
	// Stale: port 1's probe of two rounds ago.
	d.Probe()
	d.Probe()
	route(d, 3, from1, members)
	if b := d.BlockedJSON(); b != "[]" {
		t.Fatalf("a probe two rounds old blocked %s", b)
	}
	// The last round's still counts: it may have been on its way.
	last := net.take(1)
	route(d, 3, last[len(last)-2], members)
	if b := d.BlockedJSON(); b != "[3]" {
		t.Fatalf("the last round's probe, back on 3: blocked %s, want [3]", b)
	}
}
