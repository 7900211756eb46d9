// Package sockio reads batches of datagrams (or SOCK_SEQPACKET packets) from
// a socket in one wake-up of Go's poller.
package sockio

import (
	"errors"
	"io"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ReadBatch waits until raw's socket is readable, then reads into bufs as
// many messages as are queued, up to len(bufs), without waiting again.
// sizes[i] is message i's length, len(bufs[i])+1 if it was truncated. A
// zero-length message is skipped when skipEmpty is set; otherwise it ends
// the batch with io.EOF (a SOCK_SEQPACKET peer's end) if it is the first.
func ReadBatch(raw syscall.RawConn, bufs [][]byte, sizes []int, skipEmpty bool) (int, error) {
	n := 0
	var rerr error
	err := raw.Read(func(fd uintptr) bool {
		for n < len(bufs) {
			m, err := recv(int(fd), bufs[n])
			if err != nil {
				if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
					return n > 0 // nothing yet: wait; else deliver what we have
				}
				rerr = err
				return true
			}
			if m == 0 && !skipEmpty {
				if n == 0 {
					rerr = io.EOF
				}
				return true
			}
			if m == 0 {
				continue
			}
			sizes[n] = min(m, len(bufs[n])+1) // over len: truncated
			n++
		}
		return true
	})
	if err != nil && n == 0 {
		return 0, err
	}
	if n > 0 {
		return n, nil
	}
	return 0, rerr
}

// recv reads one message without waiting and returns its full length, even
// when b was too short (MSG_TRUNC), without building a sender address.
func recv(fd int, b []byte) (int, error) {
	var p unsafe.Pointer
	if len(b) > 0 {
		p = unsafe.Pointer(&b[0])
	}
	n, _, e := unix.Syscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(p), uintptr(len(b)),
		unix.MSG_DONTWAIT|unix.MSG_TRUNC, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// WriteEach writes each message with one write(2), never waiting: a message
// the descriptor refuses is dropped, unless gone(err) says the descriptor
// itself is gone, which ends the batch with that error. It returns how many
// messages were written.
func WriteEach(raw syscall.RawConn, msgs [][]byte, gone func(error) bool) (int, error) {
	sent := 0
	var werr error
	err := raw.Write(func(fd uintptr) bool {
		for _, m := range msgs {
			_, err := unix.Write(int(fd), m)
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

// WriteOne writes m with one write(2), never waiting, and reports whether
// it was written (else it was dropped).
func WriteOne(raw syscall.RawConn, m []byte) bool {
	sent := false
	raw.Write(func(fd uintptr) bool {
		_, err := unix.Write(int(fd), m)
		sent = err == nil
		return true
	})
	return sent
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
