package ipn_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn"
	"github.com/ipn-project/ipn/devfs"
)

// mountAll runs root's ipn mount of every network at a new directory and
// waits until it is mounted.
func mountAll(t *testing.T) string {
	t.Helper()
	requireFUSE(t)
	dir := shortDir(t)
	os.Chmod(dir, 0o755)
	m := start(t, nil, nil, ipnCommand(t), "mount", dir)
	t.Cleanup(func() {
		m.cmd.Process.Signal(syscall.SIGTERM)
		m.wait(15 * time.Second)
		syscall.Unmount(dir, syscall.MNT_DETACH)
	})
	waitFor(t, waitProcs, "the mount at "+dir, func() bool {
		select {
		case <-m.done:
			t.Fatalf("ipn mount exited: %v: %s", m.err, m.stderr())
		default:
		}
		var fs unix.Statfs_t
		return unix.Statfs(dir, &fs) == nil && fs.Type == unix.FUSE_SUPER_MAGIC
	})
	return dir
}

// waitFile waits for the device file name to appear in dir for root.
func waitFile(t *testing.T, dir, name string) string {
	t.Helper()
	f := filepath.Join(dir, name)
	waitFor(t, waitProcs, f, func() bool { _, err := os.Stat(f); return err == nil })
	return f
}

// quiet checks that the receiver p prints nothing from mallory for a while.
func quiet(t *testing.T, p *proc, what string) {
	t.Helper()
	deadline := time.After(300 * time.Millisecond)
	for {
		select {
		case l := <-p.lines:
			if strings.Contains(l, "mallory") {
				t.Fatalf("%s received %q", what, l)
			}
		case <-deadline:
			return
		}
	}
}

// Root's mount: mallory swaps a directory of hers for a symlink to alice's
// private directory while writing through her own device file. The
// mount resolves each path as its caller, once, and checks that it is
// the file listed, so nothing reaches alice's network.
func TestAttackMountSymlinkSwap(t *testing.T) {
	a, m := realUsers(t)
	adir := userDir(t, a, 0o700)
	private := filepath.Join(adir, "chat")
	binder := helper(t, a.cred(), "bindwait", private)
	binder.expect("ok ", waitProcs)
	os.Chmod(private, 0o777)
	recv := helper(t, a.cred(), "recv", private)
	recv.expect("ready ", waitProcs)
	mdir := userDir(t, m, 0o755)
	os.Mkdir(filepath.Join(mdir, "x"), 0o755)
	os.Chown(filepath.Join(mdir, "x"), int(m.uid), int(m.gid))
	hers := filepath.Join(mdir, "x", "chat")
	mb := helper(t, m.cred(), "bindwait", hers)
	mb.expect("ok ", waitProcs)
	dir := mountAll(t)
	file := waitFile(t, dir, devfs.Name(hers))
	h := helper(t, m.cred(), "devswap", filepath.Join(mdir, "x"), adir, file, "2s")
	got := h.expect("wrote ", 30*time.Second)
	if n, _ := strconv.Atoi(strings.Fields(got)[1]); n == 0 {
		t.Fatalf("mallory never wrote through her own device file: %s; %s", got, h.stderr())
	}
	quiet(t, recv, "alice's private network")
	legit(t, a, "")
}

// helpDevSwap writes to file again and again for d while swapping dir
// for a symlink to target and back.
func helpDevSwap(dir, target, file, dS string) error {
	d, _ := time.ParseDuration(dS)
	stop := make(chan struct{})
	done := make(chan int)
	go func() {
		n := 0
		for {
			select {
			case <-stop:
				done <- n
				return
			default:
			}
			if f, err := os.OpenFile(file, os.O_WRONLY, 0); err == nil {
				if _, err := f.Write([]byte("from mallory\n")); err == nil {
					n++
				}
				f.Close()
			}
		}
	}()
	real := dir + ".real"
	for end := time.Now().Add(d); time.Now().Before(end); {
		os.Rename(dir, real)
		os.Symlink(target, dir)
		time.Sleep(time.Millisecond)
		os.Remove(dir)
		os.Rename(real, dir)
		time.Sleep(time.Millisecond)
	}
	close(stop)
	fmt.Printf("wrote %d\n", <-done)
	return nil
}

// Root's mount shows a caller only the networks it can reach: a network
// in alice's private directory is not there for mallory, whatever its
// file's mode, and alice reads it.
func TestAttackMountPrivateDirectory(t *testing.T) {
	a, m := realUsers(t)
	private := filepath.Join(userDir(t, a, 0o700), "chat")
	binder := helper(t, a.cred(), "bindwait", private)
	binder.expect("ok ", waitProcs)
	os.Chmod(private, 0o777)
	dir := mountAll(t)
	name := devfs.Name(private)
	file := waitFile(t, dir, name)
	if out, err := runAs(t, &m, nil, "cat", file); err == nil || !strings.Contains(out, "No such file") {
		t.Fatalf("mallory's cat %s: %v %q", file, err, out)
	}
	if out, _ := runAs(t, &m, nil, "ls", dir); strings.Contains(out, name) {
		t.Fatalf("mallory's ls %s shows %s", dir, name)
	}
	if out, err := runAs(t, &a, nil, "ls", dir); err != nil || !strings.Contains(out, name) {
		t.Fatalf("alice's ls %s: %v %q", dir, err, out)
	}
	head := start(t, a.cred(), nil, "head", "-n1", file)
	root := member(t, private, nil)
	waitFor(t, waitProcs, "alice's head to join", func() bool { r, _ := readersOf(private); return r >= 3 })
	root.Send([]byte("for alice\n")) // a line: messages cross device files unchanged
	if l := head.line(waitProcs); l != "for alice" {
		t.Fatalf("alice's head read %q", l)
	}
}

