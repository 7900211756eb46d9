package daemon_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/daemon"
	"github.com/ipn-project/ipn/internal/wire"
)

// The tests of this file play what members may do to stop a takeover, or
// to make it harm others.

// fastMember connects a member of the network of fd on the fast path and
// returns its client and the descriptors of the reply (the ring memory
// first, the status page last).
func fastMember(t *testing.T, sock string, fd int) (*client, []int) {
	t.Helper()
	c := dial(t, sock).hello(0)
	if err := c.setU32(wire.OptFastPath, 1); err != nil {
		t.Fatal(err)
	}
	_, rfds, err := c.request(wire.OpConnect, nil, fd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeAll(rfds) })
	if len(rfds) != wire.FastPathFDs+1 {
		t.Fatalf("fast member got %d descriptors, want %d", len(rfds), wire.FastPathFDs+1)
	}
	return c, rfds
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// honestPair makes a network of root's with two members, and returns a
// function that checks a message still goes from one to the other.
func honestPair(t *testing.T, sock string) func(what string) {
	t.Helper()
	_, fd := rootNet(t)
	mgr := dial(t, sock).hello(0)
	if err := mgr.bind(fd); err != nil {
		t.Fatal(err)
	}
	_, _, a := member(t, sock, fd)
	_, _, b := member(t, sock, fd)
	return func(what string) {
		t.Helper()
		if _, err := a.Write([]byte(what)); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if got := recvMsg(t, b); string(got) != what {
			t.Fatalf("received %q, want %q", got, what)
		}
	}
}

// A member (any user) that never reads its control connection, with
// out-of-band messages on and its socket buffer filled with them by
// another member, does not hold a takeover up: it completes, and the
// daemon serves everyone as before.
func TestTakeoverNotHeldByDeafMember(t *testing.T) {
	d := serve(t, daemon.Config{})
	const nobody = 65534
	_, fd := netFile(t, netDir(t), nobody, nobody, 0o700)
	mgr := dialAs(t, d.Socket, nobody, nobody).hello(0)
	if err := mgr.bind(fd); err != nil {
		t.Fatal(err)
	}
	deaf := dialAs(t, d.Socket, nobody, nobody).hello(0)
	if err := deaf.setU32(wire.OptHandleOOB, 1); err != nil {
		t.Fatal(err)
	}
	if _, _, err := deaf.connect(fd); err != nil {
		t.Fatal(err)
	}
	tx := dialAs(t, d.Socket, nobody, nobody).hello(0)
	if _, _, err := tx.connect(fd); err != nil {
		t.Fatal(err)
	}
	for range 2000 { // far more than the deaf member's socket holds
		tx.must(wire.OpSendOOB, make([]byte, 1400))
	}
	check := honestPair(t, d.Socket)
	check("before")
	t0 := time.Now()
	takeOver(t, d.Socket)
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	t.Logf("taken over in %v", time.Since(t0).Round(time.Millisecond))
	check("after")
	c := dial(t, d.Socket)
	if _, _, err := c.request(wire.OpHello, helloBody(wire.Version, 0)); err != nil {
		t.Fatalf("a new client after the takeover: %v", err)
	}
}

// A fast-path member that writes over its ring memory's header and its
// status page does not stop a takeover: the new daemon trusts neither.
func TestTakeoverNotStoppedByScribbler(t *testing.T) {
	d := serve(t, daemon.Config{})
	_, fd := rootNet(t)
	mgr := dial(t, d.Socket).hello(0)
	if err := mgr.bind(fd); err != nil {
		t.Fatal(err)
	}
	_, rfds := fastMember(t, d.Socket, fd)
	for _, target := range []int{rfds[0], rfds[len(rfds)-1]} {
		if _, err := unix.Pwrite(target, make([]byte, 16), 0); err != nil {
			t.Fatalf("pwrite: %v", err)
		}
	}
	check := honestPair(t, d.Socket)
	takeOver(t, d.Socket)
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	check("after a scribbler")
}

// A daemon stopped (SIGTERM) while it hands over finishes the hand-over
// first and then lets go without a word to anyone: the control socket
// stays, no member is told its network ended, the fast path's rings are
// not marked closed, and messages go on through the new daemon.
func TestStopDuringHandover(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "ipn.sock")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- daemon.Serve(ctx, daemon.Config{Socket: sock, Ready: func() { close(ready) },
			Logger: slog.New(slog.NewTextHandler(hookWriter{t, func(s string) {
				if strings.Contains(s, "handing over") {
					cancel() // stop, as SIGTERM does, while it hands over
				}
			}}, nil))})
	}()
	<-ready
	_, fd := rootNet(t)
	mgr := dial(t, sock).hello(0)
	if err := mgr.bind(fd); err != nil {
		t.Fatal(err)
	}
	_, _, a := member(t, sock, fd)
	bc, _, b := member(t, sock, fd)
	_, ffds := fastMember(t, sock, fd)
	takeOver(t, sock)
	if err := <-done; err != nil {
		t.Fatalf("the old daemon: %v", err)
	}
	if _, err := os.Stat(sock); err != nil {
		t.Errorf("control socket after the hand-over: %v", err)
	}
	a.Write([]byte("after"))
	if got := recvMsg(t, b); string(got) != "after" {
		t.Errorf("received %q", got)
	}
	flag := make([]byte, 4)
	unix.Pread(ffds[0], flag, 16)
	if flag[0] != 0 {
		t.Errorf("the fast member's rings were marked closed")
	}
	bc.conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if pkt, _, err := wire.Recv(bc.conn, bc.buf); err == nil {
		if op, _, _ := wire.Split(pkt); op == wire.OpEnded {
			t.Error("a member was told its network ended")
		}
	}
}

// A daemon that takes over members and exits when idle (as one started
// in the background does) does not exit while they are there.
func TestTakeoverNoIdleExitWithMembers(t *testing.T) {
	d := serve(t, daemon.Config{})
	check := honestPair(t, d.Socket)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- daemon.Serve(ctx, daemon.Config{Socket: d.Socket, Takeover: true, IdleExit: 200 * time.Millisecond,
			Ready: func() { close(ready) }, Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil))})
	}()
	<-ready
	d.Stop()
	// Ten idle periods with clients: still serving.
	for i := range 10 {
		select {
		case err := <-done:
			t.Fatalf("the new daemon exited, idle with clients: %v", err)
		case <-time.After(200 * time.Millisecond):
		}
		check("still " + string(rune('0'+i)))
	}
}

type hookWriter struct {
	t    *testing.T
	hook func(string)
}

func (w hookWriter) Write(b []byte) (int, error) {
	w.t.Logf("%s", strings.TrimSpace(string(b)))
	w.hook(string(b))
	return len(b), nil
}
