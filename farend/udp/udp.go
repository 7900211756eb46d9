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
//
// Frames move in batches, many per system call, with UDP segmentation and
// receive coalescing where the kernel has them (see Conn, which the vxlan
// and vxvde far ends use too). For segmentation a datagram must fit the
// route's MTU unfragmented: 1514-byte frames need an MTU of 1542 (1550 for
// VXLAN); with less they still go, one per message, fragmented.
package udp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/ipn-project/ipn/endpoint"
)

// BatchSize is the most datagrams one Read returns or one Write sends
// with one system call without offloads; with them a system call carries
// runs of up to 64 datagrams (see Conn).
const BatchSize = 64

// recvBatch is how many messages (datagrams or coalesced runs of them) a
// Read reads with one system call.
const recvBatch = 16

// Endpoint is a UDP far end. Read and Write may run concurrently, each from
// one goroutine.
type Endpoint struct {
	conn *Conn
	rb   *RecvBatch // Read's
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
	return &Endpoint{conn: NewConn(c, v6, BatchSize), rb: NewRecvBatch(recvBatch)}
}

// Stats returns the counts of the endpoint's socket.
func (e *Endpoint) Stats() Stats { return e.conn.Stats() }

// LocalAddr returns the address the endpoint is bound to.
func (e *Endpoint) LocalAddr() *net.UDPAddr { return e.conn.UDPConn().LocalAddr().(*net.UDPAddr) }

// Read implements endpoint.Endpoint.Read: it blocks for at least one
// datagram and returns those already received, up to len(bufs).
func (e *Endpoint) Read(bufs [][]byte, sizes []int) (int, error) {
	k := 0
	for k < len(bufs) {
		d, ok := e.rb.Next()
		if !ok {
			if k > 0 {
				return k, nil
			}
			if err := e.conn.Recv(e.rb); err != nil {
				if errors.Is(err, net.ErrClosed) {
					return 0, err
				}
				return 0, fmt.Errorf("udp: %w", err)
			}
			continue
		}
		sizes[k] = len(d.B)
		if copy(bufs[k], d.B) < len(d.B) || d.Trunc {
			sizes[k] = len(bufs[k]) + 1
		}
		k++
	}
	return k, nil
}

// Write implements endpoint.Endpoint.Write. A datagram the network does
// not take (see the package doc) is lost, not an error; Write fails only
// once the endpoint is closed.
func (e *Endpoint) Write(msgs [][]byte) (int, error) {
	n, err := e.conn.Write(nil, msgs, nil)
	if err != nil && !errors.Is(err, net.ErrClosed) {
		err = fmt.Errorf("udp: %w", err)
	}
	return n, err
}

// BatchSize implements endpoint.Endpoint.BatchSize.
func (e *Endpoint) BatchSize() int { return BatchSize }

// Close implements endpoint.Endpoint.Close: it closes the socket, which
// ends a Read or Write in progress with net.ErrClosed.
func (e *Endpoint) Close() error { return e.conn.Close() }
