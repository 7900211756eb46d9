package vnet

import (
	"encoding/binary"
	"fmt"
	"syscall"
)

// Ethernet types and IP protocols that segmentation and coalescing read.
const (
	etherIPv4  = 0x0800
	etherIPv6  = 0x86dd
	etherVLAN  = 0x8100 // 802.1Q
	etherQinQ  = 0x88a8 // 802.1ad
	etherQinQ1 = 0x9100 // the pre-standard outer tag

	protoHopByHop = 0
	protoTCP      = 6
	protoUDP      = 17
	protoDstOpts  = 60

	ethLen  = 14
	tagLen  = 4
	ipv4Len = 20
	ipv6Len = 40
	tcpLen  = 20
	udpLen  = 8

	tcpCsumOff = 16 // the checksum's place in the TCP header
	udpCsumOff = 6  // and in the UDP header

	maxTags = 8 // VLAN tags read before the frame is called odd
)

// TCP flags.
const (
	tcpFIN = 0x01
	tcpPSH = 0x08
	tcpACK = 0x10
	tcpCWR = 0x80
)

// layout is where the headers of an IP packet in an Ethernet frame are.
type layout struct {
	l3    int   // the IP header
	l4    int   // the TCP or UDP header
	hlen  int   // the payload (past the L4 header)
	v6    bool  // IPv6 rather than IPv4
	proto uint8 // protocol of the L4 header
}

// errInval wraps syscall.EINVAL with what is wrong with the input.
func errInval(format string, args ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), syscall.EINVAL)
}

// ethType returns the Ethernet type of frame past its VLAN tags and the
// offset of the header that follows; ok is false if the frame ends in its
// Ethernet header (off is then past its end) or has more than maxTags
// tags.
func ethType(frame []byte) (t uint16, off int, ok bool) {
	off = ethLen
	for tags := 0; len(frame) >= off; tags++ {
		t = binary.BigEndian.Uint16(frame[off-2:])
		if t != etherVLAN && t != etherQinQ && t != etherQinQ1 {
			return t, off, true
		}
		if tags == maxTags {
			break
		}
		off += tagLen
	}
	return 0, off, false
}

// parseL3 finds the IP header of an Ethernet frame, past its VLAN tags,
// and tells its version. The IP header's length is not checked.
func parseL3(frame []byte) (l3 int, v6 bool, err error) {
	t, off, ok := ethType(frame)
	switch {
	case !ok && off > len(frame):
		return 0, false, errInval("frame of %d bytes ends in its Ethernet header", len(frame))
	case !ok:
		return 0, false, errInval("more than %d VLAN tags", maxTags)
	case t == etherIPv4:
		return off, false, nil
	case t == etherIPv6:
		return off, true, nil
	}
	return 0, false, errInval("Ethernet type %#04x is not IP", t)
}

// parseIP reads the IP header at l3 and finds the L4 header past it. It
// checks that the IP header's length field accounts for the whole frame,
// that an IPv4 packet is not a fragment, and skips the IPv6 extension
// headers that carry options (hop-by-hop, destination); any other is an
// error. hlen is left for the caller to set.
func parseIP(frame []byte, l3 int, v6 bool) (layout, error) {
	lo := layout{l3: l3, v6: v6}
	ip := frame[l3:]
	if !v6 {
		if len(ip) < ipv4Len {
			return lo, errInval("IPv4 header cut short at %d bytes", len(ip))
		}
		if ip[0]>>4 != 4 {
			return lo, errInval("IP version %d in an IPv4 frame", ip[0]>>4)
		}
		ihl := int(ip[0]&0xf) * 4
		if ihl < ipv4Len || ihl > len(ip) {
			return lo, errInval("IPv4 header length %d in a packet of %d bytes", ihl, len(ip))
		}
		if n := int(binary.BigEndian.Uint16(ip[2:])); n != len(ip) {
			return lo, errInval("IPv4 total length %d, packet of %d bytes", n, len(ip))
		}
		if binary.BigEndian.Uint16(ip[6:])&0x3fff != 0 {
			return lo, errInval("IPv4 fragment")
		}
		lo.l4, lo.proto = l3+ihl, ip[9]
		return lo, nil
	}
	if len(ip) < ipv6Len {
		return lo, errInval("IPv6 header cut short at %d bytes", len(ip))
	}
	if ip[0]>>4 != 6 {
		return lo, errInval("IP version %d in an IPv6 frame", ip[0]>>4)
	}
	if n := int(binary.BigEndian.Uint16(ip[4:])); n != len(ip)-ipv6Len {
		return lo, errInval("IPv6 payload length %d, payload of %d bytes", n, len(ip)-ipv6Len)
	}
	next, off := ip[6], ipv6Len
	for next == protoHopByHop || next == protoDstOpts {
		if len(ip) < off+8 {
			return lo, errInval("IPv6 extension header cut short")
		}
		next, off = ip[off], off+(int(ip[off+1])+1)*8
		if off > len(ip) {
			return lo, errInval("IPv6 extension header of %d bytes past the packet's end", off-ipv6Len)
		}
	}
	if next != protoTCP && next != protoUDP {
		return lo, errInval("IPv6 next header %d is not TCP or UDP", next)
	}
	lo.l4, lo.proto = l3+off, next
	return lo, nil
}

// parseL4 checks the L4 header at lo.l4 and sets lo.hlen past it.
func parseL4(frame []byte, lo *layout) error {
	l4 := frame[lo.l4:]
	switch lo.proto {
	case protoTCP:
		if len(l4) < tcpLen {
			return errInval("TCP header cut short at %d bytes", len(l4))
		}
		doff := int(l4[12]>>4) * 4
		if doff < tcpLen || doff > len(l4) {
			return errInval("TCP data offset %d in a segment of %d bytes", doff, len(l4))
		}
		lo.hlen = lo.l4 + doff
	case protoUDP:
		if len(l4) < udpLen {
			return errInval("UDP header cut short at %d bytes", len(l4))
		}
		if n := int(binary.BigEndian.Uint16(l4[4:])); n != len(l4) {
			return errInval("UDP length %d, datagram of %d bytes", n, len(l4))
		}
		lo.hlen = lo.l4 + udpLen
	default:
		return errInval("IP protocol %d is not TCP or UDP", lo.proto)
	}
	return nil
}
