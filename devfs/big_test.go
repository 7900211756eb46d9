package devfs

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"bazil.org/fuse"

	"github.com/ipn-project/ipn"
	"github.com/ipn-project/ipn/daemon"
	"github.com/ipn-project/ipn/internal/daemontest"
	"github.com/ipn-project/ipn/policy/loop"
)

// bigNet binds a network of MTU mtu and returns its path and a member.
func bigNet(t *testing.T, mtu int) (string, *ipn.Socket) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "net")
	b, err := ipn.NewSocket(ipn.Hub)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	if err := b.SetMTU(mtu); err != nil {
		t.Fatal(err)
	}
	if err := b.Bind(path); err != nil {
		t.Fatal(err)
	}
	return path, socket(t, path, false)
}

// openAs opens name with flags as root, as the kernel would, and returns
// the handle and the open's answer.
func openAs(t *testing.T, fsys *FS, name string, flags fuse.OpenFlags) (*handle, *fuse.OpenResponse, error) {
	t.Helper()
	root, _ := fsys.Root()
	n, err := root.(*dirNode).Lookup(context.Background(), &fuse.LookupRequest{Name: name}, &fuse.LookupResponse{})
	if err != nil {
		t.Fatalf("lookup %s: %v", name, err)
	}
	var resp fuse.OpenResponse
	h, err := n.(*netNode).Open(context.Background(), &fuse.OpenRequest{Flags: flags}, &resp)
	if err != nil {
		return nil, &resp, err
	}
	t.Cleanup(func() { h.(*handle).Release(context.Background(), &fuse.ReleaseRequest{}) })
	return h.(*handle), &resp, nil
}

// recvBytes receives the next message (not a probe) of s.
func recvBytes(t *testing.T, s *ipn.Socket, size int) []byte {
	t.Helper()
	s.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, size)
	for {
		n, flags, err := s.Recv(buf)
		if err != nil {
			t.Fatal(err)
		}
		if flags&ipn.MsgOOB == 0 && !loop.IsProbe(buf[:n]) {
			return buf[:n]
		}
	}
}

// nothing checks that s has no message waiting.
func nothing(t *testing.T, s *ipn.Socket) {
	t.Helper()
	s.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	buf := make([]byte, 1<<20)
	for {
		n, _, err := s.Recv(buf)
		if err == nil && loop.IsProbe(buf[:n]) {
			continue
		}
		if err == nil {
			t.Fatalf("unexpected message of %d bytes", n)
		}
		return
	}
}

// pattern returns n bytes that differ with seed and position.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) ^ seed ^ byte(i>>12)
	}
	return b
}

