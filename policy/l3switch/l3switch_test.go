package l3switch

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipn-project/ipn/endpoint/endpointtest"
	"github.com/ipn-project/ipn/engine"
	"github.com/ipn-project/ipn/policy"
)

// fakeClock is a clock tests move by hand.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	return c
}

func (c *fakeClock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

type node struct {
	ep   *endpointtest.Endpoint
	port *engine.Port
	mac  mac
	ip4  netip.Addr
	ip6  netip.Addr
}

// testNet is an l3switch network with a fake clock.
type testNet struct {
	t   *testing.T
	n   *engine.Network
	sw  *Switch
	clk *fakeClock
	ctx context.Context
}

func newNet(t *testing.T) *testNet { return newNetConfig(t, engine.Config{}) }

func newNetConfig(t *testing.T, cfg engine.Config) *testNet {
	t.Helper()
	e := engine.New()
	cfg.Proto = policy.VDESwitchL3
	n, err := e.Create("l3", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Release)
	sw := n.Policy().(*Switch)
	clk := newFakeClock()
	sw.now = clk.Now // before any port joins, so before any Route
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return &testNet{t, n, sw, clk, ctx}
}

// join adds host number i: MAC 02:00:00:00:00:i, 10.0.0.i, fd00::i.
func (tn *testNet) join(i byte) *node {
	tn.t.Helper()
	ep := endpointtest.New(64)
	p, err := tn.n.Join(ep, engine.PortOptions{Want: -1})
	if err != nil {
		tn.t.Fatal(err)
	}
	tn.t.Cleanup(p.Close)
	return &node{
		ep: ep, port: p,
		mac: mac{2, 0, 0, 0, 0, i},
		ip4: netip.AddrFrom4([4]byte{10, 0, 0, i}),
		ip6: netip.MustParseAddr(fmt.Sprintf("fd00::%d", i)),
	}
}

func (tn *testNet) send(from *node, f []byte) {
	tn.t.Helper()
	if err := from.ep.Inject(tn.ctx, append([]byte(nil), f...)); err != nil {
		tn.t.Fatal(err)
	}
}

func (tn *testNet) recv(to *node) []byte {
	tn.t.Helper()
	f, err := to.ep.Recv(tn.ctx)
	if err != nil {
		tn.t.Fatalf("port %d: nothing received: %v", to.port.Num(), err)
	}
	return f
}

// expect checks that to receives exactly want next.
func (tn *testNet) expect(to *node, want []byte) {
	tn.t.Helper()
	if got := tn.recv(to); !bytes.Equal(got, want) {
		tn.t.Fatalf("port %d got\n%x\nwant\n%x", to.port.Num(), got, want)
	}
}

var barrierSeq atomic.Uint32

// barrier floods a marker from `from` and checks that it is the next thing
// each of others receives (so that they received nothing before it), and
// that from itself has nothing waiting.
func (tn *testNet) barrier(from *node, others ...*node) {
	tn.t.Helper()
	payload := make([]byte, 4)
	binary.BigEndian.PutUint32(payload, barrierSeq.Add(1))
	m := eth(broadcast, from.mac, 0x88b5, payload)
	tn.send(from, m)
	for _, o := range others {
		tn.expect(o, m)
	}
	select {
	case f := <-from.ep.C():
		tn.t.Fatalf("sender port %d got %x", from.port.Num(), f)
	default:
	}
}

// announce makes the switch learn n: a gratuitous ARP and an unsolicited
// neighbor advertisement, flooded to others.
func (tn *testNet) announce(n *node, others ...*node) {
	tn.t.Helper()
	g := arpFrame(broadcast, n.mac, 1, n.mac, n.ip4, mac{}, n.ip4)
	tn.send(n, g)
	for _, o := range others {
		tn.expect(o, g)
	}
	na := naFrame(mac{0x33, 0x33, 0, 0, 0, 1}, n.mac, n.ip6, netip.MustParseAddr("ff02::1"), 0x20, n.ip6)
	tn.send(n, na)
	for _, o := range others {
		tn.expect(o, na)
	}
}

var broadcast = mac{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// Frame builders.

func eth(dst, src mac, typ uint16, payload []byte) []byte {
	f := make([]byte, 14, 14+len(payload))
	copy(f[0:6], dst[:])
	copy(f[6:12], src[:])
	binary.BigEndian.PutUint16(f[12:14], typ)
	return append(f, payload...)
}

func ipv4Frame(dst, src mac, sip, dip netip.Addr, payload string) []byte {
	h := make([]byte, 20)
	h[0] = 0x45
	binary.BigEndian.PutUint16(h[2:4], uint16(20+len(payload)))
	h[8], h[9] = 64, 17
	s4, d4 := sip.As4(), dip.As4()
	copy(h[12:16], s4[:])
	copy(h[16:20], d4[:])
	binary.BigEndian.PutUint16(h[10:12], ^onesSum(h))
	return eth(dst, src, typeIPv4, append(h, payload...))
}

func ipv6Frame(dst, src mac, sip, dip netip.Addr, next, hlim byte, payload []byte) []byte {
	h := make([]byte, 40)
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:6], uint16(len(payload)))
	h[6], h[7] = next, hlim
	s16, d16 := sip.As16(), dip.As16()
	copy(h[8:24], s16[:])
	copy(h[24:40], d16[:])
	return eth(dst, src, typeIPv6, append(h, payload...))
}

