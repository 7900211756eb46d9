package cable_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ipn-project/ipn"
	"github.com/ipn-project/ipn/daemon"
	"github.com/ipn-project/ipn/farend/qemu"
	"github.com/ipn-project/ipn/internal/daemontest"
	"github.com/ipn-project/ipn/policy/loop"
)

// logWatch is a far end's log that a test waits on.
type logWatch struct {
	mu   sync.Mutex
	b    strings.Builder
	grew chan struct{} // closed when the log grows
}

func (l *logWatch) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.grew != nil {
		close(l.grew)
		l.grew = nil
	}
	return l.b.Write(p)
}

// wait waits until the log holds s.
func (l *logWatch) wait(t *testing.T, s string) {
	t.Helper()
	timeout := time.NewTimer(wait)
	defer timeout.Stop()
	for {
		l.mu.Lock()
		text := l.b.String()
		if l.grew == nil {
			l.grew = make(chan struct{})
		}
		grew := l.grew
		l.mu.Unlock()
		if strings.Contains(text, s) {
			return
		}
		select {
		case <-grew:
		case <-timeout.C:
			t.Fatalf("log lacks %q:\n%s", s, text)
		}
	}
}

// A cable whose far end is a QEMU that never reads (a qemu-stream:// far
// end, QEMU connected) does not hold up a lossless network: the cable
// drops the frames QEMU does not take, and counts them, and the network's
// other members go on receiving all that is sent.
func TestQEMUStreamThatDoesNotReadDoesNotStallLosslessNetwork(t *testing.T) {
	daemontest.Start(t, daemon.Config{})
	dir := t.TempDir()
	path := filepath.Join(dir, "lossless")
	mgr, err := ipn.NewSocket(ipn.Any)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mgr.Close() })
	mgr.SetFlags(ipn.Lossless)
	mgr.SetMsgPoolSize(8)
	if err := mgr.Bind(path); err != nil {
		t.Fatal(err)
	}
	sender := join(t, path, false)
	receiver := join(t, path, false)
	near := join(t, path, true)

	log := &logWatch{}
	far, err := qemu.Listen(filepath.Join(dir, "vm.sock"), 0, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := run(t, ctx, near, far)
	defer func() {
		cancel()
		result(t, done)
	}()
	stuck, err := net.Dial("unix", filepath.Join(dir, "vm.sock")) // connects, never reads
	if err != nil {
		t.Fatal(err)
	}
	defer stuck.Close()
	log.wait(t, "(connection 1)")

	// 3000 frames of 1000 bytes: far more than QEMU's socket holds.
	const n = 3000
	got := make(chan error, 1)
	go func() {
		buf := make([]byte, 65536)
		receiver.SetReadDeadline(time.Now().Add(4 * wait))
		for i := 0; i < n; {
			k, flags, err := receiver.Recv(buf)
			if err != nil {
				got <- err
				return
			}
			if flags&ipn.MsgOOB != 0 || loop.IsProbe(buf[:k]) {
				continue
			}
			if k != 1000 || binary.BigEndian.Uint32(buf) != uint32(i) {
				got <- fmt.Errorf("message %d: %d bytes, number %d; want 1000 bytes, number %d (none lost, in order)", i, k, binary.BigEndian.Uint32(buf), i)
				return
			}
			i++
		}
		got <- nil
	}()
	sender.SetWriteDeadline(time.Now().Add(4 * wait))
	frame := make([]byte, 1000)
	for i := range n {
		binary.BigEndian.PutUint32(frame, uint32(i))
		if err := sender.Send(frame); err != nil {
			t.Fatalf("send %d of %d into the lossless network: %v (held up by the cable to a QEMU that does not read?)", i, n, err)
		}
	}
	if err := <-got; err != nil {
		t.Fatalf("the other member: %v", err)
	}
	if st := far.Stats(); st.Unsent == 0 || st.Conns != 1 {
		t.Fatalf("far end's stats %+v: want frames for QEMU dropped, on its one connection", st)
	}
	log.wait(t, "QEMU does not read: frames for it are dropped until it takes them again")
}