// /t/x/chat beside /t/x_chat: two names, and root's write to alice's goes
// to alice's network alone.
func TestAttackMountNameCollision(t *testing.T) {
	a, m := realUsers(t)
	shared := shortDir(t)
	alices := filepath.Join(shared, "x_chat")
	helper(t, a.cred(), "bindwait", alices).expect("ok ", waitProcs)
	x := filepath.Join(shared, "x")
	os.Mkdir(x, 0o755)
	os.Chown(x, int(m.uid), int(m.gid))
	mallorys := filepath.Join(x, "chat")
	helper(t, m.cred(), "bindwait", mallorys).expect("ok ", waitProcs)
	if devfs.Name(alices) == devfs.Name(mallorys) {
		t.Fatalf("one name for %s and %s", alices, mallorys)
	}
	ra := helper(t, a.cred(), "recv", alices)
	ra.expect("ready ", waitProcs)
	rm := helper(t, m.cred(), "recv", mallorys)
	rm.expect("ready ", waitProcs)
	dir := mountAll(t)
	file := waitFile(t, dir, devfs.Name(alices))
	waitFile(t, dir, devfs.Name(mallorys))
	if out, err := runAs(t, nil, nil, "sh", "-c", "echo secret > '"+file+"'"); err != nil {
		t.Fatalf("root's echo: %v %s", err, out)
	}
	if l := ra.line(waitProcs); l != "msg secret" {
		t.Fatalf("alice got %q", l)
	}
	select {
	case l := <-rm.lines:
		t.Fatalf("mallory got %q", l)
	case <-time.After(300 * time.Millisecond):
	}
}

// With x alone on alice's network, mallory grabs a veth of her own
// namespace: the port would get no side, so it is refused; with r it only
// receives.
func TestAttackGrabWithManageOnly(t *testing.T) {
	a, m := realUsers(t)
	path, _ := bindNet(t, nil)
	os.Chown(path, int(a.uid), int(a.gid))
	plug := func() (string, error) {
		return runAs(t, &m, nil, "timeout", "10", "unshare", "-Urn", "sh", "-c",
			"ip link add va type veth peer name vb && ip link set va up && ip link set vb up && exec "+ipnCommand(t)+" plug "+path+" grab://va")
	}
	os.Chmod(path, 0o771)
	if out, err := plug(); err == nil || !strings.Contains(out, "needs r or w") {
		t.Fatalf("mallory's grab with --x: %v %q", err, out)
	}
	if _, ports := readersOf(path); ports != 1 {
		t.Fatalf("%d ports after mallory's grab, want 1", ports)
	}
	os.Chmod(path, 0o775)
	p := start(t, m.cred(), nil, "unshare", "-Urn", "sh", "-c",
		"ip link add va type veth peer name vb && ip link set va up && ip link set vb up && exec "+ipnCommand(t)+" plug "+path+" grab://va")
	waitFor(t, waitProcs, "mallory's grab port", func() bool {
		nets, _ := ipn.List(path)
		for _, pi := range nets[0].PortsInfo {
			if strings.HasPrefix(pi.Descr, "grab") {
				if pi.Write {
					t.Fatalf("mallory's grab port with r-x sends: %+v", pi)
				}
				return pi.Read
			}
		}
		select {
		case <-p.done:
			t.Fatalf("mallory's plug ended: %v %s", p.err, p.stderr())
		default:
		}
		return false
	})
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	legit(t, a, "")
}

// A persistent device port belongs to its maker, the network's owner and
// root: mallory, a manager too, may neither take it over nor clear it.
func TestAttackPersistentPortTakeover(t *testing.T) {
	a, m := realUsers(t)
	path, s := bindNet(t, nil)
	os.Chown(path, int(a.uid), int(a.gid))
	os.Chmod(path, 0o771)
	if _, err := s.AttachTap("ipnt0", true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if c, err := ipn.NewSocket(ipn.Any); err == nil {
			if c.Bind(path) == nil {
				c.ClearPersist("ipnt0")
			}
			c.Close()
		}
	})
	for _, op := range []string{"clear", "join"} {
		out, err := runAs(t, &m, nil, "timeout", "5", ipnCommand(t), "device", path, op, "ipnt0")
		if err == nil || !strings.Contains(out, "operation not permitted") {
			t.Fatalf("mallory's ipn device %s: %v %q", op, err, out)
		}
	}
	if out, err := runAs(t, &a, nil, ipnCommand(t), "device", path, "clear", "ipnt0"); err != nil {
		t.Fatalf("alice, the network's owner: %v %s", err, out)
	}
	s.Close() // the port, no longer persistent, goes with its session
	waitFor(t, waitProcs, "the tap to go", func() bool { _, err := os.Stat("/sys/class/net/ipnt0"); return err != nil })
}
