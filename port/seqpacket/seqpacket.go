// Package seqpacket is the endpoint of a member that joined through the
// daemon: one SOCK_SEQPACKET Unix socket where one packet is one message,
// or, on a network whose MTU is over wire.FragMTU, one fragment of one.
package seqpacket

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/endpoint"
	"github.com/ipn-project/ipn/internal/sockio"
	"github.com/ipn-project/ipn/internal/wire"
)

// FragTimeout bounds the wait for a message's next fragment: a node that
// starts a message and sends no more of it for that long loses it (it is
// dropped and counted in the port's errors), and whatever it held of the
// network's budget for big messages is free again.
var FragTimeout = 2 * time.Second

// Endpoint carries a port's messages over a SOCK_SEQPACKET socket.
type Endpoint struct {
	pause pauser // endpoint.Pauser, by the socket's deadlines
	conn  *net.UnixConn
	raw   syscall.RawConn
	r     *sockio.Reader    // recvmmsg
	w     *sockio.Writer    // sendmmsg
	one   *sockio.OneWriter // Lossy's inline writes
	frag  *frag             // nil unless the network's messages go in fragments
	oob   func([]byte) error
	once  sync.Once
	err   error
}

// frag is an Endpoint's side of a socket that carries fragments.
type frag struct {
	w  *sockio.FragWriter
	pr sockio.PacketReader // the reader's
	j  wire.Joiner         // the reader's: what the node sends
}

var (
	_ endpoint.Endpoint  = (*Endpoint)(nil)
	_ endpoint.OOBWriter = (*Endpoint)(nil)
	_ endpoint.Pauser    = (*Endpoint)(nil)
	_ endpoint.BigReader = (*Endpoint)(nil)
)

// New returns an endpoint on conn, which it owns, for a network whose MTU
// is at most wire.FragMTU: one packet, one message. oob, if not nil,
// delivers out-of-band messages (the daemon sends them on the control
// connection).
func New(conn *net.UnixConn, oob func([]byte) error) *Endpoint {
	raw, _ := conn.SyscallConn()
	return &Endpoint{pause: pauser{conn: conn}, conn: conn, raw: raw, r: sockio.NewReader(raw, false), w: sockio.NewWriter(raw),
		one: sockio.NewOneWriter(raw), oob: oob}
}

// NewFor is New for a network of that MTU: over wire.FragMTU, every packet
// is a fragment (wire's frag.go), each way; the fragments it writes are as
// long as conn's send buffer lets (sockio.SizeFor it first).
func NewFor(conn *net.UnixConn, oob func([]byte) error, mtu int) *Endpoint {
	e := New(conn, oob)
	if wire.Fragmented(mtu) {
		e.frag = &frag{w: sockio.NewFragWriter(e.raw, wire.FragSize(sockio.SendLimit(e.raw))), j: wire.Joiner{MTU: mtu}}
	}
	return e
}

// Fragments reports whether the endpoint's packets are fragments.
func (e *Endpoint) Fragments() bool { return e.frag != nil }

// Lossy is an Endpoint for a lossy network: the engine writes to it inline
// (endpoint.DirectWriter), the node's socket buffer is its queue, and a
// full one drops the message, as a VDE port does.
type Lossy struct{ *Endpoint }

var _ endpoint.DirectWriter = Lossy{}

// WriteDirect implements endpoint.DirectWriter. On a socket of fragments
// it drops a message while another is being written (and one longer than
// a fragment, which the engine never writes inline).
func (l Lossy) WriteDirect(m []byte) bool {
	if l.frag != nil {
		return l.frag.w.WriteOne(m)
	}
	return l.one.Write(m)
}

