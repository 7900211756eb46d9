package ipn

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/internal/shmring"
	"github.com/ipn-project/ipn/internal/wire"
)

// fastPath is a connected socket's shared-memory rings: the member's side
// of package port/shm. Send fills the ring to the daemon and Recv
// empties the ring from it, with no system call while both sides are busy.
type fastPath struct {
	region *shmring.Region
	// Send sleeps on txSpace, Recv on rxData; the others wake the daemon.
	txData, txSpace, rxData, rxSpace *shmring.Waker

	smu sync.Mutex // guards tx, and the region against Close
	tx  *shmring.Producer
	rmu sync.Mutex // guards rx, log, and the region against Close
	rx  *shmring.Consumer
	// log, if not nil, is the hub's shared log: the network's messages,
	// read in place, while rx carries only what is for this member alone.
	log *shmring.LogReader
	// lending is set while RecvInPlace's function has a message (under
	// rmu); a close meanwhile leaves the unmapping to recv (unmapLater).
	umu        sync.Mutex
	lending    bool // guarded by umu
	unmapLater bool // guarded by umu

	closed atomic.Bool
	gone   atomic.Bool // the daemon went away
	// gens counts interruptions of Recv (a new deadline, an out-of-band
	// message); waiting is set while Recv may sleep.
	gens    atomic.Uint64
	waiting atomic.Bool
	rdl     time.Time // guarded by rmu: the deadline set on rxData
	rgen    uint64    // guarded by rmu: gen when the sleeping Recv began
	rdone   func() bool
	sdone   func() bool
	closedP *atomic.Uint32 // the daemon's closed flag in the region
}

// newFastPath maps the rings of a fast-path Connect reply, and the shared
// log if it passes one (wire.FastPathFDs+1 descriptors), for the member at
// port self, taking ownership of its descriptors.
func newFastPath(fds []int, self int) (*fastPath, error) {
	if len(fds) != wire.FastPathFDs && len(fds) != wire.FastPathFDs+1 {
		closeFDs(fds)
		return nil, fmt.Errorf("daemon passed %d descriptors: %w", len(fds), syscall.EPROTO)
	}
	var log *shmring.Log
	if len(fds) == wire.FastPathFDs+1 {
		var err error
		if log, err = shmring.MapLog(fds[wire.FastPathFDs]); err != nil {
			closeFDs(fds[:wire.FastPathFDs])
			return nil, err
		}
		fds = fds[:wire.FastPathFDs]
	}
	f, err := mapFastPath(fds)
	if err != nil {
		if log != nil {
			log.Close()
		}
		return nil, err
	}
	if log != nil {
		f.log = log.Reader(f.region, self)
	}
	return f, nil
}

func mapFastPath(fds []int) (*fastPath, error) {
	f := &fastPath{}
	var err error
	wakers := []**shmring.Waker{&f.txData, &f.txSpace, &f.rxData, &f.rxSpace}
	for i, w := range wakers {
		if *w, err = shmring.WakerFromFD(fds[1+i]); err != nil {
			closeFDs(fds[2+i:])
			for _, w := range wakers[:i] {
				(*w).Close()
			}
			unix.Close(fds[0])
			return nil, err
		}
	}
	if f.region, err = shmring.Map(fds[0]); err != nil {
		for _, w := range wakers {
			(*w).Close()
		}
		return nil, err
	}
	f.tx = f.region.Producer(shmring.ToDaemon)
	f.rx = f.region.Consumer(shmring.ToMember)
	f.sdone, f.rdone = f.stopped, f.recvDone
	f.closedP = f.region.ClosedFlag()
	return f, nil
}

// stopped reports whether waiting should end: the socket or the port is
// gone. The caller holds smu or rmu.
func (f *fastPath) stopped() bool {
	return f.closed.Load() || f.gone.Load() || f.closedP.Load() != 0
}

// recvDone reports whether a waiting Recv should return: stopped, or
// interrupted. The caller holds rmu.
func (f *fastPath) recvDone() bool { return f.stopped() || f.gens.Load() != f.rgen }

// interrupt makes Recv return os.ErrDeadlineExceeded, for its caller to
// look at the deadline and the out-of-band queue again; it costs a system
// call only if Recv sleeps.
func (f *fastPath) interrupt() {
	f.gens.Add(1)
	if f.waiting.Load() {
		f.rxData.Wake()
	}
}

