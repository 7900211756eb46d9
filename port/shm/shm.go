// Package shm is the endpoint of a member on the fast path: a pair of
// shared-memory rings (package internal/shmring) that only this member maps,
// with eventfd wake-ups.
//
// Messages for the member are copied straight into its ring by the sending
// port's goroutine (the ring is the member's queue): a full ring drops the
// message, or in a lossless network makes the sender wait. Whatever the
// member writes into its rings, the endpoint checks it; an impossible index
// or length ends this port only.
package shm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/endpoint"
	"github.com/ipn-project/ipn/internal/shmring"
	"github.com/ipn-project/ipn/internal/yield"
)

// Endpoint is the daemon's side of a member's rings.
type Endpoint struct {
	region *shmring.Region
	// Wakers: the daemon sleeps on in and outSpace, the member on the
	// others; the daemon keeps its copies of the member's to wake it.
	inData, inSpace, outData, outSpace *shmring.Waker

	rmu   sync.Mutex // guards in (the member's ring to the daemon) and region
	in    *shmring.Consumer
	wmu   sync.Mutex // guards out (the daemon's ring to the member), freed, yield
	out   *shmring.Producer
	freed uint64        // the member's progress when a message was last dropped
	yield yield.Yielder // for drops into a full ring

	lossless bool
	oob      func([]byte) error
	log      *Log         // the hub's log the member reads, or nil
	port     atomic.Int32 // the port's number, once joined; -1 before
	mmu      sync.Mutex   // guards the region's mapping for FanOutMissed, and missed
	missed   uint64       // the member's counts when last read
	taken    uint64
	closed   atomic.Bool
	pausedR  atomic.Bool // Read returns ErrPaused rather than wait
	pausedW  atomic.Bool // a lossless write returns rather than wait
	peerGone atomic.Bool // the member will write no more
	skip     bool        // under rmu: the chunks of a dropped message follow
	head     []byte      // under rmu: a big message's first chunk
	broken   atomic.Bool // the member published impossible indices or lengths
	once     sync.Once
}

var (
	_ endpoint.Endpoint        = (*Endpoint)(nil)
	_ endpoint.DirectWriter    = (*Endpoint)(nil)
	_ endpoint.TryDirectWriter = (*Endpoint)(nil)
	_ endpoint.OOBWriter       = (*Endpoint)(nil)
	_ endpoint.Pauser          = (*Endpoint)(nil)
	_ endpoint.FanOutReader    = (*Endpoint)(nil)
	_ endpoint.BigReader       = (*Endpoint)(nil)
)

// New makes the rings for messages of up to mtu bytes. In a lossless
// network a full ring makes the sender wait rather than drop. oob, if not
// nil, delivers out-of-band messages (on the control connection).
func New(mtu int, lossless bool, oob func([]byte) error) (*Endpoint, error) {
	region, err := shmring.Create(LayoutFor(mtu))
	if err != nil {
		return nil, err
	}
	e := &Endpoint{region: region, lossless: lossless, oob: oob}
	e.port.Store(-1)
	for _, w := range []**shmring.Waker{&e.inData, &e.inSpace, &e.outData, &e.outSpace} {
		if *w, err = shmring.NewWaker(); err != nil {
			e.Close()
			return nil, err
		}
	}
	e.in = region.Consumer(shmring.ToDaemon)
	e.out = region.Producer(shmring.ToMember)
	return e, nil
}

// Position is where the daemon's side of a member's rings stands: what
// another daemon needs, with DupFDs' descriptors, to go on from there
// (Adopt). The member's side of the shared memory is not trusted for it.
type Position struct {
	Layout shmring.Layout
	In     uint64 // messages taken from the member's ring
	Out    uint64 // messages put into the ring to the member
}

// Position returns the endpoint's position; call it while paused.
func (e *Endpoint) Position() Position {
	e.rmu.Lock()
	defer e.rmu.Unlock()
	e.wmu.Lock()
	defer e.wmu.Unlock()
	return Position{Layout: e.region.Layout(), In: e.in.Next(), Out: e.out.Next()}
}

