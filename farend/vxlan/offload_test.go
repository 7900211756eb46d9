package vxlan

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/ipn-project/ipn/endpoint/endpointtest"
	"github.com/ipn-project/ipn/internal/netnstest"

	"golang.org/x/sys/unix"
)

// sized returns frame i of a test: n bytes from src, the rest marking i.
func sized(i, n int, dst []byte) []byte {
	f := make([]byte, n)
	copy(f, dst)
	copy(f[6:], []byte{2, 0, 0, 0, 0, 1, 0x88, 0xb5})
	for j := EthHeaderLen; j < n; j++ {
		f[j] = byte(i)
	}
	if n >= EthHeaderLen+2 {
		binary.BigEndian.PutUint16(f[EthHeaderLen:], uint16(i))
	}
	return f
}

// datagrams reads n datagrams from c within 5 s, each whole.
func datagrams(t *testing.T, c *net.UDPConn, n int) [][]byte {
	t.Helper()
	var got [][]byte
	buf := make([]byte, 1<<16)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for len(got) < n {
		k, err := c.Read(buf)
		if err != nil {
			t.Fatalf("after %d datagrams of %d: %v", len(got), n, err)
		}
		got = append(got, bytes.Clone(buf[:k]))
	}
	return got
}

func expectFrames(t *testing.T, what string, got, want [][]byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d frames, want %d", what, len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("%s: frame %d: %d bytes %x, want %d bytes %x", what, i, len(got[i]), got[i][:min(len(got[i]), 20)], len(want[i]), want[i][:min(len(want[i]), 20)])
		}
	}
}

func withHeader(vni uint32, frames [][]byte) [][]byte {
	var out [][]byte
	for _, f := range frames {
		d := make([]byte, HeaderLen, HeaderLen+len(f))
		PutHeader(d, vni)
		out = append(out, append(d, f...))
	}
	return out
}

func needOffloads(t *testing.T, e *Endpoint) {
	t.Helper()
	if s := e.Stats(); !s.GSO || !s.GRO {
		t.Skipf("the kernel has no UDP GSO or GRO: %+v", s)
	}
}

// A Write of a TCP segment's frames, equal but the last, goes in one
// system call and one run with UDP segmentation; a runt among them is
// dropped without ending the run. The peer, a plain socket, gets each
// frame behind its header in a datagram of its own, in order.
func TestRunsOnTheWire(t *testing.T) {
	p := freePort(t, "127.0.0.1", "127.0.0.2")
	peer := listen(t, "127.0.0.2", p)
	e := open(t, fmt.Sprintf("127.0.0.2:%d/vni=9/local=127.0.0.1", p))
	needOffloads(t, e)
	var msgs, want [][]byte
	for i := 0; i < 30; i++ {
		msgs = append(msgs, sized(i, 1514, bcast))
		if i == 10 {
			msgs = append(msgs, []byte{1, 2, 3}) // a runt
		}
	}
	msgs = append(msgs, sized(30, 200, bcast))
	for i := 31; i < 36; i++ {
		msgs = append(msgs, sized(i, 900, bcast))
	}
	for _, m := range msgs {
		if len(m) >= EthHeaderLen {
			want = append(want, m)
		}
	}
	if n, err := e.Write(msgs); n != len(msgs) || err != nil {
		t.Fatalf("Write: %d of %d, %v", n, len(msgs), err)
	}
	expectFrames(t, "peer", datagrams(t, peer, len(want)), withHeader(9, want))
	if s := e.Stats(); s.SendCalls != 1 || s.SendMsgs != 2 || s.SendGSO != 2 || s.SendDatagrams != uint64(len(want)) {
		t.Fatalf("stats %+v: want 1 call, 2 runs, %d datagrams", s, len(want))
	}
}

