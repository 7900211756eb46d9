package stream_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"github.com/ipn-project/ipn/farend/stream"
)

// fzChunkReader returns data in chunks of the sizes chunks gives (each byte
// c is a chunk of c+1 bytes, cycled; none: all at once), then end for ever.
// With eager, the last chunk comes with end, as some readers do.
type fzChunkReader struct {
	data   []byte
	chunks []byte
	i      int
	end    error
	eager  bool
}

func (r *fzChunkReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, r.end
	}
	n := len(r.data)
	if len(r.chunks) > 0 {
		n = min(n, int(r.chunks[r.i%len(r.chunks)])+1)
		r.i++
	}
	n = copy(p, r.data[:n])
	r.data = r.data[n:]
	if r.eager && len(r.data) == 0 {
		return n, r.end
	}
	return n, nil
}

// errBroken is the error a reader that breaks returns (a closed pipe, say).
var errBroken = errors.New("pipe broke")

// fzFrame is a frame as Read reports it: its bytes, or its size alone when
// it was longer than the buffer.
type fzFrame struct {
	size int
	data []byte
}

// fzBufs is Read's buffers, made once: a fuzz function runs one input at a
// time in a process.
var fzBufs = func() [][]byte {
	b := make([][]byte, 8)
	for i := range b {
		b[i] = make([]byte, stream.MaxFrame)
	}
	return b
}()

// fzReadAll reads frames from r with nbufs buffers of bufLen bytes until
// Read fails, checking each result against what Read promises: n within
// the buffers, progress or an error, each size within its buffer or one
// past it for a frame too long.
func fzReadAll(t *testing.T, r io.Reader, nbufs, bufLen int, maxCalls int) ([]fzFrame, error) {
	t.Helper()
	e := stream.New(r, io.Discard)
	bufs := make([][]byte, nbufs)
	for i := range bufs {
		bufs[i] = fzBufs[i][:bufLen]
	}
	sizes := make([]int, nbufs)
	var got []fzFrame
	for calls := 0; ; calls++ {
		if calls > maxCalls {
			t.Fatalf("%d Read calls and no end", calls)
		}
		for i := range sizes {
			sizes[i] = -1
		}
		n, err := e.Read(bufs, sizes)
		if n < 0 || n > nbufs {
			t.Fatalf("Read returned n = %d for %d buffers", n, nbufs)
		}
		if n == 0 && err == nil {
			t.Fatal("Read returned nothing and no error")
		}
		for i := 0; i < n; i++ {
			switch s := sizes[i]; {
			case s >= 0 && s <= bufLen:
				got = append(got, fzFrame{s, bytes.Clone(bufs[i][:s])})
			case s == bufLen+1:
				got = append(got, fzFrame{size: s})
			default:
				t.Fatalf("frame %d: size %d for a buffer of %d", len(got), s, bufLen)
			}
		}
		if err != nil {
			return got, err
		}
	}
}

// fzParse is the encapsulation read the simple way: the complete frames,
// and how many bytes trail them (0: a clean end; 1: inside a length; more:
// inside a frame).
func fzParse(b []byte) (frames [][]byte, trailing int) {
	for len(b) >= 2 {
		size := int(binary.BigEndian.Uint16(b))
		if len(b) < 2+size {
			break
		}
		frames = append(frames, b[2:2+size])
		b = b[2+size:]
	}
	return frames, len(b)
}

// fzCheckStream reads stream bytes data and compares the frames and the
// final error with fzParse's.
func fzCheckStream(t *testing.T, data, chunks []byte, nbufs, bufLen int, broken, eager bool) {
	t.Helper()
	end := io.EOF
	if broken {
		end = errBroken
	}
	r := &fzChunkReader{data: data, chunks: chunks, end: end, eager: eager}
	got, err := fzReadAll(t, r, nbufs, bufLen, len(data)+2)
	want, trailing := fzParse(data)
	if len(got) != len(want) {
		t.Fatalf("%d frames, want %d (error %v)", len(got), len(want), err)
	}
	for i, w := range want {
		if len(w) > bufLen {
			if got[i].size != bufLen+1 {
				t.Fatalf("frame %d of %d bytes in a %d-byte buffer: size %d, want %d", i, len(w), bufLen, got[i].size, bufLen+1)
			}
			continue
		}
		if !bytes.Equal(got[i].data, w) {
			t.Fatalf("frame %d: %x, want %x", i, got[i].data, w)
		}
	}
	switch {
	case trailing == 0 || (trailing == 1 && broken):
		// At a frame's boundary, or inside a length, a reader's own error
		// comes through; a clean end is io.EOF.
		if !errors.Is(err, end) {
			t.Fatalf("after %d frames and %d trailing bytes: error %v, want %v", len(got), trailing, err, end)
		}
	case broken && errors.Is(err, errBroken):
	case !errors.Is(err, stream.ErrFraming):
		t.Fatalf("stream cut %d bytes into a frame: error %v, want ErrFraming", trailing, err)
	}
}

// fzHuge is a frame one byte too long for the encapsulation.
var fzHuge = make([]byte, stream.MaxFrame+1)

// fzEncode is the encapsulation of frames, written the simple way.
func fzEncode(frames ...[]byte) []byte {
	var b []byte
	for _, f := range frames {
		b = binary.BigEndian.AppendUint16(b, uint16(len(f)))
		b = append(b, f...)
	}
	return b
}

