package daemon_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/daemon"
	"github.com/ipn-project/ipn/internal/wire"
)

// Nothing but hello is answered before hello; hello checks the version and
// the policy, and comes once.
func TestHello(t *testing.T) {
	d := serve(t, daemon.Config{})
	c := dial(t, d.Socket)
	_, _, err := c.request(wire.OpGetOpt, wire.U32(wire.OptMTU))
	wantErr(t, "get before hello", err, syscall.EPROTO)
	_, _, err = c.request(wire.OpHello, helloBody(wire.Version+1, 0))
	wantErr(t, "hello of a newer version", err, syscall.EPROTONOSUPPORT,
		fmt.Sprintf("protocol version %d", wire.Version+1), fmt.Sprintf("speaks %d..%d", wire.MinVersion, wire.Version), "ipn daemon --takeover")
	_, _, err = c.request(wire.OpHello, helloBody(0, 0))
	wantErr(t, "hello of version 0", err, syscall.EPROTONOSUPPORT, "protocol version 0")
	// A client of the oldest version is served, and told the daemon's.
	old := dial(t, d.Socket)
	res, _, err := old.request(wire.OpHello, helloBody(wire.MinVersion, 0))
	if err != nil {
		t.Fatalf("hello of version %d: %v", wire.MinVersion, err)
	}
	if v, build := wire.DecodeHelloReply(res); v != wire.Version || build == "" {
		t.Errorf("hello reply: version %d build %q, want %d and a build", v, build, wire.Version)
	}
	_, _, err = c.request(wire.OpHello, helloBody(wire.Version, 999))
	wantErr(t, "hello of an unknown policy", err, syscall.EPROTONOSUPPORT, "policy 999")
	_, _, err = c.request(wire.OpHello, []byte{1})
	wantErr(t, "short hello", err, syscall.EINVAL, "malformed")
	c.hello(1)
	_, _, err = c.request(wire.OpHello, helloBody(wire.Version, 1))
	wantErr(t, "second hello", err, syscall.EISCONN)
	_, _, err = c.request(77, nil)
	wantErr(t, "unknown op", err, syscall.EINVAL, "unknown op 77")
	// The session still serves.
	if got := c.getU32(wire.OptMTU); got != 1514 {
		t.Errorf("default mtu %d, want 1514", got)
	}
}

// A connection that says nothing is dropped after HelloTimeout; one that
// said hello is not.
func TestHelloTimeout(t *testing.T) {
	d := serve(t, daemon.Config{HelloTimeout: 50 * time.Millisecond})
	greeted := dial(t, d.Socket).hello(0)
	silent := dial(t, d.Socket)
	start := time.Now()
	if _, _, _, err := silent.recv(); !wire.IsEOF(err) {
		t.Fatalf("silent client: %v, want the daemon to close the connection", err)
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Errorf("dropped after %v", el)
	}
	// Well past the timeout, the greeted client is served.
	if got := greeted.getU32(wire.OptNumNodes); got == 0 {
		t.Error("no number of ports")
	}
}

// A packet too short for a header breaks the protocol: the daemon drops
// the client.
func TestMalformedPacketDrops(t *testing.T) {
	d := serve(t, daemon.Config{})
	c := dial(t, d.Socket).hello(0)
	if _, err := c.conn.Write([]byte{1, 0}); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := c.recv(); !wire.IsEOF(err) {
		t.Fatalf("after a 2-byte packet: %v, want the connection closed", err)
	}
}

