package vnet_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"syscall"
	"testing"

	"github.com/ipn-project/ipn/endpoint/vnet"
)

// segCases are super-frames of every kind Segment takes.
var segCases = map[string]spec{
	"tcp4":              {payload: 20000, mss: 1448, df: true, id: 0xfff0, seq: 0xffffe000},
	"tcp4 max":          {payload: 65535 - 40, mss: 1448, id: 7, seq: 1, psh: true},
	"tcp4 psh fin":      {payload: 5000, mss: 1000, psh: true, fin: true, seq: 99},
	"tcp4 ecn":          {payload: 4000, mss: 1448, cwr: true, psh: true},
	"tcp4 options":      {payload: 9000, mss: 1436, tcpOpts: true, ipOpts: true, id: 0xffff},
	"tcp4 vlan":         {payload: 7000, mss: 1444, tags: 1, psh: true},
	"tcp4 qinq":         {payload: 7000, mss: 1440, tags: 2, tcpOpts: true},
	"tcp4 one":          {payload: 1000, mss: 1448, psh: true},
	"tcp4 exact":        {payload: 3 * 1448, mss: 1448},
	"tcp4 tiny mss":     {payload: 300, mss: 1},
	"tcp4 no payload":   {payload: 0, mss: 1448, fin: true},
	"tcp4 no csum flag": {payload: 5000, mss: 1448, noCsum: true},
	"tcp6":              {v6: true, payload: 30000, mss: 1428, seq: 0xfffffff0, psh: true},
	"tcp6 max":          {v6: true, payload: 65535 - 40 - 32, mss: 1428, tcpOpts: true},
	"tcp6 ecn fin":      {v6: true, payload: 6000, mss: 1428, cwr: true, fin: true},
	"tcp6 vlan hbh":     {v6: true, payload: 6000, mss: 1400, tags: 2, hbh: true, psh: true},
	"udp4":              {udp: true, payload: 12000, mss: 1472, id: 0xfffe},
	"udp4 vlan":         {udp: true, payload: 3000, mss: 1000, tags: 1},
	"udp4 uneven":       {udp: true, payload: 3001, mss: 1000},
	"udp6":              {udp: true, v6: true, payload: 60000, mss: 1452},
	"udp6 hbh":          {udp: true, v6: true, payload: 5000, mss: 1200, hbh: true},
}

func TestSegment(t *testing.T) {
	for name, s := range segCases {
		t.Run(name, func(t *testing.T) {
			b := build(t, s)
			orig := append([]byte(nil), b.frame...)
			segs := segment(t, b)
			checkSegments(t, s, b, segs)
			if !bytes.Equal(b.frame, orig) {
				t.Error("Segment changed its input")
			}
			var got []byte
			for _, seg := range segs {
				d, _ := decode(seg)
				got = append(got, d.body...)
			}
			if !bytes.Equal(got, b.payload) {
				t.Errorf("segments carry %d bytes, not the super-frame's %d", len(got), len(b.payload))
			}
		})
	}
}

