package udp_test

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ipn-project/ipn/internal/netnstest"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/farend/udp"
)

// listen returns a Conn on a socket of its own on addr (port 0: any).
func listen(t *testing.T, addr string) *udp.Conn {
	t.Helper()
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		t.Fatal(err)
	}
	x := udp.NewConn(c, false, udp.BatchSize)
	t.Cleanup(func() { x.Close() })
	return x
}

// plain returns a socket with no offloads, as a receiver that is not ipn.
func plain(t *testing.T, addr string) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// needOffloads skips unless the kernel gave c both offloads (Linux 5.0).
func needOffloads(t *testing.T, c *udp.Conn) {
	t.Helper()
	if s := c.Stats(); !s.GSO || !s.GRO {
		t.Skipf("the kernel has no UDP GSO or GRO: %+v", s)
	}
}

// dgram is datagram i of a test, n bytes: i, then i's low byte repeated.
func dgram(i, n int) []byte {
	b := bytes.Repeat([]byte{byte(i)}, n)
	if n >= 2 {
		b[0], b[1] = byte(i>>8), byte(i)
	}
	return b
}

// recvPlain reads n datagrams from c, each whole, within 5 s.
func recvPlain(t *testing.T, c *net.UDPConn, n int) [][]byte {
	t.Helper()
	var got [][]byte
	buf := make([]byte, udp.MaxDatagram)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for len(got) < n {
		k, _, flags, _, err := c.ReadMsgUDP(buf, nil)
		if err != nil {
			t.Fatalf("after %d datagrams of %d: %v", len(got), n, err)
		}
		if flags&unix.MSG_TRUNC != 0 {
			t.Fatalf("datagram %d truncated", len(got))
		}
		got = append(got, bytes.Clone(buf[:k]))
	}
	return got
}

// recvConn reads n datagrams from c with Recv and Next, within 5 s.
func recvConn(t *testing.T, c *udp.Conn, n int) [][]byte {
	t.Helper()
	var got [][]byte
	b := udp.NewRecvBatch(8)
	timer := time.AfterFunc(5*time.Second, func() { c.Close() })
	defer timer.Stop()
	for len(got) < n {
		if err := c.Recv(b); err != nil {
			t.Fatalf("after %d datagrams of %d: %v", len(got), n, err)
		}
		for d, ok := b.Next(); ok; d, ok = b.Next() {
			got = append(got, bytes.Clone(d.B))
		}
	}
	return got
}

func expectDatagrams(t *testing.T, what string, got, want [][]byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d datagrams, want %d", what, len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("%s: datagram %d: %d bytes %x..., want %d bytes %x...", what, i, len(got[i]), got[i][:min(4, len(got[i]))], len(want[i]), want[i][:min(4, len(want[i]))])
		}
	}
}

// A batch of runs, mixed sizes and destinations, goes in one system call
// of one message per run, each with UDP_SEGMENT; a plain receiver gets
// every datagram whole, in order, the short last ones of runs included.
func TestGSOSendsRuns(t *testing.T) {
	x := listen(t, "127.0.0.1:0")
	needOffloads(t, x)
	ra, rb := plain(t, "127.0.0.1:0"), plain(t, "127.0.0.1:0")
	a, b := ra.LocalAddr().(*net.UDPAddr), rb.LocalAddr().(*net.UDPAddr)
	a2 := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: a.Port} // a, another pointer
	var msgs [][]byte
	var to []*net.UDPAddr
	add := func(dst *net.UDPAddr, sizes ...int) {
		for _, n := range sizes {
			msgs = append(msgs, dgram(len(msgs), n))
			to = append(to, dst)
		}
	}
	rep := func(n, size int) []int {
		s := make([]int, n)
		for i := range s {
			s[i] = size
		}
		return s
	}
	// Destinations alternate between groups, which keeps them apart.
	add(a, append(rep(10, 1000), 500)...) // a run of ten and a short last
	add(b, rep(5, 1200)...)               // a run
	add(a, rep(3, 800)...)                // one run with the next, to a by
	add(a2, rep(2, 800)...)               // another pointer
	add(b, 1300)                          // alone
	add(a, rep(70, 100)...)               // 64 datagrams at most: two runs
	add(b, rep(50, 1400)...)              // 46 fill 64400 bytes, 47 would pass 65507: two runs
	add(a, 200, 200, 100, 100)            // a short one ends a run: a run, one alone
	add(b, 0, 10)                         // an empty datagram goes alone: two alone
	const messages, runs = 12, 8

	n, err := x.Write(nil, msgs, to)
	if n != len(msgs) || err != nil {
		t.Fatalf("Write: %d of %d, %v", n, len(msgs), err)
	}
	var wantA, wantB [][]byte
	for i, m := range msgs {
		if to[i] == b {
			wantB = append(wantB, m)
		} else {
			wantA = append(wantA, m)
		}
	}
	expectDatagrams(t, "a", recvPlain(t, ra, len(wantA)), wantA)
	expectDatagrams(t, "b", recvPlain(t, rb, len(wantB)), wantB)
	s := x.Stats()
	if s.SendCalls != 1 || s.SendMsgs != messages || s.SendGSO != runs || s.SendDatagrams != uint64(len(msgs)) || s.SendDropped != 0 || s.GSOFallbacks != 0 {
		t.Fatalf("stats %+v: want 1 call, %d messages, %d with UDP_SEGMENT, %d datagrams", s, messages, runs, len(msgs))
	}
}