func arpFrame(dst, src mac, op uint16, sha mac, spa netip.Addr, tha mac, tpa netip.Addr) []byte {
	a := make([]byte, 28)
	binary.BigEndian.PutUint16(a[0:2], 1)
	binary.BigEndian.PutUint16(a[2:4], typeIPv4)
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:8], op)
	s4, t4 := spa.As4(), tpa.As4()
	copy(a[8:14], sha[:])
	copy(a[14:18], s4[:])
	copy(a[18:24], tha[:])
	copy(a[24:28], t4[:])
	return eth(dst, src, typeARP, a)
}

// onesSum is the ones' complement sum of b, written independently of the
// package's checksum6.
func onesSum(b ...[]byte) uint16 {
	var all []byte
	for _, x := range b {
		all = append(all, x...)
	}
	if len(all)%2 == 1 {
		all = append(all, 0)
	}
	var s uint64
	for i := 0; i < len(all); i += 2 {
		s += uint64(binary.BigEndian.Uint16(all[i:]))
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}

// icmp6Sum is the ICMPv6 checksum of msg (checksum field zero) between src
// and dst.
func icmp6Sum(src, dst netip.Addr, msg []byte) uint16 {
	s16, d16 := src.As16(), dst.As16()
	pseudo := make([]byte, 40)
	copy(pseudo[0:16], s16[:])
	copy(pseudo[16:32], d16[:])
	binary.BigEndian.PutUint32(pseudo[32:36], uint32(len(msg)))
	pseudo[39] = protoICMP6
	return ^onesSum(pseudo, msg)
}

func ndpFrame(dst, src mac, sip, dip netip.Addr, typ byte, flags byte, target netip.Addr, optType byte, opt mac) []byte {
	m := make([]byte, 24)
	m[0] = typ
	m[4] = flags
	t16 := target.As16()
	copy(m[8:24], t16[:])
	if optType != 0 {
		m = append(m, optType, 1)
		m = append(m, opt[:]...)
	}
	binary.BigEndian.PutUint16(m[2:4], icmp6Sum(sip, dip, m))
	return ipv6Frame(dst, src, sip, dip, protoICMP6, 255, m)
}

func nsFrame(src mac, sip netip.Addr, target netip.Addr, sll bool) []byte {
	t16 := target.As16()
	snm := netip.AddrFrom16([16]byte{0xff, 2, 10: 0, 11: 1, 12: 0xff, 13: t16[13], 14: t16[14], 15: t16[15]})
	dst := mac{0x33, 0x33, 0xff, t16[13], t16[14], t16[15]}
	var optType byte
	if sll {
		optType = optSourceLL
	}
	return ndpFrame(dst, src, sip, snm, icmpNS, 0, target, optType, src)
}

func naFrame(dst, src mac, sip, dip netip.Addr, flags byte, target netip.Addr) []byte {
	return ndpFrame(dst, src, sip, dip, icmpNA, flags, target, optTargetLL, src)
}

// withDst returns a copy of f with its destination MAC replaced.
func withDst(f []byte, dst mac) []byte {
	g := append([]byte(nil), f...)
	copy(g[0:6], dst[:])
	return g
}

func TestTwoHostsExchangeIPv4AndIPv6(t *testing.T) {
	tn := newNet(t)
	a, b, c := tn.join(1), tn.join(2), tn.join(3)

	// B is unknown: A's first packet is switched by MAC, unknown, flooded.
	p := ipv4Frame(b.mac, a.mac, a.ip4, b.ip4, "hello b")
	tn.send(a, p)
	tn.expect(b, p)
	tn.expect(c, p)
	// A is learnt: B's answer reaches only A, unchanged.
	q := ipv4Frame(a.mac, b.mac, b.ip4, a.ip4, "hello a")
	tn.send(b, q)
	tn.expect(a, q)
	// Now both are learnt.
	tn.send(a, p)
	tn.expect(b, p)
	tn.barrier(b, a, c)

	// IPv6: B's address is unknown but its MAC is learnt, so the first
	// packet is switched by MAC, to B only.
	p6 := ipv6Frame(b.mac, a.mac, a.ip6, b.ip6, 17, 64, []byte("hello b over v6"))
	tn.send(a, p6)
	tn.expect(b, p6)
	q6 := ipv6Frame(a.mac, b.mac, b.ip6, a.ip6, 17, 64, []byte("hello a over v6"))
	tn.send(b, q6)
	tn.expect(a, q6)
	tn.send(a, p6)
	tn.expect(b, p6)
	tn.barrier(a, b, c)

	var ips []IPInfo
	v, err := tn.sw.Option("ips")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(v), &ips); err != nil {
		t.Fatalf("ips %q: %v", v, err)
	}
	want := []IPInfo{
		{"10.0.0.1", a.mac.String(), a.port.Num(), 0},
		{"10.0.0.2", b.mac.String(), b.port.Num(), 0},
		{"fd00::1", a.mac.String(), a.port.Num(), 0},
		{"fd00::2", b.mac.String(), b.port.Num(), 0},
	}
	if fmt.Sprint(ips) != fmt.Sprint(want) {
		t.Fatalf("ips = %+v, want %+v", ips, want)
	}
}

