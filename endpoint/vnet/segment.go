package vnet

import (
	"encoding/binary"
	"fmt"
	"io"
	"syscall"
)

// A frame from a tap with offloads comes in three kinds, by its header:
// plain (nothing to do), checksum only (FlagNeedsCsum: the L4 checksum
// field holds the pseudo-header's sum, the rest is to be added), and a
// super-frame (GSOType set): one set of headers and up to 64 KiB of
// payload, to be cut at GSOSize bytes of payload into frames that each
// carry a full copy of the headers, fixed up as the kernel's software GSO
// does (tcp_gso_segment, __udp_gso_segment).
//
// Segment reads the headers itself: the kernel's HdrLen is the length of
// the buffer's linear part, which may hold payload too, so it is not
// used. The IP header follows the Ethernet type and any VLAN tags; the L4
// header follows the IP header (and, for IPv6, the hop-by-hop and
// destination options headers); where the header says so (FlagNeedsCsum)
// CsumStart and CsumOffset must agree with them.

// MaxSegments is the most segments Segment cuts one super-frame into.
const MaxSegments = 65535

// Segments returns the most segments Segment can cut a frame of frameLen
// bytes with header h into, for sizing buffers before reading headers.
func (h Hdr) Segments(frameLen int) int {
	if !h.GSO() || h.GSOSize == 0 {
		return 1
	}
	least := ethLen + ipv4Len + tcpLen
	switch h.GSOType &^ GSOECN {
	case GSOTCPv6:
		least = ethLen + ipv6Len + tcpLen
	case GSOUDPL4:
		least = ethLen + ipv4Len + udpLen
	}
	payload := frameLen - least
	if payload <= 0 {
		return 1
	}
	return min((payload+int(h.GSOSize)-1)/int(h.GSOSize), MaxSegments)
}

// SegmentedLen returns how many bytes of buf Segment needs for frame: 0
// for a plain frame, len(frame) for one whose checksum is to be finished,
// and for a super-frame its payload plus a copy of its headers per
// segment. It returns Segment's error for a frame Segment rejects.
func SegmentedLen(frame []byte, h Hdr) (int, error) {
	if h.Plain() {
		return 0, nil
	}
	if !h.GSO() {
		if err := checkCsum(len(frame), h); err != nil {
			return 0, fmt.Errorf("segment: %w", err)
		}
		return len(frame), nil
	}
	lo, n, err := superFrame(frame, h)
	if err != nil {
		return 0, fmt.Errorf("segment: %w", err)
	}
	return n*lo.hlen + len(frame) - lo.hlen, nil
}

// Segment appends to segs the ordinary frames that frame, with header h,
// stands for: frame itself if h is plain (not copied); otherwise copies
// in buf, which must hold SegmentedLen bytes, with their checksums
// finished. A super-frame (TCP over IPv4 or IPv6, UDP segmentation) is cut
// into segments of at most h.GSOSize bytes of payload, with lengths, IPv4
// IDs and checksums, TCP sequence numbers and flags (FIN and PSH on the
// last segment only, CWR on the first only) set as the kernel sets them.
// On error, which wraps syscall.EINVAL, segs is returned as it was.
func Segment(frame []byte, h Hdr, buf []byte, segs [][]byte) ([][]byte, error) {
	if h.Plain() {
		return append(segs, frame), nil
	}
	if !h.GSO() {
		if err := checkCsum(len(frame), h); err != nil {
			return segs, fmt.Errorf("segment: %w", err)
		}
		if len(buf) < len(frame) {
			return segs, shortBuf(len(buf), len(frame))
		}
		out := buf[:len(frame):len(frame)]
		copy(out, frame)
		finish(out, h)
		return append(segs, out), nil
	}
	lo, n, err := superFrame(frame, h)
	if err != nil {
		return segs, fmt.Errorf("segment: %w", err)
	}
	hl, payload := lo.hlen, frame[lo.hlen:]
	if need := n*hl + len(payload); len(buf) < need {
		return segs, shortBuf(len(buf), need)
	}
	be := binary.BigEndian
	mss := int(h.GSOSize)
	var id uint16
	if !lo.v6 {
		id = be.Uint16(frame[lo.l3+4:])
	}
	tcp := lo.proto == protoTCP
	var seq uint32
	var flags uint8
	if tcp {
		seq, flags = be.Uint32(frame[lo.l4+4:]), frame[lo.l4+13]
	}
	off := 0
	for i := range n {
		chunk := payload[min(i*mss, len(payload)):min((i+1)*mss, len(payload))]
		end := off + hl + len(chunk)
		seg := buf[off:end:end]
		off = end
		copy(seg, frame[:hl])
		copy(seg[hl:], chunk)
		ip := seg[lo.l3:]
		if lo.v6 {
			be.PutUint16(ip[4:], uint16(len(ip)-ipv6Len))
		} else {
			be.PutUint16(ip[2:], uint16(len(ip)))
			be.PutUint16(ip[4:], id+uint16(i))
			ipv4Csum(ip[:lo.l4-lo.l3])
		}
		l4 := seg[lo.l4:]
		if tcp {
			be.PutUint32(l4[4:], seq+uint32(i*mss))
			f := flags
			if i != n-1 {
				f &^= tcpFIN | tcpPSH
			}
			if i != 0 {
				f &^= tcpCWR
			}
			l4[13] = f
			l4[tcpCsumOff], l4[tcpCsumOff+1] = 0, 0
			be.PutUint16(l4[tcpCsumOff:], ^fold(sum(l4, pseudo(ip, lo.v6, protoTCP, len(l4)))))
		} else {
			be.PutUint16(l4[4:], uint16(len(l4)))
			l4[udpCsumOff], l4[udpCsumOff+1] = 0, 0
			c := ^fold(sum(l4, pseudo(ip, lo.v6, protoUDP, len(l4))))
			if c == 0 {
				c = 0xffff // 0 says "no checksum" in UDP
			}
			be.PutUint16(l4[udpCsumOff:], c)
		}
		segs = append(segs, seg)
	}
	return segs, nil
}

