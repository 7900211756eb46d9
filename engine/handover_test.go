package engine_test

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipn-project/ipn/endpoint/endpointtest"
	"github.com/ipn-project/ipn/engine"
)

// A lossless network frozen with messages everywhere (read and waiting for
// room, queued, being written) is restored in another engine on the same
// endpoints, its state through JSON as a takeover carries it: the
// receiver gets every message once, in order, and the counters go on.
func TestFreezeRestore(t *testing.T) {
	leakCheck(t)
	old, n := create(t, engine.Config{Flags: engine.Lossless, PoolSize: 8, NumPorts: 4})
	sender, recv := endpointtest.New(4), endpointtest.New(2)
	if _, err := n.Join(sender, engine.PortOptions{Want: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Join(recv, engine.PortOptions{Want: 2, Description: "receiver"}); err != nil {
		t.Fatal(err)
	}
	const total = 100
	injected := make(chan struct{})
	var count atomic.Int64
	go func() {
		defer close(injected)
		for i := range total {
			m := binary.LittleEndian.AppendUint64(nil, uint64(i))
			if err := sender.Inject(ctx(t), m); err != nil {
				return
			}
			count.Add(1)
		}
	}()
	// The receiver takes nothing yet: the pool (8) fills, the sender's
	// reader waits for room with messages in hand (it has read at least
	// 8 once 12 are injected: its inbound channel holds 4).
	waitFor(t, func() bool { return count.Load() >= 12 })
	f, err := old.Freeze(time.Second, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	saved, err := f.Save()
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(saved)
	if err != nil {
		t.Fatal(err)
	}
	var st []engine.NetworkState
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	if len(st) != 1 || len(st[0].Ports) != 2 {
		t.Fatalf("saved %d networks, %+v", len(st), st)
	}
	queued := 0
	for i := range st[0].Ports {
		ps := &st[0].Ports[i]
		queued += len(ps.Queue) + len(ps.Held)
		ep := sender
		if ps.Num == 2 {
			ep = recv
		}
		ep.Resume()
		ps.Endpoint = ep
	}
	if queued == 0 {
		t.Error("nothing queued or held at the freeze: the test tests little")
	}
	fresh := engine.New()
	st[0].Key = "restored"
	n2, start, err := fresh.Restore(&st[0])
	if err != nil {
		t.Fatal(err)
	}
	start()
	defer func() {
		for _, p := range n2.Ports() {
			p.Close()
		}
		n2.Release()
	}()
	for i := range total {
		m, err := recv.Recv(ctx(t))
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if got := binary.LittleEndian.Uint64(m); got != uint64(i) {
			t.Fatalf("received %d, want %d", got, i)
		}
	}
	<-injected
	if got := n2.Config(); got.PoolSize != 8 || got.Flags != engine.Lossless || got.NumPorts != 4 {
		t.Errorf("restored config %+v", got)
	}
	waitStats(t, n2, 1, func(s engine.PortStats) bool { return s.MsgsIn == total })
	waitStats(t, n2, 2, func(s engine.PortStats) bool { return s.MsgsOut == total })
	for _, p := range n2.Ports() {
		if p.Num() == 2 && p.Options().Description != "receiver" {
			t.Errorf("receiver's description %q", p.Options().Description)
		}
	}
}

// A frozen engine thawed resumes as it was, nothing lost or repeated.
func TestFreezeThaw(t *testing.T) {
	leakCheck(t)
	e, n := create(t, engine.Config{Flags: engine.Lossless, PoolSize: 8})
	sender, recv := endpointtest.New(4), endpointtest.New(2)
	for _, ep := range []*endpointtest.Endpoint{sender, recv} {
		p, err := n.Join(ep, engine.PortOptions{Want: -1})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
	}
	const total = 100
	var count atomic.Int64
	go func() {
		for i := range total {
			if sender.Inject(ctx(t), binary.LittleEndian.AppendUint64(nil, uint64(i))) != nil {
				return
			}
			count.Add(1)
		}
	}()
	waitFor(t, func() bool { return count.Load() >= 12 })
	f, err := e.Freeze(time.Second, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.Join(endpointtest.New(1), engine.PortOptions{Want: -1}); err == nil {
		t.Error("a port joined a frozen network")
	}
	sender.Resume()
	recv.Resume()
	f.Thaw()
	for i := range total {
		m, err := recv.Recv(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		if got := binary.LittleEndian.Uint64(m); got != uint64(i) {
			t.Fatalf("received %d, want %d", got, i)
		}
	}
}

// waitFor waits until cond holds.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("the condition never came")
		}
		time.Sleep(time.Millisecond)
	}
}

// waitStats waits until port num of n has counters that ok accepts.
func waitStats(t *testing.T, n *engine.Network, num int, ok func(engine.PortStats) bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, p := range n.Ports() {
			if p.Num() == num && ok(p.Stats()) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("port %d's counters never came", num)
		}
		time.Sleep(time.Millisecond)
	}
}

// A freeze whose before fails stops every port (idle readers and writers
// included) and resumes them: it neither hangs nor loses a port.
func TestFreezeBeforeFails(t *testing.T) {
	e, n := create(t, engine.Config{Flags: engine.Lossless})
	a, b := join(t, n, engine.PortOptions{}), join(t, n, engine.PortOptions{})
	undone := false
	done := make(chan error, 1)
	go func() {
		_, err := e.Freeze(time.Second, func() error { return errors.New("sessions would not stop") }, func() { undone = true })
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !undone {
			t.Fatalf("freeze: %v, undo run %v; want the error, undone", err, undone)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a freeze whose before failed hung")
	}
	if err := a.ep.Inject(ctx(t), []byte("after")); err != nil {
		t.Fatal(err)
	}
	if m, err := b.ep.Recv(ctx(t)); err != nil || string(m) != "after" {
		t.Fatalf("after the failed freeze: %q, %v", m, err)
	}
}
