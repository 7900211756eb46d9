// Package vde is the switch side of a VDE 2 port: one SOCK_DGRAM Unix
// socket connected to the client's, where one datagram is one frame. As in
// vde_switch, a frame the client's socket cannot take at once is dropped.
package vde

import (
	"errors"
	"net"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/endpoint"
	"github.com/ipn-project/ipn/internal/sockio"
)

// Endpoint is the switch's data socket of one VDE port.
type Endpoint struct {
	sockio.Pauser // endpoint.Pauser, by the socket's deadlines
	conn          *net.UnixConn
	rawc          syscall.RawConn
	one           *sockio.OneWriter // for WriteDirect
	oob           []byte            // the credentials each datagram carries, or nil
	from          *unix.Ucred       // those credentials, or nil
	once          sync.Once
	err           error
}

var (
	_ endpoint.Endpoint     = (*Endpoint)(nil)
	_ endpoint.DirectWriter = (*Endpoint)(nil)
	_ endpoint.Pauser       = (*Endpoint)(nil)
)

// New returns an endpoint on conn, a connected SOCK_DGRAM socket it owns.
// If sender is not nil, every datagram carries those credentials
// (SCM_CREDENTIALS, which needs root to set for another user): a receiver
// that asks (SO_PASSCRED) then sees the user the port serves, not the
// process that writes, whoever connected the socket.
func New(conn *net.UnixConn, sender *unix.Ucred) (*Endpoint, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return nil, err
	}
	e := &Endpoint{Pauser: sockio.NewPauser(conn), conn: conn, rawc: raw, one: sockio.NewOneWriter(raw)}
	if sender != nil {
		e.oob, e.from = unix.UnixCredentials(sender), sender
		e.one.SetControl(e.oob)
	}
	return e, nil
}

// Read implements endpoint.Endpoint.Read: the datagrams queued, at least
// one, a frame each (empty ones carry none and are skipped).
func (e *Endpoint) Read(bufs [][]byte, sizes []int) (int, error) {
	return sockio.ReadBatch(e.rawc, bufs, sizes, true)
}

// Write implements endpoint.Endpoint.Write. It never waits: a frame the
// client's socket has no room for is dropped (and not counted in n), as
// vde_switch does; an error means the client is gone.
func (e *Endpoint) Write(msgs [][]byte) (int, error) {
	return sockio.WriteEachWith(e.rawc, msgs, e.oob, func(err error) bool {
		return !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.ENOBUFS)
	})
}

// WriteDirect implements endpoint.DirectWriter: one datagram, or a drop.
func (e *Endpoint) WriteDirect(m []byte) bool { return e.one.Write(m) }

// BatchSize implements endpoint.Endpoint.BatchSize.
func (e *Endpoint) BatchSize() int { return 32 }

// Close implements endpoint.Endpoint.Close.
func (e *Endpoint) Close() error {
	e.once.Do(func() { e.err = e.conn.Close() })
	return e.err
}

// Dup returns a copy of the data socket's descriptor and the credentials
// its datagrams carry (nil: the daemon's own), to make the endpoint again
// with New in another process.
func (e *Endpoint) Dup() (int, *unix.Ucred, error) {
	fd, err := sockio.Dup(e.rawc)
	return fd, e.from, err
}