// Options are checked, kept and read back; network options are refused
// once bound, port options once connected.
func TestOptions(t *testing.T) {
	d := serve(t, daemon.Config{NoFastPath: true})
	c := dial(t, d.Socket).hello(0)
	for _, tc := range []struct {
		opt   uint32
		v     uint32
		texts []string
	}{
		{wire.OptMTU, 0, []string{"mtu 0", "1..67108864"}},
		{wire.OptMTU, 64<<20 + 1, []string{"mtu 67108865"}},
		{wire.OptNumNodes, 0, []string{"ports 0", "1..65536"}},
		{wire.OptMsgPoolSize, 1 << 17, []string{"pool size 131072"}},
		{wire.OptFlags, 0x100, []string{"flags 0x100", "lossless"}},
		{wire.OptPort, uint32(0xfffffffe), []string{"port -2", "-1 for any"}},
	} {
		wantErr(t, "bad option", c.setU32(tc.opt, tc.v), syscall.EINVAL, tc.texts...)
	}
	wantErr(t, "unknown option", c.setU32(55, 1), syscall.ENOPROTOOPT, "option 55")
	_, err := c.getOpt(55)
	wantErr(t, "get unknown option", err, syscall.ENOPROTOOPT, "option 55")
	wantErr(t, "fast path off", c.setU32(wire.OptFastPath, 1), syscall.ENOPROTOOPT, "fast path off")
	wantErr(t, "short option", c.setOpt(wire.OptMTU, []byte{1}), syscall.EINVAL, "malformed")
	wantErr(t, "long description", c.setOpt(wire.OptDescr, bytes.Repeat([]byte("x"), 129)), syscall.EINVAL, "129 bytes", "at most 128")
	wantErr(t, "resize unbound", c.setU32(wire.OptChangeNumNodes, 4), syscall.EACCES, "not bound")

	for opt, v := range map[uint32]uint32{
		wire.OptMTU: 1000, wire.OptNumNodes: 7, wire.OptMsgPoolSize: 5, wire.OptFlags: 4, // flexmtu
		wire.OptPort: 3, wire.OptHandleOOB: 1, wire.OptWantOOBNumNode: 1, wire.OptLink: 1,
	} {
		if err := c.setU32(opt, v); err != nil {
			t.Fatalf("set option %d to %d: %v", opt, v, err)
		}
		if got := c.getU32(opt); got != v {
			t.Errorf("option %d is %d, want %d", opt, got, v)
		}
	}
	if got := c.getU32(wire.OptMonitor); got != 0 {
		t.Errorf("monitor %d, want 0", got)
	}
	// A description loses its control characters.
	if err := c.setOpt(wire.OptDescr, []byte("a\x1b[2Jb")); err != nil {
		t.Fatal(err)
	}
	if got, _ := c.getOpt(wire.OptDescr); string(got) != "a?[2Jb" {
		t.Errorf("description %q, want %q", got, "a?[2Jb")
	}

	_, fd := rootNet(t)
	if err := c.bind(fd); err != nil {
		t.Fatal(err)
	}
	wantErr(t, "mtu once bound", c.setU32(wire.OptMTU, 1500), syscall.EISCONN)
	if got := c.getU32(wire.OptNumNodes); got != 7 {
		t.Errorf("bound network has %d ports, want 7", got)
	}
	rep, _, err := c.connect(-1)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Port != 3 || rep.MTU != 1000 || !rep.CanRead || !rep.CanWrite {
		t.Errorf("connect reply %+v, want port 3, mtu 1000, both sides", rep)
	}
	wantErr(t, "port once connected", c.setU32(wire.OptPort, 4), syscall.EISCONN)
	wantErr(t, "description once connected", c.setOpt(wire.OptDescr, []byte("x")), syscall.EISCONN)
	if got := c.getU32(wire.OptPort); got != 3 {
		t.Errorf("port %d, want 3", got)
	}
	// A manager resizes the network.
	if err := c.setU32(wire.OptChangeNumNodes, 12); err != nil {
		t.Fatal(err)
	}
	if got := c.getU32(wire.OptNumNodes); got != 12 {
		t.Errorf("resized to %d ports, want 12", got)
	}
}

// Two members of a network exchange messages through their data sockets,
// and a manager's bound network takes members by its file.
func TestBindConnectSendReceive(t *testing.T) {
	d := serve(t, daemon.Config{})
	_, fd := rootNet(t)
	mgr := dial(t, d.Socket).hello(1)
	if err := mgr.setU32(wire.OptMTU, 1500); err != nil {
		t.Fatal(err)
	}
	if err := mgr.bind(fd); err != nil {
		t.Fatal(err)
	}
	wantErr(t, "second bind", mgr.bind(fd), syscall.EINVAL)
	_, repA, a := member(t, d.Socket, fd)
	_, repB, b := member(t, d.Socket, fd)
	if repA.Port == repB.Port {
		t.Fatalf("both members on port %d", repA.Port)
	}
	if repA.MTU != 1500 || repA.Proto != 1 {
		t.Errorf("connect reply %+v, want mtu 1500, proto 1", repA)
	}
	for _, m := range []string{"hello from a", "and again"} {
		if _, err := a.Write([]byte(m)); err != nil {
			t.Fatal(err)
		}
		if got := recvMsg(t, b); string(got) != m {
			t.Fatalf("b received %q, want %q", got, m)
		}
	}
	if _, err := b.Write([]byte("to a")); err != nil {
		t.Fatal(err)
	}
	if got := recvMsg(t, a); string(got) != "to a" {
		t.Fatalf("a received %q", got)
	}
	// A message longer than the MTU does not enter the network.
	if _, err := a.Write(make([]byte, 1501)); err != nil && !errors.Is(err, syscall.EMSGSIZE) {
		t.Logf("long write: %v", err)
	}
	if _, err := a.Write([]byte("marker")); err != nil {
		t.Fatal(err)
	}
	if got := recvMsg(t, b); string(got) != "marker" {
		t.Fatalf("b received %q (%d bytes), want the marker after the long message", got[:min(len(got), 16)], len(got))
	}
}