var bcast = []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// In multicast mode frames go to the tunnel ends their MACs were learnt
// behind: a destination that changes ends a run, and every run of the
// batch goes in one system call.
func TestRunsToLearntMACs(t *testing.T) {
	p := freePort(t, "0.0.0.0")
	cfg, err := ParseSpec(context.Background(), fmt.Sprintf("239.193.77.2:%d/if=lo/vni=4", p))
	if err != nil {
		t.Fatal(err)
	}
	e, err := New(context.Background(), cfg)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI can join a group on lo: %v", err)
		}
		t.Skipf("no multicast on lo: %v", err)
	}
	t.Cleanup(func() { e.Close() })
	needOffloads(t, e)
	r2, r3 := listen(t, "127.0.0.2", 0), listen(t, "127.0.0.3", 0)
	mac2, mac3 := []byte{2, 0, 0, 0, 0, 2}, []byte{2, 0, 0, 0, 0, 3}
	e.FDB().Learn(mac2, r2.LocalAddr().(*net.UDPAddr).AddrPort())
	e.FDB().Learn(mac3, r3.LocalAddr().(*net.UDPAddr).AddrPort())
	var msgs, to2, to3 [][]byte
	for i := 0; i < 15; i++ {
		mac, to := mac2, &to2
		if i/5 == 1 {
			mac, to = mac3, &to3
		}
		f := sized(i, 1000, mac)
		msgs = append(msgs, f)
		*to = append(*to, f)
	}
	if n, err := e.Write(msgs); n != len(msgs) || err != nil {
		t.Fatalf("Write: %d, %v", n, err)
	}
	expectFrames(t, "127.0.0.2", datagrams(t, r2, 10), withHeader(4, to2))
	expectFrames(t, "127.0.0.3", datagrams(t, r3, 5), withHeader(4, to3))
	if s := e.Stats(); s.SendCalls != 1 || s.SendMsgs != 3 || s.SendGSO != 3 {
		t.Fatalf("stats %+v: want 1 call of 3 runs", s)
	}
}

// Two ipn ends: the runs one sends reach the other coalesced (UDP GRO),
// which reads every frame back, boundaries and order kept.
func TestRunsBetweenEnds(t *testing.T) {
	port := freePort(t, "127.0.0.1", "127.0.0.2")
	a := open(t, fmt.Sprintf("127.0.0.2:%d/vni=5/local=127.0.0.1", port))
	b := open(t, fmt.Sprintf("127.0.0.1/port=%d/vni=5/local=127.0.0.2", port))
	needOffloads(t, b)
	var msgs [][]byte
	for i := 0; i < 100; i++ {
		n := 1514
		switch {
		case i == 43:
			n = 77
		case i > 43 && i < 60:
			n = 700
		case i >= 60:
			n = 60 + i
		}
		msgs = append(msgs, sized(i, n, bcast))
	}
	if n, err := a.Write(msgs); n != len(msgs) || err != nil {
		t.Fatalf("Write: %d, %v", n, err)
	}
	expectFrames(t, "b", endpointtest.ReadN(t, b, len(msgs), 2048), msgs)
	if s := b.Stats(); s.RecvGRO < 2 || s.RecvDatagrams != uint64(len(msgs)) {
		t.Fatalf("b's stats %+v: want the runs coalesced", s)
	}
}

// ipv4Frame returns an Ethernet frame of an IPv4 packet of protocol proto
// whose total length field says ipLen, with room for l bytes after the
// Ethernet header, behind vlans VLAN tags.
func ipv4Frame(l, ipLen, vlans int) []byte {
	f := make([]byte, 12, EthHeaderLen+4*vlans+l)
	for range vlans {
		f = append(f, 0x81, 0x00, 0, 1)
	}
	f = append(f, 0x08, 0x00)
	ip := make([]byte, l)
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(ipLen))
	return append(f, ip...)
}