// Frames behind a header (VXLAN's) go in runs too, the header before each.
func TestGSOWithHeader(t *testing.T) {
	x := listen(t, "127.0.0.1:0")
	needOffloads(t, x)
	r := plain(t, "127.0.0.1:0")
	hdr := []byte("HDR:")
	var msgs, want [][]byte
	for i := 0; i < 30; i++ {
		n := 1400
		if i == 29 {
			n = 60
		}
		msgs = append(msgs, dgram(i, n))
		want = append(want, append(bytes.Clone(hdr), msgs[i]...))
	}
	to := make([]*net.UDPAddr, len(msgs))
	for i := range to {
		to[i] = r.LocalAddr().(*net.UDPAddr)
	}
	if n, err := x.Write(hdr, msgs, to); n != len(msgs) || err != nil {
		t.Fatalf("Write: %d, %v", n, err)
	}
	expectDatagrams(t, "receiver", recvPlain(t, r, len(want)), want)
	if s := x.Stats(); s.SendCalls != 1 || s.SendMsgs != 1 || s.SendGSO != 1 || s.SendDatagrams != 30 {
		t.Fatalf("stats %+v: want 1 call of 1 run of 30", s)
	}
}

// Runs sent with UDP_SEGMENT reach a socket with UDP_GRO coalesced (on
// the loopback they are never cut): Recv reads them in a message each
// and Next hands the datagrams out as they were, boundaries, order and
// the short last ones kept; a message of datagrams from another sender
// between them is kept apart.
func TestGROSplitsRuns(t *testing.T) {
	rx := listen(t, "127.0.0.1:0")
	tx := listen(t, "127.0.0.1:0")
	needOffloads(t, rx)
	dst := rx.UDPConn().LocalAddr().(*net.UDPAddr)
	var msgs [][]byte
	for i := 0; i < 40; i++ {
		msgs = append(msgs, dgram(i, 1450))
	}
	msgs = append(msgs, dgram(40, 77)) // short last
	for i := 41; i < 45; i++ {
		msgs = append(msgs, dgram(i, 600))
	}
	to := make([]*net.UDPAddr, len(msgs))
	for i := range to {
		to[i] = dst
	}
	if n, err := tx.Write(nil, msgs, to); n != len(msgs) || err != nil {
		t.Fatalf("Write: %d, %v", n, err)
	}
	other := plain(t, "127.0.0.1:0")
	if _, err := other.WriteToUDP(dgram(99, 600), dst); err != nil {
		t.Fatal(err)
	}
	got := recvConn(t, rx, len(msgs)+1)
	expectDatagrams(t, "receiver", got, append(append([][]byte(nil), msgs...), dgram(99, 600)))
	s := rx.Stats()
	if s.RecvGRO != 2 || s.RecvMsgs != 3 || s.RecvDatagrams != uint64(len(msgs)+1) {
		t.Fatalf("stats %+v: want 3 messages, 2 of them coalesced, %d datagrams", s, len(msgs)+1)
	}
}

