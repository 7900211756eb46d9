package ipn_test

import (
	"encoding/binary"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ipn-project/ipn"
)

// killDaemon SIGKILLs the daemon d and waits until it is gone.
func killDaemon(t *testing.T, d *proc) {
	t.Helper()
	d.cmd.Process.Signal(syscall.SIGKILL)
	d.wait(15 * time.Second)
}

// rejoins records a socket's re-join steps.
type rejoins struct {
	mu    sync.Mutex
	steps []ipn.Rejoin
}

func (r *rejoins) add(j ipn.Rejoin) {
	r.mu.Lock()
	r.steps = append(r.steps, j)
	r.mu.Unlock()
}

// done returns the steps that say the socket re-joined.
func (r *rejoins) done() []ipn.Rejoin {
	r.mu.Lock()
	defer r.mu.Unlock()
	var d []ipn.Rejoin
	for _, j := range r.steps {
		if j.Rejoined {
			d = append(d, j)
		}
	}
	return d
}

// A daemon SIGKILLed under a lossless hub stream (1 -> 1): with SetRejoin
// the binder makes the network again with its shape and its port, the
// sender re-joins with its port, the stream resumes within a second of a
// new daemon, and the count of lost messages the sender reports is the gap
// the receiver saw (up to one batch more, the documented over-count: the
// messages written to the receiver in the instant before the daemon
// counted them), on the fast path and on the socket path.
func TestRejoinAfterDaemonCrash(t *testing.T) {
	for _, fast := range []bool{true, false} {
		name := "socket path"
		if fast {
			name = "fast path"
		}
		t.Run(name, func(t *testing.T) { testRejoin(t, fast) })
	}
}