func TestCoalesced(t *testing.T) {
	hdr := func(f []byte) []byte { return withHeader(1, [][]byte{f})[0] }
	ipv6 := func(l, payload int) []byte {
		f := append(make([]byte, 12), 0x86, 0xdd)
		ip := make([]byte, l)
		ip[0] = 0x60
		binary.BigEndian.PutUint16(ip[4:], uint16(payload))
		return append(f, ip...)
	}
	for _, tc := range []struct {
		name  string
		first []byte
		n     int // the message's length
		want  bool
	}{
		{"ipv4", hdr(ipv4Frame(1400, 1400, 0)), 10 * 1422, true},
		{"ipv4 padded", hdr(ipv4Frame(46, 28, 0)), 2 * 68, true},
		{"ipv4 as long as the message", hdr(ipv4Frame(1000, 10028, 0)), 10050, false},
		{"ipv4 longer than its datagram", hdr(ipv4Frame(1000, 10000, 0)), 10050, true},
		{"ipv4 length 0", hdr(ipv4Frame(1000, 0, 0)), 10050, true},
		{"ipv4 in two vlan tags", hdr(ipv4Frame(1400, 1400, 2)), 5 * 1430, true},
		{"ipv4 in a vlan tag, as long as the message", hdr(ipv4Frame(1400, 3000, 1)), 3026, false},
		{"ipv6", hdr(ipv6(1400, 1360)), 3 * 1422, true},
		{"ipv6 as long as the message", hdr(ipv6(1400, 8960)), 9022, false},
		{"arp", hdr(append(make([]byte, 12), 0x08, 0x06, 0, 1)), 200, true},
		{"runt", hdr([]byte{1, 2, 3}), 22, true},
	} {
		if got := Coalesced(tc.first, tc.n); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

var nsSeq atomic.Int32

// netnsAdd makes a network namespace for the test and runs "ip -n NS CMD"
// for each of cmds in it; it removes it at the end. It needs root and ip:
// without them the test skips, except under CI.
func netnsAdd(t *testing.T, cmds ...string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI runs as root; this test must not skip there")
		}
		t.Skip("needs root to make a network namespace")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("ip (iproute2) is missing")
		}
		t.Skip("needs ip (iproute2)")
	}
	ns := fmt.Sprintf("ipnvxlan-%d-%d", os.Getpid(), nsSeq.Add(1))
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	netnsRun(t, ns, append([]string{"link set lo up"}, cmds...)...)
	return ns
}