// A file of a network whose MTU is over SplitMTU is a stream; the
// requests of one write(2) make one message, sent at a request shorter
// than the kernel's largest, else when the next write begins or at Flush;
// a write over the MTU sends nothing, nor the next write (its retry).
func TestSplitWrites(t *testing.T) {
	daemontest.Start(t, daemon.Config{})
	const mtu = 1 << 20
	path, peer := bigNet(t, mtu)
	fsys, _ := New(nil, Options{})
	h, resp, err := openAs(t, fsys, Name(path), fuse.OpenWriteOnly)
	if err != nil {
		t.Fatal(err)
	}
	if !h.split || resp.Flags&openStream == 0 {
		t.Fatalf("split %v, open flags %v: want a stream", h.split, resp.Flags)
	}
	msg := pattern(2*maxRequest+1000, 1)
	// wr writes msg[from:to] as a request of the write(2) at msg[base].
	wr := func(data []byte, off int) error {
		var wresp fuse.WriteResponse
		err := h.Write(context.Background(), &fuse.WriteRequest{Data: data, Offset: int64(off)}, &wresp)
		if err == nil && wresp.Size != len(data) {
			t.Fatalf("write of %d bytes answered %d", len(data), wresp.Size)
		}
		return err
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	// Two full requests and a short one: one message.
	must(wr(msg[:maxRequest], 0))
	must(wr(msg[maxRequest:2*maxRequest], maxRequest))
	nothing(t, peer)
	must(wr(msg[2*maxRequest:], 2*maxRequest))
	if got := recvBytes(t, peer, mtu); !bytes.Equal(got, msg) {
		t.Fatalf("got %d bytes, want the %d written", len(got), len(msg))
	}
	// A first request no longer than SplitMTU is a whole write.
	must(wr(msg[:SplitMTU], 0))
	if got := recvBytes(t, peer, mtu); !bytes.Equal(got, msg[:SplitMTU]) {
		t.Fatalf("got %d bytes, want %d", len(got), SplitMTU)
	}
	// Ending at a full request: sent when the next write begins.
	must(wr(msg[:maxRequest], 0))
	must(wr(msg[maxRequest:2*maxRequest], maxRequest))
	nothing(t, peer)
	must(wr([]byte("next"), 0))
	if got := recvBytes(t, peer, mtu); !bytes.Equal(got, msg[:2*maxRequest]) {
		t.Fatalf("got %d bytes, want %d", len(got), 2*maxRequest)
	}
	if got := recvBytes(t, peer, mtu); string(got) != "next" {
		t.Fatalf("got %d bytes, want next", len(got))
	}
	// ... or at Flush (close).
	must(wr(msg[:maxRequest], 0))
	nothing(t, peer)
	must(h.Flush(context.Background(), &fuse.FlushRequest{}))
	if got := recvBytes(t, peer, mtu); !bytes.Equal(got, msg[:maxRequest]) {
		t.Fatalf("at flush: got %d bytes, want %d", len(got), maxRequest)
	}
	// Over the MTU; its retry; then a write goes again.
	big := pattern(mtu+1, 2)
	for off := 0; off < mtu; off += maxRequest {
		must(wr(big[off:off+maxRequest], off))
	}
	if err := wr(big[mtu:], mtu); !errors.Is(err, syscall.EOVERFLOW) {
		t.Fatalf("the request past the MTU: %v, want EOVERFLOW", err)
	}
	if err := wr(big[mtu:], 0); !errors.Is(err, syscall.EOVERFLOW) {
		t.Fatalf("the retry of the rest: %v, want EOVERFLOW", err)
	}
	must(wr([]byte("ok"), 0))
	if got := recvBytes(t, peer, mtu); string(got) != "ok" {
		t.Fatalf("after a write over the MTU: %d bytes, want ok", len(got))
	}
	// A request that continues no write is refused.
	if err := wr([]byte("x"), 5); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("a request at offset 5 with no write open: %v, want EINVAL", err)
	}
	nothing(t, peer)
}

// A read(2) of a split file takes one message over its requests: the
// request at offset 0 takes it, later ones continue it, and the next
// read(2) (offset 0) takes the next message, truncating the last.
func TestSplitReads(t *testing.T) {
	daemontest.Start(t, daemon.Config{})
	const mtu = 1 << 20
	path, peer := bigNet(t, mtu)
	fsys, _ := New(nil, Options{})
	h, _, err := openAs(t, fsys, Name(path), fuse.OpenReadOnly)
	if err != nil {
		t.Fatal(err)
	}
	rd := func(off, size int) []byte {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for {
			var resp fuse.ReadResponse
			if err := h.Read(ctx, &fuse.ReadRequest{Offset: int64(off), Size: size}, &resp); err != nil {
				t.Fatalf("read at %d: %v", off, err)
			}
			if off > 0 || !loop.IsProbe(resp.Data) {
				return resp.Data
			}
		}
	}
	send := func(msg []byte) {
		t.Helper()
		if err := peer.Send(msg); err != nil {
			t.Fatal(err)
		}
	}
	msg := pattern(2*maxRequest+1000, 3)
	send(msg)
	var got []byte
	for off := 0; ; off += maxRequest {
		part := rd(off, maxRequest)
		got = append(got, part...)
		if len(part) < maxRequest {
			break
		}
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("read %d bytes over requests, want the %d sent", len(got), len(msg))
	}
	// A message of exactly a request: the next request of the read(2)
	// finds nothing more.
	send(msg[:maxRequest])
	if part := rd(0, maxRequest); !bytes.Equal(part, msg[:maxRequest]) {
		t.Fatalf("read %d bytes, want %d", len(part), maxRequest)
	}
	if part := rd(maxRequest, maxRequest); len(part) != 0 {
		t.Fatalf("past the message: %d bytes, want none", len(part))
	}
	// A read(2) that stops short truncates its message.
	send(msg)
	send([]byte("after"))
	if part := rd(0, maxRequest); !bytes.Equal(part, msg[:maxRequest]) {
		t.Fatalf("read %d bytes, want %d", len(part), maxRequest)
	}
	if part := rd(0, maxRequest); string(part) != "after" {
		t.Fatalf("next read(2): %d bytes, want after", len(part))
	}
}