// Adopt returns the endpoint of rings that another daemon made with New
// and passed on (a takeover), from the descriptors DupFDs gave, which it
// owns from then on (closed on error), resumed at pos.
func Adopt(fds []int, pos Position, lossless bool, oob func([]byte) error) (*Endpoint, error) {
	if len(fds) != 5 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil, fmt.Errorf("adopt rings: want 5 descriptors, got %d: %w", len(fds), unix.EINVAL)
	}
	region, err := shmring.MapAs(fds[0], pos.Layout)
	if err != nil {
		for _, fd := range fds[1:] {
			unix.Close(fd)
		}
		return nil, fmt.Errorf("adopt rings: %w", err)
	}
	e := &Endpoint{region: region, lossless: lossless, oob: oob}
	e.port.Store(-1)
	for i, w := range []**shmring.Waker{&e.inData, &e.inSpace, &e.outData, &e.outSpace} {
		if *w, err = shmring.WakerFromFD(fds[1+i]); err != nil {
			for _, fd := range fds[2+i:] {
				unix.Close(fd)
			}
			e.drop()
			return nil, fmt.Errorf("adopt rings: %w", err)
		}
	}
	e.in = region.ConsumerAt(shmring.ToDaemon, pos.In)
	e.out = region.ProducerAt(shmring.ToMember, pos.Out)
	// The member may have slept on either ring while no daemon served.
	e.outData.Wake()
	e.inSpace.Wake()
	return e, nil
}

// drop releases the endpoint's memory and descriptors without telling
// the member anything: for an endpoint that never served.
func (e *Endpoint) drop() {
	for _, w := range []*shmring.Waker{e.inData, e.inSpace, e.outData, e.outSpace} {
		if w != nil {
			w.Close()
		}
	}
	e.region.Close()
}

// ReadLog makes the member read the network's messages from l, starting
// at its newest, as well as from its ring (which then carries only what
// the network's policy sends to it alone); call it before DupFDs and
// before the port joins. resume keeps the member's place in l (a daemon
// taking over), else it starts at l's newest message.
func (e *Endpoint) ReadLog(l *Log, resume bool) {
	e.log = l
	l.add(e, !resume)
}

// SetPort tells the endpoint its port number once joined: the log wakes
// a member for the messages of others only.
func (e *Endpoint) SetPort(n int) { e.port.Store(int32(n)) }

// FanOut implements endpoint.FanOutReader.
func (e *Endpoint) FanOut() endpoint.FanOut {
	if e.log == nil {
		return nil
	}
	return e.log
}

// FanOutMissed implements endpoint.FanOutReader: the messages the member
// missed, lapped by the log (what it says, and those written over before
// it read them), and the other members' messages it says it took.
func (e *Endpoint) FanOutMissed() (missed, taken uint64) {
	e.mmu.Lock()
	defer e.mmu.Unlock()
	if e.log != nil && !e.closed.Load() {
		e.readPlace()
	}
	return e.missed, e.taken
}

// readPlace takes the member's counts from its region; under mmu, while
// the region is mapped.
func (e *Endpoint) readPlace() {
	head, seq, missed, taken := e.region.LogPlace()
	e.missed, e.taken = e.log.missed(head, seq, missed), taken
}

// PauseRead implements endpoint.Pauser.
func (e *Endpoint) PauseRead() {
	e.pausedR.Store(true)
	e.inData.Wake()
}

// PauseWrite implements endpoint.Pauser.
func (e *Endpoint) PauseWrite() {
	e.pausedW.Store(true)
	e.outSpace.Wake()
}

// Resume implements endpoint.Pauser.
func (e *Endpoint) Resume() {
	e.pausedR.Store(false)
	e.pausedW.Store(false)
}

func (e *Endpoint) readStop() bool  { return e.stopped() || e.pausedR.Load() }
func (e *Endpoint) writeStop() bool { return e.closed.Load() || e.pausedW.Load() }

// DupFDs returns copies of the descriptors the member needs, in the order
// the protocol passes them: the memfd, then the eventfds woken when its ring
// to the daemon has data and has room, when its ring from the daemon has
// data and has room; then, if it reads a log (ReadLog), the log's
// read-only memfd. The caller closes them.
func (e *Endpoint) DupFDs() ([]int, error) {
	var fds []int
	all := []int{e.region.FD(), e.inData.FD(), e.inSpace.FD(), e.outData.FD(), e.outSpace.FD()}
	if e.log != nil {
		all = append(all, e.log.log.ReadOnlyFD())
	}
	for _, fd := range all {
		d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			for _, d := range fds {
				unix.Close(d)
			}
			return nil, fmt.Errorf("dup ring descriptor: %w", err)
		}
		fds = append(fds, d)
	}
	return fds, nil
}

