package engine_test

import (
	"bytes"
	"errors"
	"fmt"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/ipn-project/ipn/endpoint/endpointtest"
	"github.com/ipn-project/ipn/engine"
	"github.com/ipn-project/ipn/policy"
)

// byByteTag is the tag of byByte, a test policy.
const byByteTag policy.Tag = 217

// byByte is a test policy that routes a message by its first byte: to that
// port; 0xff to nobody; 0xfe refused as invalid; 0xfd to every other
// member in a second form (the second byte flipped); 0xfc to every other
// member as sent.
type byByte struct{ policy.Base }

// byByteMembers is how many members byByte last saw.
var byByteMembers atomic.Int32

func (byByte) Route(src int, msgs [][]byte, members *policy.PortSet, out []policy.Delivery) {
	byByteMembers.Store(int32(members.Len()))
	for i, m := range msgs {
		d := &out[i]
		switch m[0] {
		case 0xff:
		case 0xfe:
			d.Invalid = true
		case 0xfd:
			buf := d.Buffer(len(m))
			copy(buf, m)
			buf[1] ^= 0xff
			d.Alt = buf
			d.AltPorts.CopyFrom(*members)
			d.AltPorts.Remove(src)
		case 0xfc:
			d.Ports.CopyFrom(*members)
			d.Ports.Remove(src)
		default:
			d.Ports.Add(int(m[0]))
		}
	}
}

func init() {
	policy.MustRegister(byByteTag, "test-by-byte", func(policy.Network) (policy.Policy, error) { return byByte{}, nil })
}

// recvAll receives want from nd in order, then checks that nothing more
// came (a duplicate would follow its original).
func recvAll(t *testing.T, name string, nd node, want ...[]byte) {
	t.Helper()
	c := ctx(t)
	for i, w := range want {
		got, err := nd.ep.Recv(c)
		if err != nil {
			t.Fatalf("%s, message %d (%x): %v", name, i, w, err)
		}
		if !bytes.Equal(got, w) {
			t.Fatalf("%s, message %d: got %x, want %x", name, i, got, w)
		}
	}
	select {
	case m := <-nd.ep.C():
		t.Fatalf("%s got an extra message %x", name, m)
	default:
	}
}

// A monitor gets every message the members send, once and as sent,
// whatever the policy does with it (one port, nobody, every port, a second
// form, the monitor's own port), but not those the policy refuses; the
// policy does not see the monitor among the members.
func TestMonitorSeesWhatMembersSend(t *testing.T) {
	for _, flags := range []engine.Flags{0, engine.Lossless} {
		t.Run(fmt.Sprintf("flags%d", flags), func(t *testing.T) {
			_, n := create(t, engine.Config{Proto: byByteTag, Flags: flags})
			a := join(t, n, engine.PortOptions{Want: 0})
			b := join(t, n, engine.PortOptions{Want: 1})
			mon := join(t, n, engine.PortOptions{Want: 2, Monitor: true, NoWrite: true})
			c := ctx(t)
			fromA := [][]byte{
				{1, 'u'},      // to b
				{0xff, 'n'},   // to nobody
				{0xfe, 'i'},   // invalid
				{0xfd, 'a'},   // b gets a second form
				{0xfc, 'f'},   // flood
				{2, 'm'},      // to the monitor's port itself
				{0, 'a', 'a'}, // back to its sender
				{1, 'l', 'a', 's', 't'},
			}
			for _, m := range fromA {
				if err := a.ep.Inject(c, m); err != nil {
					t.Fatal(err)
				}
			}
			var seen [][]byte
			for _, m := range fromA {
				if m[0] != 0xfe {
					seen = append(seen, m)
				}
			}
			recvAll(t, "monitor", mon, seen...)
			recvAll(t, "b", b, []byte{1, 'u'}, []byte{0xfd, 'a' ^ 0xff}, []byte{0xfc, 'f'}, []byte{1, 'l', 'a', 's', 't'})
			recvAll(t, "a", a, []byte{0, 'a', 'a'})
			if got := byByteMembers.Load(); got != 2 {
				t.Errorf("the policy saw %d members, want 2 (not the monitor)", got)
			}
			if err := b.ep.Inject(c, []byte{0, 'b'}); err != nil {
				t.Fatal(err)
			}
			recvAll(t, "a", a, []byte{0, 'b'})
			recvAll(t, "monitor", mon, []byte{0, 'b'})
			if s := mon.port.Stats(); s.MsgsIn != 0 || s.Drops != 0 {
				t.Errorf("monitor stats %+v", s)
			}
		})
	}
}