// FuzzRead feeds the decoder any stream bytes (data, then pad bytes of
// 0x07, so that short inputs make long frames), in any chunks, into any
// number and size of buffers, from a reader that ends cleanly or breaks.
// The frames are exactly the stream's complete frames (a frame too long
// for its buffer reported as one byte longer than the buffer), nothing
// beyond them, and the end is io.EOF at a boundary, the reader's error,
// or ErrFraming for a stream cut inside a frame or a length.
func FuzzRead(f *testing.F) {
	three := fzEncode([]byte("one"), []byte{}, []byte("three"))
	f.Add(three, []byte{}, uint16(0), uint8(4), uint16(2000), false, false)
	f.Add(three, []byte{0, 3, 200}, uint16(0), uint8(1), uint16(3), false, true)
	f.Add(append(bytes.Clone(three), 0x05, 0xdc), []byte{}, uint16(1500), uint8(4), uint16(1514), false, false) // a full-size Ethernet frame last
	f.Add(append(bytes.Clone(three), 0x05, 0xdc), []byte{9}, uint16(1400), uint8(2), uint16(1514), true, false) // cut inside it
	f.Add(fzEncode(nil, nil, []byte("x")), []byte{0}, uint16(0), uint8(2), uint16(0), false, false)
	f.Add(append(fzEncode([]byte("whole")), 0, 10, 'a', 'b'), []byte{1}, uint16(0), uint8(8), uint16(64), false, false)
	f.Add(append(fzEncode([]byte("whole")), 0x05), []byte{}, uint16(0), uint8(3), uint16(64), true, false)
	f.Add([]byte{0xff, 0xff}, []byte{255}, uint16(stream.MaxFrame), uint8(2), uint16(stream.MaxFrame), false, true)
	f.Add([]byte{0xff, 0xff}, []byte{}, uint16(stream.MaxFrame), uint8(1), uint16(100), true, false)
	f.Add([]byte{}, []byte{}, uint16(0), uint8(1), uint16(1514), false, false)

	f.Fuzz(func(t *testing.T, data, chunks []byte, pad uint16, nbufs uint8, bufLen uint16, broken, eager bool) {
		data = append(bytes.Clone(data), bytes.Repeat([]byte{7}, int(pad))...)
		fzCheckStream(t, data, chunks, int(nbufs%8)+1, int(bufLen), broken, eager)
	})
}

// FuzzRoundTrip writes frames with the endpoint's encoder, in one or more
// Write calls, and reads them back in any chunks: they come back exactly,
// and the stream then ends with io.EOF. A frame longer than MaxFrame makes
// Write fail with ErrFraming and write nothing.
func FuzzRoundTrip(f *testing.F) {
	f.Add([]byte("one two three"), []byte{3, 0, 4}, []byte{}, uint8(1), false)
	f.Add([]byte("frame"), []byte{0x80 | 2, 14, 0, 0x80 | 3}, []byte{7, 1}, uint8(3), false)
	f.Add([]byte{}, []byte{0, 0, 0}, []byte{}, uint8(0), true)
	f.Add([]byte{0xaa, 0x55}, []byte{0xff, 0x81, 0xff}, []byte{255}, uint8(2), true)

	f.Fuzz(func(t *testing.T, data, lens, chunks []byte, split uint8, huge bool) {
		// The frames: data, then one per byte of lens, a byte b < 0x80 a
		// frame of b bytes, else of (b&0x7f)*512, at most MaxFrame; their
		// bytes repeat data (or 0x5a), up to 256 KiB in all.
		src, pos := data, 0
		if len(src) == 0 {
			src = []byte{0x5a}
		}
		frames := [][]byte{data[:min(len(data), stream.MaxFrame)]}
		total := len(frames[0])
		for _, l := range lens {
			n := int(l)
			if l >= 0x80 {
				n = min(int(l&0x7f)*512, stream.MaxFrame)
			}
			if total += n; total > 1<<18 {
				break
			}
			fr := make([]byte, n)
			for i := range fr {
				fr[i] = src[pos%len(src)]
				pos++
			}
			frames = append(frames, fr)
		}

		var wire bytes.Buffer
		w := stream.New(bytes.NewReader(nil), &wire)
		if huge {
			n, err := w.Write([][]byte{frames[0], fzHuge})
			if n != 0 || !errors.Is(err, stream.ErrFraming) || wire.Len() != 0 {
				t.Fatalf("frame of %d bytes: wrote %d frames (%d bytes), %v", stream.MaxFrame+1, n, wire.Len(), err)
			}
		}
		// Write in batches of split+1 frames (one batch if split is 0).
		batch := len(frames)
		if split > 0 {
			batch = int(split)
		}
		for i := 0; i < len(frames); i += batch {
			part := frames[i:min(i+batch, len(frames))]
			if n, err := w.Write(part); n != len(part) || err != nil {
				t.Fatalf("Write of %d frames: %d, %v", len(part), n, err)
			}
		}
		if want := fzEncode(frames...); !bytes.Equal(wire.Bytes(), want) {
			t.Fatalf("encoded %d bytes, want %d: %x", wire.Len(), len(want), wire.Bytes()[:min(wire.Len(), 32)])
		}
		r := &fzChunkReader{data: wire.Bytes(), chunks: chunks, end: io.EOF}
		got, err := fzReadAll(t, r, 8, stream.MaxFrame, wire.Len()+2)
		if err != io.EOF {
			t.Fatalf("after %d frames: %v, want io.EOF", len(got), err)
		}
		if len(got) != len(frames) {
			t.Fatalf("read %d frames, wrote %d", len(got), len(frames))
		}
		for i := range frames {
			if !bytes.Equal(got[i].data, frames[i]) {
				t.Fatalf("frame %d: read %d bytes, wrote %d", i, len(got[i].data), len(frames[i]))
			}
		}
	})
}
