package ipn_test

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn"
)

// pollIn waits up to 30 seconds for fd to be readable.
func pollIn(t *testing.T, fd int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		left := time.Until(deadline)
		if left <= 0 {
			t.Fatal("no message on the device file in 30s")
		}
		n, err := unix.Poll(pfd, int(left.Milliseconds())+1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			t.Fatalf("poll: %v", err)
		}
		if n == 1 {
			return
		}
	}
}

// readDevInto reads one message from the device file fd into buf.
func readDevInto(t *testing.T, fd int, buf []byte) []byte {
	t.Helper()
	pollIn(t, fd)
	n, err := unix.Read(fd, buf)
	if err != nil {
		t.Fatalf("read %d bytes: %v", len(buf), err)
	}
	return buf[:n]
}

// A device file of a network of MTU 4 MiB carries a message of the MTU
// each way in one write(2) and one read(2), although the kernel cuts them
// in 128 KiB requests: a write that ends inside a page goes at once, one
// that ends at a request's end when the next write begins or the file is
// closed; a read with a larger buffer returns the message alone, a shorter
// one truncates it; a write over the MTU sends nothing, nor its retry.
func TestMountBigMessage(t *testing.T) {
	requireRoot(t)
	requireFUSE(t)
	path, mem := bindNet(t, func(s *ipn.Socket) {
		if err := s.SetMTU(packetMTU); err != nil {
			t.Fatal(err)
		}
	})
	_, file, m := mountNet(t, path)
	defer stopMount(t, m)
	rfd, wfd := openDev(t, path, file)
	r := rand.New(rand.NewPCG(14, 3))
	memBuf := make([]byte, packetMTU)
	devBuf := make([]byte, packetMTU+8192)
	// both checks that mem and the reading file each got msg.
	both := func(what string, msg []byte) {
		t.Helper()
		if got := recvBig(t, mem, memBuf); !bytes.Equal(got, msg) {
			t.Fatalf("%s: the member got %d bytes, want %d, not the same", what, len(got), len(msg))
		}
		if got := readDevInto(t, rfd, devBuf); !bytes.Equal(got, msg) {
			t.Fatalf("%s: the reading file got %d bytes, want %d, not the same", what, len(got), len(msg))
		}
	}
	write := func(fd int, msg []byte) {
		t.Helper()
		if n, err := unix.Write(fd, msg); n != len(msg) || err != nil {
			t.Fatalf("write of %d bytes: %d, %v", len(msg), n, err)
		}
	}

	// A write ending inside a page (an unaligned buffer; a length not a
	// multiple of a page) is sent at once.
	space := make([]byte, packetMTU+4096)
	unaligned := space[100 : 100+packetMTU]
	copy(unaligned, bigPayload(r, packetMTU, 1))
	start := time.Now()
	write(wfd, unaligned)
	if got := recvBig(t, mem, memBuf); !bytes.Equal(got, unaligned) {
		t.Fatalf("unaligned: the member got %d bytes, not the message", len(got))
	}
	t.Logf("device file to a member, 4 MiB: %v", time.Since(start))
	if got := readDevInto(t, rfd, devBuf); !bytes.Equal(got, unaligned) {
		t.Fatalf("unaligned: the reading file got %d bytes, not the message", len(got))
	}
	odd := bigPayload(r, packetMTU-1, 2)
	write(wfd, odd)
	both("4 MiB less a byte", odd)

	// A write of 4 MiB from a page-aligned buffer ends at a request's end:
	// it goes when the next write begins, or at close.
	aligned := bigPayload(r, packetMTU, 3)
	write(wfd, aligned)
	write(wfd, []byte("next"))
	both("aligned, then another write", aligned)
	both("the write after", []byte("next"))
	wfd2, err := unix.Open(file, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	write(wfd2, aligned)
	if err := unix.Close(wfd2); err != nil {
		t.Fatal(err)
	}
	both("aligned, then close", aligned)

	// From a member to the device file, read whole with a buffer larger
	// than the message, then truncated by a shorter one.
	msg := bigPayload(r, packetMTU, 4)
	start = time.Now()
	if err := mem.Send(msg); err != nil {
		t.Fatal(err)
	}
	if got := readDevInto(t, rfd, devBuf); !bytes.Equal(got, msg) {
		t.Fatalf("from a member: the file read %d bytes, not the message", len(got))
	}
	t.Logf("member to a device file, 4 MiB: %v", time.Since(start))
	if err := mem.Send(msg); err != nil {
		t.Fatal(err)
	}
	if got := readDevInto(t, rfd, make([]byte, 1000)); !bytes.Equal(got, msg[:1000]) {
		t.Fatalf("short read: %d bytes, not the message's first 1000", len(got))
	}
	if err := mem.Send([]byte("after")); err != nil {
		t.Fatal(err)
	}
	if got := readDevInto(t, rfd, devBuf); string(got) != "after" {
		t.Fatalf("after a truncated read: %q, want the next message", got[:min(len(got), 16)])
	}

	// Over the MTU: the kernel reports what it carried as a short write,
	// or the error; the rest written again is refused; nothing is sent.
	over := make([]byte, packetMTU+1)
	n, err := unix.Write(wfd, over)
	if err == nil && n < len(over) {
		_, err = unix.Write(wfd, over[n:])
	}
	if !errors.Is(err, syscall.EOVERFLOW) {
		t.Fatalf("write over the MTU: %d, %v: want EOVERFLOW", n, err)
	}
	write(wfd, []byte("ok"))
	both("after a write over the MTU", []byte("ok"))
	expectNothing(t, mem)
	if _, err := os.Stat(file); err != nil {
		t.Fatal(err)
	}
}

// A device file of a network of MTU 64 MiB carries 32 MiB messages each
// way in one write(2) and one read(2), as the kernel's 128 KiB requests,
// the files charged for the messages they hold rather than the MTU (a
// reading and a writing file of one user, both open).
func TestMountHugeMessage(t *testing.T) {
	requireRoot(t)
	requireFUSE(t)
	path, mem := bindNet(t, func(s *ipn.Socket) {
		if err := s.SetMTU(ipn.MaxMTU); err != nil {
			t.Fatal(err)
		}
		s.SetFlags(ipn.Lossless)
	})
	_, file, m := mountNet(t, path)
	defer stopMount(t, m)
	rfd, wfd := openDev(t, path, file)
	r := rand.New(rand.NewPCG(14, 4))
	buf := make([]byte, 32<<20+4096)

	msg := bigPayload(r, 32<<20+1000, 1)
	start := time.Now()
	if n, err := unix.Write(wfd, msg); n != len(msg) || err != nil {
		t.Fatalf("write of %d bytes: %d, %v", len(msg), n, err)
	}
	if got := recvBig(t, mem, buf); !bytes.Equal(got, msg) {
		t.Fatalf("device file to a member: %d bytes, want %d", len(got), len(msg))
	}
	t.Logf("device file to a member, 32 MiB: %v", time.Since(start))
	if got := readDevInto(t, rfd, buf); !bytes.Equal(got, msg) {
		t.Fatalf("device file to the reading file: %d bytes, want %d", len(got), len(msg))
	}

	back := bigPayload(r, 32<<20, 2)
	start = time.Now()
	errc := make(chan error, 1)
	go func() { errc <- mem.Send(back) }()
	if got := readDevInto(t, rfd, buf); !bytes.Equal(got, back) {
		t.Fatalf("member to a device file: %d bytes, want %d", len(got), len(back))
	}
	t.Logf("member to a device file, 32 MiB: %v", time.Since(start))
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	expectNothing(t, mem)
}
