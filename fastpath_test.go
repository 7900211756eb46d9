package ipn_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn"
	"github.com/ipn-project/ipn/internal/shmring"
	"github.com/ipn-project/ipn/internal/wire"
)

// The library takes the shared-memory fast path by default; a socket that
// declines it talks to fast members over its data socket, both ways, with
// boundaries and truncation as on the socket path.
func TestFastPathIsNegotiated(t *testing.T) {
	path, fast := bindNet(t, nil)
	slow := member(t, path, func(s *ipn.Socket) { s.SetFastPath(false) })
	if !fast.FastPath() || slow.FastPath() {
		t.Fatalf("fast path: default %v, declined %v", fast.FastPath(), slow.FastPath())
	}
	big := bytes.Repeat([]byte("x"), 1514)
	for _, m := range [][]byte{[]byte("a"), big, []byte("bc")} {
		if err := fast.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []string{"a", string(big), "bc"} {
		if got := recvString(t, slow); got != want {
			t.Fatalf("socket member got %d bytes, want %d", len(got), len(want))
		}
	}
	slow.Send(big)
	fast.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 100)
	n, flags, err := fast.Recv(buf)
	if err != nil || n != 100 || flags&ipn.MsgTrunc == 0 {
		t.Fatalf("truncated recv: %d bytes, flags %v, %v", n, flags, err)
	}
	slow.Send([]byte("next"))
	if got := recvString(t, fast); got != "next" {
		t.Fatalf("after a truncated message: %q", got)
	}
}

// The scenario tests of the fast path, again over the socket path.
func TestSocketPathScenarios(t *testing.T) {
	t.Setenv("IPN_FASTPATH", "0")
	path, s := bindNet(t, nil)
	if s.FastPath() {
		t.Fatalf("IPN_FASTPATH=0 still took the fast path (%s)", path)
	}
	for name, test := range map[string]func(*testing.T){
		"boundaries": TestHubMessagesKeepBoundaries,
		"oob":        TestNumNodesNoticesComeFirst,
		"sendoob":    TestSendOOB,
		"shutdown":   TestShutdownSides,
		"deadlines":  TestDeadlines,
		"lossy":      TestLossySlowReceiverDoesNotSlowOthers,
		"lossless":   TestLosslessBlocksSenderNeverDrops,
		"dead":       TestLosslessDeadReceiverReleasesSender,
		"killed":     TestKilledMembersFreeTheirPorts,
		"batches":    TestBatches,
	} {
		t.Run(name, test)
	}
}

// A member killed while it floods a lossless network, its ring full and
// half-written: the daemon takes what it published, in order, frees its
// port, and the network goes on.
func TestFastPathMemberKilledMidBatch(t *testing.T) {
	path, watcher := bindNet(t, func(s *ipn.Socket) { s.SetFlags(ipn.Lossless) })
	flood := helper(t, nil, "flood", path)
	if got := flood.expect("ready", waitProcs); !strings.Contains(got, "fast=true") {
		t.Fatalf("flooding member: %q", got)
	}
	// Read slowly for a while so that the flood's ring stays full.
	buf := make([]byte, 2048)
	next := uint64(0)
	for i := 0; i < 2000; i++ {
		watcher.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, _, err := watcher.Recv(buf)
		if err != nil || n != 64 {
			t.Fatalf("watcher: %d bytes, %v", n, err)
		}
		if seq := binary.BigEndian.Uint64(buf); seq != next {
			t.Fatalf("message %d, want %d", seq, next)
		}
		next++
	}
	flood.cmd.Process.Kill()
	// What it published before it died still comes, in order, then
	// nothing more.
	for {
		watcher.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, _, err := watcher.Recv(buf)
		if err != nil {
			break
		}
		if seq := binary.BigEndian.Uint64(buf[:n]); n != 64 || seq != next {
			t.Fatalf("after the kill: %d bytes, message %d, want %d", n, seq, next)
		}
		next++
	}
	waitFor(t, 15*time.Second, "killed member's port freed", func() bool { _, p := readersOf(path); return p == 1 })
	again := member(t, path, nil)
	again.Send([]byte("still here"))
	if got := recvString(t, watcher); got != "still here" {
		t.Fatalf("after the kill: %q", got)
	}
}

// scribbler is a member that joined with the raw protocol and mapped its
// rings, as a member that means harm could.
type scribbler struct {
	r     *shmring.Region
	mem   []byte // the same memory, mapped again, to write anywhere
	wakes []int  // the daemon's eventfds (data and room in each ring)
}

