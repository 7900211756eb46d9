package daemon_test

import (
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/ipn-project/ipn/daemon"
	"github.com/ipn-project/ipn/internal/wire"
)

// eventually retries try until it returns nil or wait has passed, and
// returns its last error.
// (What the daemon gives back when a session ends, it gives back just
// after it has closed the connection.)
func eventually(try func() error) error {
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for {
		err := try()
		if err == nil {
			return nil
		}
		select {
		case <-deadline.C:
			return err
		case <-tick.C:
		}
	}
}

func setMode(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// leave closes c's sending side and waits until the daemon has closed
// the session (after an OpEnded, if the network ended).
func leave(t *testing.T, c *client) {
	t.Helper()
	c.conn.CloseWrite()
	for {
		ev, err := c.nextEvent()
		if wire.IsEOF(err) {
			return
		}
		if err != nil {
			t.Fatalf("leaving: %v", err)
		}
		if ev.op != wire.OpEnded && ev.op != wire.OpOOB {
			t.Fatalf("leaving: event %#x", ev.op)
		}
	}
}

// A user may hold as many connections as Limits.Conns; one more is
// refused with a reply that names the limit, and once one has gone,
// another is admitted.
func TestLimitConns(t *testing.T) {
	d := serve(t, daemon.Config{Limits: daemon.Limits{Conns: 2}})
	a := dialAs(t, d.Socket, 2301, 2301).hello(0)
	dialAs(t, d.Socket, 2301, 2301).hello(0)
	over := dialAs(t, d.Socket, 2301, 2301)
	_, _, err := over.request(wire.OpHello, helloBody(wire.Version, 0))
	wantErr(t, "third connection", err, syscall.EAGAIN, "uid 2301 has 2 connections", "--max-conns")
	if _, err := over.nextEvent(); !wire.IsEOF(err) {
		t.Errorf("refused connection: %v, want it closed", err)
	}
	// Another user, and root, are not counted with 2301.
	dialAs(t, d.Socket, 2302, 2302).hello(0)
	dial(t, d.Socket).hello(0)
	dial(t, d.Socket).hello(0)
	leave(t, a)
	if err := eventually(func() error {
		c := dialAs(t, d.Socket, 2301, 2301)
		_, _, err := c.request(wire.OpHello, helloBody(wire.Version, 0))
		c.conn.Close()
		return err
	}); err != nil {
		t.Fatalf("after one left: %v", err)
	}
}

// A user makes at most Limits.Networks networks; root is not limited.
func TestLimitNetworks(t *testing.T) {
	d := serve(t, daemon.Config{Limits: daemon.Limits{Networks: 1}})
	dir := netDir(t)
	_, fd1 := netFile(t, dir, 2311, 2311, 0o700)
	_, fd2 := netFile(t, dir, 2311, 2311, 0o700)
	a := dialAs(t, d.Socket, 2311, 2311).hello(0)
	if err := a.bind(fd1); err != nil {
		t.Fatal(err)
	}
	b := dialAs(t, d.Socket, 2311, 2311).hello(0)
	wantErr(t, "second network", b.bind(fd2), syscall.EDQUOT, "uid 2311 has 1 networks", "--max-networks")
	leave(t, a)
	if err := eventually(func() error { return b.bind(fd2) }); err != nil {
		t.Fatalf("after the first ended: %v", err)
	}
	for range 3 {
		_, fd := rootNet(t)
		if err := dial(t, d.Socket).hello(0).bind(fd); err != nil {
			t.Fatalf("root's network: %v", err)
		}
	}
}

// A user may not make a network of another user's file.
func TestOnlyOwnerCreates(t *testing.T) {
	d := serve(t, daemon.Config{})
	_, fd := netFile(t, netDir(t), 2321, 2321, 0o777)
	c := dialAs(t, d.Socket, 2322, 2322).hello(0)
	wantErr(t, "bind another's file", c.bind(fd), syscall.ECONNREFUSED, "only its owner (uid 2321)")
	_, _, err := c.connect(fd)
	wantErr(t, "connect to another's file", err, syscall.ECONNREFUSED, "no network on this file")
}

// A user holds at most Limits.Ports ports; a port given back may be taken
// again.
func TestLimitPorts(t *testing.T) {
	d := serve(t, daemon.Config{Limits: daemon.Limits{Ports: 1}})
	_, fd := netFile(t, netDir(t), 2331, 2331, 0o700)
	mgr := dialAs(t, d.Socket, 2331, 2331).hello(0)
	if err := mgr.bind(fd); err != nil {
		t.Fatal(err)
	}
	a := dialAs(t, d.Socket, 2331, 2331).hello(0)
	if _, _, err := a.connect(fd); err != nil {
		t.Fatal(err)
	}
	b := dialAs(t, d.Socket, 2331, 2331).hello(0)
	_, _, err := b.connect(fd)
	wantErr(t, "second port", err, syscall.EAGAIN, "uid 2331 holds 1 ports", "--max-ports")
	leave(t, a)
	if err := eventually(func() error { _, _, err := b.connect(fd); return err }); err != nil {
		t.Fatalf("after the first left: %v", err)
	}
}

// A network that may hold more memory than the user has left is refused,
// with a text that says what would need less; so is a resize past it,
// which leaves the network as it was.
func TestLimitMemory(t *testing.T) {
	d := serve(t, daemon.Config{Limits: daemon.Limits{Memory: 8 << 20}})
	dir := netDir(t)
	_, big := netFile(t, dir, 2341, 2341, 0o700)
	c := dialAs(t, d.Socket, 2341, 2341).hello(0)
	for opt, v := range map[uint32]uint32{wire.OptMTU: 65535, wire.OptNumNodes: 1024} {
		if err := c.setU32(opt, v); err != nil {
			t.Fatal(err)
		}
	}
	wantErr(t, "big network", c.bind(big), syscall.EDQUOT, "uid 2341 has 0 MiB of 8 MiB", "--max-memory", "smaller MTU")

	_, small := netFile(t, dir, 2341, 2341, 0o700)
	m := dialAs(t, d.Socket, 2341, 2341).hello(0)
	if err := m.setU32(wire.OptNumNodes, 2); err != nil {
		t.Fatal(err)
	}
	if err := m.bind(small); err != nil {
		t.Fatal(err)
	}
	wantErr(t, "resize past the limit", m.setU32(wire.OptChangeNumNodes, 60000), syscall.EDQUOT, "--max-memory")
	if got := m.getU32(wire.OptNumNodes); got != 2 {
		t.Errorf("%d ports after a refused resize, want 2", got)
	}
	if err := m.setU32(wire.OptChangeNumNodes, 8); err != nil {
		t.Errorf("resize within the limit: %v", err)
	}
}

// Rights are the kernel's on the network file, read at each request: no r
// nor w refuses connect, a chmod since bind counts, and resizing needs x.
func TestRights(t *testing.T) {
	d := serve(t, daemon.Config{})
	path, fd := rootNet(t)
	mgr := dial(t, d.Socket).hello(0)
	if err := mgr.bind(fd); err != nil {
		t.Fatal(err)
	}
	u := dialAs(t, d.Socket, 2351, 2351).hello(0)
	rep, _, err := u.connect(fd)
	if err != nil || !rep.CanRead || !rep.CanWrite {
		t.Fatalf("connect with rwx: %+v %v", rep, err)
	}
	setMode(t, path, 0o774) // others: r only
	r := dialAs(t, d.Socket, 2351, 2351).hello(0)
	rep, _, err = r.connect(fd)
	if err != nil || !rep.CanRead || rep.CanWrite {
		t.Errorf("connect with r: %+v %v, want read only", rep, err)
	}
	setMode(t, path, 0o770)
	n := dialAs(t, d.Socket, 2351, 2351).hello(0)
	_, _, err = n.connect(fd)
	wantErr(t, "connect without r or w", err, syscall.EACCES, "no r nor w")
	x := dialAs(t, d.Socket, 2351, 2351).hello(0)
	wantErr(t, "bind without x", x.bind(fd), syscall.EACCES, "managing needs x")
	mon := dialAs(t, d.Socket, 2351, 2351).hello(0)
	setMode(t, path, 0o776)
	mon.must(wire.OpShutdown, wire.U32(wire.ShutWrite))
	if err := mon.setU32(wire.OptMonitor, 1); err != nil {
		t.Fatal(err)
	}
	_, _, err = mon.connect(fd)
	wantErr(t, "monitor without x", err, syscall.EACCES, "a monitor port needs x")
}

// Networks of MTU 64 MiB are charged for what they may hold, fragments on
// their data sockets included: a lossy one of 64 ports (over 4 GiB) is
// refused, lossless ones of 8 ports are not, until the user's memory is
// spent: never more of them than the limit holds of their budgets for big
// messages (2 x MTU each).
func TestLimitMemoryHugeMTU(t *testing.T) {
	const limit = 1 << 30
	d := serve(t, daemon.Config{Limits: daemon.Limits{Memory: limit, Networks: 100}})
	dir := netDir(t)
	bind := func(ports, flags uint32) error {
		_, f := netFile(t, dir, 2342, 2342, 0o700)
		c := dialAs(t, d.Socket, 2342, 2342).hello(0)
		for opt, v := range map[uint32]uint32{wire.OptMTU: 64 << 20, wire.OptNumNodes: ports, wire.OptFlags: flags} {
			if err := c.setU32(opt, v); err != nil {
				t.Fatal(err)
			}
		}
		return c.bind(f)
	}
	wantErr(t, "a lossy network of 64 ports", bind(64, 0), syscall.EDQUOT, "--max-memory")
	n := 0
	for ; n < 100; n++ {
		if err := bind(8, 1); err != nil {
			wantErr(t, "one network too many", err, syscall.EDQUOT, "--max-memory")
			break
		}
	}
	if n == 0 || n > limit/(2*64<<20) {
		t.Fatalf("%d lossless networks of MTU 64 MiB bound within %d MiB: want 1 to %d", n, limit>>20, limit/(2*64<<20))
	}
	t.Logf("%d lossless networks of MTU 64 MiB and 8 ports within %d MiB", n, limit>>20)
}
