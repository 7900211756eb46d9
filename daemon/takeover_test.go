package daemon_test

import (
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ipn-project/ipn/daemon"
	"github.com/ipn-project/ipn/internal/spec"
	"github.com/ipn-project/ipn/internal/wire"
	"github.com/ipn-project/ipn/policy/loop"
)

// takeOver starts, in this process, a daemon that takes over from the
// one at sock, and returns once it serves; it is stopped when t ends.
func takeOver(t *testing.T, sock string) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- daemon.Serve(ctx, daemon.Config{
			Socket: sock, Takeover: true, Ready: func() { close(ready) },
			Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})),
		})
	}()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("takeover: %v", err)
	case <-time.After(wait):
		t.Fatal("takeover: the new daemon did not come up")
	}
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			err = <-done
		})
		return err
	}
	t.Cleanup(func() { stop() })
	return stop
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Logf("%s", b)
	return len(b), nil
}

// A stream through a lossless hub, on the socket path, crosses two
// takeovers: the receiver gets every message once and in order; the old
// daemons exit; the manager's session and the members' go on, and a new
// member joins the last daemon.
func TestTakeoverUnderLoad(t *testing.T) {
	d := serve(t, daemon.Config{})
	_, fd := rootNet(t)
	mgr := dial(t, d.Socket).hello(0)
	if err := mgr.setU32(wire.OptFlags, uint32(spec.Lossless)); err != nil {
		t.Fatal(err)
	}
	if err := mgr.setU32(wire.OptMsgPoolSize, 64); err != nil {
		t.Fatal(err)
	}
	if err := mgr.bind(fd); err != nil {
		t.Fatal(err)
	}
	_, _, a := member(t, d.Socket, fd)
	_, repB, b := member(t, d.Socket, fd)

	const total = 200000
	sendErr := make(chan error, 1)
	go func() {
		msg := make([]byte, 64)
		for i := range total {
			binary.LittleEndian.PutUint64(msg, uint64(i))
			if _, err := a.Write(msg); err != nil {
				sendErr <- err
				return
			}
		}
		sendErr <- nil
	}()
	got := make(chan uint64, 1024)
	recvErr := make(chan error, 1)
	go func() {
		buf := make([]byte, 2048)
		for {
			b.SetReadDeadline(time.Now().Add(10 * time.Second))
			n, err := b.Read(buf)
			if err != nil {
				recvErr <- err
				close(got)
				return
			}
			if loop.IsProbe(buf[:n]) {
				continue
			}
			got <- binary.LittleEndian.Uint64(buf)
		}
	}()
	next := uint64(0)
	expect := func(upTo uint64) {
		t.Helper()
		for next < upTo {
			v, ok := <-got
			if !ok {
				t.Fatalf("receiver stopped at %d: %v", next, <-recvErr)
			}
			if v != next {
				t.Fatalf("received %d, want %d: lost or repeated", v, next)
			}
			next++
		}
	}
	expect(total / 10)
	stop2 := takeOver(t, d.Socket)
	if err := d.Stop(); err != nil {
		t.Fatalf("the old daemon ended with %v", err)
	}
	expect(total / 2)
	takeOver(t, d.Socket)
	if err := stop2(); err != nil {
		t.Fatalf("the second daemon ended with %v", err)
	}
	expect(total)
	if err := <-sendErr; err != nil {
		t.Fatalf("sender: %v", err)
	}
	// The sessions are the new daemon's: the manager's options read, a
	// new member joins and is heard.
	if v := mgr.getU32(wire.OptMsgPoolSize); v != 64 {
		t.Errorf("pool size after takeovers: %d, want 64", v)
	}
	_, repC, c := member(t, d.Socket, fd)
	if repC.Port == repB.Port {
		t.Errorf("new member on port %d, taken by b", repC.Port)
	}
	if _, err := c.Write([]byte("after")); err != nil {
		t.Fatal(err)
	}
	if v := <-got; v != binary.LittleEndian.Uint64([]byte("after\x00\x00\x00")) {
		t.Errorf("b received %d after the takeovers, want the new member's message", v)
	}
}

// Only the daemon's own user may take over: another user cannot reach the
// takeover socket.
func TestTakeoverRefusesOtherUsers(t *testing.T) {
	needRoot(t)
	d := serve(t, daemon.Config{})
	path := daemon.TakeoverSocket(d.Socket)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("takeover socket mode %v, want 0600", fi.Mode().Perm())
	}
	asUser(t, 65534, 65534, func() error {
		c, err := net.Dial("unixpacket", path)
		if err == nil {
			c.Close()
			t.Error("nobody connected to the takeover socket")
		} else if !errors.Is(err, syscall.EACCES) {
			t.Errorf("nobody's connect: %v, want EACCES", err)
		}
		return nil
	})
}

