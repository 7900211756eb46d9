package vdeswitch

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ipn-project/ipn/policy"
)

type fakeNet struct {
	mu      sync.Mutex
	ports   int
	emitted map[int][][]byte
}

func (f *fakeNet) NumPorts() int { return f.ports }
func (f *fakeNet) Emit(p int, m []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.emitted[p] = append(f.emitted[p], append([]byte(nil), m...))
	return nil
}

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

// rig is a switch with ports 0..n-1 connected.
type rig struct {
	t       *testing.T
	sw      *Switch
	clk     *clock
	net     *fakeNet
	members policy.PortSet
}

func newRig(t *testing.T, n int) *rig {
	clk := &clock{t: time.Unix(1000, 0)}
	fn := &fakeNet{ports: 8, emitted: map[int][][]byte{}}
	r := &rig{t: t, sw: newSwitch(fn, clk.now), clk: clk, net: fn}
	for p := 0; p < n; p++ {
		r.sw.PostNewPort(p)
		r.members.Add(p)
	}
	return r
}

func mac(b byte) []byte { return []byte{0x02, 0, 0, 0, 0, b} }

var bcast = []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

func frame(dst, src []byte, payload string) []byte {
	f := append(append(append([]byte{}, dst...), src...), 0x08, 0x00)
	return append(f, payload...)
}

func tagged(dst, src []byte, vlan uint16, payload string) []byte {
	f := append(append(append([]byte{}, dst...), src...), 0x81, 0x00, byte(vlan>>8), byte(vlan), 0x08, 0x00)
	return append(f, payload...)
}

// send routes one frame from src and returns its delivery.
func (r *rig) send(src int, f []byte) policy.Delivery {
	out := make([]policy.Delivery, 1)
	r.sw.Route(src, [][]byte{f}, &r.members, out)
	return out[0]
}

func ports(s policy.PortSet) []int {
	var l []int
	for p := s.Next(0); p >= 0; p = s.Next(p + 1) {
		l = append(l, p)
	}
	return l
}

func (r *rig) expect(d policy.Delivery, want ...int) {
	r.t.Helper()
	if got := ports(d.Ports); !slices.Equal(got, want) {
		r.t.Fatalf("delivered to %v, want %v", got, want)
	}
}

func TestLearnForwardFlood(t *testing.T) {
	r := newRig(t, 4)
	r.expect(r.send(0, frame(bcast, mac(0), "hello")), 1, 2, 3)
	r.expect(r.send(1, frame(mac(9), mac(1), "unknown")), 0, 2, 3)
	r.expect(r.send(1, frame(mac(0), mac(1), "unicast")), 0)
	r.expect(r.send(0, frame(mac(1), mac(0), "back")), 1)
	// Multicast floods, never back to the source.
	r.expect(r.send(2, frame([]byte{0x01, 0, 0x5e, 0, 0, 1}, mac(2), "mc")), 0, 1, 3)
	// A frame to a MAC learnt on its own port goes nowhere.
	r.expect(r.send(0, frame(mac(0), mac(0), "self")))
}

func TestRelearnExpireFlush(t *testing.T) {
	r := newRig(t, 3)
	r.send(0, frame(bcast, mac(7), "a"))
	r.expect(r.send(1, frame(mac(7), mac(1), "x")), 0)
	r.send(2, frame(bcast, mac(7), "moved")) // mac 7 now behind port 2
	r.expect(r.send(1, frame(mac(7), mac(1), "x")), 2)
	r.sw.SetOption("expire", "10s")
	r.clk.t = r.clk.t.Add(11 * time.Second)
	r.expect(r.send(1, frame(mac(7), mac(1), "x")), 0, 2)
	r.send(2, frame(bcast, mac(7), "again"))
	r.sw.DeletePort(2)
	r.members.Remove(2)
	r.expect(r.send(1, frame(mac(7), mac(1), "x")), 0)
}

func TestShortFramesAreErrors(t *testing.T) {
	r := newRig(t, 2)
	if d := r.send(0, []byte{1, 2, 3}); !d.Invalid || d.Ports.Len() != 0 {
		t.Fatalf("short frame: %+v", d)
	}
	if d := r.send(0, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1, 0x81, 0, 0}); !d.Invalid {
		t.Fatal("short tagged frame accepted")
	}
}