// PeerGone tells the endpoint that the member has gone: Read returns io.EOF
// once the ring is drained.
func (e *Endpoint) PeerGone() {
	e.peerGone.Store(true)
	e.inData.Wake()
}

func (e *Endpoint) stopped() bool { return e.closed.Load() || e.peerGone.Load() }

// Read implements endpoint.Endpoint.Read.
func (e *Endpoint) Read(bufs [][]byte, sizes []int) (int, error) {
	e.rmu.Lock() // Close unmaps the rings under rmu
	defer e.rmu.Unlock()
	for {
		if e.closed.Load() {
			return 0, e.fail(nil)
		}
		n := 0
		var err error
		for n < len(bufs) {
			var ok bool
			if sizes[n], ok, err = e.in.Pop(bufs[n]); !ok {
				break
			}
			n++
		}
		if n > 0 {
			e.in.Release()
			if e.in.ProducerWaiting() {
				e.inSpace.Wake()
			}
		}
		if err != nil {
			e.corrupt()
			return n, e.fail(err)
		}
		if n > 0 {
			return n, nil
		}
		if err := e.idle(); err != nil {
			return 0, err
		}
	}
}

// idle ends a read that found nothing: io.EOF once the member has gone,
// ErrPaused when paused, else nil once there may be data. Under rmu.
func (e *Endpoint) idle() error {
	if e.peerGone.Load() {
		return io.EOF
	}
	if e.pausedR.Load() {
		return endpoint.ErrPaused
	}
	if err := e.in.WaitData(e.inData, e.readStop); err != nil {
		if errors.Is(err, shmring.ErrCorrupt) {
			e.corrupt()
		}
		return e.fail(err)
	}
	return nil
}

// fail describes why the rings stopped: the member broke them, or the
// endpoint was closed.
func (e *Endpoint) fail(err error) error {
	if e.broken.Load() {
		return fmt.Errorf("member's rings: %w", shmring.ErrCorrupt)
	}
	if e.closed.Load() || err == nil {
		return net.ErrClosed
	}
	return err
}

// WriteDirect implements endpoint.DirectWriter: it copies msg into the
// member's ring, or drops it if the ring is full (lossy) and waits for room
// (lossless).
func (e *Endpoint) WriteDirect(msg []byte) bool {
	e.wmu.Lock()
	defer e.wmu.Unlock()
	if e.closed.Load() || len(msg) > e.region.Layout().MaxMsg() {
		return false // a big message reaches a member through the log only
	}
	for {
		ok, err := e.out.Push(msg)
		if err != nil {
			e.corrupt()
			return false
		}
		if ok {
			break
		}
		if !e.lossless {
			e.starved()
			return false
		}
		if e.pausedW.Load() {
			return false // not written: Write says why
		}
		if err := e.out.WaitSpace(e.outSpace, e.writeStop); err != nil || e.closed.Load() {
			if errors.Is(err, shmring.ErrCorrupt) {
				e.corrupt()
			}
			return false
		}
	}
	if e.out.ConsumerWaiting() {
		e.outData.Wake()
	}
	return true
}

// TryWriteDirect implements endpoint.TryDirectWriter: it copies msg into
// the member's ring if it has room now.
func (e *Endpoint) TryWriteDirect(msg []byte) bool {
	e.wmu.Lock()
	defer e.wmu.Unlock()
	if e.closed.Load() || len(msg) > e.region.Layout().MaxMsg() {
		return false
	}
	ok, err := e.out.Push(msg)
	if err != nil {
		e.corrupt()
		return false
	}
	if ok && e.out.ConsumerWaiting() {
		e.outData.Wake()
	}
	return ok
}

// starved is called, under wmu, when a lossy message finds the member's
// ring full: see yield.Yielder. On 2 cores, yielding turned 30-70 % loss
// into 0-3 % and more than doubled what a receiver gets.
func (e *Endpoint) starved() {
	if f := e.out.Freed(); f != e.freed {
		e.freed = f
		e.yield.Progressed()
	}
	e.yield.Dropped()
}

// corrupt ends the port of a member that broke its ring: the reader fails
// and the engine lets the port leave.
func (e *Endpoint) corrupt() {
	e.broken.Store(true)
	e.closed.Store(true)
	e.inData.Wake()
}

