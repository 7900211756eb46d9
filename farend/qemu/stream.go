// Package qemu is the far end of a cable for QEMU's own network back ends
// (QEMU 7.2 and later), which need no libvdeplug: -netdev stream, frames
// over a Unix stream socket, each as a 4-byte big-endian length followed
// by the frame (the framing of -netdev socket too), and -netdev dgram,
// one frame per datagram between two Unix datagram sockets.
//
// A Stream either listens (QEMU's server=off connects to it, and connects
// again after it restarts: one connection at a time, the next accepted
// when one ends) or connects to QEMU's own server (server=on). A Dgram
// binds its own socket and sends to QEMU's. Socket files made here are
// created safely (never through a symlink, never over a file that is not
// a stale socket) and removed by Close.
//
// Frames the network cannot take (over its MTU, see SetMTU, or empty) and
// frames that cannot go out are dropped and counted (Stats), and the
// count is reported on the log writer at its first, tenth, hundredth...
// A peer that breaks the framing (a length over MaxFrame) loses its
// connection, never more.
package qemu

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/endpoint"
)

// MaxFrame is the longest frame a stream carries: QEMU's own bound on a
// packet of its stream and socket back ends (4096 + 65536 bytes). A
// length over it is bad framing.
const MaxFrame = 69632

// ErrFraming reports a stream that does not follow QEMU's framing.
var ErrFraming = errors.New("qemu stream: bad framing")

// Stats counts what an endpoint dropped, and the connections it took.
type Stats struct {
	Oversize  uint64 // frames over the MTU (or the buffer), dropped
	Empty     uint64 // frames of no bytes, dropped
	Strangers uint64 // datagrams a Dgram got before it connected to QEMU's socket (from anyone), dropped
	Unsent    uint64 // frames for QEMU dropped: no QEMU there, no room, a QEMU that does not read
	Conns     uint64 // connections accepted or made
}

// counters are an endpoint's Stats, and where it reports them.
type counters struct {
	name                                   string // the URL, to begin log lines
	log                                    io.Writer
	oversize, empty, strangers, unsent, cn atomic.Uint64
	mtu                                    atomic.Int64
}

// Stats returns the endpoint's counts so far.
func (c *counters) Stats() Stats {
	return Stats{c.oversize.Load(), c.empty.Load(), c.strangers.Load(), c.unsent.Load(), c.cn.Load()}
}

// SetMTU makes frames from QEMU longer than mtu bytes (the network's MTU,
// which cable.Run sets) be dropped and counted; 0, the default, bounds
// them by the reader's buffers alone.
func (c *counters) SetMTU(mtu int) { c.mtu.Store(int64(mtu)) }

// limit is the longest frame Read passes on into a buffer of n bytes.
func (c *counters) limit(n int) int {
	if m := int(c.mtu.Load()); m > 0 && m < n {
		return m
	}
	return n
}

// logf writes one line to the log.
func (c *counters) logf(format string, args ...any) {
	if c.log != nil {
		fmt.Fprintf(c.log, "%s: %s\n", c.name, fmt.Sprintf(format, args...))
	}
}

// count adds one to n and, at its 1st, 10th, 100th..., logs why with the
// count so far.
func (c *counters) count(n *atomic.Uint64, format string, args ...any) {
	if v, ok := tally(n); ok {
		c.logf("%s (%d dropped so far)", fmt.Sprintf(format, args...), v)
	}
}

// tally adds one to n and returns it, and whether it is a count to log:
// 1, 10, 100...
func tally(n *atomic.Uint64) (uint64, bool) {
	v := n.Add(1)
	for p := uint64(1); p <= v; p *= 10 {
		if p == v {
			return v, true
		}
	}
	return v, false
}

