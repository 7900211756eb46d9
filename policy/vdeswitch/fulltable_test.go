package vdeswitch

import (
	"encoding/binary"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/ipn-project/ipn/policy"
)

// fullRig is a switch with ports 0..7 connected, on a fake clock, whose
// table of hashSize entries is full of fresh MACs learnt on port 7.
type fullRig struct {
	sw      *Switch
	clk     *clock
	members policy.PortSet
}

func newFullRig(tb testing.TB, hashSize int) *fullRig {
	tb.Helper()
	clk := &clock{t: time.Unix(1000, 0)}
	r := &fullRig{sw: newSwitch(&fakeNet{ports: 8, emitted: map[int][][]byte{}}, clk.now), clk: clk}
	for p := 0; p < 8; p++ {
		r.sw.PostNewPort(p)
		r.members.Add(p)
	}
	if err := r.sw.SetOption("hashsize", strconv.Itoa(hashSize)); err != nil {
		tb.Fatal(err)
	}
	f := frame(bcast, mac(0), "fill")
	f[6] = 0x06 // locally administered, unicast: unlike mac() and srcMAC()
	msgs := [][]byte{f}
	out := make([]policy.Delivery, 1)
	for i := 0; i < hashSize; i++ {
		binary.BigEndian.PutUint32(f[8:12], uint32(i))
		out[0].Reset()
		r.sw.Route(7, msgs, &r.members, out)
	}
	if n := r.tableLen(); n != hashSize {
		tb.Fatalf("table holds %d entries after filling, want %d", n, hashSize)
	}
	return r
}

func (r *fullRig) tableLen() int {
	r.sw.mu.Lock()
	defer r.sw.mu.Unlock()
	return len(r.sw.table)
}

func (r *fullRig) sweeps() int {
	r.sw.mu.Lock()
	defer r.sw.mu.Unlock()
	return r.sw.sweeps
}

