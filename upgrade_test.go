package ipn_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
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

// The tests of this file upgrade a daemon under load: ipn daemon
// --takeover, run as a process of its own, takes everything from the
// daemon serving the socket, which exits; members notice nothing.

// takeoverDaemon runs "ipn daemon -f --takeover" on sock and waits until
// old, the daemon it replaces, has exited with status 0.
func takeoverDaemon(t *testing.T, sock string, old *proc) *proc {
	t.Helper()
	d := start(t, nil, nil, ipnCommand(t), "daemon", "-f", "--takeover", "--socket", sock)
	if err := old.wait(15 * time.Second); err != nil {
		t.Fatalf("the old daemon, taken over: %v\nits log:\n%s\nthe new one's:\n%s", err, old.stderr(), d.stderr())
	}
	select {
	case <-d.done:
		t.Fatalf("the new daemon exited: %v\n%s", d.err, d.stderr())
	default:
	}
	return d
}

// The messages of a streamer: a broadcast Ethernet frame of streamLen
// bytes from a MAC of the streamer's own (so that a switch floods it),
// its payload the streamer's id and the message's sequence number.
const (
	streamLen = 64
	streamID  = 14 // offset of the id; the sequence number follows
)

// streamer sends numbered messages as fast as the network takes them,
// until stop.
type streamer struct {
	id   byte
	sent atomic.Uint64
	err  error
	done chan struct{}
}

func stream(s *ipn.Socket, id byte, stop <-chan struct{}) *streamer {
	st := &streamer{id: id, done: make(chan struct{})}
	go func() {
		defer close(st.done)
		msg := make([]byte, streamLen)
		copy(msg, ethFrame([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, macOf(id), ""))
		msg[12], msg[13] = 0x88, 0xb5 // an EtherType for experiments
		msg[streamID] = id
		for i := uint64(0); ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			binary.LittleEndian.PutUint64(msg[streamID+1:], i)
			if err := s.Send(msg); err != nil {
				st.err = err
				return
			}
			st.sent.Store(i + 1)
		}
	}()
	return st
}

// checker receives the streams on s: it counts each sender's messages,
// the ones skipped (gaps), and the longest wait between two, and notes
// the first that came twice or out of order.
type checker struct {
	mu     sync.Mutex
	next   map[byte]uint64
	gaps   uint64 // messages skipped
	bad    error  // a message repeated or out of order
	last   time.Time
	maxGap time.Duration
}

func check(s *ipn.Socket) *checker {
	c := &checker{next: map[byte]uint64{}}
	go func() {
		buf := make([]byte, 2048)
		for {
			n, _, err := s.Recv(buf)
			if err != nil {
				return
			}
			if n != streamLen {
				continue // a loop probe
			}
			id, seq := buf[streamID], binary.LittleEndian.Uint64(buf[streamID+1:])
			now := time.Now()
			c.mu.Lock()
			if !c.last.IsZero() && now.Sub(c.last) > c.maxGap {
				c.maxGap = now.Sub(c.last)
			}
			c.last = now
			switch want := c.next[id]; {
			case seq < want && c.bad == nil:
				c.bad = fmt.Errorf("from sender %d: message %d after %d: repeated or out of order", id, seq, want-1)
			case seq > want:
				c.gaps += seq - want
			}
			c.next[id] = max(c.next[id], seq+1)
			c.mu.Unlock()
		}
	}()
	return c
}

func (c *checker) got(id byte) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.next[id]
}

// err returns the first message repeated or out of order, or nil.
func (c *checker) err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bad
}

var pingRE = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)

