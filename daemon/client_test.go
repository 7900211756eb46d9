package daemon_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/daemon"
	"github.com/ipn-project/ipn/internal/daemontest"
	"github.com/ipn-project/ipn/internal/wire"
	"github.com/ipn-project/ipn/policy/loop"
)

// The tests of this file's package talk to a daemon served in the test
// process (daemontest.Start) with a raw client of the control protocol
// (internal/wire), as a program in another language would.

// wait bounds every wait of these tests for the daemon.
const wait = 5 * time.Second

// serve starts a daemon of cfg for t and returns its control socket.
func serve(t *testing.T, cfg daemon.Config) *daemontest.Daemon {
	t.Helper()
	return daemontest.Start(t, cfg)
}

// event is an out-of-band packet of the daemon: OpOOB or OpEnded.
type event struct {
	op   uint16
	body []byte
}

// client is one control connection (one IPN socket).
type client struct {
	t      testing.TB
	conn   *net.UnixConn
	buf    []byte
	events []event // received while waiting for a reply
}

// dial connects to the daemon at sock as this process.
func dial(t testing.TB, sock string) *client {
	t.Helper()
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: sock, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	return newClient(t, c)
}

func newClient(t testing.TB, c *net.UnixConn) *client {
	t.Cleanup(func() { c.Close() })
	return &client{t: t, conn: c, buf: make([]byte, wire.MaxPacket)}
}

// needRoot skips a test that needs root, except under CI, which runs as
// root.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI runs as root; this test must not skip there")
		}
		t.Skip("needs root")
	}
}

// asUser runs fn on an OS thread whose real and effective ids are
// uid:gid, with no supplementary groups, so that what fn connects or makes
// carries those credentials (SO_PEERCRED); the thread gives them back.
func asUser(t *testing.T, uid, gid uint32, fn func() error) {
	t.Helper()
	needRoot(t)
	done := make(chan error, 1)
	go func() {
		// If the credentials cannot be given back, the goroutine
		// exits locked and the runtime ends the thread.
		runtime.LockOSThread()
		groups, err := unix.Getgroups()
		if err != nil {
			done <- err
			return
		}
		if err := setThread(uid, gid, nil); err != nil {
			done <- err
			return
		}
		err = fn()
		if rerr := setThread(0, 0, groups); rerr != nil {
			done <- rerr
			return
		}
		runtime.UnlockOSThread()
		done <- err
	}()
	if err := <-done; err != nil {
		t.Fatalf("as uid %d: %v", uid, err)
	}
}

// dialAs connects to the daemon at sock as user uid:gid (asUser).
func dialAs(t *testing.T, sock string, uid, gid uint32) *client {
	t.Helper()
	return newClient(t, connectAs(t, sock, unix.SOCK_SEQPACKET, uid, gid).(*net.UnixConn))
}

// connectAs connects a Unix socket of type typ to sock as user uid:gid
// (asUser), for a test to use as this process's connection.
func connectAs(t *testing.T, sock string, typ int, uid, gid uint32) net.Conn {
	t.Helper()
	fd := -1
	asUser(t, uid, gid, func() error {
		s, err := unix.Socket(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		if err := unix.Connect(s, &unix.SockaddrUnix{Name: sock}); err != nil {
			unix.Close(s)
			return err
		}
		fd = s
		return nil
	})
	f := os.NewFile(uintptr(fd), "socket")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// setThread sets the calling thread's real and effective ids (the saved
// ones stay root's, so that they can come back) and groups. Going back to
// root, the uid comes first; leaving it, the groups do.
func setThread(uid, gid uint32, groups []int) error {
	setgroups := func() error {
		gs := make([]uint32, len(groups))
		for i, g := range groups {
			gs[i] = uint32(g)
		}
		var p unsafe.Pointer
		if len(gs) > 0 {
			p = unsafe.Pointer(&gs[0])
		}
		_, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(gs)), uintptr(p), 0)
		runtime.KeepAlive(gs)
		if e != 0 {
			return e
		}
		return nil
	}
	keep := ^uintptr(0)
	if uid == 0 {
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, 0, 0, keep); e != 0 {
			return e
		}
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, uintptr(gid), uintptr(gid), keep); e != 0 {
			return e
		}
		return setgroups()
	}
	if err := setgroups(); err != nil {
		return err
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, uintptr(gid), uintptr(gid), keep); e != 0 {
		return e
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(uid), uintptr(uid), keep); e != 0 {
		return e
	}
	return nil
}

