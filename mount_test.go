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

// mountNet runs ipn mount on a new directory and waits for the file of
// the network at path to appear in it.
func mountNet(t *testing.T, path string) (dir, file string, m *proc) {
	t.Helper()
	dir = tempDir(t)
	m = start(t, nil, nil, ipnCommand(t), "mount", dir)
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

func TestMountDeviceFiles(t *testing.T) {
	requireRoot(t)
	requireFUSE(t)
	path, _ := bindNet(t, nil)
	dir, file, m := mountNet(t, path)

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
	m.cmd.Process.Signal(syscall.SIGTERM)
	if err := m.wait(15 * time.Second); err != nil {
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
		m.cmd.Process.Signal(syscall.SIGTERM)
		if err := m.wait(15 * time.Second); err != nil {
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
	if err != nil || string(buf[:n]) != "polled\n" {
		t.Fatalf("read: %q %v, want \"polled\\n\"", buf[:max(n, 0)], err)
	}
	// Taken: not readable any more.
	pfd[0].Revents = 0
	if n, err := unix.Poll(pfd, 200); err != nil || n != 0 {
		t.Fatalf("poll after the read: n=%d revents %#x err %v, want a timeout", n, pfd[0].Revents, err)
	}
}
