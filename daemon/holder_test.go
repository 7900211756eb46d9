package daemon

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// runTestHolder serves a holder in this process beside a control socket in
// a new directory, idle after idle, and returns the control socket and a
// channel that gets what runHolder returned.
func runTestHolder(t *testing.T, idle time.Duration) (string, chan error) {
	t.Helper()
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	sock := filepath.Join(dir, "ipn.sock")
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- runHolder(holderPath(sock), slog.New(slog.NewTextHandler(io.Discard, nil)), idle, func() { close(ready) })
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("holder: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("holder did not come up")
	}
	return sock, done
}

// pipeFD returns the read end of a new pipe, closed when the test ends,
// and the write end, which the test owns.
func pipeFD(t *testing.T) (r, w int) {
	t.Helper()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(p[0]) })
	return p[0], p[1]
}

// The holder keeps what is put until dropped, gives it back in list with
// working descriptors, refuses what is out of bounds, and outlives its
// daemon connection; a newer connection replaces the older, which is told.
func TestHolderProtocol(t *testing.T) {
	sock, _ := runTestHolder(t, time.Hour)
	path := holderPath(sock)
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&0o7777 != 0o600 || st.Uid != uint32(os.Geteuid()) || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		t.Fatalf("holder socket mode %#o uid %d, want a socket of mode 0600 of uid %d", st.Mode, st.Uid, os.Geteuid())
	}
	if m, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".holder-*")); len(m) != 0 {
		t.Errorf("the holder left its private directory: %v", m)
	}
	hc, err := dialHolder(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	r, w := pipeFD(t)
	if _, err := hc.call(holderPut, "a", []byte("meta a"), []int{w}); err != nil {
		t.Fatal(err)
	}
	unix.Close(w) // the holder has its own
	for _, c := range []struct {
		what string
		id   string
		meta []byte
		fds  int
		want syscall.Errno
	}{
		{"no descriptor", "b", nil, 0, syscall.EINVAL},
		{"too many descriptors", "b", nil, holderMaxFDs + 1, syscall.EINVAL},
		{"too much metadata", "b", bytes.Repeat([]byte("x"), holderMaxMeta+1), 1, syscall.EMSGSIZE},
	} {
		var fds []int
		for range c.fds {
			fds = append(fds, r)
		}
		_, err := hc.call(holderPut, c.id, c.meta, fds)
		var refused *holderRefusal
		if !errors.As(err, &refused) || !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want the holder's refusal %v", c.what, err, c.want)
		}
	}
	if _, err := hc.call(holderDrop, "nothing", nil, nil); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("drop of nothing: %v, want ENOENT", err)
	}

	// A new connection replaces the old one, which is told so.
	hc2, err := dialHolder(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer hc2.close()
	if _, err := hc.next(time.Now().Add(10 * time.Second)); !errors.Is(err, errSuperseded) {
		t.Errorf("the replaced connection: %v, want errSuperseded", err)
	}
	hc.close()
	entries, err := hc2.list()
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].id != "a" || string(entries[0].meta) != "meta a" || len(entries[0].fds) != 1 {
		t.Fatalf("list: %+v, want a with its metadata and descriptor", entries)
	}
	// The descriptor given back is the pipe's write end.
	if _, err := unix.Write(entries[0].fds[0], []byte("hi")); err != nil {
		t.Fatal(err)
	}
	closeFDs(entries[0].fds)
	buf := make([]byte, 8)
	if n, err := unix.Read(r, buf); err != nil || string(buf[:n]) != "hi" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
	// Dropped, the holder closes its copy: the pipe sees its end.
	if _, err := hc2.call(holderDrop, "a", nil, nil); err != nil {
		t.Fatal(err)
	}
	if n, err := unix.Read(r, buf); n != 0 || err != nil {
		t.Fatalf("after drop, read %d, %v; want the end of the pipe", n, err)
	}
	if entries, err := hc2.list(); err != nil || len(entries) != 0 {
		t.Fatalf("list after drop: %v, %v", entries, err)
	}
}

// The holder bounds its entries.
func TestHolderBoundsEntries(t *testing.T) {
	sock, _ := runTestHolder(t, time.Hour)
	hc, err := dialHolder(holderPath(sock), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer hc.close()
	r, _ := pipeFD(t)
	for i := range holderMaxEntries {
		if _, err := hc.call(holderPut, "e"+strconv.Itoa(i), nil, []int{r}); err != nil {
			t.Fatalf("put %d: %v", i, err)
		}
	}
	if _, err := hc.call(holderPut, "one more", nil, []int{r}); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("put past %d entries: %v, want ENOSPC", holderMaxEntries, err)
	}
	// Replacing one held is no more.
	if _, err := hc.call(holderPut, "e0", nil, []int{r}); err != nil {
		t.Fatalf("replacing an entry: %v", err)
	}
}

// A holder that holds nothing exits once no daemon has been connected for
// its idle time, removing its socket; while a daemon is connected, or it
// holds something, it stays.
func TestHolderIdleExit(t *testing.T) {
	sock, done := runTestHolder(t, 200*time.Millisecond)
	hc, err := dialHolder(holderPath(sock), nil)
	if err != nil {
		t.Fatal(err)
	}
	r, _ := pipeFD(t)
	if _, err := hc.call(holderPut, "a", nil, []int{r}); err != nil {
		t.Fatal(err)
	}
	hc.close()
	select {
	case err := <-done:
		t.Fatalf("the holder exited holding something: %v", err)
	case <-time.After(time.Second): // 5 times its idle time
	}
	hc, err = dialHolder(holderPath(sock), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := hc.call(holderDrop, "a", nil, nil); err != nil {
		t.Fatal(err)
	}
	hc.close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("an idle holder holding nothing did not exit")
	}
	if _, err := os.Lstat(holderPath(sock)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket after exit: %v, want none", err)
	}
	if _, err := net.Dial("unixpacket", holderPath(sock)); err == nil {
		t.Error("a holder answers after exiting")
	}
}

// A daemon asked to hand its holder over lets it go, and takes it back.
func TestHolderDetachResume(t *testing.T) {
	sock, _ := runTestHolder(t, time.Hour)
	s := newServer(Config{Socket: sock, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	s.restoreHeld()
	ds := &s.devices
	ds.holder.mu.Lock()
	hc := ds.holder.conn
	ds.holder.mu.Unlock()
	if hc == nil {
		t.Fatal("restoreHeld did not connect to the running holder")
	}
	ds.detachHolder()
	select {
	case <-hc.dead:
	case <-time.After(10 * time.Second):
		t.Fatal("detached, the connection stays")
	}
	ds.holder.mu.Lock()
	_, err := ds.ensureLocked(false)
	ds.holder.mu.Unlock()
	if !errors.Is(err, errSuperseded) {
		t.Fatalf("a detached daemon connects again: %v", err)
	}
	ds.resumeHolder()
	ds.holder.mu.Lock()
	defer ds.holder.mu.Unlock()
	if ds.holder.conn == nil {
		t.Fatal("resumed, the daemon is not connected")
	}
	ds.holder.conn.close()
}