// Two upgrades under load: a lossless hub carries two streams at full
// rate, one sent on the fast path and one on a socket, to a receiver on
// each; every receiver gets every message once and in order. On a switch
// network, a tap in a namespace pings another, and Debian's vde_plug
// exchanges frames with a member, across both upgrades.
func TestUpgradeUnderLoad(t *testing.T) {
	netnsNeed(t, "ping", "vde_plug")
	sock, d1 := ownDaemon(t)
	dial := &ipn.Dialer{Socket: sock}
	env := []string{"IPN_SOCKET=" + sock}
	dir := tempDir(t)

	hub := filepath.Join(dir, "hub")
	mgr, err := dial.NewSocket(ipn.Hub)
	if err != nil {
		t.Fatal(err)
	}
	defer mgr.Close()
	mgr.SetFlags(ipn.Lossless)
	mgr.SetMsgPoolSize(256)
	if err := mgr.Bind(hub); err != nil {
		t.Fatal(err)
	}
	joinHub := func(fast bool, how ipn.How) *ipn.Socket {
		s, err := dial.NewSocket(ipn.Any)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		s.SetFastPath(fast)
		if err := s.Connect(hub); err != nil {
			t.Fatal(err)
		}
		if err := s.Shutdown(how); err != nil {
			t.Fatal(err)
		}
		if s.FastPath() != fast {
			t.Fatalf("fast path %v, want %v", s.FastPath(), fast)
		}
		return s
	}
	fastRecv, sockRecv := check(joinHub(true, ipn.ShutWrite)), check(joinHub(false, ipn.ShutWrite))
	stop := make(chan struct{})
	senders := []*streamer{stream(joinHub(true, ipn.ShutRead), 1, stop), stream(joinHub(false, ipn.ShutRead), 2, stop)}

	// A lossless switch carries a third stream, fast path to socket.
	lsw := filepath.Join(dir, "lossless-switch")
	bindVia(t, dial, ipn.VDESwitch, lsw, func(s *ipn.Socket) { s.SetFlags(ipn.Lossless) }, false)
	joinSwitch := func(fast bool, how ipn.How) *ipn.Socket {
		s := memberVia(t, dial, lsw, func(s *ipn.Socket) { s.SetFastPath(fast) })
		if err := s.Shutdown(how); err != nil {
			t.Fatal(err)
		}
		return s
	}
	swRecv := check(joinSwitch(false, ipn.ShutWrite))
	senders = append(senders, stream(joinSwitch(true, ipn.ShutRead), 3, stop))

	// The switch: two taps in two namespaces, and a VDE client.
	sw := filepath.Join(dir, "switch")
	bindVia(t, dial, ipn.VDESwitch, sw, nil, false)
	ns1, ns2 := netnsAdd(t, "upg1"), netnsAdd(t, "upg2")
	tap1, tap2 := devName("ua"), devName("ub")
	for i, x := range [][2]string{{ns1, tap1}, {ns2, tap2}} {
		p := start(t, nil, env, "ip", "netns", "exec", x[0], ipnCommand(t), "plug", sw, "tap://"+x[1])
		waitFor(t, waitProcs, "tap "+x[1], func() bool {
			select {
			case <-p.done:
				t.Fatalf("ipn plug tap://%s: %v\n%s", x[1], p.err, p.stderr())
			default:
			}
			_, err := exec.Command("ip", "-n", x[0], "link", "show", x[1]).CombinedOutput()
			return err == nil && portsVia(env, ipnCommand(t), sw) == i+1
		})
		netnsRun(t, x[0], fmt.Sprintf("addr add 10.78.0.%d/24 dev %s", i+1, x[1]), "link set "+x[1]+" up")
	}
	nsPing(t, ns1, "10.78.0.2")
	ping := start(t, nil, nil, "ip", "netns", "exec", ns1, "ping", "-i", "0.01", "-c", "300", "-W", "2", "10.78.0.2")
	vdeDir := filepath.Join(dir, "switch.vde")
	vs := start(t, nil, env, ipnCommand(t), "vde", sw, vdeDir)
	waitFor(t, waitProcs, "ipn vde serving", func() bool { return strings.Contains(vs.stderr(), "serves VDE clients") })
	vp := startVdePlug(t, ns1, "vde://"+vdeDir)
	member := memberVia(t, dial, sw, nil)
	exchange := func(when string) {
		t.Helper()
		f := ethFrame([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, macOf(0x41), "from vde_plug "+when)
		vp.send(t, f)
		recvUntilPayload(t, member, "from vde_plug "+when)
		g := ethFrame(macOf(0x41), macOf(0x42), "to vde_plug "+when)
		if err := member.Send(g); err != nil {
			t.Fatal(err)
		}
		deadline := time.After(waitProcs)
		for {
			select {
			case f, ok := <-vp.frames:
				if !ok {
					t.Fatal("vde_plug's output ended")
				}
				if string(f) != string(g) {
					continue // the namespaces' own multicast
				}
			case <-deadline:
				t.Fatalf("vde_plug did not get the frame %s", when)
			}
			break
		}
	}
	exchange("before")

	progress := func(what string) {
		t.Helper()
		a, b, c := fastRecv.got(1), sockRecv.got(2), swRecv.got(3)
		waitFor(t, waitProcs, what, func() bool {
			return fastRecv.got(1) > a+1000 && sockRecv.got(2) > b+1000 && swRecv.got(3) > c+1000
		})
	}
	progress("the streams flowing")
	d2 := takeoverDaemon(t, sock, d1)
	progress("the streams after the first upgrade")
	exchange("after one upgrade")
	d3 := takeoverDaemon(t, sock, d2)
	progress("the streams after the second upgrade")
	exchange("after two upgrades")
	close(stop)
	for _, s := range senders {
		<-s.done
		if s.err != nil {
			t.Fatalf("sender %d: %v", s.id, s.err)
		}
	}
	waitFor(t, waitProcs, "every message on the switch", func() bool { return swRecv.got(3) == senders[2].sent.Load() })
	for _, c := range []*checker{fastRecv, sockRecv, swRecv} {
		waitFor(t, waitProcs, "every message", func() bool {
			return c == swRecv || c.got(1) == senders[0].sent.Load() && c.got(2) == senders[1].sent.Load()
		})
		if err := c.err(); err != nil {
			t.Fatal(err)
		}
		if c.gaps != 0 {
			t.Fatalf("%d messages lost across the upgrades", c.gaps)
		}
	}
	t.Logf("sent %d (fast path) and %d (socket) messages on the hub, %d on the switch, across two upgrades; each receiver got every one once, in order; longest pause %v (fast path), %v (socket), %v (switch)",
		senders[0].sent.Load(), senders[1].sent.Load(), senders[2].sent.Load(),
		fastRecv.maxGap.Round(time.Microsecond), sockRecv.maxGap.Round(time.Microsecond), swRecv.maxGap.Round(time.Microsecond))
	for _, d := range []*proc{d1, d2} {
		for _, l := range strings.Split(d.stderr(), "\n") {
			if strings.Contains(l, "handed over") || strings.Contains(l, "took over") {
				t.Log(l)
			}
		}
	}

	if err := ping.wait(30 * time.Second); err != nil {
		t.Logf("ping: %v", err)
	}
	var out string
	for l := range ping.lines {
		out += l + "\n"
	}
	m := pingRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("ping said:\n%s", out)
	}
	sent, got := atoi(m[1]), atoi(m[2])
	t.Logf("tap pings across the upgrades: %d sent, %d answered", sent, got)
	if got < sent-1 {
		t.Errorf("tap pings across two upgrades: %d of %d answered", got, sent)
	}
	if err := mgr.SetDescription("still managed"); err != nil {
		t.Errorf("the manager's socket after the upgrades: %v", err)
	}
	_ = d3
}

