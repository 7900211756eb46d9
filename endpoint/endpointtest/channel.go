// Package endpointtest is an in-process endpoint: a node made of Go channels, for
// tests and for programs that embed the engine.
package endpointtest

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/ipn-project/ipn/endpoint"
)

// Endpoint is a node whose traffic goes through channels. The program side
// calls Inject to send into the network and Recv (or reads C) to receive.
type Endpoint struct {
	in   chan []byte
	out  chan []byte
	oob  chan []byte
	stop chan struct{}
	once sync.Once

	mu     sync.Mutex
	pr, pw chan struct{} // guarded by mu: closed while paused (Pauser)
}

var (
	_ endpoint.Endpoint  = (*Endpoint)(nil)
	_ endpoint.OOBWriter = (*Endpoint)(nil)
	_ endpoint.Pauser    = (*Endpoint)(nil)
)

// New returns an endpoint whose channels each buffer size messages.
func New(size int) *Endpoint {
	return &Endpoint{
		in:   make(chan []byte, size),
		out:  make(chan []byte, size),
		oob:  make(chan []byte, size),
		stop: make(chan struct{}),
		pr:   make(chan struct{}),
		pw:   make(chan struct{}),
	}
}

func (e *Endpoint) pauses() (r, w chan struct{}) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.pr, e.pw
}

// PauseRead implements endpoint.Pauser.
func (e *Endpoint) PauseRead() {
	e.mu.Lock()
	defer e.mu.Unlock()
	select {
	case <-e.pr:
	default:
		close(e.pr)
	}
}

// PauseWrite implements endpoint.Pauser.
func (e *Endpoint) PauseWrite() {
	e.mu.Lock()
	defer e.mu.Unlock()
	select {
	case <-e.pw:
	default:
		close(e.pw)
	}
}

// Resume implements endpoint.Pauser.
func (e *Endpoint) Resume() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.pr, e.pw = make(chan struct{}), make(chan struct{})
}

// Inject sends msg into the network as the node; it blocks while the
// inbound channel is full and returns net.ErrClosed after Close. The
// endpoint takes ownership of msg.
func (e *Endpoint) Inject(ctx context.Context, msg []byte) error {
	select {
	case e.in <- msg:
		return nil
	case <-e.stop:
		return net.ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

// C returns the channel of messages delivered to the node.
func (e *Endpoint) C() <-chan []byte { return e.out }

// OOB returns the channel of out-of-band messages delivered to the node.
func (e *Endpoint) OOB() <-chan []byte { return e.oob }

// Recv returns the next message delivered to the node.
func (e *Endpoint) Recv(ctx context.Context) ([]byte, error) {
	select {
	case m := <-e.out:
		return m, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Read implements endpoint.Endpoint.Read. It returns io.EOF after Hangup.
func (e *Endpoint) Read(bufs [][]byte, sizes []int) (int, error) {
	var m []byte
	var ok bool
	paused, _ := e.pauses()
	select {
	case m, ok = <-e.in:
		if !ok {
			return 0, io.EOF
		}
	case <-e.stop:
		return 0, net.ErrClosed
	case <-paused:
		return 0, endpoint.ErrPaused
	}
	n := 0
	for {
		sizes[n] = len(m)
		copy(bufs[n], m)
		n++
		if n == len(bufs) {
			return n, nil
		}
		select {
		case m, ok = <-e.in:
			if !ok {
				return n, io.EOF
			}
		default:
			return n, nil
		}
	}
}

// Write implements endpoint.Endpoint.Write. It blocks while C is full.
func (e *Endpoint) Write(msgs [][]byte) (int, error) {
	_, paused := e.pauses()
	for i, b := range msgs {
		select {
		case e.out <- append([]byte(nil), b...):
		case <-e.stop:
			return i, net.ErrClosed
		case <-paused:
			return i, endpoint.ErrPaused
		}
	}
	return len(msgs), nil
}

// WriteOOB implements endpoint.OOBWriter.
func (e *Endpoint) WriteOOB(b []byte) error {
	select {
	case e.oob <- append([]byte(nil), b...):
		return nil
	case <-e.stop:
		return net.ErrClosed
	}
}

// BatchSize implements endpoint.Endpoint.BatchSize.
func (e *Endpoint) BatchSize() int { return 32 }

// Close implements endpoint.Endpoint.Close.
func (e *Endpoint) Close() error {
	e.once.Do(func() { close(e.stop) })
	return nil
}

// Hangup ends the node's input: Read returns io.EOF, and the node stops
// sending but may still receive. Call it once, with no Inject running.
func (e *Endpoint) Hangup() { close(e.in) }

// ReadN reads n messages from ep within 5 s (then it closes ep), in
// buffers of size bytes, failing t on an error or a truncated message.
func ReadN(t testing.TB, ep endpoint.Endpoint, n, size int) [][]byte {
	t.Helper()
	timer := time.AfterFunc(5*time.Second, func() { ep.Close() })
	defer timer.Stop()
	var got [][]byte
	bufs, sizes := make([][]byte, ep.BatchSize()), make([]int, ep.BatchSize())
	for i := range bufs {
		bufs[i] = make([]byte, size)
	}
	for len(got) < n {
		k, err := ep.Read(bufs, sizes)
		if err != nil {
			t.Fatalf("after %d messages of %d: %v", len(got), n, err)
		}
		for i := 0; i < k; i++ {
			if sizes[i] > len(bufs[i]) {
				t.Fatalf("message %d: %d bytes, truncated", len(got), sizes[i])
			}
			got = append(got, append([]byte(nil), bufs[i][:sizes[i]]...))
		}
	}
	return got
}
