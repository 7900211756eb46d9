package vnet_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/ipn-project/ipn/endpoint/vnet"
)

// The tests build super-frames as the kernel hands them to a tap with
// offloads (headers whose lengths cover the whole super-frame, the L4
// checksum field holding the pseudo-header's sum) and check what vnet
// makes of them with gopacket's decoding and a checksum written here the
// slow way.

// refSum is the Internet checksum's folded sum of b, 16 bits at a time.
func refSum(b []byte, s uint32) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return s
}

// refPseudo is the folded sum of the pseudo-header for l4len bytes of
// protocol proto between src and dst.
func refPseudo(src, dst net.IP, proto uint8, l4len int) uint32 {
	s := refSum(src, 0)
	s = refSum(dst, s)
	s += uint32(proto) + uint32(l4len>>16) + uint32(l4len&0xffff)
	return refSum(nil, s)
}

// spec describes a super-frame for build.
type spec struct {
	v6      bool
	tags    int // VLAN tags: an 802.1ad one outside 802.1Q ones
	udp     bool
	payload int
	mss     int
	fin     bool
	psh     bool
	cwr     bool // and GSOECN in the header
	ipOpts  bool // 4 bytes of IPv4 options
	hbh     bool // an IPv6 hop-by-hop options header
	tcpOpts bool // a timestamp option
	noCsum  bool // no FlagNeedsCsum in the header
	df      bool
	id      uint16
	seq     uint32
}

var (
	mac1, mac2 = net.HardwareAddr{2, 0, 0, 0, 0, 1}, net.HardwareAddr{2, 0, 0, 0, 0, 2}
	ip4a, ip4b = net.IP{10, 213, 0, 1}, net.IP{10, 213, 0, 2}
	ip6a, ip6b = net.ParseIP("fd00:213::1"), net.ParseIP("fd00:213::2")
)

// pattern returns n bytes that differ from one offset to the next.
func pattern(n, seed int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>8 + seed)
	}
	return b
}

// built is a frame made by build, with where its headers are.
type built struct {
	frame   []byte
	h       vnet.Hdr
	l3, l4  int
	hlen    int
	payload []byte
}

