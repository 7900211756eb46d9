package vxlan

import (
	"encoding/binary"

	"github.com/ipn-project/ipn/endpoint/vnet"
)

// A Linux VXLAN device leaves work to the hardware when its lower device
// offers the offloads (a veth's defaults: tx checksum, TSO, GSO of UDP
// tunnels), and a veth hands that work on undone: the datagram that
// reaches a socket on the veth's far side is the skb as the device built
// it. Two things then arrive here that a wire never carries:
//
//   - a TCP or UDP super-packet (TSO, UDP GSO) inside one datagram: a UDP
//     one with its segment size for the UDP_GRO size (udp.RecvBatch tells
//     it from a coalesced run with Coalesced), a TCP one with no size at
//     all (the kernel gives UDP_GRO for UDP segmentation only) and longer
//     than any VXLAN datagram on the link carries. cut tells the kind from
//     the inner headers and cuts it, every checksum finished;
//   - an inner TCP or UDP checksum left to finish (CHECKSUM_PARTIAL): the
//     field holds the sum of the pseudo-header alone, folded and not
//     complemented, as tcp_v4_send_check and udp_set_csum leave it for the
//     device, and nothing else in the datagram says so (the outer UDP
//     checksum, computed as if the inner one were finished, is one the
//     receiving kernel never checks, the skb being CHECKSUM_PARTIAL
//     still). finishPartial finds such a field by that value in a packet
//     whose checksum is wrong, and finishes it; a packet whose checksum is
//     wrong otherwise goes on as it is, for its receiver to drop.

// inner is where the headers of an IP packet in a frame are.
type inner struct {
	l3, l4 int   // the IP header, the TCP or UDP header
	hlen   int   // the payload, past the TCP or UDP header
	end    int   // the packet's end, by its IP header (the frame may be padded)
	v6     bool  // IPv6 rather than IPv4
	proto  uint8 // 6 TCP or 17 UDP
}

const (
	protoTCP = 6
	protoUDP = 17
)

// parseInner finds the TCP or UDP packet in frame, behind VLAN tags and,
// for IPv6, hop-by-hop and destination options headers. ok is false for
// anything else: another protocol, an IPv4 fragment, an IPv6 routing or
// fragment header (the pseudo-header would not be the one the IP header
// names), a packet longer than the frame.
func parseInner(frame []byte) (in inner, ok bool) {
	be := binary.BigEndian
	off := EthHeaderLen
	for tags := 0; ; tags++ {
		if len(frame) < off || tags > 8 {
			return in, false
		}
		t := be.Uint16(frame[off-2:])
		if t != 0x8100 && t != 0x88a8 && t != 0x9100 {
			break
		}
		off += 4
	}
	ip := frame[off:]
	in.l3 = off
	switch be.Uint16(frame[off-2:]) {
	case 0x0800:
		if len(ip) < 20 || ip[0]>>4 != 4 {
			return in, false
		}
		ihl, total := int(ip[0]&0xf)*4, int(be.Uint16(ip[2:]))
		if ihl < 20 || total < ihl || total > len(ip) || be.Uint16(ip[6:])&0x3fff != 0 {
			return in, false
		}
		in.l4, in.end, in.proto = off+ihl, off+total, ip[9]
	case 0x86dd:
		if len(ip) < 40 || ip[0]>>4 != 6 {
			return in, false
		}
		total := 40 + int(be.Uint16(ip[4:]))
		if total > len(ip) {
			return in, false
		}
		next, at := ip[6], 40
		for next == 0 || next == 60 { // hop-by-hop, destination options
			if total < at+8 {
				return in, false
			}
			next, at = ip[at], at+(int(ip[at+1])+1)*8
		}
		if at > total {
			return in, false
		}
		in.v6, in.l4, in.end, in.proto = true, off+at, off+total, next
	default:
		return in, false
	}
	switch l4 := frame[in.l4:in.end]; in.proto {
	case protoTCP:
		if len(l4) < 20 {
			return in, false
		}
		doff := int(l4[12]>>4) * 4
		in.hlen = in.l4 + doff
		return in, doff >= 20 && doff <= len(l4)
	case protoUDP:
		in.hlen = in.l4 + 8
		return in, len(l4) >= 8
	}
	return in, false
}

// gsoType returns the kind of super-packet in an inner packet.
func (in inner) gsoType() uint8 {
	switch {
	case in.proto == protoUDP:
		return vnet.GSOUDPL4
	case in.v6:
		return vnet.GSOTCPv6
	}
	return vnet.GSOTCPv4
}

// csumOff is where the L4 checksum field is, from the L4 header.
func (in inner) csumOff() int {
	if in.proto == protoUDP {
		return 6
	}
	return 16
}

// pseudoSum returns the sum of the packet's pseudo-header.
func (in inner) pseudoSum(frame []byte) uint64 {
	ip := frame[in.l3:]
	var acc uint64
	if in.v6 {
		acc = sum32(ip[8:40], 0)
	} else {
		acc = sum32(ip[12:20], 0)
	}
	return acc + uint64(in.proto) + uint64(in.end-in.l4)
}

// finishPartial finishes in place the L4 checksum of the TCP or UDP
// packet in frame if the sender left it to the hardware (see above): its
// field holds the folded sum of the pseudo-header, and the checksum is
// wrong. It reports whether it did. A right checksum costs a look at the
// headers only, unless its field happens to hold that sum (once in 65536
// packets).
func finishPartial(frame []byte) bool {
	in, ok := parseInner(frame)
	if !ok {
		return false
	}
	l4 := frame[in.l4:in.end]
	at := in.csumOff()
	field := binary.BigEndian.Uint16(l4[at:])
	ph := in.pseudoSum(frame)
	if field != fold(ph) {
		return false // finished, right or corrupt
	}
	if fold(sum32(l4, ph)) == 0xffff {
		return false // right after all
	}
	l4[at], l4[at+1] = 0, 0
	c := ^fold(sum32(l4, ph))
	if c == 0 && in.proto == protoUDP {
		c = 0xffff // 0 says "no checksum" in UDP
	}
	binary.BigEndian.PutUint16(l4[at:], c)
	return true
}

// sum32 adds b, as big-endian 16-bit words (an odd last byte padded with
// a zero), to the ones'-complement running sum acc, 32 bits at a time: a
// 32-bit word is its two 16-bit words' sum modulo 2^16-1 (2^16 is 1), and
// no frame's words overflow 64 bits. fold reduces the sum.
func sum32(b []byte, acc uint64) uint64 {
	be := binary.BigEndian
	for len(b) >= 4 {
		acc += uint64(be.Uint32(b))
		b = b[4:]
	}
	if len(b) >= 2 {
		acc += uint64(be.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		acc += uint64(b[0]) << 8
	}
	return acc
}

// fold reduces a running sum to 16 bits, without complementing it.
func fold(acc uint64) uint16 {
	for acc>>16 != 0 {
		acc = acc&0xffff + acc>>16
	}
	return uint16(acc)
}
