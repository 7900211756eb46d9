package vxvde

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipn-project/ipn/internal/netnstest"
)

var nsSeq atomic.Int32

// testNetns makes a network namespace for the test with one multicast
// interface (one end of a veth pair whose other end is down, 10.98.0.1/24,
// the route to 239.0.0.0/8) and removes
// it at the end. It needs root: without it the test skips, except under CI,
// where it fails.
func testNetns(t *testing.T) string {
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
	ns := fmt.Sprintf("ipnvxvde-%d-%d", os.Getpid(), nsSeq.Add(1))
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	ip("netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	for _, c := range []string{
		"link set lo up",
		"link add d0 type veth peer name d1",
		"addr add 10.98.0.1/24 dev d0",
		"link set d0 up",
		"route add 239.0.0.0/8 dev d0",
	} {
		ip(append([]string{"-n", ns}, strings.Fields(c)...)...)
	}
	return ns
}

func open(t *testing.T, spec string) *Endpoint {
	t.Helper()
	e, err := Open(context.Background(), spec)
	if err != nil {
		t.Fatalf("open vxvde://%s: %v", spec, err)
	}
	t.Cleanup(func() { e.Close() })
	return e.(*Endpoint)
}

func next(t *testing.T, e *Endpoint) []byte {
	t.Helper()
	ch := make(chan []byte, 1)
	go func() {
		bufs, sizes := [][]byte{make([]byte, 2048)}, []int{0}
		if n, err := e.Read(bufs, sizes); n == 1 && err == nil {
			ch <- bufs[0][:sizes[0]]
		}
		close(ch)
	}()
	select {
	case f, ok := <-ch:
		if !ok {
			t.Fatal("read failed")
		}
		return f
	case <-time.After(5 * time.Second):
		e.Close()
		t.Fatal("no frame in 5s")
	}
	return nil
}

var bcast = []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

func mac(b byte) []byte { return []byte{2, 0, 0, 0, 0, b} }

func frame(dst, src []byte, s string) []byte {
	return append(append(append(append([]byte(nil), dst...), src...), 0x08, 0x00), s...)
}

func expect(t *testing.T, e *Endpoint, name string, want []byte) {
	t.Helper()
	if got := next(t, e); !bytes.Equal(got, want) {
		t.Fatalf("%s got %q, want %q", name, got, want)
	}
}

