package engine

import (
	"sync"
	"testing"
)

// held returns the bytes of the budget's spare buffers.
func (b *budget) held() (n int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, s := range b.spare {
		n += int64(cap(s))
	}
	return n
}

// A spare buffer is lent only to a message about its size, and charged
// its capacity: a sender that alternates a message of the MTU freed at
// once (to no one) and a small big one that a receiver keeps (it never
// reads) cannot make a network hold more than its budget, spares and
// all.
func TestBudgetSparesStayWithin(t *testing.T) {
	const mtu = 4 << 20
	b := newBudget(BigBudget(mtu))
	var live []*msg
	var bufs int64
	for range 64 {
		if !b.take(mtu) {
			break
		}
		x := newBig(mtu, b)
		x.refs.Store(1)
		x.decRef() // freed: its buffer kept as a spare
		if !b.take(BigMin + 1) {
			break
		}
		s := newBig(BigMin+1, b)
		s.refs.Store(1)
		live = append(live, s)
		bufs += int64(cap(s.buf))
	}
	if total := bufs + b.held(); total > BigBudget(mtu) {
		t.Errorf("%d messages alive hold %d KiB of buffers, spares %d KiB; the budget is %d KiB",
			len(live), bufs>>10, b.held()>>10, BigBudget(mtu)>>10)
	}
	for _, m := range live {
		m.decRef()
	}
	if !b.take(BigBudget(mtu)) {
		t.Error("the whole budget is not free once every message is: spares keep its room")
	}
}

// A spare of the right size is used again, with no fresh buffer.
func TestBudgetReusesSpares(t *testing.T) {
	const size = 1 << 20
	b := newBudget(2 * size)
	b.take(size)
	m := newBig(size, b)
	first := &m.buf[0]
	m.refs.Store(1)
	m.decRef()
	b.take(size)
	m = newBig(size, b)
	if &m.buf[0] != first {
		t.Error("a message of the same size got a fresh buffer, not the spare")
	}
}

// A lossy network's route gives a message's charge back after deliver,
// when a receiver's writer may be freeing it: the charge is the
// message's own, read whatever free does (go test -race watches).
func TestBudgetReleaseRacesFree(t *testing.T) {
	const size = 1 << 20
	b := newBudget(2 * size)
	for i := range 2000 {
		if !b.take(size) {
			t.Fatalf("message %d: no room", i)
		}
		m := newBig(size, b)
		m.refs.Store(1)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); m.decRef() }() // the receiver's writer
		m.releaseBig()                              // route, after deliver
		wg.Wait()
		b.mu.Lock()
		free := b.free
		b.mu.Unlock()
		if free+b.held() != 2*size {
			t.Fatalf("message %d: %d bytes free and %d spare, want %d in all", i, free, b.held(), 2*size)
		}
	}
}
