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

// budget is a network's room for big messages, in bytes.
type budget struct {
	mu   sync.Mutex
	free int64         // guarded by mu
	wake chan struct{} // guarded by mu: closed when room is given back
}

func newBudget(n int64) *budget { return &budget{free: n, wake: make(chan struct{})} }

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
	m := &msg{buf: make([]byte, size), class: bigClass}
	if b != nil {
		m.big.Store(b)
	}
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
