package sockio

import (
	"bytes"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/internal/wire"
)

// A FragWriter cuts each message into fragments of its size, each packet
// a header then the bytes; a PacketReader reads the header apart and the
// bytes where it is told; WriteOne sends a message of one packet unless a
// Write holds the socket.
func TestFragWriterPackets(t *testing.T) {
	a, b := pair(t, unix.SOCK_SEQPACKET)
	w := NewFragWriter(rawOf(t, a), wire.MinFragment)
	msg := bytes.Repeat([]byte("0123456789abcdef"), (3*wire.MinFragment+100)/16)
	done := make(chan error, 1)
	go func() {
		n, err := w.Write([][]byte{[]byte("one"), msg, nil})
		if err == nil && n != 3 {
			err = bytes.ErrTooLarge
		}
		done <- err
	}()
	var r PacketReader
	fd := -1
	rawOf(t, b).Control(func(f uintptr) { fd = int(f) })
	type pkt struct{ n, total, off int }
	var got []pkt
	joined := make([]byte, len(msg))
	for len(got) < 1+4 {
		var n, total, off int
		var err error
		rawOf(t, b).Read(func(uintptr) bool {
			n, total, off, err = r.Peek(fd)
			if Again(err) {
				return false
			}
			var dst []byte
			if total == len(msg) {
				dst = joined[off:]
			}
			n, total, off, err = r.Recv(fd, dst)
			return true
		})
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, pkt{n, total, off})
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	h := wire.FragHeaderLen
	want := []pkt{{h + 3, 3, 0}, {h + wire.MinFragment, len(msg), 0}, {h + wire.MinFragment, len(msg), wire.MinFragment},
		{h + wire.MinFragment, len(msg), 2 * wire.MinFragment}, {h + len(msg) - 3*wire.MinFragment, len(msg), 3 * wire.MinFragment}}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("packet %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	if !bytes.Equal(joined, msg) {
		t.Fatal("the fragments' bytes do not make the message")
	}
	// WriteOne: not while a Write holds the socket, nor longer than a
	// fragment.
	w.mu.Lock()
	if w.WriteOne([]byte("x")) {
		t.Fatal("WriteOne while a Write holds the socket: sent")
	}
	w.mu.Unlock()
	if w.WriteOne(msg) {
		t.Fatal("WriteOne of a message longer than a fragment: sent")
	}
	if !w.WriteOne([]byte("x")) {
		t.Fatal("WriteOne: not sent")
	}
	buf := make([]byte, 16)
	if n, total, off, err := r.Recv(fd, buf); err != nil || n != h+1 || total != 1 || off != 0 || buf[0] != 'x' {
		t.Fatalf("WriteOne's packet: %d bytes, total %d, offset %d, %v", n, total, off, err)
	}
}
