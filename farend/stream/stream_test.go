package stream

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

func TestFramesRoundTrip(t *testing.T) {
	var wire bytes.Buffer
	w := New(bytes.NewReader(nil), &wire)
	frames := [][]byte{[]byte("one"), bytes.Repeat([]byte{7}, 1500), {0}}
	if n, err := w.Write(frames); n != 3 || err != nil {
		t.Fatal(n, err)
	}
	if !bytes.HasPrefix(wire.Bytes(), []byte{0, 3, 'o', 'n', 'e', 0x05, 0xdc}) {
		t.Fatalf("framing %x", wire.Bytes()[:8])
	}
	r := New(&wire, io.Discard)
	bufs := [][]byte{make([]byte, 2000), make([]byte, 2000), make([]byte, 2000), make([]byte, 2000)}
	sizes := make([]int, 4)
	n, err := r.Read(bufs, sizes)
	if err != nil || n != 3 {
		t.Fatalf("read %d frames: %v", n, err)
	}
	for i, f := range frames {
		if !bytes.Equal(bufs[i][:sizes[i]], f) {
			t.Fatalf("frame %d differs", i)
		}
	}
	if _, err := r.Read(bufs, sizes); err != io.EOF {
		t.Fatalf("at the end: %v", err)
	}
}

func TestTruncatedStream(t *testing.T) {
	r := New(bytes.NewReader([]byte{0, 10, 'a', 'b'}), io.Discard)
	_, err := r.Read([][]byte{make([]byte, 100)}, make([]int, 1))
	if !errors.Is(err, ErrFraming) {
		t.Fatalf("got %v", err)
	}
}

func TestFrameLongerThanBuffer(t *testing.T) {
	r := New(bytes.NewReader(append([]byte{0, 5}, "hello"...)), io.Discard)
	sizes := make([]int, 1)
	n, err := r.Read([][]byte{make([]byte, 3)}, sizes)
	if n != 1 || err != nil || sizes[0] <= 3 {
		t.Fatalf("n %d sizes %v err %v", n, sizes, err)
	}
}