// A RecvBatch's Split check that refuses a message makes Next return it
// whole.
func TestGROSplitRefused(t *testing.T) {
	rx := listen(t, "127.0.0.1:0")
	tx := listen(t, "127.0.0.1:0")
	needOffloads(t, rx)
	dst := rx.UDPConn().LocalAddr().(*net.UDPAddr)
	msgs := [][]byte{dgram(1, 100), dgram(2, 100), dgram(3, 50)}
	if _, err := tx.Write(nil, msgs, []*net.UDPAddr{dst, dst, dst}); err != nil {
		t.Fatal(err)
	}
	b := udp.NewRecvBatch(4)
	var asked [2]int
	b.Split = func(first []byte, n int) bool {
		asked = [2]int{len(first), n}
		return false
	}
	if err := rx.Recv(b); err != nil {
		t.Fatal(err)
	}
	d, ok := b.Next()
	if want := bytes.Join(msgs, nil); !ok || !bytes.Equal(d.B, want) {
		t.Fatalf("got %d bytes, want the message whole, %d", len(d.B), len(want))
	}
	if _, ok := b.Next(); ok {
		t.Fatal("more than one datagram")
	}
	if d.GSO != 100 {
		t.Fatalf("GSO %d, want the segment size, 100", d.GSO)
	}
	if asked != [2]int{100, 250} {
		t.Fatalf("Split asked about %v, want [100 250]", asked)
	}
}

// With the offloads off (IPN_UDP_OFFLOAD, or a kernel without them),
// Conn sends one datagram per message, in one system call still, and
// receives them one per message; nothing else changes.
func TestNoOffloads(t *testing.T) {
	for _, env := range []string{"off", "nogso", "nogro"} {
		t.Run(env, func(t *testing.T) {
			t.Setenv(udp.EnvOffload, env)
			rx := listen(t, "127.0.0.1:0")
			tx := listen(t, "127.0.0.1:0")
			if s := rx.Stats(); s.GSO != (env == "nogro") || s.GRO && env != "nogso" {
				t.Fatalf("with %s=%s: GSO %v, GRO %v", udp.EnvOffload, env, s.GSO, s.GRO)
			}
			dst := rx.UDPConn().LocalAddr().(*net.UDPAddr)
			var msgs [][]byte
			var to []*net.UDPAddr
			for i := 0; i < 20; i++ {
				msgs = append(msgs, dgram(i, 1000+i/10*100))
				to = append(to, dst)
			}
			if n, err := tx.Write(nil, msgs, to); n != len(msgs) || err != nil {
				t.Fatalf("Write: %d, %v", n, err)
			}
			expectDatagrams(t, "receiver", recvConn(t, rx, len(msgs)), msgs)
			ts, rs := tx.Stats(), rx.Stats()
			if ts.SendCalls != 1 || ts.SendDatagrams != 20 {
				t.Fatalf("sender %+v: want 1 call of 20 datagrams", ts)
			}
			if env == "nogro" { // the sender's runs are cut for a receiver without GRO
				if ts.SendMsgs != 2 || ts.SendGSO != 2 {
					t.Fatalf("sender %+v: want 2 runs", ts)
				}
			} else if ts.SendMsgs != 20 || ts.SendGSO != 0 {
				t.Fatalf("sender %+v: want 20 messages, none with UDP_SEGMENT", ts)
			}
			if rs.RecvGRO != 0 || rs.RecvMsgs != 20 {
				t.Fatalf("receiver %+v: want 20 messages, none coalesced", rs)
			}
		})
	}
}

// A closed Conn's Write and Recv fail with net.ErrClosed; Close unblocks
// a Recv.
func TestConnClose(t *testing.T) {
	x := listen(t, "127.0.0.1:0")
	errc := make(chan error, 1)
	go func() { errc <- x.Recv(udp.NewRecvBatch(1)) }()
	runtime.Gosched()
	x.Close()
	if err := <-errc; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Recv after Close: %v", err)
	}
	dst := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9}
	if _, err := x.Write(nil, [][]byte{{1}}, []*net.UDPAddr{dst}); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Close: %v", err)
	}
}

var nsSeq atomic.Int32

