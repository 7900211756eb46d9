package engine

import (
	"sync"
)

// Big messages. A network whose MTU is over BigMin reads its members'
// messages into pooled buffers of BigMin bytes; a longer message gets a
// buffer of its own size (class bigClass, never pooled), read through
// endpoint.BigReader. The bytes of a network's big messages alive at once
// (read, queued, being written: one buffer however many receive it) are
// bounded by its budget, BigBudget(MTU): a sender waits for room in a
// lossless network, and its message is dropped in a lossy one. Big
// messages always go through a receiver's queue and writer, never inline
// from the sender's goroutine, so that a slow receiver holds no sender.
//
// In a lossy network the budget bounds the messages being read only: once
// routed, a big message is given back to it, and each receiver holds at
// most one big message (queued or being written; another is dropped for
// it, counted), so that a member that never reads keeps one message, not
// the whole budget: the network holds at most BigBudget(MTU) and one MTU
// a port.

// BigMin is the longest message a pooled buffer holds: longer ones are big.
const BigMin = 65536

// bigClass is the class of a big message's buffer.
const bigClass = len(classSizes)

// BigBudget is the most bytes of big messages a network of that MTU holds
// at once: two messages of the MTU (one being read while one is written),
// and none for an MTU of BigMin or less.
func BigBudget(mtu int) int64 {
	if mtu <= BigMin {
		return 0
	}
	return 2 * int64(mtu)
}

// budget is a network's room for big messages, in bytes, and the
// buffers of its big messages that were freed, for the next ones: a fresh
// buffer costs the daemon its zeroing, its page faults and the collector's
// work, more than the copy of the message into it.
type budget struct {
	mu    sync.Mutex
	free  int64         // guarded by mu
	wake  chan struct{} // guarded by mu: closed when room is given back
	size  int64         // the room when all is free: what spare may hold
	spare [][]byte      // guarded by mu: freed buffers, at most size bytes
}

func newBudget(n int64) *budget { return &budget{free: n, size: n, wake: make(chan struct{})} }

// buffer returns a buffer of n bytes, a spare one if one is that long.
func (b *budget) buffer(n int) []byte {
	b.mu.Lock()
	for i, s := range b.spare {
		if cap(s) >= n {
			last := len(b.spare) - 1
			b.spare[i], b.spare[last] = b.spare[last], nil
			b.spare = b.spare[:last]
			b.mu.Unlock()
			return s[:n]
		}
	}
	b.mu.Unlock()
	return make([]byte, n)
}

// maxSpare is the most spare buffers a budget keeps.
const maxSpare = 8

// recycle keeps the buffer of a freed big message for buffer, while the
// spares fit in the budget's size and number, the shortest dropped first.
func (b *budget) recycle(buf []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	held := int64(cap(buf))
	for _, s := range b.spare {
		held += int64(cap(s))
	}
	for (held > b.size || len(b.spare) >= maxSpare) && len(b.spare) > 0 {
		short := 0
		for i, s := range b.spare {
			if cap(s) < cap(b.spare[short]) {
				short = i
			}
		}
		if cap(b.spare[short]) > cap(buf) {
			return // buf is the shortest: the collector takes it
		}
		held -= int64(cap(b.spare[short]))
		last := len(b.spare) - 1
		b.spare[short], b.spare[last] = b.spare[last], nil
		b.spare = b.spare[:last]
	}
	if held <= b.size && len(b.spare) < maxSpare {
		b.spare = append(b.spare, buf[:0])
	}
}

// take takes n bytes, waiting for them unless stop is nil (then it
// reports false at once if there is no room); it reports false if stop
// closed first.
func (b *budget) take(n int64, stop ...<-chan struct{}) bool {
	for {
		b.mu.Lock()
		if b.free >= n {
			b.free -= n
			b.mu.Unlock()
			return true
		}
		wake := b.wake
		b.mu.Unlock()
		if len(stop) == 0 {
			return false
		}
		select {
		case <-wake:
		case <-stop[0]:
			return false
		case <-orNever(stop[1:]):
			return false
		}
	}
}

// orNever returns the first of cs, or a channel that never closes.
func orNever(cs []<-chan struct{}) <-chan struct{} {
	if len(cs) == 0 {
		return nil
	}
	return cs[0]
}

// give gives n bytes back, waking those that wait.
func (b *budget) give(n int64) {
	b.mu.Lock()
	b.free += n
	close(b.wake)
	b.wake = make(chan struct{})
	b.mu.Unlock()
}

// newBig returns a big message of size bytes, with no reference, charged
// to b if b is not nil (free gives it back).
func newBig(size int, b *budget) *msg {
	if b == nil {
		return &msg{buf: make([]byte, size), class: bigClass}
	}
	m := &msg{buf: b.buffer(size), class: bigClass, home: b}
	m.big.Store(b)
	return m
}

// releaseBig gives m's bytes back to the budget it is charged to, once.
// A big message is never pooled, so this is safe after free too.
func (m *msg) releaseBig() {
	if b := m.big.Swap(nil); b != nil {
		b.give(int64(len(m.buf)))
	}
}

// isBig reports whether m is a big message.
func (m *msg) isBig() bool { return m.class == bigClass }
