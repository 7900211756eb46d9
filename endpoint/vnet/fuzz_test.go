package vnet_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"
	"testing"

	"github.com/ipn-project/ipn/endpoint/vnet"
)

// refParse finds the IP, L4 and payload offsets of an ordinary frame the
// slow way and checks its lengths and checksums; it knows the IPv6
// hop-by-hop and destination options headers.
func refParse(f []byte) (l3, l4, hend int, err error) {
	l3 = testL3(f)
	if len(f) < l3+20 {
		return 0, 0, 0, fmt.Errorf("short")
	}
	be := binary.BigEndian
	ip := f[l3:]
	var src, dst []byte
	var proto uint8
	switch ip[0] >> 4 {
	case 4:
		ihl := int(ip[0]&0xf) * 4
		if ihl < 20 || len(ip) < ihl || int(be.Uint16(ip[2:])) != len(ip) {
			return 0, 0, 0, fmt.Errorf("IPv4 lengths")
		}
		if refSum(ip[:ihl], 0) != 0xffff {
			return 0, 0, 0, fmt.Errorf("IPv4 header checksum")
		}
		l4, src, dst, proto = l3+ihl, ip[12:16], ip[16:20], ip[9]
	case 6:
		if len(ip) < 40 || int(be.Uint16(ip[4:])) != len(ip)-40 {
			return 0, 0, 0, fmt.Errorf("IPv6 lengths")
		}
		off, next := 40, ip[6]
		for (next == 0 || next == 60) && len(ip) >= off+8 {
			next, off = ip[off], off+(int(ip[off+1])+1)*8
		}
		if off > len(ip) {
			return 0, 0, 0, fmt.Errorf("IPv6 extension headers")
		}
		l4, src, dst, proto = l3+off, ip[8:24], ip[24:40], next
	default:
		return 0, 0, 0, fmt.Errorf("not IP")
	}
	l4b := f[l4:]
	switch proto {
	case 6:
		if len(l4b) < 20 || int(l4b[12]>>4)*4 > len(l4b) || l4b[12]>>4 < 5 {
			return 0, 0, 0, fmt.Errorf("TCP header")
		}
		hend = l4 + int(l4b[12]>>4)*4
	case 17:
		if len(l4b) < 8 || int(be.Uint16(l4b[4:])) != len(l4b) || be.Uint16(l4b[6:]) == 0 {
			return 0, 0, 0, fmt.Errorf("UDP header")
		}
		hend = l4 + 8
	default:
		return 0, 0, 0, fmt.Errorf("not TCP or UDP")
	}
	if refSum(l4b, refPseudo(src, dst, proto, len(l4b))) != 0xffff {
		return 0, 0, 0, fmt.Errorf("L4 checksum")
	}
	return l3, l4, hend, nil
}

func FuzzSegment(f *testing.F) {
	for _, s := range segCases {
		// Small seeds: the fuzzer minimizes large inputs slowly.
		s.payload, s.mss = min(s.payload, 3000), min(s.mss, 700)
		b := build(f, s)
		hb := make([]byte, vnet.Len)
		b.h.Encode(hb)
		f.Add(hb, b.frame)
	}
	b := build(f, spec{payload: 100, mss: 1448, udp: true})
	hb := make([]byte, vnet.Len)
	vnet.Hdr{Flags: vnet.FlagNeedsCsum, CsumStart: b.h.CsumStart, CsumOffset: 6}.Encode(hb)
	f.Add(hb, b.frame)
	f.Fuzz(func(t *testing.T, hb, frame []byte) {
		h, err := vnet.Decode(hb)
		if err != nil {
			return
		}
		n, lenErr := vnet.SegmentedLen(frame, h)
		size := n
		if lenErr != nil {
			size = 1 << 17
		} else if n > 0 {
			if segs, err := vnet.Segment(frame, h, make([]byte, n-1), nil); err == nil || segs != nil {
				t.Fatalf("a buffer a byte short of %d: %d segments, %v", n, len(segs), err)
			}
		}
		buf := make([]byte, size)
		orig := append([]byte(nil), frame...)
		segs, err := vnet.Segment(frame, h, buf, nil)
		if (err == nil) != (lenErr == nil) {
			t.Fatalf("Segment says %v, SegmentedLen %v", err, lenErr)
		}
		if !bytes.Equal(frame, orig) {
			t.Fatal("Segment changed its input")
		}
		if err != nil {
			if !errors.Is(err, syscall.EINVAL) || segs != nil {
				t.Fatalf("error %v does not wrap EINVAL, or %d segments", err, len(segs))
			}
			return
		}
		if h.Plain() {
			if len(segs) != 1 || len(segs[0]) != len(frame) || (len(frame) > 0 && &segs[0][0] != &frame[0]) {
				t.Fatal("plain frame not passed as it is")
			}
			return
		}
		total := 0
		for _, s := range segs {
			total += len(s)
		}
		if total != n {
			t.Fatalf("segments of %d bytes, SegmentedLen %d", total, n)
		}
		if !h.GSO() {
			return
		}
		if len(segs) > h.Segments(len(frame)) {
			t.Fatalf("%d segments, Hdr.Segments says at most %d", len(segs), h.Segments(len(frame)))
		}
		var body []byte
		hlen := -1
		for i, s := range segs {
			_, _, hend, err := refParse(s)
			if err != nil {
				t.Fatalf("segment %d of %d: %v", i, len(segs), err)
			}
			if hlen >= 0 && hend != hlen {
				t.Fatalf("segment %d: headers of %d bytes, the first's %d", i, hend, hlen)
			}
			hlen = hend
			if p := len(s) - hend; p > int(h.GSOSize) || (p < int(h.GSOSize) && i != len(segs)-1) {
				t.Fatalf("segment %d of %d: %d bytes of payload, GSO size %d", i, len(segs), p, h.GSOSize)
			}
			body = append(body, s[hend:]...)
		}
		if !bytes.Equal(body, frame[hlen:]) {
			t.Fatal("segments do not carry the super-frame's payload")
		}
	})
}