// A session connected by its file does not need bind, and a policy other
// than the network's is refused at connect.
func TestConnectErrors(t *testing.T) {
	d := serve(t, daemon.Config{})
	c := dial(t, d.Socket).hello(0)
	_, _, err := c.connect(-1)
	wantErr(t, "connect without a file", err, syscall.EDESTADDRREQ, "needs the network file")

	path, fd := rootNet(t)
	_, _, err = c.connect(fd)
	wantErr(t, "connect with no network", err, syscall.ECONNREFUSED, "no network on this file in the ipn daemon at "+d.Socket)

	reg := filepath.Join(t.TempDir(), "plain")
	if err := os.WriteFile(reg, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	rfd, err := unix.Open(reg, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(rfd)
	wantErr(t, "bind a regular file", c.bind(rfd), syscall.ECONNREFUSED, "regular file", "not a network")
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pair[0])
	defer unix.Close(pair[1])
	wantErr(t, "bind a socket", c.bind(pair[0]), syscall.EINVAL, "a socket, not a socket file")
	_, _, err = c.request(wire.OpBind, nil)
	wantErr(t, "bind without a file", err, syscall.EINVAL, "want 1 descriptor, got 0")

	mgr := dial(t, d.Socket).hello(1)
	if err := mgr.bind(fd); err != nil {
		t.Fatal(err)
	}
	vde := dial(t, d.Socket).hello(2)
	_, _, err = vde.connect(fd)
	wantErr(t, "connect with another policy", err, syscall.EPROTO, "policy is hub", "the socket's switch")
	_, _, err = vde.request(wire.OpBind, nil, fd)
	wantErr(t, "bind with another policy", err, syscall.EPROTO)

	// Port numbers: taken, and out of range.
	_, rep, _ := member(t, d.Socket, fd)
	dup := dial(t, d.Socket).hello(0)
	if err := dup.setU32(wire.OptPort, rep.Port); err != nil {
		t.Fatal(err)
	}
	_, _, err = dup.connect(fd)
	wantErr(t, "taken port", err, syscall.EADDRNOTAVAIL, "is taken", "ipn ls "+path+" shows who holds the ports")

	// A member of one network may not connect again, nor to another.
	m, _, _ := member(t, d.Socket, fd)
	_, _, err = m.connect(fd)
	wantErr(t, "second connect", err, syscall.EISCONN)
	_, other := rootNet(t)
	b := dial(t, d.Socket).hello(0)
	if err := b.bind(fd); err != nil {
		t.Fatal(err)
	}
	_, _, err = b.connect(other)
	wantErr(t, "connect bound elsewhere", err, syscall.EINVAL, "bound to another network")
}

// An exclusive network takes no second manager.
func TestExclusive(t *testing.T) {
	d := serve(t, daemon.Config{})
	_, fd := rootNet(t)
	a := dial(t, d.Socket).hello(0)
	if err := a.setU32(wire.OptFlags, 2); err != nil { // excl
		t.Fatal(err)
	}
	if err := a.bind(fd); err != nil {
		t.Fatal(err)
	}
	b := dial(t, d.Socket).hello(0)
	wantErr(t, "second manager", b.bind(fd), syscall.EEXIST, "exclusive network")
}

// Shutdown sides are checked, and a node's shut sides are closed on its
// data socket; a monitor must shut its send side first.
func TestShutdownAndMonitor(t *testing.T) {
	d := serve(t, daemon.Config{})
	_, fd := rootNet(t)
	mgr := dial(t, d.Socket).hello(0)
	if err := mgr.bind(fd); err != nil {
		t.Fatal(err)
	}
	c := dial(t, d.Socket).hello(0)
	for _, how := range []uint32{0, 4} {
		_, _, err := c.request(wire.OpShutdown, wire.U32(how))
		wantErr(t, "shutdown how", err, syscall.EINVAL)
	}
	if err := c.setU32(wire.OptMonitor, 1); err != nil {
		t.Fatal(err)
	}
	_, _, err := c.connect(fd)
	wantErr(t, "monitor that can send", err, syscall.EINVAL, "receive-only")
	c.must(wire.OpShutdown, wire.U32(wire.ShutWrite))
	rep, mon, err := c.connect(fd)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.CanRead || rep.CanWrite {
		t.Errorf("monitor reply %+v, want read only", rep)
	}
	_, _, err = c.request(wire.OpSendOOB, []byte("x"))
	wantErr(t, "oob from a monitor", err, syscall.EPIPE)

	_, _, a := member(t, d.Socket, fd)
	rc, _, r := member(t, d.Socket, fd)
	if _, err := a.Write([]byte("one")); err != nil {
		t.Fatal(err)
	}
	if got := recvMsg(t, mon); string(got) != "one" {
		t.Fatalf("monitor saw %q", got)
	}
	if got := recvMsg(t, r); string(got) != "one" {
		t.Fatalf("member saw %q", got)
	}
	// r stops receiving: its data socket ends (EOF).
	rc.must(wire.OpShutdown, wire.U32(wire.ShutRead))
	r.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 64)
	for {
		n, err := r.Read(buf)
		if err == io.EOF || err == nil && n == 0 {
			break
		}
		if err != nil {
			t.Fatalf("after shutdown of reading: %v, want EOF", err)
		}
	}
}

