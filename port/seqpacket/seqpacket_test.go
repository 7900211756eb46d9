package seqpacket

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// pair returns an Endpoint on one end of a SOCK_SEQPACKET socketpair and
// the node's end.
func pair(t *testing.T) (*Endpoint, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
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
		return c.(*net.UnixConn)
	}
	e, node := New(conn(fds[0]), nil), conn(fds[1])
	t.Cleanup(func() { e.Close(); node.Close() })
	return e, node
}

func bufs(n int) ([][]byte, []int) {
	b := make([][]byte, n)
	for i := range b {
		b[i] = make([]byte, 1500)
	}
	return b, make([]int, n)
}

// An empty packet is skipped, alone or among others; the node's close is
// io.EOF after what it sent.
func TestReadSkipsEmptyPacketsThenEOF(t *testing.T) {
	e, node := pair(t)
	b, sizes := bufs(e.BatchSize())
	for _, p := range []string{"a", "", "b", ""} {
		node.Write([]byte(p))
	}
	var got []string
	for len(got) < 2 {
		n, err := e.Read(b, sizes)
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			got = append(got, string(b[i][:sizes[i]]))
		}
	}
	if fmt.Sprint(got) != "[a b]" {
		t.Fatalf("got %q, want [a b]", got)
	}
	// The trailing empty packet alone: Read waits for more.
	go func() {
		time.Sleep(20 * time.Millisecond)
		node.Write([]byte("c"))
		node.Close()
	}()
	if n, err := e.Read(b, sizes); err != nil || n != 1 || string(b[0][:sizes[0]]) != "c" {
		t.Fatalf("Read = %d, %v; want c", n, err)
	}
	if n, err := e.Read(b, sizes); n != 0 || err != io.EOF {
		t.Fatalf("after close: Read = %d, %v; want io.EOF", n, err)
	}
}

// Write waits while the node's socket is full: it drops nothing.
func TestWriteWaitsForTheNode(t *testing.T) {
	e, node := pair(t)
	const total = 5000
	done := make(chan error, 1)
	go func() {
		msgs := make([][]byte, e.BatchSize())
		for sent := 0; sent < total; {
			k := min(len(msgs), total-sent)
			for i := range k {
				msgs[i] = []byte(fmt.Sprintf("%d", sent+i))
			}
			n, err := e.Write(msgs[:k])
			if err != nil || n != k {
				done <- fmt.Errorf("Write = %d, %v; want %d", n, err, k)
				return
			}
			sent += k
		}
		done <- nil
	}()
	buf := make([]byte, 64)
	for i := range total {
		if i == 0 {
			time.Sleep(20 * time.Millisecond) // let the socket fill
		}
		n, err := node.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		if string(buf[:n]) != fmt.Sprint(i) {
			t.Fatalf("message %d: %q", i, buf[:n])
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestCloseUnblocksWrite(t *testing.T) {
	e, _ := pair(t)
	done := make(chan error, 1)
	go func() {
		msgs := make([][]byte, e.BatchSize())
		for i := range msgs {
			msgs[i] = make([]byte, 1000)
		}
		for {
			if _, err := e.Write(msgs); err != nil {
				done <- err
				return
			}
		}
	}()
	time.Sleep(20 * time.Millisecond)
	e.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Write after Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not unblock Write")
	}
}

func TestNoAllocs(t *testing.T) {
	e, node := pair(t)
	peer := New(node, nil)
	msgs := make([][]byte, e.BatchSize())
	for i := range msgs {
		msgs[i] = make([]byte, 64)
	}
	b, sizes := bufs(e.BatchSize())
	allocs := testing.AllocsPerRun(100, func() {
		if n, err := e.Write(msgs); n != len(msgs) || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
		for left := len(msgs); left > 0; {
			n, err := peer.Read(b, sizes)
			if err != nil {
				t.Fatal(err)
			}
			left -= n
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per batch written and read", allocs)
	}
}