func TestForwardByIPRewritesMAC(t *testing.T) {
	tn := newNet(t)
	a, b, c := tn.join(1), tn.join(2), tn.join(3)
	tn.announce(b, a, c)

	for _, dst := range []mac{broadcast, c.mac, {2, 9, 9, 9, 9, 9}} {
		p := ipv4Frame(dst, a.mac, a.ip4, b.ip4, "to b's IP")
		tn.send(a, p)
		got := tn.recv(b)
		if !bytes.Equal(got[0:6], b.mac[:]) {
			t.Fatalf("dst %v: destination MAC %x, want %v", dst, got[0:6], b.mac)
		}
		if !bytes.Equal(got[6:], p[6:]) {
			t.Fatalf("dst %v: rest of the frame changed:\n%x\n%x", dst, got, p)
		}
		p6 := ipv6Frame(dst, a.mac, a.ip6, b.ip6, 17, 64, []byte("to b's IPv6"))
		tn.send(a, p6)
		tn.expect(b, withDst(p6, b.mac))
		tn.barrier(a, b, c) // C saw nothing, A got nothing back
	}

	// To its own IP: goes nowhere, not even back.
	tn.send(b, ipv4Frame(broadcast, b.mac, b.ip4, b.ip4, "self"))
	tn.barrier(b, a, c)
}

