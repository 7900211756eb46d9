package shm

import (
	"sync"
	"sync/atomic"

	"github.com/ipn-project/ipn/endpoint"
	"github.com/ipn-project/ipn/internal/shmring"
)

// Log is a hub network's fan-out on the fast path: one shared log
// (shmring.Log) that the daemon writes each message into once and that
// every member reading it maps read-only, instead of a copy into each
// member's ring. The engine puts a sender's batch in under Lock, then
// Flush wakes the members that sleep.
type Log struct {
	mu      sync.Mutex
	log     *shmring.Log
	readers atomic.Pointer[[]*Endpoint] // changed under mu
}

var _ endpoint.FanOut = (*Log)(nil)

// NewLog makes a log for messages of up to mtu bytes.
func NewLog(mtu int) (*Log, error) {
	l, err := shmring.CreateLog(mtu)
	if err != nil {
		return nil, err
	}
	return newLog(l), nil
}

func newLog(l *shmring.Log) *Log {
	lg := &Log{log: l}
	lg.readers.Store(new([]*Endpoint))
	return lg
}

// AdoptLog returns the log of memfd fd that another daemon made with
// NewLog and passed on (FD), resumed at its position (Pos). It takes
// ownership of fd.
func AdoptLog(fd, mtu int, pos LogPos) (*Log, error) {
	l, err := shmring.AdoptLog(fd, mtu, pos.Pos, pos.Seq, pos.OldPos, pos.OldSeq)
	if err != nil {
		return nil, err
	}
	return newLog(l), nil
}

// LogPos is where a log's writer stands: what a daemon taking over needs,
// with FD, to go on writing it.
type LogPos struct {
	Pos, Seq       uint64 // the next message's
	OldPos, OldSeq uint64 // the oldest message's not yet written over
}

// Pos returns the writer's position; call it while no one sends.
func (l *Log) Pos() LogPos {
	l.mu.Lock()
	defer l.mu.Unlock()
	p, s := l.log.Pos()
	op, os := l.log.Oldest()
	return LogPos{p, s, op, os}
}

// missed returns what a reader at head and seq that says it missed
// missed has lost in all: with those written over that it has not read.
func (l *Log) missed(head, seq, missed uint64) uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return missed + l.log.Behind(head, seq)
}

// FD returns the log's memfd, open for writing, for a takeover; it stays
// the log's.
func (l *Log) FD() int { return l.log.FD() }

// Bytes is the memory the log holds.
func (l *Log) Bytes() int64 { return int64(l.log.Bytes()) }

// Lock implements endpoint.FanOut.
func (l *Log) Lock() { l.mu.Lock() }

// Unlock implements endpoint.FanOut.
func (l *Log) Unlock() { l.mu.Unlock() }

// MaxMsg implements endpoint.FanOut.
func (l *Log) MaxMsg() int { return l.log.MaxMsg() }

// Put implements endpoint.FanOut.
func (l *Log) Put(msg []byte, from int) bool { return l.log.Put(msg, from) }

// Flush implements endpoint.FanOut: it publishes what was put and wakes
// the readers that sleep, but the sender.
func (l *Log) Flush(from int) {
	l.log.Publish()
	for _, e := range *l.readers.Load() {
		if int(e.port.Load()) != from && e.out.ConsumerWaiting() {
			e.outData.Wake()
		}
	}
}

// add makes e a reader, starting at the newest message if start.
func (l *Log) add(e *Endpoint, start bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if start {
		pos, seq := l.log.Pos()
		e.region.StartLog(pos, seq)
	}
	rs := append(append([]*Endpoint(nil), *l.readers.Load()...), e)
	l.readers.Store(&rs)
}

// remove takes e out of the readers, before its rings are unmapped.
func (l *Log) remove(e *Endpoint) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var rs []*Endpoint
	for _, r := range *l.readers.Load() {
		if r != e {
			rs = append(rs, r)
		}
	}
	l.readers.Store(&rs)
}

// Close releases the log; its readers must be gone.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.log.Close()
}
