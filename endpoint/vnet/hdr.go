// Package vnet holds the virtio-net header that a tap opened with
// IFF_VNET_HDR (and an AF_PACKET socket with PACKET_VNET_HDR) puts before
// each frame, and what a port that cannot take such a frame does instead:
// cut a super-frame into segments (GSO done in software, Segment) and
// finish the checksums the sender left to the device (Finish). The other
// way, a Coalescer merges runs of ordinary TCP segments into super-frames
// for a tap (GRO done in software).
//
// A frame with a header that asks for nothing (Hdr.Plain) is an ordinary
// frame. A frame whose header has GSOType set may be longer than the
// network's MTU: each of its segments carries at most GSOSize bytes of
// payload after a copy of its headers. (The kernel's HdrLen is the length
// of its buffer's linear part, which may hold payload too: Segment reads
// the headers' lengths from the headers.)
package vnet

import (
	"encoding/binary"
	"fmt"
	"syscall"
)

// Len is the size of the header on the wire (struct virtio_net_hdr).
const Len = 10

// Header flags.
const (
	FlagNeedsCsum = 1 // the checksum at CsumStart+CsumOffset is to be finished
	FlagDataValid = 2 // the receiver checked the checksum; nothing to finish
)

// GSO types.
const (
	GSONone  = 0    // an ordinary frame
	GSOTCPv4 = 1    // TCP over IPv4, cut at GSOSize bytes of payload
	GSOUDP   = 3    // UDP fragmentation offload (IP fragments); not offered
	GSOTCPv6 = 4    // TCP over IPv6
	GSOUDPL4 = 5    // UDP segmentation (USO): one datagram per GSOSize bytes
	GSOECN   = 0x80 // with a TCP type: the CWR flag was set on the super-frame
)

// Hdr is a decoded virtio-net header. The zero Hdr is an ordinary frame.
type Hdr struct {
	Flags      uint8
	GSOType    uint8
	HdrLen     uint16 // bytes of Ethernet, IP and L4 headers before the payload
	GSOSize    uint16 // payload bytes per segment
	CsumStart  uint16 // where the checksummed bytes start, from the frame's start
	CsumOffset uint16 // where the checksum field is, from CsumStart
}

// Plain reports whether h asks nothing of the receiver: no segmentation,
// no checksum to finish.
func (h Hdr) Plain() bool { return h.GSOType == GSONone && h.Flags&FlagNeedsCsum == 0 }

// GSO reports whether h is a super-frame's, to be cut into segments.
func (h Hdr) GSO() bool { return h.GSOType&^GSOECN != GSONone }

// Decode reads a header from b, in the byte order the kernel's tun and
// AF_PACKET use by default (the host's).
func Decode(b []byte) (Hdr, error) {
	if len(b) < Len {
		return Hdr{}, fmt.Errorf("virtio-net header of %d bytes, want %d: %w", len(b), Len, syscall.EINVAL)
	}
	e := binary.NativeEndian
	return Hdr{
		Flags:      b[0],
		GSOType:    b[1],
		HdrLen:     e.Uint16(b[2:]),
		GSOSize:    e.Uint16(b[4:]),
		CsumStart:  e.Uint16(b[6:]),
		CsumOffset: e.Uint16(b[8:]),
	}, nil
}

// Encode writes h into b[:Len].
func (h Hdr) Encode(b []byte) {
	_ = b[Len-1]
	e := binary.NativeEndian
	b[0], b[1] = h.Flags, h.GSOType
	e.PutUint16(b[2:], h.HdrLen)
	e.PutUint16(b[4:], h.GSOSize)
	e.PutUint16(b[6:], h.CsumStart)
	e.PutUint16(b[8:], h.CsumOffset)
}

// MaxFrame is the longest super-frame: an IP packet of 65535 bytes behind
// an Ethernet header with two VLAN tags.
const MaxFrame = 65535 + 14 + 8