func TestARPAnsweredBySwitch(t *testing.T) {
	tn := newNet(t)
	a, b, c := tn.join(1), tn.join(2), tn.join(3)
	tn.announce(b, a, c)

	req := arpFrame(broadcast, a.mac, 1, a.mac, a.ip4, mac{}, b.ip4)
	tn.send(a, req)
	reply := tn.recv(a)
	want := make([]byte, 60)
	copy(want, arpFrame(a.mac, b.mac, 2, b.mac, b.ip4, a.mac, a.ip4))
	if !bytes.Equal(reply, want) {
		t.Fatalf("ARP reply\n%x\nwant\n%x", reply, want)
	}
	tn.barrier(a, b, c) // neither B nor C saw the request

	// A request for an unknown address is flooded.
	unknown := arpFrame(broadcast, a.mac, 1, a.mac, a.ip4, mac{}, netip.MustParseAddr("10.0.0.99"))
	tn.send(a, unknown)
	tn.expect(b, unknown)
	tn.expect(c, unknown)
	// The request taught A's address: B's ARP reply (unicast) reaches A only.
	r := arpFrame(a.mac, b.mac, 2, b.mac, b.ip4, a.mac, a.ip4)
	tn.send(b, r)
	tn.expect(a, r)
	tn.barrier(b, a, c)
	if _, ok := tn.sw.lookupIPLocked(a.ip4); !ok {
		t.Fatal("ARP sender address not learnt")
	}
}

// lookupIPLocked is lookupIP for tests.
func (s *Switch) lookupIPLocked(a netip.Addr) (ipEntry, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lookupIP(a, s.now())
}

func TestNeighborSolicitationAnswered(t *testing.T) {
	tn := newNet(t)
	a, b, c := tn.join(1), tn.join(2), tn.join(3)
	tn.announce(b, a, c)

	ns := nsFrame(a.mac, a.ip6, b.ip6, true)
	tn.send(a, ns)
	na := tn.recv(a)
	tn.barrier(a, b, c) // nobody else saw the solicitation

	if len(na) != 86 {
		t.Fatalf("NA of %d bytes: %x", len(na), na)
	}
	if !bytes.Equal(na[0:6], a.mac[:]) || !bytes.Equal(na[6:12], b.mac[:]) || binary.BigEndian.Uint16(na[12:14]) != typeIPv6 {
		t.Fatalf("NA Ethernet header %x", na[:14])
	}
	ip := na[14:]
	if ip[0]>>4 != 6 || binary.BigEndian.Uint16(ip[4:6]) != 32 || ip[6] != protoICMP6 || ip[7] != 255 {
		t.Fatalf("NA IPv6 header %x", ip[:40])
	}
	src, dst := netip.AddrFrom16([16]byte(ip[8:24])), netip.AddrFrom16([16]byte(ip[24:40]))
	if src != b.ip6 || dst != a.ip6 {
		t.Fatalf("NA from %v to %v, want %v to %v", src, dst, b.ip6, a.ip6)
	}
	m := ip[40:]
	if m[0] != icmpNA || m[1] != 0 || m[4] != 0x60 || m[5] != 0 || m[6] != 0 || m[7] != 0 {
		t.Fatalf("NA type/code/flags %x", m[:8])
	}
	if netip.AddrFrom16([16]byte(m[8:24])) != b.ip6 {
		t.Fatalf("NA target %x", m[8:24])
	}
	if m[24] != optTargetLL || m[25] != 1 || !bytes.Equal(m[26:32], b.mac[:]) {
		t.Fatalf("NA option %x", m[24:])
	}
	sum := binary.BigEndian.Uint16(m[2:4])
	zeroed := append([]byte(nil), m...)
	zeroed[2], zeroed[3] = 0, 0
	if want := icmp6Sum(src, dst, zeroed); sum != want {
		t.Fatalf("NA checksum %#04x, want %#04x", sum, want)
	}

	// Without a source-link-layer option the NA goes to the Ethernet source.
	tn.send(a, nsFrame(a.mac, a.ip6, b.ip6, false))
	if got := tn.recv(a); !bytes.Equal(got, na) {
		t.Fatalf("NA without SLL option:\n%x\nwant\n%x", got, na)
	}

	// Duplicate address detection (source ::) is left to the owner.
	dad := nsFrame(c.mac, netip.IPv6Unspecified(), b.ip6, false)
	tn.send(c, dad)
	tn.expect(a, dad)
	tn.expect(b, dad)

	// A solicitation with a bad checksum is not answered, just flooded.
	bad := nsFrame(a.mac, a.ip6, b.ip6, true)
	bad[14+40+2] ^= 0xff
	tn.send(a, bad)
	tn.expect(b, bad)
	tn.expect(c, bad)
	tn.barrier(a, b, c)
}

