package ipn_test

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn"
	"github.com/ipn-project/ipn/internal/shmring"
	"github.com/ipn-project/ipn/internal/wire"
	"github.com/ipn-project/ipn/port/shm"
)

// sharedLogs counts this process's read-only mappings of a hub's shared
// log: its members'. (The daemon the tests run may be this process: its
// mapping is writable.)
func sharedLogs(t *testing.T) int {
	t.Helper()
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(maps), "\n") {
		if f := strings.Fields(line); strings.Contains(line, "memfd:ipn-log") && len(f) > 1 && f[1] == "r--s" {
			n++
		}
	}
	return n
}

// On a hub, members on the fast path read the network's messages from one
// shared log, mapped read-only: every receiver gets every message of every
// sender, in each sender's order, not its own; a monitor gets each once.
func TestHubSharedLog(t *testing.T) {
	before := sharedLogs(t)
	path, a := bindNet(t, nil)
	b := member(t, path, nil)
	var rs []*ipn.Socket
	for range 3 {
		rs = append(rs, member(t, path, func(s *ipn.Socket) { s.Shutdown(ipn.ShutWrite) }))
	}
	mon := member(t, path, func(s *ipn.Socket) {
		s.Shutdown(ipn.ShutWrite)
		if err := s.SetMonitor(true); err != nil {
			t.Fatal(err)
		}
	})
	// a, b and the three receivers read it; the monitor does not.
	if got := sharedLogs(t) - before; got != 5 {
		t.Fatalf("%d mappings of the shared log, want 5 (a, b, 3 receivers)", got)
	}
	// Fewer bytes than the log holds, and fewer messages than the
	// monitor's ring: a receiver that the machine's load holds up loses
	// nothing, in a lossy network.
	const each = 250
	errc := make(chan error, 2)
	for i, s := range []*ipn.Socket{a, b} {
		go func() {
			s.SetWriteDeadline(time.Now().Add(20 * time.Second))
			for n := range each {
				m := make([]byte, 8+n%1000)
				binary.BigEndian.PutUint32(m, uint32(i))
				binary.BigEndian.PutUint32(m[4:], uint32(n))
				if err := s.Send(m); err != nil {
					errc <- fmt.Errorf("sender %d, message %d: %w", i, n, err)
					return
				}
			}
			errc <- nil
		}()
	}
	checks := make(chan error, 6)
	check := func(name string, s *ipn.Socket, from []int) {
		next := map[int]int{}
		buf := make([]byte, 2048)
		for total := 0; total < each*len(from); total++ {
			s.SetReadDeadline(time.Now().Add(20 * time.Second))
			n, _, err := s.Recv(buf)
			if err != nil {
				checks <- fmt.Errorf("%s: after %d messages: %v (%v)", name, total, err, next)
				return
			}
			src, seq := int(binary.BigEndian.Uint32(buf)), int(binary.BigEndian.Uint32(buf[4:]))
			if n != 8+seq%1000 || seq != next[src] || !contains(from, src) {
				checks <- fmt.Errorf("%s: message %d of sender %d, %d bytes; want %d of one of %v", name, seq, src, n, next[src], from)
				return
			}
			next[src]++
		}
		checks <- nil
	}
	for i, r := range rs {
		go check(fmt.Sprintf("receiver %d", i), r, []int{0, 1})
	}
	go check("monitor", mon, []int{0, 1})
	go check("a", a, []int{1})
	go check("b", b, []int{0})
	for range 6 {
		if err := <-checks; err != nil {
			t.Error(err)
		}
	}
	for range 2 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	expectNothing(t, mon)
	expectNothing(t, a)
}

