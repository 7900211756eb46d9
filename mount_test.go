package ipn_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn"
	"github.com/ipn-project/ipn/devfs"
)

// requireFUSE skips when the kernel has no FUSE at all (even under CI,
// loudly); a missing /dev/fuse on a kernel that has FUSE is a failure.
func requireFUSE(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err == nil {
		return
	}
	fss, _ := os.ReadFile("/proc/filesystems")
	if !strings.Contains(string(fss), "\tfuse\n") {
		t.Log("!!!!! SKIPPING: this kernel has no FUSE support (no /dev/fuse, no fuse in /proc/filesystems) !!!!!")
		t.Skip("kernel without FUSE")
	}
	if os.Getenv("CI") != "" {
		t.Fatal("/dev/fuse is missing although the kernel supports FUSE (load the fuse module)")
	}
	t.Skip("/dev/fuse is missing")
}

func readers(t *testing.T, path string) int {
	t.Helper()
	nets, err := ipn.List(path)
	if err != nil || len(nets) != 1 {
		t.Fatalf("list %s: %v %v", path, nets, err)
	}
	return nets[0].Readers
}

// mountNet runs ipn mount [flags] on a new directory and waits for the
// file of the network at path to appear in it.
func mountNet(t *testing.T, path string, flags ...string) (dir, file string, m *proc) {
	t.Helper()
	dir = tempDir(t)
	m = start(t, nil, nil, ipnCommand(t), append(append([]string{"mount"}, flags...), dir)...)
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	file = filepath.Join(dir, devfs.Name(path))
	waitFor(t, 15*time.Second, file+" to appear", func() bool {
		select {
		case <-m.done:
			t.Fatalf("ipn mount exited: %v\n%s", m.err, m.stderr())
		default:
		}
		_, err := os.Stat(file)
		return err == nil
	})
	return dir, file, m
}

