package ipn

import (
	"errors"
	"fmt"
	"sync"
	"syscall"
	"time"
)

// endpointBatch is how many messages an Endpoint moves per call at most.
const endpointBatch = 64

// Endpoint is a connected Socket as a batch endpoint, the shape of the
// daemon's ports (package endpoint's Endpoint): Read and Write move
// batches of ordinary messages with RecvBatch and SendBatch; out-of-band
// messages are left aside. A cable pumps between two endpoints; a TCP/IP
// stack runs on one. Read and Write fail, as Recv and Send do, with an
// error wrapping os.ErrDeadlineExceeded when a deadline set on the socket
// passes: not the end of the endpoint.
type Endpoint struct {
	s   *Socket
	rmu sync.Mutex
	ms  []Message // guarded by rmu
}

// Endpoint returns the socket as a batch endpoint. Closing it closes the
// socket.
func (s *Socket) Endpoint() *Endpoint {
	return &Endpoint{s: s, ms: make([]Message, endpointBatch)}
}

// Socket returns the socket e moves messages of.
func (e *Endpoint) Socket() *Socket { return e.s }

// Read receives up to len(bufs) ordinary messages, at least one, message i
// into bufs[i] with its length in sizes[i]; a message longer than its
// buffer is cut, and reported with sizes[i] > len(bufs[i]). Out-of-band
// messages are skipped. It returns Recv's errors.
func (e *Endpoint) Read(bufs [][]byte, sizes []int) (int, error) {
	if len(bufs) == 0 || len(sizes) < len(bufs) {
		return 0, fmt.Errorf("ipn endpoint read: %d buffers, %d sizes: %w", len(bufs), len(sizes), syscall.EINVAL)
	}
	e.rmu.Lock()
	defer e.rmu.Unlock()
	ms := e.ms[:min(len(bufs), len(e.ms))]
	for {
		for i := range ms {
			ms[i] = Message{Buf: bufs[i]}
		}
		n, err := e.s.RecvBatch(ms)
		k := 0
		for i := 0; i < n; i++ {
			m := ms[i]
			if m.Flags&MsgOOB != 0 {
				continue
			}
			if k != i {
				copy(bufs[k], m.Buf[:m.N])
			}
			sizes[k] = m.N
			if m.Flags&MsgTrunc != 0 {
				sizes[k] = len(bufs[k]) + 1
			}
			k++
		}
		if k > 0 || err != nil {
			return k, err
		}
	}
}

// Write sends msgs in order and returns how many went into the network. A
// message the network cannot take (empty, or over its MTU) is dropped, as
// a wire drops a frame too long for it, and the rest are sent; an error
// means the socket can send no more.
func (e *Endpoint) Write(msgs [][]byte) (int, error) {
	sent := 0
	for len(msgs) > 0 {
		n, err := e.s.SendBatch(msgs)
		sent += n
		msgs = msgs[n:]
		switch {
		case err == nil:
			return sent, nil
		case errors.Is(err, syscall.EOVERFLOW), errors.Is(err, syscall.EINVAL) && len(msgs) > 0 && len(msgs[0]) == 0:
			msgs = msgs[1:] // the one SendBatch stopped at
		default:
			return sent, err
		}
	}
	return sent, nil
}

// BatchSize is the largest batch Read fills and Write takes usefully.
func (e *Endpoint) BatchSize() int { return endpointBatch }

// Close closes the socket.
func (e *Endpoint) Close() error { return e.s.Close() }

// SetReadDeadline sets the socket's read deadline: a deadline in the past
// wakes a Read in progress, which then fails.
func (e *Endpoint) SetReadDeadline(t time.Time) error { return e.s.SetReadDeadline(t) }

// SetWriteDeadline sets the socket's write deadline: a deadline in the
// past wakes a Write waiting for room (a lossless network), which fails.
func (e *Endpoint) SetWriteDeadline(t time.Time) error { return e.s.SetWriteDeadline(t) }