func contains(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// mallory, a real user allowed to receive on root's hub, is given its
// shared log read-only, and cannot make it writable by any means: not by
// mapping it, writing it, resizing or sealing it, reopening it through
// /proc, making her mapping writable, or writing through /proc/self/mem.
// What she writes over her own place in the log harms no one: the other
// members get every message, and the daemon serves on.
func TestAttackSharedLog(t *testing.T) {
	_, m := realUsers(t)
	path := filepath.Join(shortDir(t), "hub")
	bindNetAt(t, path)
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	sender := member(t, path, func(s *ipn.Socket) { s.Shutdown(ipn.ShutRead) })
	b := member(t, path, func(s *ipn.Socket) { s.Shutdown(ipn.ShutWrite) })
	h := helper(t, m.cred(), "logattack", socket, path)
	want := []string{
		"mmap-rw EACCES", "write EBADF", "ftruncate EINVAL", "seal EPERM",
		"reopen-rw EACCES", "mprotect-rw EACCES", "proc-mem EIO", "map-files EPERM",
	}
	for _, w := range want {
		if got := h.line(20 * time.Second); got != w {
			t.Fatalf("mallory: %q, want %q (%s)", got, w, h.stderr())
		}
	}
	if got := h.line(20 * time.Second); got != "scribbled" {
		t.Fatalf("mallory: %q, want scribbled (%s)", got, h.stderr())
	}
	// Fewer bytes than the log holds: b, however late the machine's
	// load makes it, loses nothing.
	const total = 4000
	go func() {
		sender.SetWriteDeadline(time.Now().Add(20 * time.Second))
		for i := range total {
			sender.Send(append(seqMsg(i), make([]byte, 200)...))
		}
	}()
	buf := make([]byte, 2048)
	for i := range total {
		b.SetReadDeadline(time.Now().Add(20 * time.Second))
		n, _, err := b.Recv(buf)
		if err != nil {
			t.Fatalf("after %d messages: %v", i, err)
		}
		if seq := binary.BigEndian.Uint32(buf); n != 204 || seq != uint32(i) {
			t.Fatalf("message %d of %d bytes, want %d", seq, n, i)
		}
	}
	// Her garbage counts are hers alone; b's show no loss.
	nets, err := ipn.List(path)
	if err != nil {
		t.Fatal(err)
	}
	if st := portByNum(nets[0], b.Port()); st.Drops != 0 || st.MsgsOut < total {
		t.Fatalf("b: %+v, want no drops and %d delivered", st, total)
	}
	// The daemon still serves: a newcomer joins and hears.
	c := member(t, path, nil)
	sender.Send([]byte("still"))
	recvText(t, c, "still")
}

// helpLogAttack, as a user with r on the hub at path, joins it with the
// raw protocol through the daemon at sock, asking for the shared log, and
// tries to write it, printing each attempt's errno; then it writes
// garbage over its own place in the log and prints "scribbled".
func helpLogAttack(sock, path string) error {
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: sock, Net: "unixpacket"})
	if err != nil {
		return err
	}
	defer c.Close()
	req := func(pkt []byte, fds ...int) ([]int, error) {
		if err := wire.Send(c, pkt, fds...); err != nil {
			return nil, err
		}
		reply, rfds, err := wire.Recv(c, make([]byte, 4096))
		if err != nil {
			return nil, err
		}
		_, body, err := wire.Split(reply)
		if err == nil {
			_, err = wire.SplitReply(body)
		}
		if err != nil {
			return rfds, fmt.Errorf("request %d: %w", pkt[0], err)
		}
		return rfds, nil
	}
	if _, err := req(wire.Packet(wire.OpHello, []byte{byte(wire.Version), 0, 0, 0})); err != nil {
		return err
	}
	if _, err := req(wire.Packet(wire.OpSetOpt, wire.U32(wire.OptFastPath), wire.U32(wire.FastPathLog))); err != nil {
		return err
	}
	fd, err := unix.Open(path, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	fds, err := req(wire.Packet(wire.OpConnect, []byte(path)), fd)
	if err != nil {
		return err
	}
	if len(fds) != wire.FastPathFDs+2 {
		return fmt.Errorf("connect passed %d descriptors, want %d (with the log)", len(fds), wire.FastPathFDs+2)
	}
	logFD, ring := fds[wire.FastPathFDs], fds[0]
	var st unix.Stat_t
	if err := unix.Fstat(logFD, &st); err != nil {
		return err
	}
	size := int(st.Size)
	say := func(what string, err error) {
		var errno syscall.Errno
		if errors.As(err, &errno) {
			fmt.Println(what, unix.ErrnoName(errno))
		} else {
			fmt.Println(what, "succeeded:", err)
		}
	}
	_, err = unix.Mmap(logFD, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	say("mmap-rw", err)
	_, err = unix.Write(logFD, []byte("x"))
	say("write", err)
	say("ftruncate", unix.Ftruncate(logFD, 0))
	_, err = unix.FcntlInt(uintptr(logFD), unix.F_ADD_SEALS, unix.F_SEAL_WRITE)
	say("seal", err)
	_, err = unix.Open(fmt.Sprintf("/proc/self/fd/%d", logFD), unix.O_RDWR, 0)
	say("reopen-rw", err)
	mem, err := unix.Mmap(logFD, 0, size, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return err
	}
	say("mprotect-rw", unix.Mprotect(mem, unix.PROT_READ|unix.PROT_WRITE))
	pm, err := os.OpenFile("/proc/self/mem", os.O_RDWR, 0)
	if err != nil {
		return err
	}
	_, err = pm.WriteAt(make([]byte, 64), int64(uintptr(unsafe.Pointer(&mem[0]))))
	say("proc-mem", err)
	pm.Close()
	// map_files gives a mapping's file back, to those who may.
	addr := uintptr(unsafe.Pointer(&mem[0]))
	_, err = unix.Open(fmt.Sprintf("/proc/self/map_files/%x-%x", addr, addr+uintptr(size)), unix.O_RDWR, 0)
	say("map-files", err)
	// Her own region: garbage over her place in the log and its counts.
	var rst unix.Stat_t
	if err := unix.Fstat(ring, &rst); err != nil {
		return err
	}
	rmem, err := unix.Mmap(ring, 0, int(rst.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return err
	}
	for i := 1024; i < 1024+64; i += 8 {
		binary.LittleEndian.PutUint64(rmem[i:], ^uint64(0)-uint64(i))
	}
	fmt.Println("scribbled")
	// Stay a member until the test ends.
	bufio.NewReader(os.Stdin).ReadString('\n')
	return nil
}

// Big messages on a hub's fast path: a member sends them in chunks and
// every member reads them from the shared log, whole; the socket path's
// member gets the same. Each message is read by all before the next goes
// (a lossy network: receivers that keep up lose nothing).
func TestHubSharedLogBigMessages(t *testing.T) {
	for _, mtu := range []int{4 << 20, 32 << 20} {
		t.Run(fmt.Sprintf("mtu %d MiB", mtu>>20), func(t *testing.T) {
			if mtu > ipn.MaxMTU {
				t.Skipf("MTU %d over the largest, %d", mtu, ipn.MaxMTU)
			}
			path := filepath.Join(tempDir(t), "big")
			a := bindAt(t, ipn.Hub, path, func(s *ipn.Socket) {
				if err := s.SetMTU(mtu); err != nil {
					t.Fatal(err)
				}
			}, true)
			b := member(t, path, nil)
			sock := member(t, path, func(s *ipn.Socket) { s.SetFastPath(false) })
			if !a.FastPath() || !b.FastPath() || sock.FastPath() {
				t.Fatalf("fast paths: a %v, b %v, the socket member %v", a.FastPath(), b.FastPath(), sock.FastPath())
			}
			buf := make([]byte, mtu)
			for i, size := range []int{1, 1000, 65536, 65537, 65536 + 65540, 1 << 20, mtu - 1, 7, mtu} {
				msg := make([]byte, size)
				for j := range msg {
					msg[j] = byte(i + j*7)
				}
				from, to := a, []*ipn.Socket{b, sock}
				if i%2 == 1 {
					from, to = b, []*ipn.Socket{a, sock}
				}
				from.SetWriteDeadline(time.Now().Add(20 * time.Second))
				if err := from.Send(msg); err != nil {
					t.Fatalf("send %d bytes: %v", size, err)
				}
				for k, r := range to {
					r.SetReadDeadline(time.Now().Add(20 * time.Second))
					n, flags, err := r.Recv(buf)
					if err != nil || flags != 0 || n != size || !bytes.Equal(buf[:n], msg) {
						t.Fatalf("message %d of %d bytes, receiver %d: %d bytes, flags %v, %v", i, size, k, n, flags, err)
					}
				}
			}
			expectNothing(t, a)
		})
	}
}

// A member of a hub of big messages that sends impossible chunks loses
// its port (a first chunk too long for its buffer, chunks past the
// length); one whose message is over the MTU, whose chunks stop short, or
// continue no message, loses only those messages. The others carry on, big messages
// and all.
func TestHubBigChunksFromAHostileMember(t *testing.T) {
	const mtu = 1 << 20
	path, a := bigHub(t, mtu)
	b := member(t, path, nil)
	first := func(total int, n int) []byte {
		c := make([]byte, n)
		binary.LittleEndian.PutUint32(c, uint32(total))
		return c
	}
	for _, tc := range []struct {
		name  string
		loses bool // the port
		send  func(p *shmring.Producer)
	}{
		{"first chunk over its buffer", true, func(p *shmring.Producer) {
			p.PutChunk(first(mtu, shmring.ChunkSize+60), shmring.ChunkMore)
		}},
		{"length over the MTU: refused, counted", false, func(p *shmring.Producer) {
			p.PutChunk(first(mtu+1, 100), shmring.ChunkMore)
			p.PutChunk(make([]byte, 1000), shmring.ChunkNext)
			p.Put([]byte("after"))
		}},
		{"length a small message's", true, func(p *shmring.Producer) {
			p.PutChunk(first(100, 100), shmring.ChunkMore)
		}},
		{"chunks past the length", true, func(p *shmring.Producer) {
			p.PutChunk(first(70000, 60000), shmring.ChunkMore)
			p.PutChunk(make([]byte, 20000), shmring.ChunkNext)
		}},
		{"chunks cut short, then a message", false, func(p *shmring.Producer) {
			p.PutChunk(first(200000, 60000), shmring.ChunkMore)
			p.PutChunk(make([]byte, 1000), shmring.ChunkNext|shmring.ChunkMore)
			p.Put([]byte("after"))
		}},
		{"empty chunks", true, func(p *shmring.Producer) {
			p.PutChunk(first(200000, 60000), shmring.ChunkMore)
			p.PutChunk(nil, shmring.ChunkNext|shmring.ChunkMore)
		}},
		{"a whole ring of a message refused", false, func(p *shmring.Producer) {
			// Its slots are the member's again once dropped: the
			// test waits for room, then sends "after".
			p.PutChunk(first(mtu+1, 1000), shmring.ChunkMore)
			for ok := true; ok; {
				ok, _ = p.PutChunk(make([]byte, 1000), shmring.ChunkNext|shmring.ChunkMore)
			}
		}},
		{"chunks of no message", false, func(p *shmring.Producer) {
			p.PutChunk(make([]byte, 1000), shmring.ChunkNext|shmring.ChunkMore)
			p.PutChunk(make([]byte, 1000), shmring.ChunkNext)
			p.Put([]byte("after"))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newScribblerWith(t, path, wire.FastPathLog, wire.FastPathFDs+1)
			p := s.r.Producer(shmring.ToDaemon)
			tc.send(p)
			p.Publish()
			s.wake()
			if full, _ := p.Full(); full {
				waitFor(t, 10*time.Second, "room in the member's ring", func() bool { f, _ := p.Full(); return !f })
				p.PutChunk(make([]byte, 1000), shmring.ChunkNext) // the refused message's end
				p.Push([]byte("after"))
				s.wake()
			}
			if tc.loses {
				waitFor(t, 15*time.Second, "the member's port dropped", func() bool { _, p := readersOf(path); return p == 2 })
			} else {
				recvText(t, b, "after")
				if _, ports := readersOf(path); ports != 3 {
					t.Fatalf("%d ports, want 3: the member's stays", ports)
				}
			}
			big := bytes.Repeat([]byte{7}, mtu)
			a.Send(big)
			buf := make([]byte, mtu)
			b.SetReadDeadline(time.Now().Add(10 * time.Second))
			if n, _, err := b.Recv(buf); err != nil || n != mtu || !bytes.Equal(buf, big) {
				t.Fatalf("after: %d bytes, %v", n, err)
			}
		})
	}
}

// Members that send the first chunk of a big message and never the rest
// hold the hub's budget for big messages only ChunkTimeout: then the
// others' big messages flow again, and the stalled members keep their
// ports.
func TestHubBigChunksStalledMembers(t *testing.T) {
	const mtu = 1 << 20
	path, a := bigHub(t, mtu)
	b := member(t, path, nil)
	for range 2 { // the budget is twice the MTU
		s := newScribblerWith(t, path, wire.FastPathLog, wire.FastPathFDs+1)
		p := s.r.Producer(shmring.ToDaemon)
		c := make([]byte, 1000)
		binary.LittleEndian.PutUint32(c, mtu)
		p.PutChunk(c, shmring.ChunkMore)
		p.Publish()
		s.wake()
	}
	big := bytes.Repeat([]byte{9}, mtu)
	buf := make([]byte, mtu)
	start := time.Now()
	waitFor(t, 4*shm.ChunkTimeout, "a big message after the stalls", func() bool {
		a.Send(big)
		b.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		n, _, err := b.Recv(buf)
		return err == nil && n == mtu && bytes.Equal(buf, big)
	})
	t.Logf("big messages flow again after %v", time.Since(start))
	if _, ports := readersOf(path); ports != 4 {
		t.Fatalf("%d ports, want 4: the stalled members keep theirs", ports)
	}
}

// A member that reads the others' messages and then sends many of its own
// without reading shows no drops: its own messages, which the log writes
// over, are not its losses.
func TestHubOwnMessagesAreNotDrops(t *testing.T) {
	path, a := bindNet(t, nil)
	b := member(t, path, nil)
	for i := range 200 {
		b.Send(seqMsg(i))
	}
	buf := make([]byte, 2048)
	for range 200 {
		a.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, _, err := a.Recv(buf); err != nil {
			t.Fatal(err)
		}
	}
	msg := make([]byte, 1400)
	for range 5000 { // several laps of the log
		a.Send(msg)
	}
	drainAll(b)
	nets, err := ipn.List(path)
	if err != nil {
		t.Fatal(err)
	}
	if st := portByNum(nets[0], a.Port()); st.Drops != 0 || st.MsgsOut != 200 {
		t.Fatalf("a: %+v, want 200 delivered and no drops", st)
	}
}

// bigHub binds a lossy hub of MTU mtu and returns it with its bound,
// connected socket.
func bigHub(t *testing.T, mtu int) (string, *ipn.Socket) {
	t.Helper()
	path := filepath.Join(tempDir(t), "big")
	return path, bindAt(t, ipn.Hub, path, func(s *ipn.Socket) {
		if err := s.SetMTU(mtu); err != nil {
			t.Fatal(err)
		}
	}, true)
}

// mappedAt returns the name and permissions of this process's mapping
// that holds b, or "" if b is not in a mapped file (the heap).
func mappedAt(t *testing.T, b []byte) string {
	t.Helper()
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	p := uint64(uintptr(unsafe.Pointer(unsafe.SliceData(b))))
	for _, line := range strings.Split(string(maps), "\n") {
		f := strings.Fields(line)
		var lo, hi uint64
		if len(f) < 6 || !strings.HasPrefix(f[5], "/memfd:") {
			continue
		}
		if _, err := fmt.Sscanf(f[0], "%x-%x", &lo, &hi); err == nil && lo <= p && p < hi {
			return strings.TrimPrefix(f[5], "/") + " " + f[1]
		}
	}
	return ""
}

// RecvInPlace lends each message where the fast path holds it, with no
// copy: a hub's members read the shared log itself (mapped read-only), a
// switch's members the slot of their ring. The socket path and
// out-of-band messages come copied. What is lent is the message, of every
// size to the MTU, in order.
func TestRecvInPlace(t *testing.T) {
	path, a := bigHub(t, 4<<20)
	r := member(t, path, nil)
	sock := member(t, path, func(s *ipn.Socket) { s.SetFastPath(false) })
	recvIn := func(s *ipn.Socket, want []byte) (where string, flags ipn.MsgFlags) {
		t.Helper()
		s.SetReadDeadline(time.Now().Add(20 * time.Second))
		calls := 0
		err := s.RecvInPlace(func(m []byte, f ipn.MsgFlags) {
			calls++
			flags = f
			where = mappedAt(t, m)
			if want != nil && !bytes.Equal(m, want) {
				t.Errorf("lent %d bytes, not the %d sent", len(m), len(want))
			}
		})
		if err != nil || calls != 1 {
			t.Fatalf("RecvInPlace: %v, after %d calls of its function", err, calls)
		}
		return where, flags
	}
	for i, size := range []int{1, 1500, 65536, 65537, 1 << 20, 4 << 20} {
		msg := make([]byte, size)
		for j := range msg {
			msg[j] = byte(i + j*13)
		}
		a.SetWriteDeadline(time.Now().Add(20 * time.Second))
		if err := a.Send(msg); err != nil {
			t.Fatalf("send %d bytes: %v", size, err)
		}
		if where, _ := recvIn(r, msg); where != "memfd:ipn-log r--s" {
			t.Errorf("%d bytes on the fast path lent from %q, want the shared log", size, where)
		}
		if where, _ := recvIn(sock, msg); where != "" {
			t.Errorf("%d bytes on the socket path lent from %q, want a buffer", size, where)
		}
	}

	sw := filepath.Join(tempDir(t), "sw")
	x := bindAt(t, ipn.VDESwitch, sw, nil, true)
	y := member(t, sw, nil)
	if !x.FastPath() || !y.FastPath() {
		t.Fatal("no fast path on the switch")
	}
	frame := bytes.Repeat([]byte{0xff}, 1500) // to everyone, from ff:ff..
	frame[6] = 0x02                           // from a local unicast address
	for range 3 {
		if err := x.Send(frame); err != nil {
			t.Fatal(err)
		}
		if where, _ := recvIn(y, frame); !strings.HasPrefix(where, "memfd:ipn-ring ") {
			t.Errorf("a frame of the switch lent from %q, want the ring", where)
		}
	}
	// A socket that asked for out-of-band messages gets them, and the
	// ordinary ones after, in order, copied.
	z := member(t, sw, func(s *ipn.Socket) {
		if err := s.SetWantNumNodes(true); err != nil {
			t.Fatal(err)
		}
	})
	if where, flags := recvIn(z, nil); flags != ipn.MsgOOB || where != "" {
		t.Errorf("the numnodes notice: flags %v, lent from %q; want MsgOOB, copied", flags, where)
	}
	if err := x.Send(frame); err != nil {
		t.Fatal(err)
	}
	if where, flags := recvIn(z, frame); flags != 0 || where != "" {
		t.Errorf("a frame after the notice: flags %v, lent from %q; want 0, copied", flags, where)
	}
}

// A member that sends big messages faster than the daemon puts them into
// the log loses none of them at the daemon: its messages wait in its ring
// (the network's budget holds two, and the daemon reads one at a time),
// and only a receiver slower than the log may miss some.
func TestHubBigBurstNoSenderDrops(t *testing.T) {
	const size, count = 4 << 20, 16
	path, a := bigHub(t, size)
	msgs := make([][]byte, count)
	for i := range msgs {
		msgs[i] = bytes.Repeat([]byte{byte(i)}, size)
	}
	a.SetWriteDeadline(time.Now().Add(30 * time.Second))
	if n, err := a.SendBatch(msgs); n != count || err != nil {
		t.Fatalf("sent %d of %d: %v", n, count, err)
	}
	var st ipn.PortInfo
	waitFor(t, 20*time.Second, "the daemon to take every message", func() bool {
		nets, err := ipn.List(path)
		if err != nil {
			t.Fatal(err)
		}
		st = portByNum(nets[0], a.Port())
		return st.MsgsIn+st.Drops >= count
	})
	if st.Drops != 0 || st.MsgsIn != count {
		t.Fatalf("the sender's port: %d in, %d dropped; want %d in, none dropped", st.MsgsIn, st.Drops, count)
	}
}

// A socket may be closed from RecvInPlace's function, or from another
// goroutine while the function holds a message: Close does not wait for
// the function, and the memory lent stays mapped until it returns.
func TestRecvInPlaceClose(t *testing.T) {
	path, a := bindNet(t, nil)
	for _, from := range []string{"the function", "another goroutine"} {
		t.Run(from, func(t *testing.T) {
			r := member(t, path, nil)
			if !r.FastPath() {
				t.Fatal("no fast path")
			}
			msg := bytes.Repeat([]byte{7}, 100)
			if err := a.Send(msg); err != nil {
				t.Fatal(err)
			}
			closed := make(chan error, 1)
			done := make(chan error, 1)
			go func() {
				r.SetReadDeadline(time.Now().Add(10 * time.Second))
				done <- r.RecvInPlace(func(m []byte, _ ipn.MsgFlags) {
					if from == "the function" {
						closed <- r.Close()
					} else {
						other := make(chan error, 1)
						go func() { other <- r.Close() }()
						select {
						case err := <-other:
							closed <- err
						case <-time.After(10 * time.Second):
						}
					}
					if !bytes.Equal(m, msg) { // still mapped, after Close
						t.Error("the message lent changed under Close")
					}
				})
			}()
			for _, c := range []chan error{closed, done} {
				select {
				case err := <-c:
					if err != nil {
						t.Fatal(err)
					}
				case <-time.After(15 * time.Second):
					t.Fatal("Close or RecvInPlace did not return: a deadlock")
				}
			}
			if _, _, err := r.Recv(make([]byte, 10)); !errors.Is(err, net.ErrClosed) {
				t.Fatalf("Recv after Close: %v, want net.ErrClosed", err)
			}
		})
	}
}
