package qemu_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/cable"
	"github.com/ipn-project/ipn/farend/qemu"
)

// syncBuf is a log the endpoints write while the test reads it.
type syncBuf struct {
	mu   sync.Mutex
	b    bytes.Buffer
	grew chan struct{} // closed when the log grows
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.grew != nil {
		close(s.grew)
		s.grew = nil
	}
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Len returns the log's length so far, a mark for waitLogFrom.
func (s *syncBuf) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Len()
}

// watch returns the log from byte from on, and a channel closed when it
// grows.
func (s *syncBuf) watch(from int) (string, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.grew == nil {
		s.grew = make(chan struct{})
	}
	return string(s.b.Bytes()[from:]), s.grew
}

// reader reads frames from an endpoint in a goroutine the test owns.
type reader struct {
	frames chan []byte
	done   chan error
}

func readAll(t *testing.T, e interface {
	Read([][]byte, []int) (int, error)
}) *reader {
	r := &reader{frames: make(chan []byte, 64), done: make(chan error, 1)}
	go func() {
		bufs := [][]byte{make([]byte, 65536), make([]byte, 65536)}
		sizes := make([]int, 2)
		for {
			n, err := e.Read(bufs, sizes)
			for i := 0; i < n; i++ {
				r.frames <- bytes.Clone(bufs[i][:sizes[i]])
			}
			if err != nil {
				r.done <- err
				return
			}
		}
	}()
	return r
}

// next returns the next frame, failing after a while.
func (r *reader) next(t *testing.T) []byte {
	t.Helper()
	select {
	case f := <-r.frames:
		return f
	case err := <-r.done:
		t.Fatalf("reader ended: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("no frame in 10s")
	}
	return nil
}

// end waits for the reader's end and returns its error.
func (r *reader) end(t *testing.T) error {
	t.Helper()
	select {
	case err := <-r.done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("reader still reading after 10s")
	}
	return nil
}

// frame is QEMU's stream framing of f.
func frame(f []byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(f))), f...)
}

// readFrame reads one frame of QEMU's framing from c.
func readFrame(t *testing.T, c net.Conn) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var hdr [4]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		t.Fatalf("reading a length: %v", err)
	}
	b := make([]byte, binary.BigEndian.Uint32(hdr[:]))
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("reading a frame: %v", err)
	}
	return b
}

func dial(t *testing.T, path string) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitLog waits until the log holds s.
func waitLog(t *testing.T, log *syncBuf, s string) {
	t.Helper()
	waitLogFrom(t, log, 0, s)
}

// waitLogFrom waits until the log holds s after its first from bytes.
func waitLogFrom(t *testing.T, log *syncBuf, from int, s string) {
	t.Helper()
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	for {
		text, grew := log.watch(from)
		if strings.Contains(text, s) {
			return
		}
		select {
		case <-grew:
		case <-timeout.C:
			t.Fatalf("log lacks %q after byte %d:\n%s", s, from, log)
		}
	}
}

