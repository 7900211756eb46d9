// Package sockio reads and writes batches of datagrams (or SOCK_SEQPACKET
// packets) on a socket in one wake-up of Go's poller, with recvmmsg(2) and
// sendmmsg(2).
package sockio

import (
	"errors"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/ipn-project/ipn/internal/yield"
	"golang.org/x/sys/unix"
)

// ReadBatch waits until raw's socket is readable, then reads into bufs as
// many messages as are queued, up to len(bufs), with one recvmmsg(2) per
// wake-up. It is Reader.Read with a Reader taken from a pool; see there for
// sizes and zero-length messages. An endpoint that reads often keeps its own
// Reader.
func ReadBatch(raw syscall.RawConn, bufs [][]byte, sizes []int, skipEmpty bool) (int, error) {
	r := readers.Get().(*Reader)
	r.raw, r.skipEmpty = raw, skipEmpty
	n, err := r.Read(bufs, sizes)
	r.raw = nil
	readers.Put(r)
	return n, err
}

// readers are ReadBatch's Readers.
var readers = sync.Pool{New: func() any { return NewReader(nil, false) }}

// WriteEach writes each message with one write(2), never waiting: a message
// the descriptor refuses is dropped, unless gone(err) says the descriptor
// itself is gone, which ends the batch with that error. It returns how many
// messages were written.
func WriteEach(raw syscall.RawConn, msgs [][]byte, gone func(error) bool) (int, error) {
	return WriteEachWith(raw, msgs, nil, gone)
}

// WriteEachWith is WriteEach with the control message oob (nil for none)
// sent with each message, such as the credentials a datagram carries.
func WriteEachWith(raw syscall.RawConn, msgs [][]byte, oob []byte, gone func(error) bool) (int, error) {
	sent := 0
	var werr error
	err := raw.Write(func(fd uintptr) bool {
		for _, m := range msgs {
			err := sendMsg(int(fd), m, oob)
			if err == nil {
				sent++
			} else if gone(err) {
				werr = err
				return true
			}
		}
		return true
	})
	if err == nil {
		err = werr
	}
	return sent, err
}

// sendMsg writes m to fd in one system call, with the control message oob if
// it is not nil.
func sendMsg(fd int, m, oob []byte) error {
	if oob == nil {
		_, err := unix.Write(fd, m)
		return err
	}
	_, err := unix.SendmsgN(fd, m, oob, nil, 0)
	return err
}

// ReadEach waits until raw's descriptor is readable, then calls read for
// one frame after another, into bufs[n] with n the frames kept so far, until
// len(bufs) are kept or read reports that nothing more waits, and returns
// how many it kept. read returns the frame's length (sizes[n]), whether to
// keep it, and an error: one for which idle reports true means nothing
// waits now (EAGAIN, EINTR and the like); any other ends the batch, and is
// returned if no frame was kept. It serves descriptors that recvmmsg does
// not (a tap) or whose frames need a look one by one.
func ReadEach(raw syscall.RawConn, bufs [][]byte, sizes []int,
	read func(fd int, b []byte) (size int, keep bool, err error), idle func(error) bool) (int, error) {
	n := 0
	var rerr error
	err := raw.Read(func(fd uintptr) bool {
		for n < len(bufs) {
			size, keep, err := read(int(fd), bufs[n])
			if err != nil {
				if idle(err) {
					return n > 0 // nothing yet: wait; else deliver what we have
				}
				rerr = err
				return true
			}
			if keep {
				sizes[n] = size
				n++
			}
		}
		return true
	})
	if n > 0 {
		return n, nil
	}
	if err != nil {
		return 0, err
	}
	return 0, rerr
}

// Again reports whether err means that nothing waits now.
func Again(err error) bool { return errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) }

// OneWriter writes one message at a time with write(2), never waiting: a
// message the descriptor refuses is dropped. A drop because the reader's
// buffer is full (EAGAIN) yields the processor (see yield.Yielder). It
// allocates nothing per message, and Write may be called from several
// goroutines at once.
type OneWriter struct {
	raw   syscall.RawConn
	mu    sync.Mutex
	m     []byte        // guarded by mu: the message being written
	sent  bool          // guarded by mu
	full  bool          // guarded by mu: the last write found the buffer full
	yield yield.Yielder // guarded by mu
	oob   []byte        // sent with each message; set before use
	fn    func(fd uintptr) bool
	iov   [2][]byte // guarded by mu: WriteHdr's header and message
	hbuf  [16]byte  // guarded by mu: WriteHdr's copy of its header
	fnv   func(fd uintptr) bool
}

