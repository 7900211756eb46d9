// Package udp is a cable far end that carries Ethernet frames as UDP
// datagrams, one frame per datagram with no header, between two fixed
// addresses: a point-to-point link between two hosts.
//
// The URL is udp://LOCAL/REMOTE, where LOCAL is PORT, :PORT or ADDR:PORT
// (the address to bind; no address means any) and REMOTE is ADDR:PORT or
// HOST:PORT (IPv6 in brackets). Frames go to REMOTE, and only datagrams
// from REMOTE (address and port) are accepted: the socket is connected, so
// the kernel drops the rest. That is the link's only check: it has no
// authentication and no encryption, and a datagram with REMOTE as its
// spoofed source passes; run it on a trusted network or inside an
// encrypted tunnel (WireGuard, IPsec). The other end is the mirror image,
// another ipn plug or vdeplug4's udp:// plug:
//
//	host A: ipn plug /tmp/net udp://5000/192.0.2.2:5000
//	host B: ipn plug /tmp/net udp://5000/192.0.2.1:5000
//
// Like a wire, the link loses frames rather than failing: a send that finds
// no route or a peer not yet listening drops the frame, and the endpoint
// goes on until it is closed.
package udp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/endpoint"
)

// BatchSize is the number of datagrams one Read or Write moves with one
// system call.
const BatchSize = 16

// Endpoint is a UDP far end. Read and Write may run concurrently, each from
// one goroutine.
type Endpoint struct {
	conn   *net.UDPConn
	bc     BatchConn
	closed atomic.Bool
	once   sync.Once
	rms    []ipv4.Message // Read's
	wms    []ipv4.Message // Write's
}

var _ endpoint.Endpoint = (*Endpoint)(nil)

// Open opens the far end of spec "LOCAL/REMOTE" (see the package doc).
func Open(ctx context.Context, spec string) (endpoint.Endpoint, error) {
	local, remote, ok := strings.Cut(spec, "/")
	if !ok || remote == "" {
		return nil, fmt.Errorf("udp: want udp://LOCAL:PORT/REMOTE:PORT, got %q", spec)
	}
	rhost, rport, err := SplitHostPort(remote, 0)
	if err != nil {
		return nil, fmt.Errorf("udp: remote: %w", err)
	}
	if rport == 0 || rhost == "" {
		return nil, fmt.Errorf("udp: remote %q: want ADDR:PORT", remote)
	}
	raddr, err := Resolve(ctx, rhost)
	if err != nil {
		return nil, fmt.Errorf("udp: remote: %w", err)
	}
	var (
		lhost string
		lport int
	)
	if p, err := ParsePort(local); err == nil {
		lport = p // just a port
	} else if lhost, lport, err = SplitHostPort(local, 0); err != nil || lport == 0 {
		return nil, fmt.Errorf("udp: local %q: want PORT or ADDR:PORT", local)
	}
	laddr := netip.IPv4Unspecified()
	if raddr.Is6() {
		laddr = netip.IPv6Unspecified()
	}
	if lhost != "" {
		if laddr, err = Resolve(ctx, lhost); err != nil {
			return nil, fmt.Errorf("udp: local: %w", err)
		}
	}
	d := net.Dialer{LocalAddr: net.UDPAddrFromAddrPort(netip.AddrPortFrom(laddr, uint16(lport)))}
	c, err := d.DialContext(ctx, Network(raddr), netip.AddrPortFrom(raddr, uint16(rport)).String())
	if err != nil {
		return nil, fmt.Errorf("udp: %w", err)
	}
	return New(c.(*net.UDPConn)), nil
}

// New returns an endpoint on the connected socket c; Close closes c.
func New(c *net.UDPConn) *Endpoint {
	v6 := false
	if ra, ok := c.RemoteAddr().(*net.UDPAddr); ok {
		v6 = ra.AddrPort().Addr().Unmap().Is6()
	}
	e := &Endpoint{
		conn: c,
		bc:   NewBatchConn(c, v6),
		rms:  make([]ipv4.Message, BatchSize),
		wms:  make([]ipv4.Message, BatchSize),
	}
	for i := range e.rms {
		e.rms[i].Buffers = make([][]byte, 1)
		e.wms[i].Buffers = make([][]byte, 1)
	}
	return e
}

// LocalAddr returns the address the endpoint is bound to.
func (e *Endpoint) LocalAddr() *net.UDPAddr { return e.conn.LocalAddr().(*net.UDPAddr) }

// Read implements endpoint.Endpoint.Read: it blocks for at least one
// datagram and returns those already queued, up to len(bufs) and
// BatchSize.
func (e *Endpoint) Read(bufs [][]byte, sizes []int) (int, error) {
	ms := e.rms[:min(len(bufs), len(e.rms))]
	for i := range ms {
		ms[i].Buffers[0] = bufs[i]
	}
	defer func() {
		for i := range ms {
			ms[i].Buffers[0], ms[i].Addr = nil, nil
		}
	}()
	n, err := ReadBatch(e.bc, ms, &e.closed)
	if err != nil {
		if errors.Is(err, net.ErrClosed) {
			return 0, err
		}
		return 0, fmt.Errorf("udp: %w", err)
	}
	for i := 0; i < n; i++ {
		sizes[i] = ms[i].N
		if ms[i].Flags&unix.MSG_TRUNC != 0 {
			sizes[i] = len(bufs[i]) + 1
		}
	}
	return n, nil
}

// Write implements endpoint.Endpoint.Write. A datagram the network does
// not take (see the package doc) is lost, not an error; Write fails only
// once the endpoint is closed.
func (e *Endpoint) Write(msgs [][]byte) (int, error) {
	done := 0
	defer func() {
		for i := range e.wms {
			e.wms[i].Buffers[0] = nil
		}
	}()
	for done < len(msgs) {
		ms := e.wms[:min(len(msgs)-done, len(e.wms))]
		for i := range ms {
			ms[i].Buffers[0] = msgs[done+i]
		}
		sent, err := WriteAll(e.bc, ms)
		done += sent
		if err != nil {
			if e.closed.Load() || errors.Is(err, net.ErrClosed) {
				return done, net.ErrClosed
			}
			return done, fmt.Errorf("udp: %w", err)
		}
	}
	return done, nil
}

// WriteAll sends ms with as few system calls as it can, dropping the
// datagrams that fail with a Transient error. It returns how many it sent
// or dropped and the first other error.
func WriteAll(bc BatchConn, ms []ipv4.Message) (int, error) {
	done := 0
	for done < len(ms) {
		n, err := bc.WriteBatch(ms[done:], 0)
		done += max(n, 0) // -1 on error
		if err != nil {
			if !Transient(err) {
				return done, err
			}
			done++ // the datagram that failed is lost
		} else if n == 0 {
			return done, errors.New("sendmmsg sent nothing")
		}
	}
	return done, nil
}

// BatchSize implements endpoint.Endpoint.BatchSize.
func (e *Endpoint) BatchSize() int { return BatchSize }

// Close implements endpoint.Endpoint.Close: it closes the socket, which
// ends a Read or Write in progress with net.ErrClosed.
func (e *Endpoint) Close() error {
	var err error
	e.once.Do(func() {
		e.closed.Store(true)
		err = e.conn.Close()
	})
	return err
}