func TestHashSizeLimit(t *testing.T) {
	r := newRig(t, 2)
	r.sw.SetOption("hashsize", "2")
	for i := byte(0); i < 5; i++ {
		r.send(0, frame(bcast, mac(10+i), "x"))
	}
	var macs []MACEntry
	v, _ := r.sw.Option("macs")
	json.Unmarshal([]byte(v), &macs)
	if len(macs) != 2 {
		t.Fatalf("table holds %d entries, limit 2", len(macs))
	}
	// An unlearnt MAC is flooded.
	r.expect(r.send(1, frame(mac(14), mac(1), "x")), 0)
}

func TestVLANs(t *testing.T) {
	r := newRig(t, 4)
	for _, o := range [][2]string{
		{"vlan.add", "10"}, {"vlan.add", "20"},
		{"port.vlan", "0 10"}, {"port.vlan", "1 20"}, {"port.vlan", "2 0"}, {"port.trunk", "2 10,20"}, {"port.vlan", "3 10"},
	} {
		if err := r.sw.SetOption(o[0], o[1]); err != nil {
			t.Fatalf("%v: %v", o, err)
		}
	}
	// Access port 0 (vlan 10): port 3 gets it as is, the trunk tagged.
	f := frame(bcast, mac(0), "v10")
	d := r.send(0, f)
	r.expect(d, 3)
	if got := ports(d.AltPorts); !slices.Equal(got, []int{2}) {
		t.Fatalf("tagged copy to %v", got)
	}
	if want := tagged(bcast, mac(0), 10, "v10"); !bytes.Equal(d.Alt, want) {
		t.Fatalf("tag added wrong:\n%x\n%x", d.Alt, want)
	}
	// The trunk sends on vlan 20: port 1 gets it untagged, nobody else.
	d = r.send(2, tagged(bcast, mac(2), 20, "v20"))
	r.expect(d)
	if got := ports(d.AltPorts); !slices.Equal(got, []int{1}) {
		t.Fatalf("untagged copy to %v", got)
	}
	if want := frame(bcast, mac(2), "v20"); !bytes.Equal(d.Alt, want) {
		t.Fatalf("tag removed wrong:\n%x\n%x", d.Alt, want)
	}
	// Untagged on the trunk (no untagged vlan) and a vlan it lacks: dropped.
	r.expect(r.send(2, frame(bcast, mac(2), "none")))
	r.expect(r.send(2, tagged(bcast, mac(2), 30, "v30")))
	// MACs are per VLAN: mac 0 learnt on vlan 10 is unknown on vlan 20.
	d = r.send(1, frame(mac(0), mac(1), "x"))
	if d.Ports.Len() != 0 || !slices.Equal(ports(d.AltPorts), []int{2}) {
		t.Fatalf("vlan 20 frame to a vlan 10 MAC: %v %v", ports(d.Ports), ports(d.AltPorts))
	}
	if err := r.sw.SetOption("port.vlan", "0 99"); err == nil {
		t.Fatal("port on a VLAN that does not exist")
	}
}

