package l3switch

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ipn-project/ipn/policy"
)

// TestHashSizeBounds sets hashsize just inside and just outside its
// range: the first are taken, the others refused with EINVAL and an error
// that names the option, the value and the range, leaving the setting.
func TestHashSizeBounds(t *testing.T) {
	p, err := New(&nullNet{})
	if err != nil {
		t.Fatal(err)
	}
	sw := p.(*Switch)
	defer sw.Close()
	if v, _ := sw.Option("hashsize"); v != strconv.Itoa(DefaultHashSize) {
		t.Fatalf("hashsize = %q, want %d", v, DefaultHashSize)
	}
	rng := fmt.Sprintf("want %d..%d", MinHashSize, MaxHashSize)
	for _, c := range []struct {
		value string
		ok    bool
	}{
		{strconv.Itoa(MinHashSize - 1), false},
		{strconv.Itoa(MinHashSize), true},
		{strconv.Itoa(MaxHashSize), true},
		{strconv.Itoa(MaxHashSize + 1), false},
		{"-1", false},
		{"4k", false},
		{"", false},
	} {
		before, _ := sw.Option("hashsize")
		err := sw.SetOption("hashsize", c.value)
		got, _ := sw.Option("hashsize")
		if c.ok {
			if err != nil || got != c.value {
				t.Errorf("hashsize %q: %v, reads back %q", c.value, err, got)
			}
			continue
		}
		if err == nil {
			t.Errorf("hashsize %q accepted, want %s", c.value, rng)
			continue
		}
		msg := err.Error()
		if !errors.Is(err, syscall.EINVAL) || !strings.Contains(msg, "option hashsize") ||
			!strings.Contains(msg, strconv.Quote(c.value)) || !strings.Contains(msg, rng) {
			t.Errorf("hashsize %q: error %q, want EINVAL naming the option, the value and %q", c.value, msg, rng)
		}
		if got != before {
			t.Errorf("hashsize %q refused but changed it from %q to %q", c.value, before, got)
		}
	}
}

// direct is a switch driven by calling Route, on a fake clock, with ports
// 0..2 connected: hosts a (port 0) and b (port 1), and a forger (port 2).
type direct struct {
	t       testing.TB
	s       *Switch
	nn      *nullNet
	clk     *fakeClock
	members policy.PortSet
	out     []policy.Delivery
}

