package vxlan

import "net/netip"

// FinishPartial is finishPartial, for the tests of package vxlan_test.
var FinishPartial = finishPartial

// PartialTCPFrame returns a frame of a TCP segment whose checksum is left
// to finish, as a Linux VXLAN device over a veth sends it.
func PartialTCPFrame() []byte {
	return ipFrame([]byte{2, 0, 0, 0, 0, 1}, []byte{2, 0, 0, 0, 0, 2}, false,
		netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"), protoTCP,
		tcpSeg(1, 2, 0x18, 100, nil, []byte("left to finish")), csumPartial, 0)
}
