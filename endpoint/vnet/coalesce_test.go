package vnet_test

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/ipn-project/ipn/endpoint/vnet"
)

// Segments cut from a super-frame that Coalesce takes merge back into that
// super-frame, byte for byte, with the header the kernel wants for it.
func TestCoalesceRoundTrip(t *testing.T) {
	for name, s := range segCases {
		t.Run(name, func(t *testing.T) {
			b := build(t, s)
			segs := segment(t, b)
			var c vnet.Coalescer
			out := c.Coalesce(segs)
			n := len(segs)
			var want []int
			switch {
			case s.udp || s.ipOpts || s.hbh || n == 1:
			case s.cwr && s.fin:
				want = []int{1, n - 2, 1}
			case s.cwr:
				want = []int{1, n - 1} // CWR on the first only
			case s.fin:
				want = []int{n - 1, 1}
			default:
				want = []int{n}
			}
			if want == nil {
				for range n {
					want = append(want, 1)
				}
			}
			runs(t, segs, out, want...)
			if len(want) != 1 || n == 1 {
				return
			}
			h := out[0].Hdr
			wantHdr := vnet.Hdr{
				Flags:      vnet.FlagNeedsCsum,
				GSOType:    b.h.GSOType,
				HdrLen:     uint16(b.hlen),
				GSOSize:    uint16(s.mss),
				CsumStart:  uint16(b.l4),
				CsumOffset: 16,
			}
			if h != wantHdr {
				t.Errorf("header %+v, want %+v", h, wantHdr)
			}
			if !bytes.Equal(out[0].Data, b.frame) {
				t.Errorf("merged frame differs from the super-frame:\n% x\n% x", out[0].Data[:b.hlen], b.frame[:b.hlen])
			}
			// What the kernel does with it: its checksum, finished, verifies.
			f := append([]byte(nil), out[0].Data...)
			if err := vnet.Finish(f, h); err != nil {
				t.Fatal(err)
			}
			if _, err := decode(f); err != nil {
				t.Errorf("merged frame, finished: %v", err)
			}
		})
	}
}

// seg is a plain TCP segment made by cutting a super-frame of one segment.
func seg(t testing.TB, s spec, edit func(f []byte, b built)) []byte {
	t.Helper()
	if s.mss == 0 {
		s.mss = max(s.payload, 1448)
	}
	b := build(t, s)
	segs := segment(t, b)
	if len(segs) != 1 {
		t.Fatalf("spec %+v makes %d segments", s, len(segs))
	}
	f := segs[0]
	if edit != nil {
		edit(f, b)
		fixCsums(f, b)
	}
	return f
}

// fixCsums sets the checksums of a segment that was edited.
func fixCsums(f []byte, b built) {
	ip := f[b.l3:]
	var src, dst []byte
	if ip[0]>>4 == 4 {
		ip[10], ip[11] = 0, 0
		binary.BigEndian.PutUint16(ip[10:], ^uint16(refSum(ip[:b.l4-b.l3], 0)))
		src, dst = ip[12:16], ip[16:20]
	} else {
		src, dst = ip[8:24], ip[24:40]
	}
	l4 := f[b.l4:]
	off, proto := 16, uint8(6)
	if ip[9] == 17 && ip[0]>>4 == 4 {
		off, proto = 6, 17
	}
	l4[off], l4[off+1] = 0, 0
	binary.BigEndian.PutUint16(l4[off:], ^uint16(refSum(l4, refPseudo(src, dst, proto, len(l4)))))
}

// flow makes n segments of one flow, in sequence, of size bytes each.
func flow(t testing.TB, s spec, n, size int) [][]byte {
	var fs [][]byte
	for i := range n {
		s := s
		s.payload, s.seq, s.id = size, s.seq+uint32(i*size), s.id+uint16(i)
		fs = append(fs, seg(t, s, nil))
	}
	return fs
}