// Three members on one host: broadcasts reach the others and never come
// back to their sender; unicast goes to the learnt member alone; a member
// that closes is forgotten.
func TestMembersOnOneHost(t *testing.T) {
	ns := testNetns(t)
	var a, b, c *Endpoint
	var tap, raw *net.UDPConn // tap listens to the group; raw sends to it
	netnstest.In(t, ns, func() {
		a, b, c = open(t, ""), open(t, "239.0.0.1"), open(t, "239.0.0.1/port=14789/vni=1")
		var err error
		tap, err = net.ListenMulticastUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(239, 0, 0, 1), Port: DefaultPort})
		if err != nil {
			t.Fatal(err)
		}
		if raw, err = net.ListenUDP("udp4", nil); err != nil {
			t.Fatal(err)
		}
	})
	defer tap.Close()
	defer raw.Close()

	f1 := frame(bcast, mac(1), "a to all")
	a.Write([][]byte{f1})
	expect(t, b, "b", f1)
	expect(t, c, "c", f1)
	// On the wire: the VXLAN header with VNI 1, from a's unicast port.
	tap.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2048)
	n, from, err := tap.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatal(err)
	}
	if want := append([]byte{0x08, 0, 0, 0, 0, 0, 1, 0}, f1...); !bytes.Equal(buf[:n], want) {
		t.Fatalf("datagram %x, want %x", buf[:n], want)
	}
	if from.Port() != uint16(a.UnicastAddr().Port) {
		t.Fatalf("sent from %v, want a's unicast port %d", from, a.UnicastAddr().Port)
	}

	// b learnt mac 1 behind a: its reply is unicast, and a's first frame
	// is the reply, not its own broadcast looped back.
	f2 := frame(mac(1), mac(2), "b to a")
	b.Write([][]byte{f2})
	expect(t, a, "a", f2)
	if got := a.FDB().Lookup(mac(2)); got == nil || got.Port != b.UnicastAddr().Port {
		t.Fatalf("a learnt mac 2 at %v, want b's port %d", got, b.UnicastAddr().Port)
	}
	f3 := frame(bcast, mac(1), "marker")
	a.Write([][]byte{f3})
	expect(t, c, "c (b's unicast must not reach it)", f3)
	expect(t, b, "b", f3)

	// Another VNI, bad flags and runts are ignored.
	group := net.UDPAddrFromAddrPort(netip.AddrPortFrom(DefaultGroup, DefaultPort))
	for _, d := range [][]byte{
		append([]byte{0x08, 0, 0, 0, 0, 0, 2, 0}, frame(bcast, mac(9), "vni 2")...),
		append([]byte{0x0c, 0, 0, 0, 0, 0, 1, 0}, frame(bcast, mac(9), "bad flags")...),
		{0x08, 0, 0, 0, 0, 0, 1, 0, 1, 2, 3},
		append([]byte{0x08, 0, 0, 0, 0, 0, 1, 0}, frame(bcast, mac(9), "vni 1")...),
	} {
		if _, err := raw.WriteToUDP(d, group); err != nil {
			t.Fatal(err)
		}
	}
	expect(t, a, "a", frame(bcast, mac(9), "vni 1"))

	// b leaves: a forgets the MACs behind it.
	b.Close()
	deadline := time.Now().Add(5 * time.Second)
	for a.FDB().Lookup(mac(2)) != nil {
		if time.Now().After(deadline) {
			t.Fatal("a still knows mac 2 after b left")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if a.FDB().Lookup(mac(9)) == nil {
		t.Fatal("a forgot mac 9 too")
	}
}

func TestCloseUnblocksRead(t *testing.T) {
	ns := testNetns(t)
	var a *Endpoint
	netnstest.In(t, ns, func() { a = open(t, "") })
	errc := make(chan error, 1)
	go func() {
		_, err := a.Read([][]byte{make([]byte, 100)}, []int{0})
		errc <- err
	}()
	time.Sleep(20 * time.Millisecond) // likely inside Read; it must end either way
	a.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read after close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not unblock Read")
	}
	if _, err := a.Write([][]byte{frame(bcast, mac(1), "x")}); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after close: %v", err)
	}
}