// netns makes a network namespace for the test, with commands run in it
// ("ip -n NS ..." for each of ip, then each of sh), and removes it at the
// end. It needs root and ip: without them the test skips, except under CI.
func netns(t *testing.T, ip []string, sh ...string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI runs as root; this test must not skip there")
		}
		t.Skip("needs root to make a network namespace")
	}
	for _, tool := range []string{"ip", "ethtool"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is missing", tool)
			}
			t.Skipf("needs %s", tool)
		}
	}
	ns := fmt.Sprintf("ipnudp-%d-%d", os.Getpid(), nsSeq.Add(1))
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("ip", "netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	for _, c := range ip {
		run(append([]string{"ip", "-n", ns}, strings.Fields(c)...)...)
	}
	for _, c := range sh {
		run(append([]string{"ip", "netns", "exec", ns}, strings.Fields(c)...)...)
	}
	return ns
}

// A run whose datagrams a route's MTU cannot take unfragmented is refused
// with UDP_SEGMENT (EINVAL): it goes again one datagram per message, which
// the kernel fragments, and datagrams of that size or more go so from
// then on while smaller runs keep UDP_SEGMENT.
func TestGSOTooBigForRoute(t *testing.T) {
	ns := netns(t, []string{"link set lo mtu 1300", "link set lo up"})
	var x *udp.Conn
	var r *net.UDPConn
	netnstest.In(t, ns, func() {
		x = listen(t, "127.0.0.1:0")
		r = plain(t, "127.0.0.1:0")
	})
	needOffloads(t, x)
	dst := r.LocalAddr().(*net.UDPAddr)
	send := func(n, size int) [][]byte {
		t.Helper()
		var msgs [][]byte
		var to []*net.UDPAddr
		for i := 0; i < n; i++ {
			msgs = append(msgs, dgram(i, size))
			to = append(to, dst)
		}
		if k, err := x.Write(nil, msgs, to); k != n || err != nil {
			t.Fatalf("Write of %d of %d bytes: %d, %v", n, size, k, err)
		}
		return msgs
	}
	msgs := send(10, 2000)
	expectDatagrams(t, "too big", recvPlain(t, r, 10), msgs)
	s := x.Stats()
	if s.GSOFallbacks != 1 || s.SendGSO != 0 || s.SendMsgs != 10 || s.SendCalls != 2 || !s.GSO {
		t.Fatalf("stats %+v: want 1 fallback, then 10 messages in a second call, GSO still on", s)
	}
	msgs = send(10, 2000)
	expectDatagrams(t, "too big again", recvPlain(t, r, 10), msgs)
	msgs = send(10, 1000)
	expectDatagrams(t, "smaller", recvPlain(t, r, 10), msgs)
	s = x.Stats()
	if s.GSOFallbacks != 1 || s.SendGSO != 1 || s.SendCalls != 4 {
		t.Fatalf("stats %+v: want no more fallbacks, and the smaller run with UDP_SEGMENT", s)
	}
}

