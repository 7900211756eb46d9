package seqpacket

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/endpoint"
	"github.com/ipn-project/ipn/internal/sockio"
	"github.com/ipn-project/ipn/internal/wire"
)

const fragMTU = 64 << 20

// fragPair returns an Endpoint of a network of MTU 64 MiB on one end of a
// socketpair and the node's end, whose send buffers take fragments.
func fragPair(t *testing.T) (*Endpoint, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		sockio.SizeFor(fd, wire.FragMTU)
		f := os.NewFile(uintptr(fd), "socketpair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c.(*net.UnixConn)
	}
	e, node := NewFor(conn(fds[0]), nil, fragMTU), conn(fds[1])
	t.Cleanup(func() { e.Close(); node.Close() })
	return e, node
}

// result is one message ReadBig returned: its bytes, or refused (reported
// longer than its buffer, which the engine counts as an error).
type result struct {
	data    []byte
	refused bool
}

// readBig calls e.ReadBig once, with buffers of 64 KiB and a grow that
// makes buffers of the size asked, and returns what it read.
func readBig(t *testing.T, e *Endpoint) ([]result, error) {
	t.Helper()
	bufs, sizes := make([][]byte, 4), make([]int, 4)
	for i := range bufs {
		bufs[i] = make([]byte, 65536)
	}
	grown := map[int][]byte{}
	n, err := e.ReadBig(bufs, sizes, func(i, size int) ([]byte, bool) {
		grown[i] = make([]byte, size)
		return grown[i], false
	})
	var out []result
	for i := range n {
		b := bufs[i]
		if g, ok := grown[i]; ok {
			b = g
		}
		if sizes[i] > len(b) {
			out = append(out, result{refused: true})
		} else {
			out = append(out, result{data: b[:sizes[i]]})
		}
	}
	return out, err
}

// readN reads until it has n results, failing after 10 s.
func readN(t *testing.T, e *Endpoint, n int) []result {
	t.Helper()
	var out []result
	deadline := time.Now().Add(10 * time.Second)
	for len(out) < n {
		if time.Now().After(deadline) {
			t.Fatalf("after 10s, %d results of %d", len(out), n)
		}
		got, err := readBig(t, e)
		if err != nil {
			t.Fatalf("ReadBig: %v (after %d results)", err, len(out))
		}
		out = append(out, got...)
	}
	return out
}

// packet sends one packet: a fragment header for total and off, then data.
func packet(t *testing.T, c *net.UnixConn, total, off int, data []byte) {
	t.Helper()
	p := make([]byte, wire.FragHeaderLen, wire.FragHeaderLen+len(data))
	wire.PutFragHeader(p, total, off)
	if _, err := c.Write(append(p, data...)); err != nil {
		t.Fatalf("write a fragment of %d bytes: %v", len(data), err)
	}
}

// writeMsgs writes msgs with a FragWriter on the node's end.
func writeMsgs(t *testing.T, c *net.UnixConn, msgs ...[]byte) {
	t.Helper()
	if err := writeFrags(c, msgs); err != nil {
		t.Fatal(err)
	}
}

// goWrite is writeMsgs in a goroutine of its own.
func goWrite(t *testing.T, c *net.UnixConn, msgs ...[]byte) {
	go func() {
		if err := writeFrags(c, msgs); err != nil {
			t.Error(err)
		}
	}()
}

func writeFrags(c *net.UnixConn, msgs [][]byte) error {
	raw, _ := c.SyscallConn()
	w := sockio.NewFragWriter(raw, wire.FragSize(sockio.SendLimit(raw)))
	if n, err := w.Write(msgs); err != nil || n != len(msgs) {
		return fmt.Errorf("write %d messages: %d, %v", len(msgs), n, err)
	}
	return nil
}

