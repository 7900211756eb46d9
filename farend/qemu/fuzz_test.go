package qemu

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

// fzReader returns data in chunks (each byte c of chunks a chunk of c+1
// bytes, cycled; none: all at once), then io.EOF for ever.
type fzReader struct {
	data   []byte
	chunks []byte
	i      int
}

func (r *fzReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := len(r.data)
	if len(r.chunks) > 0 {
		n = min(n, int(r.chunks[r.i%len(r.chunks)])+1)
		r.i++
	}
	n = copy(p, r.data[:n])
	r.data = r.data[n:]
	return n, nil
}

// fzBufs are Read's buffers, made once.
var fzBufs = func() [][]byte {
	b := make([][]byte, 8)
	for i := range b {
		b[i] = make([]byte, MaxFrame)
	}
	return b
}()

// fzParse reads QEMU's framing the simple way: the frames Read passes on
// (1 to limit bytes), how many it drops as empty and as oversize, and how
// the stream ends: nil at a boundary, else "framing" (a length over
// MaxFrame, or cut inside a length or a frame).
func fzParse(b []byte, limit int) (frames [][]byte, empty, oversize int, bad bool) {
	for len(b) > 0 {
		if len(b) < 4 {
			return frames, empty, oversize, true
		}
		size := int(binary.BigEndian.Uint32(b))
		if size > MaxFrame || len(b) < 4+size {
			return frames, empty, oversize, true
		}
		switch {
		case size == 0:
			empty++
		case size > limit:
			oversize++
		default:
			frames = append(frames, b[4:4+size])
		}
		b = b[4+size:]
	}
	return frames, empty, oversize, false
}

// FuzzStreamRead feeds a connected stream any bytes from QEMU's side (data,
// then pad bytes of 0x07 so that short inputs make long frames), in any
// chunks, into any number and size of buffers, with any MTU. Read passes
// on exactly the frames of 1 to min(MTU, buffer) bytes, counts the empty
// and oversize ones it drops, stops at a hostile length (over MaxFrame,
// up to 4 GiB) with no attempt to read it, and ends with io.EOF at a
// boundary or ErrFraming.
func FuzzStreamRead(f *testing.F) {
	enc := func(frames ...[]byte) []byte {
		var b []byte
		for _, fr := range frames {
			b = binary.BigEndian.AppendUint32(b, uint32(len(fr)))
			b = append(b, fr...)
		}
		return b
	}
	three := enc([]byte("one"), nil, []byte("three"))
	f.Add(three, []byte{}, uint16(0), uint8(4), uint16(2000), uint16(0))
	f.Add(three, []byte{0, 3, 200}, uint16(0), uint8(1), uint16(4), uint16(3))
	f.Add(append(bytes.Clone(three), 0, 0, 0x05, 0xea), []byte{}, uint16(1514), uint8(4), uint16(1514), uint16(1514))
	f.Add(append(bytes.Clone(three), 0, 0, 0x05, 0xea), []byte{9}, uint16(1400), uint8(2), uint16(1514), uint16(0))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1, 2, 3}, []byte{}, uint16(0), uint8(2), uint16(100), uint16(0))
	f.Add([]byte{0, 1, 0x10, 0x01}, []byte{}, uint16(0x1001), uint8(2), uint16(100), uint16(0)) // MaxFrame+1
	f.Add([]byte{0, 1, 0x10, 0x00}, []byte{255}, uint16(0x1000), uint8(1), uint16(65535), uint16(0))
	f.Add([]byte{0, 0, 0}, []byte{}, uint16(0), uint8(1), uint16(100), uint16(0))
	f.Add(enc(nil, nil, nil), []byte{0}, uint16(0), uint8(8), uint16(10), uint16(0))

	f.Fuzz(func(t *testing.T, data, chunks []byte, pad uint16, nbufs uint8, bufLen, mtu uint16) {
		data = append(bytes.Clone(data), bytes.Repeat([]byte{7}, int(pad))...)
		nb := int(nbufs%8) + 1
		bl := int(bufLen)
		e := &Stream{r: bufio.NewReaderSize(&fzReader{data: data, chunks: chunks}, 1<<17), live: true}
		e.SetMTU(int(mtu))
		bufs := make([][]byte, nb)
		for i := range bufs {
			bufs[i] = fzBufs[i][:bl]
		}
		sizes := make([]int, nb)
		var got [][]byte
		var err error
		for calls := 0; ; calls++ {
			if calls > len(data)+2 {
				t.Fatalf("%d Read calls and no end", calls)
			}
			var n int
			n, err = e.Read(bufs, sizes)
			if n < 0 || n > nb || n == 0 && err == nil {
				t.Fatalf("Read returned %d for %d buffers, error %v", n, nb, err)
			}
			for i := 0; i < n; i++ {
				if sizes[i] < 1 || sizes[i] > bl {
					t.Fatalf("frame of size %d passed on into a %d-byte buffer", sizes[i], bl)
				}
				got = append(got, bytes.Clone(bufs[i][:sizes[i]]))
			}
			if err != nil {
				break
			}
		}
		limit := bl
		if mtu > 0 && int(mtu) < bl {
			limit = int(mtu)
		}
		want, empty, oversize, bad := fzParse(data, limit)
		if len(got) != len(want) {
			t.Fatalf("%d frames, want %d (error %v)", len(got), len(want), err)
		}
		for i := range want {
			if !bytes.Equal(got[i], want[i]) {
				t.Fatalf("frame %d: %x, want %x", i, got[i], want[i])
			}
		}
		st := e.Stats()
		if st.Empty != uint64(empty) || st.Oversize != uint64(oversize) {
			t.Fatalf("dropped %d empty and %d oversize, want %d and %d", st.Empty, st.Oversize, empty, oversize)
		}
		switch {
		case bad && !errors.Is(err, ErrFraming):
			t.Fatalf("bad framing: error %v, want ErrFraming", err)
		case !bad && err != io.EOF:
			t.Fatalf("clean end: error %v, want io.EOF", err)
		}
		if _, again := e.Read(bufs, sizes); again != err {
			t.Fatalf("Read after the end: %v, want %v again", again, err)
		}
	})
}