// send writes one request.
func (c *client) send(op uint16, body []byte, fds ...int) {
	c.t.Helper()
	if err := wire.Send(c.conn, wire.Packet(op, body), fds...); err != nil {
		c.t.Fatalf("send op %d: %v", op, err)
	}
}

// recv reads the next packet, waiting at most wait.
func (c *client) recv() (op uint16, body []byte, fds []int, err error) {
	c.conn.SetReadDeadline(time.Now().Add(wait))
	pkt, fds, err := wire.Recv(c.conn, c.buf)
	if err != nil {
		return 0, nil, nil, err
	}
	op, body, err = wire.Split(pkt)
	return op, bytes.Clone(body), fds, err
}

// request sends a request and returns its reply's body and descriptors
// (the test's to close: they are closed at its end) or the daemon's error
// (a *wire.Error). Events that come first are kept for nextEvent.
func (c *client) request(op uint16, body []byte, fds ...int) ([]byte, []int, error) {
	c.t.Helper()
	c.send(op, body, fds...)
	for {
		rop, rbody, rfds, err := c.recv()
		if err != nil {
			c.t.Fatalf("op %d: no reply: %v", op, err)
		}
		for _, fd := range rfds {
			c.t.Cleanup(func() { unix.Close(fd) })
		}
		if rop&wire.ReplyBit == 0 {
			if len(rfds) > 0 {
				c.t.Fatalf("event %#x with descriptors", rop)
			}
			c.events = append(c.events, event{rop, rbody})
			continue
		}
		if rop != op|wire.ReplyBit {
			c.t.Fatalf("op %d: reply to op %#x", op, rop)
		}
		res, err := wire.SplitReply(rbody)
		if err != nil && len(rfds) > 0 {
			c.t.Fatalf("op %d: failed (%v), yet passed %d descriptors", op, err, len(rfds))
		}
		return res, rfds, err
	}
}

// must is request for a request that must succeed.
func (c *client) must(op uint16, body []byte, fds ...int) []byte {
	c.t.Helper()
	res, _, err := c.request(op, body, fds...)
	if err != nil {
		c.t.Fatalf("op %d: %v", op, err)
	}
	return res
}

// nextEvent returns the next event, waiting at most wait.
func (c *client) nextEvent() (event, error) {
	c.t.Helper()
	if len(c.events) > 0 {
		e := c.events[0]
		c.events = c.events[1:]
		return e, nil
	}
	op, body, fds, err := c.recv()
	if err != nil {
		return event{}, err
	}
	if len(fds) > 0 || op&wire.ReplyBit != 0 {
		c.t.Fatalf("unasked packet %#x (%d descriptors)", op, len(fds))
	}
	return event{op, body}, nil
}

func helloBody(version, tag uint16) []byte {
	b := binary.LittleEndian.AppendUint16(nil, version)
	return binary.LittleEndian.AppendUint16(b, tag)
}

// hello says hello for policy tag (0: any).
func (c *client) hello(tag uint16) *client {
	c.t.Helper()
	c.must(wire.OpHello, helloBody(wire.Version, tag))
	return c
}

func (c *client) setOpt(opt uint32, val []byte) error {
	c.t.Helper()
	_, _, err := c.request(wire.OpSetOpt, append(wire.U32(opt), val...))
	return err
}

func (c *client) setU32(opt, v uint32) error {
	c.t.Helper()
	return c.setOpt(opt, wire.U32(v))
}