// NewOneWriter returns a OneWriter on raw.
func NewOneWriter(raw syscall.RawConn) *OneWriter {
	w := &OneWriter{raw: raw}
	w.fn, w.fnv = w.write, w.writev
	return w
}

func (w *OneWriter) writev(fd uintptr) bool {
	_, err := unix.Writev(int(fd), w.iov[:])
	w.sent, w.full = err == nil, err == unix.EAGAIN || err == unix.ENOBUFS
	return true
}

// WriteHdr writes hdr (at most 16 bytes) then m in one system call
// (writev: a virtio-net header and its frame), as Write writes m; it sends
// no control message.
func (w *OneWriter) WriteHdr(hdr, m []byte) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.iov[0], w.iov[1], w.sent, w.full = w.hbuf[:copy(w.hbuf[:], hdr)], m, false, false
	w.raw.Write(w.fnv)
	w.iov[0], w.iov[1] = nil, nil
	switch {
	case w.sent:
		w.yield.Progressed()
	case w.full:
		w.yield.Dropped()
	}
	return w.sent
}

// SetControl makes w send the control message oob with each message (the
// credentials a datagram carries, say); call it before the first Write.
func (w *OneWriter) SetControl(oob []byte) { w.oob = oob }

func (w *OneWriter) write(fd uintptr) bool {
	err := sendMsg(int(fd), w.m, w.oob)
	w.sent, w.full = err == nil, err == unix.EAGAIN
	return true
}

// Write writes m and reports whether it was written (else it was dropped).
func (w *OneWriter) Write(m []byte) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.m, w.sent, w.full = m, false, false
	w.raw.Write(w.fn)
	w.m = nil
	switch {
	case w.sent:
		w.yield.Progressed()
	case w.full:
		w.yield.Dropped()
	}
	return w.sent
}

// File takes ownership of fd (a tap, a packet socket) and returns it as a
// file Go's poller manages, non-blocking, so that Close unblocks a Read or
// Write in progress, with its RawConn. fd is closed on error.
func File(fd int, name string) (*os.File, syscall.RawConn, error) {
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, nil, err
	}
	f := os.NewFile(uintptr(fd), name)
	raw, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, raw, nil
}

// Dup returns a new descriptor (close-on-exec) of raw's, which the caller
// owns: to pass to another process.
func Dup(raw syscall.RawConn) (int, error) {
	dup := -1
	var derr error
	err := raw.Control(func(fd uintptr) {
		dup, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	})
	if err == nil {
		err = derr
	}
	return dup, err
}

// Past is a deadline long gone: setting it stops a blocked Read or Write
// on a socket or file at once, with os.ErrDeadlineExceeded.
var Past = time.Unix(1, 0)

// Pauser pauses an endpoint on a file or socket that Go's poller manages
// by deadlines in the past: a blocked Read or Write returns at once with
// os.ErrDeadlineExceeded, consuming nothing. Endpoints embed it for
// endpoint.Pauser's methods.
type Pauser struct{ d deadliner }

type deadliner interface {
	SetDeadline(time.Time) error
	SetReadDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
}

// NewPauser returns the Pauser of f, an *os.File or a net.Conn.
func NewPauser(f deadliner) Pauser { return Pauser{f} }

// PauseRead stops reads until Resume.
func (p Pauser) PauseRead() { p.d.SetReadDeadline(Past) }

// PauseWrite stops writes until Resume.
func (p Pauser) PauseWrite() { p.d.SetWriteDeadline(Past) }

// Resume undoes PauseRead and PauseWrite.
func (p Pauser) Resume() { p.d.SetDeadline(time.Time{}) }

// SizeFor raises fd's send buffer so that one message of max bytes fits
// (a Unix datagram or SOCK_SEQPACKET packet is refused with EMSGSIZE when
// longer than the sender's buffer), with SO_SNDBUFFORCE where the caller
// may (CAP_NET_ADMIN), else SO_SNDBUF, which the kernel caps at
// net.core.wmem_max. It never lowers the buffer, and reports the longest
// message the buffer then takes.
func SizeFor(fd, max int) int {
	// The kernel doubles what is set, for its bookkeeping; a packet may
	// be as long as the buffer less a little.
	want := max/2 + 64<<10
	if cur, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF); err == nil && cur-64<<10 >= max {
		return cur - 64<<10
	}
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, want) != nil {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, want)
	}
	cur, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF)
	if err != nil {
		return 0
	}
	return cur - 64<<10
}

// SendLimit returns the longest packet raw's socket takes now, as SizeFor
// reports it: its send buffer less 64 KiB.
func SendLimit(raw syscall.RawConn) int {
	cur := 0
	raw.Control(func(fd uintptr) {
		cur, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF)
	})
	return cur - 64<<10
}