// TestMountDeviceFiles uses a mount in lines mode with line tools: echo
// and head -n1.
func TestMountDeviceFiles(t *testing.T) {
	requireRoot(t)
	requireFUSE(t)
	path, _ := bindNet(t, nil)
	dir, file, m := mountNet(t, path, "--lines")

	// A write is one message, less its newline.
	mem := member(t, path, nil)
	if out, err := exec.Command("sh", "-c", "echo hi > "+file).CombinedOutput(); err != nil {
		t.Fatalf("echo hi > %s: %v %s", file, err, out)
	}
	if got := recvString(t, mem); got != "hi" {
		t.Fatalf("member got %q, want hi", got)
	}

	// A read is one message, as a line.
	before := readers(t, path)
	head := start(t, nil, nil, "head", "-n1", file)
	waitFor(t, 10*time.Second, "head to join", func() bool { return readers(t, path) > before })
	if err := mem.Send([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if l := head.line(10 * time.Second); l != "hello" {
		t.Fatalf("head printed %q, want hello", l)
	}
	if err := head.wait(10 * time.Second); err != nil {
		t.Fatalf("head: %v %s", err, head.stderr())
	}

	// The file's owner and mode are the network's; without w, no writing.
	if err := os.Chmod(path, 0o704); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "mode 0704 on "+file, func() bool {
		st, err := os.Stat(file)
		return err == nil && st.Mode().Perm() == 0o704
	})
	o := start(t, asOther, nil, "sh", "-c", "echo x > "+file)
	err := o.wait(10 * time.Second)
	if err == nil {
		t.Fatal("a user without w wrote through the mount")
	}
	if s := o.stderr(); !strings.Contains(strings.ToLower(s), "permission denied") {
		t.Fatalf("echo x as other: %v, stderr %q, want permission denied", err, s)
	}
	expectNothing(t, mem)

	// SIGTERM unmounts.
	if err := stopBy(t, m, syscall.SIGTERM); err != nil {
		t.Fatalf("ipn mount: %v %s", err, m.stderr())
	}
	ents, err := os.ReadDir(dir)
	if err != nil || len(ents) != 0 {
		t.Fatalf("%s after unmount: %v %v", dir, ents, err)
	}
}

// TestMountPoll polls a device file opened for reading: no event while
// nothing is waiting, POLLIN once a member sends, and the read returns
// that message.
func TestMountPoll(t *testing.T) {
	requireRoot(t)
	requireFUSE(t)
	path, _ := bindNet(t, nil)
	_, file, m := mountNet(t, path)
	defer func() {
		if err := stopBy(t, m, syscall.SIGTERM); err != nil {
			t.Errorf("ipn mount: %v %s", err, m.stderr())
		}
	}()

	before := readers(t, path)
	fd, err := unix.Open(file, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open %s: %v", file, err)
	}
	defer unix.Close(fd)
	waitFor(t, 10*time.Second, "the open file to join", func() bool { return readers(t, path) > before })

	// The write end is always ready; the read end only with a message.
	wfd, err := unix.Open(file, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open %s for writing: %v", file, err)
	}
	defer unix.Close(wfd)
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}, {Fd: int32(wfd), Events: unix.POLLOUT}}
	n, err := unix.Poll(pfd, 200)
	if err != nil {
		t.Fatalf("poll: %v", err)
	}
	if n != 1 || pfd[0].Revents != 0 || pfd[1].Revents&unix.POLLOUT == 0 {
		t.Fatalf("poll with nothing sent: n=%d revents %#x %#x, want only POLLOUT on the write end", n, pfd[0].Revents, pfd[1].Revents)
	}

	mem := member(t, path, nil)
	sent := make(chan error, 1)
	go func() {
		time.Sleep(100 * time.Millisecond) // while poll waits
		sent <- mem.Send([]byte("polled"))
	}()
	pfd = pfd[:1]
	pfd[0].Revents = 0
	start := time.Now()
	for {
		n, err = unix.Poll(pfd, 5000)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil || n != 1 || pfd[0].Revents&unix.POLLIN == 0 {
		t.Fatalf("poll after a send: n=%d revents %#x err %v after %v, want POLLIN", n, pfd[0].Revents, err, time.Since(start))
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	n, err = unix.Read(fd, buf)
	if err != nil || string(buf[:n]) != "polled" {
		t.Fatalf("read: %q %v, want \"polled\"", buf[:max(n, 0)], err)
	}
	// Taken: not readable any more.
	pfd[0].Revents = 0
	if n, err := unix.Poll(pfd, 200); err != nil || n != 0 {
		t.Fatalf("poll after the read: n=%d revents %#x err %v, want a timeout", n, pfd[0].Revents, err)
	}
}

// stopMount stops ipn mount with SIGTERM and checks that it unmounted.
func stopMount(t *testing.T, m *proc) {
	t.Helper()
	if err := stopBy(t, m, syscall.SIGTERM); err != nil {
		t.Errorf("ipn mount: %v %s", err, m.stderr())
	}
}

// openDev opens the device file for reading and for writing, two openers,
// and waits until the reader has joined the network at path.
func openDev(t *testing.T, path, file string) (rfd, wfd int) {
	t.Helper()
	before := readers(t, path)
	rfd, err := unix.Open(file, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open %s: %v", file, err)
	}
	t.Cleanup(func() { unix.Close(rfd) })
	waitFor(t, 10*time.Second, "the open file to join", func() bool { return readers(t, path) > before })
	wfd, err = unix.Open(file, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open %s for writing: %v", file, err)
	}
	t.Cleanup(func() { unix.Close(wfd) })
	return rfd, wfd
}

// readDev reads one message from the device file fd, failing if none
// comes within 10 seconds.
func readDev(t *testing.T, fd int) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		left := time.Until(deadline)
		if left <= 0 {
			t.Fatal("no message on the device file in 10s")
		}
		n, err := unix.Poll(pfd, int(left.Milliseconds())+1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			t.Fatalf("poll: %v", err)
		}
		if n == 1 {
			break
		}
	}
	buf := make([]byte, 65536)
	n, err := unix.Read(fd, buf)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return string(buf[:n])
}

// writeDev writes msg to the device file fd in one write.
func writeDev(t *testing.T, fd int, msg string) {
	t.Helper()
	if n, err := unix.Write(fd, []byte(msg)); err != nil || n != len(msg) {
		t.Fatalf("write %q: %d %v", msg, n, err)
	}
}