// A probe of ours sent out of link port 1 that comes back in on link port
// 3 blocks port 3; the block lifts once probes stop coming back. Ports 0
// and 4 are members that are not links: no probe reaches them, and theirs
// block nothing.
func TestLoopBlocksAndRecovers(t *testing.T) {
	r := newRig(t, 5)
	for _, p := range []int{1, 2, 3} {
		r.sw.LinkPort(p)
	}
	r.sw.SetOption("loop.interval", "1s")
	r.sw.loop.Probe()
	if n := len(r.net.emitted[0]) + len(r.net.emitted[4]); n != 0 {
		t.Fatalf("%d probes to members that are not links", n)
	}
	probe := r.net.emitted[1][0]
	if !IsProbe(probe) || len(probe) < 60 || binary.BigEndian.Uint16(probe[etherHeader+16:]) != 1 {
		t.Fatalf("probe %x", probe)
	}
	// From a member that is not a link, our probe goes nowhere and blocks
	// nothing.
	r.expect(r.send(0, probe))
	r.expect(r.send(4, frame(bcast, mac(4), "x")), 0, 1, 2, 3)
	if d := r.send(3, probe); d.Ports.Len() != 0 {
		t.Fatalf("own probe forwarded to %v", ports(d.Ports))
	}
	r.expect(r.send(0, frame(bcast, mac(0), "x")), 1, 2, 4)
	r.expect(r.send(3, frame(bcast, mac(3), "x")))
	if v, _ := r.sw.Option("loop.blocked"); v != "[3]" {
		t.Fatalf("loop.blocked %s, want [3]", v)
	}
	// A probe reflected on the port it left by is no loop.
	r.send(2, r.net.emitted[2][0])
	r.expect(r.send(0, frame(bcast, mac(0), "x")), 1, 2, 4)
	// Another switch's probe goes to the other links, not through the
	// block, nor to members that are not links, if its ID is higher than
	// ours; else nowhere.
	other := append([]byte(nil), probe...)
	copy(other[etherHeader+8:etherHeader+16], bytes.Repeat([]byte{0xff}, 8))
	r.expect(r.send(1, other), 2)
	r.expect(r.send(0, other))
	copy(other[etherHeader+8:etherHeader+16], make([]byte, 8))
	r.expect(r.send(1, other))
	r.clk.t = r.clk.t.Add(6 * time.Second)
	r.sw.loop.Probe()
	r.expect(r.send(0, frame(bcast, mac(0), "x")), 1, 2, 3, 4)
}

func TestOptionsAndDescribe(t *testing.T) {
	r := newRig(t, 2)
	r.send(0, frame(bcast, mac(5), "x"))
	if d := r.sw.DescribePort(0); d != "vlan 1 macs 02:00:00:00:00:05" {
		t.Fatalf("describe: %q", d)
	}
	for _, bad := range [][2]string{{"expire", "soon"}, {"vlan.add", "5000"}, {"port.vlan", "9 1"}, {"nope", ""}} {
		if err := r.sw.SetOption(bad[0], bad[1]); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
	if v, err := r.sw.Option("vlans"); err != nil || v != "[1]" {
		t.Fatalf("vlans %q %v", v, err)
	}
}

func BenchmarkRouteUnicast(b *testing.B) {
	r := newRig(&testing.T{}, 8)
	r.send(0, frame(bcast, mac(0), "x"))
	r.send(1, frame(bcast, mac(1), "x"))
	msgs := make([][]byte, 16)
	for i := range msgs {
		msgs[i] = frame(mac(1), mac(0), string(make([]byte, 50)))
	}
	out := make([]policy.Delivery, len(msgs))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i += len(msgs) {
		for j := range out {
			out[j].Reset()
		}
		r.sw.Route(0, msgs, &r.members, out)
	}
}

// TestTables counts the MACs learnt, per VLAN, and stops counting those
// that expired or whose port left, as metrics read them.
func TestTables(t *testing.T) {
	r := newRig(t, 3)
	entries := func() int {
		t.Helper()
		tabs := r.sw.Tables()
		if len(tabs) != 1 || tabs[0].Name != "mac" || tabs[0].Max != DefaultHashSize {
			t.Fatalf("tables %+v, want one of mac, at most %d", tabs, DefaultHashSize)
		}
		return tabs[0].Entries
	}
	if n := entries(); n != 0 {
		t.Fatalf("a new switch has %d entries, want 0", n)
	}
	r.send(0, frame(bcast, mac(1), "a"))
	r.send(0, frame(bcast, mac(2), "b"))
	r.send(1, frame(bcast, mac(3), "c"))
	r.send(1, frame(bcast, mac(3), "c again"))
	if n := entries(); n != 3 {
		t.Fatalf("%d entries after 3 MACs, want 3", n)
	}
	r.sw.DeletePort(1)
	if n := entries(); n != 2 {
		t.Fatalf("%d entries once port 1 left, want 2", n)
	}
	r.sw.SetOption("expire", "10s")
	r.clk.t = r.clk.t.Add(11 * time.Second)
	if n := entries(); n != 0 {
		t.Fatalf("%d entries once all expired, want 0", n)
	}
}