func TestExpiry(t *testing.T) {
	tn := newNet(t)
	a, b, c := tn.join(1), tn.join(2), tn.join(3)
	tn.announce(b, a, c)

	tn.clk.Advance(DefaultExpire - time.Second)
	p := ipv4Frame(broadcast, a.mac, a.ip4, b.ip4, "still known")
	tn.send(a, p)
	tn.expect(b, withDst(p, b.mac))
	tn.barrier(a, b, c)

	tn.clk.Advance(2 * time.Second) // B last seen 121 s ago
	tn.send(a, p)
	tn.expect(b, p) // flooded unchanged
	tn.expect(c, p)
	req := arpFrame(broadcast, a.mac, 1, a.mac, a.ip4, mac{}, b.ip4)
	tn.send(a, req)
	tn.expect(b, req)
	tn.expect(c, req)
	tn.barrier(a, b, c)

	// A shorter age, set as an option.
	if err := tn.sw.SetOption("expire", "30s"); err != nil {
		t.Fatal(err)
	}
	if v, _ := tn.sw.Option("expire"); v != "30s" {
		t.Fatalf("expire = %q", v)
	}
	if err := tn.sw.SetOption("expire", "-1s"); err == nil {
		t.Fatal("negative expire accepted")
	}
	tn.announce(b, a, c)
	tn.clk.Advance(10 * time.Second)
	var ips []IPInfo
	v, _ := tn.sw.Option("ips")
	json.Unmarshal([]byte(v), &ips)
	found := false
	for _, e := range ips {
		if e.IP == b.ip4.String() {
			found = e.AgeSeconds == 10 && e.Port == b.port.Num()
		}
	}
	if !found {
		t.Fatalf("B's entry not 10 s old on port %d: %s", b.port.Num(), v)
	}
	tn.clk.Advance(21 * time.Second)
	tn.send(a, p)
	tn.expect(b, p)
	tn.expect(c, p)
	for _, e := range tn.sw.IPs() {
		if e.Port == b.port.Num() {
			t.Fatalf("expired entry listed: %+v", e)
		}
	}
}

func TestFlushOnLeave(t *testing.T) {
	tn := newNet(t)
	a, b, c := tn.join(1), tn.join(2), tn.join(3)
	tn.announce(b, a, c)
	tn.announce(a, b, c)
	b.port.Close()
	for _, e := range tn.sw.IPs() {
		if e.Port == b.port.Num() {
			t.Fatalf("entry of the port that left: %+v", e)
		}
	}
	for _, e := range tn.sw.MACs() {
		if e.Port == b.port.Num() {
			t.Fatalf("MAC entry of the port that left: %+v", e)
		}
	}
	// Frames for B's addresses are flooded again (to C, the only other).
	p := ipv4Frame(b.mac, a.mac, a.ip4, b.ip4, "gone")
	tn.send(a, p)
	tn.expect(c, p)
	req := arpFrame(broadcast, a.mac, 1, a.mac, a.ip4, mac{}, b.ip4)
	tn.send(a, req)
	tn.expect(c, req)
	// A's entries are still there.
	q := ipv4Frame(broadcast, c.mac, c.ip4, a.ip4, "to a")
	tn.send(c, q)
	tn.expect(a, withDst(q, a.mac))
	tn.barrier(c, a)
}