// splitFrames cuts data into frames, each after a 2-byte length.
func splitFrames(data []byte) [][]byte {
	var fs [][]byte
	for len(data) >= 2 {
		n := int(binary.BigEndian.Uint16(data))
		data = data[2:]
		n = min(n, len(data))
		fs = append(fs, data[:n:n])
		data = data[n:]
	}
	return fs
}

// joinFrames is the inverse of splitFrames.
func joinFrames(fs [][]byte) []byte {
	var b []byte
	for _, f := range fs {
		b = binary.BigEndian.AppendUint16(b, uint16(len(f)))
		b = append(b, f...)
	}
	return b
}

// fixFrame sets the checksums of a frame with TCP or UDP over IPv4 or
// IPv6 (no extension headers), so that the fuzzer's changes to headers
// are not all turned away for a wrong checksum.
func fixFrame(f []byte) {
	l3 := testL3(f)
	if len(f) < l3+40 {
		return
	}
	ip := f[l3:]
	var src, dst []byte
	var proto uint8
	l4 := l3 + 40
	switch ip[0] >> 4 {
	case 4:
		ihl := int(ip[0]&0xf) * 4
		if ihl < 20 || len(ip) < ihl+20 {
			return
		}
		ip[10], ip[11] = 0, 0
		binary.BigEndian.PutUint16(ip[10:], ^uint16(refSum(ip[:ihl], 0)))
		l4, src, dst, proto = l3+ihl, ip[12:16], ip[16:20], ip[9]
	case 6:
		src, dst, proto = ip[8:24], ip[24:40], ip[6]
	default:
		return
	}
	off := 16
	if proto == 17 {
		off = 6
	}
	if proto != 6 && proto != 17 || len(f) < l4+off+2 {
		return
	}
	b := f[l4:]
	b[off], b[off+1] = 0, 0
	binary.BigEndian.PutUint16(b[off:], ^uint16(refSum(b, refPseudo(src, dst, proto, len(b)))))
}

func FuzzCoalesce(f *testing.F) {
	f.Add(joinFrames(flow(f, spec{df: true, seq: 5}, 5, 1000)))
	f.Add(append([]byte{0, 0}, joinFrames(flow(f, spec{v6: true, tcpOpts: true}, 3, 500))...))
	mixed := flow(f, spec{tags: 1}, 3, 300)
	mixed = append(mixed, seg(f, spec{udp: true, payload: 10}, nil), []byte{1})
	mixed = append(mixed, flow(f, spec{seq: 900, id: 3}, 3, 200)...)
	f.Add(joinFrames(mixed))
	var c vnet.Coalescer
	f.Fuzz(func(t *testing.T, data []byte) {
		frames := splitFrames(data)
		// A length of 0 first says: fix the checksums of what follows.
		if len(frames) > 0 && len(frames[0]) == 0 {
			for _, fr := range frames[1:] {
				fixFrame(fr)
			}
		}
		var saved [][]byte
		for _, fr := range frames {
			saved = append(saved, append([]byte(nil), fr...))
		}
		out := c.Coalesce(frames)
		in := 0
		for i, o := range out {
			if o.Hdr == (vnet.Hdr{}) {
				if in >= len(frames) || len(o.Data) != len(frames[in]) || (len(o.Data) > 0 && &o.Data[0] != &frames[in][0]) {
					t.Fatalf("frame %d out is not frame %d in", i, in)
				}
				in++
				continue
			}
			if n := len(o.Data) - testL3(o.Data); n > 65535 {
				t.Fatalf("frame %d out: %d IP bytes", i, n)
			}
			fin := append([]byte(nil), o.Data...)
			if err := vnet.Finish(fin, o.Hdr); err != nil {
				t.Fatal(err)
			}
			if _, _, _, err := refParse(fin); err != nil {
				t.Fatalf("frame %d out, finished: %v", i, err)
			}
			n, err := vnet.SegmentedLen(o.Data, o.Hdr)
			if err != nil {
				t.Fatalf("frame %d out: %v", i, err)
			}
			segs, err := vnet.Segment(o.Data, o.Hdr, make([]byte, n), nil)
			if err != nil || len(segs) < 2 {
				t.Fatalf("frame %d out: %d segments, %v", i, len(segs), err)
			}
			for j, s := range segs {
				if in >= len(frames) || !sameSegment(s, frames[in]) {
					t.Fatalf("frame %d out, segment %d: not frame %d in", i, j, in)
				}
				in++
			}
		}
		if in != len(frames) {
			t.Fatalf("out has %d frames of %d", in, len(frames))
		}
		for i := range frames {
			if !bytes.Equal(frames[i], saved[i]) {
				t.Fatalf("frame %d in was changed", i)
			}
		}
	})
}
