package qemu

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/endpoint"
)

// Dgram is QEMU's -netdev dgram over Unix datagram sockets: each frame is
// one datagram, sent to QEMU's socket (its local.path) from this one
// (its remote.path). Only datagrams from QEMU's socket are taken; QEMU may
// come and go, and frames for it while it is away are dropped.
type Dgram struct {
	counters
	c      *net.UnixConn
	raw    syscall.RawConn
	file   *sockFile
	remote string
	to     *unix.SockaddrUnix
	alias  string // another spelling of remote that datagrams came from; the reader's own
	once   sync.Once
}

var _ endpoint.Endpoint = (*Dgram)(nil)

// ListenDgram makes a Unix datagram socket at path, an absolute path, with
// mode (0: 0777 less the umask), that exchanges frames with QEMU's socket
// at remote. Lines about drops go to log (nil: none). Close removes the
// socket file.
func ListenDgram(path, remote string, mode os.FileMode, log io.Writer) (*Dgram, error) {
	if len(remote) >= len(unix.RawSockaddrUnix{}.Path) {
		return nil, fmt.Errorf("remote %q: a socket path has at most %d bytes: %w", remote, len(unix.RawSockaddrUnix{}.Path)-1, syscall.EINVAL)
	}
	c, f, err := makeSock(path, mode, true, func(addr string) (*net.UnixConn, error) {
		return net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	})
	if err != nil {
		return nil, err
	}
	raw, err := c.SyscallConn()
	if err != nil {
		c.Close()
		f.remove()
		return nil, err
	}
	e := &Dgram{c: c, raw: raw, file: f, remote: remote, to: &unix.SockaddrUnix{Name: remote}}
	e.name, e.log = "qemu-dgram://"+path, log
	e.logf("exchanging frames with QEMU (-netdev dgram,local.type=unix,local.path=%s,remote.type=unix,remote.path=%s)", remote, path)
	return e, nil
}

// Read implements endpoint.Endpoint.Read: one frame per call. Datagrams
// from other sockets, empty ones and ones over the MTU are dropped and
// counted; after Close, Read fails with net.ErrClosed.
func (e *Dgram) Read(bufs [][]byte, sizes []int) (int, error) {
	for {
		n, _, flags, from, err := e.c.ReadMsgUnix(bufs[0], nil)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return 0, net.ErrClosed
			}
			return 0, fmt.Errorf("%s: %w", e.name, unwrapOp(err))
		}
		limit := e.limit(len(bufs[0]))
		switch {
		case !e.fromQEMU(from):
			name := "an unnamed socket"
			if from != nil && from.Name != "" {
				name = fmt.Sprintf("%q", from.Name)
			}
			e.count(&e.strangers, "a datagram from %s, not QEMU's %s", name, e.remote)
		case flags&unix.MSG_TRUNC != 0:
			e.count(&e.oversize, "a frame from QEMU over %d bytes, over the network's MTU of %d", len(bufs[0]), limit)
		case n > limit:
			e.count(&e.oversize, "a frame of %d bytes from QEMU, over the network's MTU of %d", n, limit)
		case n == 0:
			e.count(&e.empty, "an empty frame from QEMU")
		default:
			sizes[0] = n
			return 1, nil
		}
	}
}

// fromQEMU reports whether a datagram from addr came from QEMU's socket:
// from the path remote names, spelt so or otherwise (the same file).
func (e *Dgram) fromQEMU(addr *net.UnixAddr) bool {
	if addr == nil || addr.Name == "" {
		return false
	}
	if addr.Name == e.remote || addr.Name == e.alias && e.alias != "" {
		return true
	}
	var a, b unix.Stat_t
	if unix.Lstat(addr.Name, &a) != nil || unix.Lstat(e.remote, &b) != nil || a.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return false
	}
	if a.Dev == b.Dev && a.Ino == b.Ino {
		e.alias = addr.Name
		return true
	}
	return false
}

// Write implements endpoint.Endpoint.Write: each frame is a datagram to
// QEMU's socket, sent at once or dropped (no QEMU there, or no room in
// its socket), as a VDE port drops frames.
func (e *Dgram) Write(msgs [][]byte) (int, error) {
	sent := 0
	for _, m := range msgs {
		var serr error
		if err := e.raw.Write(func(fd uintptr) bool {
			serr = unix.Sendto(int(fd), m, unix.MSG_DONTWAIT, e.to)
			return true
		}); err != nil {
			return sent, net.ErrClosed
		}
		if serr != nil {
			e.count(&e.unsent, "a frame for QEMU at %s: %v", e.remote, serr)
			continue
		}
		sent++
	}
	return sent, nil
}

// BatchSize implements endpoint.Endpoint.BatchSize.
func (e *Dgram) BatchSize() int { return 32 }

// Close implements endpoint.Endpoint.Close: it closes the socket and
// removes its file.
func (e *Dgram) Close() error {
	e.once.Do(func() {
		e.c.Close()
		e.file.remove()
	})
	return nil
}
