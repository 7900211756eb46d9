package ipn_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn"
	"github.com/ipn-project/ipn/internal/wire"
)

// The seed's first example: every peer binds and connects; each message
// reaches all the other peers and not its sender.
func TestSeedPeerToPeerProcesses(t *testing.T) {
	ipnc := ipnCommand(t)
	path := filepath.Join(tempDir(t), "p2p")
	const n = 4
	var peers []*proc
	for i := 0; i < n; i++ {
		peers = append(peers, start(t, nil, nil, ipnc, "cat", "--bind", path))
	}
	waitFor(t, 15*time.Second, "all peers connected", func() bool { r, _ := readersOf(path); return r == n })
	for i, p := range peers {
		fmt.Fprintf(p.stdin, "from peer %d\n", i)
	}
	t.Cleanup(func() {
		if t.Failed() {
			nets, _ := ipn.List(path)
			t.Logf("network at failure: %+v", nets)
			for i, p := range peers {
				select {
				case <-p.done:
					t.Logf("peer %d (pid %d) exited: %v; stderr: %s", i, p.cmd.Process.Pid, p.err, p.stderr())
				default:
					t.Logf("peer %d (pid %d) running; stderr: %s", i, p.cmd.Process.Pid, p.stderr())
				}
			}
		}
	})
	for i, p := range peers {
		got := map[string]bool{}
		for j := 0; j < n-1; j++ {
			got[p.line(15*time.Second)] = true
		}
		for j := 0; j < n; j++ {
			if want := fmt.Sprintf("from peer %d", j); got[want] != (i != j) {
				t.Errorf("peer %d: has %q = %v, want %v (got %v)", i, want, got[want], i != j, got)
			}
		}
	}
	// Interrupted, every peer leaves cleanly, and the network with them.
	for i, p := range peers {
		if err := stopBy(t, p, syscall.SIGTERM); err != nil {
			t.Errorf("peer %d on SIGTERM: %v: %s", i, err, p.stderr())
		}
	}
	waitFor(t, 15*time.Second, "network removed", func() bool { _, err := os.Lstat(path); return os.IsNotExist(err) })
}

// The seed's second example: one sender; receivers join and leave while
// it streams, each getting every message from when it joined.
func TestSeedOneSenderManyReceiversProcesses(t *testing.T) {
	ipnc := ipnCommand(t)
	path := filepath.Join(tempDir(t), "tv")
	sender := start(t, nil, nil, ipnc, "cat", "--bind", "--send-only", "--lossless", path)
	waitFor(t, 15*time.Second, "network made", func() bool { _, p := readersOf(path); return p == 1 })
	seq := 0
	send := func(count int) (first int) {
		first = seq
		for i := 0; i < count; i++ {
			fmt.Fprintf(sender.stdin, "frame %d\n", seq)
			seq++
		}
		return first
	}
	expectRange := func(r *proc, name string, from, count int) {
		t.Helper()
		for i := from; i < from+count; i++ {
			if got, want := r.line(15*time.Second), fmt.Sprintf("frame %d", i); got != want {
				t.Fatalf("%s: got %q, want %q", name, got, want)
			}
		}
	}
	join := func(wantReaders int) *proc {
		r := start(t, nil, nil, ipnc, "cat", "--recv-only", path)
		waitFor(t, 15*time.Second, "receiver joined", func() bool { n, _ := readersOf(path); return n == wantReaders })
		return r
	}
	r1 := join(1)
	f := send(100)
	expectRange(r1, "r1", f, 100)
	r2 := join(2)
	f = send(100)
	expectRange(r1, "r1", f, 100)
	expectRange(r2, "r2", f, 100)
	if err := stopBy(t, r1, syscall.SIGTERM); err != nil { // leaves mid-stream
		t.Fatalf("r1 on SIGTERM: %v", err)
	}
	waitFor(t, 15*time.Second, "r1 gone", func() bool { n, _ := readersOf(path); return n == 1 })
	f = send(100)
	expectRange(r2, "r2", f, 100)
	r3 := join(2)
	f = send(100)
	expectRange(r2, "r2", f, 100)
	expectRange(r3, "r3", f, 100)
	// End of input ends a send-only cat; the receivers keep the network.
	sender.stdin.Close()
	if err := sender.wait(15 * time.Second); err != nil {
		t.Fatalf("sender: %v: %s", err, sender.stderr())
	}
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("network gone while receivers are connected: %v", err)
	}
}

