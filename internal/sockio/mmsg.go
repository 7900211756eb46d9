package sockio

import (
	"io"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// mmsgs is the reusable argument of recvmmsg(2) and sendmmsg(2): hdrs[i]
// points at iovs[i], which points at the caller's message i.
type mmsgs struct {
	hdrs []unix.Mmsghdr
	iovs []unix.Iovec
}

// reserve makes room for n messages, allocating only when n grows.
func (v *mmsgs) reserve(n int) {
	if len(v.hdrs) >= n {
		return
	}
	v.hdrs = make([]unix.Mmsghdr, n)
	v.iovs = make([]unix.Iovec, n)
	for i := range v.hdrs {
		v.hdrs[i].Hdr.Iov = &v.iovs[i]
		v.hdrs[i].Hdr.SetIovlen(1)
	}
}

// point aims message i's iovec at b.
func (v *mmsgs) point(i int, b []byte) {
	if len(b) == 0 {
		v.iovs[i].Base = nil
	} else {
		v.iovs[i].Base = &b[0]
	}
	v.iovs[i].SetLen(len(b))
}

// forget drops the references to the caller's buffers in the first n.
func (v *mmsgs) forget(n int) {
	for i := range v.iovs[:n] {
		v.iovs[i].Base = nil
	}
}

// call runs recvmmsg or sendmmsg (trap) on hdrs[from:to].
func (v *mmsgs) call(trap uintptr, fd uintptr, from, to int, flags int) (int, syscall.Errno) {
	n, _, e := unix.Syscall6(trap, fd, uintptr(unsafe.Pointer(&v.hdrs[from])), uintptr(to-from),
		uintptr(flags), 0, 0)
	return int(n), e
}

// Reader reads batches of packets from one socket with one recvmmsg(2) per
// wake-up, reusing its arguments: after the first batches it allocates
// nothing. Its Read is not safe for concurrent use.
type Reader struct {
	raw       syscall.RawConn
	skipEmpty bool
	v         mmsgs
	read      func(uintptr) bool // r.doRead, bound once

	// the current call's arguments and results
	bufs  [][]byte
	sizes []int
	n     int
	err   error
}

// NewReader returns a Reader on raw's socket. skipEmpty says how Read treats
// zero-length packets; see Read.
func NewReader(raw syscall.RawConn, skipEmpty bool) *Reader {
	r := &Reader{raw: raw, skipEmpty: skipEmpty}
	r.read = r.doRead
	return r
}

// Read waits until the socket is readable, then reads into bufs as many
// packets as are queued, up to len(bufs), without waiting again. sizes[i]
// is packet i's length, len(bufs[i])+1 if it was truncated. Zero-length
// packets are never returned: with skipEmpty they are skipped; without, a
// read that finds only zero-length packets (a SOCK_SEQPACKET peer's end,
// or empty packets) returns io.EOF, and one that finds others returns them
// at once.
func (r *Reader) Read(bufs [][]byte, sizes []int) (int, error) {
	if len(bufs) == 0 {
		return 0, nil
	}
	r.v.reserve(len(bufs))
	for i, b := range bufs {
		r.v.point(i, b)
	}
	r.bufs, r.sizes, r.n, r.err = bufs, sizes, 0, nil
	err := r.raw.Read(r.read)
	n, rerr := r.n, r.err
	r.v.forget(len(bufs))
	r.bufs, r.sizes, r.err = nil, nil, nil
	if n > 0 {
		return n, nil
	}
	if err != nil {
		return 0, err
	}
	return 0, rerr
}

// doRead is the poller's callback: it reports false to wait for the socket.
func (r *Reader) doRead(fd uintptr) bool {
	for r.n < len(r.bufs) {
		from := r.n
		got, e := r.v.call(unix.SYS_RECVMMSG, fd, from, len(r.bufs), unix.MSG_DONTWAIT|unix.MSG_TRUNC)
		switch e {
		case 0:
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return r.n > 0 // nothing yet: wait; else deliver what we have
		default:
			if r.n == 0 {
				r.err = os.NewSyscallError("recvmmsg", e)
			}
			return true
		}
		empty := false
		for i := from; i < from+got; i++ {
			h := &r.v.hdrs[i]
			full := int(h.Len) // the whole packet's length (MSG_TRUNC)
			if full == 0 {
				empty = true
				continue
			}
			if h.Hdr.Flags&unix.MSG_TRUNC != 0 {
				full = max(full, len(r.bufs[i])+1)
			}
			kept := min(full, len(r.bufs[i])) // the bytes read
			if i != r.n {
				// An empty packet came before: close the gap.
				kept = copy(r.bufs[r.n], r.bufs[i][:kept])
			}
			if full > kept {
				full = len(r.bufs[r.n]) + 1 // over len: truncated
			}
			r.sizes[r.n] = full
			r.n++
		}
		if empty && !r.skipEmpty {
			if r.n == 0 {
				r.err = io.EOF
			}
			return true
		}
		if got < len(r.bufs)-from {
			// The queue is drained (or an error waits for the next call).
			return r.n > 0
		}
	}
	return true
}

// Writer writes batches of packets to one socket with one sendmmsg(2) per
// wake-up, reusing its arguments: after the first batches it allocates
// nothing. Its Write is not safe for concurrent use.
type Writer struct {
	raw   syscall.RawConn
	v     mmsgs
	write func(uintptr) bool // w.doWrite, bound once

	// the current call's progress
	total int
	n     int
	err   error
}

// NewWriter returns a Writer on raw's socket.
func NewWriter(raw syscall.RawConn) *Writer {
	w := &Writer{raw: raw}
	w.write = w.doWrite
	return w
}

// Write sends every message of msgs, one packet each, in order, waiting on
// the poller while the socket is full; it returns how many it sent, all of
// them unless the socket failed or was closed.
func (w *Writer) Write(msgs [][]byte) (int, error) {
	if len(msgs) == 0 {
		return 0, nil
	}
	w.v.reserve(len(msgs))
	for i, m := range msgs {
		w.v.point(i, m)
	}
	w.total, w.n, w.err = len(msgs), 0, nil
	err := w.raw.Write(w.write)
	n, werr := w.n, w.err
	w.v.forget(len(msgs))
	w.err = nil
	if werr != nil {
		err = werr
	}
	return n, err
}

// doWrite is the poller's callback: it reports false to wait for room.
func (w *Writer) doWrite(fd uintptr) bool {
	for w.n < w.total {
		got, e := w.v.call(unix.SYS_SENDMMSG, fd, w.n, w.total, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
		switch e {
		case 0:
			if got == 0 {
				return false // sent nothing without saying why: wait
			}
			w.n += got
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
