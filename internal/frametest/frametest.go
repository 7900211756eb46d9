// Package frametest reads what an endpoint delivers, for the tests of the
// cable far ends.
package frametest

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/ipn-project/ipn/endpoint"
)

// Frame is a frame as an endpoint's Read reports it: its size (one more
// than the buffer's for a frame too long for it) and the bytes kept.
type Frame struct {
	Size int
	Data []byte
}

// ReadUntil reads ep into bufs (each of size bytes) until a frame equal to
// marker, checking what each Read reports (a count within bufs, sizes of at
// least least bytes and at most size+1), and returns the frames before the
// marker. A Read error fails the test.
func ReadUntil(t testing.TB, ep endpoint.Endpoint, bufs [][]byte, size, least int, marker []byte) []Frame {
	t.Helper()
	var got []Frame
	sizes := make([]int, len(bufs))
	for done := false; !done; {
		n, err := ep.Read(bufs, sizes)
		if err != nil {
			t.Fatalf("Read after %d frames, the marker not seen: %v", len(got), err)
		}
		if n < 1 || n > len(bufs) {
			t.Fatalf("Read returned %d frames into %d buffers", n, len(bufs))
		}
		for i := 0; i < n; i++ {
			s := sizes[i]
			if s < least || s > size+1 {
				t.Fatalf("frame of size %d in a buffer of %d", s, size)
			}
			fr := bufs[i][:min(s, size)]
			if done {
				t.Fatalf("frame %x after the marker", fr)
			}
			if bytes.Equal(fr, marker) {
				done = true
				continue
			}
			got = append(got, Frame{s, bytes.Clone(fr)})
		}
	}
	return got
}

// Expect fails the test unless got is want, frame by frame.
func Expect(t testing.TB, got, want []Frame) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("read %d frames, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i].Size != want[i].Size || !bytes.Equal(got[i].Data, want[i].Data) {
			t.Fatalf("frame %d: size %d %x, want size %d %x", i, got[i].Size, got[i].Data, want[i].Size, want[i].Data)
		}
	}
}

// Unpack splits a fuzzer's input into datagrams: each a big-endian u16
// length (cut to 9000) and its bytes, at most 8 of them.
func Unpack(b []byte) [][]byte {
	var ds [][]byte
	for len(b) >= 2 && len(ds) < 8 {
		n := min(int(binary.BigEndian.Uint16(b)), 9000, len(b)-2)
		ds = append(ds, b[2:2+n])
		b = b[2+n:]
	}
	return ds
}

// Pack is Unpack's inverse, for seeds.
func Pack(ds ...[]byte) []byte {
	var b []byte
	for _, d := range ds {
		b = binary.BigEndian.AppendUint16(b, uint16(len(d)))
		b = append(b, d...)
	}
	return b
}

// VXLAN returns a VXLAN datagram: the 8-byte header with flags and vni,
// then frame.
func VXLAN(flags byte, vni uint32, frame []byte) []byte {
	return append([]byte{flags, 0, 0, 0, byte(vni >> 16), byte(vni >> 8), byte(vni), 0}, frame...)
}