// Segments appended to a slice that has room do not allocate, and they
// are appended after what is there.
func TestSegmentAppends(t *testing.T) {
	b := build(t, spec{payload: 20000, mss: 1448})
	n, _ := vnet.SegmentedLen(b.frame, b.h)
	buf := make([]byte, n)
	segs := make([][]byte, 1, 64)
	allocs := testing.AllocsPerRun(100, func() {
		var err error
		if segs, err = vnet.Segment(b.frame, b.h, buf, segs[:1]); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("Segment allocates %v times", allocs)
	}
	if len(segs) != 1+14 || segs[0] != nil {
		t.Errorf("%d segments, the first %v", len(segs), segs[0])
	}
	// A segment has no room past its end: appending to it copies.
	if s := segs[1]; cap(s) != len(s) {
		t.Errorf("segment of %d bytes has capacity %d", len(s), cap(s))
	}
}

func TestSegmentPlain(t *testing.T) {
	frame := build(t, spec{payload: 100, mss: 1448}).frame
	segs, err := vnet.Segment(frame, vnet.Hdr{}, nil, nil)
	if err != nil || len(segs) != 1 || &segs[0][0] != &frame[0] || len(segs[0]) != len(frame) {
		t.Fatalf("plain frame: %d segments, %v; want the frame itself", len(segs), err)
	}
	// DataValid alone asks for nothing either.
	segs, err = vnet.Segment(frame, vnet.Hdr{Flags: vnet.FlagDataValid}, nil, nil)
	if err != nil || len(segs) != 1 || &segs[0][0] != &frame[0] {
		t.Fatalf("data-valid frame: %d segments, %v", len(segs), err)
	}
	if n, err := vnet.SegmentedLen(frame, vnet.Hdr{}); n != 0 || err != nil {
		t.Errorf("SegmentedLen of a plain frame: %d, %v", n, err)
	}
}

// A frame with only FlagNeedsCsum gets its checksum finished, in a copy by
// Segment and in place by Finish.
func TestFinish(t *testing.T) {
	for _, s := range []spec{
		{payload: 1000, mss: 1448},
		{payload: 999, mss: 1448, v6: true, tags: 1},
		{payload: 1001, mss: 1448, udp: true},
		{payload: 0, mss: 1448, udp: true, v6: true},
		{payload: 77, mss: 1448, hbh: true, v6: true},
	} {
		b := build(t, s)
		b.h.GSOType, b.h.GSOSize = vnet.GSONone, 0
		if _, err := decode(b.frame); err == nil {
			t.Fatalf("%+v: built frame's checksum verifies before it is finished", s)
		}
		orig := append([]byte(nil), b.frame...)
		n, err := vnet.SegmentedLen(b.frame, b.h)
		if err != nil || n != len(b.frame) {
			t.Fatalf("SegmentedLen: %d, %v; want %d", n, err, len(b.frame))
		}
		segs, err := vnet.Segment(b.frame, b.h, make([]byte, n+10), nil)
		if err != nil || len(segs) != 1 {
			t.Fatalf("Segment: %d segments, %v", len(segs), err)
		}
		if _, err := decode(segs[0]); err != nil {
			t.Errorf("%+v: Segment: %v", s, err)
		}
		if !bytes.Equal(b.frame, orig) {
			t.Error("Segment changed its input")
		}
		if err := vnet.Finish(b.frame, b.h); err != nil {
			t.Fatal(err)
		}
		if _, err := decode(b.frame); err != nil {
			t.Errorf("%+v: Finish: %v", s, err)
		}
		if !bytes.Equal(b.frame, segs[0]) {
			t.Error("Finish and Segment differ")
		}
		// Nothing asked, nothing done.
		before := append([]byte(nil), orig...)
		if err := vnet.Finish(orig, vnet.Hdr{CsumStart: 9999}); err != nil || !bytes.Equal(orig, before) {
			t.Errorf("Finish without FlagNeedsCsum: %v", err)
		}
	}
	// Finishing a super-frame as a whole makes one valid checksum.
	b := build(t, spec{payload: 30000, mss: 1448})
	if err := vnet.Finish(b.frame, b.h); err != nil {
		t.Fatal(err)
	}
	if _, err := decode(b.frame); err != nil {
		t.Errorf("finished super-frame: %v", err)
	}
}

// UDP's checksum is never 0 (that says "none"): a sum that comes to 0 is
// sent as 0xffff, as the kernel does.
func TestFinishUDPZero(t *testing.T) {
	b := build(t, spec{payload: 2, mss: 1448, udp: true})
	b.h.GSOType = vnet.GSONone
	// Choose the payload so that the finished checksum is 0: first finish,
	// then add the checksum into the payload, which cancels it.
	f := append([]byte(nil), b.frame...)
	if err := vnet.Finish(f, b.h); err != nil {
		t.Fatal(err)
	}
	c := binary.BigEndian.Uint16(f[b.l4+6:])
	binary.BigEndian.PutUint16(b.frame[b.hlen:], binary.BigEndian.Uint16(b.frame[b.hlen:])+c)
	if binary.BigEndian.Uint16(b.frame[b.hlen:]) < c { // carried out: add it back in
		binary.BigEndian.PutUint16(b.frame[b.hlen:], binary.BigEndian.Uint16(b.frame[b.hlen:])+1)
	}
	if err := vnet.Finish(b.frame, b.h); err != nil {
		t.Fatal(err)
	}
	if c := binary.BigEndian.Uint16(b.frame[b.l4+6:]); c != 0xffff {
		t.Fatalf("UDP checksum %#04x, want 0xffff", c)
	}
	if _, err := decode(b.frame); err != nil {
		t.Error(err)
	}
	// And segmenting such a datagram does the same.
	b.h.GSOType, b.h.GSOSize = vnet.GSOUDPL4, 100
	binary.BigEndian.PutUint16(b.frame[b.l4+6:], uint16(refPseudo(ip4a, ip4b, 17, len(b.frame)-b.l4)))
	segs := segment(t, b)
	if c := binary.BigEndian.Uint16(segs[0][b.l4+6:]); len(segs) != 1 || c != 0xffff {
		t.Fatalf("%d segments, UDP checksum %#04x, want 0xffff", len(segs), c)
	}
}

func TestSegmentReject(t *testing.T) {
	type mod func(b *built)
	set := func(off int, v ...byte) mod { return func(b *built) { copy(b.frame[off:], v) } }
	at := func(f func(b *built) int, v ...byte) mod { return func(b *built) { copy(b.frame[f(b):], v) } }
	l3 := func(b *built) int { return b.l3 }
	l4 := func(b *built) int { return b.l4 }
	tcp4, tcp6, udp4 := spec{payload: 5000, mss: 1448}, spec{payload: 5000, mss: 1448, v6: true}, spec{payload: 5000, mss: 1000, udp: true}
	cases := []struct {
		name string
		s    spec
		mod  mod
	}{
		{"gso size 0", tcp4, func(b *built) { b.h.GSOSize = 0 }},
		{"ufo", udp4, func(b *built) { b.h.GSOType = vnet.GSOUDP }},
		{"unknown gso type", tcp4, func(b *built) { b.h.GSOType = 2 }},
		{"gso type 0x7f", tcp4, func(b *built) { b.h.GSOType = 0x7f }},
		{"ecn on udp", udp4, func(b *built) { b.h.GSOType |= vnet.GSOECN }},
		{"tcp4 type on ipv6", tcp6, func(b *built) { b.h.GSOType = vnet.GSOTCPv4 }},
		{"tcp6 type on ipv4", tcp4, func(b *built) { b.h.GSOType = vnet.GSOTCPv6 }},
		{"udp type on tcp", tcp4, func(b *built) { b.h.GSOType = vnet.GSOUDPL4; b.h.CsumOffset = 6 }},
		{"tcp type on udp", udp4, func(b *built) { b.h.GSOType = vnet.GSOTCPv4; b.h.CsumOffset = 16 }},
		{"csum start past end", tcp4, func(b *built) { b.h.GSOType, b.h.CsumStart = 0, uint16(len(b.frame)) }},
		{"csum field past end", tcp4, func(b *built) { b.h.GSOType, b.h.CsumStart, b.h.CsumOffset = 0, uint16(len(b.frame)-2), 1 }},
		{"csum offset past end", tcp4, func(b *built) { b.h.GSOType, b.h.CsumStart, b.h.CsumOffset = 0, 0, 0xffff }},
		{"csum start not at l4", tcp4, func(b *built) { b.h.CsumStart += 4 }},
		{"csum start at ip", tcp6, func(b *built) { b.h.CsumStart = uint16(b.l3) }},
		{"csum offset not tcp's", tcp4, func(b *built) { b.h.CsumOffset = 6 }},
		{"csum offset not udp's", udp4, func(b *built) { b.h.CsumOffset = 16 }},
		{"ipv4 total length long", tcp4, at(func(b *built) int { return b.l3 + 2 }, 0x13, 0x9c)},
		{"ipv4 total length short", tcp4, at(func(b *built) int { return b.l3 + 2 }, 0x00, 0x40)},
		{"ipv6 payload length", tcp6, at(func(b *built) int { return b.l3 + 4 }, 0, 40)},
		{"ipv4 more fragments", tcp4, at(func(b *built) int { return b.l3 + 6 }, 0x20, 0)},
		{"ipv4 fragment offset", tcp4, at(func(b *built) int { return b.l3 + 6 }, 0, 1)},
		{"ipv4 ihl 4", tcp4, at(l3, 0x44)},
		{"ipv4 ihl 15", tcp4, at(l3, 0x4f)},
		{"version 6 in ipv4", tcp4, at(l3, 0x65)},
		{"version 4 in ipv6", tcp6, at(l3, 0x40)},
		{"ipv4 protocol icmp", tcp4, at(func(b *built) int { return b.l3 + 9 }, 1)},
		{"ipv6 routing header", tcp6, at(func(b *built) int { return b.l3 + 6 }, 43)},
		{"ipv6 fragment header", tcp6, at(func(b *built) int { return b.l3 + 6 }, 44)},
		{"ipv6 no next header", tcp6, at(func(b *built) int { return b.l3 + 6 }, 59)},
		{"ipv6 hbh past end", spec{v6: true, payload: 0, mss: 100, hbh: true}, at(func(b *built) int { return b.l3 + 41 }, 200)},
		{"not ip", tcp4, set(12, 0x08, 0x06)},
		{"vlan then not ip", spec{payload: 5000, mss: 1448, tags: 1}, set(16, 0x08, 0x06)},
		{"tcp data offset 4", tcp4, at(func(b *built) int { return b.l4 + 12 }, 0x40)},
		{"udp length", udp4, at(func(b *built) int { return b.l4 + 4 }, 0, 8)},
		{"cut in ethernet", tcp4, func(b *built) { b.frame = b.frame[:13] }},
		{"cut in vlan tag", spec{payload: 1, mss: 1448, tags: 2}, func(b *built) { b.frame = b.frame[:17] }},
		{"cut in ipv4", tcp4, func(b *built) { b.frame = b.frame[:b.l3+19] }},
		{"cut in ipv6", tcp6, func(b *built) { b.frame = b.frame[:b.l3+39] }},
		{"cut in tcp", spec{payload: 0, mss: 100}, func(b *built) {
			b.frame = b.frame[:b.l4+19]
			binary.BigEndian.PutUint16(b.frame[b.l3+2:], 39)
		}},
		{"tcp options past end", spec{payload: 0, mss: 100}, at(l4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xf0)},
		{"cut in udp", spec{payload: 0, mss: 100, udp: true}, func(b *built) {
			b.frame = b.frame[:b.l4+7]
			binary.BigEndian.PutUint16(b.frame[b.l3+2:], 27)
		}},
		{"empty", tcp4, func(b *built) { b.frame = nil }},
		{"too many tags", tcp4, func(b *built) {
			f := append([]byte(nil), b.frame[:12]...)
			for range 9 {
				f = append(f, 0x81, 0, 0, 1)
			}
			b.frame = append(f, b.frame[12:]...)
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := build(t, c.s)
			c.mod(&b)
			n, err := vnet.SegmentedLen(b.frame, b.h)
			if !errors.Is(err, syscall.EINVAL) {
				t.Errorf("SegmentedLen: %d, %v; want EINVAL", n, err)
			}
			prev := [][]byte{{1}}
			segs, err := vnet.Segment(b.frame, b.h, make([]byte, 1<<17), prev)
			if !errors.Is(err, syscall.EINVAL) {
				t.Fatalf("Segment: %d segments, %v; want EINVAL", len(segs), err)
			}
			if len(segs) != 1 || &segs[0][0] != &prev[0][0] {
				t.Errorf("on error, Segment changed segs: %d segments", len(segs))
			}
			t.Log(err)
		})
	}
}

func TestSegmentShortBuffer(t *testing.T) {
	for _, s := range []spec{{payload: 5000, mss: 1448}, {payload: 500, mss: 1448}} {
		b := build(t, s)
		if s.payload < s.mss {
			b.h.GSOType = vnet.GSONone
		}
		n, err := vnet.SegmentedLen(b.frame, b.h)
		if err != nil {
			t.Fatal(err)
		}
		segs, err := vnet.Segment(b.frame, b.h, make([]byte, n-1), nil)
		if !errors.Is(err, io.ErrShortBuffer) || !errors.Is(err, syscall.EINVAL) || segs != nil {
			t.Errorf("buffer a byte short: %d segments, %v", len(segs), err)
		}
		if _, err := vnet.Segment(b.frame, b.h, make([]byte, n), nil); err != nil {
			t.Errorf("buffer of SegmentedLen: %v", err)
		}
	}
}

func TestHdrSegments(t *testing.T) {
	for _, c := range []struct {
		h    vnet.Hdr
		n    int
		want int
	}{
		{vnet.Hdr{}, 65000, 1},
		{vnet.Hdr{Flags: vnet.FlagNeedsCsum}, 65000, 1},
		{vnet.Hdr{GSOType: vnet.GSOTCPv4}, 65000, 1},
		{vnet.Hdr{GSOType: vnet.GSOTCPv4, GSOSize: 1448}, 54 + 1448*3, 3},
		{vnet.Hdr{GSOType: vnet.GSOTCPv4, GSOSize: 1448}, 54 + 1448*3 + 1, 4},
		{vnet.Hdr{GSOType: vnet.GSOTCPv6 | vnet.GSOECN, GSOSize: 1428}, 74 + 1428*2, 2},
		{vnet.Hdr{GSOType: vnet.GSOUDPL4, GSOSize: 100}, 42 + 1000, 10},
		{vnet.Hdr{GSOType: vnet.GSOTCPv4, GSOSize: 1}, 1 << 20, vnet.MaxSegments},
		{vnet.Hdr{GSOType: vnet.GSOTCPv4, GSOSize: 1448}, 10, 1},
		{vnet.Hdr{GSOType: vnet.GSOTCPv4, GSOSize: 1448}, -1, 1},
	} {
		if got := c.h.Segments(c.n); got != c.want {
			t.Errorf("%+v.Segments(%d) = %d, want %d", c.h, c.n, got, c.want)
		}
	}
}
