package vxlan

import (
	"bytes"
	"encoding/binary"
	"math/rand"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/ipn-project/ipn/internal/netnstest"
)

// How ipFrame sets the L4 checksum.
const (
	csumDone    = iota // finished
	csumPartial        // the pseudo-header's sum, folded, as Linux leaves it to a device
	csumNone           // 0
)

// ipFrame returns an Ethernet frame from src to dst, behind a VLAN tag if
// tagged, of an IP packet from sip to dip of protocol proto holding the
// L4 segment l4 (whose checksum field ipFrame sets as csum says), then
// pad bytes of Ethernet padding.
func ipFrame(dst, src []byte, tagged bool, sip, dip netip.Addr, proto uint8, l4 []byte, csum, pad int) []byte {
	l4 = bytes.Clone(l4)
	f := append(append([]byte(nil), dst...), src...)
	if tagged {
		f = append(f, 0x81, 0x00, 0, 7)
	}
	var ip, ph []byte
	if sip.Is4() {
		f = append(f, 0x08, 0x00)
		ip = make([]byte, 20)
		ip[0], ip[8], ip[9] = 0x45, 64, proto
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(l4)))
		copy(ip[12:], sip.AsSlice())
		copy(ip[16:], dip.AsSlice())
		binary.BigEndian.PutUint16(ip[10:], csum16(ip))
		ph = append(append([]byte(nil), ip[12:20]...), 0, proto, byte(len(l4)>>8), byte(len(l4)))
	} else {
		f = append(f, 0x86, 0xdd)
		ip = make([]byte, 40)
		ip[0], ip[6], ip[7] = 0x60, proto, 64
		binary.BigEndian.PutUint16(ip[4:], uint16(len(l4)))
		copy(ip[8:], sip.AsSlice())
		copy(ip[24:], dip.AsSlice())
		ph = append(append([]byte(nil), ip[8:40]...), 0, 0, byte(len(l4)>>8), byte(len(l4)), 0, 0, 0, proto)
	}
	at := 16
	if proto == protoUDP {
		at = 6
	}
	l4[at], l4[at+1] = 0, 0
	switch csum {
	case csumDone:
		c := csum16(append(bytes.Clone(ph), l4...))
		if c == 0 && proto == protoUDP {
			c = 0xffff
		}
		binary.BigEndian.PutUint16(l4[at:], c)
	case csumPartial:
		binary.BigEndian.PutUint16(l4[at:], ^csum16(ph))
	}
	return append(append(append(f, ip...), l4...), make([]byte, pad)...)
}

// tcpSeg returns a TCP segment from port 40000 to 7003 with flags and
// payload, options opts (a multiple of 4 bytes) and a window of win.
func tcpSeg(seq, ack uint32, flags uint8, win uint16, opts, payload []byte) []byte {
	h := make([]byte, 20, 20+len(opts)+len(payload))
	binary.BigEndian.PutUint16(h, 40000)
	binary.BigEndian.PutUint16(h[2:], 7003)
	binary.BigEndian.PutUint32(h[4:], seq)
	binary.BigEndian.PutUint32(h[8:], ack)
	h[12], h[13] = byte((20+len(opts))/4)<<4, flags
	binary.BigEndian.PutUint16(h[14:], win)
	return append(append(h, opts...), payload...)
}

// udpSeg returns a UDP datagram from port 7000 to 7001 holding payload.
func udpSeg(payload []byte) []byte {
	u := make([]byte, 8, 8+len(payload))
	binary.BigEndian.PutUint16(u, 7000)
	binary.BigEndian.PutUint16(u[2:], 7001)
	binary.BigEndian.PutUint16(u[4:], uint16(8+len(payload)))
	return append(u, payload...)
}

// l4Valid reports whether the TCP or UDP packet of frame, which parseInner
// must find, has a right checksum (a UDP one of 0 over IPv4 is none).
func l4Valid(t *testing.T, frame []byte) bool {
	t.Helper()
	in, ok := parseInner(frame)
	if !ok {
		t.Fatalf("no TCP or UDP packet in %x", frame)
	}
	ip, l4 := frame[in.l3:], frame[in.l4:in.end]
	var ph []byte
	if in.v6 {
		ph = append(bytes.Clone(ip[8:40]), 0, 0, byte(len(l4)>>8), byte(len(l4)), 0, 0, 0, in.proto)
	} else {
		ph = append(bytes.Clone(ip[12:20]), 0, in.proto, byte(len(l4)>>8), byte(len(l4)))
	}
	if in.proto == protoUDP && !in.v6 && binary.BigEndian.Uint16(l4[6:]) == 0 {
		return true
	}
	return csum16(append(ph, l4...)) == 0
}