// daemonGone tells Send and Recv that the daemon is gone, waking them.
func (f *fastPath) daemonGone() {
	f.gone.Store(true)
	f.rxData.Wake()
	f.txSpace.Wake()
}

// send copies msgs into the ring to the daemon, in order, waiting for room
// up to the write deadline, and returns how many it sent.
func (f *fastPath) send(msgs [][]byte) (int, error) {
	f.smu.Lock()
	defer f.smu.Unlock()
	sent := 0
	for sent < len(msgs) {
		if f.closed.Load() {
			return sent, net.ErrClosed
		}
		if f.closedP.Load() != 0 || f.gone.Load() {
			return sent, syscall.EPIPE // the daemon dropped the port
		}
		for sent < len(msgs) {
			if len(msgs[sent]) > shmring.ChunkSize {
				if err := f.sendChunks(msgs[sent]); err != nil {
					return sent, err
				}
				sent++
				continue
			}
			ok, err := f.tx.Put(msgs[sent])
			if err != nil {
				return sent, err
			}
			if !ok {
				break
			}
			sent++
		}
		f.tx.Publish()
		if f.tx.ConsumerWaiting() {
			f.txData.Wake()
		}
		if sent < len(msgs) {
			if err := f.tx.WaitSpace(f.txSpace, f.sdone); err != nil {
				return sent, f.waitErr(err)
			}
		}
	}
	return sent, nil
}

// sendChunks sends a message longer than a slot in chunks
// (shmring.PutChunk), waiting for room as it goes; the caller holds smu.
// A message cut short by an error is dropped by the daemon.
func (f *fastPath) sendChunks(msg []byte) error {
	var first [shmring.ChunkSize]byte
	binary.LittleEndian.PutUint32(first[:], uint32(len(msg)))
	n := copy(first[4:], msg)
	chunk, flags := first[:4+n], uint32(shmring.ChunkMore)
	for {
		ok, err := f.tx.PutChunk(chunk, flags)
		if err != nil {
			return err
		}
		if ok {
			if n == len(msg) {
				return nil
			}
			end := min(n+shmring.ChunkSize, len(msg))
			chunk, flags = msg[n:end], shmring.ChunkNext
			if end < len(msg) {
				flags |= shmring.ChunkMore
			}
			n = end
			continue
		}
		f.tx.Publish()
		if f.tx.ConsumerWaiting() {
			f.txData.Wake()
		}
		if f.closedP.Load() != 0 || f.gone.Load() {
			return syscall.EPIPE
		}
		if err := f.tx.WaitSpace(f.txSpace, f.sdone); err != nil {
			return f.waitErr(err)
		}
		if f.closed.Load() {
			return net.ErrClosed
		}
	}
}

// recv takes the messages from the daemon into ms, at least one, waiting
// up to deadline, or until an interruption after gen (reported as
// os.ErrDeadlineExceeded too). It returns io.EOF once the daemon dropped
// the port and every message before is read. With lend, ms holds one
// message, lent to lend in place instead (marked msgLent, not copied), or
// ErrOverwritten if the daemon wrote over it as lend read it.
func (f *fastPath) recv(ms []Message, deadline time.Time, gen uint64, lend func([]byte, MsgFlags)) (int, error) {
	f.rmu.Lock()
	defer f.rmu.Unlock()
	if lend != nil {
		defer f.unmapIfClosed()
	}
	for {
		if f.closed.Load() {
			return 0, net.ErrClosed
		}
		var n int
		var err error
		if lend != nil {
			n, err = f.lend(lend)
			ms[0].N, ms[0].Flags = n, msgLent
			n = min(n, 1)
		} else {
			n, err = f.take(ms)
		}
		if n > 0 || err != nil {
			return n, err
		}
		if f.closedP.Load() != 0 || f.gone.Load() {
			return 0, io.EOF
		}
		if f.gens.Load() != gen {
			return 0, os.ErrDeadlineExceeded // interrupted
		}
		if !deadline.IsZero() && !time.Now().Before(deadline) {
			return 0, os.ErrDeadlineExceeded // no need to poll first
		}
		if !deadline.Equal(f.rdl) {
			f.rxData.SetDeadline(deadline)
			f.rdl = deadline
		}
		f.rgen = gen
		f.waiting.Store(true)
		err = f.rx.WaitDataOr(f.rxData, f.rdone, f.log)
		f.waiting.Store(false)
		if err != nil {
			return 0, f.waitErr(err)
		}
	}
}