// One user's open files hold at most MaxBufferPerUser of message buffers:
// more opens fail with EDQUOT until one is closed.
func TestBufferBound(t *testing.T) {
	daemontest.Start(t, daemon.Config{})
	const mtu = 4 << 20
	path, _ := bigNet(t, mtu)
	fsys, _ := New(nil, Options{})
	per := 2 * int64(mtu+1)
	var hs []*handle
	for i := int64(0); (i+1)*per <= MaxBufferPerUser; i++ {
		h, _, err := openAs(t, fsys, Name(path), fuse.OpenReadOnly)
		if err != nil {
			t.Fatalf("open %d of %d bytes each: %v", i+1, per, err)
		}
		hs = append(hs, h)
	}
	if _, _, err := openAs(t, fsys, Name(path), fuse.OpenReadOnly); err != syscall.EDQUOT {
		t.Fatalf("open past %d bytes of buffers: %v, want EDQUOT", MaxBufferPerUser, err)
	}
	hs[0].Release(context.Background(), &fuse.ReleaseRequest{})
	if _, _, err := openAs(t, fsys, Name(path), fuse.OpenReadOnly); err != nil {
		t.Fatalf("open after a close: %v", err)
	}
}

// charged returns the message buffer bytes charged to uid.
func charged(fsys *FS, uid uint32) int64 {
	fsys.mu.Lock()
	defer fsys.mu.Unlock()
	return fsys.bufUser[uid]
}