func newScribbler(t *testing.T, path string) *scribbler {
	return newScribblerWith(t, path, 1, wire.FastPathFDs)
}

// newScribblerWith joins with OptFastPath opt, expecting nfds descriptors
// (and the status page).
func newScribblerWith(t *testing.T, path string, opt uint32, nfds int) *scribbler {
	t.Helper()
	c := rawClient(t)
	if e, err := roundTrip(t, c, hello(wire.Version, 0)); err != nil || e != 0 {
		t.Fatalf("hello: %v %v", e, err)
	}
	if e, err := roundTrip(t, c, wire.Packet(wire.OpSetOpt, wire.U32(wire.OptFastPath), wire.U32(opt))); err != nil || e != 0 {
		t.Fatalf("fast path option: %v %v", e, err)
	}
	_, fds := rawConnect(t, c, path, nfds)
	t.Cleanup(func() {
		for _, fd := range fds[1:] {
			unix.Close(fd)
		}
	})
	var st unix.Stat_t
	if err := unix.Fstat(fds[0], &st); err != nil {
		t.Fatal(err)
	}
	mem, err := unix.Mmap(fds[0], 0, int(st.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	r, err := shmring.Map(fds[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return &scribbler{r: r, mem: mem, wakes: []int{fds[1], fds[4]}}
}

// wake writes the daemon's eventfds, as often as the member likes.
func (s *scribbler) wake() {
	for _, fd := range s.wakes {
		unix.Write(fd, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	}
}

// recvText receives from s until a message reads want.
func recvText(t *testing.T, s *ipn.Socket, want string) {
	t.Helper()
	s.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 2048)
	for {
		n, _, err := s.Recv(buf)
		if err != nil {
			t.Fatalf("waiting for %q: %v", want, err)
		}
		if string(buf[:n]) == want {
			return
		}
	}
}

// drainAll receives from s until nothing comes for a while.
func drainAll(s *ipn.Socket) {
	buf := make([]byte, 2048)
	for {
		s.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if _, _, err := s.Recv(buf); err != nil {
			return
		}
	}
}

// A member that scribbles over its rings (the header, the indices, the
// slots) loses its own port; the daemon and the other members carry on.
func TestFastPathScribblerHarmsNobody(t *testing.T) {
	path, a := bindNet(t, nil)
	b := member(t, path, nil)
	for round, scribble := range []func(s *scribbler){
		func(s *scribbler) { // random bytes everywhere
			rng := rand.New(rand.NewPCG(1, 2))
			for i := range s.mem {
				s.mem[i] = byte(rng.Uint32())
			}
		},
		func(s *scribbler) { // a plausible tail, an impossible length
			p := s.r.Producer(shmring.ToDaemon)
			p.Push([]byte("fine"))
			binary.LittleEndian.PutUint32(s.mem[4096:], 0xfffffff0)
		},
		func(s *scribbler) { // the head of the ring to it runs past its tail
			binary.LittleEndian.PutUint64(s.mem[64+192+64:], 1<<40)
		},
	} {
		s := newScribbler(t, path)
		if _, ports := readersOf(path); ports != 3 {
			t.Fatalf("round %d: %d ports with the scribbler", round, ports)
		}
		scribble(s)
		s.wake()
		// More than a ring holds, so that the daemon reads the head.
		for i := 0; i < 600; i++ {
			a.Send([]byte("to all"))
		}
		waitFor(t, 15*time.Second, fmt.Sprintf("round %d: the scribbler's port dropped", round), func() bool { _, p := readersOf(path); return p == 2 })
		// The others still talk, both ways, once b has read what its
		// full ring holds.
		drainAll(b)
		a.Send([]byte("from a"))
		recvText(t, b, "from a")
		b.Send([]byte("from b"))
		recvText(t, a, "from b")
	}
}

// SendBatch and RecvBatch keep order and boundaries on both paths; a batch
// longer than a ring waits for room in a lossless network; a message that
// Send would refuse ends the batch with Send's error.
func TestBatches(t *testing.T) {
	path, sender := bindNet(t, func(s *ipn.Socket) { s.SetFlags(ipn.Lossless) })
	fast := member(t, path, nil)
	slow := member(t, path, func(s *ipn.Socket) { s.SetFastPath(false) })
	const total = 1500
	msgs := make([][]byte, total)
	for i := range msgs {
		msgs[i] = []byte(strings.Repeat("m", 1+i%100) + itoa(i))
	}
	// The receivers expect msgs, then the first message of the bad batch.
	want := append(msgs[:total:total], []byte("ok"))
	for _, r := range []*ipn.Socket{fast, slow} {
		r := r
		errc := make(chan error, 1)
		go func() {
			ms := make([]ipn.Message, 64)
			for i := range ms {
				ms[i].Buf = make([]byte, 2048)
			}
			got := 0
			for got < len(want) {
				r.SetReadDeadline(time.Now().Add(10 * time.Second))
				n, err := r.RecvBatch(ms)
				if err != nil {
					errc <- err
					return
				}
				for _, m := range ms[:n] {
					if got == len(want) || string(m.Buf[:m.N]) != string(want[got]) || m.Flags != 0 {
						errc <- fmt.Errorf("message %d: %q, flags %v", got, m.Buf[:m.N], m.Flags)
						return
					}
					got++
				}
			}
			errc <- nil
		}()
		t.Cleanup(func() {
			if err := <-errc; err != nil {
				t.Errorf("fast path %v: %v", r.FastPath(), err)
			}
		})
	}
	sender.SetWriteDeadline(time.Now().Add(20 * time.Second))
	if n, err := sender.SendBatch(msgs); n != total || err != nil {
		t.Fatalf("sent %d of %d: %v", n, total, err)
	}
	bad := [][]byte{[]byte("ok"), make([]byte, 1515), []byte("never")}
	if n, err := sender.SendBatch(bad); n != 1 || !errors.Is(err, syscall.EOVERFLOW) {
		t.Fatalf("batch with a message over the MTU: sent %d, %v", n, err)
	}
}

// Sending and receiving on the fast path allocates nothing per message,
// in the library or in the daemon (which runs in this test's process).
func TestFastPathAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool allocate; run without -race")
	}
	path, a := bindNet(t, func(s *ipn.Socket) { s.SetFlags(ipn.Lossless) })
	b := member(t, path, nil)
	if !a.FastPath() || !b.FastPath() {
		t.Fatal("no fast path")
	}
	msg := make([]byte, 64)
	batch := [][]byte{msg, msg, msg, msg, msg, msg, msg, msg}
	ms := make([]ipn.Message, 16)
	for i := range ms {
		ms[i].Buf = make([]byte, 2048)
	}
	buf := make([]byte, 2048)
	const perRun = 192 // 12 batches of 8, and 96 one by one
	b.SetReadDeadline(time.Now().Add(time.Minute))
	run := func() {
		for i := 0; i < perRun/len(batch)/2; i++ {
			a.SendBatch(batch)
		}
		for i := 0; i < perRun/2; i++ {
			a.Send(msg)
		}
		for got := 0; got < perRun; {
			if got%3 == 0 {
				if _, _, err := b.Recv(buf); err != nil {
					t.Fatal(err)
				}
				got++
				continue
			}
			n, err := b.RecvBatch(ms[:min(len(ms), perRun-got)])
			if err != nil {
				t.Fatal(err)
			}
			got += n
		}
	}
	run() // warm the pools
	if allocs := testing.AllocsPerRun(50, run); allocs > perRun/100 {
		t.Fatalf("%.1f allocations per %d messages", allocs, perRun)
	}
}

// A daemon without the fast path (here ipn daemon --no-fast-path, which
// answers its option as an older daemon would) gives every member a
// socket, and the library goes on over it.
func TestNoFastPathDaemonFallsBack(t *testing.T) {
	sock := filepath.Join(tempDir(t), "old", "ipn.sock")
	d := start(t, nil, nil, ipnCommand(t), "daemon", "-f", "--no-fast-path", "--socket", sock)
	t.Setenv("IPN_SOCKET", sock)
	waitFor(t, 15*time.Second, "the daemon's socket", func() bool {
		c, err := net.Dial("unixpacket", sock)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	path, a := bindNet(t, nil)
	b := member(t, path, nil)
	if a.FastPath() || b.FastPath() {
		t.Fatalf("fast path from a daemon without it: %v %v", a.FastPath(), b.FastPath())
	}
	a.Send([]byte("over a socket"))
	if got := recvString(t, b); got != "over a socket" {
		t.Fatalf("got %q; daemon stderr:\n%s", got, d.stderr())
	}
}