// An out-of-band message reaches the members that handle them, as an
// event on their control connection; the number-of-nodes notice reaches
// those that asked.
func TestOOBEvents(t *testing.T) {
	d := serve(t, daemon.Config{})
	_, fd := rootNet(t)
	mgr := dial(t, d.Socket).hello(0)
	if err := mgr.bind(fd); err != nil {
		t.Fatal(err)
	}
	rx := dial(t, d.Socket).hello(0)
	if err := rx.setU32(wire.OptHandleOOB, 1); err != nil {
		t.Fatal(err)
	}
	if err := rx.setU32(wire.OptWantOOBNumNode, 1); err != nil {
		t.Fatal(err)
	}
	if _, _, err := rx.connect(fd); err != nil {
		t.Fatal(err)
	}
	tx, _, _ := member(t, d.Socket, fd)
	// Each join changes the counts: notices of 16 bytes, the last of 2
	// readers and 2 writers.
	for counts := [2]byte{}; counts != [2]byte{2, 2}; {
		ev, err := rx.nextEvent()
		if err != nil {
			t.Fatalf("no numnodes notice of 2 readers and 2 writers: %v", err)
		}
		if ev.op != wire.OpOOB || len(ev.body) != 16 {
			t.Fatalf("event %#x %v, want a numnodes notice", ev.op, ev.body)
		}
		counts = [2]byte{ev.body[8], ev.body[12]}
	}
	_, _, err := mgr.request(wire.OpSendOOB, []byte("x"))
	wantErr(t, "oob unconnected", err, syscall.ENOTCONN)
	_, _, err = tx.request(wire.OpSendOOB, make([]byte, 1515))
	wantErr(t, "oob over the mtu", err, syscall.EOVERFLOW)
	tx.must(wire.OpSendOOB, []byte("urgent"))
	for {
		ev, err := rx.nextEvent()
		if err != nil {
			t.Fatalf("no oob event: %v", err)
		}
		if ev.op == wire.OpOOB && string(ev.body) == "urgent" {
			break
		}
		if ev.op != wire.OpOOB || len(ev.body) != 16 {
			t.Fatalf("event %#x %q", ev.op, ev.body)
		}
	}
}

// When the last session of a network leaves, the daemon tells it the
// network ended (OpEnded) before it closes the connection; a network that
// lives on sends nothing.
func TestEndedWhenLastLeaves(t *testing.T) {
	d := serve(t, daemon.Config{})
	_, fd := rootNet(t)
	a := dial(t, d.Socket).hello(0)
	if err := a.bind(fd); err != nil {
		t.Fatal(err)
	}
	b, _, _ := member(t, d.Socket, fd)
	// a leaves first: b still holds the network.
	a.conn.CloseWrite()
	if ev, err := a.nextEvent(); !wire.IsEOF(err) {
		t.Fatalf("first to leave got %+v %v, want the connection closed", ev, err)
	}
	b.conn.CloseWrite()
	ev, err := b.nextEvent()
	if err != nil || ev.op != wire.OpEnded {
		t.Fatalf("last to leave got %+v %v, want OpEnded", ev, err)
	}
	if _, err := b.nextEvent(); !wire.IsEOF(err) {
		t.Fatalf("after OpEnded: %v, want the connection closed", err)
	}
	c := dial(t, d.Socket).hello(0)
	_, _, err = c.connect(fd)
	wantErr(t, "connect after the end", err, syscall.ECONNREFUSED)
}