// Files of a network of MTU 64 MiB (over HugeMTU) open without a charge
// and are charged for the messages they hold: a write's buffer as it
// grows, a message received until read. 32 MiB messages cross both ways;
// a message that would pass MaxBufferPerUser waits to be received until
// room is given back, and a write that would fails with EDQUOT.
func TestHugeMessages(t *testing.T) {
	daemontest.Start(t, daemon.Config{})
	const mtu = 64 << 20
	path, peer := bigNet(t, mtu)
	fsys, _ := New(nil, Options{})
	r, _, err := openAs(t, fsys, Name(path), fuse.OpenReadOnly)
	if err != nil {
		t.Fatal(err)
	}
	w, _, err := openAs(t, fsys, Name(path), fuse.OpenWriteOnly)
	if err != nil {
		t.Fatal(err)
	}
	if !r.huge || !w.huge || charged(fsys, 0) != 0 {
		t.Fatalf("huge %v %v, %d bytes charged at open: want huge files, none", r.huge, w.huge, charged(fsys, 0))
	}
	// write writes msg as one write(2) in the kernel's requests.
	write := func(msg []byte) error {
		for off := 0; ; off += maxRequest {
			part := msg[off:min(len(msg), off+maxRequest)]
			var resp fuse.WriteResponse
			if err := w.Write(context.Background(), &fuse.WriteRequest{Data: part, Offset: int64(off)}, &resp); err != nil {
				return err
			}
			if len(part) < maxRequest {
				return nil
			}
		}
	}
	// read reads one message as one read(2) in the kernel's requests.
	read := func() []byte {
		t.Helper()
		var got []byte
		for off := 0; ; off += maxRequest {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			var resp fuse.ReadResponse
			err := r.Read(ctx, &fuse.ReadRequest{Offset: int64(off), Size: maxRequest}, &resp)
			cancel()
			if err != nil {
				t.Fatalf("read at %d: %v", off, err)
			}
			if off == 0 && loop.IsProbe(resp.Data) {
				off -= maxRequest
				continue
			}
			got = append(got, resp.Data...)
			if len(resp.Data) < maxRequest {
				return got
			}
		}
	}
	waitCharged := func(want int64) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for charged(fsys, 0) != want {
			if time.Now().After(deadline) {
				t.Fatalf("%d bytes charged, want %d", charged(fsys, 0), want)
			}
			time.Sleep(time.Millisecond)
		}
	}

	// From a file to the member (and the reading file: a hub) and back,
	// 32 MiB (not a multiple of a request: the last one ends the write).
	msg := pattern(32<<20+5, 4)
	if err := write(msg); err != nil {
		t.Fatal(err)
	}
	if got := recvBytes(t, peer, mtu); !bytes.Equal(got, msg) {
		t.Fatalf("the member got %d bytes from the file, want %d", len(got), len(msg))
	}
	if got := read(); !bytes.Equal(got, msg) {
		t.Fatalf("the reading file got %d bytes from the writing one, want %d", len(got), len(msg))
	}
	waitCharged(0) // the write's buffer, given back once sent, and the read's
	if err := peer.Send(msg); err != nil {
		t.Fatal(err)
	}
	waitCharged(int64(len(msg))) // received ahead, not yet read
	if got := read(); !bytes.Equal(got, msg) {
		t.Fatalf("the file read %d bytes from the member, want %d", len(got), len(msg))
	}
	waitCharged(0)

	// Two of 40 MiB: the second waits for the first to be read.
	a, b := pattern(40<<20, 5), pattern(40<<20, 6)
	if err := peer.Send(a); err != nil {
		t.Fatal(err)
	}
	// A lossy port holds one big message at a time: b goes once the
	// file has taken a in, and then waits for a to be read.
	waitCharged(int64(len(a)))
	if err := peer.Send(b); err != nil {
		t.Fatal(err)
	}
	// Meanwhile a write of 32 MiB would pass the bound: EDQUOT, nothing
	// sent, and so is the next write(2) (the retry of its rest); then a
	// short one goes.
	if err := write(msg); !errors.Is(err, syscall.EDQUOT) {
		t.Fatalf("a write past the bound: %v, want EDQUOT", err)
	}
	if err := write(msg[len(msg)-100:]); !errors.Is(err, syscall.EDQUOT) {
		t.Fatalf("the retry of its rest: %v, want EDQUOT", err)
	}
	if err := write([]byte("short")); err != nil {
		t.Fatal(err)
	}
	if got := recvBytes(t, peer, mtu); string(got) != "short" {
		t.Fatalf("after a refused write, the member got %d bytes, want short", len(got))
	}
	if c := charged(fsys, 0); c != int64(len(a)) {
		t.Fatalf("%d bytes charged while the second message waits, want %d", c, len(a))
	}
	if got := read(); !bytes.Equal(got, a) {
		t.Fatalf("first of two: %d bytes, not the message", len(got))
	}
	// b and the short write come from two senders: either may come
	// first (a network keeps each sender's order, not one across them;
	// b may still be on its way in when the short one is written).
	got1, got2 := read(), read()
	if string(got1) == "short" {
		got1, got2 = got2, got1
	}
	if !bytes.Equal(got1, b) {
		t.Fatalf("second of two: %d bytes, not the message", len(got1))
	}
	if string(got2) != "short" {
		t.Fatalf("with them: %d bytes, want the short write", len(got2))
	}
	waitCharged(0)
	nothing(t, peer)
}
