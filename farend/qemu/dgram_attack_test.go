package qemu_test

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/farend/qemu"
)

// dgramWithQEMU makes, in a new directory, QEMU's socket (DIR/q/qemu.sock)
// and a dgram far end (DIR/ipn.sock) for it, with a reader.
func dgramWithQEMU(t *testing.T) (dir, qpath string, q *net.UnixConn, e *qemu.Dgram, r *reader) {
	t.Helper()
	dir = t.TempDir()
	qdir := filepath.Join(dir, "q")
	os.Mkdir(qdir, 0o755)
	qpath = filepath.Join(qdir, "qemu.sock")
	q, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: qpath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	e, err = qemu.ListenDgram(filepath.Join(dir, "ipn.sock"), qpath, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	r = readAll(t, e)
	t.Cleanup(func() {
		e.Close()
		r.end(t)
	})
	return dir, qpath, q, e, r
}

// A stranger who may write to the far end's socket cannot pass its
// datagrams off as QEMU's by its socket's name: it binds its socket at
// DIR/d/NAME (NAME being QEMU's socket's name), turns DIR/d into a
// symlink to QEMU's directory (so that the name reaches QEMU's socket)
// and sends, then puts its directory back and sends again. Both are
// refused (EPERM: the far end's socket is connected to QEMU's), and the
// next frame the far end reads is QEMU's.
func TestDgramStrangerCannotPassAsQEMUThroughASwappedDirectory(t *testing.T) {
	dir, qpath, qemuSock, e, r := dgramWithQEMU(t)
	to := &net.UnixAddr{Name: filepath.Join(dir, "ipn.sock"), Net: "unixgram"}

	// The stranger's socket, at a name that is not QEMU's.
	sdir := filepath.Join(dir, "m")
	os.Mkdir(sdir, 0o755)
	d := filepath.Join(sdir, "d")
	os.Mkdir(d, 0o755)
	strangerName := filepath.Join(d, "qemu.sock")
	s, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: strangerName, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	// d becomes a link to QEMU's directory for one datagram.
	if err := os.Rename(d, d+".real"); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Dir(qpath), d); err != nil {
		t.Fatal(err)
	}
	if _, err := s.WriteToUnix([]byte("forged frame one, sixty bytes or so ........................"), to); !errors.Is(err, syscall.EPERM) {
		t.Errorf("a datagram from the stranger's socket %s, its name now reaching QEMU's (%s): %v, want EPERM (refused)", strangerName, qpath, err)
	}
	// Then back: the name is the stranger's own socket again.
	os.Remove(d)
	os.Rename(d+".real", d)
	if _, err := s.WriteToUnix([]byte("forged frame two, sent from the stranger's own socket ......"), to); !errors.Is(err, syscall.EPERM) {
		t.Errorf("and with its directory back: %v, want EPERM", err)
	}
	// QEMU's own frame is the next one read.
	if _, err := qemuSock.WriteToUnix([]byte("QEMU's own frame ............................................"), to); err != nil {
		t.Fatal(err)
	}
	if got := r.next(t); string(got[:6]) == "forged" {
		t.Errorf("a stranger's datagram was taken as QEMU's: %q", got)
	}
	if st := e.Stats(); st.Strangers != 0 {
		t.Errorf("strangers counted: %d, want 0 (none reached the socket)", st.Strangers)
	}
}

// Nor by a socket of the very name of QEMU's in a mount namespace of its
// own: the name a datagram carries is what its sender's bind was given,
// in the sender's view of the files; that is no proof of who sent it.
func TestDgramStrangerCannotPassAsQEMUFromAnotherMountNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("a mount namespace needs root")
	}
	dir, qpath, qemuSock, e, r := dgramWithQEMU(t)
	to := filepath.Join(dir, "ipn.sock")
	type result struct {
		setup string // the step that failed before the send, if one did
		err   error
	}
	sent := make(chan result, 1)
	go func() {
		// The thread is in the new namespace for good: it ends with the
		// goroutine, never unlocked.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
			sent <- result{"unshare", err}
			return
		}
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			sent <- result{"mount --make-rprivate /", err}
			return
		}
		if err := unix.Mount("tmpfs", filepath.Dir(qpath), "tmpfs", 0, ""); err != nil {
			sent <- result{"a tmpfs over QEMU's directory", err}
			return
		}
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			sent <- result{"socket", err}
			return
		}
		defer unix.Close(fd)
		if err := unix.Bind(fd, &unix.SockaddrUnix{Name: qpath}); err != nil {
			sent <- result{"bind " + qpath, err}
			return
		}
		sent <- result{"", unix.Sendto(fd, []byte("forged frame from a socket named as QEMU's ..............."), 0, &unix.SockaddrUnix{Name: to})}
	}()
	res := <-sent
	if res.setup != "" {
		t.Skipf("a mount namespace of its own: %s: %v", res.setup, res.err)
	}
	if !errors.Is(res.err, syscall.EPERM) {
		t.Errorf("a datagram from a socket bound at %s in another mount namespace: %v, want EPERM (refused)", qpath, res.err)
	}
	if _, err := qemuSock.WriteToUnix([]byte("QEMU's own frame ............................................"), &net.UnixAddr{Name: to, Net: "unixgram"}); err != nil {
		t.Fatal(err)
	}
	if got := r.next(t); string(got[:6]) == "forged" {
		t.Errorf("a stranger's datagram was taken as QEMU's: %q", got)
	}
	if st := e.Stats(); st.Strangers != 0 {
		t.Errorf("strangers counted: %d, want 0", st.Strangers)
	}
}