// Read implements endpoint.Endpoint.Read: the messages queued, at least
// one. An empty packet is skipped; io.EOF means the node closed its socket
// or shut down its sending side.
func (e *Endpoint) Read(bufs [][]byte, sizes []int) (int, error) {
	if e.frag != nil {
		return e.readFrags(bufs, sizes, nil)
	}
	for {
		n, err := e.r.Read(bufs, sizes)
		if errors.Is(err, io.EOF) {
			// SOCK_SEQPACKET reads 0 bytes both at the end and for an
			// empty packet; only a hung-up peer is the end. (Empty
			// packets among others never get here: Read drops them.)
			if e.hungUp() {
				return 0, io.EOF
			}
			continue
		}
		return n, err
	}
}

// ReadBig implements endpoint.BigReader: it reads one packet at a time,
// its length peeked first (MSG_PEEK|MSG_TRUNC), two system calls a
// message, so that a long one goes whole into the buffer grow makes.
func (e *Endpoint) ReadBig(bufs [][]byte, sizes []int, grow func(i, size int) ([]byte, bool)) (int, error) {
	if e.frag != nil {
		return e.readFrags(bufs, sizes, grow)
	}
	raw := e.raw
	for {
		n, empty, stopped := 0, false, false
		var rerr error
		err := raw.Read(func(fd uintptr) bool {
			for n < len(bufs) {
				l, _, err := unix.Recvfrom(int(fd), nil, unix.MSG_PEEK|unix.MSG_TRUNC|unix.MSG_DONTWAIT)
				if err == nil && l == 0 {
					// An empty packet, or the end: take it.
					_, _, err = unix.Recvfrom(int(fd), nil, unix.MSG_DONTWAIT)
					if err == nil {
						empty = n == 0
						return true
					}
				}
				if err != nil {
					if sockio.Again(err) {
						return n > 0
					}
					if n == 0 {
						rerr = os.NewSyscallError("recvfrom", err)
					}
					return true
				}
				b, big := bufs[n], false
				if l > len(b) {
					var drop bool
					if b, drop = grow(n, l); b == nil && !drop {
						stopped = n == 0
						return true // left in the socket for a later read
					}
					if big = true; b == nil {
						// Refused: consume and drop it.
						if _, _, err := unix.Recvfrom(int(fd), nil, unix.MSG_TRUNC|unix.MSG_DONTWAIT); err != nil {
							return true
						}
						continue
					}
				}
				got, _, err := unix.Recvfrom(int(fd), b[:l], unix.MSG_DONTWAIT)
				if err != nil {
					if n == 0 {
						rerr = os.NewSyscallError("recvfrom", err)
					}
					return true
				}
				sizes[n] = got
				n++
				if big {
					return true // at most one big message a batch
				}
			}
			return true
		})
		if n > 0 {
			return n, nil
		}
		if stopped {
			return 0, endpoint.ErrPaused
		}
		if err != nil {
			return 0, err
		}
		if rerr != nil {
			return 0, rerr
		}
		if empty && e.hungUp() {
			return 0, io.EOF
		}
	}
}

// hungUp reports whether the peer will send no more.
func (e *Endpoint) hungUp() bool {
	return wire.Poll(e.conn, unix.POLLRDHUP)&(unix.POLLRDHUP|unix.POLLHUP|unix.POLLERR) != 0
}

// Write implements endpoint.Endpoint.Write: one sendmmsg(2) per wake-up,
// waiting while the node's socket is full (it drops nothing).
func (e *Endpoint) Write(msgs [][]byte) (int, error) {
	if e.frag != nil {
		return e.frag.w.Write(msgs)
	}
	return e.w.Write(msgs)
}

// WriteOOB implements endpoint.OOBWriter.
func (e *Endpoint) WriteOOB(m []byte) error {
	if e.oob == nil {
		return nil
	}
	return e.oob(m)
}

// BatchSize implements endpoint.Endpoint.BatchSize.
func (e *Endpoint) BatchSize() int { return 16 }

// Close implements endpoint.Endpoint.Close.
func (e *Endpoint) Close() error {
	e.once.Do(func() { e.err = e.conn.Close() })
	return e.err
}

// Conn returns the endpoint's socket.
func (e *Endpoint) Conn() *net.UnixConn { return e.conn }