// A daemon that stops ends every network: each session that held one gets
// OpEnded, the others only the close; Serve removes its socket.
func TestEndedAtShutdown(t *testing.T) {
	d := serve(t, daemon.Config{})
	_, fd := rootNet(t)
	mgr := dial(t, d.Socket).hello(0)
	if err := mgr.bind(fd); err != nil {
		t.Fatal(err)
	}
	m, _, data := member(t, d.Socket, fd)
	idle := dial(t, d.Socket).hello(0)
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]*client{"manager": mgr, "member": m} {
		ev, err := c.nextEvent()
		if err != nil || ev.op != wire.OpEnded {
			t.Errorf("%s got %+v %v, want OpEnded", name, ev, err)
		}
	}
	if ev, err := idle.nextEvent(); !wire.IsEOF(err) {
		t.Errorf("idle session got %+v %v, want the close", ev, err)
	}
	data.SetReadDeadline(time.Now().Add(wait))
	if n, err := data.Read(make([]byte, 16)); err == nil && n > 0 {
		t.Errorf("data socket read %d bytes after the end", n)
	}
	if _, err := os.Lstat(d.Socket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("control socket after stop: %v, want it removed", err)
	}
}

// A second daemon on the same socket fails with ErrRunning; once the first
// has stopped, one may serve there again, replacing the stale socket.
func TestOneDaemonPerSocket(t *testing.T) {
	d := serve(t, daemon.Config{})
	err := daemon.Serve(context.Background(), daemon.Config{Socket: d.Socket})
	if !errors.Is(err, daemon.ErrRunning) {
		t.Fatalf("second daemon: %v, want ErrRunning", err)
	}
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	// A socket file left behind (a daemon that died) is replaced.
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: d.Socket, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	ready := make(chan struct{})
	go func() {
		done <- daemon.Serve(ctx, daemon.Config{Socket: d.Socket, Ready: func() { close(ready) },
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("daemon on a stale socket: %v", err)
	}
	dial(t, d.Socket).hello(0)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// A daemon with IdleExit ends by itself once its last client has gone,
// and not while one is connected.
func TestIdleExit(t *testing.T) {
	sock := filepath.Join(netDir(t), "ipn.sock")
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- daemon.Serve(context.Background(), daemon.Config{Socket: sock, IdleExit: 100 * time.Millisecond,
			Ready: func() { close(ready) }, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	}()
	<-ready
	c := dial(t, sock).hello(0)
	// Three idle periods with a client: still serving.
	for range 3 {
		select {
		case err := <-done:
			t.Fatalf("daemon ended with a client: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
		c.getU32(wire.OptMTU)
	}
	c.conn.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(wait):
		t.Fatal("daemon still serving with no client")
	}
}

// Many clients at once are each served their own session.
func TestConcurrentSessions(t *testing.T) {
	d := serve(t, daemon.Config{})
	_, fd := rootNet(t)
	mgr := dial(t, d.Socket).hello(0)
	if err := mgr.setU32(wire.OptNumNodes, 64); err != nil {
		t.Fatal(err)
	}
	if err := mgr.bind(fd); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	ports := make(chan uint32, 32)
	for range 32 {
		wg.Go(func() {
			c := dial(t, d.Socket)
			c.send(wire.OpHello, helloBody(wire.Version, 0))
			if _, _, _, err := c.recv(); err != nil {
				t.Error(err)
				return
			}
			c.send(wire.OpConnect, nil, fd)
			op, body, fds, err := c.recv()
			for _, f := range fds {
				unix.Close(f)
			}
			if err != nil || op != wire.OpConnect|wire.ReplyBit {
				t.Errorf("connect: %#x %v", op, err)
				return
			}
			res, err := wire.SplitReply(body)
			if err != nil {
				t.Error(err)
				return
			}
			rep, _ := wire.DecodeConnectReply(res)
			ports <- rep.Port
		})
	}
	wg.Wait()
	close(ports)
	seen := map[uint32]bool{}
	for p := range ports {
		if seen[p] {
			t.Errorf("port %d given twice", p)
		}
		seen[p] = true
	}
	if len(seen) != 32 {
		t.Errorf("%d ports, want 32", len(seen))
	}
}