// A listening stream takes one QEMU after another: frames flow both ways
// with each; a connection that breaks the framing (a length of 4 GiB) is
// dropped and the next is taken; frames over the MTU, and empty ones, are
// dropped and counted, and the frames after them pass; with no QEMU,
// frames for it are dropped, counted, and no error.
func TestStreamListenReconnectsAndDrops(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vm.sock")
	log := &syncBuf{}
	e, err := qemu.Listen(path, 0, log)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	e.SetMTU(100)
	if n, err := e.Write([][]byte{[]byte("nobody")}); n != 0 || err != nil {
		t.Fatalf("Write with no QEMU: %d, %v; want 0, nil", n, err)
	}
	r := readAll(t, e)

	for i, hostile := range [][]byte{{0xff, 0xff, 0xff, 0xff}, {0, 1, 0x10, 0x01}, nil} {
		c := dial(t, path)
		want := []byte{'a', byte('0' + i)}
		c.Write(append(append(append(frame(make([]byte, 101)), frame(nil)...), frame(make([]byte, 100))...), frame(want)...))
		if got := r.next(t); len(got) != 100 {
			t.Fatalf("connection %d: first frame %d bytes, want the one of 100 (the MTU)", i, len(got))
		}
		if got := r.next(t); !bytes.Equal(got, want) {
			t.Fatalf("connection %d: frame %q, want %q", i, got, want)
		}
		waitLog(t, log, "(connection "+string(rune('1'+i))+")")
		if n, err := e.Write([][]byte{[]byte("to QEMU")}); n != 1 || err != nil {
			t.Fatalf("Write: %d, %v", n, err)
		}
		if got := readFrame(t, c); string(got) != "to QEMU" {
			t.Fatalf("QEMU read %q", got)
		}
		if hostile != nil {
			c.Write(hostile)
			waitLog(t, log, "over the 69632 of QEMU's largest frame; waiting for the next")
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.Read(make([]byte, 1)); err != io.EOF {
				t.Fatalf("a connection that sent a length of %x: read %v, want EOF (hung up)", hostile, err)
			}
		}
		c.Close()
	}
	st := e.Stats()
	if st.Oversize != 3 || st.Empty != 3 || st.Unsent != 1 || st.Conns != 3 {
		t.Fatalf("stats %+v: want 3 oversize, 3 empty, 1 unsent, 3 connections", st)
	}
	for _, w := range []string{"a frame of 101 bytes from QEMU, over the network's MTU of 100 (1 dropped so far)", "an empty frame from QEMU (1 dropped so far)", "which is not connected (1 dropped so far)"} {
		if !strings.Contains(log.String(), w) {
			t.Errorf("log lacks %q:\n%s", w, log)
		}
	}
	e.Close()
	if err := r.end(t); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read after Close: %v, want net.ErrClosed", err)
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Fatalf("%s after Close: %v, want gone", path, err)
	}
}