// build makes the super-frame s describes and its header, as the kernel
// would hand them to a tap with offloads.
func build(t testing.TB, s spec) built {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: mac1, DstMAC: mac2}
	ls := []gopacket.SerializableLayer{eth}
	ipType := layers.EthernetTypeIPv4
	if s.v6 {
		ipType = layers.EthernetTypeIPv6
	}
	eth.EthernetType = ipType
	if s.tags > 0 {
		eth.EthernetType = layers.EthernetTypeDot1Q
		if s.tags > 1 {
			eth.EthernetType = layers.EthernetTypeQinQ
		}
		for i := range s.tags {
			d := &layers.Dot1Q{VLANIdentifier: uint16(100 + i), Type: layers.EthernetTypeDot1Q}
			if i == s.tags-1 {
				d.Type = ipType
			}
			ls = append(ls, d)
		}
	}
	proto := layers.IPProtocolTCP
	if s.udp {
		proto = layers.IPProtocolUDP
	}
	var nl gopacket.NetworkLayer
	if s.v6 {
		ip := &layers.IPv6{Version: 6, TrafficClass: 0x10, FlowLabel: 0x12345, NextHeader: proto, HopLimit: 64, SrcIP: ip6a, DstIP: ip6b}
		ls, nl = append(ls, ip), ip
	} else {
		ip := &layers.IPv4{Version: 4, TOS: 0x10, TTL: 64, Id: s.id, Protocol: proto, SrcIP: ip4a, DstIP: ip4b}
		if s.df {
			ip.Flags = layers.IPv4DontFragment
		}
		if s.ipOpts {
			ip.Options = []layers.IPv4Option{{OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 0}}
		}
		ls, nl = append(ls, ip), ip
	}
	if s.udp {
		u := &layers.UDP{SrcPort: 40000, DstPort: 5201}
		u.SetNetworkLayerForChecksum(nl)
		ls = append(ls, u)
	} else {
		tcp := &layers.TCP{SrcPort: 40000, DstPort: 5201, Seq: s.seq, Ack: 0x01020304, ACK: true,
			FIN: s.fin, PSH: s.psh, CWR: s.cwr, Window: 502}
		if s.tcpOpts {
			tcp.Options = []layers.TCPOption{
				{OptionType: layers.TCPOptionKindNop}, {OptionType: layers.TCPOptionKindNop},
				{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10, OptionData: []byte{0, 0, 1, 0, 0, 0, 2, 0}},
			}
		}
		tcp.SetNetworkLayerForChecksum(nl)
		ls = append(ls, tcp)
	}
	payload := pattern(s.payload, s.payload)
	ls = append(ls, gopacket.Payload(payload))
	sb := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(sb, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	b := built{frame: sb.Bytes(), l3: 14 + 4*s.tags, payload: payload}
	// gopacket pads short frames to 60 bytes; the kernel does not.
	if s.v6 {
		b.frame = b.frame[:b.l3+40+int(binary.BigEndian.Uint16(b.frame[b.l3+4:]))]
	} else {
		b.frame = b.frame[:b.l3+int(binary.BigEndian.Uint16(b.frame[b.l3+2:]))]
	}
	if s.v6 {
		b.l4 = b.l3 + 40
		if s.hbh {
			// Splice in a hop-by-hop header: next header, length, PadN.
			f := append([]byte(nil), b.frame[:b.l4]...)
			f = append(f, f[b.l3+6], 0, 1, 4, 0, 0, 0, 0)
			f = append(f, b.frame[b.l4:]...)
			f[b.l3+6] = 0
			binary.BigEndian.PutUint16(f[b.l3+4:], binary.BigEndian.Uint16(f[b.l3+4:])+8)
			b.frame, b.l4 = f, b.l4+8
		}
	} else {
		b.l4 = b.l3 + int(b.frame[b.l3]&0xf)*4
	}
	gso, l4len, off := uint8(vnet.GSOTCPv4), 8, 6
	if s.udp {
		gso = vnet.GSOUDPL4
	} else {
		l4len, off = int(b.frame[b.l4+12]>>4)*4, 16
		if s.v6 {
			gso = vnet.GSOTCPv6
		}
	}
	if s.cwr {
		gso |= vnet.GSOECN
	}
	b.hlen = b.l4 + l4len
	// The kernel leaves the pseudo-header's sum in the checksum field.
	src, dst := nl.NetworkFlow().Src().Raw(), nl.NetworkFlow().Dst().Raw()
	binary.BigEndian.PutUint16(b.frame[b.l4+off:], uint16(refPseudo(src, dst, uint8(proto), len(b.frame)-b.l4)))
	b.h = vnet.Hdr{
		Flags:      vnet.FlagNeedsCsum,
		GSOType:    gso,
		HdrLen:     uint16(min(len(b.frame), b.hlen+100)), // as tun does: the linear part, payload and all
		GSOSize:    uint16(s.mss),
		CsumStart:  uint16(b.l4),
		CsumOffset: uint16(off),
	}
	if s.noCsum {
		b.h.Flags = 0
	}
	return b
}

// decoded is a segment as gopacket reads it.
type decoded struct {
	ip4  *layers.IPv4
	ip6  *layers.IPv6
	tcp  *layers.TCP
	udp  *layers.UDP
	body []byte
}

// decode reads frame with gopacket and checks its IP and L4 checksums
// and lengths.
func decode(frame []byte) (decoded, error) {
	var d decoded
	p := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	if e := p.ErrorLayer(); e != nil {
		return d, fmt.Errorf("decoding: %v", e.Error())
	}
	var src, dst net.IP
	var l4 []byte
	var proto uint8
	d.ip4, _ = p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	d.ip6, _ = p.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
	switch {
	case d.ip4 != nil:
		h := d.ip4.Contents
		if refSum(h, 0) != 0xffff {
			return d, fmt.Errorf("IPv4 header checksum %#04x does not verify", d.ip4.Checksum)
		}
		if int(d.ip4.Length) != len(h)+len(d.ip4.Payload) {
			return d, fmt.Errorf("IPv4 length %d, packet of %d", d.ip4.Length, len(h)+len(d.ip4.Payload))
		}
		src, dst, l4, proto = d.ip4.SrcIP, d.ip4.DstIP, d.ip4.Payload, uint8(d.ip4.Protocol)
	case d.ip6 != nil:
		// gopacket leaves a hop-by-hop header out of the IPv6 layer's payload.
		rest, plen := d.ip6.Payload, len(d.ip6.Payload)
		proto = uint8(d.ip6.NextHeader)
		if hbh, ok := p.Layer(layers.LayerTypeIPv6HopByHop).(*layers.IPv6HopByHop); ok {
			rest, proto, plen = hbh.Payload, uint8(hbh.NextHeader), len(hbh.Contents)+len(hbh.Payload)
		}
		if int(d.ip6.Length) != plen {
			return d, fmt.Errorf("IPv6 payload length %d, payload of %d", d.ip6.Length, plen)
		}
		src, dst, l4 = d.ip6.SrcIP, d.ip6.DstIP, rest
	default:
		return d, fmt.Errorf("no IP layer")
	}
	if refSum(l4, refPseudo(src, dst, proto, len(l4))) != 0xffff {
		return d, fmt.Errorf("L4 checksum does not verify")
	}
	d.tcp, _ = p.Layer(layers.LayerTypeTCP).(*layers.TCP)
	d.udp, _ = p.Layer(layers.LayerTypeUDP).(*layers.UDP)
	switch {
	case d.tcp != nil:
		d.body = d.tcp.Payload
	case d.udp != nil:
		if int(d.udp.Length) != len(l4) {
			return d, fmt.Errorf("UDP length %d, datagram of %d", d.udp.Length, len(l4))
		}
		if d.udp.Checksum == 0 {
			return d, fmt.Errorf("UDP checksum 0 (none)")
		}
		d.body = d.udp.Payload
	default:
		return d, fmt.Errorf("no TCP or UDP layer")
	}
	return d, nil
}