func TestParseSpec(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		spec  string
		group string
		port  int
		vni   uint32
	}{
		{"", "239.0.0.1", 14789, 1},
		{"239.2.3.4", "239.2.3.4", 14789, 1},
		{"239.2.3.4:5000", "239.2.3.4", 5000, 1},
		{":5000", "239.0.0.1", 5000, 1},
		{"239.2.3.4/port=6000/vni=9", "239.2.3.4", 6000, 9},
		{"/v6", "ff05:56de::1", 14789, 1},
		{"[ff05::2]:7", "ff05::2", 7, 1},
	} {
		c, err := ParseSpec(ctx, tc.spec)
		if err != nil || c.Group != netip.MustParseAddr(tc.group) || c.Port != tc.port || c.VNI != tc.vni {
			t.Errorf("%q: %+v %v", tc.spec, c, err)
		}
	}
	for _, bad := range []string{"10.0.0.1", "/vni=99999999", "/bogus", "239.0.0.1:0", "/expiretime=0"} {
		if _, err := ParseSpec(ctx, bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
	if c, _ := ParseSpec(ctx, "/expiretime=5/hashsize=10/ttl=2"); c.Expire != 5*time.Second || c.Size != 10 || c.TTL != 2 {
		t.Errorf("options: %+v", c)
	}
}

// With allow=127.0.0.2/32 a member drops what 127.0.0.3 sends, to the
// group or to its unicast port, before it learns from it or heeds its
// leave; what 127.0.0.2 sends gets in. Without allow both get in. The
// group is joined on lo, where the two addresses play two hosts; each
// dropped datagram is followed, on the same socket, by one that gets in.
func TestAllow(t *testing.T) {
	for _, tc := range []struct {
		name, opt string
		stranger  bool // 127.0.0.3 gets in
	}{
		{"open", "", true},
		{"allow", "/allow=127.0.0.2/32", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := testNetns(t)
			var e *Endpoint
			var friend, stranger *net.UDPConn
			netnstest.In(t, ns, func() {
				e = open(t, "239.0.0.1/if=lo"+tc.opt)
				var err error
				if friend, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)}); err != nil {
					t.Fatal(err)
				}
				if stranger, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 3)}); err != nil {
					t.Fatal(err)
				}
			})
			defer friend.Close()
			defer stranger.Close()
			send := func(c *net.UDPConn, to netip.AddrPort, f []byte) {
				t.Helper()
				if _, err := c.WriteToUDPAddrPort(append([]byte{0x08, 0, 0, 0, 0, 0, 1, 0}, f...), to); err != nil {
					t.Fatal(err)
				}
			}
			group := netip.AddrPortFrom(DefaultGroup, DefaultPort)
			uni := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(e.UnicastAddr().Port))
			for _, to := range []netip.AddrPort{group, uni} {
				fs, ff := frame(bcast, mac(3), "stranger to "+to.String()), frame(bcast, mac(2), "friend to "+to.String())
				send(stranger, to, fs)
				send(friend, to, ff)
				if tc.stranger {
					expect(t, e, "member", fs)
				}
				expect(t, e, "member", ff)
			}
			if got, want := e.FDB().Lookup(mac(2)), friend.LocalAddr().(*net.UDPAddr).AddrPort(); got == nil || got.AddrPort() != want {
				t.Errorf("friend's MAC learnt at %v, want %v", got, want)
			}
			if got := e.FDB().Lookup(mac(3)); (got != nil) != tc.stranger {
				t.Errorf("stranger's MAC learnt at %v, want learnt %v", got, tc.stranger)
			}

			// The stranger leaves (a header alone), to the group and to the
			// unicast port: the MACs behind it go only if it got in.
			behind := stranger.LocalAddr().(*net.UDPAddr).AddrPort()
			for _, to := range []netip.AddrPort{group, uni} {
				e.FDB().Learn(mac(4), behind)
				if _, err := stranger.WriteToUDPAddrPort([]byte{0x08, 0, 0, 0, 0, 0, 1, 0}, to); err != nil {
					t.Fatal(err)
				}
				f := frame(bcast, mac(2), "after the leave to "+to.String())
				send(friend, to, f)
				expect(t, e, "member", f)
				if got := e.FDB().Lookup(mac(4)); (got == nil) != tc.stranger {
					t.Errorf("after the stranger's leave to %v, its MAC is at %v; want forgotten %v", to, got, tc.stranger)
				}
			}
		})
	}
}

func TestParseSpecAllow(t *testing.T) {
	ctx := context.Background()
	c, err := ParseSpec(ctx, "/allow=10.0.0.0/8,192.168.5.0/24/vni=7")
	if err != nil || c.VNI != 7 || c.Group != DefaultGroup || c.Allow.String() != "10.0.0.0/8,192.168.5.0/24" {
		t.Errorf("allow: %+v %v", c, err)
	}
	c, err = ParseSpec(ctx, "/v6/allow=fd00::/64,fe80::/10/v6/port=9")
	if err != nil || c.Group != DefaultGroup6 || c.Port != 9 || c.Allow.String() != "fd00::/64,fe80::/10" {
		t.Errorf("v6 allow: %+v %v", c, err)
	}
	if c, err = ParseSpec(ctx, ""); err != nil || c.Allow != nil {
		t.Errorf("default: %+v %v", c, err)
	}
	for _, tc := range []struct{ spec, names string }{
		{"/allow=10.0.0.0/33", `"10.0.0.0/33"`},
		{"/allow=10.0.0.1,example.com/vni=2", `"example.com"`},
		{"/allow=", "empty list"},
		{"/allow=fd00::/64/v6/8", `"8"`},
	} {
		_, err := ParseSpec(ctx, tc.spec)
		if err == nil {
			t.Errorf("%q parsed", tc.spec)
		} else if !strings.Contains(err.Error(), tc.names) {
			t.Errorf("%q: error %q does not name %s", tc.spec, err, tc.names)
		}
	}
}