func atoi(s string) int { n, _ := strconv.Atoi(s); return n }

// recvUntilPayload receives on s until a frame ends with payload.
func recvUntilPayload(t *testing.T, s *ipn.Socket, payload string) {
	t.Helper()
	buf := make([]byte, 2048)
	s.SetReadDeadline(time.Now().Add(waitProcs))
	defer s.SetReadDeadline(time.Time{})
	for {
		n, _, err := s.Recv(buf)
		if err != nil {
			t.Fatalf("waiting for %q: %v", payload, err)
		}
		if n >= len(payload) && string(buf[n-len(payload):n]) == payload {
			return
		}
	}
}

// protocol1Commit is a commit of this repository from before protocol 2
// and takeovers: a daemon of an older build, for TestOlderDaemon.
const protocol1Commit = "ae1a9e5"

// A daemon of an older build (protocol 1, before takeovers, built from
// this repository's history) is noticed: the commands say so and how to
// replace it, and work with it; ipn daemon --takeover refuses to touch it
// and says why, and it serves on.
func TestOlderDaemon(t *testing.T) {
	requireRoot(t)
	if err := exec.Command("git", "cat-file", "-e", protocol1Commit+"^{commit}").Run(); err != nil {
		t.Skipf("this clone lacks commit %s, the older build: %v", protocol1Commit, err)
	}
	src := filepath.Join(tempDir(t), "old")
	build := exec.Command("sh", "-c", "mkdir -p "+src+" && git archive "+protocol1Commit+" | tar -x -C "+src+" && cd "+src+" && go build -o ipn-old ./cmd/ipn")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the older ipn: %v\n%s", err, out)
	}
	sock := filepath.Join(tempDir(t), "daemon", "ipn.sock")
	old := start(t, nil, nil, filepath.Join(src, "ipn-old"), "daemon", "-f", "--socket", sock)
	env := []string{"IPN_SOCKET=" + sock}
	waitFor(t, waitProcs, "the older daemon", func() bool { return sockReady(sock) })
	path := filepath.Join(tempDir(t), "net")
	recv := start(t, nil, env, ipnCommand(t), "cat", "--bind", "--recv-only", path)
	waitFor(t, waitProcs, "the notice", func() bool { return strings.Contains(recv.stderr(), "older build (protocol 1") })
	if !strings.Contains(recv.stderr(), "predates takeovers") {
		t.Errorf("the notice does not say how to replace the daemon: %q", recv.stderr())
	}
	waitFor(t, waitProcs, "the receiver", func() bool { return portsVia(env, ipnCommand(t), path) == 1 })
	send := start(t, nil, env, ipnCommand(t), "cat", "--send-only", path)
	fmt.Fprintln(send.stdin, "through the older daemon")
	if got := recv.line(waitProcs); got != "through the older daemon" {
		t.Fatalf("received %q", got)
	}
	// A network over its MTU range (64 KiB then; 64 MiB since protocol
	// 4, its data sockets carrying fragments) is refused, saying the
	// range.
	if out, err := runAs(t, nil, env, ipnCommand(t), "cat", "--bind", "--send-only", "--mtu", fmt.Sprint(ipn.MaxMTU), filepath.Join(tempDir(t), "huge")); err == nil ||
		!strings.Contains(out, "mtu 67108864: want 1..65535") {
		t.Errorf("a network of MTU %d on the older daemon: %v, %q; want refused, naming its range", ipn.MaxMTU, err, out)
	}

	tk := exec.Command(ipnCommand(t), "daemon", "-f", "--takeover", "--socket", sock)
	out, err := tk.CombinedOutput()
	if exitStatus(err) != 1 || !strings.Contains(string(out), "offers no takeover") {
		t.Errorf("ipn daemon --takeover of an older daemon: %v\n%s\nwant status 1, saying it offers no takeover", err, out)
	}
	select {
	case <-old.done:
		t.Fatalf("the older daemon exited: %v", old.err)
	default:
	}
	fmt.Fprintln(send.stdin, "still served")
	if got := recv.line(waitProcs); got != "still served" {
		t.Fatalf("after the refused takeover, received %q", got)
	}
}

