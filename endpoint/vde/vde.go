// Package vde is the switch side of a VDE 2 port: one SOCK_DGRAM Unix
// socket connected to the client's, where one datagram is one frame. As in
// vde_switch, a frame the client's socket cannot take at once is dropped.
package vde

import (
	"errors"
	"net"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/endpoint"
)

// Endpoint is the switch's data socket of one VDE port.
type Endpoint struct {
	conn *net.UnixConn
	raw  interface {
		Write(func(fd uintptr) bool) error
	}
	once sync.Once
	err  error
}

var _ endpoint.Endpoint = (*Endpoint)(nil)

// New returns an endpoint on conn, a connected SOCK_DGRAM socket it owns.
func New(conn *net.UnixConn) (*Endpoint, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return nil, err
	}
	return &Endpoint{conn: conn, raw: raw}, nil
}

// Read implements endpoint.Endpoint.Read: one datagram per call.
func (e *Endpoint) Read(bufs [][]byte, sizes []int) (int, error) {
	for {
		n, _, flags, _, err := e.conn.ReadMsgUnix(bufs[0], nil)
		if err != nil {
			return 0, err
		}
		if n == 0 {
			continue // an empty datagram carries no frame
		}
		sizes[0] = n
		if flags&unix.MSG_TRUNC != 0 {
			sizes[0] = len(bufs[0]) + 1
		}
		return 1, nil
	}
}

// Write implements endpoint.Endpoint.Write. It never waits: a frame the
// client's socket has no room for is dropped (and not counted in n), as
// vde_switch does; an error means the client is gone.
func (e *Endpoint) Write(msgs [][]byte) (int, error) {
	sent := 0
	var werr error
	err := e.raw.Write(func(fd uintptr) bool {
		for _, m := range msgs {
			_, err := unix.Write(int(fd), m)
			switch {
			case err == nil:
				sent++
			case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.ENOBUFS):
			default:
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

// BatchSize implements endpoint.Endpoint.BatchSize.
func (e *Endpoint) BatchSize() int { return 32 }

// Close implements endpoint.Endpoint.Close.
func (e *Endpoint) Close() error {
	e.once.Do(func() { e.err = e.conn.Close() })
	return e.err
}