func TestFinishPartial(t *testing.T) {
	dst, src := []byte{2, 0, 0, 0, 0, 1}, []byte{2, 0, 0, 0, 0, 2}
	a4, b4 := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	a6, b6 := netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2")
	payload := bytes.Repeat([]byte("partial!"), 100)
	syn := tcpSeg(1, 0, 0x02, 65535, []byte{2, 4, 5, 0xb4}, nil)
	data := tcpSeg(7, 9, 0x18, 500, nil, payload)
	odd := tcpSeg(7, 9, 0x18, 500, nil, payload[:13])
	for _, tc := range []struct {
		name   string
		frame  []byte
		finish bool // finishPartial finishes it
	}{
		{"tcp4 partial", ipFrame(dst, src, false, a4, b4, protoTCP, data, csumPartial, 0), true},
		{"tcp4 syn partial", ipFrame(dst, src, false, a4, b4, protoTCP, syn, csumPartial, 0), true},
		{"tcp4 odd length partial", ipFrame(dst, src, false, a4, b4, protoTCP, odd, csumPartial, 0), true},
		{"tcp4 partial, padded", ipFrame(dst, src, false, a4, b4, protoTCP, tcpSeg(1, 2, 0x10, 9, nil, nil), csumPartial, 6), true},
		{"tcp4 partial in a vlan tag", ipFrame(dst, src, true, a4, b4, protoTCP, data, csumPartial, 0), true},
		{"tcp6 partial", ipFrame(dst, src, false, a6, b6, protoTCP, data, csumPartial, 0), true},
		{"udp4 partial", ipFrame(dst, src, false, a4, b4, protoUDP, udpSeg(payload), csumPartial, 0), true},
		{"udp6 partial", ipFrame(dst, src, false, a6, b6, protoUDP, udpSeg(payload), csumPartial, 0), true},
		{"tcp4 done", ipFrame(dst, src, false, a4, b4, protoTCP, data, csumDone, 0), false},
		{"tcp6 done", ipFrame(dst, src, false, a6, b6, protoTCP, data, csumDone, 0), false},
		{"udp4 done", ipFrame(dst, src, false, a4, b4, protoUDP, udpSeg(payload), csumDone, 0), false},
		{"udp4 without checksum", ipFrame(dst, src, false, a4, b4, protoUDP, udpSeg(payload), csumNone, 0), false},
	} {
		f := bytes.Clone(tc.frame)
		if got := finishPartial(f); got != tc.finish {
			t.Errorf("%s: finishPartial %v, want %v", tc.name, got, tc.finish)
		}
		if !l4Valid(t, f) {
			t.Errorf("%s: checksum wrong after finishPartial", tc.name)
		}
		if in, _ := parseInner(f); !bytes.Equal(f[:in.l4], tc.frame[:in.l4]) || !bytes.Equal(f[in.end:], tc.frame[in.end:]) {
			t.Errorf("%s: finishPartial changed more than the L4 packet", tc.name)
		}
	}

	// A wrong checksum that is not the pseudo-header's sum is corruption:
	// the frame goes on unchanged, for its receiver to drop. So do frames
	// that hold no TCP or UDP packet parseInner takes.
	bad := ipFrame(dst, src, false, a4, b4, protoTCP, data, csumDone, 0)
	bad[len(bad)-1] ^= 0x40
	frag := ipFrame(dst, src, false, a4, b4, protoTCP, data, csumPartial, 0)
	frag[EthHeaderLen+6] = 0x20 // more fragments
	short := ipFrame(dst, src, false, a4, b4, protoTCP, data, csumPartial, 0)
	binary.BigEndian.PutUint16(short[EthHeaderLen+2:], 2000) // longer than the frame
	for name, f := range map[string][]byte{
		"corrupt":         bad,
		"fragment":        frag,
		"cut short":       short,
		"arp":             append(append(append([]byte(nil), dst...), src...), 0x08, 0x06, 0, 1, 8, 0, 6, 4),
		"ethernet header": append(append(append([]byte(nil), dst...), src...), 0x08, 0x00),
		"runt":            {1, 2, 3},
	} {
		g := bytes.Clone(f)
		if finishPartial(g) || !bytes.Equal(g, f) {
			t.Errorf("%s: changed", name)
		}
	}
}