// rawClient is a connection to the daemon that speaks bytes, not the library.
func rawClient(t *testing.T) *net.UnixConn {
	t.Helper()
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: socket, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip sends pkt with fds and returns the daemon's errno, or an error
// if the daemon closed the connection.
func roundTrip(t *testing.T, c *net.UnixConn, pkt []byte, fds ...int) (syscall.Errno, error) {
	t.Helper()
	if err := wire.Send(c, pkt, fds...); err != nil {
		return 0, err
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 4096)
	reply, rfds, err := wire.Recv(c, buf)
	if err != nil {
		return 0, err
	}
	for _, fd := range rfds {
		unix.Close(fd)
	}
	_, body, err := wire.Split(reply)
	if err != nil {
		t.Fatal(err)
	}
	_, rerr := wire.SplitReply(body)
	if rerr == nil {
		return 0, nil
	}
	var errno syscall.Errno
	if !errors.As(rerr, &errno) {
		t.Fatalf("reply error %v carries no errno", rerr)
	}
	return errno, nil
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

func hello(version, proto uint16) []byte {
	return wire.Packet(wire.OpHello, []byte{byte(version), byte(version >> 8), byte(proto), byte(proto >> 8)})
}

func TestMalformedControlBytes(t *testing.T) {
	path, member := bindNet(t, nil)

	t.Run("short packet closes the connection", func(t *testing.T) {
		c := rawClient(t)
		if _, err := roundTrip(t, c, []byte{1}); !wire.IsEOF(err) {
			t.Fatalf("after a 1-byte packet: %v, want the daemon to close", err)
		}
	})
	t.Run("request before hello", func(t *testing.T) {
		c := rawClient(t)
		if e, err := roundTrip(t, c, wire.Packet(wire.OpGetOpt, wire.U32(wire.OptMTU))); err != nil || e != syscall.EPROTO {
			t.Fatalf("got %v %v, want EPROTO", e, err)
		}
	})
	t.Run("bad version then good", func(t *testing.T) {
		c := rawClient(t)
		if e, err := roundTrip(t, c, hello(9, 0)); err != nil || e != syscall.EPROTONOSUPPORT {
			t.Fatalf("hello v9: %v %v", e, err)
		}
		if e, err := roundTrip(t, c, hello(wire.Version, 0)); err != nil || e != 0 {
			t.Fatalf("hello v1 after: %v %v", e, err)
		}
	})
	c := rawClient(t)
	if e, err := roundTrip(t, c, hello(wire.Version, 0)); err != nil || e != 0 {
		t.Fatalf("hello: %v %v", e, err)
	}
	devnull, _ := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	defer unix.Close(devnull)
	for _, tc := range []struct {
		name string
		pkt  []byte
		fds  []int
		want syscall.Errno
	}{
		{"unknown op", wire.Packet(0x77, []byte("zz")), nil, syscall.EINVAL},
		{"setopt without value", wire.Packet(wire.OpSetOpt, []byte{10, 0}), nil, syscall.EINVAL},
		{"unknown option", wire.Packet(wire.OpSetOpt, wire.U32(999), wire.U32(1)), nil, syscall.ENOPROTOOPT},
		{"mtu out of range", wire.Packet(wire.OpSetOpt, wire.U32(wire.OptMTU), wire.U32(1<<30)), nil, syscall.EINVAL},
		{"bind with no fd", wire.Packet(wire.OpBind, []byte("/x")), nil, syscall.EINVAL},
		{"bind with three fds", wire.Packet(wire.OpBind, []byte("/x")), []int{devnull, devnull, devnull}, syscall.EINVAL},
		{"connect to a non-socket", wire.Packet(wire.OpConnect, []byte("/dev/null")), []int{devnull}, syscall.ECONNREFUSED},
		{"connect with nothing", wire.Packet(wire.OpConnect, nil), nil, syscall.EDESTADDRREQ},
		{"shutdown garbage", wire.Packet(wire.OpShutdown, wire.U32(77)), nil, syscall.EINVAL},
		{"oob when not connected", wire.Packet(wire.OpSendOOB, []byte("x")), nil, syscall.ENOTCONN},
	} {
		if e, err := roundTrip(t, c, tc.pkt, tc.fds...); err != nil || e != tc.want {
			t.Errorf("%s: got %v (%v), want %v", tc.name, e, err, tc.want)
		}
	}
	t.Run("oversized packet closes the connection", func(t *testing.T) {
		c := rawClient(t)
		if _, err := roundTrip(t, c, make([]byte, 200000)); !wire.IsEOF(err) {
			t.Fatalf("after a 200 kB packet: %v, want the daemon to close", err)
		}
	})
	// Everyone else is still served.
	b, err := ipn.NewSocket(ipn.Any)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Connect(path); err != nil {
		t.Fatal(err)
	}
	member.Send([]byte("still serving"))
	if got := recvString(t, b); got != "still serving" {
		t.Fatalf("got %q", got)
	}
}

func TestKilledMembersFreeTheirPorts(t *testing.T) {
	path, watcher := bindNet(t, nil)
	sender := helper(t, nil, "stream", path)
	sender.expect("ready", waitProcs)
	receiver := helper(t, nil, "recv", path)
	receiver.expect("ready", waitProcs)
	receiver.expect("msg stream", waitProcs)
	if got := recvString(t, watcher); !strings.HasPrefix(got, "stream ") {
		t.Fatalf("watcher got %q", got)
	}
	// Kill the receiver mid-stream: the sender and the watcher go on.
	receiver.cmd.Process.Kill()
	waitFor(t, 15*time.Second, "killed receiver's port freed", func() bool { _, p := readersOf(path); return p == 2 })
	// Kill the sender mid-stream: its port is freed, the network lives.
	sender.cmd.Process.Kill()
	waitFor(t, 15*time.Second, "killed sender's port freed", func() bool { _, p := readersOf(path); return p == 1 })
	again := helper(t, nil, "stream", path)
	again.expect("ready", waitProcs)
	watcher.SetReadDeadline(time.Now().Add(15 * time.Second))
	buf := make([]byte, 100)
	for {
		n, _, err := watcher.Recv(buf)
		if err != nil {
			t.Fatalf("watcher after the kills: %v", err)
		}
		if strings.HasPrefix(string(buf[:n]), "stream 0") && n == len("stream 0") {
			break // the new sender's first message
		}
	}
}

// Two programs that start at once on a machine with no daemon start exactly
// one; SIGTERM to it closes every port cleanly (each member learns its
// network is lost) and removes its socket.
func TestAutostartRaceAndSIGTERM(t *testing.T) {
	dir := tempDir(t)
	sock := filepath.Join(dir, "auto", "ipn.sock")
	path := filepath.Join(dir, "net")
	env := []string{helperEnv + "=bindwait", "IPN_SOCKET=" + sock, "IPN_NO_AUTOSTART=0"}
	const n = 4
	var procs []*proc
	for i := 0; i < n; i++ {
		procs = append(procs, start(t, nil, env, helperBin, path))
	}
	ports := map[string]bool{}
	for _, p := range procs {
		ports[p.expect("ok ", waitProcs)] = true
	}
	if len(ports) != n {
		t.Fatalf("the %d programs did not share one network: %v", n, ports)
	}
	log, err := os.ReadFile(sock + ".log")
	if err != nil {
		t.Fatal(err)
	}
	starts := regexp.MustCompile(`msg=serving .* pid=(\d+)`).FindAllStringSubmatch(string(log), -1)
	if len(starts) != 1 {
		t.Fatalf("%d daemons started, want 1; log:\n%s", len(starts), log)
	}
	var pid int
	fmt.Sscan(starts[0][1], &pid)
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for i, p := range procs {
		// The network is lost with its daemon: Recv says so.
		if got := p.expect("end", waitProcs); got != "end ECONNRESET" {
			t.Errorf("program %d after SIGTERM: %q, want end ECONNRESET", i, got)
		}
	}
	waitFor(t, 15*time.Second, "daemon exit", func() bool { return exited(pid) })
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("control socket left after SIGTERM: %v", err)
	}
}

func TestCommandHelp(t *testing.T) {
	ipnc := ipnCommand(t)
	args := [][]string{{"--help"}}
	for _, c := range []string{"cat", "ls", "daemon", "demo", "dump", "mac", "vlan", "port", "policy", "plug", "vde", "mgmt", "bench", "device", "mount", "version", "completion", "gen-man"} {
		args = append(args, []string{c, "--help"})
	}
	for _, args := range args {
		p := start(t, nil, nil, ipnc, args...)
		out := strings.Join(drain(p), "\n")
		if err := p.wait(10 * time.Second); err != nil || !strings.Contains(out, "Usage:") {
			t.Errorf("ipn %v: %v\n%s", args, err, out)
		}
	}
}

// rawConnect sends OpConnect for path on the raw client c and returns the
// reply and its data descriptors, failing unless there are want of them
// (and, for a client of protocol 2, the status page after them, which it
// closes).
func rawConnect(t *testing.T, c *net.UnixConn, path string, want int) ([]byte, []int) {
	t.Helper()
	fd, err := unix.Open(path, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := wire.Send(c, wire.Packet(wire.OpConnect, []byte(path)), fd); err != nil {
		t.Fatal(err)
	}
	reply, fds, err := wire.Recv(c, make([]byte, 256))
	if err != nil || (len(fds) != want && len(fds) != want+1) {
		closeAll(fds)
		t.Fatalf("connect reply: %v, %d fds, want %d (and the status page)", err, len(fds), want)
	}
	closeAll(fds[want:])
	return reply, fds[:want]
}

// A client says its protocol version at hello and the daemon answers with
// its own: a client of version 1 gets the data socket alone at connect,
// one of version 2 or later the status page after it too
// (docs/protocol.md).
func TestRawClientVersions(t *testing.T) {
	path, _ := bindNet(t, nil)
	for _, v := range []uint16{1, 2, 3, 4} {
		c := rawClient(t)
		if err := wire.Send(c, hello(v, 0)); err != nil {
			t.Fatal(err)
		}
		reply, _, err := wire.Recv(c, make([]byte, 256))
		if err != nil {
			t.Fatal(err)
		}
		_, body, _ := wire.Split(reply)
		if dv, build := wire.DecodeHelloReply(body[4:]); dv != wire.Version || build == "" {
			t.Errorf("hello of version %d: the daemon said version %d, build %q", v, dv, build)
		}
		fd, err := unix.Open(path, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		wire.Send(c, wire.Packet(wire.OpConnect, []byte(path)), fd)
		unix.Close(fd)
		_, fds, err := wire.Recv(c, make([]byte, 256))
		closeAll(fds)
		if want := min(int(v), 2); err != nil || len(fds) != want {
			t.Errorf("connect of a client of version %d: %v, %d descriptors, want %d", v, err, len(fds), want)
		}
		c.Close()
	}
}

// A client of protocol 3 cannot join a network whose MTU is over 4 MiB,
// whose data sockets carry fragments: EPROTONOSUPPORT, saying so. One of
// protocol 4 joins it with plain sockets, as docs/protocol.md describes,
// and messages of several fragments cross both ways: each packet an
// 8-byte header (total, offset) and at most 1 MiB of the message.
func TestRawClientFragments(t *testing.T) {
	const mtu = 8 << 20
	path, member := bindNet(t, func(s *ipn.Socket) {
		if err := s.SetMTU(mtu); err != nil {
			t.Fatal(err)
		}
		s.SetFlags(ipn.Lossless)
	})
	old := rawClient(t)
	if e, err := roundTrip(t, old, hello(3, 0)); err != nil || e != 0 {
		t.Fatalf("hello of version 3: %v %v", e, err)
	}
	fd, err := unix.Open(path, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	wire.Send(old, wire.Packet(wire.OpConnect, []byte(path)), fd)
	unix.Close(fd)
	reply, fds, err := wire.Recv(old, make([]byte, 4096))
	closeAll(fds)
	if err != nil {
		t.Fatal(err)
	}
	_, body, _ := wire.Split(reply)
	if _, rerr := wire.SplitReply(body); !errors.Is(rerr, syscall.EPROTONOSUPPORT) ||
		!strings.Contains(rerr.Error(), "fragments") || !strings.Contains(rerr.Error(), "version 4") || len(fds) != 0 {
		t.Fatalf("connect of a client of version 3 to a network of MTU %d: %v, %d descriptors; want EPROTONOSUPPORT naming fragments and version 4", mtu, rerr, len(fds))
	}

	c := rawClient(t)
	if e, err := roundTrip(t, c, hello(wire.Version, 0)); err != nil || e != 0 {
		t.Fatalf("hello: %v %v", e, err)
	}
	_, dfds := rawConnect(t, c, path, 1)
	data := dfds[0]
	defer unix.Close(data)
	msg := bigPayload(rand.New(rand.NewPCG(11, 12)), 3<<20+5, 1)
	go func() {
		for off := 0; off < len(msg); off += 1 << 20 {
			pkt := make([]byte, 8, 8+1<<20)
			binary.LittleEndian.PutUint32(pkt, uint32(len(msg)))
			binary.LittleEndian.PutUint32(pkt[4:], uint32(off))
			if _, err := unix.Write(data, append(pkt, msg[off:min(len(msg), off+1<<20)]...)); err != nil {
				t.Errorf("write the fragment at %d: %v", off, err)
				return
			}
		}
	}()
	if got := recvBig(t, member, make([]byte, mtu)); !bytes.Equal(got, msg) {
		t.Fatalf("the member got %d bytes from the raw client, want %d", len(got), len(msg))
	}
	back := bigPayload(rand.New(rand.NewPCG(13, 14)), 5<<20+1, 2)
	go member.Send(back)
	var joined []byte
	pkt := make([]byte, 8+1<<20)
	for len(joined) < len(back) {
		n, err := unix.Read(data, pkt)
		if err != nil || n < 8 {
			t.Fatalf("raw client read %d bytes: %v", n, err)
		}
		total, off := binary.LittleEndian.Uint32(pkt), binary.LittleEndian.Uint32(pkt[4:])
		if int(total) != len(back) || int(off) != len(joined) {
			t.Fatalf("fragment at %d of %d after %d bytes, want the next of %d", off, total, len(joined), len(back))
		}
		joined = append(joined, pkt[8:n]...)
	}
	if !bytes.Equal(joined, back) {
		t.Fatal("the raw client joined another message than the member sent")
	}
}

// A raw client joins with plain sockets, as docs/protocol.md describes; an
// empty packet on its data socket neither counts as a message nor ends it.
func TestRawClientEmptyPacket(t *testing.T) {
	path, member := bindNet(t, nil)
	c := rawClient(t)
	if e, err := roundTrip(t, c, hello(wire.Version, 0)); err != nil || e != 0 {
		t.Fatalf("hello: %v %v", e, err)
	}
	reply, fds := rawConnect(t, c, path, 1)
	data := os.NewFile(uintptr(fds[0]), "data")
	defer data.Close()
	_, body, _ := wire.Split(reply)
	if rest, errno := wire.SplitReply(body); errno != nil || len(rest) != wire.ConnectReplyLen {
		t.Fatalf("connect: %v", errno)
	}
	if _, err := unix.Write(fds[0], nil); err != nil {
		t.Fatalf("empty packet: %v", err)
	}
	if _, err := unix.Write(fds[0], []byte("after empty")); err != nil {
		t.Fatal(err)
	}
	if got := recvString(t, member); got != "after empty" {
		t.Fatalf("got %q", got)
	}
	member.Send([]byte("to raw"))
	buf := make([]byte, 100)
	n, err := unix.Read(fds[0], buf)
	if err != nil || string(buf[:n]) != "to raw" {
		t.Fatalf("raw client read %q, %v", buf[:n], err)
	}
}

// The README's first command: ipn demo runs both seed examples as processes.
func TestDemo(t *testing.T) {
	p := start(t, nil, nil, ipnCommand(t), "demo")
	out := strings.Join(drain(p), "\n")
	if err := p.wait(30 * time.Second); err != nil {
		t.Fatalf("ipn demo: %v\n%s\n%s", err, out, p.stderr())
	}
	for _, want := range []string{
		`peer0 received "hello from peer1"`, `peer2 received "hello from peer0"`,
		`viewer1 received "frame 0"`, `viewer2 received "frame 2"`,
		"sender", "lossless",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("ipn demo output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, `peer0 received "hello from peer0"`) {
		t.Errorf("a peer received its own message:\n%s", out)
	}
}