// A stream connected to QEMU's server carries frames both ways and ends
// with io.EOF when QEMU closes it.
func TestStreamConnect(t *testing.T) {
	path := filepath.Join(t.TempDir(), "qemu.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, err := qemu.Connect(filepath.Join(t.TempDir(), "none"), nil); !errors.Is(err, syscall.ENOENT) || !cable.Retryable(err) {
		t.Fatalf("Connect to no socket: %v, want ENOENT (retryable)", err)
	}
	e, err := qemu.Connect(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	r := readAll(t, e)
	c.Write(frame([]byte("from QEMU")))
	if got := r.next(t); string(got) != "from QEMU" {
		t.Fatalf("read %q", got)
	}
	e.Write([][]byte{[]byte("one"), []byte("two")})
	if a, b := readFrame(t, c), readFrame(t, c); string(a) != "one" || string(b) != "two" {
		t.Fatalf("QEMU read %q, %q", a, b)
	}
	c.Close()
	if err := r.end(t); err != io.EOF {
		t.Fatalf("after QEMU closed: %v, want io.EOF", err)
	}
}

// Socket files are made safely: a symlink or a file that is not a socket
// is refused and left alone (nothing made where the symlink points); a
// socket someone serves is refused; a stale socket is replaced; mode= sets
// the mode, and without it the umask does; Close removes only its own
// file.
func TestSocketFilesMadeSafely(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	link := filepath.Join(dir, "link")
	os.Symlink(target, link)
	if _, err := qemu.Listen(link, 0, nil); !errors.Is(err, syscall.EEXIST) || !strings.Contains(err.Error(), link) {
		t.Fatalf("Listen on a symlink: %v, want EEXIST naming %s", err, link)
	}
	if _, err := os.Lstat(target); !os.IsNotExist(err) {
		t.Fatalf("the symlink's target was made: %v", err)
	}
	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("keep"), 0o644)
	if _, err := qemu.ListenDgram(file, "/tmp/x", 0, nil); !errors.Is(err, syscall.EEXIST) {
		t.Fatalf("ListenDgram on a file: %v, want EEXIST", err)
	}
	if b, _ := os.ReadFile(file); string(b) != "keep" {
		t.Fatalf("the file was changed: %q", b)
	}

	live := filepath.Join(dir, "live")
	ln, err := net.Listen("unix", live)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := qemu.Listen(live, 0, nil); !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("Listen on a served socket: %v, want EADDRINUSE", err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close() // now stale
	e, err := qemu.Listen(live, 0o600, nil)
	if err != nil {
		t.Fatalf("Listen on a stale socket: %v", err)
	}
	st, err := os.Lstat(live)
	if err != nil || st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != 0o600 {
		t.Fatalf("%s: %v, %v; want a socket of mode 0600", live, st.Mode(), err)
	}
	e.Close()
	if _, err := os.Lstat(live); !os.IsNotExist(err) {
		t.Fatalf("after Close: %v", err)
	}

	old := syscall.Umask(0o027)
	d, err := qemu.ListenDgram(filepath.Join(dir, "d"), "/tmp/x", 0, nil)
	syscall.Umask(old)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Lstat(filepath.Join(dir, "d")); err != nil || st.Mode().Perm() != 0o750 {
		t.Fatalf("with umask 027: %v, %v; want mode 0750", st.Mode(), err)
	}
	// Another file took the name: Close leaves it.
	os.Remove(filepath.Join(dir, "d"))
	os.WriteFile(filepath.Join(dir, "d"), nil, 0o644)
	d.Close()
	if _, err := os.Lstat(filepath.Join(dir, "d")); err != nil {
		t.Fatalf("Close removed a file that was not its socket: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".*.tmp")); len(left) != 0 {
		t.Fatalf("temporary sockets left: %v", left)
	}
}

// A dgram far end exchanges frames with QEMU's socket alone: once it has
// connected its socket to QEMU's, the kernel refuses any other sender's
// datagrams (EPERM); datagrams that came before, empty ones and ones over
// the MTU are dropped and counted; frames for a QEMU that is not there are
// dropped, not an error. A QEMU that restarts (a new socket at its path)
// is connected to again, and strangers are still refused.
func TestDgram(t *testing.T) {
	dir := t.TempDir()
	path, qpath := filepath.Join(dir, "ipn.sock"), filepath.Join(dir, "qemu.sock")
	log := &syncBuf{}
	e, err := qemu.ListenDgram(path, qpath, 0, log)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	e.SetMTU(100)
	waitLog(t, log, "QEMU's socket "+qpath+": no such file or directory; trying again every 250ms")
	if n, err := e.Write([][]byte{[]byte("nobody")}); n != 0 || err != nil {
		t.Fatalf("Write with no QEMU: %d, %v; want 0, nil", n, err)
	}
	stranger, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(dir, "stranger"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	to := &net.UnixAddr{Name: path, Net: "unixgram"}
	// Before QEMU is there, anyone may send; that datagram is dropped.
	if _, err := stranger.WriteToUnix([]byte("early"), to); err != nil {
		t.Fatalf("a datagram before QEMU's socket is there: %v", err)
	}
	q, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: qpath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	r := readAll(t, e)
	waitLog(t, log, "connected to QEMU's socket "+qpath+": datagrams from any other are refused")
	if _, err := stranger.WriteToUnix([]byte("forged"), to); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("a stranger's datagram once connected to QEMU: %v, want EPERM", err)
	}
	q.WriteToUnix(make([]byte, 101), to)
	q.WriteToUnix(nil, to)
	q.WriteToUnix([]byte("from QEMU"), to)
	if got := r.next(t); string(got) != "from QEMU" {
		t.Fatalf("read %q, want only QEMU's frame", got)
	}
	qemuReads := func(q *net.UnixConn, want string) {
		t.Helper()
		if n, err := e.Write([][]byte{[]byte(want)}); n != 1 || err != nil {
			t.Fatalf("Write: %d, %v", n, err)
		}
		b := make([]byte, 100)
		q.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, from, err := q.ReadFromUnix(b)
		if err != nil || string(b[:n]) != want || from == nil || from.Name != path {
			t.Fatalf("QEMU read %q from %v, %v; want %q from %s", b[:n], from, err, want, path)
		}
	}
	qemuReads(q, "to QEMU")
	if st := e.Stats(); st.Strangers != 1 || st.Oversize != 1 || st.Empty != 1 || st.Unsent != 1 {
		t.Fatalf("stats %+v: want 1 stranger, 1 oversize, 1 empty, 1 unsent", st)
	}
	if !strings.Contains(log.String(), "a datagram that came before the socket was connected to QEMU's "+qpath+", from no socket known (1 dropped so far)") {
		t.Fatalf("log lacks the early datagram:\n%s", log)
	}

	// QEMU restarts: its socket goes, then a new one is at its path.
	mark := log.Len()
	q.Close()
	os.Remove(qpath)
	waitLogFrom(t, log, mark, "QEMU's socket "+qpath+": no such file or directory")
	if _, err := stranger.WriteToUnix([]byte("forged"), to); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("a stranger's datagram while QEMU is away: %v, want EPERM", err)
	}
	q2, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: qpath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer q2.Close()
	waitLogFrom(t, log, mark, "connected to QEMU's socket "+qpath+" again")
	if _, err := stranger.WriteToUnix([]byte("forged"), to); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("a stranger's datagram once connected to the new QEMU: %v, want EPERM", err)
	}
	q2.WriteToUnix([]byte("from the new QEMU"), to)
	if got := r.next(t); string(got) != "from the new QEMU" {
		t.Fatalf("read %q, want the new QEMU's frame", got)
	}
	qemuReads(q2, "to the new QEMU")

	e.Close()
	if err := r.end(t); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read after Close: %v", err)
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Fatalf("%s after Close: %v", path, err)
	}
}