// Write implements endpoint.Endpoint.Write, for what the engine queues
// (messages a policy emits).
func (e *Endpoint) Write(msgs [][]byte) (int, error) {
	n := 0
	for _, m := range msgs {
		if e.WriteDirect(m) {
			n++
		} else if e.lossless && e.pausedW.Load() && !e.closed.Load() {
			return n, endpoint.ErrPaused // the rest stay the caller's
		}
	}
	if e.closed.Load() {
		return n, net.ErrClosed
	}
	return n, nil
}

// WriteOOB implements endpoint.OOBWriter.
func (e *Endpoint) WriteOOB(m []byte) error {
	if e.oob == nil {
		return nil
	}
	return e.oob(m)
}

// BatchSize implements endpoint.Endpoint.BatchSize.
func (e *Endpoint) BatchSize() int { return 64 }

// Close implements endpoint.Endpoint.Close: it tells the member its port is
// gone, wakes everyone, and unmaps the rings once no one uses them.
func (e *Endpoint) Close() error {
	e.once.Do(func() {
		e.closed.Store(true)
		for _, w := range []*shmring.Waker{e.inData, e.inSpace, e.outData, e.outSpace} {
			if w != nil {
				w.Wake()
			}
		}
		if e.in != nil {
			e.region.SetClosed()
		}
		// The daemon's own wakers unblock its sleepers when closed.
		for _, w := range []*shmring.Waker{e.inData, e.outSpace} {
			if w != nil {
				w.Close()
			}
		}
		e.leaveLog()
		e.wmu.Lock()
		e.rmu.Lock()
		for _, w := range []*shmring.Waker{e.inSpace, e.outData} {
			if w != nil {
				w.Close()
			}
		}
		e.region.Close()
		e.rmu.Unlock()
		e.wmu.Unlock()
	})
	return nil
}

// Abandon releases the endpoint's memory and descriptors without telling
// the member anything, for a daemon that handed the rings to another: it
// does not mark the region closed, as Close does.
func (e *Endpoint) Abandon() {
	e.once.Do(func() {
		e.closed.Store(true)
		e.leaveLog()
		e.wmu.Lock()
		e.rmu.Lock()
		e.drop()
		e.rmu.Unlock()
		e.wmu.Unlock()
	})
}

// leaveLog stops the log's wake-ups and takes the member's last count of
// what it missed, before the region is unmapped.
func (e *Endpoint) leaveLog() {
	if e.log == nil {
		return
	}
	e.mmu.Lock()
	e.readPlace()
	e.mmu.Unlock()
	e.log.remove(e)
}

// ChunkSize is how much of a big message (over it) each chunk of a
// member's carries; the first carries the message's length (u32), then
// ChunkSize-4 bytes of it.
const ChunkSize = shmring.ChunkSize

// LayoutFor returns the layout of a member's rings for a network of mtu:
// a network of big messages gets rings of ChunkSize messages, which its
// members' big messages cross in chunks (ReadBig).
func LayoutFor(mtu int) shmring.Layout { return shmring.LayoutFor(min(mtu, ChunkSize)) }

// ReadBig implements endpoint.BigReader: messages longer than ChunkSize
// come in chunks, joined into the buffer grow gives (ReadBig waits for a
// message's last chunk once it has its first). A chunk that does not
// continue the message under way, or a length that does not match, ends
// the port (ErrCorrupt); a message grow drops is read and dropped, and one
// cut short by a pause is dropped, and the rest of its chunks with it.
func (e *Endpoint) ReadBig(bufs [][]byte, sizes []int, grow func(i, size int) ([]byte, bool)) (int, error) {
	e.rmu.Lock()
	defer e.rmu.Unlock()
	for {
		if e.closed.Load() {
			return 0, e.fail(nil)
		}
		n, dropped, err := e.popBig(bufs, sizes, grow)
		if err != nil {
			if errors.Is(err, shmring.ErrCorrupt) {
				e.corrupt()
			}
			return n, e.fail(err)
		}
		if n > 0 || dropped {
			// A dropped message's buffer goes back to the budget when
			// the engine has the batch back, not after the next wait.
			return n, nil
		}
		if err := e.idle(); err != nil {
			return 0, err
		}
	}
}

