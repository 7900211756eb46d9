package ipn_test

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn"
	"github.com/ipn-project/ipn/engine"
	"github.com/ipn-project/ipn/internal/shmring"
	"github.com/ipn-project/ipn/internal/wire"
	"github.com/ipn-project/ipn/port/shm"
)

// portsOf lists the ports of the network at path on the daemon at sock,
// as root, through ipn ls.
func portsOf(t *testing.T, sock, path string) []ipn.PortInfo {
	t.Helper()
	cmd := exec.Command(ipnCommand(t), "ls", "--json", path)
	cmd.Env = append(os.Environ(), "IPN_SOCKET="+sock)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("ipn ls --json %s: %v", path, err)
	}
	var nets []struct {
		Ports []ipn.PortInfo `json:"port_list"`
	}
	if err := json.Unmarshal(out, &nets); err != nil || len(nets) != 1 {
		t.Fatalf("ipn ls --json %s: %v: %s", path, err, out)
	}
	return nets[0].Ports
}

// isSock reports whether path is a socket file: a network bound there.
func isSock(path string) bool {
	st, err := os.Lstat(path)
	return err == nil && st.Mode()&os.ModeSocket != 0
}

// mallory, a real user of a root daemon run with --max-memory 256, cannot
// make it hold more memory for messages of 4 MiB than that: a network of
// MTU 4 MiB with many ports, or a second large one, is refused with
// EDQUOT naming --max-memory; and joining alice's network of MTU 4 MiB as a
// member that never reads, while alice sends 4 MiB messages as fast as
// she can, does not make the daemon grow past the network's bound.
func TestAttackBigMessageMemory(t *testing.T) {
	a, m := realUsers(t)
	sock, d := ownDaemon(t, "--max-memory", "256")
	env := []string{"IPN_SOCKET=" + sock}
	ipnc := ipnCommand(t)
	mdir := userDir(t, m, 0o755)
	mtu := fmt.Sprint(packetMTU)

	// Her networks' bound: 64 ports of 4 MiB messages is over it (about
	// 550 MiB), one of 16 (about 150) is not, and a second such is.
	refused := func(what string, args ...string) {
		t.Helper()
		out, err := runAs(t, &m, env, ipnc, append([]string{"cat", "--bind", "--send-only", "--mtu", mtu}, args...)...)
		if err == nil || !strings.Contains(out, "--max-memory") || !strings.Contains(strings.ToLower(out), "quota") {
			t.Fatalf("mallory, %s: %v: %q, want EDQUOT naming --max-memory", what, err, out)
		}
	}
	refused("64 ports", "--ports", "64", filepath.Join(mdir, "wide"))
	hold := start(t, m.cred(), env, ipnc, "cat", "--bind", "--send-only", "--mtu", mtu, "--ports", "16", filepath.Join(mdir, "n16"))
	waitFor(t, waitProcs, "mallory's network of 16 ports", func() bool { return isSock(filepath.Join(mdir, "n16")) })
	refused("a second network of 16 ports", "--ports", "16", filepath.Join(mdir, "n16b"))
	hold.stdin.Close()
	if err := hold.wait(waitProcs); err != nil {
		t.Fatalf("mallory's network of 16 ports: %v: %s", err, hold.stderr())
	}

	// alice's network: 4 ports of MTU 4 MiB, lossy, which mallory may
	// join (mode 0766 less alice's umask: r and w for all).
	adir := userDir(t, a, 0o755)
	path := filepath.Join(adir, "video")
	binder := start(t, a.cred(), env, "sh", "-c", `umask 0; exec "$0" cat --bind --send-only --mode 0766 --mtu "$1" --ports 4 "$2"`, ipnc, mtu, path)
	waitFor(t, waitProcs, "alice's network", func() bool { return isSock(path) })
	// mallory joins and never reads: her cat writes what it gets to a
	// pipe nobody reads, and stops reading once that is full.
	stuck := start(t, m.cred(), env, "sh", "-c", `"$0" cat --raw --recv-only "$1" | sleep 3600`, ipnc, path)
	waitFor(t, waitProcs, "mallory's member", func() bool { return len(portsOf(t, sock, path)) == 2 })
	before := vmRSS(t, d.cmd.Process.Pid)

	// alice sends one 4 MiB frame after another, until stopped.
	frame := rawFrame(4, bigPayload(rand.New(rand.NewPCG(9, 9)), packetMTU, 9))
	frameFile := filepath.Join(adir, "frame")
	if err := os.WriteFile(frameFile, frame, 0o644); err != nil {
		t.Fatal(err)
	}
	sender := start(t, a.cred(), env, "sh", "-c", `while cat "$1"; do :; done | exec "$0" cat --raw --send-only "$2"`, ipnc, frameFile, path)

	// Until the daemon has taken in (or refused) 64 of her messages,
	// 256 MiB, the daemon's RSS stays within the network's bound.
	const msgs = 64
	// engine.BigBudget, and per port its queue's pooled buffers and data
	// socket; on the fast path, the hub's shared log (charged to alice)
	// and the two members' rings instead of their sockets.
	bound := int64(2*packetMTU) + 4*(2*int64(packetMTU)+8<<16) +
		int64(shmring.LogBytes(packetMTU)) + 2*int64(shm.LayoutFor(packetMTU).Bytes())
	var peak int64
	var sent, delivered, drops uint64
	deadline := time.Now().Add(120 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for sent < msgs {
		select {
		case <-sender.done:
			t.Fatalf("alice's sender exited: %v: %s", sender.err, sender.stderr())
		case <-stuck.done:
			t.Fatalf("mallory's member exited: %v: %s", stuck.err, stuck.stderr())
		case <-tick.C:
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 120s the daemon had taken %d of alice's messages, want %d", sent, msgs)
		}
		peak = max(peak, vmRSS(t, d.cmd.Process.Pid))
		sent, delivered, drops = 0, 0, 0
		for _, p := range portsOf(t, sock, path) {
			if p.Write {
				sent += p.MsgsIn + p.Drops
			} else {
				delivered, drops = p.MsgsOut, p.Drops
			}
		}
	}
	peak = max(peak, vmRSS(t, d.cmd.Process.Pid))
	t.Logf("daemon RSS %d MiB before, peak %d MiB (bound %d MiB); alice's port took or dropped %d; mallory's port got %d, dropped %d",
		before>>20, peak>>20, bound>>20, sent, delivered, drops)
	if peak-before > bound {
		t.Fatalf("the daemon grew by %d MiB while mallory did not read, over the network's bound, %d MiB", (peak-before)>>20, bound>>20)
	}
	legit(t, a, sock)
	binder.stdin.Close()
}

// mallory, a real user, joins alice's network of MTU 64 MiB (lossless, so
// that what the daemon holds for her holds the others up) as a raw client
// on its data socket and breaks the rules of fragments: a fragment out of
// order, a message over the MTU, first fragments of 64 MiB messages begun
// again and again, then one left unfinished while she sends nothing. The
// daemon counts each as an error on her port and drops it; what she holds
// of the network's budget for big messages is free again after
// seqpacket.FragTimeout (2 s): alice's 32 MiB and 64 MiB messages cross
// intact meanwhile and after, and the daemon's RSS stays within twice the
// network's budget (the collector's share).
func TestAttackBigMessageFragments(t *testing.T) {
	a, m := realUsers(t)
	sock, d := ownDaemon(t)
	env := []string{"IPN_SOCKET=" + sock}
	ipnc := ipnCommand(t)
	mtu := ipn.MaxMTU
	adir := userDir(t, a, 0o755)
	path := filepath.Join(adir, "huge")
	binder := start(t, a.cred(), env, "sh", "-c", `umask 0; exec "$0" cat --bind --raw --send-only --lossless --mode 0766 --mtu "$1" --ports 4 "$2"`,
		ipnc, fmt.Sprint(mtu), path)
	waitFor(t, waitProcs, "alice's network", func() bool { return isSock(path) })
	out := filepath.Join(adir, "got")
	recv := start(t, a.cred(), env, "sh", "-c", `exec "$0" cat --raw --recv-only --count 2 "$1" > "$2"`, ipnc, path, out)
	waitFor(t, waitProcs, "alice's receiver", func() bool { return len(portsOf(t, sock, path)) == 2 })
	before := vmRSS(t, d.cmd.Process.Pid)
	peak := before

	h := start(t, m.cred(), append(env, helperEnv+"=frags"), helperBin, sock, path, fmt.Sprint(mtu))
	for _, step := range []string{"joined", "order", "total", "restarts", "silent"} {
		h.expect(step, 30*time.Second)
		peak = max(peak, vmRSS(t, d.cmd.Process.Pid))
	}
	errorsOf := func() (mallory uint64) {
		for _, p := range portsOf(t, sock, path) {
			if strings.HasPrefix(p.Peer, fmt.Sprintf("pid %d ", h.cmd.Process.Pid)) {
				mallory = p.Errors
			}
		}
		return mallory
	}
	// While mallory holds her first fragment, and after: alice's 32 MiB,
	// then one of the MTU, which needs the budget mallory held.
	r := rand.New(rand.NewPCG(21, 22))
	msgs := [][]byte{bigPayload(r, 32<<20, 1), bigPayload(r, mtu, 2)}
	sent := make(chan error, 1)
	go func() {
		for _, msg := range msgs {
			if _, err := binder.stdin.Write(rawFrame(4, msg)); err != nil {
				sent <- err
				return
			}
		}
		sent <- nil
	}()
	// 2 (out of order: the message, the stray fragment) + 2 (over the
	// MTU, its next fragment) + 16 (each message begun again, the last by
	// the unfinished one) + 1 (the unfinished one, at the timeout).
	const want = 21
	deadline := time.After(60 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for errorsOf() < want || !recvDone(recv) {
		select {
		case <-deadline:
			t.Fatalf("after 60s mallory's port counts %d errors (want %d), alice's receiver done %v: %s",
				errorsOf(), want, recvDone(recv), recv.stderr())
		case <-tick.C:
		}
		peak = max(peak, vmRSS(t, d.cmd.Process.Pid))
	}
	if err := <-sent; err != nil {
		t.Fatalf("alice's sender: %v: %s", err, binder.stderr())
	}
	if err := recv.wait(waitProcs); err != nil {
		t.Fatalf("alice's receiver: %v: %s", err, recv.stderr())
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if wantOut := append(rawFrame(4, msgs[0]), rawFrame(4, msgs[1])...); sha256.Sum256(got) != sha256.Sum256(wantOut) {
		t.Fatalf("alice received %d bytes, want her two messages, %d", len(got), len(wantOut))
	}
	if n := errorsOf(); n != want {
		t.Errorf("mallory's port counts %d errors, want %d", n, want)
	}
	// The network's budget for big messages (engine.BigBudget), which
	// mallory's and alice's messages share, twice: the collector frees
	// the buffers of messages dropped once the heap has doubled, and
	// reuses them zeroed whole (each message begun again costs the
	// daemon a buffer of 64 MiB for 1 MiB sent); and 32 MiB of slack.
	bound := 2*engine.BigBudget(mtu) + 32<<20
	t.Logf("daemon RSS %d MiB before, peak %d MiB (bound %d MiB)", before>>20, peak>>20, bound>>20)
	if peak-before > bound {
		t.Errorf("the daemon grew by %d MiB, over %d MiB", (peak-before)>>20, bound>>20)
	}
	legit(t, a, sock)
	h.stdin.Close()
	binder.stdin.Close()
}

// recvDone reports whether p exited.
func recvDone(p *proc) bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// helpFrags is mallory's raw client for TestAttackBigMessageFragments: it
// joins the network at path through the daemon at sock as a member that
// only sends, and breaks the rules of fragments on its data socket,
// saying each step on stdout; it then holds its port until stdin closes.
func helpFrags(sock, path, mtuS string) error {
	mtu, _ := strconv.Atoi(mtuS)
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: sock, Net: "unixpacket"})
	if err != nil {
		return err
	}
	defer c.Close()
	buf := make([]byte, 70000)
	request := func(pkt []byte, fds ...int) ([]int, error) {
		if err := wire.Send(c, pkt, fds...); err != nil {
			return nil, err
		}
		for {
			reply, rfds, err := wire.Recv(c, buf)
			if err != nil {
				return nil, err
			}
			op, body, err := wire.Split(reply)
			if err != nil {
				return nil, err
			}
			if op&wire.ReplyBit == 0 {
				continue // an event
			}
			_, err = wire.SplitReply(body)
			return rfds, err
		}
	}
	if _, err := request(wire.Packet(wire.OpHello, []byte{byte(wire.Version), 0, 0, 0})); err != nil {
		return fmt.Errorf("hello: %w", err)
	}
	if _, err := request(wire.Packet(wire.OpShutdown, wire.U32(uint32(wire.ShutRead)))); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	fd, err := unix.Open(path, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	rfds, err := request(wire.Packet(wire.OpConnect, []byte(path)), fd)
	unix.Close(fd)
	if err != nil || len(rfds) == 0 {
		return fmt.Errorf("connect: %v, %d descriptors", err, len(rfds))
	}
	data := rfds[0]
	for _, f := range rfds[1:] {
		unix.Close(f)
	}
	fmt.Println("joined")
	chunk := make([]byte, wire.MaxFragment)
	frag := func(total, off int) error {
		pkt := make([]byte, wire.FragHeaderLen, wire.FragHeaderLen+len(chunk))
		wire.PutFragHeader(pkt, total, off)
		_, err := unix.Write(data, append(pkt, chunk...))
		return err
	}
	steps := []struct {
		name  string
		frags [][2]int // total, offset
	}{
		{"order", [][2]int{{32 << 20, 0}, {32 << 20, 3 << 20}}},
		{"total", [][2]int{{mtu + 1, 0}, {mtu + 1, 1 << 20}}},
		{"restarts", nil},
		{"silent", [][2]int{{mtu, 0}}},
	}
	for range 16 {
		steps[2].frags = append(steps[2].frags, [2]int{mtu, 0})
	}
	for _, s := range steps {
		for _, f := range s.frags {
			if err := frag(f[0], f[1]); err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
		}
		fmt.Println(s.name)
	}
	waitStdin()
	return nil
}
