package sockio

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/ipn-project/ipn/internal/yield"
	"golang.org/x/sys/unix"
)

// pair returns both ends of a Unix socketpair of type typ as UnixConns.
func pair(t testing.TB, typ int) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "socketpair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c.(*net.UnixConn)
	}
	return conn(fds[0]), conn(fds[1])
}

func rawOf(t testing.TB, c *net.UnixConn) syscall.RawConn {
	t.Helper()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// send writes each packet with one write(2).
func send(t testing.TB, c *net.UnixConn, pkts ...[]byte) {
	t.Helper()
	for _, p := range pkts {
		if _, err := c.Write(p); err != nil {
			t.Fatal(err)
		}
	}
}

func makeBufs(n, size int) ([][]byte, []int) {
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, size)
	}
	return bufs, make([]int, n)
}

// got returns the packets a Read returned, "T" appended to truncated ones.
func got(bufs [][]byte, sizes []int, n int) []string {
	var out []string
	for i := range n {
		if sizes[i] > len(bufs[i]) {
			out = append(out, string(bufs[i])+"T")
		} else {
			out = append(out, string(bufs[i][:sizes[i]]))
		}
	}
	return out
}

func expect(t *testing.T, what string, have []string, want ...string) {
	t.Helper()
	if fmt.Sprint(have) != fmt.Sprint(want) {
		t.Fatalf("%s: got %q, want %q", what, have, want)
	}
}

func pkts(n int, format string) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = []byte(fmt.Sprintf(format, i))
	}
	return out
}

func strs(p [][]byte) []string {
	out := make([]string, len(p))
	for i, b := range p {
		out[i] = string(b)
	}
	return out
}

func TestReaderBatches(t *testing.T) {
	for _, typ := range []int{unix.SOCK_SEQPACKET, unix.SOCK_DGRAM} {
		a, b := pair(t, typ)
		r := NewReader(rawOf(t, b), false)
		all := pkts(40, "packet %d")
		send(t, a, all...)
		bufs, sizes := makeBufs(16, 64)
		var have []string
		for _, want := range []int{16, 16, 8} {
			n, err := r.Read(bufs, sizes)
			if err != nil || n != want {
				t.Fatalf("type %d: Read = %d, %v; want %d", typ, n, err, want)
			}
			have = append(have, got(bufs, sizes, n)...)
		}
		expect(t, "packets", have, strs(all)...)
	}
}

func TestReaderTruncates(t *testing.T) {
	a, b := pair(t, unix.SOCK_SEQPACKET)
	r := NewReader(rawOf(t, b), false)
	send(t, a, []byte("short"), []byte("exactly8"), []byte("much longer than eight"), []byte("ok"))
	bufs, sizes := makeBufs(8, 8)
	n, err := r.Read(bufs, sizes)
	if err != nil {
		t.Fatal(err)
	}
	expect(t, "packets", got(bufs, sizes, n), "short", "exactly8", "much lonT", "ok")
	if sizes[2] != 9 {
		t.Fatalf("truncated size %d, want len+1 = 9", sizes[2])
	}
}

func TestReaderEmptyPackets(t *testing.T) {
	for _, typ := range []int{unix.SOCK_SEQPACKET, unix.SOCK_DGRAM} {
		for _, skip := range []bool{false, true} {
			t.Run(fmt.Sprintf("type%d/skip=%v", typ, skip), func(t *testing.T) {
				a, b := pair(t, typ)
				r := NewReader(rawOf(t, b), skip)
				bufs, sizes := makeBufs(8, 16)
				// Empty packets among others are dropped, the rest kept
				// in order, with no gap.
				send(t, a, []byte("one"), nil, []byte("two"), nil, nil, []byte("three"))
				n, err := r.Read(bufs, sizes)
				if err != nil {
					t.Fatal(err)
				}
				expect(t, "packets", got(bufs, sizes, n), "one", "two", "three")

				send(t, a, nil, nil)
				if !skip {
					// Only empty packets: io.EOF, which a SOCK_SEQPACKET
					// reader tells from the peer's end by polling.
					if n, err := r.Read(bufs, sizes); n != 0 || err != io.EOF {
						t.Fatalf("only empty packets: Read = %d, %v; want io.EOF", n, err)
					}
				}
				// With skip, Read waits past them for the next packet.
				go func() {
					time.Sleep(20 * time.Millisecond)
					a.Write([]byte("after"))
				}()
				n, err = r.Read(bufs, sizes)
				if err != nil {
					t.Fatal(err)
				}
				expect(t, "after empty", got(bufs, sizes, n), "after")
			})
		}
	}
}