// ipn daemon --takeover without -f takes over in the background, with the
// options it is given (as a service's reload runs it), and returns once
// the new daemon serves; the old one exits, the members go on.
func TestTakeoverInBackground(t *testing.T) {
	requireRoot(t)
	sock, old := ownDaemon(t)
	env := []string{"IPN_SOCKET=" + sock}
	path := filepath.Join(tempDir(t), "net")
	recv := start(t, nil, env, ipnCommand(t), "cat", "--bind", "--recv-only", path)
	waitFor(t, waitProcs, "the receiver", func() bool { return portsVia(env, ipnCommand(t), path) == 1 })
	out, err := exec.Command(ipnCommand(t), "daemon", "--takeover", "--socket", sock, "--hello-timeout", "1s").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "serving") {
		t.Fatalf("ipn daemon --takeover: %v\n%s", err, out)
	}
	if err := old.wait(waitProcs); err != nil {
		t.Fatalf("the old daemon: %v\n%s", err, old.stderr())
	}
	send := start(t, nil, env, ipnCommand(t), "cat", "--send-only", path)
	fmt.Fprintln(send.stdin, "after the takeover")
	if got := recv.line(waitProcs); got != "after the takeover" {
		t.Fatalf("received %q", got)
	}
	// The new daemon has the option it was given: a silent connection
	// is dropped after 1 s, not the default 10.
	c, err := net.Dial("unixpacket", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	t0 := time.Now()
	c.SetReadDeadline(t0.Add(8 * time.Second))
	if _, err := c.Read(make([]byte, 64)); err == nil || time.Since(t0) > 5*time.Second {
		t.Errorf("a silent connection after %v: %v; want it dropped after 1 s (--hello-timeout)", time.Since(t0).Round(time.Millisecond), err)
	}
	// The background daemon is no test process's: stop it, found by its
	// log (the socket's credentials name the process that listened first).
	log, _ := os.ReadFile(sock + ".log")
	m := regexp.MustCompile(`msg=serving .* pid=(\d+)`).FindAllSubmatch(log, -1)
	if len(m) == 0 {
		t.Fatalf("no daemon serving in the log:\n%s", log)
	}
	syscall.Kill(atoi(string(m[len(m)-1][1])), syscall.SIGTERM)
	waitFor(t, waitProcs, "the background daemon to stop", func() bool { return !sockReady(sock) })
}

