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