func testRejoin(t *testing.T, fast bool) {
	sock := filepath.Join(tempDir(t), "daemon", "ipn.sock")
	d := daemonAt(t, sock)
	dialer := &ipn.Dialer{Socket: sock, RequestTimeout: 5 * time.Second}
	path := filepath.Join(tempDir(t), "net")
	newSock := func(proto ipn.Protocol, rj *rejoins) *ipn.Socket {
		s, err := dialer.NewSocket(proto)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		s.SetFastPath(fast)
		s.OnRejoin(rj.add)
		if err := s.SetRejoin(true); err != nil {
			t.Fatal(err)
		}
		return s
	}
	// The receiver is the binder, on a port it asked for.
	var rxRj, txRj rejoins
	rx := newSock(ipn.Hub, &rxRj)
	for _, err := range []error{rx.SetFlags(ipn.Lossless), rx.SetMTU(1000), rx.SetNumNodes(9),
		rx.SetMsgPoolSize(128), rx.SetDescription("receiver"), rx.SetPort(5), rx.Shutdown(ipn.ShutWrite)} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := rx.Bind(path); err != nil {
		t.Fatal(err)
	}
	if err := rx.Connect(""); err != nil {
		t.Fatal(err)
	}
	tx := newSock(ipn.Any, &txRj)
	if err := tx.Shutdown(ipn.ShutRead); err != nil {
		t.Fatal(err)
	}
	if err := tx.Connect(path); err != nil {
		t.Fatal(err)
	}
	if tx.FastPath() != fast || rx.FastPath() != fast {
		t.Fatalf("fast path: sender %v, receiver %v; want %v", tx.FastPath(), rx.FastPath(), fast)
	}
	txPort, rxPort := tx.Port(), rx.Port()

	// The receiver checks the order and counts the gaps.
	// Messages received, missing sequence numbers below the boundary
	// (sent to the old daemon) and from it on (sent to the new one before
	// the receiver was back: a hub delivers to those there), last seen + 1.
	var got, gap, gapNew, last atomic.Uint64
	var firstAfter atomic.Int64 // when the first message after the crash came (unix ns)
	var orderErr atomic.Value
	var gapsMu sync.Mutex
	var gaps []string          // the gaps seen: first missing + how many
	var boundary atomic.Uint64 // messages from this one on went to the new daemon
	boundary.Store(1 << 62)
	var gapBefore []uint64 // gaps at seq: [start, count] pairs

	recvDone := make(chan error, 1)
	go func() {
		ms := make([]ipn.Message, 64)
		for i := range ms {
			ms[i].Buf = make([]byte, 1000)
		}
		next := uint64(0)
		for {
			n, err := rx.RecvBatch(ms)
			if err != nil {
				recvDone <- err
				return
			}
			for _, m := range ms[:n] {
				seq := binary.BigEndian.Uint64(m.Buf[:8])
				switch {
				case seq < next:
					orderErr.CompareAndSwap(nil, "message "+strconv.FormatUint(seq, 10)+" after "+strconv.FormatUint(next-1, 10))
				case seq > next:
					gapsMu.Lock()
					gaps = append(gaps, strconv.FormatUint(next, 10)+"+"+strconv.FormatUint(seq-next, 10))
					gapBefore = append(gapBefore, next, seq-next)
					gapsMu.Unlock()
				}
				next = seq + 1
				if seq >= boundary.Load() {
					firstAfter.CompareAndSwap(0, time.Now().UnixNano())
				}
			}
			got.Add(uint64(n))
			last.Store(next)
		}
	}()
	// The sender streams numbered messages in batches.
	const batch = 16
	var sent atomic.Uint64
	stop := make(chan struct{})
	sendDone := make(chan error, 1)
	go func() {
		msgs := make([][]byte, batch)
		for i := range msgs {
			msgs[i] = make([]byte, 64)
		}
		for seq := uint64(0); ; {
			select {
			case <-stop:
				sendDone <- nil
				return
			default:
			}
			for i := range msgs {
				binary.BigEndian.PutUint64(msgs[i], seq+uint64(i))
			}
			n, err := tx.SendBatch(msgs)
			seq += uint64(n)
			sent.Store(seq)
			if err != nil {
				sendDone <- err
				return
			}
		}
	}()
	waitFor(t, 15*time.Second, "the stream", func() bool { return got.Load() > 20000 })

	killDaemon(t, d)
	waitFor(t, 15*time.Second, "both sockets to see the daemon gone", func() bool {
		rxRj.mu.Lock()
		n := len(rxRj.steps)
		rxRj.mu.Unlock()
		txRj.mu.Lock()
		defer txRj.mu.Unlock()
		return n > 0 && len(txRj.steps) > 0
	})
	select {
	case err := <-sendDone:
		t.Fatalf("the sender's SendBatch failed while the daemon was away: %v", err)
	case err := <-recvDone:
		t.Fatalf("the receiver's RecvBatch failed while the daemon was away: %v", err)
	default:
	}
	if rx.Err() != nil || tx.Err() != nil {
		t.Fatalf("Err while re-joining: receiver %v, sender %v; want nil", rx.Err(), tx.Err())
	}
	before := got.Load()

	// What the old data path accepted, exactly; from there on, to the new.
	var oldSent uint64
	txRj.mu.Lock()
	oldSent = txRj.steps[0].Sent
	txRj.mu.Unlock()
	boundary.Store(oldSent)
	daemonAt(t, sock)
	up := time.Now()
	waitFor(t, 15*time.Second, "the stream to resume", func() bool { return firstAfter.Load() != 0 })
	resumed := time.Unix(0, firstAfter.Load()).Sub(up)
	waitFor(t, 15*time.Second, "the stream to go on", func() bool { return got.Load() > before+20000 })
	close(stop)
	if err := <-sendDone; err != nil {
		t.Fatalf("sender: %v", err)
	}
	total := sent.Load()
	waitFor(t, 15*time.Second, "the receiver to get the last message", func() bool { return last.Load() == total })
	if e := orderErr.Load(); e != nil {
		t.Errorf("the receiver saw %s: out of order or twice", e)
	}

	txDone, rxDone := txRj.done(), rxRj.done()
	if len(txDone) != 1 || len(rxDone) != 1 {
		t.Fatalf("re-joins: sender %d, receiver %d; want 1 each", len(txDone), len(rxDone))
	}
	lost, known := tx.Lost()
	if !known || lost != txDone[0].Lost || !txDone[0].LostKnown {
		t.Errorf("sender: Lost() = %d, %v; its re-join said %d, %v", lost, known, txDone[0].Lost, txDone[0].LostKnown)
	}
	gapsMu.Lock()
	for i := 0; i < len(gapBefore); i += 2 {
		from, n := gapBefore[i], gapBefore[i+1]
		old := min(n, max(oldSent, from)-from)
		gap.Add(old)
		gapNew.Add(n - old)
	}
	gapsMu.Unlock()
	g := gap.Load()
	t.Logf("%s: %d messages sent (%d to the old daemon), %d received; gap %d, lost reported %d (%d more missed while the receiver re-joined); stream resumed %v after the new daemon was up (sender re-joined in %v, receiver in %v)",
		map[bool]string{true: "fast path", false: "socket path"}[fast], total, oldSent, got.Load(), g, lost, gapNew.Load(), resumed.Round(time.Millisecond),
		txDone[0].Took.Round(time.Millisecond), rxDone[0].Took.Round(time.Millisecond))
	if const64 := uint64(64); lost < g || lost > g+const64 {
		gapsMu.Lock()
		t.Errorf("lost reported %d, gap seen %d (gaps %v): want gap <= lost <= gap + 64 (one batch)", lost, g, gaps)
		gapsMu.Unlock()
	}
	if got.Load()+g+gapNew.Load() != total {
		t.Errorf("received %d + gaps %d, %d != sent %d", got.Load(), g, gapNew.Load(), total)
	}
	if resumed > time.Second {
		t.Errorf("the stream resumed %v after the new daemon was up; want within 1s", resumed)
	}
	if rx.Port() != rxPort || tx.Port() != txPort {
		t.Errorf("ports after the re-join: receiver %d (was %d), sender %d (was %d)", rx.Port(), rxPort, tx.Port(), txPort)
	}
	if rxDone[0].Port != rxPort || txDone[0].Port != txPort {
		t.Errorf("re-join steps say ports %d, %d; want %d, %d", rxDone[0].Port, txDone[0].Port, rxPort, txPort)
	}
	// The network made again has the binder's shape.
	for name, c := range map[string]struct {
		get  func() (int, error)
		want int
	}{
		"MTU":       {rx.MTU, 1000},
		"ports":     {rx.NumNodes, 9},
		"pool size": {rx.MsgPoolSize, 128},
	} {
		if v, err := c.get(); err != nil || v != c.want {
			t.Errorf("%s of the network made again: %d, %v; want %d", name, v, err, c.want)
		}
	}
	if f, err := rx.NetFlags(); err != nil || f&ipn.Lossless == 0 {
		t.Errorf("flags of the network made again: %v, %v; want lossless", f, err)
	}
	if !rx.CanRead() || rx.CanWrite() || tx.CanRead() || !tx.CanWrite() {
		t.Errorf("sides after the re-join: receiver r %v w %v, sender r %v w %v; want the shutdowns kept", rx.CanRead(), rx.CanWrite(), tx.CanRead(), tx.CanWrite())
	}
	if tx.FastPath() != fast || rx.FastPath() != fast {
		t.Errorf("fast path after the re-join: sender %v, receiver %v; want %v", tx.FastPath(), rx.FastPath(), fast)
	}
}

