package daemon_test

import (
	"net"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/daemon"
	"github.com/ipn-project/ipn/internal/wire"
)

// pair returns both ends of a socketpair of typ, closed at t's end.
func pair(t *testing.T, typ int) [2]int {
	t.Helper()
	p, err := unix.Socketpair(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(p[0]); unix.Close(p[1]) })
	return p
}

// fileConn returns a connection on a duplicate of fd.
func fileConn(t *testing.T, fd int) *net.UnixConn { return seqConn(t, fd) }

// A manager makes a VDE client a port of its network: frames cross
// between the client's datagram socket and the members, until the port is
// left.
func TestVDEJoin(t *testing.T) {
	d := serve(t, daemon.Config{})
	_, fd := rootNet(t)
	mgr := dial(t, d.Socket).hello(0)
	ctl, data := pair(t, unix.SOCK_STREAM), pair(t, unix.SOCK_DGRAM)
	_, _, err := mgr.request(wire.OpVDEJoin, wire.EncodeVDEJoin(-1, "x"), ctl[0], data[0])
	wantErr(t, "join unbound", err, syscall.EACCES, "needs a bound socket")
	if err := mgr.bind(fd); err != nil {
		t.Fatal(err)
	}
	_, _, m := member(t, d.Socket, fd)

	_, _, err = mgr.request(wire.OpVDEJoin, []byte{1}, ctl[0], data[0])
	wantErr(t, "short join", err, syscall.EINVAL, "malformed")
	_, _, err = mgr.request(wire.OpVDEJoin, wire.EncodeVDEJoin(-1, "x"), ctl[0])
	wantErr(t, "one descriptor", err, syscall.EINVAL, "got 1 descriptors")
	_, _, err = mgr.request(wire.OpVDEJoin, wire.EncodeVDEJoin(-1, "x"), data[0], data[0])
	wantErr(t, "datagram control", err, syscall.EINVAL, "the control stream is not of the right type")
	_, _, err = mgr.request(wire.OpVDEJoin, wire.EncodeVDEJoin(-1, "x"), ctl[0], ctl[0])
	wantErr(t, "stream data", err, syscall.EINVAL, "the data socket is not of the right type")
	pipe := make([]int, 2)
	if err := unix.Pipe2(pipe, unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pipe[0])
	defer unix.Close(pipe[1])
	_, _, err = mgr.request(wire.OpVDEJoin, wire.EncodeVDEJoin(-1, "x"), pipe[0], data[0])
	wantErr(t, "pipe control", err, syscall.EINVAL, "not a Unix socket")
	lone, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(lone)
	_, _, err = mgr.request(wire.OpVDEJoin, wire.EncodeVDEJoin(-1, "x"), ctl[0], lone)
	wantErr(t, "unconnected data", err, syscall.EINVAL, "not connected")
	_, _, err = mgr.request(wire.OpVDEJoin, wire.EncodeVDEJoin(1<<20, "x"), ctl[0], data[0])
	wantErr(t, "port out of range", err, syscall.EINVAL, "port 1048576")

	res := mgr.must(wire.OpVDEJoin, wire.EncodeVDEJoin(5, "vde\x01client"), ctl[0], data[0])
	port, err := wire.GetU32(res)
	if err != nil || port != 5 {
		t.Fatalf("vde port %d %v, want 5", port, err)
	}
	client := fileConn(t, data[1])
	frame := []byte("\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x08\x00payload")
	if _, err := client.Write(frame); err != nil {
		t.Fatal(err)
	}
	if got := recvMsg(t, m); string(got) != string(frame) {
		t.Fatalf("member received %q, want the client's frame", got)
	}
	if _, err := m.Write([]byte("to the client")); err != nil {
		t.Fatal(err)
	}
	if got := recvMsg(t, client); string(got) != "to the client" {
		t.Fatalf("vde client received %q", got)
	}
	list, _, err := mgr.list(fd)
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, p := range list[0].PortsInfo {
		if p.Port == 5 {
			found = true
			if p.Descr != "vde?client" || !p.Link || !strings.HasPrefix(p.Peer, "vde pid ") {
				t.Errorf("vde port %+v", p)
			}
		}
	}
	if !found {
		t.Fatalf("no port 5 in %+v", list[0].PortsInfo)
	}

	_, _, err = mgr.request(wire.OpVDELeave, wire.U32(6))
	wantErr(t, "leave another port", err, syscall.ENOENT, "no vde port 6 of this session")
	_, _, err = mgr.request(wire.OpVDELeave, nil)
	wantErr(t, "short leave", err, syscall.EINVAL)
	mgr.must(wire.OpVDELeave, wire.U32(5))
	// The port is gone: the daemon closed its end of the data socket
	// (what the member sends goes nowhere).
	if err := eventually(func() error {
		list, _, err := mgr.list(fd)
		if err != nil {
			return err
		}
		for _, p := range list[0].PortsInfo {
			if p.Port == 5 {
				return syscall.EBUSY
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("port 5 after leave: %v", err)
	}
	_, _, err = mgr.request(wire.OpVDELeave, wire.U32(5))
	wantErr(t, "second leave", err, syscall.ENOENT)
}

// A VDE client's port gets only the sides that both the client's and the
// serving manager's rights give; a client with none is refused.
func TestVDEClientRights(t *testing.T) {
	d := serve(t, daemon.Config{})
	path, fd := rootNet(t)
	setMode(t, path, 0o774) // others: r
	mgr := dial(t, d.Socket).hello(0)
	if err := mgr.bind(fd); err != nil {
		t.Fatal(err)
	}
	_, _, m := member(t, d.Socket, fd)
	// The control stream of a client of uid 2361: a pair made by it.
	ctl := userPair(t, 2361, unix.SOCK_STREAM)
	data := pair(t, unix.SOCK_DGRAM)
	res := mgr.must(wire.OpVDEJoin, wire.EncodeVDEJoin(-1, ""), ctl[0], data[0])
	port, _ := wire.GetU32(res)
	list, _, err := mgr.list(fd)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range list[0].PortsInfo {
		if p.Port == int(port) && (!p.Read || p.Write || !strings.Contains(p.Peer, "uid 2361")) {
			t.Errorf("port of a client with r: %+v, want read only, peer uid 2361", p)
		}
	}
	// What it sends does not enter the network.
	client := fileConn(t, data[1])
	if _, err := client.Write([]byte("from a reader")); err != nil {
		t.Fatal(err)
	}
	_, _, w := member(t, d.Socket, fd)
	if _, err := w.Write([]byte("marker")); err != nil {
		t.Fatal(err)
	}
	if got := recvMsg(t, m); string(got) != "marker" {
		t.Fatalf("member received %q, want only the marker", got)
	}

	setMode(t, path, 0o770)
	none := userPair(t, 2362, unix.SOCK_STREAM)
	data2 := pair(t, unix.SOCK_DGRAM)
	_, _, err = mgr.request(wire.OpVDEJoin, wire.EncodeVDEJoin(-1, ""), none[0], data2[0])
	wantErr(t, "client without rights", err, syscall.EACCES, "vde client", "uid 2362", "no side left")
}

// userPair returns a socketpair of typ made by user uid, whose ends carry
// that user's credentials.
func userPair(t *testing.T, uid uint32, typ int) [2]int {
	t.Helper()
	var p [2]int
	asUser(t, uid, uid, func() error {
		fds, err := unix.Socketpair(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC, 0)
		p = [2]int{fds[0], fds[1]}
		return err
	})
	t.Cleanup(func() { unix.Close(p[0]); unix.Close(p[1]) })
	return p
}

// Device ports: the request is checked before any descriptor is used.
func TestDeviceErrors(t *testing.T) {
	d := serve(t, daemon.Config{})
	_, fd := rootNet(t)
	mgr := dial(t, d.Socket).hello(0)
	dev := func(kind, flags byte, name string, fds ...int) error {
		_, _, err := mgr.request(wire.OpAttachDevice, wire.EncodeDevice(kind, flags, name), fds...)
		return err
	}
	p := pair(t, unix.SOCK_DGRAM)
	wantErr(t, "unbound", dev(wire.DevTap, 0, "tap0", p[0]), syscall.EACCES, "need a bound socket")
	if err := mgr.bind(fd); err != nil {
		t.Fatal(err)
	}
	wantErr(t, "short", dev(wire.DevTap, 0, ""), syscall.EINVAL, "malformed")
	wantErr(t, "no descriptor", dev(wire.DevTap, 0, "tap0"), syscall.EINVAL, "want 1 descriptor")
	wantErr(t, "not a tap", dev(wire.DevTap, 0, "tap0", p[0]), syscall.EINVAL, "not a tap descriptor")
	wantErr(t, "not a packet socket", dev(wire.DevGrab, 0, "eth0", p[0]), syscall.EINVAL, "not an AF_PACKET socket")
	wantErr(t, "kind", dev(9, 0, "x", p[0]), syscall.EINVAL, "device kind 9")
	for _, name := range []string{"a/b", "a b", "a\x01", strings.Repeat("n", 16)} {
		wantErr(t, "name", dev(wire.DevTap, 0, name, p[0]), syscall.EINVAL, "device name")
	}
	wantErr(t, "join none", dev(0, wire.DevJoin, "tap9"), syscall.ENOENT, "no device tap9 on ")
	wantErr(t, "clear none", dev(0, wire.DevClearPersist, "tap9"), syscall.ENOENT, "no device tap9")
	wantErr(t, "join with a descriptor", dev(0, wire.DevJoin, "tap9", p[0]), syscall.EINVAL)
	if needsPacket := os.Geteuid() == 0; needsPacket {
		raw, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err == nil {
			defer unix.Close(raw)
			wantErr(t, "a packet socket not raw", dev(wire.DevGrab, 0, "eth0", raw), syscall.EINVAL, "not a SOCK_RAW")
		}
	}
}

// newTap opens a tap named name (IFF_TAP|IFF_NO_PI) in a network namespace
// of its own, which goes with the tap: the host's interfaces are left
// alone.
func newTap(t *testing.T, name string) int {
	t.Helper()
	needRoot(t)
	done := make(chan int, 1)
	errc := make(chan error, 1)
	go func() {
		// The thread ends with the goroutine (still locked), and the
		// namespace with the last reference to it, the tap's.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		ifr, err := unix.NewIfreq(name)
		if err == nil {
			ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
			err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
		}
		if err != nil {
			unix.Close(fd)
			errc <- err
			return
		}
		done <- fd
	}()
	select {
	case fd := <-done:
		t.Cleanup(func() { unix.Close(fd) })
		return fd
	case err := <-errc:
		t.Skipf("no tap: %v", err)
	}
	return -1
}

// portOf returns the listed port num of the network of fd.
func portOf(t *testing.T, c *client, fd, num int) (p wire.PortInfo, ok bool) {
	t.Helper()
	list, _, err := c.list(fd)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range list[0].PortsInfo {
		if p.Port == num {
			return p, true
		}
	}
	return wire.PortInfo{}, false
}

// A tap attached with DevPersist outlives its session; another session
// takes it over (DevJoin), clears its persistence, and its leaving takes
// the port with it.
func TestDeviceTapPersist(t *testing.T) {
	tapfd := newTap(t, "ipntest0")
	d := serve(t, daemon.Config{})
	_, fd := rootNet(t)
	// The network lives on while the tap's sessions come and go.
	keeper := dial(t, d.Socket).hello(0)
	if err := keeper.bind(fd); err != nil {
		t.Fatal(err)
	}
	a := dial(t, d.Socket).hello(0)
	if err := a.bind(fd); err != nil {
		t.Fatal(err)
	}
	res := a.must(wire.OpAttachDevice, wire.EncodeDevice(wire.DevTap, wire.DevPersist, "ipntest0"), tapfd)
	num, _ := wire.GetU32(res)
	p, ok := portOf(t, keeper, fd, int(num))
	if !ok || p.Descr != "tap ipntest0" || !p.Persist || !p.Link || !strings.HasPrefix(p.Peer, "device pid ") {
		t.Fatalf("tap port %+v %v", p, ok)
	}
	_, _, err := a.request(wire.OpAttachDevice, wire.EncodeDevice(wire.DevTap, 0, "ipntest0"), tapfd)
	wantErr(t, "attach twice", err, syscall.EADDRINUSE, "device ipntest0 already attached")
	_, _, err = a.request(wire.OpAttachDevice, wire.EncodeDevice(wire.DevTap, 0, "ipntest1"), tapfd)
	wantErr(t, "another name", err, syscall.EINVAL, "descriptor of tap ipntest0, not ipntest1")

	leave(t, a)
	if err := eventually(func() error {
		p, ok := portOf(t, keeper, fd, int(num))
		if !ok || p.Peer != "device uid 0, no process" {
			return syscall.EBUSY
		}
		return nil
	}); err != nil {
		t.Fatalf("persistent tap after its session: %v", err)
	}
	// Another user may not take it over.
	setMode(t, netPath(t, fd), 0o777)
	u := dialAs(t, d.Socket, 2371, 2371).hello(0)
	if err := u.bind(fd); err != nil {
		t.Fatal(err)
	}
	_, _, err = u.request(wire.OpAttachDevice, wire.EncodeDevice(0, wire.DevJoin, "ipntest0"))
	wantErr(t, "another user's join", err, syscall.EPERM, "belongs to uid 0")

	b := dial(t, d.Socket).hello(0)
	if err := b.bind(fd); err != nil {
		t.Fatal(err)
	}
	res = b.must(wire.OpAttachDevice, wire.EncodeDevice(0, wire.DevJoin, "ipntest0"))
	if got, _ := wire.GetU32(res); got != num {
		t.Errorf("join gives port %d, want %d", got, num)
	}
	b.must(wire.OpAttachDevice, wire.EncodeDevice(0, wire.DevClearPersist, "ipntest0"))
	if p, ok := portOf(t, keeper, fd, int(num)); !ok || p.Persist {
		t.Errorf("after clear: %+v %v, want the port, not persistent", p, ok)
	}
	leave(t, b)
	if err := eventually(func() error {
		if _, ok := portOf(t, keeper, fd, int(num)); ok {
			return syscall.EBUSY
		}
		return nil
	}); err != nil {
		t.Fatalf("tap port after its session left: %v", err)
	}
}