func TestShortFrameIsAnError(t *testing.T) {
	tn := newNet(t)
	a, b := tn.join(1), tn.join(2)
	tn.send(a, make([]byte, 13))
	tn.barrier(a, b)
	if got := a.port.Stats().Errors; got != 1 {
		t.Fatalf("errors = %d, want 1", got)
	}
	// Exactly 14 bytes is a frame: flooded.
	f := eth(broadcast, a.mac, 0x88b5, nil)
	tn.send(a, f)
	tn.expect(b, f)
}

func TestConcurrentPorts(t *testing.T) {
	// Lossy with room for every frame: the frames are rewritten (Alt), and
	// the engine's lossless pool does not bound frames delivered only in
	// their Alt form.
	tn := newNetConfig(t, engine.Config{PoolSize: 1024})
	nodes := []*node{tn.join(1), tn.join(2), tn.join(3), tn.join(4)}
	for _, n := range nodes {
		tn.announce(n, without(nodes, n)...)
	}
	const per = 300
	var wg sync.WaitGroup
	for i, n := range nodes {
		to := nodes[(i+1)%len(nodes)]
		wg.Add(2)
		go func() {
			defer wg.Done()
			for k := 0; k < per; k++ {
				var f []byte
				if k%2 == 0 {
					f = ipv4Frame(broadcast, n.mac, n.ip4, to.ip4, "x")
				} else {
					f = ipv6Frame(broadcast, n.mac, n.ip6, to.ip6, 17, 64, []byte("y"))
				}
				if n.ep.Inject(tn.ctx, f) != nil {
					return
				}
			}
		}()
		go func() {
			defer wg.Done()
			for k := 0; k < per; k++ {
				f, err := n.ep.Recv(tn.ctx)
				if err != nil {
					t.Errorf("port %d got %d of %d: %v; stats %+v", n.port.Num(), k, per, err, n.port.Stats())
					return
				}
				if mac(f[0:6]) != n.mac {
					t.Errorf("port %d got a frame for %x", n.port.Num(), f[0:6])
					return
				}
			}
		}()
	}
	wg.Wait()
}

func without(ns []*node, x *node) []*node {
	var out []*node
	for _, n := range ns {
		if n != x {
			out = append(out, n)
		}
	}
	return out
}

// nullNet is a policy.Network that drops what is emitted.
type nullNet struct{ emitted int }

func (*nullNet) NumPorts() int            { return 8 }
func (n *nullNet) Emit(int, []byte) error { n.emitted++; return nil }