// TestMountBinarySafe: by default messages cross the device files
// unchanged, both ways: no newline added on reads, none stripped on
// writes.
func TestMountBinarySafe(t *testing.T) {
	requireRoot(t)
	requireFUSE(t)
	path, mem := bindNet(t, nil)
	_, file, m := mountNet(t, path)
	defer stopMount(t, m)
	rfd, wfd := openDev(t, path, file)

	for _, msg := range []string{"abcd", "line\n", "two\n\n", "\x00\xff\n\x00"} {
		writeDev(t, wfd, msg)
		if got := readDev(t, rfd); got != msg {
			t.Errorf("wrote %q (%d bytes), another opener read %q (%d bytes)", msg, len(msg), got, len(got))
		}
		if got := recvString(t, mem); got != msg {
			t.Errorf("wrote %q, a member received %q", msg, got)
		}
	}
	if err := mem.Send([]byte("efgh")); err != nil {
		t.Fatal(err)
	}
	if got := readDev(t, rfd); got != "efgh" {
		t.Errorf("a member sent \"efgh\", the device file read %q", got)
	}
}

// TestMountLines: with ipn mount --lines, reads end each message with a
// newline and writes strip one.
func TestMountLines(t *testing.T) {
	requireRoot(t)
	requireFUSE(t)
	path, mem := bindNet(t, nil)
	_, file, m := mountNet(t, path, "--lines")
	defer stopMount(t, m)
	rfd, wfd := openDev(t, path, file)

	for _, c := range []struct{ write, sent, read string }{
		{"abcd", "abcd", "abcd\n"},
		{"line\n", "line", "line\n"},
		{"two\n\n", "two\n", "two\n"},
	} {
		writeDev(t, wfd, c.write)
		if got := readDev(t, rfd); got != c.read {
			t.Errorf("wrote %q, another opener read %q, want %q", c.write, got, c.read)
		}
		if got := recvString(t, mem); got != c.sent {
			t.Errorf("wrote %q, a member received %q, want %q", c.write, got, c.sent)
		}
	}
	// Just a newline sends nothing.
	writeDev(t, wfd, "\n")
	expectNothing(t, mem)
	if err := mem.Send([]byte("efgh")); err != nil {
		t.Fatal(err)
	}
	if got := readDev(t, rfd); got != "efgh\n" {
		t.Errorf("a member sent \"efgh\", the device file read %q, want \"efgh\\n\"", got)
	}
}

// TestMountNamesDistinct: the networks /D/a/x_y and /D/a/x/y get two
// device files, and a write to each reaches its own network alone.
func TestMountNamesDistinct(t *testing.T) {
	requireRoot(t)
	requireFUSE(t)
	d := tempDir(t)
	if err := os.MkdirAll(filepath.Join(d, "a", "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	pathU, memU := bindNetAt(t, filepath.Join(d, "a", "x_y"))
	pathS, memS := bindNetAt(t, filepath.Join(d, "a", "x", "y"))
	nameU, nameS := devfs.Name(pathU), devfs.Name(pathS)
	if nameU == nameS {
		t.Fatalf("one device name %q for %s and %s", nameU, pathU, pathS)
	}
	for name, path := range map[string]string{nameU: pathU, nameS: pathS} {
		if p, ok := devfs.Path(name); !ok || p != path {
			t.Errorf("devfs.Path(%q) = %q %v, want %q", name, p, ok, path)
		}
	}
	dir, fileU, m := mountNet(t, pathU)
	defer stopMount(t, m)
	fileS := filepath.Join(dir, nameS)
	waitFor(t, 15*time.Second, fileS+" to appear", func() bool {
		_, err := os.Stat(fileS)
		return err == nil
	})
	for _, c := range []struct {
		file    string
		to, not *ipn.Socket
		toP     string
	}{{fileU, memU, memS, pathU}, {fileS, memS, memU, pathS}} {
		f, err := os.OpenFile(c.file, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		msg := "to " + c.toP
		if _, err := f.Write([]byte(msg)); err != nil {
			t.Fatalf("write %s: %v", c.file, err)
		}
		f.Close()
		if got := recvString(t, c.to); got != msg {
			t.Errorf("%s got %q through %s, want %q", c.toP, got, c.file, msg)
		}
		expectNothing(t, c.not)
	}
}
