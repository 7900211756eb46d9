package sockio

import (
	"fmt"
	"math"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/internal/wire"
)

// fragBatch is the most packets a FragWriter hands sendmmsg(2) at once.
const fragBatch = 64

// FragWriter writes messages to a SOCK_SEQPACKET socket of a network whose
// data sockets carry fragments (wire.Fragmented): each packet a fragment
// header then up to Size bytes of its message, the header and the bytes
// sent from where they are (two iovecs, no copy), batches with one
// sendmmsg(2) per wake-up. Write and WriteOne may be called from several
// goroutines: each message's packets stay together.
type FragWriter struct {
	raw  syscall.RawConn
	size int

	mu   sync.Mutex
	hdrs []byte // FragHeaderLen a packet
	mh   []unix.Mmsghdr
	iovs []unix.Iovec // two a packet: its header, its bytes
	ends []bool       // packet k ends its message
	fn   func(uintptr) bool
	// the current call's progress
	count, done int
	err         error

	one    unix.Msghdr // WriteOne's
	oneIov [2]unix.Iovec
	oneHdr [wire.FragHeaderLen]byte
	oneErr error
	oneFn  func(uintptr) bool
}

// NewFragWriter returns a FragWriter on raw's socket that puts size bytes
// of a message (wire.FragSize) in each packet.
func NewFragWriter(raw syscall.RawConn, size int) *FragWriter {
	w := &FragWriter{raw: raw, size: max(size, 1),
		hdrs: make([]byte, fragBatch*wire.FragHeaderLen), mh: make([]unix.Mmsghdr, fragBatch),
		iovs: make([]unix.Iovec, 2*fragBatch), ends: make([]bool, fragBatch)}
	for k := range w.mh {
		w.mh[k].Hdr.Iov = &w.iovs[2*k]
		w.mh[k].Hdr.SetIovlen(2)
		w.iovs[2*k].Base = &w.hdrs[k*wire.FragHeaderLen]
		w.iovs[2*k].SetLen(wire.FragHeaderLen)
	}
	w.one.Iov = &w.oneIov[0]
	w.one.SetIovlen(2)
	w.oneIov[0].Base = &w.oneHdr[0]
	w.oneIov[0].SetLen(wire.FragHeaderLen)
	w.fn, w.oneFn = w.doWrite, w.doWriteOne
	return w
}

// Size returns the most bytes of a message one packet carries.
func (w *FragWriter) Size() int { return w.size }

// Write sends every message of msgs, in order, each in as many packets as
// it needs, waiting on the poller while the socket is full, and returns
// how many it sent whole: all of them unless the socket failed, was
// closed or passed its write deadline. A message cut short by such an
// error is left unfinished on the socket: the next message's first
// fragment tells the receiver to drop it. An empty message sends nothing
// and counts as sent; one over 4 GiB is EMSGSIZE.
func (w *FragWriter) Write(msgs [][]byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	defer clear(w.iovs) // the headers' iovecs are set again below
	sent := 0
	i, off := 0, 0
	for i < len(msgs) {
		np := 0
		for np < fragBatch && i < len(msgs) {
			m := msgs[i]
			if len(m) == 0 {
				i++
				sent++
				continue
			}
			if len(m) > math.MaxUint32 {
				return sent, fmt.Errorf("message of %d bytes: a fragment header counts to %d: %w", len(m), uint32(math.MaxUint32), syscall.EMSGSIZE)
			}
			n := min(w.size, len(m)-off)
			wire.PutFragHeader(w.hdrs[np*wire.FragHeaderLen:], len(m), off)
			h, b := &w.iovs[2*np], &w.iovs[2*np+1]
			h.Base = &w.hdrs[np*wire.FragHeaderLen]
			h.SetLen(wire.FragHeaderLen)
			b.Base = &m[off]
			b.SetLen(n)
			off += n
			w.ends[np] = off == len(m)
			if w.ends[np] {
				i, off = i+1, 0
			}
			np++
		}
		if np == 0 {
			break
		}
		w.count, w.done, w.err = np, 0, nil
		err := w.raw.Write(w.fn)
		for _, end := range w.ends[:w.done] {
			if end {
				sent++
			}
		}
		if w.err != nil {
			err = w.err
		}
		if err != nil {
			return sent, err
		}
	}
	return sent, nil
}