// Finish completes in place the checksum that h leaves to the device
// (FlagNeedsCsum): the ones'-complement sum of frame[h.CsumStart:], stored
// at CsumStart+CsumOffset, where the sender put the pseudo-header's sum.
// It does nothing if h asks for no checksum, and it cuts nothing: a
// super-frame gets one checksum over all of it. A field outside frame is
// an error wrapping syscall.EINVAL.
func Finish(frame []byte, h Hdr) error {
	if h.Flags&FlagNeedsCsum == 0 {
		return nil
	}
	if err := checkCsum(len(frame), h); err != nil {
		return fmt.Errorf("finish: %w", err)
	}
	finish(frame, h)
	return nil
}

// checkCsum checks that the checksum field h points at is inside a frame
// of n bytes.
func checkCsum(n int, h Hdr) error {
	if end := int(h.CsumStart) + int(h.CsumOffset) + 2; end > n {
		return errInval("checksum field at %d+%d past the end of a frame of %d bytes", h.CsumStart, h.CsumOffset, n)
	}
	return nil
}

// finish completes the checksum that checkCsum has checked.
func finish(frame []byte, h Hdr) {
	at := int(h.CsumStart) + int(h.CsumOffset)
	c := ^fold(sum(frame[h.CsumStart:], 0))
	if c == 0 {
		c = 0xffff // as the kernel's skb_checksum_help: 0 would mean none in UDP
	}
	binary.BigEndian.PutUint16(frame[at:], c)
}

// ipv4Csum sets the checksum of the IPv4 header h.
func ipv4Csum(h []byte) {
	h[10], h[11] = 0, 0
	binary.BigEndian.PutUint16(h[10:], ^fold(sum(h, 0)))
}

// superFrame checks a super-frame against its header and returns its
// layout and how many segments it is cut into.
func superFrame(frame []byte, h Hdr) (layout, int, error) {
	var lo layout
	gso := h.GSOType &^ GSOECN
	proto, csumOff := uint8(protoTCP), tcpCsumOff
	switch gso {
	case GSOTCPv4, GSOTCPv6:
	case GSOUDPL4:
		if h.GSOType&GSOECN != 0 {
			return lo, 0, errInval("ECN flag on UDP segmentation")
		}
		proto, csumOff = protoUDP, udpCsumOff
	case GSOUDP:
		return lo, 0, errInval("UDP fragmentation offload (GSO type %d) is not offered", gso)
	default:
		return lo, 0, errInval("unknown GSO type %#x", h.GSOType)
	}
	if h.GSOSize == 0 {
		return lo, 0, errInval("GSO size 0")
	}
	l3, v6, err := parseL3(frame)
	if err != nil {
		return lo, 0, err
	}
	if gso == GSOTCPv4 && v6 {
		return lo, 0, errInval("GSO type TCPv4 on an IPv6 packet")
	}
	if gso == GSOTCPv6 && !v6 {
		return lo, 0, errInval("GSO type TCPv6 on an IPv4 packet")
	}
	if lo, err = parseIP(frame, l3, v6); err != nil {
		return lo, 0, err
	}
	if lo.proto != proto {
		return lo, 0, errInval("IP protocol %d under GSO type %d", lo.proto, gso)
	}
	if err := parseL4(frame, &lo); err != nil {
		return lo, 0, err
	}
	if h.Flags&FlagNeedsCsum != 0 && (int(h.CsumStart) != lo.l4 || int(h.CsumOffset) != csumOff) {
		return lo, 0, errInval("checksum at %d+%d, L4 header at %d", h.CsumStart, h.CsumOffset, lo.l4)
	}
	n := max(1, (len(frame)-lo.hlen+int(h.GSOSize)-1)/int(h.GSOSize))
	if n > MaxSegments {
		return lo, 0, errInval("%d segments, at most %d", n, MaxSegments)
	}
	return lo, n, nil
}

// shortBuf is the error for a buffer of n bytes where need are needed.
func shortBuf(n, need int) error {
	return fmt.Errorf("segment: buffer of %d bytes, need %d: %w: %w", n, need, io.ErrShortBuffer, syscall.EINVAL)
}