// Close stops a socket that re-joins while no daemon answers, and its Send
// and Recv waiting for the re-join return net.ErrClosed; a deadline ends
// such a wait with os.ErrDeadlineExceeded.
func TestRejoinWaitsHonourDeadlineAndClose(t *testing.T) {
	sock := filepath.Join(tempDir(t), "daemon", "ipn.sock")
	d := daemonAt(t, sock)
	dialer := &ipn.Dialer{Socket: sock}
	path := filepath.Join(tempDir(t), "net")
	s, err := dialer.NewSocket(ipn.Hub)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.SetRejoin(true); err != nil {
		t.Fatal(err)
	}
	if err := s.Bind(path); err != nil {
		t.Fatal(err)
	}
	if err := s.Connect(""); err != nil {
		t.Fatal(err)
	}
	if err := s.SetRejoin(false); !errors.Is(err, syscall.EISCONN) {
		t.Errorf("SetRejoin after Connect: %v, want EISCONN", err)
	}
	killDaemon(t, d)
	s.SetDeadline(time.Now().Add(300 * time.Millisecond))
	buf := make([]byte, 100)
	if _, _, err := s.Recv(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("Recv while re-joining, past its deadline: %v, want os.ErrDeadlineExceeded", err)
	}
	if err := s.Send([]byte("x")); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("Send while re-joining, past its deadline: %v, want os.ErrDeadlineExceeded", err)
	}
	s.SetDeadline(time.Time{})
	errs := make(chan error, 2)
	go func() { _, _, err := s.Recv(buf); errs <- err }()
	go func() { errs <- s.Send([]byte("x")) }()
	select {
	case err := <-errs:
		t.Fatalf("a wait for the re-join ended by itself, with no daemon: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	closed := make(chan struct{})
	go func() { s.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close of a socket re-joining did not return")
	}
	for range 2 {
		if err := <-errs; !errors.Is(err, net.ErrClosed) {
			t.Errorf("Send or Recv waiting for the re-join, after Close: %v, want net.ErrClosed", err)
		}
	}
	if !errors.Is(s.Err(), net.ErrClosed) {
		t.Errorf("Err after Close: %v", s.Err())
	}
}

// ipn cat re-joins by default: killed under it, a daemon started again on
// the same socket gets the network back from the binding cat, the other
// cats say they re-joined, and the lines flow again.
func TestCatRejoins(t *testing.T) {
	ipnc := ipnCommand(t)
	sock := filepath.Join(tempDir(t), "daemon", "ipn.sock")
	d := daemonAt(t, sock)
	env := []string{"IPN_SOCKET=" + sock, "IPN_NO_AUTOSTART=1"}
	path := filepath.Join(tempDir(t), "net")
	rx := start(t, nil, env, ipnc, "cat", "--bind", "--recv-only", "--mtu", "1200", path)
	waitFor(t, 15*time.Second, "the binder", func() bool { return portsVia(env, ipnc, path) == 1 })
	tx := start(t, nil, env, ipnc, "cat", "--send-only", path)
	waitFor(t, 15*time.Second, "the sender", func() bool { return portsVia(env, ipnc, path) == 2 })
	tx.stdin.Write([]byte("before\n"))
	if l := rx.line(15 * time.Second); l != "before" {
		t.Fatalf("receiver printed %q, want before", l)
	}
	killDaemon(t, d)
	daemonAt(t, sock)
	re := regexp.MustCompile(`ipn cat: ` + regexp.QuoteMeta(path) + `: the daemon at \S+ restarted; rejoined as port \d+; (no message sent before was lost|\d+ messages? sent before (was|were) lost)`)
	for name, p := range map[string]*proc{"receiver": rx, "sender": tx} {
		waitFor(t, 15*time.Second, "the "+name+" saying it re-joined", func() bool {
			select {
			case <-p.done:
				t.Fatalf("the %s exited: %v: %s", name, p.err, p.stderr())
			default:
			}
			return re.MatchString(p.stderr())
		})
		t.Logf("%s: %s", name, strings.TrimSpace(re.FindString(p.stderr())))
	}
	// A line sent now arrives (the first ones may go before the receiver
	// is back: lines go on until one arrives).
	deadline := time.Now().Add(15 * time.Second)
	for i := 0; ; i++ {
		tx.stdin.Write([]byte("after " + strconv.Itoa(i) + "\n"))
		select {
		case l := <-rx.lines:
			if !strings.HasPrefix(l, "after ") {
				t.Fatalf("receiver printed %q after the re-join", l)
			}
			if portsVia(env, ipnc, path) != 2 {
				t.Errorf("after the re-join the network has %d ports, want 2", portsVia(env, ipnc, path))
			}
			if info := netInfoVia(env, ipnc, path); !strings.Contains(info, `"mtu":1200`) {
				t.Errorf("the network made again: %s; want MTU 1200", info)
			}
			return
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no line arrived after the re-join; receiver stderr %q, sender stderr %q", rx.stderr(), tx.stderr())
		}
	}
}

// netInfoVia returns ipn ls --json of path as the daemon env names shows it.
func netInfoVia(env []string, ipnc, path string) string {
	cmd := exec.Command(ipnc, "ls", "--json", path)
	cmd.Env = append(os.Environ(), env...)
	out, _ := cmd.Output()
	return strings.Join(strings.Fields(string(out)), "")
}