// runs checks that out is frames with the runs of merged frames of want:
// each number says how many of frames make the next frame of out.
func runs(t *testing.T, frames [][]byte, out []vnet.Frame, want ...int) {
	t.Helper()
	if len(out) != len(want) {
		t.Fatalf("%d frames out, want %d (%v)", len(out), len(want), want)
	}
	in := 0
	for i, f := range out {
		n := want[i]
		if n == 1 {
			if f.Hdr != (vnet.Hdr{}) || len(f.Data) == 0 || &f.Data[0] != &frames[in][0] {
				t.Errorf("frame %d out: not frame %d in as it was (header %+v)", i, in, f.Hdr)
			}
			in++
			continue
		}
		if !f.Hdr.GSO() {
			t.Fatalf("frame %d out: header %+v, want %d segments merged", i, f.Hdr, n)
		}
		again := segment(t, built{frame: f.Data, h: f.Hdr})
		if len(again) != n {
			t.Fatalf("frame %d out: merges %d segments, want %d", i, len(again), n)
		}
		for j := range again {
			if _, err := decode(again[j]); err != nil {
				t.Errorf("frame %d out, segment %d: %v", i, j, err)
			}
			if !sameSegment(again[j], frames[in]) {
				t.Errorf("frame %d out, segment %d: differs from frame %d in", i, j, in)
			}
			in++
		}
	}
}