// A Linux VXLAN device over a veth with its defaults sends TCP as it
// would to hardware: the SYN-ACK with its checksum left to finish, and the
// data in super-frames of up to 64 KiB, one per datagram, their checksums
// unfinished. A connection made by hand through the end receives every
// frame whole, no longer than a VXLAN datagram on the veth carries, with
// right checksums, and the data in order and intact.
func TestKernelVXLANTCP(t *testing.T) {
	kmac, mymac := []byte{2, 0, 0, 0, 0x96, 1}, []byte{2, 0, 0, 0, 0x96, 2}
	me := netnsAdd(t)
	kern := netnsAdd(t,
		"link add v0 type veth peer name v1 netns "+me,
		"addr add 10.96.0.1/24 dev v0",
		"link set v0 up",
		"link add vx0 address 02:00:00:00:96:01 type vxlan id 10 remote 10.96.0.2 dstport 4789 srcport 4789 4790 dev v0",
		"addr add 192.168.96.1/24 dev vx0",
		"link set vx0 up",
		"neigh add 192.168.96.2 lladdr 02:00:00:00:96:02 dev vx0")
	netnsRun(t, me, "addr add 10.96.0.2/24 dev v1", "link set v1 up")
	kip, myip := netip.MustParseAddr("192.168.96.1"), netip.MustParseAddr("192.168.96.2")
	var e *Endpoint
	var ln net.Listener
	netnstest.In(t, me, func() { e = open(t, "10.96.0.1/vni=10") })
	netnstest.In(t, kern, func() {
		var err error
		if ln, err = net.Listen("tcp", "192.168.96.1:7003"); err != nil {
			t.Fatal(err)
		}
	})
	t.Cleanup(func() { ln.Close() })
	data := make([]byte, 1<<20)
	rand.New(rand.NewSource(1)).Read(data)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetWriteDeadline(time.Now().Add(30 * time.Second))
		c.Write(data)
	}()
	send := func(seq, ack uint32, flags uint8, opts []byte) {
		// A window of 65535 << 7 (8 MiB): the sender's congestion window
		// alone bounds its flights.
		f := ipFrame(kmac, mymac, false, myip, kip, protoTCP, tcpSeg(seq, ack, flags, 65535, opts, nil), csumDone, 0)
		e.Write([][]byte{f}) // lost if the end is closed: then Read fails

	}
	timer := time.AfterFunc(20*time.Second, func() { e.Close() })
	defer timer.Stop()
	bufs, sizes := [][]byte{make([]byte, 1<<16)}, []int{0}
	// read returns the next TCP segment to us, its IP packet checked.
	read := func() (f []byte, seg []byte) {
		for {
			if _, err := e.Read(bufs, sizes); err != nil {
				t.Fatalf("no more frames: %v", err)
			}
			f := bufs[0][:sizes[0]]
			in, ok := parseInner(f)
			if !ok || !bytes.Equal(f[:6], mymac) || in.proto != protoTCP || in.v6 {
				continue // ARP, IPv6 neighbour discovery
			}
			if in.end != len(f) || csum16(f[in.l3:in.l4]) != 0 {
				t.Fatalf("a frame of %d bytes whose IP packet ends at %d, IP checksum %#04x", len(f), in.end, csum16(f[in.l3:in.l4]))
			}
			if !l4Valid(t, f) {
				t.Fatalf("TCP checksum wrong in a frame of %d bytes (stats %+v)", len(f), e.OffloadStats())
			}
			return f, f[in.l4:]
		}
	}

	// The handshake: SYNs every 200 ms until the device answers (the first
	// may find it not ready).
	const iss = 1000
	synOpts := []byte{2, 4, 0x05, 0xb4, 1, 3, 3, 7} // MSS 1460, NOP, window scale 7
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			send(iss, 0, 0x02, synOpts)
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	var synAck []byte
	for synAck == nil {
		if _, seg := read(); seg[13] == 0x12 && binary.BigEndian.Uint32(seg[8:]) == iss+1 {
			synAck = seg
		}
	}
	close(stop)
	<-stopped
	rcvNxt := binary.BigEndian.Uint32(synAck[4:]) + 1
	send(iss+1, rcvNxt, 0x10, nil)

	limit := e.linkFrame(netip.MustParseAddr("10.96.0.1"))
	if limit != 1500-20-8-HeaderLen {
		t.Fatalf("frames up to %d bytes on the veth, want %d", limit, 1500-20-8-HeaderLen)
	}
	var got []byte
	for fin := false; !fin; {
		f, seg := read()
		if len(f) > limit {
			t.Fatalf("a frame of %d bytes, longer than a VXLAN datagram on the veth carries (%d)", len(f), limit)
		}
		seq, flags := binary.BigEndian.Uint32(seg[4:]), seg[13]
		payload := seg[int(seg[12]>>4)*4:]
		if seq == rcvNxt {
			got = append(got, payload...)
			rcvNxt += uint32(len(payload))
			if flags&0x01 != 0 {
				rcvNxt++
				fin = true
			}
		}
		send(iss+1, rcvNxt, 0x10, nil)
	}
	send(iss+1, rcvNxt, 0x11, nil) // our FIN
	if !bytes.Equal(got, data) {
		t.Fatalf("got %d bytes, want the %d sent", len(got), len(data))
	}
	s := e.OffloadStats()
	t.Logf("offload stats %+v", s)
	if s.Finished == 0 || s.SuperFrames == 0 {
		t.Fatalf("offload stats %+v: the device sent no checksum left to finish or no super-frame (veth tx offloads off?)", s)
	}
}
