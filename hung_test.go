package ipn_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ipn-project/ipn"
)

// A daemon that stops answering (SIGSTOP) is noticed: a control call
// fails with ETIMEDOUT once the Dialer's request timeout passes, and a
// lossless Send that waits for room honours its write deadline, on the
// fast path and on the socket path.
func TestHungDaemonIsNoticed(t *testing.T) {
	sock, d := ownDaemon(t)
	dialer := &ipn.Dialer{Socket: sock, RequestTimeout: time.Second}
	path := filepath.Join(tempDir(t), "net")
	mgr, err := dialer.NewSocket(ipn.Hub)
	if err != nil {
		t.Fatal(err)
	}
	defer mgr.Close()
	mgr.SetFlags(ipn.Lossless)
	mgr.SetMsgPoolSize(4)
	if err := mgr.Bind(path); err != nil {
		t.Fatal(err)
	}
	join := func(fast bool, shut ipn.How) *ipn.Socket {
		s, err := dialer.NewSocket(ipn.Any)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		s.SetFastPath(fast)
		s.Shutdown(shut)
		if err := s.Connect(path); err != nil {
			t.Fatal(err)
		}
		return s
	}
	join(true, ipn.ShutWrite) // a receiver that never reads
	senders := map[string]*ipn.Socket{"fast path": join(true, ipn.ShutRead), "socket path": join(false, ipn.ShutRead)}

	d.cmd.Process.Signal(syscall.SIGSTOP)
	t.Cleanup(func() { d.cmd.Process.Signal(syscall.SIGCONT) })
	waitFor(t, 15*time.Second, "the daemon stopped", func() bool { return procState(d.cmd.Process.Pid) == 'T' })

	t0 := time.Now()
	if _, err := mgr.NumNodes(); !errors.Is(err, syscall.ETIMEDOUT) || !strings.Contains(err.Error(), "did not answer") {
		t.Errorf("a control call to a stopped daemon: %v, want ETIMEDOUT saying it did not answer", err)
	}
	if el := time.Since(t0); el > 10*time.Second {
		t.Errorf("the control call took %v with a request timeout of 1s", el)
	}
	// The socket was given up, and says why.
	if _, err := mgr.NumNodes(); !errors.Is(err, syscall.ETIMEDOUT) {
		t.Errorf("the next control call: %v, want the same ETIMEDOUT", err)
	}

	frame := make([]byte, 1400)
	for name, s := range senders {
		s.SetWriteDeadline(time.Now().Add(500 * time.Millisecond))
		done := make(chan error, 1)
		go func() {
			for {
				if err := s.Send(frame); err != nil {
					done <- err
					return
				}
			}
		}()
		select {
		case err := <-done:
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("%s: a Send that waits on a stopped daemon ended with %v, want its deadline", name, err)
			}
		case <-time.After(15 * time.Second):
			t.Fatalf("%s: Send to a stopped daemon ignored its write deadline", name)
		}
	}
}

// procState returns the state letter of process pid (R, S, T...), or 0.
func procState(pid int) byte {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// pid (comm) state ...: comm may hold spaces, so look after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return 0
	}
	return b[i+2]
}