// Stream is QEMU's -netdev stream over a Unix stream socket.
type Stream struct {
	counters
	ln   *net.UnixListener // nil: connected to QEMU's server
	file *sockFile         // the listener's socket file

	mu     sync.Mutex
	cur    *net.UnixConn // the connection, guarded by mu
	closed bool          // guarded by mu

	// The reader's own (Read is called from one goroutine).
	r    *bufio.Reader
	live bool  // r reads cur
	rerr error // a connected stream's end, for good

	// The writer's, guarded by wmu.
	wmu      sync.Mutex
	wbuf     []byte        // the frames of a Write, framed
	ends     []int         // where each frame of wbuf ends
	wc       *net.UnixConn // the connection pend and stalled are about
	wraw     syscall.RawConn
	pend     []byte        // the rest of a frame cut short, to send before any other
	stalled  bool          // QEMU left frames unsent: do not wait until it takes a batch
	timedOut time.Time     // when a wait for QEMU to read last timed out
	stalls   atomic.Uint64 // how often QEMU stopped reading, for the log

	once sync.Once
}

var _ endpoint.Endpoint = (*Stream)(nil)

// Listen makes a Unix stream socket at path, an absolute path, with mode
// (0: 0777 less the umask), for QEMU's -netdev stream,server=off to
// connect to; a stale socket there is replaced. Lines about connections
// and drops go to log (nil: none). Close removes the socket file.
func Listen(path string, mode os.FileMode, log io.Writer) (*Stream, error) {
	ln, f, err := makeSock(path, mode, false, func(addr string) (*net.UnixListener, error) {
		return net.ListenUnix("unix", &net.UnixAddr{Name: addr, Net: "unix"})
	})
	if err != nil {
		return nil, err
	}
	ln.SetUnlinkOnClose(false)
	e := &Stream{ln: ln, file: f, r: bufio.NewReaderSize(nil, 1<<17)}
	e.name, e.log = "qemu-stream://"+path, log
	e.logf("listening for QEMU (-netdev stream,server=off,addr.type=unix,addr.path=%s)", path)
	return e, nil
}

// Connect connects to QEMU's -netdev stream,server=on socket at path. The
// stream ends when QEMU closes it.
func Connect(path string, log io.Writer) (*Stream, error) {
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("connect to QEMU at %s: %w", path, unwrapOp(err))
	}
	e := &Stream{cur: c, r: bufio.NewReaderSize(c, 1<<17), live: true}
	e.name, e.log = "qemu-stream+connect://"+path, log
	e.cn.Add(1)
	e.logf("connected to QEMU%s", peer(c))
	return e, nil
}