// streamCheck streams numbered messages from a to b, a lossless pair, and
// returns a function that waits until b has received n of them, each
// once and in order, and one that stops the sender and returns how many
// it sent.
func streamCheck(t *testing.T, a, b *net.UnixConn) (expect func(n uint64), stop func() uint64) {
	t.Helper()
	quit := make(chan struct{})
	var sent uint64
	sendDone := make(chan error, 1)
	go func() {
		msg := make([]byte, 64)
		for i := uint64(0); ; i++ {
			select {
			case <-quit:
				sent = i
				sendDone <- nil
				return
			default:
			}
			binary.LittleEndian.PutUint64(msg, i)
			if _, err := a.Write(msg); err != nil {
				sent = i
				sendDone <- err
				return
			}
		}
	}()
	// The receiver never waits for the test: a lossless sender waits for
	// it, and stop waits for the sender.
	var mu sync.Mutex
	var got []uint64
	recvDone := make(chan struct{})
	go func() {
		defer close(recvDone)
		buf := make([]byte, 2048)
		for {
			b.SetReadDeadline(time.Now().Add(10 * time.Second))
			n, err := b.Read(buf)
			if err != nil {
				return
			}
			if !loop.IsProbe(buf[:n]) {
				mu.Lock()
				got = append(got, binary.LittleEndian.Uint64(buf))
				mu.Unlock()
			}
		}
	}()
	next := uint64(0)
	expect = func(upTo uint64) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for next < upTo {
			mu.Lock()
			have := uint64(len(got))
			var v uint64
			if next < have {
				v = got[next]
			}
			mu.Unlock()
			if next >= have {
				select {
				case <-recvDone:
					t.Fatalf("receiver stopped at %d", next)
				default:
				}
				if time.Now().After(deadline) {
					t.Fatalf("received %d messages, want %d", next, upTo)
				}
				time.Sleep(time.Millisecond)
				continue
			}
			if v != next {
				t.Fatalf("received %d, want %d: lost or repeated", v, next)
			}
			next++
		}
	}
	stop = func() uint64 {
		close(quit)
		if err := <-sendDone; err != nil {
			t.Fatalf("sender: %v", err)
		}
		return sent
	}
	return expect, stop
}

// A new daemon that fails after the old one has frozen and sent its state
// (here a fake one that refuses it) leaves the old one serving as before:
// the stream goes on, nothing lost or repeated, and it can be taken over
// later.
func TestTakeoverFailureResumes(t *testing.T) {
	d := serve(t, daemon.Config{})
	_, fd := rootNet(t)
	mgr := dial(t, d.Socket).hello(0)
	if err := mgr.setU32(wire.OptFlags, uint32(spec.Lossless)); err != nil {
		t.Fatal(err)
	}
	if err := mgr.bind(fd); err != nil {
		t.Fatal(err)
	}
	_, _, a := member(t, d.Socket, fd)
	_, _, b := member(t, d.Socket, fd)
	expect, stop := streamCheck(t, a, b)
	expect(10000)

	for _, answer := range []string{"X", "hang up"} {
		c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: daemon.TakeoverSocket(d.Socket), Net: "unixpacket"})
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(`H{"Format":1,"PID":1,"Build":"test"}`))
		buf, oob := make([]byte, 64<<10), make([]byte, 4096)
		fds := 0
		for {
			n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
			if err != nil {
				t.Fatalf("reading the state: %v", err)
			}
			if msgs, _ := syscall.ParseSocketControlMessage(oob[:oobn]); len(msgs) > 0 {
				for _, m := range msgs {
					got, _ := syscall.ParseUnixRights(&m)
					fds += len(got)
					for _, fd := range got {
						syscall.Close(fd)
					}
				}
			}
			if n > 0 && buf[0] == 'E' {
				break
			}
		}
		if fds == 0 {
			t.Fatal("the state came with no descriptors")
		}
		if answer == "X" {
			c.Write([]byte("Xrefused by the test"))
		}
		c.Close()
		// The old daemon resumes: the stream goes on.
		expect(uint64(20000 + 10000*len(answer)))
	}
	takeOver(t, d.Socket)
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	expect(60000)
	expect(stop())
}

// Under systemd (NOTIFY_SOCKET), a daemon says it is ready and that it is
// the service's main process, and so does the one that takes over from
// it, for a reload by ipn daemon --takeover.
func TestNotifySystemd(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify")
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	t.Setenv("NOTIFY_SOCKET", path)
	want := "READY=1\nMAINPID=" + strconv.Itoa(os.Getpid()) + "\n"
	read := func(who string) {
		t.Helper()
		buf := make([]byte, 256)
		ln.SetReadDeadline(time.Now().Add(wait))
		n, err := ln.Read(buf)
		if err != nil {
			t.Fatalf("%s told systemd nothing: %v", who, err)
		}
		if got := string(buf[:n]); got != want {
			t.Errorf("%s told systemd %q, want %q", who, got, want)
		}
	}
	d := serve(t, daemon.Config{})
	read("the daemon")
	if os.Getenv("NOTIFY_SOCKET") != "" {
		t.Error("the daemon left NOTIFY_SOCKET for what it starts")
	}
	t.Setenv("NOTIFY_SOCKET", path) // the new daemon is another process, in life
	takeOver(t, d.Socket)
	read("the daemon that took over")
}