func random(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// Messages of one packet and of several cross in order and whole, read
// straight into a buffer of their size; a batch ends after one of several
// packets.
func TestFragRoundTrip(t *testing.T) {
	e, node := fragPair(t)
	msgs := [][]byte{[]byte("small"), random(3<<20+5, 1), random(70000, 2), {1}, random(wire.MaxFragment, 3)}
	goWrite(t, node, msgs...)
	got := readN(t, e, len(msgs))
	for i, m := range msgs {
		if got[i].refused || !bytes.Equal(got[i].data, m) {
			t.Fatalf("message %d: %d bytes (refused %v), want %d", i, len(got[i].data), got[i].refused, len(m))
		}
	}
	// And the other way: the endpoint's Write, read by the node.
	back := NewFor(node, nil, fragMTU)
	go func() {
		if n, err := e.Write(msgs); n != len(msgs) || err != nil {
			t.Errorf("Write: %d, %v", n, err)
		}
	}()
	got = readN(t, back, len(msgs))
	for i, m := range msgs {
		if got[i].refused || !bytes.Equal(got[i].data, m) {
			t.Fatalf("back, message %d: %d bytes (refused %v), want %d", i, len(got[i].data), got[i].refused, len(m))
		}
	}
}

// What breaks the rules of fragments is refused, counted, and costs the
// stream nothing: the next good message arrives whole.
func TestFragHostile(t *testing.T) {
	e, node := fragPair(t)
	big := random(3<<20, 4)
	for _, tc := range []struct {
		name    string
		send    func()
		refused int // results refused before the good message
	}{
		{"a packet shorter than a header", func() { node.Write([]byte{1, 2, 3}) }, 1},
		{"a header alone", func() { packet(t, node, 10, 0, nil) }, 1},
		{"a total over the MTU", func() { packet(t, node, fragMTU+1, 0, big[:wire.MaxFragment]) }, 1},
		{"a total of 0", func() { packet(t, node, 0, 0, []byte("x")) }, 1},
		{"a fragment past the total", func() { packet(t, node, 10, 0, big[:11]) }, 1},
		{"a fragment over MaxFragment", func() { packet(t, node, len(big), 0, big[:wire.MaxFragment+1]) }, 1},
		{"a first fragment under MinFragment", func() { packet(t, node, len(big), 0, big[:1000]) }, 1},
		{"a fragment with no message under way", func() { packet(t, node, len(big), 1<<20, big[1<<20:2<<20]) }, 1},
		{"a fragment out of order", func() {
			packet(t, node, len(big), 0, big[:1<<20])
			packet(t, node, len(big), 2<<20, big[2<<20:])
		}, 2}, // the message under way, and the stray fragment
		{"a fragment of another total", func() {
			packet(t, node, len(big), 0, big[:1<<20])
			packet(t, node, len(big)+1, 1<<20, big[1<<20:2<<20])
		}, 2},
		{"a message begun again", func() {
			packet(t, node, len(big), 0, big[:1<<20])
		}, 1}, // the good message's first fragment ends it
	} {
		tc.send()
		good := random(2<<20+7, 5)
		t.Log(tc.name)
		goWrite(t, node, good)
		got := readN(t, e, tc.refused+1)
		for i, r := range got[:tc.refused] {
			if !r.refused {
				t.Fatalf("%s: result %d: %d bytes, want refused", tc.name, i, len(r.data))
			}
		}
		if r := got[tc.refused]; r.refused || !bytes.Equal(r.data, good) {
			t.Fatalf("%s: then %d bytes (refused %v), want the good message, %d", tc.name, len(r.data), r.refused, len(good))
		}
		if len(got) > tc.refused+1 {
			t.Fatalf("%s: %d results, want %d", tc.name, len(got), tc.refused+1)
		}
	}
}

// A node that sends a message's first fragment and no more loses it after
// FragTimeout (refused), and its grown buffer with it; the endpoint reads
// on.
func TestFragTimeout(t *testing.T) {
	old := FragTimeout
	FragTimeout = 200 * time.Millisecond
	defer func() { FragTimeout = old }()
	e, node := fragPair(t)
	big := random(fragMTU, 6)
	packet(t, node, len(big), 0, big[:1<<20])
	start := time.Now()
	got := readN(t, e, 1)
	if !got[0].refused {
		t.Fatalf("a first fragment then silence: %d bytes, want refused", len(got[0].data))
	}
	if took := time.Since(start); took < FragTimeout {
		t.Fatalf("refused after %v, before FragTimeout (%v)", took, FragTimeout)
	}
	writeMsgs(t, node, []byte("after"))
	if got := readN(t, e, 1); got[0].refused || string(got[0].data) != "after" {
		t.Fatalf("after the timeout: %+v", got[0])
	}
	// The rest of the message, sent late, is refused fragment by fragment.
	packet(t, node, len(big), 1<<20, big[1<<20:2<<20])
	writeMsgs(t, node, []byte("then"))
	if got := readN(t, e, 2); !got[0].refused || string(got[1].data) != "then" {
		t.Fatalf("a late fragment, then a message: %+v", got)
	}
}

// A pause that comes while a message is under way takes effect once it is
// read: no message is read in part; a pause before a message leaves it in
// the socket.
func TestFragPauseMidMessage(t *testing.T) {
	e, node := fragPair(t)
	big := random(3<<20, 7)
	packet(t, node, len(big), 0, big[:1<<20])
	type read struct {
		got []result
		err error
	}
	done := make(chan read, 1)
	go func() {
		got, err := readBig(t, e)
		done <- read{got, err}
	}()
	// Pause once the reader waits for the next fragment.
	waitUntil(t, func() bool {
		e.pause.mu.Lock()
		defer e.pause.mu.Unlock()
		return !e.pause.until.IsZero()
	})
	e.PauseRead()
	packet(t, node, len(big), 1<<20, big[1<<20:2<<20])
	packet(t, node, len(big), 2<<20, big[2<<20:])
	r := <-done
	if r.err != nil || len(r.got) != 1 || !bytes.Equal(r.got[0].data, big) {
		t.Fatalf("paused mid-message: %d results, %v: want the whole message", len(r.got), r.err)
	}
	writeMsgs(t, node, []byte("kept"))
	if _, err := readBig(t, e); !endpoint.Paused(err) {
		t.Fatalf("a read while paused: %v, want paused", err)
	}
	e.Resume()
	if got := readN(t, e, 1); string(got[0].data) != "kept" {
		t.Fatalf("after Resume: %+v, want the message left in the socket", got[0])
	}
}

// A Write that a pause stops in the middle of a message leaves it
// unfinished; written again after Resume, it arrives whole, and the node
// drops the part it had.
func TestFragWritePausedMidMessage(t *testing.T) {
	e, node := fragPair(t)
	big := random(32<<20, 8)
	errc := make(chan error, 1)
	var wrote int
	go func() {
		n, err := e.Write([][]byte{big})
		wrote = n
		errc <- err
	}()
	// The node reads nothing: the Write waits for room, mid-message.
	nfd := fdOf(t, node)
	waitUntil(t, func() bool {
		q, err := unix.IoctlGetInt(nfd, unix.SIOCINQ)
		return err == nil && q >= 2<<20
	})
	e.PauseWrite()
	if err := <-errc; !endpoint.Paused(err) || wrote != 0 {
		t.Fatalf("Write paused mid-message: %d, %v; want 0, paused", wrote, err)
	}
	e.Resume()
	go func() {
		if n, err := e.Write([][]byte{big, []byte("next")}); n != 2 || err != nil {
			t.Errorf("Write again: %d, %v", n, err)
		}
	}()
	got := readN(t, NewFor(node, nil, fragMTU), 3)
	if !got[0].refused || !bytes.Equal(got[1].data, big) || string(got[2].data) != "next" {
		t.Fatalf("the node read %d results: refused %v, then %d bytes, then %q; want the part refused, the message, next",
			len(got), got[0].refused, len(got[1].data), got[2].data)
	}
}

// waitUntil waits up to 10 s for cond.
func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 10s")
		}
		time.Sleep(time.Millisecond)
	}
}

// Read without grow drops a message longer than its buffer as truncated.
func TestFragReadTruncates(t *testing.T) {
	e, node := fragPair(t)
	goWrite(t, node, random(2<<20, 9), []byte("x"))
	bufs, sizes := [][]byte{make([]byte, 1000), make([]byte, 1000)}, make([]int, 2)
	var got []int
	for len(got) < 2 {
		n, err := e.Read(bufs, sizes)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, sizes[:n]...)
	}
	if got[0] <= 1000 || got[1] != 1 {
		t.Fatalf("sizes %v: want the first over its buffer, then 1", got)
	}
}

// fdOf returns c's descriptor, which c keeps.
func fdOf(t *testing.T, c *net.UnixConn) int {
	t.Helper()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	fd := -1
	raw.Control(func(f uintptr) { fd = int(f) })
	return fd
}