// A device that cannot finish UDP checksums (tx offload off): the
// datagrams of a run reach the peer whole, whether the kernel segments
// the run in software (Linux 6.2 on) or refuses it with EIO and the Conn
// sends one datagram per message from then on.
func TestGSODeviceWithoutChecksum(t *testing.T) {
	peer := netns(t, []string{"link set lo up"})
	ns := netns(t, []string{
		"link set lo up",
		"link add g0 type veth peer name g1 netns " + peer,
		"addr add 10.97.0.1/24 dev g0",
		"link set g0 up",
	}, "ethtool -K g0 tx off")
	for _, c := range []string{"addr add 10.97.0.2/24 dev g1", "link set g1 up"} {
		if out, err := exec.Command("ip", append([]string{"-n", peer}, strings.Fields(c)...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", c, err, out)
		}
	}
	var x *udp.Conn
	var r *net.UDPConn
	netnstest.In(t, ns, func() { x = listen(t, "10.97.0.1:0") })
	netnstest.In(t, peer, func() { r = plain(t, "10.97.0.2:0") })
	needOffloads(t, x)
	dst := r.LocalAddr().(*net.UDPAddr)
	var msgs [][]byte
	var to []*net.UDPAddr
	for i := 0; i < 12; i++ {
		msgs = append(msgs, dgram(i, 1000))
		to = append(to, dst)
	}
	for round := 0; round < 2; round++ {
		if k, err := x.Write(nil, msgs, to); k != len(msgs) || err != nil {
			t.Fatalf("Write: %d, %v", k, err)
		}
		expectDatagrams(t, "peer", recvPlain(t, r, len(msgs)), msgs)
	}
	s := x.Stats()
	if s.GSO && (s.GSOFallbacks != 0 || s.SendGSO != 2) || !s.GSO && (s.GSOFallbacks != 1 || s.SendGSO != 0) {
		t.Fatalf("stats %+v: want 2 runs with UDP_SEGMENT, or GSO off after 1 fallback", s)
	}
	t.Logf("GSO on a device without checksum offload: %v", s.GSO)
}

// eioConn is a kernel that refuses every message with UDP_SEGMENT with
// EIO, as Linux before 6.2 does on a device without checksum offload and
// every Linux does on an IPsec route.
type eioConn struct {
	udp.BatchConn
	refused int
}

func (c *eioConn) WriteBatch(ms []ipv4.Message, flags int) (int, error) {
	for i, m := range ms {
		if m.OOB != nil {
			if i == 0 {
				c.refused++
				return -1, os.NewSyscallError("sendmmsg", syscall.EIO)
			}
			n, err := c.BatchConn.WriteBatch(ms[:i], flags)
			return n, err
		}
	}
	return c.BatchConn.WriteBatch(ms, flags)
}

// A run refused with EIO goes again one datagram per message, and the
// Conn sends without UDP_SEGMENT from then on; the datagrams before the
// run, in the same call, are not sent twice.
func TestGSORefusedWithEIO(t *testing.T) {
	x := listen(t, "127.0.0.1:0")
	needOffloads(t, x)
	var fake *eioConn
	udp.WrapBatchConn(x, func(bc udp.BatchConn) udp.BatchConn {
		fake = &eioConn{BatchConn: bc}
		return fake
	})
	r := plain(t, "127.0.0.1:0")
	dst := r.LocalAddr().(*net.UDPAddr)
	msgs := [][]byte{dgram(0, 100)} // alone: the run is larger
	for i := 1; i < 11; i++ {
		msgs = append(msgs, dgram(i, 1000))
	}
	to := make([]*net.UDPAddr, len(msgs))
	for i := range to {
		to[i] = dst
	}
	for round := 0; round < 2; round++ {
		if k, err := x.Write(nil, msgs, to); k != len(msgs) || err != nil {
			t.Fatalf("Write: %d, %v", k, err)
		}
		expectDatagrams(t, "receiver", recvPlain(t, r, len(msgs)), msgs)
	}
	s := x.Stats()
	if s.GSO || fake.refused != 1 || s.GSOFallbacks != 1 || s.SendGSO != 0 || s.SendDatagrams != 22 || s.SendMsgs != 22 || s.SendCalls != 4 {
		t.Fatalf("stats %+v, %d refused: want GSO off after 1 fallback, 22 datagrams in 22 messages, 4 calls", s, fake.refused)
	}
}

// Runs go over IPv6 as over IPv4.
func TestGSOIPv6(t *testing.T) {
	c, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback})
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	tx := udp.NewConn(c, true, udp.BatchSize)
	t.Cleanup(func() { tx.Close() })
	needOffloads(t, tx)
	rc, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback})
	if err != nil {
		t.Fatal(err)
	}
	rx := udp.NewConn(rc, true, udp.BatchSize)
	t.Cleanup(func() { rx.Close() })
	dst := rc.LocalAddr().(*net.UDPAddr)
	var msgs [][]byte
	var to []*net.UDPAddr
	for i := 0; i < 50; i++ {
		msgs = append(msgs, dgram(i, 1300-i/45*1000))
		to = append(to, dst)
	}
	if n, err := tx.Write(nil, msgs, to); n != len(msgs) || err != nil {
		t.Fatalf("Write: %d, %v", n, err)
	}
	expectDatagrams(t, "receiver", recvConn(t, rx, len(msgs)), msgs)
	if s, r := tx.Stats(), rx.Stats(); s.SendGSO != 2 || s.SendCalls != 1 || r.RecvGRO != 2 {
		t.Fatalf("sender %+v, receiver %+v: want 2 runs, sent in 1 call, received coalesced", s, r)
	}
}
