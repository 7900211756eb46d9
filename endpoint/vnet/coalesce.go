package vnet

import (
	"bytes"
	"encoding/binary"
)

// Frame is a frame to write to a tap opened with IFF_VNET_HDR: Data after
// the header Hdr.
type Frame struct {
	Hdr  Hdr
	Data []byte
}

// maxIP is the most IP bytes (headers included) in a merged super-frame.
const maxIP = 65535

// Coalescer merges runs of ordinary TCP segments into super-frames for a
// tap opened with IFF_VNET_HDR (the receive offload a NIC does), so that
// the kernel takes in one packet where it would have taken dozens. Its
// zero value is ready to use. It keeps its buffers from call to call and
// is not safe for concurrent use.
//
// Segments merge when they are adjacent in a batch, of one TCP flow, in
// sequence, carry the same headers (Ethernet and VLAN, IP addresses, TTL
// or hop limit, TOS or traffic class and flow label, DF, ACK number,
// window, TCP options byte for byte), have only ACK set (PSH too on the
// last), the same payload size (the last may be smaller), IPv4 IDs in
// sequence unless DF is set, and valid checksums, up to 65535 IP bytes
// (and MaxFrame bytes) a super-frame; IPv4 with options and IPv6 with
// extension headers do not merge. What does not merge passes through
// unchanged, in order.
type Coalescer struct {
	out  []Frame
	buf  []byte   // the merged super-frames
	used int      // bytes of buf in use
	run  []tcpSeg // the run of segments being merged
	size int      // payload bytes in run
}

// tcpSeg is a TCP segment that may merge with others.
type tcpSeg struct {
	frame []byte
	l3    int // the IP header
	l4    int // the TCP header
	hlen  int // the payload
	v6    bool
	seq   uint32
	flags uint8
}

// payload returns the segment's payload length.
func (s *tcpSeg) payload() int { return len(s.frame) - s.hlen }

// Coalesce returns frames, in order, with each run of segments that can
// merge replaced by one super-frame with its header; any other frame is
// returned as it is, with a zero Hdr. frames is left unchanged; the result
// aliases frames and c's buffers, and is valid until c's next call.
func (c *Coalescer) Coalesce(frames [][]byte) []Frame {
	total := 0
	for _, f := range frames {
		total += len(f)
	}
	if cap(c.buf) < total {
		c.buf = make([]byte, total)
	}
	c.buf, c.used, c.out = c.buf[:cap(c.buf)], 0, c.out[:0]
	for _, f := range frames {
		s, ok := parseSeg(f)
		if !ok {
			c.flush()
			c.out = append(c.out, Frame{Data: f})
			continue
		}
		if len(c.run) == 0 || !c.follows(&s) {
			c.flush()
		}
		c.run = append(c.run, s)
		c.size += s.payload()
		if s.flags&tcpPSH != 0 || s.payload() < c.run[0].payload() {
			c.flush() // nothing may follow a PSH or a short segment
		}
	}
	c.flush()
	clear(c.run[:cap(c.run)])
	return c.out
}

// follows reports whether s can join the run (not empty) as its next
// segment.
func (c *Coalescer) follows(s *tcpSeg) bool {
	head, last := &c.run[0], &c.run[len(c.run)-1]
	if s.l3 != head.l3 || s.v6 != head.v6 || s.hlen != head.hlen ||
		s.payload() > head.payload() ||
		s.seq != last.seq+uint32(last.payload()) ||
		head.hlen-head.l3+c.size+s.payload() > maxIP ||
		head.hlen+c.size+s.payload() > MaxFrame {
		return false
	}
	a, b := head.frame, s.frame
	if !bytes.Equal(a[:head.l3], b[:s.l3]) {
		return false
	}
	ia, ib := a[head.l3:], b[s.l3:]
	if s.v6 {
		if !bytes.Equal(ia[:4], ib[:4]) || ia[7] != ib[7] || !bytes.Equal(ia[8:ipv6Len], ib[8:ipv6Len]) {
			return false
		}
	} else {
		if ia[1] != ib[1] || ia[6] != ib[6] || ia[8] != ib[8] || !bytes.Equal(ia[12:ipv4Len], ib[12:ipv4Len]) {
			return false
		}
		be := binary.BigEndian
		if ia[6]&0x40 == 0 && be.Uint16(ib[4:]) != be.Uint16(ia[4:])+uint16(len(c.run)) {
			return false // without DF, IDs must be in sequence, as a re-cut would make them
		}
	}
	ta, tb := a[head.l4:head.hlen], b[s.l4:s.hlen]
	return bytes.Equal(ta[:4], tb[:4]) && // ports
		bytes.Equal(ta[8:12], tb[8:12]) && // acknowledgment
		bytes.Equal(ta[14:16], tb[14:16]) && // window
		bytes.Equal(ta[18:], tb[18:]) // urgent pointer, options
}