// peer describes the process at the other end of c.
func peer(c *net.UnixConn) string {
	rc, err := c.SyscallConn()
	if err != nil {
		return ""
	}
	var cred *unix.Ucred
	rc.Control(func(fd uintptr) {
		cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	if err != nil || cred == nil {
		return ""
	}
	return fmt.Sprintf(" (pid %d, uid %d)", cred.Pid, cred.Uid)
}

// Read implements endpoint.Endpoint.Read: one frame or more. A listening
// stream whose connection ends (QEMU quit, or broke the framing) waits for
// the next; after Close, Read fails with net.ErrClosed.
func (e *Stream) Read(bufs [][]byte, sizes []int) (int, error) {
	for {
		if e.rerr != nil {
			return 0, e.rerr
		}
		if !e.live {
			if err := e.accept(); err != nil {
				return 0, err
			}
		}
		n, err := e.readFrames(bufs, sizes)
		if err == nil {
			return n, nil
		}
		if e.ln == nil {
			e.rerr = err
			return n, err
		}
		e.hangUp(err)
		if n > 0 {
			return n, nil
		}
	}
}

// accept waits for QEMU's next connection.
func (e *Stream) accept() error {
	c, err := e.ln.AcceptUnix()
	if err != nil {
		e.mu.Lock()
		closed := e.closed
		e.mu.Unlock()
		if closed || errors.Is(err, net.ErrClosed) {
			return net.ErrClosed
		}
		return fmt.Errorf("%s: accept: %w", e.name, unwrapOp(err))
	}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		c.Close()
		return net.ErrClosed
	}
	e.cur = c
	e.mu.Unlock()
	e.r.Reset(c)
	e.live = true
	e.logf("QEMU connected%s (connection %d)", peer(c), e.cn.Add(1))
	return nil
}

// hangUp closes the connection that ended with err.
func (e *Stream) hangUp(err error) {
	e.mu.Lock()
	c, closed := e.cur, e.closed
	e.cur = nil
	e.mu.Unlock()
	if c != nil {
		c.Close()
	}
	e.live = false
	if closed {
		return
	}
	why := unwrapOp(err).Error()
	if errors.Is(err, io.EOF) {
		why = "QEMU closed it"
	}
	e.logf("connection ended: %s; waiting for the next", why)
}

// readFrames reads one frame, then more while they are whole in the
// buffer; frames it drops do not count as read.
func (e *Stream) readFrames(bufs [][]byte, sizes []int) (int, error) {
	n := 0
	for n < len(bufs) {
		if n > 0 && e.r.Buffered() < 4 {
			break
		}
		hdr, err := e.r.Peek(4)
		if err != nil {
			if n > 0 {
				break
			}
			if len(hdr) > 0 && (err == io.EOF || err == io.ErrUnexpectedEOF) {
				err = fmt.Errorf("%w: stream ended inside a length", ErrFraming)
			}
			return 0, err
		}
		size := binary.BigEndian.Uint32(hdr)
		if size > MaxFrame {
			return n, fmt.Errorf("%w: a length of %d bytes, over the %d of QEMU's largest frame", ErrFraming, size, MaxFrame)
		}
		if n > 0 && e.r.Buffered() < 4+int(size) {
			break // the next frame is not all here: do not wait for it
		}
		e.r.Discard(4)
		limit := e.limit(len(bufs[n]))
		switch {
		case size == 0:
			e.count(&e.empty, "an empty frame from QEMU")
			continue
		case int(size) > limit:
			if _, err := e.r.Discard(int(size)); err != nil {
				return n, insideFrame(err)
			}
			e.count(&e.oversize, "a frame of %d bytes from QEMU, over the network's MTU of %d", size, limit)
			continue
		}
		if _, err := io.ReadFull(e.r, bufs[n][:size]); err != nil {
			return n, insideFrame(err)
		}
		sizes[n] = int(size)
		n++
	}
	return n, nil
}

// insideFrame describes a read that failed in the middle of a frame.
func insideFrame(err error) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return fmt.Errorf("%w: stream ended inside a frame", ErrFraming)
	}
	return fmt.Errorf("qemu stream: inside a frame: %w", err)
}

// writeWait bounds how long a Stream's Write waits for QEMU to read;
// after a wait that timed out, Write waits again no sooner than
// writeRest later, so that a QEMU that reads in bursts holds the cable
// up for a fifth of the time at most.
const (
	writeWait = 250 * time.Millisecond
	writeRest = 4 * writeWait
)