// A takeover of a lossy hub of 8 MiB messages: its members on the socket
// path (fragments) and on the fast path (chunks in, the shared log out)
// carry big messages after it as before.
func TestTakeoverBigMessages(t *testing.T) {
	requireRoot(t)
	sock, d1 := ownDaemon(t)
	dial := &ipn.Dialer{Socket: sock}
	const mtu = 8 << 20
	path := filepath.Join(tempDir(t), "big")
	a := bindVia(t, dial, ipn.Hub, path, func(s *ipn.Socket) {
		if err := s.SetMTU(mtu); err != nil {
			t.Fatal(err)
		}
	}, true)
	fast := memberVia(t, dial, path, nil)
	slow := memberVia(t, dial, path, func(s *ipn.Socket) { s.SetFastPath(false) })
	if !a.FastPath() || !fast.FastPath() || slow.FastPath() {
		t.Fatalf("fast paths: %v %v %v", a.FastPath(), fast.FastPath(), slow.FastPath())
	}
	buf := make([]byte, mtu)
	exchange := func(what string, i int) {
		t.Helper()
		for _, from := range []*ipn.Socket{a, fast, slow} {
			msg := bytes.Repeat([]byte{byte(i)}, mtu-i)
			from.SetWriteDeadline(time.Now().Add(20 * time.Second))
			if err := from.Send(msg); err != nil {
				t.Fatalf("%s: send: %v", what, err)
			}
			for _, r := range []*ipn.Socket{a, fast, slow} {
				if r == from {
					continue
				}
				r.SetReadDeadline(time.Now().Add(20 * time.Second))
				if n, _, err := r.Recv(buf); err != nil || n != len(msg) || !bytes.Equal(buf[:n], msg) {
					t.Fatalf("%s: %d bytes, %v; want %d", what, n, err, len(msg))
				}
			}
			i++
		}
	}
	exchange("before", 1)
	takeoverDaemon(t, sock, d1)
	exchange("after the takeover", 5)
}
