package engine

import (
	"sync"
	"sync/atomic"
)

// queue is a port's bounded FIFO of messages waiting for its writer, with
// out-of-band messages kept apart and served first.
type queue struct {
	mu     sync.Mutex
	ring   []*msg // guarded by mu
	head   int    // guarded by mu
	count  int    // guarded by mu
	oob    []*msg // guarded by mu
	closed bool   // guarded by mu
	// wake has room for one pending signal; the writer waits on it.
	wake chan struct{}
	// pending counts the messages pushed and not yet written or dropped
	// (popped ones included): while it is not zero, a message for a
	// DirectWriter port goes through the queue too, to keep its order.
	pending atomic.Int32
}

// idle reports whether no message waits for the writer or is being
// written.
func (q *queue) idle() bool { return q.pending.Load() == 0 }

// done tells the queue that n popped messages were written or dropped.
func (q *queue) done(n int) { q.pending.Add(int32(-n)) }

func newQueue(capacity int) *queue {
	return &queue{ring: make([]*msg, capacity), wake: make(chan struct{}, 1)}
}

func (q *queue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// push adds m; it reports false, keeping no reference, when the queue is
// full or closed.
func (q *queue) push(m *msg) bool {
	q.mu.Lock()
	if q.closed || q.count == len(q.ring) {
		q.mu.Unlock()
		return false
	}
	q.ring[(q.head+q.count)%len(q.ring)] = m
	q.count++
	q.pending.Add(1)
	q.mu.Unlock()
	q.signal()
	return true
}

// pushOOB adds an out-of-band message; at most len(ring) wait at once.
func (q *queue) pushOOB(m *msg) bool {
	q.mu.Lock()
	if q.closed || len(q.oob) >= len(q.ring) {
		q.mu.Unlock()
		return false
	}
	q.oob = append(q.oob, m)
	q.pending.Add(1)
	q.mu.Unlock()
	q.signal()
	return true
}

// pop moves up to len(batch) ordinary messages into batch and takes the
// out-of-band ones into oob (reusing its storage); it returns both.
func (q *queue) pop(batch []*msg, oob []*msg) ([]*msg, []*msg) {
	batch = batch[:0]
	q.mu.Lock()
	oob = append(oob[:0], q.oob...)
	clear(q.oob)
	q.oob = q.oob[:0]
	for q.count > 0 && len(batch) < cap(batch) {
		batch = append(batch, q.ring[q.head])
		q.ring[q.head] = nil
		q.head = (q.head + 1) % len(q.ring)
		q.count--
	}
	q.mu.Unlock()
	return batch, oob
}

// flush drops every queued message; with close, the queue takes no more.
func (q *queue) flush(close bool) {
	q.mu.Lock()
	if close {
		q.closed = true
	}
	var drop []*msg
	for q.count > 0 {
		drop = append(drop, q.ring[q.head])
		q.ring[q.head] = nil
		q.head = (q.head + 1) % len(q.ring)
		q.count--
	}
	drop = append(drop, q.oob...)
	clear(q.oob)
	q.oob = q.oob[:0]
	q.pending.Add(int32(-len(drop)))
	q.mu.Unlock()
	for _, m := range drop {
		m.decRef()
	}
}