func TestReaderEOF(t *testing.T) {
	a, b := pair(t, unix.SOCK_SEQPACKET)
	r := NewReader(rawOf(t, b), false)
	send(t, a, []byte("last"), []byte("words"))
	a.Close()
	bufs, sizes := makeBufs(4, 16)
	n, err := r.Read(bufs, sizes)
	if err != nil {
		t.Fatal(err)
	}
	expect(t, "before EOF", got(bufs, sizes, n), "last", "words")
	for range 2 { // the end stays
		if n, err := r.Read(bufs, sizes); n != 0 || err != io.EOF {
			t.Fatalf("after the peer closed: Read = %d, %v; want io.EOF", n, err)
		}
	}
}

func TestReaderWaitsThenReads(t *testing.T) {
	a, b := pair(t, unix.SOCK_SEQPACKET)
	r := NewReader(rawOf(t, b), false)
	go func() {
		time.Sleep(20 * time.Millisecond)
		send(t, a, []byte("late"))
	}()
	bufs, sizes := makeBufs(4, 16)
	n, err := r.Read(bufs, sizes)
	if err != nil {
		t.Fatal(err)
	}
	expect(t, "packets", got(bufs, sizes, n), "late")
}

func TestReaderCloseUnblocks(t *testing.T) {
	_, b := pair(t, unix.SOCK_SEQPACKET)
	r := NewReader(rawOf(t, b), false)
	done := make(chan error)
	go func() {
		bufs, sizes := makeBufs(4, 16)
		_, err := r.Read(bufs, sizes)
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	b.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Read after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not unblock Read")
	}
}

func TestReadBatch(t *testing.T) {
	a, b := pair(t, unix.SOCK_DGRAM)
	send(t, a, []byte("x"), nil, []byte("yz"))
	bufs, sizes := makeBufs(4, 16)
	n, err := ReadBatch(rawOf(t, b), bufs, sizes, true)
	if err != nil {
		t.Fatal(err)
	}
	expect(t, "packets", got(bufs, sizes, n), "x", "yz")
}

func TestWriterBatch(t *testing.T) {
	a, b := pair(t, unix.SOCK_SEQPACKET)
	w := NewWriter(rawOf(t, a))
	all := pkts(20, "message %d")
	all[3] = nil // an empty packet is a packet
	if n, err := w.Write(all); n != len(all) || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	buf := make([]byte, 64)
	raw := rawOf(t, b)
	for i, want := range all {
		// net.UnixConn.Read reports an empty packet as io.EOF.
		var n int
		var err error
		raw.Read(func(fd uintptr) bool {
			n, err = unix.Read(int(fd), buf)
			return err != unix.EAGAIN
		})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf[:n], want) {
			t.Fatalf("packet %d: %q, want %q", i, buf[:n], want)
		}
	}
}