// srcMAC is the i-th forged source MAC of a flood.
func srcMAC(i int) []byte {
	m := []byte{0x0a, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(m[2:], uint32(i))
	return m
}

// randomSources returns n frames to dst from n distinct unknown MACs.
func randomSources(n int, dst []byte) [][]byte {
	msgs := make([][]byte, n)
	for i := range msgs {
		msgs[i] = frame(dst, srcMAC(i), "flood")
	}
	return msgs
}

// TestFullTableFloodSweepsRarely floods a table full of fresh entries with
// frames from unknown MACs: none is learnt, each is flooded, and the table
// is swept at most once per sweepEvery, whatever the number of frames;
// once entries have expired, the next unknown MAC makes room and is learnt.
func TestFullTableFloodSweepsRarely(t *testing.T) {
	const size = 512
	r := newFullRig(t, size)
	msgs := randomSources(32, bcast)
	out := make([]policy.Delivery, len(msgs))
	route := func() {
		for i := range out {
			out[i].Reset()
		}
		r.sw.Route(0, msgs, &r.members, out)
	}
	base := r.sweeps()
	for i := 0; i < 1000; i++ {
		route()
		r.clk.t = r.clk.t.Add(time.Millisecond) // 1 s in all: still fresh
	}
	if n := r.sweeps() - base; n > 1 {
		t.Errorf("%d sweeps for 32000 frames from unknown MACs within %v, want at most 1", n, sweepEvery)
	}
	if n := r.tableLen(); n != size {
		t.Errorf("table holds %d entries, want %d", n, size)
	}
	if got := ports(out[0].Ports); !slices.Equal(got, []int{1, 2, 3, 4, 5, 6, 7}) {
		t.Errorf("broadcast from an unlearnt MAC delivered to %v", got)
	}
	// Frames to a MAC that could not be learnt are flooded.
	d := make([]policy.Delivery, 1)
	r.sw.Route(1, [][]byte{frame(srcMAC(0), mac(1), "x")}, &r.members, d)
	if got := ports(d[0].Ports); !slices.Equal(got, []int{0, 2, 3, 4, 5, 6, 7}) {
		t.Errorf("frame to an unlearnt MAC delivered to %v, want a flood", got)
	}

	// The filling entries expire: the next unknown MAC sweeps once and is
	// learnt; the rest of the flood fills the room it made.
	r.clk.t = r.clk.t.Add(DefaultExpire)
	base = r.sweeps()
	for i := 0; i < 100; i++ {
		route()
	}
	if n := r.sweeps() - base; n != 1 {
		t.Errorf("%d sweeps after expiry, want 1", n)
	}
	d[0].Reset()
	r.sw.Route(1, [][]byte{frame(srcMAC(0), mac(1), "x")}, &r.members, d)
	if got := ports(d[0].Ports); !slices.Equal(got, []int{0}) {
		t.Errorf("frame to a MAC learnt after expiry delivered to %v, want [0]", got)
	}
}

// TestFullTableKeepsLearntHosts checks that hosts learnt before a flood
// of unknown MACs keep their entries and their unicast forwarding.
func TestFullTableKeepsLearntHosts(t *testing.T) {
	r := newRig(t, 3)
	r.sw.SetOption("hashsize", "4")
	r.send(0, frame(bcast, mac(0), "a"))
	r.send(1, frame(bcast, mac(1), "b"))
	for i := 0; i < 100000; i++ {
		r.send(2, frame(bcast, srcMAC(i), "forged"))
		if i%1000 == 0 {
			r.clk.t = r.clk.t.Add(time.Second)
			r.send(0, frame(bcast, mac(0), "a")) // a and b stay alive
			r.send(1, frame(bcast, mac(1), "b"))
		}
	}
	if n := len(r.sw.table); n > 4 {
		t.Fatalf("table holds %d entries, limit 4", n)
	}
	r.expect(r.send(0, frame(mac(1), mac(0), "to b")), 1)
	r.expect(r.send(1, frame(mac(0), mac(1), "to a")), 0)
}

// TestShorterExpireSweeps checks that shortening expire lets a full table
// make room at once for entries that are expired under the new setting.
func TestShorterExpireSweeps(t *testing.T) {
	r := newFullRig(t, 16)
	r.clk.t = r.clk.t.Add(2 * time.Second)
	out := make([]policy.Delivery, 1)
	r.sw.Route(0, [][]byte{frame(bcast, srcMAC(1), "x")}, &r.members, out)
	if err := r.sw.SetOption("expire", "1s"); err != nil {
		t.Fatal(err)
	}
	out[0].Reset()
	r.sw.Route(0, [][]byte{frame(bcast, srcMAC(2), "x")}, &r.members, out)
	if n := r.tableLen(); n != 1 {
		t.Fatalf("table holds %d entries after expire went below their age, want 1 (the new MAC)", n)
	}
}

// TestFullTableRouteDoesNotAllocate routes frames from unknown MACs into a
// full table.
func TestFullTableRouteDoesNotAllocate(t *testing.T) {
	r := newFullRig(t, 64)
	msgs := randomSources(16, mac(0x33))
	out := make([]policy.Delivery, len(msgs))
	if n := testing.AllocsPerRun(100, func() {
		for i := range out {
			out[i].Reset()
		}
		r.sw.Route(0, msgs, &r.members, out)
	}); n != 0 {
		t.Fatalf("%v allocations per batch", n)
	}
}

// BenchmarkFullTableRandomSources routes frames from unknown source MACs
// into a table full of fresh entries: the cost of a frame must not grow
// with the table.
func BenchmarkFullTableRandomSources(b *testing.B) {
	for _, size := range []int{DefaultHashSize, MaxHashSize} {
		b.Run(fmt.Sprintf("hashsize=%d", size), func(b *testing.B) {
			r := newFullRig(b, size)
			msgs := randomSources(1024, bcast)
			batch := make([][]byte, 16)
			out := make([]policy.Delivery, len(batch))
			// The first unknown MAC sweeps the table, once: not the cost
			// measured here.
			r.sw.Route(0, msgs[:len(batch)], &r.members, out)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i += len(batch) {
				for j := range batch {
					batch[j] = msgs[(i+j)%len(msgs)]
					out[j].Reset()
				}
				r.sw.Route(0, batch, &r.members, out)
			}
		})
	}
}
