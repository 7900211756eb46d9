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
// buffers of its big messages that were freed, kept for the next ones: a
// fresh buffer costs the daemon its zeroing, its page faults and the
// collector's work, more than the copy of the message into it. Spare
// buffers are held inside the room: the bytes charged to messages and
// the spares' together stay within it, and take drops spares when a
// message needs their room.
type budget struct {
	mu    sync.Mutex
	free  int64         // guarded by mu: neither charged nor spare
	wake  chan struct{} // guarded by mu: closed when room is given back
	spare [][]byte      // guarded by mu: freed buffers, at most maxSpare
}

func newBudget(n int64) *budget { return &budget{free: n, wake: make(chan struct{})} }

// maxSpare is the most spare buffers a budget keeps.
const maxSpare = 8

// buffer returns a buffer of n bytes for a message charged n bytes, and
// the message's charge: a spare buffer of n to n+n/8 bytes (the best fit)
// is charged its capacity, a fresh one n.
func (b *budget) buffer(n int) ([]byte, int64) {
	b.mu.Lock()
	best := -1
	for i, s := range b.spare {
		if c := cap(s); c >= n && c <= n+n/8 && (best < 0 || c < cap(b.spare[best])) {
			best = i
		}
	}
	if best < 0 {
		b.mu.Unlock()
		return make([]byte, n), int64(n)
	}
	s := b.dropSpare(best)
	// The spare's room becomes the message's charge, and the n bytes
	// taken for it go back.
	b.free += int64(n)
	b.mu.Unlock()
	return s[:n], int64(cap(s))
}

// dropSpare takes spare i out of the list; under mu. Its room stays
// charged: the caller gives it back or passes it on.
func (b *budget) dropSpare(i int) []byte {
	s := b.spare[i]
	last := len(b.spare) - 1
	b.spare[i], b.spare[last] = b.spare[last], nil
	b.spare = b.spare[:last]
	return s
}

// recycle keeps the buffer of a freed big message as a spare if the room
// has its bytes free (a lossy network gave the message's charge back when
// it was routed) and fewer than maxSpare are kept; else the collector
// takes it.
func (b *budget) recycle(buf []byte) {
	b.mu.Lock()
	if c := int64(cap(buf)); len(b.spare) < maxSpare && b.free >= c {
		b.free -= c
		b.spare = append(b.spare, buf[:0])
	}
	b.mu.Unlock()
}

// take takes n bytes, waiting for them unless stop is nil (then it
// reports false at once if there is no room); it reports false if stop
// closed first.
func (b *budget) take(n int64, stop ...<-chan struct{}) bool {
	for {
		b.mu.Lock()
		for b.free < n && len(b.spare) > 0 {
			b.free += int64(cap(b.dropSpare(len(b.spare) - 1)))
		}
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

// newBig returns a big message of size bytes, with no reference; if b is
// not nil, the caller took size bytes of it (take), and the message is
// charged to it (free, or releaseBig, gives the charge back) and its
// buffer is b's when freed.
func newBig(size int, b *budget) *msg {
	if b == nil {
		return &msg{buf: make([]byte, size), class: bigClass}
	}
	buf, charge := b.buffer(size)
	m := &msg{buf: buf, class: bigClass, home: b, charge: charge}
	m.big.Store(b)
	return m
}

// releaseBig gives m's charge back to the budget, once. A big message is
// never pooled, and charge never changes, so this is safe after free
// too.
func (m *msg) releaseBig() {
	if b := m.big.Swap(nil); b != nil {
		b.give(m.charge)
	}
}

// isBig reports whether m is a big message.
func (m *msg) isBig() bool { return m.class == bigClass }