// flush appends the run to c.out, merged if it has more than one
// segment, and empties it.
func (c *Coalescer) flush() {
	switch len(c.run) {
	case 0:
		return
	case 1:
		c.out = append(c.out, Frame{Data: c.run[0].frame})
	default:
		c.out = append(c.out, c.merge())
	}
	c.run, c.size = c.run[:0], 0
}

// merge builds the super-frame of the run in c.buf.
func (c *Coalescer) merge() Frame {
	head, last := &c.run[0], &c.run[len(c.run)-1]
	n := head.hlen + c.size
	data := c.buf[c.used : c.used+n : c.used+n]
	c.used += n
	off := copy(data, head.frame[:head.hlen])
	for i := range c.run {
		off += copy(data[off:], c.run[i].frame[c.run[i].hlen:])
	}
	be := binary.BigEndian
	ip := data[head.l3:]
	gso := uint8(GSOTCPv4)
	if head.v6 {
		be.PutUint16(ip[4:], uint16(len(ip)-ipv6Len))
		gso = GSOTCPv6
	} else {
		be.PutUint16(ip[2:], uint16(len(ip)))
		ipv4Csum(ip[:ipv4Len])
	}
	tcp := data[head.l4:]
	tcp[13] = tcpACK | last.flags&tcpPSH
	// CHECKSUM_PARTIAL: the field holds the pseudo-header's sum, not
	// complemented, over the whole segment's length; the kernel adds the
	// rest, or cuts the frame and adjusts it per segment.
	be.PutUint16(tcp[tcpCsumOff:], fold(pseudo(ip, head.v6, protoTCP, len(tcp))))
	return Frame{
		Hdr: Hdr{
			Flags:      FlagNeedsCsum,
			GSOType:    gso,
			HdrLen:     uint16(head.hlen),
			GSOSize:    uint16(head.payload()),
			CsumStart:  uint16(head.l4),
			CsumOffset: tcpCsumOff,
		},
		Data: data,
	}
}

// parseSeg reads frame as a TCP segment that may merge: IPv4 without
// options or fragmentation, or IPv6 without extension headers, lengths
// that account for the frame exactly, a payload, flags ACK or ACK|PSH,
// and valid checksums.
func parseSeg(frame []byte) (tcpSeg, bool) {
	var s tcpSeg
	t, l3, ok := ethType(frame)
	if !ok {
		return s, false
	}
	be := binary.BigEndian
	ip := frame[l3:]
	switch t {
	case etherIPv4:
		if len(ip) < ipv4Len || ip[0] != 0x45 || int(be.Uint16(ip[2:])) != len(ip) ||
			be.Uint16(ip[6:])&^0x4000 != 0 || ip[9] != protoTCP || fold(sum(ip[:ipv4Len], 0)) != 0xffff {
			return s, false
		}
		s.l4 = l3 + ipv4Len
	case etherIPv6:
		if len(ip) < ipv6Len || ip[0]>>4 != 6 || int(be.Uint16(ip[4:])) != len(ip)-ipv6Len || ip[6] != protoTCP {
			return s, false
		}
		s.l4, s.v6 = l3+ipv6Len, true
	default:
		return s, false
	}
	tcp := frame[s.l4:]
	if len(tcp) < tcpLen {
		return s, false
	}
	doff := int(tcp[12]>>4) * 4
	if doff < tcpLen || doff >= len(tcp) || tcp[12]&0x0f != 0 ||
		(tcp[13] != tcpACK && tcp[13] != tcpACK|tcpPSH) ||
		fold(sum(tcp, pseudo(ip, s.v6, protoTCP, len(tcp)))) != 0xffff {
		return s, false
	}
	s.frame, s.l3, s.hlen = frame, l3, s.l4+doff
	s.seq, s.flags = be.Uint32(tcp[4:]), tcp[13]
	return s, true
}