func TestCoalesce(t *testing.T) {
	base := spec{df: true, seq: 1000, id: 50}
	other := func(s spec, edit func(f []byte, b built)) func(t *testing.T) [][]byte {
		return func(t *testing.T) [][]byte {
			fs := flow(t, s, 4, 1000)
			s.payload, s.mss, s.seq, s.id = 1000, 1000, s.seq+2000, s.id+2
			b := build(t, s)
			f := segment(t, b)[0]
			edit(f, b)
			fixCsums(f, b)
			fs[2] = f
			return fs
		}
	}
	ipByte := func(off int, v byte) func(f []byte, b built) {
		return func(f []byte, b built) { f[b.l3+off] = v }
	}
	tcpByte := func(off int, v byte) func(f []byte, b built) {
		return func(f []byte, b built) { f[b.l4+off] ^= v }
	}
	cases := []struct {
		name   string
		frames func(t *testing.T) [][]byte
		want   []int
	}{
		{"one flow", func(t *testing.T) [][]byte { return flow(t, base, 10, 1448) }, []int{10}},
		{"ipv6", func(t *testing.T) [][]byte { return flow(t, spec{v6: true}, 5, 1428) }, []int{5}},
		{"vlan", func(t *testing.T) [][]byte { return flow(t, spec{tags: 2, tcpOpts: true}, 3, 1400) }, []int{3}},
		{"short last", func(t *testing.T) [][]byte {
			fs := flow(t, base, 3, 1000)
			return append(fs, seg(t, spec{df: true, seq: 4000, id: 53, payload: 10}, nil))
		}, []int{4}},
		{"short then more", func(t *testing.T) [][]byte {
			fs := flow(t, base, 3, 1000)
			fs = append(fs, seg(t, spec{df: true, seq: 4000, id: 53, payload: 10}, nil))
			return append(fs, flow(t, spec{df: true, seq: 4010, id: 54}, 2, 1000)...)
		}, []int{4, 2}},
		{"longer after", func(t *testing.T) [][]byte {
			fs := flow(t, base, 2, 500)
			return append(fs, flow(t, spec{df: true, seq: 2000, id: 52}, 2, 1000)...)
		}, []int{2, 2}},
		{"psh ends a run", func(t *testing.T) [][]byte {
			fs := flow(t, base, 6, 1000)
			fs[2] = seg(t, spec{df: true, seq: 3000, id: 52, payload: 1000, psh: true}, nil)
			return fs
		}, []int{3, 3}},
		{"psh first", func(t *testing.T) [][]byte {
			fs := flow(t, base, 3, 1000)
			fs[0] = seg(t, spec{df: true, seq: 1000, id: 50, payload: 1000, psh: true}, nil)
			return fs
		}, []int{1, 2}},
		{"gap in sequence", func(t *testing.T) [][]byte {
			fs := flow(t, base, 2, 1000)
			return append(fs, flow(t, spec{df: true, seq: 3001, id: 52}, 2, 1000)...)
		}, []int{2, 2}},
		{"retransmission", func(t *testing.T) [][]byte {
			fs := flow(t, base, 2, 1000)
			return append(fs, flow(t, base, 2, 1000)...)
		}, []int{2, 2}},
		{"two flows interleaved", func(t *testing.T) [][]byte {
			a, b := flow(t, base, 3, 1000), flow(t, spec{v6: true}, 3, 1000)
			return [][]byte{a[0], b[0], a[1], b[1], a[2], b[2]}
		}, []int{1, 1, 1, 1, 1, 1}},
		{"not tcp between", func(t *testing.T) [][]byte {
			fs := flow(t, base, 4, 1000)
			u := seg(t, spec{udp: true, payload: 100}, nil)
			return [][]byte{fs[0], fs[1], u, fs[2], fs[3]}
		}, []int{2, 1, 2}},
		{"pure ack between", func(t *testing.T) [][]byte {
			fs := flow(t, base, 4, 1000)
			ack := seg(t, spec{seq: 7, payload: 0}, nil)
			return [][]byte{fs[0], fs[1], ack, fs[2], fs[3]}
		}, []int{2, 1, 2}},
		{"over 64 KiB", func(t *testing.T) [][]byte { return flow(t, base, 50, 1448) }, []int{45, 5}},
		{"exactly 64 KiB", func(t *testing.T) [][]byte { return flow(t, base, 5, (65535-40)/5) }, []int{5}},
		{"ids in sequence without df", func(t *testing.T) [][]byte { return flow(t, spec{id: 0xfffe}, 4, 1000) }, []int{4}},
		{"ids out of sequence without df", func(t *testing.T) [][]byte {
			fs := flow(t, spec{}, 4, 1000)
			fs[2] = seg(t, spec{seq: 2000, id: 9, payload: 1000}, nil)
			return fs
		}, []int{2, 1, 1}},
		{"ids fixed with df", func(t *testing.T) [][]byte {
			fs := flow(t, base, 3, 1000)
			fs[1] = seg(t, spec{df: true, seq: 2000, id: 50, payload: 1000}, nil)
			fs[2] = seg(t, spec{df: true, seq: 3000, id: 50, payload: 1000}, nil)
			return fs
		}, []int{3}},
		{"bad tcp checksum", func(t *testing.T) [][]byte {
			fs := flow(t, base, 4, 1000)
			fs[2][14+20+16] ^= 1
			return fs
		}, []int{2, 1, 1}},
		{"bad ip checksum", func(t *testing.T) [][]byte {
			fs := flow(t, base, 4, 1000)
			fs[2][14+10] ^= 1
			return fs
		}, []int{2, 1, 1}},
		{"ttl differs", other(base, ipByte(8, 63)), []int{2, 1, 1}},
		{"tos differs", other(base, ipByte(1, 3)), []int{2, 1, 1}},
		{"df differs", other(base, ipByte(6, 0)), []int{2, 1, 1}},
		{"address differs", other(base, ipByte(19, 9)), []int{2, 1, 1}},
		{"hop limit differs", other(spec{v6: true}, ipByte(7, 1)), []int{2, 1, 1}},
		{"flow label differs", other(spec{v6: true}, ipByte(3, 1)), []int{2, 1, 1}},
		{"port differs", other(base, tcpByte(1, 1)), []int{2, 1, 1}},
		{"ack differs", other(base, tcpByte(11, 1)), []int{2, 1, 1}},
		{"window differs", other(base, tcpByte(15, 1)), []int{2, 1, 1}},
		{"options differ", other(spec{df: true, seq: 1000, id: 50, tcpOpts: true}, tcpByte(25, 1)), []int{2, 1, 1}},
		{"urg", other(base, tcpByte(13, 0x20)), []int{2, 1, 1}},
		{"syn", other(base, tcpByte(13, 0x02)), []int{2, 1, 1}},
		{"fin", other(base, tcpByte(13, 0x01)), []int{2, 1, 1}},
		{"ece", other(base, tcpByte(13, 0x40)), []int{2, 1, 1}},
		{"reserved bit", other(base, tcpByte(12, 0x01)), []int{2, 1, 1}},
		{"vlan differs", other(spec{tags: 1, df: true, seq: 1000, id: 50}, func(f []byte, b built) { f[15] ^= 1 }), []int{2, 1, 1}},
		{"mac differs", other(base, func(f []byte, b built) { f[5] ^= 1 }), []int{2, 1, 1}},
		{"ipv4 options", func(t *testing.T) [][]byte { return flow(t, spec{ipOpts: true}, 3, 1000) }, []int{1, 1, 1}},
		{"ipv6 hop-by-hop", func(t *testing.T) [][]byte { return flow(t, spec{v6: true, hbh: true}, 3, 1000) }, []int{1, 1, 1}},
		{"padded", func(t *testing.T) [][]byte {
			fs := flow(t, base, 3, 4)
			for i := range fs {
				fs[i] = append(fs[i], make([]byte, 60-len(fs[i]))...)
			}
			return fs
		}, []int{1, 1, 1}},
		{"empty frames", func(t *testing.T) [][]byte { return [][]byte{nil, {}, {1, 2, 3}} }, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			frames := c.frames(t)
			if c.want == nil {
				c.want = make([]int, len(frames))
				for i := range c.want {
					c.want[i] = 1
				}
			}
			var saved [][]byte
			for _, f := range frames {
				saved = append(saved, append([]byte(nil), f...))
			}
			var co vnet.Coalescer
			out := co.Coalesce(frames)
			if c.name != "empty frames" {
				runs(t, frames, out, c.want...)
			} else if len(out) != 3 {
				t.Fatalf("%d frames out of 3", len(out))
			}
			for i := range frames {
				if !bytes.Equal(frames[i], saved[i]) {
					t.Errorf("frame %d in was changed", i)
				}
			}
			for i, f := range out {
				if f.Hdr.GSO() {
					if n := len(f.Data) - testL3(f.Data); n > 65535 {
						t.Errorf("frame %d out: %d IP bytes", i, n)
					}
					ff := append([]byte(nil), f.Data...)
					vnet.Finish(ff, f.Hdr)
					if _, err := decode(ff); err != nil {
						t.Errorf("frame %d out, finished: %v", i, err)
					}
				}
			}
		})
	}
}