func (c *client) getOpt(opt uint32) ([]byte, error) {
	c.t.Helper()
	res, _, err := c.request(wire.OpGetOpt, wire.U32(opt))
	return res, err
}

func (c *client) getU32(opt uint32) uint32 {
	c.t.Helper()
	res, err := c.getOpt(opt)
	if err != nil {
		c.t.Fatalf("get option %d: %v", opt, err)
	}
	v, err := wire.GetU32(res)
	if err != nil {
		c.t.Fatalf("option %d: %v", opt, err)
	}
	return v
}

func (c *client) bind(fd int) error {
	c.t.Helper()
	_, _, err := c.request(wire.OpBind, nil, fd)
	return err
}

// connect connects to the network of fd (the bound one if fd < 0) and
// returns the reply and the data socket.
func (c *client) connect(fd int) (wire.ConnectReply, *net.UnixConn, error) {
	c.t.Helper()
	var fds []int
	if fd >= 0 {
		fds = []int{fd}
	}
	res, rfds, err := c.request(wire.OpConnect, nil, fds...)
	if err != nil {
		return wire.ConnectReply{}, nil, err
	}
	rep, err := wire.DecodeConnectReply(res)
	if err != nil {
		c.t.Fatal(err)
	}
	if len(rfds) != 1 && len(rfds) != 2 {
		c.t.Fatalf("connect passed %d descriptors, want the data socket (and the status page)", len(rfds))
	}
	return rep, seqConn(c.t, rfds[0]), nil
}

// seqConn returns a connection on a duplicate of fd.
func seqConn(t testing.TB, fd int) *net.UnixConn {
	t.Helper()
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(dup), "data")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.UnixConn)
}

// member says hello and connects to the network of fd.
func member(t *testing.T, sock string, fd int) (*client, wire.ConnectReply, *net.UnixConn) {
	t.Helper()
	c := dial(t, sock).hello(0)
	rep, data, err := c.connect(fd)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	return c, rep, data
}

// wantErr checks that err is the daemon's refusal with errno and a text
// that contains each of texts.
func wantErr(t testing.TB, what string, err error, errno syscall.Errno, texts ...string) {
	t.Helper()
	var we *wire.Error
	if !errors.As(err, &we) {
		t.Fatalf("%s: %v, want the daemon's error %v", what, err, errno)
	}
	if we.Errno != errno {
		t.Errorf("%s: errno %v (%q), want %v", what, we.Errno, we.Text, errno)
	}
	for _, s := range texts {
		if !bytes.Contains([]byte(we.Text), []byte(s)) {
			t.Errorf("%s: text %q lacks %q", what, we.Text, s)
		}
	}
}

// netDir returns a new directory every user may search.
func netDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ipn-daemon-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

var netN atomic.Int64

// netFile makes a network file (a socket inode) in dir, owned by uid:gid
// with mode, and returns its path and an O_PATH descriptor of it.
func netFile(t testing.TB, dir string, uid, gid uint32, mode uint32) (string, int) {
	t.Helper()
	p := filepath.Join(dir, "net"+strconv.FormatInt(netN.Add(1), 10))
	if err := unix.Mknod(p, unix.S_IFSOCK|0o600, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(p, int(uid), int(gid)); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, os.FileMode(mode)); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(p, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return p, fd
}

// rootNet makes a network file of root's, mode 0o777.
func rootNet(t testing.TB) (string, int) {
	t.Helper()
	return netFile(t, netDir(t), uint32(os.Geteuid()), uint32(os.Getegid()), 0o777)
}

// recvMsg reads the next message that is not a loop probe from c.
func recvMsg(t testing.TB, c *net.UnixConn) []byte {
	t.Helper()
	buf := make([]byte, 65536)
	c.SetReadDeadline(time.Now().Add(wait))
	for {
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("receive: %v", err)
		}
		if !loop.IsProbe(buf[:n]) {
			return bytes.Clone(buf[:n])
		}
	}
}
