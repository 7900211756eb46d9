package daemon

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/internal/wire"
)

// Two daemons served by one process share nothing: each has its own
// networks (on the same file), its own device ports and its own accounts,
// and one's stopping leaves the other's alone.
func TestTwoDaemonsShareNothing(t *testing.T) {
	needRoot(t)
	// A user (root is not limited) may have one network and one port: were
	// the accounts shared, B's network or device would be over the limit.
	const uid = 2401
	lim := Limits{Networks: 1, Ports: 1}
	sockA, _ := serveState(t, Config{Limits: lim})
	sockB, stopB := serveState(t, Config{Limits: lim})
	netFD := stateNetFile(t, uid)

	// The same file is a network of each daemon, made by the user.
	a := dialState(t, sockA, uid)
	b := dialState(t, sockB, uid)
	for _, c := range []*stateClient{a, b} {
		if _, err := c.do(wire.OpBind, nil, netFD); err != nil {
			t.Fatalf("bind: %v", err)
		}
	}

	// A persistent device port of A, by a name B's network knows nothing of.
	const name = "ipnstate0"
	if _, err := a.do(wire.OpAttachDevice, wire.EncodeDevice(wire.DevTap, wire.DevPersist, name), stateTap(t, name)); err != nil {
		t.Fatalf("attach to A: %v", err)
	}
	join := wire.EncodeDevice(0, wire.DevJoin, name)
	if _, err := b.do(wire.OpAttachDevice, join); !errors.Is(err, syscall.ENOENT) || !strings.Contains(err.Error(), "no device "+name) {
		t.Fatalf("B joins A's device: %v, want ENOENT (no device %s)", err, name)
	}
	a2 := dialState(t, sockA, uid)
	if _, err := a2.do(wire.OpBind, nil, netFD); err != nil {
		t.Fatal(err)
	}
	if _, err := a2.do(wire.OpAttachDevice, join); err != nil {
		t.Fatalf("A joins its device: %v", err)
	}

	// B has a device of that name too (another tap, in another namespace).
	if _, err := b.do(wire.OpAttachDevice, wire.EncodeDevice(wire.DevTap, 0, name), stateTap(t, name)); err != nil {
		t.Fatalf("attach to B: %v", err)
	}

	// B's end closes B's ports and sessions only.
	stopB()
	a3 := dialState(t, sockA, uid)
	if _, err := a3.do(wire.OpBind, nil, netFD); err != nil {
		t.Fatalf("bind to A once B ended: %v", err)
	}
	if _, err := a3.do(wire.OpAttachDevice, join); err != nil {
		t.Fatalf("A's device once B ended: %v", err)
	}
}

// serveState runs Serve on a control socket in a new directory until t
// ends, and returns the socket and a stop that waits for Serve to return
// (it may be called more than once).
func serveState(t *testing.T, cfg Config) (string, func()) {
	t.Helper()
	cfg.Socket = filepath.Join(stateDir(t), "ipn.sock")
	cfg.Logger = slog.New(slog.NewTextHandler(stateLog{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ready := make(chan struct{})
	cfg.Ready = func() { close(ready) }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, cfg) }()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("serve: %v", err)
	}
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	}
	t.Cleanup(stop)
	return cfg.Socket, stop
}

// stateDir returns a new directory every user may search (t.TempDir's
// parent is root's only).
func stateDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ipn-state-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// stateLog writes a daemon's log to a test's.
type stateLog struct{ t *testing.T }

func (l stateLog) Write(b []byte) (int, error) {
	l.t.Logf("daemon: %s", strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
}

// stateNetFile makes a network file (a socket inode) of uid's, mode 0o700,
// and returns an O_PATH descriptor of it.
func stateNetFile(t *testing.T, uid int) int {
	t.Helper()
	p := filepath.Join(stateDir(t), "net")
	if err := unix.Mknod(p, unix.S_IFSOCK|0o700, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, 0o700); err != nil { // whatever the umask
		t.Fatal(err)
	}
	if err := os.Chown(p, uid, uid); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(p, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// stateTap opens a tap named name in a network namespace of its own,
// which goes with the tap, so that the host's interfaces are left alone
// and two taps may have one name.
func stateTap(t *testing.T, name string) int {
	t.Helper()
	type result struct {
		fd  int
		err error
	}
	res := make(chan result, 1)
	go func() {
		// The thread ends with the goroutine (still locked), and the
		// namespace with the tap.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			res <- result{-1, err}
			return
		}
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			res <- result{-1, err}
			return
		}
		ifr, err := unix.NewIfreq(name)
		if err == nil {
			ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
			err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
		}
		if err != nil {
			unix.Close(fd)
			fd = -1
		}
		res <- result{fd, err}
	}()
	r := <-res
	if r.err != nil {
		t.Skipf("no tap: %v", r.err)
	}
	t.Cleanup(func() { unix.Close(r.fd) })
	return r.fd
}

// stateClient is a raw control connection that has said hello.
type stateClient struct {
	t    *testing.T
	conn *net.UnixConn
	buf  []byte
}

// dialState connects to the daemon at sock as user uid (and group uid):
// the kernel gives the daemon the credentials of the thread that connects.
func dialState(t *testing.T, sock string, uid int) *stateClient {
	t.Helper()
	type result struct {
		fd  int
		err error
	}
	res := make(chan result, 1)
	go func() {
		// The thread gives up root for good: it ends with the goroutine,
		// still locked.
		runtime.LockOSThread()
		for _, call := range [][4]uintptr{
			{unix.SYS_SETGROUPS, 0, 0, 0},
			{unix.SYS_SETRESGID, uintptr(uid), uintptr(uid), uintptr(uid)},
			{unix.SYS_SETRESUID, uintptr(uid), uintptr(uid), uintptr(uid)},
		} {
			if _, _, e := unix.RawSyscall(call[0], call[1], call[2], call[3]); e != 0 {
				res <- result{-1, e}
				return
			}
		}
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		if err == nil {
			if err = unix.Connect(fd, &unix.SockaddrUnix{Name: sock}); err != nil {
				unix.Close(fd)
			}
		}
		res <- result{fd, err}
	}()
	r := <-res
	if r.err != nil {
		t.Fatalf("connect as uid %d: %v", uid, r.err)
	}
	f := os.NewFile(uintptr(r.fd), "control")
	fc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	conn := fc.(*net.UnixConn)
	t.Cleanup(func() { conn.Close() })
	c := &stateClient{t: t, conn: conn, buf: make([]byte, wire.MaxPacket)}
	if _, err := c.do(wire.OpHello, []byte{wire.Version, 0, 0, 0}); err != nil {
		t.Fatalf("hello: %v", err)
	}
	return c
}

// do sends a request and returns its reply or the daemon's error, passing
// over events; descriptors that come with the reply are closed.
func (c *stateClient) do(op uint16, body []byte, fds ...int) ([]byte, error) {
	c.t.Helper()
	if err := wire.Send(c.conn, wire.Packet(op, body), fds...); err != nil {
		c.t.Fatalf("op %d: %v", op, err)
	}
	c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		pkt, rfds, err := wire.Recv(c.conn, c.buf)
		closeFDs(rfds)
		if err != nil {
			c.t.Fatalf("op %d: no reply: %v", op, err)
		}
		rop, rbody, err := wire.Split(pkt)
		if err != nil {
			c.t.Fatalf("op %d: %v", op, err)
		}
		if rop == op|wire.ReplyBit {
			return wire.SplitReply(rbody)
		}
	}
}
