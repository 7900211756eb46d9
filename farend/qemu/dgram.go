package qemu

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/endpoint"
)

// redialEvery is how often a Dgram connects its socket to QEMU's path
// again: within it, a QEMU that came or restarted is heard.
const redialEvery = 250 * time.Millisecond

// Dgram is QEMU's -netdev dgram over Unix datagram sockets: each frame is
// one datagram, sent to QEMU's socket (its local.path) from this one
// (its remote.path).
//
// Only datagrams from QEMU's socket are taken, and the kernel is the
// judge: the socket is connected to QEMU's, and a connected Unix datagram
// socket takes datagrams from its peer alone (any other sender's are
// refused, EPERM, and never queued). No name is compared: a name can be
// spelt otherwise, swapped (a directory turned into a symlink for a
// moment) or made in a private mount namespace. QEMU may come and go: the
// reader connects again every redialEvery, so a socket QEMU binds anew at
// its path is reached; until the first connect, datagrams, whose sender
// nothing proves, are dropped and counted (Stats.Strangers). Frames for a
// QEMU that is not there are dropped and counted.
type Dgram struct {
	counters
	c      *net.UnixConn
	raw    syscall.RawConn
	file   *sockFile
	remote string
	to     *unix.SockaddrUnix
	once   sync.Once

	// The reader's own (Read is called from one goroutine), and the
	// constructor's before it. Only the reader connects the socket, and
	// it is never disconnected: Write sends to remote by name, which does
	// not touch the peer, where a send on a connected socket whose peer
	// has died would disconnect it and let anyone send to it.
	connected bool      // connected once: datagrams since are QEMU's
	down      error     // why the last connect failed; nil if it did not
	due       time.Time // when to connect again
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
	e.redial(time.Now())
	return e, nil
}

// Read implements endpoint.Endpoint.Read: one frame per call. Datagrams
// that came before the socket could be connected to QEMU's, empty ones
// and ones over the MTU are dropped and counted; after Close, Read fails
// with net.ErrClosed. Read connects to QEMU's socket again every
// redialEvery.
func (e *Dgram) Read(bufs [][]byte, sizes []int) (int, error) {
	for {
		if now := time.Now(); !now.Before(e.due) {
			if err := e.redial(now); err != nil {
				return 0, err
			}
		}
		n, _, flags, _, err := e.c.ReadMsgUnix(bufs[0], nil)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				continue // time to connect again
			}
			if errors.Is(err, net.ErrClosed) {
				return 0, net.ErrClosed
			}
			return 0, fmt.Errorf("%s: %w", e.name, unwrapOp(err))
		}
		limit := e.limit(len(bufs[0]))
		switch {
		case !e.connected:
			e.count(&e.strangers, early, e.remote)
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

// redial connects the socket to QEMU's at remote (again: to the same
// socket it changes nothing; to a new one, a restarted QEMU's, the
// datagrams of the old one still queued are dropped by the kernel), and
// sets when to do it next. A connect that fails leaves the socket as it
// was: connected to the old socket, whose QEMU is gone, or not yet. The
// first connect drops the datagrams queued before it, whose senders are
// not known. It fails only if the socket is closed.
func (e *Dgram) redial(now time.Time) error {
	var cerr error
	if err := e.raw.Control(func(fd uintptr) {
		cerr = unix.Connect(int(fd), e.to)
	}); err != nil {
		return net.ErrClosed
	}
	switch {
	case cerr == nil && !e.connected:
		e.connected = true
		e.drain()
		e.logf("connected to QEMU's socket %s: datagrams from any other are refused", e.remote)
	case cerr == nil && e.down != nil:
		e.logf("connected to QEMU's socket %s again", e.remote)
	case cerr != nil && !errors.Is(cerr, e.down):
		e.logf("QEMU's socket %s: %v; trying again every %v", e.remote, cerr, redialEvery)
	}
	e.down = cerr
	e.due = now.Add(redialEvery)
	e.c.SetReadDeadline(e.due)
	return nil
}

// early is the log line of a datagram dropped because it came before the
// socket was connected to QEMU's.
const early = "a datagram that came before the socket was connected to QEMU's %s, from no socket known"

// drain drops the datagrams queued before the first connect, counting
// them as strangers': anyone could send them.
func (e *Dgram) drain() {
	var b [1]byte
	e.raw.Read(func(fd uintptr) bool {
		for {
			_, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_DONTWAIT|unix.MSG_TRUNC)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return true
			}
			e.count(&e.strangers, early, e.remote)
		}
	})
}

// Write implements endpoint.Endpoint.Write: each frame is a datagram to
// QEMU's socket, sent at once or dropped (no QEMU there, or no room in
// its socket), as a VDE port drops frames.
func (e *Dgram) Write(msgs [][]byte) (int, error) {
	sent := 0
	for _, m := range msgs {
		var serr error
		if err := e.raw.Write(func(fd uintptr) bool {
			// By name, never on the connection: see Dgram.connected.
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