func netnsRun(t *testing.T, ns string, cmds ...string) {
	t.Helper()
	for _, c := range cmds {
		if out, err := exec.Command("ip", append([]string{"-n", ns}, strings.Fields(c)...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip -n %s %s: %v\n%s", ns, c, err, out)
		}
	}
}

// csum16 is the Internet checksum of b.
func csum16(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// udpFrame returns an Ethernet frame from src to dst of an IPv4 UDP
// datagram from sip:7000 to dip:7001 holding payload (no UDP checksum).
func udpFrame(dst, src []byte, sip, dip netip.Addr, payload []byte) []byte {
	f := append(append(append([]byte(nil), dst...), src...), 0x08, 0x00)
	ip := make([]byte, 20)
	ip[0], ip[8], ip[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(ip[2:], uint16(28+len(payload)))
	copy(ip[12:], sip.AsSlice())
	copy(ip[16:], dip.AsSlice())
	binary.BigEndian.PutUint16(ip[10:], csum16(ip))
	u := make([]byte, 8)
	binary.BigEndian.PutUint16(u, 7000)
	binary.BigEndian.PutUint16(u[2:], 7001)
	binary.BigEndian.PutUint16(u[4:], uint16(8+len(payload)))
	return append(append(append(f, ip...), u...), payload...)
}

// A Linux VXLAN device on the far side of a veth takes the runs an end
// sends with UDP segmentation: the UDP datagrams in the frames reach a
// socket behind the device, each whole and in order. The other way, a
// run that a socket behind the device sends with UDP_SEGMENT leaves the
// device unsegmented, and the kernel hands it to the end's socket (UDP
// GRO on) as one datagram, the inner segment size for its size: the end
// cuts the inner datagrams out of it, checksums finished, instead of
// cutting it at that size.
func TestKernelVXLANRuns(t *testing.T) {
	kmac, mymac := []byte{2, 0, 0, 0, 0x95, 1}, []byte{2, 0, 0, 0, 0x95, 2}
	me := netnsAdd(t)
	kern := netnsAdd(t,
		"link add v0 type veth peer name v1 netns "+me,
		"addr add 10.95.0.1/24 dev v0",
		"link set v0 up",
		"link add vx0 address 02:00:00:00:95:01 type vxlan id 9 remote 10.95.0.2 dstport 4789 srcport 4789 4790 dev v0",
		"addr add 192.168.95.1/24 dev vx0",
		"link set vx0 up",
		"neigh add 192.168.95.2 lladdr 02:00:00:00:95:02 dev vx0")
	netnsRun(t, me, "addr add 10.95.0.2/24 dev v1", "link set v1 up")
	kip, myip := netip.MustParseAddr("192.168.95.1"), netip.MustParseAddr("192.168.95.2")
	var e *Endpoint
	var sock *net.UDPConn
	netnstest.In(t, me, func() { e = open(t, "10.95.0.1/vni=9") })
	netnstest.In(t, kern, func() { sock = listen(t, "192.168.95.1", 7001) })
	needOffloads(t, e)

	// The first frames may find the device not ready: until one passes.
	buf := make([]byte, 1<<16)
	for deadline := time.Now().Add(10 * time.Second); ; {
		if time.Now().After(deadline) {
			t.Fatal("no frame through the device in 10s")
		}
		e.Write([][]byte{udpFrame(kmac, mymac, myip, kip, []byte("hello"))})
		sock.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if _, err := sock.Read(buf); err == nil {
			break
		}
	}
	var frames, want [][]byte
	for i := 0; i < 40; i++ {
		n := 1400
		if i == 39 {
			n = 33
		}
		p := bytes.Repeat([]byte{byte(i)}, n)
		want = append(want, p)
		frames = append(frames, udpFrame(kmac, mymac, myip, kip, p))
	}
	before := e.Stats()
	if n, err := e.Write(frames); n != len(frames) || err != nil {
		t.Fatalf("Write: %d, %v", n, err)
	}
	sock.SetReadDeadline(time.Now().Add(5 * time.Second))
	for i := range want {
		n, err := sock.Read(buf)
		if err != nil {
			t.Fatalf("datagram %d of %d: %v", i, len(want), err)
		}
		if !bytes.Equal(buf[:n], want[i]) {
			t.Fatalf("datagram %d: %d bytes %x..., want %d bytes of %x", i, n, buf[:min(n, 4)], len(want[i]), want[i][0])
		}
	}
	if s := e.Stats(); s.SendGSO-before.SendGSO != 1 || s.SendCalls-before.SendCalls != 1 {
		t.Fatalf("stats %+v, before %+v: want one run in one call", s, before)
	}

	// The other way: 10 datagrams of 1000 bytes in one run.
	payload := bytes.Repeat([]byte("k"), 10000)
	oob := make([]byte, unix.CmsgSpace(2))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level, h.Type = unix.SOL_UDP, unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	binary.NativeEndian.PutUint16(oob[unix.CmsgLen(0):], 1000)
	to := &net.UDPAddr{IP: myip.AsSlice(), Port: 7000}
	if _, _, err := sock.WriteMsgUDP(payload, oob, to); err != nil {
		t.Fatalf("send a run behind the device: %v", err)
	}
	if _, err := sock.WriteToUDP([]byte("after"), to); err != nil {
		t.Fatal(err)
	}
	timer := time.AfterFunc(5*time.Second, func() { e.Close() })
	defer timer.Stop()
	bufs, sizes := [][]byte{make([]byte, 1<<16)}, []int{0}
	var segs int
	for {
		if _, err := e.Read(bufs, sizes); err != nil {
			t.Fatalf("no frame \"after\": %v", err)
		}
		f := bufs[0][:sizes[0]]
		if bytes.HasSuffix(f, []byte("after")) {
			break
		}
		if len(f) < EthHeaderLen+28 || !bytes.Equal(f[:6], mymac) || f[12] != 8 || f[13] != 0 {
			continue // ARP, IPv6 neighbour discovery
		}
		ip := f[EthHeaderLen:]
		if l := int(binary.BigEndian.Uint16(ip[2:])); l != 1028 || len(ip) != l {
			t.Fatalf("segment %d: a frame of %d bytes whose IP packet says %d, want 1028", segs, len(f), l)
		}
		if csum16(ip[:20]) != 0 {
			t.Fatalf("segment %d: IP header checksum wrong", segs)
		}
		// The UDP checksum, with the pseudo-header.
		ph := append(append(append([]byte(nil), ip[12:20]...), 0, 17), ip[24:26]...)
		if binary.BigEndian.Uint16(ip[26:]) == 0 || csum16(append(ph, ip[20:]...)) != 0 {
			t.Fatalf("segment %d: UDP checksum %#04x wrong", segs, binary.BigEndian.Uint16(ip[26:]))
		}
		if !bytes.Equal(ip[28:], payload[:1000]) {
			t.Fatalf("segment %d: payload %q...", segs, ip[28:40])
		}
		segs++
	}
	if segs != 10 {
		t.Fatalf("%d segments of the run, want 10", segs)
	}
}