// doWrite is the poller's callback: it reports false to wait for room.
func (w *FragWriter) doWrite(fd uintptr) bool {
	for w.done < w.count {
		got, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&w.mh[w.done])), uintptr(w.count-w.done),
			unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL, 0, 0)
		switch e {
		case 0:
			if got == 0 {
				return false
			}
			w.done += int(got)
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			w.err = os.NewSyscallError("sendmmsg", e)
			return true
		}
	}
	return true
}

// WriteOne sends m, a message that fits one packet, now or never: it
// reports false, sending nothing, if the socket has no room, if it is
// longer than Size, or if another goroutine is writing a message (whose
// packets m must not come between). It never waits.
func (w *FragWriter) WriteOne(m []byte) bool {
	if len(m) == 0 || len(m) > w.size || !w.mu.TryLock() {
		return false
	}
	defer w.mu.Unlock()
	wire.PutFragHeader(w.oneHdr[:], len(m), 0)
	w.oneIov[1].Base = &m[0]
	w.oneIov[1].SetLen(len(m))
	w.oneErr = unix.EAGAIN
	w.raw.Write(w.oneFn)
	w.oneIov[1].Base = nil
	return w.oneErr == nil
}

func (w *FragWriter) doWriteOne(fd uintptr) bool {
	for {
		_, _, e := unix.Syscall(unix.SYS_SENDMSG, fd, uintptr(unsafe.Pointer(&w.one)), unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
		if e == unix.EINTR {
			continue
		}
		w.oneErr = nil
		if e != 0 {
			w.oneErr = e
		}
		return true
	}
}

// PacketReader reads the packets of a socket of a network whose data
// sockets carry fragments: a packet's header apart from its bytes, which
// go where the caller says, with no copy. Its zero value is ready; it is
// not safe for concurrent use. Call its methods from a RawConn's Read
// callback: they never wait.
type PacketReader struct {
	hdr [wire.FragHeaderLen]byte
	iov [2]unix.Iovec
	msg unix.Msghdr
}

// Peek returns the length of the next packet (0 for an empty one, or the
// end) and, if it has them, its header's total and offset, leaving it
// queued.
func (r *PacketReader) Peek(fd int) (n, total, off int, err error) {
	clear(r.hdr[:])
	r.iov[0].Base = &r.hdr[0]
	r.iov[0].SetLen(wire.FragHeaderLen)
	r.msg.Iov = &r.iov[0]
	r.msg.SetIovlen(1)
	n, err = r.recvmsg(fd, unix.MSG_PEEK|unix.MSG_TRUNC|unix.MSG_DONTWAIT)
	total, off = wire.FragHeader(r.hdr[:])
	return n, total, off, err
}

// Recv reads the next packet: its header, then its bytes into b (nil to
// drop them; those past len(b) are dropped). It returns the packet's whole
// length and its header's total and offset (zeros for a packet shorter
// than a header).
func (r *PacketReader) Recv(fd int, b []byte) (n, total, off int, err error) {
	clear(r.hdr[:])
	r.iov[0].Base = &r.hdr[0]
	r.iov[0].SetLen(wire.FragHeaderLen)
	r.iov[1].Base, r.iov[1].Len = nil, 0
	if len(b) > 0 {
		r.iov[1].Base = &b[0]
		r.iov[1].SetLen(len(b))
	}
	r.msg.Iov = &r.iov[0]
	r.msg.SetIovlen(2)
	n, err = r.recvmsg(fd, unix.MSG_TRUNC|unix.MSG_DONTWAIT)
	r.iov[1].Base = nil
	total, off = wire.FragHeader(r.hdr[:])
	return n, total, off, err
}

// recvmsg runs recvmsg(2) on r.msg, again if interrupted.
func (r *PacketReader) recvmsg(fd int, flags int) (int, error) {
	for {
		n, _, e := unix.Syscall(unix.SYS_RECVMSG, uintptr(fd), uintptr(unsafe.Pointer(&r.msg)), uintptr(flags))
		switch e {
		case 0:
			return int(n), nil
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return 0, e
		}
		return 0, os.NewSyscallError("recvmsg", e)
	}
}

// Drop reads the next packet and discards it.
func (r *PacketReader) Drop(fd int) error {
	_, _, _, err := r.Recv(fd, nil)
	return err
}