// Write implements endpoint.Endpoint.Write: the frames go to QEMU in one
// write. With no connection (a listening stream that QEMU has not
// reached yet), they are dropped, as a cable with no one at its end
// drops them; a frame over MaxFrame is dropped too.
//
// A QEMU that does not read (stopped, or hostile) never holds the cable
// up for long, nor, through it, the network: Write waits at most
// writeWait for room in the connection, then drops the frames that did
// not fit, counted as Unsent, and keeps the connection. From then on it
// does not wait at all, dropping what does not fit at once, until QEMU
// takes a whole batch again, and it waits at most once a writeRest. A
// frame cut short is finished before any other is sent, so that QEMU's
// framing is never broken.
func (e *Stream) Write(msgs [][]byte) (int, error) {
	e.mu.Lock()
	c, closed := e.cur, e.closed
	e.mu.Unlock()
	switch {
	case closed:
		return 0, net.ErrClosed
	case c == nil:
		for range msgs {
			e.count(&e.unsent, "a frame for QEMU, which is not connected")
		}
		return 0, nil
	}
	e.wmu.Lock()
	defer e.wmu.Unlock()
	if c != e.wc {
		raw, err := c.SyscallConn()
		if err != nil {
			return 0, fmt.Errorf("%s: %w", e.name, err)
		}
		e.wc, e.wraw = c, raw // a new QEMU: nothing is owed to it, nothing known of it
		e.pend, e.stalled, e.timedOut = e.pend[:0], false, time.Time{}
	}
	b := append(e.wbuf[:0], e.pend...)
	ends := e.ends[:0]
	for _, m := range msgs {
		if len(m) > MaxFrame {
			e.count(&e.unsent, "a frame of %d bytes for QEMU, over the %d it takes", len(m), MaxFrame)
			continue
		}
		b = binary.BigEndian.AppendUint32(b, uint32(len(m)))
		b = append(b, m...)
		ends = append(ends, len(b))
	}
	e.wbuf, e.ends = b, ends
	wait := !e.stalled && time.Since(e.timedOut) >= writeRest
	n, err := e.send(b, wait)
	// Whole frames are sent, and one begun will be: it is finished first.
	sent, begun := 0, len(e.pend)
	for _, end := range ends {
		if n <= begun {
			break
		}
		sent++
		begun = end
	}
	e.pend = append(e.pend[:0], b[n:max(n, begun)]...)
	switch {
	case err != nil:
	case n < len(b):
		if wait {
			e.timedOut = time.Now()
		}
		if !e.stalled {
			if v, ok := tally(&e.stalls); ok {
				e.logf("QEMU does not read: frames for it are dropped until it takes them again (%d times so far)", v)
			}
		}
		e.stalled = true
	default:
		e.stalled = false
	}
	for range len(ends) - sent {
		if err != nil {
			e.count(&e.unsent, "a frame for QEMU, whose connection failed: %v", unwrapOp(err))
		} else {
			e.count(&e.unsent, "a frame for QEMU, which does not read")
		}
	}
	if err != nil {
		if e.ln != nil {
			return sent, nil // the reader sees the connection's end and waits for the next
		}
		return sent, fmt.Errorf("%s: %w", e.name, unwrapOp(err))
	}
	return sent, nil
}

// send writes as much of b as the connection takes: all of it, or what
// fits within writeWait if wait, at once if not. It returns how many bytes
// went, and an error only if the connection failed. The caller must hold
// wmu.
func (e *Stream) send(b []byte, wait bool) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	if wait {
		e.wc.SetWriteDeadline(time.Now().Add(writeWait))
	} else {
		e.wc.SetWriteDeadline(time.Time{})
	}
	n := 0
	var werr error
	err := e.wraw.Write(func(fd uintptr) bool {
		for n < len(b) {
			k, err := unix.Write(int(fd), b[n:])
			if k > 0 {
				n += k
			}
			switch {
			case err == unix.EINTR:
			case err == unix.EAGAIN:
				return !wait // wait for room, or not at all
			case err != nil:
				werr = err
				return true
			}
		}
		return true
	})
	if werr == nil && err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		werr = err
	}
	return n, werr
}

// BatchSize implements endpoint.Endpoint.BatchSize.
func (e *Stream) BatchSize() int { return 32 }

// Close implements endpoint.Endpoint.Close: it closes the connection and
// the listener and removes the socket file.
func (e *Stream) Close() error {
	e.once.Do(func() {
		e.mu.Lock()
		e.closed = true
		c := e.cur
		e.mu.Unlock()
		if c != nil {
			c.Close()
		}
		if e.ln != nil {
			e.ln.Close()
			e.file.remove()
		}
	})
	return nil
}