// On a hub, which floods every member, a monitor still gets each message
// once.
func TestMonitorOnHubOnce(t *testing.T) {
	_, n := create(t, engine.Config{})
	a := join(t, n, engine.PortOptions{})
	b := join(t, n, engine.PortOptions{})
	mon := join(t, n, engine.PortOptions{Monitor: true, NoWrite: true})
	c := ctx(t)
	for _, m := range []string{"one", "two", "three"} {
		if err := a.ep.Inject(c, []byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	recvAll(t, "b", b, []byte("one"), []byte("two"), []byte("three"))
	recvAll(t, "monitor", mon, []byte("one"), []byte("two"), []byte("three"))
}

// A monitor is receive-only: joining one that may send is EINVAL.
func TestMonitorMustNotSend(t *testing.T) {
	_, n := create(t, engine.Config{})
	_, err := n.Join(endpointtest.New(1), engine.PortOptions{Want: -1, Monitor: true})
	if !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("join a monitor that may send: %v, want EINVAL", err)
	}
}

// In a lossless network, a monitor that never reads does not make the
// senders wait: it drops (and counts) what it has no room for, while the
// members lose nothing.
func TestMonitorNeverSlowsLosslessSenders(t *testing.T) {
	_, n := create(t, engine.Config{PoolSize: 4, Flags: engine.Lossless})
	sender := join(t, n, engine.PortOptions{NoRead: true})
	recv := join(t, n, engine.PortOptions{NoWrite: true})
	mon := join(t, n, engine.PortOptions{Monitor: true, NoWrite: true}) // never read
	c := ctx(t)
	const total = 500
	go func() {
		for i := range total {
			if sender.ep.Inject(c, []byte{byte(i), byte(i >> 8)}) != nil {
				return
			}
		}
	}()
	for i := range total {
		got, err := recv.ep.Recv(c)
		if err != nil {
			t.Fatalf("message %d: %v (the monitor holds the senders?)", i, err)
		}
		if got[0] != byte(i) || got[1] != byte(i>>8) {
			t.Fatalf("message %d: got %x", i, got)
		}
	}
	if d := recv.port.Stats().Drops; d != 0 {
		t.Errorf("the member dropped %d", d)
	}
	// The monitor took what its channel, its writer and its queue hold, and
	// dropped the rest: each message was offered to it before the members.
	if s := mon.port.Stats(); s.Drops == 0 || s.Drops > total {
		t.Errorf("monitor stats %+v: want drops", s)
	}
}

// A monitor costs no allocation per message either: it shares the
// message (lossy) or takes a pooled copy (lossless).
func TestMonitorNoAllocsPerMessage(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop messages at random")
	}
	for _, cfg := range []engine.Config{{PoolSize: 256}, {PoolSize: 8, Flags: engine.Lossless}} {
		t.Run(fmt.Sprintf("flags%d", cfg.Flags), func(t *testing.T) {
			_, n := create(t, cfg)
			f := joinFlow(t, n, 1, 32, false)
			s := newSink(32)
			p, err := n.Join(s, engine.PortOptions{Want: -1, NoWrite: true, Monitor: true})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(p.Close)
			if cfg.Flags&engine.Lossless == 0 {
				// Lossy, with room for a run: the monitor gets them all.
				f.sinks = append(f.sinks, s)
			}
			const perRun = 256
			for range 20 {
				f.run(perRun)
			}
			if allocs := testing.AllocsPerRun(40, func() { f.run(perRun) }); allocs != 0 {
				t.Errorf("%v allocations per %d messages", allocs, perRun)
			}
			if st := p.Stats(); st.MsgsOut+st.Drops == 0 {
				t.Errorf("the monitor got nothing: %+v", st)
			}
		})
	}
}
