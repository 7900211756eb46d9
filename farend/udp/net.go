package udp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// This file holds the UDP plumbing that the far ends built on UDP (this
// package, vxlan, vxvde) share.

// BatchConn reads and writes batches of datagrams with one system call
// (recvmmsg, sendmmsg): an *ipv4.PacketConn or *ipv6.PacketConn.
type BatchConn interface {
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
}

// NewBatchConn returns c's batch reader and writer, for IPv6 if v6.
func NewBatchConn(c *net.UDPConn, v6 bool) BatchConn {
	if v6 {
		return ipv6.NewPacketConn(c)
	}
	return ipv4.NewPacketConn(c)
}

// multicastConn is what ipv4.PacketConn and ipv6.PacketConn share for
// multicast.
type multicastConn interface {
	SetMulticastLoopback(on bool) error
	SetMulticastInterface(ifi *net.Interface) error
	JoinGroup(ifi *net.Interface, group net.Addr) error
}

// SetMulticast sets how c sends to multicast groups: ttl hops, looped back
// to this host or not, out of ifi (nil: the system's choice).
func SetMulticast(c *net.UDPConn, v6 bool, ttl int, loopback bool, ifi *net.Interface) error {
	var m multicastConn
	var err error
	if v6 {
		p := ipv6.NewPacketConn(c)
		m, err = p, p.SetMulticastHopLimit(ttl)
	} else {
		p := ipv4.NewPacketConn(c)
		m, err = p, p.SetMulticastTTL(ttl)
	}
	if err != nil {
		return err
	}
	if err := m.SetMulticastLoopback(loopback); err != nil {
		return err
	}
	if ifi != nil {
		return m.SetMulticastInterface(ifi)
	}
	return nil
}

// JoinGroup makes c receive what is sent to group, on ifi (nil: the
// system's choice).
func JoinGroup(c *net.UDPConn, v6 bool, ifi *net.Interface, group netip.Addr) error {
	addr := &net.UDPAddr{IP: group.AsSlice()}
	if v6 {
		return ipv6.NewPacketConn(c).JoinGroup(ifi, addr)
	}
	return ipv4.NewPacketConn(c).JoinGroup(ifi, addr)
}

// SplitHostPort splits "HOST", "HOST:PORT", "[V6]", "[V6]:PORT", ":PORT"
// or a bare IPv6 address; the port is defPort when absent.
func SplitHostPort(s string, defPort int) (host string, port int, err error) {
	switch {
	case strings.HasPrefix(s, "["):
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "", 0, fmt.Errorf("address %q: missing ]", s)
		}
		host, rest := s[1:end], s[end+1:]
		if rest == "" {
			return host, defPort, nil
		}
		if !strings.HasPrefix(rest, ":") {
			return "", 0, fmt.Errorf("address %q: junk after ]", s)
		}
		port, err := ParsePort(rest[1:])
		return host, port, err
	case strings.Count(s, ":") > 1: // a bare IPv6 address
		return s, defPort, nil
	}
	host, ps, ok := strings.Cut(s, ":")
	if !ok {
		return s, defPort, nil
	}
	port, err = ParsePort(ps)
	return host, port, err
}

// ParsePort parses a UDP port number, 1 to 65535.
func ParsePort(s string) (int, error) {
	p, err := strconv.ParseUint(s, 10, 16)
	if err != nil || p == 0 {
		return 0, fmt.Errorf("bad port %q (want 1..65535)", s)
	}
	return int(p), nil
}

// Resolve returns the address host names: a literal, or the first address
// a lookup returns (IPv4 first).
func Resolve(ctx context.Context, host string) (netip.Addr, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		return a.Unmap(), nil
	}
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return netip.Addr{}, err
	}
	if len(addrs) == 0 {
		return netip.Addr{}, fmt.Errorf("%s: no address", host)
	}
	for _, a := range addrs {
		if a.Unmap().Is4() {
			return a.Unmap(), nil
		}
	}
	return addrs[0], nil
}

// Network returns "udp4" or "udp6", the network of a.
func Network(a netip.Addr) string {
	if a.Is4() || a.Is4In6() {
		return "udp4"
	}
	return "udp6"
}

// Transient reports whether err, from sending or receiving a datagram, is
// one a link survives: the datagram is lost (no route yet, the peer not
// listening, a full queue, a firewall), as it could be on any wire.
func Transient(err error) bool {
	for _, e := range []syscall.Errno{
		syscall.ECONNREFUSED, syscall.EHOSTUNREACH, syscall.EHOSTDOWN,
		syscall.ENETUNREACH, syscall.ENETDOWN, syscall.ENOBUFS, syscall.EAGAIN,
		syscall.EINTR, syscall.EMSGSIZE, syscall.EPERM, syscall.EADDRNOTAVAIL,
	} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
