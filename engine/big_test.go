package engine_test

import (
	"bytes"
	"io"
	"testing"
	"time"

	"github.com/ipn-project/ipn/endpoint"
	"github.com/ipn-project/ipn/endpoint/endpointtest"
	"github.com/ipn-project/ipn/engine"
)

// bigEP is a node that sends messages of any size (an endpoint.BigReader)
// and receives nothing.
type bigEP struct {
	in   chan []byte
	stop chan struct{}
	kept []byte // a message grow left unread (a pause), read first next time
}

var _ endpoint.BigReader = (*bigEP)(nil)

func (e *bigEP) Read(bufs [][]byte, sizes []int) (int, error) {
	return e.ReadBig(bufs, sizes, func(int, int) ([]byte, bool) { return nil, true })
}

func (e *bigEP) ReadBig(bufs [][]byte, sizes []int, grow func(i, size int) ([]byte, bool)) (int, error) {
	for {
		m := e.kept
		if m == nil {
			select {
			case m = <-e.in:
			case <-e.stop:
				return 0, io.EOF
			}
		}
		e.kept = nil
		b := bufs[0]
		if len(m) > len(b) {
			var drop bool
			if b, drop = grow(0, len(m)); b == nil {
				if !drop {
					e.kept = m
					return 0, endpoint.ErrPaused
				}
				continue // refused: dropped
			}
		}
		sizes[0] = copy(b, m)
		return 1, nil
	}
}

func (e *bigEP) Write(msgs [][]byte) (int, error) { return len(msgs), nil }
func (e *bigEP) BatchSize() int                   { return 4 }
func (e *bigEP) Close() error {
	select {
	case <-e.stop:
	default:
		close(e.stop)
	}
	return nil
}

// In a lossy network of big messages, a member that never reads holds one
// of them, not the network's budget: another member gets every message,
// and the stuck one counts its drops.
func TestBigLossyStuckReceiverHarmsNoOne(t *testing.T) {
	const mtu = 1 << 20
	_, n := create(t, engine.Config{MTU: mtu})
	src := &bigEP{in: make(chan []byte), stop: make(chan struct{})}
	joinEP(t, n, src)
	stuck := endpointtest.New(1) // never read: its writer blocks on its second
	stuckPort := joinEP(t, n, stuck)
	good := join(t, n, engine.PortOptions{})
	for i := range 20 {
		m := bytes.Repeat([]byte{byte(i)}, mtu-i)
		select {
		case src.in <- m:
		case <-time.After(5 * time.Second):
			t.Fatalf("message %d: the sender is held", i)
		}
		got, err := good.ep.Recv(ctx(t))
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if !bytes.Equal(got, m) {
			t.Fatalf("message %d: got %d bytes, want %d of %d", i, len(got), len(m), i)
		}
		// A member that keeps up: its port is done with one message
		// before the next comes (a lossy port holds one big message,
		// and drops another that comes while it writes the first).
		waitCond(t, func() bool { return !engine.HoldsBig(good.port) })
	}
	waitCond(t, func() bool { return stuckPort.Stats().Drops >= 17 })
	t.Logf("the stuck member dropped %d of 20", stuckPort.Stats().Drops)
}

// A lossy network of big messages whose receivers' writers free each
// message as soon as they have it, while the sender's route gives its
// charge back: the budget keeps all its room, and no message of the
// sender is dropped at the daemon.
func TestBigLossyReleaseWhileFreed(t *testing.T) {
	const mtu = 1 << 20
	_, n := create(t, engine.Config{MTU: mtu})
	src := &bigEP{in: make(chan []byte), stop: make(chan struct{})}
	sp := joinEP(t, n, src)
	for range 3 {
		joinEP(t, n, &bigEP{in: make(chan []byte), stop: make(chan struct{})})
	}
	m := make([]byte, mtu)
	for i := range 3000 {
		select {
		case src.in <- m:
		case <-time.After(10 * time.Second):
			t.Fatalf("message %d: the sender is held", i)
		}
	}
	// Each message was read before the next: all but the last are
	// routed or dropped by now.
	if d := sp.Stats().Drops; d > 0 {
		t.Errorf("the sender's port dropped %d of 3000 (the budget lost room)", d)
	}
}