func TestRouteDoesNotAllocate(t *testing.T) {
	nn := &nullNet{}
	pol, _ := New(nn)
	s := pol.(*Switch)
	for p := 0; p < 3; p++ {
		s.PostNewPort(p)
	}
	members := policy.NewPortSet(8)
	for p := 0; p < 3; p++ {
		members.Add(p)
	}
	a, b := mac{2, 0, 0, 0, 0, 1}, mac{2, 0, 0, 0, 0, 2}
	a4, b4 := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	a6, b6 := netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2")
	fromA := [][]byte{
		ipv4Frame(broadcast, a, a4, b4, "rewritten"),
		ipv4Frame(b, a, a4, b4, "as is"),
		ipv6Frame(broadcast, a, a6, b6, 17, 64, []byte("v6")),
		arpFrame(broadcast, a, 1, a, a4, mac{}, b4),
		nsFrame(a, a6, b6, true),
		eth(broadcast, a, 0x88b5, []byte("flood")),
		make([]byte, 10),
	}
	fromB := [][]byte{naFrame(broadcast, b, b6, netip.MustParseAddr("ff02::1"), 0x20, b6), arpFrame(broadcast, b, 1, b, b4, mac{}, b4)}
	out := make([]policy.Delivery, len(fromA))
	run := func() {
		for i := range out {
			out[i].Reset()
		}
		s.Route(1, fromB, &members, out[:len(fromB)])
		for i := range out {
			out[i].Reset()
		}
		s.Route(0, fromA, &members, out)
	}
	run()
	if !out[0].AltPorts.Has(1) || out[0].Ports.Len() != 0 || !bytes.Equal(out[0].Alt[0:6], b[:]) {
		t.Fatalf("rewritten frame: %+v", out[0])
	}
	if !out[1].Ports.Has(1) || out[1].Ports.Len() != 1 || out[1].Alt != nil {
		t.Fatalf("frame with the right MAC: %+v", out[1])
	}
	if out[3].Ports.Len() != 0 || out[4].Ports.Len() != 0 || nn.emitted != 2 {
		t.Fatalf("ARP and NS not answered: %+v %+v, %d emitted", out[3], out[4], nn.emitted)
	}
	if !out[5].Ports.Has(1) || !out[5].Ports.Has(2) || out[5].Ports.Has(0) {
		t.Fatalf("flood: %+v", out[5])
	}
	if !out[6].Invalid {
		t.Fatal("short frame not invalid")
	}
	if n := testing.AllocsPerRun(100, run); n != 0 {
		t.Fatalf("%v allocations per batch", n)
	}
}

func BenchmarkRoute(b *testing.B) {
	pol, _ := New(&nullNet{})
	s := pol.(*Switch)
	s.PostNewPort(0)
	s.PostNewPort(1)
	members := policy.NewPortSet(8)
	members.Add(0)
	members.Add(1)
	am, bm := mac{2, 0, 0, 0, 0, 1}, mac{2, 0, 0, 0, 0, 2}
	a4, b4 := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	out := make([]policy.Delivery, 16)
	s.Route(1, [][]byte{ipv4Frame(am, bm, b4, a4, "hi")}, &members, out[:1])
	msgs := make([][]byte, 16)
	for i := range msgs {
		msgs[i] = ipv4Frame(bm, am, a4, b4, string(make([]byte, 1000)))
	}
	b.ReportAllocs()
	b.SetBytes(16 * int64(len(msgs[0])))
	for b.Loop() {
		for i := range out {
			out[i].Reset()
		}
		s.Route(0, msgs, &members, out)
	}
}

// Tables counts the live entries that the listings show, and none once
// they expired.
func TestTables(t *testing.T) {
	tn := newNet(t)
	a, b, c := tn.join(1), tn.join(2), tn.join(3)
	tn.announce(a, b, c)
	tn.announce(b, a, c)
	listed := func(name string) int {
		t.Helper()
		v, err := tn.sw.Option(name)
		if err != nil {
			t.Fatal(err)
		}
		var rows []json.RawMessage
		if err := json.Unmarshal([]byte(v), &rows); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return len(rows)
	}
	sizes := func() map[string]int {
		m := map[string]int{}
		for _, tab := range tn.sw.Tables() {
			if tab.Max != DefaultHashSize {
				t.Errorf("table %s holds %d, want %d", tab.Name, tab.Max, DefaultHashSize)
			}
			m[tab.Name] = tab.Entries
		}
		return m
	}
	got := sizes()
	if got["mac"] != 2 || got["mac"] != listed("macs") || got["ip"] < 2 || got["ip"] != listed("ips") {
		t.Fatalf("tables %v; listed %d MACs, %d IPs; want the 2 MACs and their addresses", got, listed("macs"), listed("ips"))
	}
	tn.clk.Advance(DefaultExpire + time.Second)
	if got := sizes(); got["mac"] != 0 || got["ip"] != 0 {
		t.Fatalf("tables %v once every entry expired, want empty", got)
	}
}
