package ipn_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

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

func TestMountDeviceFiles(t *testing.T) {
	requireRoot(t)
	requireFUSE(t)
	path, _ := bindNet(t, nil)
	dir := tempDir(t)
	m := start(t, nil, nil, ipnCommand(t), "mount", dir)
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	file := filepath.Join(dir, devfs.Name(path))
	waitFor(t, 15*time.Second, file+" to appear", func() bool {
		select {
		case <-m.done:
			t.Fatalf("ipn mount exited: %v\n%s", m.err, m.stderr())
		default:
		}
		_, err := os.Stat(file)
		return err == nil
	})

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