var (
	hostA = struct {
		mac      mac
		ip4, ip6 netip.Addr
	}{mac{2, 0, 0, 0, 0, 1}, netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fd00::1")}
	hostB = struct {
		mac      mac
		ip4, ip6 netip.Addr
	}{mac{2, 0, 0, 0, 0, 2}, netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("fd00::2")}
)

func newDirect(tb testing.TB, hashSize int) *direct {
	tb.Helper()
	d := &direct{t: tb, nn: &nullNet{}, clk: newFakeClock(), out: make([]policy.Delivery, 64)}
	p, err := New(d.nn)
	if err != nil {
		tb.Fatal(err)
	}
	d.s = p.(*Switch)
	d.s.now = d.clk.Now
	if err := d.s.SetOption("hashsize", strconv.Itoa(hashSize)); err != nil {
		tb.Fatal(err)
	}
	for p := 0; p < 3; p++ {
		d.s.PostNewPort(p)
		d.members.Add(p)
	}
	return d
}

// route routes msgs from src and returns their deliveries.
func (d *direct) route(src int, msgs ...[]byte) []policy.Delivery {
	out := d.out[:len(msgs)]
	for i := range out {
		out[i].Reset()
	}
	d.s.Route(src, msgs, &d.members, out)
	return out
}

// announce has a and b send a gratuitous ARP and an unsolicited NA each.
func (d *direct) announce() {
	for p, h := range []struct {
		mac      mac
		ip4, ip6 netip.Addr
	}{hostA, hostB} {
		d.route(p, arpFrame(broadcast, h.mac, 1, h.mac, h.ip4, mac{}, h.ip4),
			naFrame(mac{0x33, 0x33, 0, 0, 0, 1}, h.mac, h.ip6, netip.MustParseAddr("ff02::1"), 0x20, h.ip6))
	}
}

// checkHosts checks that a and b reach each other by IP (rewritten to the
// learnt MAC, to the owner only) and that the switch answers ARP for them.
func (d *direct) checkHosts() {
	d.t.Helper()
	for _, c := range []struct {
		src, dst int
		from, to mac
		sip, dip netip.Addr
	}{
		{0, 1, hostA.mac, hostB.mac, hostA.ip4, hostB.ip4},
		{1, 0, hostB.mac, hostA.mac, hostB.ip4, hostA.ip4},
		{0, 1, hostA.mac, hostB.mac, hostA.ip6, hostB.ip6},
	} {
		var f []byte
		if c.dip.Is4() {
			f = ipv4Frame(broadcast, c.from, c.sip, c.dip, "x")
		} else {
			f = ipv6Frame(broadcast, c.from, c.sip, c.dip, 17, 64, []byte("x"))
		}
		o := d.route(c.src, f)[0]
		if o.Ports.Len() != 0 || o.AltPorts.Len() != 1 || !o.AltPorts.Has(c.dst) || mac(o.Alt[0:6]) != c.to {
			d.t.Fatalf("%v to %v: delivered as sent to %d ports, rewritten to %d (to %d: %v), want rewritten to port %d only",
				c.sip, c.dip, o.Ports.Len(), o.AltPorts.Len(), c.dst, o.AltPorts.Has(c.dst), c.dst)
		}
	}
	before := d.nn.emitted
	if o := d.route(0, arpFrame(broadcast, hostA.mac, 1, hostA.mac, hostA.ip4, mac{}, hostB.ip4))[0]; o.Ports.Len() != 0 || d.nn.emitted != before+1 {
		d.t.Fatalf("ARP for b not answered: forwarded to %d ports, %d replies", o.Ports.Len(), d.nn.emitted-before)
	}
}

// forged returns the i-th frame of a flood from port 2 with forged
// addresses: an IPv4 frame (one source MAC, one source IP) or, every other
// frame, a neighbor advertisement that teaches two of each.
func forged(i int) []byte {
	m1 := mac{0x0a, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(m1[2:], uint32(i))
	if i%2 == 0 {
		var a [4]byte
		binary.BigEndian.PutUint32(a[:], 0xac100000+uint32(i)) // 172.16/12
		return ipv4Frame(broadcast, m1, netip.AddrFrom4(a), netip.MustParseAddr("10.9.9.9"), "forged")
	}
	m2 := m1
	m2[1] = 1
	var s6, t6 [16]byte
	s6[0], s6[1], t6[0], t6[1], t6[7] = 0xfd, 0x0f, 0xfd, 0x0f, 1
	binary.BigEndian.PutUint32(s6[12:], uint32(i))
	binary.BigEndian.PutUint32(t6[12:], uint32(i))
	return ndpFrame(mac{0x33, 0x33, 0, 0, 0, 1}, m1, netip.AddrFrom16(s6), netip.MustParseAddr("ff02::1"),
		icmpNA, 0x20, netip.AddrFrom16(t6), optTargetLL, m2)
}

// TestFloodForgedSources floods the switch with 100,000 frames from
// distinct forged addresses: the tables stay within hashsize, sweeps stay
// at most one a second, the hosts learnt before keep being forwarded to,
// and once the forged entries expire, a new host is learnt again.
func TestFloodForgedSources(t *testing.T) {
	for _, size := range []int{MinHashSize, 64, DefaultHashSize} {
		t.Run(fmt.Sprint("hashsize=", size), func(t *testing.T) {
			d := newDirect(t, size)
			if size >= 2 {
				d.announce()
			}
			const n, batch = 100000, 32
			msgs := make([][]byte, batch)
			start := d.clk.Now()
			for i := 0; i < n; i += batch {
				for j := range msgs {
					msgs[j] = forged(i + j)
				}
				out := d.route(2, msgs...)
				if i == 0 && (!out[0].Ports.Has(0) || !out[0].Ports.Has(1)) {
					t.Fatalf("forged frame to an unknown MAC not flooded: %+v", out[0])
				}
				d.clk.Advance(time.Millisecond)
				if i%(100*batch) == 0 && size >= 2 {
					d.announce() // a and b keep talking
				}
			}
			d.s.mu.Lock()
			ips, macs, sweeps := len(d.s.ips), len(d.s.macs), d.s.sweeps
			d.s.mu.Unlock()
			if ips > size || macs > size {
				t.Fatalf("after %d forged frames the tables hold %d IPs and %d MACs, hashsize %d", n, ips, macs, size)
			}
			if most := int(d.clk.Now().Sub(start)/sweepEvery) + 1; sweeps > most {
				t.Errorf("%d sweeps in %v, want at most %d", sweeps, d.clk.Now().Sub(start), most)
			}
			if size >= 2 {
				d.checkHosts()
			}

			// The forged entries expire; a new host is learnt again.
			d.clk.Advance(DefaultExpire)
			c, c4 := mac{2, 0, 0, 0, 0, 3}, netip.MustParseAddr("10.0.0.3")
			d.route(2, arpFrame(broadcast, c, 1, c, c4, mac{}, c4))
			o := d.route(0, ipv4Frame(broadcast, hostA.mac, hostA.ip4, c4, "to c"))[0]
			if !o.AltPorts.Has(2) || o.AltPorts.Len() != 1 || o.Ports.Len() != 0 {
				t.Fatalf("frame to a host learnt after expiry: as sent to %d ports, rewritten to %d, want rewritten to port 2", o.Ports.Len(), o.AltPorts.Len())
			}
		})
	}
}

// TestLowerHashSize checks that lowering hashsize keeps the entries and
// learns no new address until the table is below the new size.
func TestLowerHashSize(t *testing.T) {
	d := newDirect(t, 16)
	d.announce()
	if err := d.s.SetOption("hashsize", "1"); err != nil {
		t.Fatal(err)
	}
	d.checkHosts()
	c, c4 := mac{2, 0, 0, 0, 0, 3}, netip.MustParseAddr("10.0.0.3")
	d.route(2, arpFrame(broadcast, c, 1, c, c4, mac{}, c4))
	if o := d.route(0, ipv4Frame(broadcast, hostA.mac, hostA.ip4, c4, "to c"))[0]; o.AltPorts.Len() != 0 || o.Ports.Len() != 2 {
		t.Fatalf("a new host was learnt in a table above hashsize: %+v", o)
	}
}

// TestFullTableRouteDoesNotAllocate routes forged frames into full tables.
func TestFullTableRouteDoesNotAllocate(t *testing.T) {
	d := newDirect(t, 8)
	d.announce()
	msgs := make([][]byte, 16)
	for i := range msgs {
		msgs[i] = forged(i)
	}
	d.route(2, msgs...)
	if n := testing.AllocsPerRun(100, func() { d.route(2, msgs...) }); n != 0 {
		t.Fatalf("%v allocations per batch", n)
	}
}

// BenchmarkFullTableForgedSources routes frames from forged addresses into
// full tables: the cost of a frame must not grow with the tables.
func BenchmarkFullTableForgedSources(b *testing.B) {
	for _, size := range []int{DefaultHashSize, MaxHashSize} {
		b.Run(fmt.Sprint("hashsize=", size), func(b *testing.B) {
			d := newDirect(b, size)
			msgs := make([][]byte, 32)
			for i := 0; i < size; i += len(msgs) { // fill both tables
				for j := range msgs {
					msgs[j] = forged(2*(i+j) + 1)
				}
				d.route(2, msgs...)
			}
			flood := make([][]byte, 1024)
			for i := range flood {
				flood[i] = forged(2*size + 2 + i)
			}
			d.route(2, flood[:len(msgs)]...) // the first sweep of the full tables
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i += len(msgs) {
				for j := range msgs {
					msgs[j] = flood[(i+j)%len(flood)]
				}
				d.route(2, msgs...)
			}
		})
	}
}
