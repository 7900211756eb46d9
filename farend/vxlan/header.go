package vxlan

// The VXLAN header of RFC 7348, section 5:
//
//	byte 0     flags: 0x08 (the I flag: the VNI is valid); the other bits are reserved
//	bytes 1-3  reserved, zero
//	bytes 4-6  VNI, 24 bits, big-endian
//	byte 7     reserved, zero
//
// vdeplug4's vxvde puts the same header in front of its frames.
const (
	// HeaderLen is the length of the VXLAN header.
	HeaderLen = 8
	// FlagVNI is the I flag: the header carries a VNI.
	FlagVNI = 0x08
	// MaxVNI is the largest VXLAN Network Identifier (24 bits).
	MaxVNI = 1<<24 - 1
	// DefaultPort is the IANA-assigned VXLAN UDP port.
	DefaultPort = 4789
)

// EthHeaderLen is the length of an Ethernet header: frames shorter than it
// are neither sent nor accepted.
const EthHeaderLen = 14

// PutHeader writes the header of a frame of network vni into b[:HeaderLen].
func PutHeader(b []byte, vni uint32) {
	_ = b[HeaderLen-1]
	b[0], b[1], b[2], b[3] = FlagVNI, 0, 0, 0
	b[4], b[5], b[6], b[7] = byte(vni>>16), byte(vni>>8), byte(vni), 0
}

// ParseHeader returns the VNI of the header at the start of b. ok is false
// when b is shorter than a header or its flags byte is not exactly the I
// flag: other flag bits announce extensions (GPE, GBP) whose payload need
// not be an Ethernet frame, and Linux drops those too. The reserved bytes
// are ignored, as RFC 7348 asks of a receiver.
func ParseHeader(b []byte) (vni uint32, ok bool) {
	if len(b) < HeaderLen || b[0] != FlagVNI {
		return 0, false
	}
	return uint32(b[4])<<16 | uint32(b[5])<<8 | uint32(b[6]), true
}

// Coalesced reports whether first, the first of the datagrams that the
// kernel says a message of n bytes it received holds (UDP GRO), is one.
// It is not when its frame is an IP packet as long as the whole message:
// a datagram that a Linux VXLAN device sent with the segmentation of its
// inner packet left to do (UDP GSO inside the tunnel), which a socket
// with UDP_GRO receives whole, with the inner segment size for the size.
func Coalesced(first []byte, n int) bool {
	f := first[min(HeaderLen, len(first)):]
	if len(f) < EthHeaderLen {
		return true
	}
	off, typ := 12, uint16(f[12])<<8|uint16(f[13])
	for (typ == 0x8100 || typ == 0x88a8) && len(f) >= off+6 {
		off += 4
		typ = uint16(f[off])<<8 | uint16(f[off+1])
	}
	ip, whole := f[off+2:], n-HeaderLen-(off+2)
	switch {
	case typ == 0x0800 && len(ip) >= 4:
		return int(ip[2])<<8|int(ip[3]) != whole
	case typ == 0x86dd && len(ip) >= 6:
		return 40+(int(ip[4])<<8|int(ip[5])) != whole
	}
	return true
}