// A batch larger than the socket holds is sent in several sendmmsg calls,
// waiting for room between them, and arrives whole and in order.
func TestWriterPartialBatchesWait(t *testing.T) {
	a, b := pair(t, unix.SOCK_SEQPACKET)
	w := NewWriter(rawOf(t, a))
	all := pkts(3000, "%04d........................................................")
	done := make(chan error, 1)
	go func() {
		n, err := w.Write(all)
		if err == nil && n != len(all) {
			err = fmt.Errorf("wrote %d of %d", n, len(all))
		}
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("Write returned before the reader read (%v): the socket holds all?", err)
	default:
	}
	r := NewReader(rawOf(t, b), false)
	bufs, sizes := makeBufs(64, 128)
	var have []string
	for len(have) < len(all) {
		n, err := r.Read(bufs, sizes)
		if err != nil {
			t.Fatal(err)
		}
		have = append(have, got(bufs, sizes, n)...)
	}
	expect(t, "packets", have, strs(all)...)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestWriterCloseUnblocks(t *testing.T) {
	a, _ := pair(t, unix.SOCK_SEQPACKET)
	w := NewWriter(rawOf(t, a))
	all := pkts(10000, "%08d")
	done := make(chan int)
	var werr error
	go func() {
		n, err := w.Write(all)
		werr = err
		done <- n
	}()
	time.Sleep(20 * time.Millisecond)
	a.Close()
	select {
	case n := <-done:
		if n == 0 || n == len(all) || !errors.Is(werr, net.ErrClosed) {
			t.Fatalf("Write after Close = %d, %v; want some sent and net.ErrClosed", n, werr)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not unblock Write")
	}
}

func TestWriterPeerGone(t *testing.T) {
	a, b := pair(t, unix.SOCK_SEQPACKET)
	w := NewWriter(rawOf(t, a))
	b.Close()
	n, err := w.Write(pkts(3, "%d"))
	if n != 0 || !errors.Is(err, unix.EPIPE) {
		t.Fatalf("Write to a closed peer = %d, %v; want EPIPE", n, err)
	}
}

func TestNoAllocs(t *testing.T) {
	a, b := pair(t, unix.SOCK_SEQPACKET)
	w := NewWriter(rawOf(t, a))
	r := NewReader(rawOf(t, b), false)
	rawB := rawOf(t, b)
	msgs := pkts(32, "message %d")
	bufs, sizes := makeBufs(32, 64)
	roundTrip := func() {
		if n, err := w.Write(msgs); n != len(msgs) || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
		for left := len(msgs); left > 0; {
			n, err := r.Read(bufs, sizes)
			if err != nil {
				t.Fatal(err)
			}
			left -= n
		}
	}
	if allocs := testing.AllocsPerRun(100, roundTrip); allocs != 0 {
		t.Errorf("Writer.Write + Reader.Read: %v allocations per batch, want 0", allocs)
	}
	viaReadBatch := func() {
		if n, err := w.Write(msgs); n != len(msgs) || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
		for left := len(msgs); left > 0; {
			n, err := ReadBatch(rawB, bufs, sizes, false)
			if err != nil {
				t.Fatal(err)
			}
			left -= n
		}
	}
	if raceEnabled {
		return // ReadBatch's pool drops Readers at random
	}
	if allocs := testing.AllocsPerRun(100, viaReadBatch); allocs != 0 {
		t.Errorf("ReadBatch: %v allocations per batch, want 0", allocs)
	}
}

// BenchmarkSeqpacket moves 64-byte packets over a SOCK_SEQPACKET pair in
// batches: with sendmmsg and recvmmsg (Writer, Reader), and as before them,
// one write(2) and one recvfrom(2) per packet ("per-packet").
func BenchmarkSeqpacket(b *testing.B) {
	for _, mmsg := range []bool{false, true} {
		for _, batch := range []int{1, 16, 64} {
			name := fmt.Sprintf("per-packet/batch%d", batch)
			if mmsg {
				name = fmt.Sprintf("mmsg/batch%d", batch)
			}
			b.Run(name, func(b *testing.B) { benchSeqpacket(b, batch, mmsg) })
		}
	}
}

func benchSeqpacket(b *testing.B, batch int, mmsg bool) {
	x, y := pair(b, unix.SOCK_SEQPACKET)
	write := func(m [][]byte) (int, error) {
		for i, p := range m {
			if _, err := x.Write(p); err != nil {
				return i, err
			}
		}
		return len(m), nil
	}
	rawY := rawOf(b, y)
	read := func(bufs [][]byte, sizes []int) (int, error) { return readEach(rawY, bufs, sizes) }
	if mmsg {
		write = NewWriter(rawOf(b, x)).Write
		read = NewReader(rawY, false).Read
	}
	msgs := pkts(batch, "%064d")
	bufs, sizes := makeBufs(batch, 128)
	b.SetBytes(64)
	b.ReportAllocs()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for left := b.N; left > 0; {
			n, err := read(bufs, sizes)
			if err != nil {
				b.Error(err)
				return
			}
			left -= n
		}
	}()
	for sent := 0; sent < b.N; {
		n, err := write(msgs[:min(batch, b.N-sent)])
		if err != nil {
			b.Fatal(err)
		}
		sent += n
	}
	<-done
}

// readEach is ReadBatch as it was before recvmmsg: one recvfrom(2) per
// packet, for comparison.
func readEach(raw syscall.RawConn, bufs [][]byte, sizes []int) (int, error) {
	return ReadEach(raw, bufs, sizes, func(fd int, b []byte) (int, bool, error) {
		m, _, e := unix.Syscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&b[0])),
			uintptr(len(b)), unix.MSG_DONTWAIT|unix.MSG_TRUNC, 0, 0)
		if e != 0 {
			return 0, false, e
		}
		return min(int(m), len(b)+1), true, nil
	}, Again)
}

// A OneWriter drops what a full socket refuses, yields for a reader that
// still reads, stops yielding for one that no longer does, and starts
// again once a write goes through.
func TestOneWriterDropsAndStopsYielding(t *testing.T) {
	a, b := pair(t, unix.SOCK_SEQPACKET)
	raw, err := a.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	w := NewOneWriter(raw)
	msg := make([]byte, 1000)
	sent := 0
	for i := 0; i < yield.StuckDrops+5000; i++ {
		if w.Write(msg) {
			sent++
		}
	}
	if sent == 0 || sent > 2000 {
		t.Fatalf("%d of %d written into one socket buffer", sent, yield.StuckDrops+5000)
	}
	if !w.yield.Stuck() {
		t.Fatal("still yielding after a reader took nothing through all the drops")
	}
	buf := make([]byte, 2000)
	if n, err := b.Read(buf); n != 1000 || err != nil {
		t.Fatalf("read %d, %v", n, err)
	}
	if ok := w.Write(msg); !ok || w.yield.Stuck() {
		t.Fatalf("after a read: written %v, still taken for stuck %v", ok, w.yield.Stuck())
	}
}