// A Coalescer reused for batch after batch allocates nothing.
func TestCoalesceAllocs(t *testing.T) {
	batch := flow(t, spec{df: true}, 40, 1448)
	batch = append(batch, seg(t, spec{udp: true, payload: 50}, nil), []byte{1, 2})
	batch = append(batch, flow(t, spec{v6: true}, 20, 1428)...)
	var c vnet.Coalescer
	c.Coalesce(batch)
	allocs := testing.AllocsPerRun(100, func() {
		if out := c.Coalesce(batch); len(out) != 4 {
			t.Fatalf("%d frames out", len(out))
		}
	})
	if allocs != 0 {
		t.Errorf("Coalesce allocates %v times a batch", allocs)
	}
}

func BenchmarkCoalesce(b *testing.B) {
	batch := flow(b, spec{df: true}, 64, 1448)
	var n int
	for _, f := range batch {
		n += len(f)
	}
	var c vnet.Coalescer
	b.SetBytes(int64(n))
	for b.Loop() {
		c.Coalesce(batch)
	}
}

func BenchmarkSegment(b *testing.B) {
	bl := build(b, spec{payload: 65535 - 40, mss: 1448})
	n, _ := vnet.SegmentedLen(bl.frame, bl.h)
	buf, segs := make([]byte, n), make([][]byte, 0, 64)
	b.SetBytes(int64(len(bl.frame)))
	for b.Loop() {
		segs, _ = vnet.Segment(bl.frame, bl.h, buf, segs[:0])
	}
}

// testL3 returns where the IP header of frame starts, past VLAN tags.
func testL3(f []byte) int {
	off := 14
	for len(f) >= off {
		switch binary.BigEndian.Uint16(f[off-2:]) {
		case 0x8100, 0x88a8, 0x9100:
			off += 4
		default:
			return off
		}
	}
	return off
}

// sameSegment reports whether a and b are the same segment, but for the
// IPv4 ID (and so the header checksum) of a packet with DF set, which its
// receiver does not read, and checksums that differ only in how they
// write zero, 0 or 0xffff.
func sameSegment(a, b []byte) bool {
	if len(a) != len(b) {
		return false
	}
	a, b = append([]byte(nil), a...), append([]byte(nil), b...)
	l3 := testL3(a)
	if len(a) < l3+20 {
		return bytes.Equal(a, b)
	}
	l4, off := l3+40, 16
	if a[l3]>>4 == 4 {
		l4 = l3 + int(a[l3]&0xf)*4
		if a[l3+9] == 17 {
			off = 6
		}
		if a[l3+6]&0x40 != 0 {
			copy(a[l3+4:l3+6], b[l3+4:l3+6])
		}
		copy(a[l3+10:l3+12], b[l3+10:l3+12])
	} else if a[l3+6] == 17 {
		off = 6
	}
	if len(a) >= l4+off+2 {
		ca, cb := binary.BigEndian.Uint16(a[l4+off:]), binary.BigEndian.Uint16(b[l4+off:])
		if ca == cb || (ca == 0 && cb == 0xffff) || (ca == 0xffff && cb == 0) {
			copy(a[l4+off:l4+off+2], b[l4+off:l4+off+2])
		}
	}
	return bytes.Equal(a, b)
}