// take copies into ms the messages waiting, first those of the ring, then
// those of the log, and reports how many.
func (f *fastPath) take(ms []Message) (int, error) {
	n := 0
	for n < len(ms) {
		m := &ms[n]
		l, ok, err := f.rx.Pop(m.Buf)
		if err != nil {
			return n, err
		}
		if !ok {
			break
		}
		if l == 0 {
			continue // an empty message: nothing to report
		}
		setLen(m, l)
		n++
	}
	if n > 0 {
		f.released()
	}
	if f.log != nil && n < len(ms) {
		for n < len(ms) {
			m := &ms[n]
			l, ok := f.log.Pop(m.Buf)
			if !ok {
				break
			}
			if l == 0 {
				continue
			}
			setLen(m, l)
			n++
		}
		// Its place, even past only its own messages, for the daemon's
		// count of what it missed.
		f.log.Release()
	}
	return n, nil
}

// lend lends the next message waiting to fn, in place, and reports its
// length, 0 if none waits.
func (f *fastPath) lend(fn func([]byte, MsgFlags)) (int, error) {
	for {
		m, ok, err := f.rx.Peek()
		if err != nil {
			return 0, err
		}
		if !ok {
			break
		}
		if len(m) > 0 {
			f.lendTo(fn, m)
		}
		f.released() // the slot is the daemon's again only now
		if len(m) > 0 {
			return len(m), nil
		}
	}
	if f.log == nil {
		return 0, nil
	}
	defer f.log.Release()
	for {
		l, ok, torn := f.log.View(func(m []byte) { f.lendTo(fn, m) })
		switch {
		case torn:
			return 0, ErrOverwritten
		case !ok:
			return 0, nil
		case l > 0:
			return l, nil
		}
	}
}

// lendTo calls fn with m, marked as lending: a Close from fn (or from
// another goroutine meanwhile) does not wait for it.
func (f *fastPath) lendTo(fn func([]byte, MsgFlags), m []byte) {
	f.umu.Lock()
	f.lending = true
	f.umu.Unlock()
	defer func() {
		f.umu.Lock()
		f.lending = false
		f.umu.Unlock()
	}()
	fn(m, 0)
}

// unmapIfClosed unmaps what a close during a lending left mapped; under
// rmu.
func (f *fastPath) unmapIfClosed() {
	f.umu.Lock()
	later := f.unmapLater
	f.unmapLater = false
	f.umu.Unlock()
	if later {
		f.unmap()
	}
}

// released frees the ring's slots read, waking the daemon if it waits for
// room.
func (f *fastPath) released() {
	f.rx.Release()
	if f.rx.ProducerWaiting() {
		f.rxSpace.Wake()
	}
}

// setLen sets a received message's length, marking a truncation.
func setLen(m *Message, l int) {
	m.N, m.Flags = l, 0
	if l > len(m.Buf) {
		m.N, m.Flags = len(m.Buf), MsgTrunc
	}
}

// waitErr maps a waker's error to what Send and Recv report.
func (f *fastPath) waitErr(err error) error {
	if f.closed.Load() {
		return net.ErrClosed
	}
	return err
}

// setWriteDeadline bounds Send's wait for room.
func (f *fastPath) setWriteDeadline(t time.Time) error {
	f.txSpace.SetDeadline(t)
	return nil
}

// gen returns the count of interruptions, for recv.
func (f *fastPath) gen() uint64 { return f.gens.Load() }

// close wakes Send and Recv and unmaps the rings once they have left, or,
// if RecvInPlace's function has a message, leaves the unmapping to it.
func (f *fastPath) close() {
	f.closed.Store(true)
	f.txSpace.Close()
	f.rxData.Close()
	f.smu.Lock()
	defer f.smu.Unlock()
	f.txData.Close()
	f.umu.Lock()
	if f.lending {
		f.unmapLater = true
		f.umu.Unlock()
		return
	}
	f.umu.Unlock()
	f.rmu.Lock()
	f.unmap()
	f.rmu.Unlock()
}

// unmap releases the receiving side's wakers and the memory; under rmu.
func (f *fastPath) unmap() {
	f.rxSpace.Close()
	f.region.Close()
	if f.log != nil {
		f.log.Close()
	}
}