// segment cuts b with vnet.Segment into a buffer of just the size it
// asks for.
func segment(t testing.TB, b built) [][]byte {
	t.Helper()
	n, err := vnet.SegmentedLen(b.frame, b.h)
	if err != nil {
		t.Fatalf("SegmentedLen: %v", err)
	}
	segs, err := vnet.Segment(b.frame, b.h, make([]byte, n), nil)
	if err != nil {
		t.Fatalf("Segment: %v", err)
	}
	return segs
}

// checkSegments checks that segs are what the super-frame b, built from s,
// cuts into.
func checkSegments(t *testing.T, s spec, b built, segs [][]byte) {
	t.Helper()
	want := max(1, (s.payload+s.mss-1)/s.mss)
	if len(segs) != want {
		t.Fatalf("%d segments, want %d", len(segs), want)
	}
	if n := b.h.Segments(len(b.frame)); n < want {
		t.Errorf("Hdr.Segments(%d) = %d, fewer than %d", len(b.frame), n, want)
	}
	for i, seg := range segs {
		d, err := decode(seg)
		if err != nil {
			t.Fatalf("segment %d of %d: %v", i, len(segs), err)
		}
		if !bytes.Equal(seg[:b.l3], b.frame[:b.l3]) {
			t.Errorf("segment %d: Ethernet header % x, want % x", i, seg[:b.l3], b.frame[:b.l3])
		}
		lo := i * s.mss
		if body := b.payload[lo:min(lo+s.mss, len(b.payload))]; !bytes.Equal(d.body, body) {
			t.Fatalf("segment %d: payload of %d bytes differs from the super-frame's %d at %d", i, len(d.body), len(body), lo)
		}
		if d.ip4 != nil && d.ip4.Id != s.id+uint16(i) {
			t.Errorf("segment %d: IPv4 ID %#x, want %#x", i, d.ip4.Id, s.id+uint16(i))
		}
		if d.ip6 != nil && (d.ip6.FlowLabel != 0x12345 || d.ip6.TrafficClass != 0x10) {
			t.Errorf("segment %d: flow label %#x, traffic class %#x", i, d.ip6.FlowLabel, d.ip6.TrafficClass)
		}
		if tcp := d.tcp; tcp != nil {
			last := i == len(segs)-1
			if tcp.Seq != s.seq+uint32(lo) {
				t.Errorf("segment %d: seq %#x, want %#x", i, tcp.Seq, s.seq+uint32(lo))
			}
			if !tcp.ACK || tcp.Ack != 0x01020304 || tcp.Window != 502 || tcp.SYN || tcp.RST {
				t.Errorf("segment %d: flags or fields changed: %+v", i, tcp)
			}
			if tcp.FIN != (s.fin && last) || tcp.PSH != (s.psh && last) || tcp.CWR != (s.cwr && i == 0) {
				t.Errorf("segment %d of %d: FIN %v PSH %v CWR %v", i, len(segs), tcp.FIN, tcp.PSH, tcp.CWR)
			}
			if got, want := len(tcp.Contents), b.hlen-b.l4; got != want {
				t.Errorf("segment %d: TCP header of %d bytes, want %d", i, got, want)
			}
		}
	}
}