// A listening stream's Write to a QEMU that does not read waits for it a
// bounded time, once: the frames that do not fit are dropped and counted,
// the writes after drop at once while QEMU does not read, and the
// connection is kept. When QEMU reads again, it gets whole frames in
// order (one cut short is finished before any other), then new ones.
func TestStreamWriteToQEMUThatDoesNotRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vm.sock")
	log := &syncBuf{}
	e, err := qemu.Listen(path, 0, log)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	r := readAll(t, e)
	c := dial(t, path)
	waitLog(t, log, "(connection 1)")

	// 6400 frames of 1400 bytes, 9 MB: far more than the socket holds.
	const batches, size = 200, 1400
	type result struct {
		sent, total int
		err         error
	}
	done := make(chan result, 1)
	go func() {
		var res result
		batch := make([][]byte, 32)
		for i := range batches {
			for j := range batch {
				f := make([]byte, size)
				binary.BigEndian.PutUint32(f, uint32(res.total))
				batch[j] = f
				res.total++
			}
			n, err := e.Write(batch)
			res.sent += n
			if err != nil {
				res.err = fmt.Errorf("Write of batch %d: %w", i, err)
				break
			}
		}
		done <- res
	}()
	var res result
	select {
	case res = <-done:
	case <-time.After(10 * time.Second):
		e.Close() // wakes the Write
		<-done
		t.Fatal("Write to a QEMU that does not read still waits after 10s")
	}
	if res.err != nil {
		t.Fatal(res.err)
	}
	st := e.Stats()
	if res.sent == 0 || res.sent == res.total || st.Unsent != uint64(res.total-res.sent) {
		t.Fatalf("%d frames written, %d taken, stats %+v: want some taken, the rest counted unsent", res.total, res.sent, st)
	}
	if !strings.Contains(log.String(), "QEMU does not read: frames for it are dropped until it takes them again (1 times so far)") ||
		!strings.Contains(log.String(), "a frame for QEMU, which does not read (1 dropped so far)") {
		t.Fatalf("log lacks the stall:\n%s", log)
	}

	// QEMU takes all that waits for it; a frame may be cut short there.
	rc, err := c.(*net.UnixConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var queued int
	rc.Control(func(fd uintptr) { queued, err = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
	if err != nil || queued == 0 {
		t.Fatalf("bytes queued for QEMU: %d, %v", queued, err)
	}
	buf := make([]byte, queued)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	// With the socket empty, a new frame goes at once, after the rest of
	// the one cut short.
	if n, err := e.Write([][]byte{[]byte("after")}); n != 1 || err != nil {
		t.Fatalf("Write once QEMU reads again: %d, %v; want 1, nil", n, err)
	}
	all := io.MultiReader(bytes.NewReader(buf), c)
	next := func(i int) []byte {
		t.Helper()
		var hdr [4]byte
		if _, err := io.ReadFull(all, hdr[:]); err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		f := make([]byte, binary.BigEndian.Uint32(hdr[:]))
		if _, err := io.ReadFull(all, f); err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		return f
	}
	for i, last := 0, -1; i < res.sent; i++ {
		f := next(i)
		if len(f) != size || int(binary.BigEndian.Uint32(f)) <= last {
			t.Fatalf("frame %d of QEMU's: %d bytes, number %d; want %d bytes, a number over %d", i, len(f), binary.BigEndian.Uint32(f), size, last)
		}
		last = int(binary.BigEndian.Uint32(f))
	}
	if got := next(res.sent); string(got) != "after" {
		t.Fatalf("QEMU read %q, want the frame written once it read again", got)
	}
	if st := e.Stats(); st.Conns != 1 {
		t.Fatalf("connections %d: want the one, kept", st.Conns)
	}
	e.Close()
	if err := r.end(t); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read after Close: %v", err)
	}
}

// Bad URLs are refused when opened, for good (not retryable), with an
// error that names the URL, the bad value and what is allowed.
func TestBadURLs(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		url  string
		want []string
	}{
		{"qemu-stream://tmp/vm.sock", []string{`"tmp/vm.sock"`, "qemu-stream:///ABSOLUTE/PATH"}},
		{"qemu-stream://", []string{"qemu-stream:///ABSOLUTE/PATH"}},
		{"qemu-stream://" + dir + "/s?mode=999", []string{`mode "999"`, "1 to 777"}},
		{"qemu-stream://" + dir + "/s?mode=0", []string{`mode "0"`}},
		{"qemu-stream://" + dir + "/s?bogus=1", []string{`"bogus"`, "options of qemu-stream: mode"}},
		{"qemu-stream://" + dir + "/s?mode=600&mode=644", []string{`"mode" given 2 times`}},
		{"qemu-stream+connect://" + dir + "/s?mode=600", []string{`"mode"`, "options of qemu-stream+connect: none"}},
		{"qemu-dgram://" + dir + "/s", []string{"no remote", "?remote=QEMUPATH"}},
		{"qemu-dgram://" + dir + "/s?remote=vm.sock", []string{`remote "vm.sock"`, "absolute"}},
		{"qemu-dgram://" + dir + "/s?remote=" + dir + "/s", []string{"own path"}},
		{"qemu-dgram://" + dir + "/s?remote=/x&mode=abc", []string{`mode "abc"`}},
		{"qemu-dgram://" + dir + "/" + strings.Repeat("n", 100) + "?remote=/x", []string{"too long"}},
	} {
		far, err := cable.Open(context.Background(), tc.url)
		if err == nil {
			far.Close()
			t.Errorf("%s opened", tc.url)
			continue
		}
		if cable.Retryable(err) {
			t.Errorf("%s: %v is retryable", tc.url, err)
		}
		for _, w := range append(tc.want, tc.url) {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q lacks %q", tc.url, err, w)
			}
		}
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Fatalf("refused URLs left files: %v", left)
	}
}