// popBig pops whole messages into bufs, joining chunks; under rmu.
func (e *Endpoint) popBig(bufs [][]byte, sizes []int, grow func(i, size int) ([]byte, bool)) (n int, dropped bool, err error) {
	start := e.in.Next()
	defer func() {
		// Slots popped, even those of a message dropped, are the
		// member's again.
		if e.in.Next() != start {
			e.in.Release()
			if e.in.ProducerWaiting() {
				e.inSpace.Wake()
			}
		}
	}()
	for n < len(bufs) {
		l, flags, ok, err := e.in.PopChunk(bufs[n])
		if err != nil || !ok {
			return n, dropped, err
		}
		switch {
		case flags&shmring.ChunkNext != 0:
			// The rest of a message dropped or cut short (by a pause,
			// or a takeover: the daemon before read its start).
			e.skip = flags&shmring.ChunkMore != 0
			continue
		case flags == 0:
			e.skip = false
			sizes[n] = l
			n++
			continue
		}
		// The first chunk of a big message: its length, then its start.
		e.skip = true
		if l < 4 || l > len(bufs[n]) {
			return n, dropped, fmt.Errorf("a first chunk of %d bytes: %w", l, shmring.ErrCorrupt)
		}
		total := int(binary.LittleEndian.Uint32(bufs[n]))
		if total <= ChunkSize || total < l-4 {
			return n, dropped, fmt.Errorf("a big message of %d bytes in chunks: %w", total, shmring.ErrCorrupt)
		}
		// bufs[n] goes back to its pool in grow.
		e.head = append(e.head[:0], bufs[n][4:l]...)
		head := e.head
		buf, drop := grow(n, total)
		if buf == nil && !drop {
			// Left for a later read (a pause, or no room yet): the
			// batch ends before it.
			e.in.Unpop()
			e.skip = false
			return n, dropped, nil
		}
		if buf == nil {
			dropped = true
			continue // dropped (counted): its chunks are skipped
		}
		bufs[n] = buf // the pooled one is no longer msgs[n]'s
		whole, err := e.chunks(buf, copy(buf, head), total)
		if err != nil {
			return n, dropped, err
		}
		if !whole {
			return n, true, nil // its buffer is msgs[n]'s, to free
		}
		sizes[n] = total
		// The batch ends after a big message: it holds at most one.
		return n + 1, dropped, nil
	}
	return n, dropped, nil
}

// ChunkTimeout is how long a member has for all of a big message's
// chunks once the daemon has its first: the network's budget holds the
// message's buffer meanwhile. A message not whole by then is dropped.
const ChunkTimeout = 2 * time.Second

// chunks reads the chunks after the first of a message of total bytes
// into buf, off of them read, waiting for them up to ChunkTimeout; it
// reports whether the message is whole. A message the member gave up on
// (the next begins), that a pause, a close or the member's leaving cut
// short, or that took too long, is not: its rest, if any, is skipped.
// Under rmu.
func (e *Endpoint) chunks(buf []byte, off, total int) (bool, error) {
	deadline := time.Now().Add(ChunkTimeout)
	e.inData.SetDeadline(deadline)
	defer e.inData.SetDeadline(time.Time{})
	for {
		cl, cf, ok, err := e.in.PopChunk(buf[off:])
		if err != nil {
			return false, err
		}
		if !ok {
			e.in.Release()
			if e.in.ProducerWaiting() {
				e.inSpace.Wake()
			}
			err := e.in.WaitData(e.inData, e.readStop)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return false, nil // too slow: e.skip skips the rest
			}
			if err != nil {
				return false, err
			}
			if empty, err := e.in.Empty(); err != nil || empty && e.readStop() {
				return false, err
			}
			continue
		}
		if cf&shmring.ChunkNext == 0 {
			// The member gave up on this message (a deadline passed)
			// and sends the next: it is that one's.
			e.in.Unpop()
			e.skip = false
			return false, nil
		}
		if cl == 0 || off+cl > total {
			return false, fmt.Errorf("chunk of %d bytes at %d of %d: %w", cl, off, total, shmring.ErrCorrupt)
		}
		off += cl
		if cf&shmring.ChunkMore == 0 {
			e.skip = false
			return off == total, nil
		}
		if e.readStop() || time.Now().After(deadline) {
			return false, nil // e.skip skips the rest
		}
	}
}
