package vxlan

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"
)

// freePort returns a UDP port free on every address of addrs a moment ago.
func freePort(t *testing.T, addrs ...string) int {
	t.Helper()
	for try := 0; try < 50; try++ {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(addrs[0])})
		if err != nil {
			t.Fatal(err)
		}
		port := c.LocalAddr().(*net.UDPAddr).Port
		ok := true
		var others []*net.UDPConn
		for _, a := range addrs[1:] {
			o, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(a), Port: port})
			if err != nil {
				ok = false
				break
			}
			others = append(others, o)
		}
		c.Close()
		for _, o := range others {
			o.Close()
		}
		if ok {
			return port
		}
	}
	t.Fatal("no port free on all of", addrs)
	return 0
}

func open(t *testing.T, spec string) *Endpoint {
	t.Helper()
	e, err := Open(context.Background(), spec)
	if err != nil {
		t.Fatalf("open vxlan://%s: %v", spec, err)
	}
	t.Cleanup(func() { e.Close() })
	return e.(*Endpoint)
}

// next reads one frame within d.
func next(t *testing.T, e *Endpoint, d time.Duration) []byte {
	t.Helper()
	type result struct {
		f   []byte
		err error
	}
	ch := make(chan result, 1)
	go func() {
		bufs, sizes := [][]byte{make([]byte, 2048)}, []int{0}
		n, err := e.Read(bufs, sizes)
		if n == 1 {
			ch <- result{append([]byte(nil), bufs[0][:sizes[0]]...), nil}
			return
		}
		ch <- result{nil, fmt.Errorf("read %d: %w", n, err)}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatal(r.err)
		}
		return r.f
	case <-time.After(d):
		e.Close()
		t.Fatalf("no frame in %v", d)
	}
	return nil
}

func frame(src byte, s string) []byte {
	return append([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, src, 0x08, 0x00}, s...)
}

func TestHeader(t *testing.T) {
	b := make([]byte, HeaderLen)
	PutHeader(b, 0x123456)
	if want := []byte{0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0}; !bytes.Equal(b, want) {
		t.Fatalf("header %x, want %x", b, want)
	}
	if vni, ok := ParseHeader(b); !ok || vni != 0x123456 {
		t.Fatalf("parse: %x %v", vni, ok)
	}
	for _, bad := range [][]byte{{0x08, 0, 0}, {0, 0, 0, 0, 0, 0, 1, 0}, {0x0c, 0, 0, 0, 0, 0, 1, 0}} {
		if _, ok := ParseHeader(bad); ok {
			t.Errorf("%x parsed", bad)
		}
	}
	// Reserved bytes are ignored on receipt (RFC 7348).
	if vni, ok := ParseHeader([]byte{0x08, 1, 2, 3, 0, 0, 9, 4}); !ok || vni != 9 {
		t.Errorf("reserved bytes: %d %v", vni, ok)
	}
}

// Two unicast tunnel ends with the same VNI exchange frames; datagrams
// with another VNI, bad flags, no room for an Ethernet header or from
// another address are ignored.
func TestUnicastPair(t *testing.T) {
	port := freePort(t, "127.0.0.1", "127.0.0.2", "127.0.0.3")
	a := open(t, fmt.Sprintf("127.0.0.2:%d/vni=5/local=127.0.0.1", port))
	b := open(t, fmt.Sprintf("127.0.0.1/port=%d/vni=5/local=127.0.0.2", port))
	if _, err := a.Write([][]byte{frame(1, "hello b"), {1, 2, 3}, frame(1, "again")}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"hello b", "again"} {
		if got := next(t, b, 5*time.Second); !bytes.Equal(got, frame(1, want)) {
			t.Fatalf("b got %q, want %q", got, want)
		}
	}
	b.Write([][]byte{frame(2, "hello a")})
	if got := next(t, a, 5*time.Second); !bytes.Equal(got, frame(2, "hello a")) {
		t.Fatalf("a got %q", got)
	}

	// Raw datagrams to b from a's address and port (a is gone) and from an
	// address that is not b's peer.
	a.Close()
	raw, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	stranger, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 3)})
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	to := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2), Port: port}
	send := func(c *net.UDPConn, hdr []byte, f []byte) {
		t.Helper()
		if _, err := c.WriteToUDP(append(append([]byte(nil), hdr...), f...), to); err != nil {
			t.Fatal(err)
		}
	}
	send(raw, []byte{0x08, 0, 0, 0, 0, 0, 6, 0}, frame(3, "vni 6"))
	send(raw, []byte{0x00, 0, 0, 0, 0, 0, 5, 0}, frame(3, "no I flag"))
	send(raw, []byte{0x08, 0, 0, 0, 0, 0, 5, 0}, []byte{1, 2, 3})
	send(stranger, []byte{0x08, 0, 0, 0, 0, 0, 5, 0}, frame(3, "stranger"))
	send(raw, []byte{0x08, 0, 0, 0, 0, 0, 5, 0}, frame(3, "vni 5"))
	if got := next(t, b, 5*time.Second); !bytes.Equal(got, frame(3, "vni 5")) {
		t.Fatalf("b got %q, want only the frame of VNI 5 from its peer", got)
	}
}

// What goes on the wire: the RFC 7348 header, then the frame, to the
// peer's VXLAN port.
func TestWireFormat(t *testing.T) {
	port := freePort(t, "127.0.0.1", "127.0.0.3")
	peer, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 3), Port: port})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	a := open(t, fmt.Sprintf("127.0.0.3:%d/vni=1193046/local=127.0.0.1", port))
	f := frame(1, "on the wire")
	a.Write([][]byte{f})
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2048)
	n, from, err := peer.ReadFromUDP(buf)
	if err != nil {
		t.Fatal(err)
	}
	want := append([]byte{0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0}, f...)
	if !bytes.Equal(buf[:n], want) {
		t.Fatalf("datagram %x, want %x", buf[:n], want)
	}
	if !from.IP.Equal(net.IPv4(127, 0, 0, 1)) {
		t.Fatalf("from %v", from)
	}
}

func TestCloseUnblocksRead(t *testing.T) {
	port := freePort(t, "127.0.0.1")
	a := open(t, fmt.Sprintf("127.0.0.2:%d/vni=1/local=127.0.0.1", port))
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
}

func TestParseSpec(t *testing.T) {
	ctx := context.Background()
	c, err := ParseSpec(ctx, "239.1.1.1/vni=7")
	if err != nil || c.Addr != netip.MustParseAddr("239.1.1.1") || c.Port != DefaultPort || c.VNI != 7 || c.TTL != 1 {
		t.Errorf("group: %+v %v", c, err)
	}
	c, err = ParseSpec(ctx, "10.0.0.1:8472/vni=42/ttl=3/if=eth0")
	if err != nil || c.Port != 8472 || c.VNI != 42 || c.TTL != 3 || c.Interface != "eth0" {
		t.Errorf("peer: %+v %v", c, err)
	}
	c, err = ParseSpec(ctx, "[ff05::7]:9/vni=1")
	if err != nil || c.Addr != netip.MustParseAddr("ff05::7") || c.Port != 9 {
		t.Errorf("v6: %+v %v", c, err)
	}
	if _, err = ParseSpec(ctx, "10.0.0.1"); err == nil || !strings.Contains(err.Error(), "vni=") {
		t.Errorf("no vni: %v, want an error that asks for vni=", err)
	}
	if c, err = ParseSpec(ctx, "10.0.0.1/vni=0"); err != nil || c.VNI != 0 {
		t.Errorf("vni 0: %+v %v", c, err)
	}
	for _, bad := range []string{"", "/vni=1", "10.0.0.1/vni=16777216", "10.0.0.1/vni=x", "10.0.0.1:0", "10.0.0.1/bogus=1", "10.0.0.1/ttl=0"} {
		if _, err := ParseSpec(ctx, bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestFDB(t *testing.T) {
	now := time.Unix(1000, 0)
	f := NewFDB(2, 10*time.Second)
	f.now = func() time.Time { return now }
	m1, m2, m3 := []byte{2, 0, 0, 0, 0, 1}, []byte{2, 0, 0, 0, 0, 2}, []byte{2, 0, 0, 0, 0, 3}
	h1, h2 := netip.MustParseAddrPort("10.0.0.1:4789"), netip.MustParseAddrPort("10.0.0.2:4789")
	f.Learn(m1, h1)
	f.Learn([]byte{3, 0, 0, 0, 0, 9}, h1) // a group MAC as source: not learnt
	if a := f.Lookup(m1); a == nil || a.AddrPort() != h1 {
		t.Fatalf("m1: %v", a)
	}
	if f.Len() != 1 {
		t.Fatalf("len %d", f.Len())
	}
	f.Learn(m1, h2) // moved
	if a := f.Lookup(m1); a.AddrPort() != h2 {
		t.Fatalf("m1 moved: %v", a)
	}
	f.Learn(m2, h1)
	f.Learn(m3, h1) // full of live entries: not learnt
	if f.Lookup(m3) != nil {
		t.Fatal("m3 learnt in a full table")
	}
	now = now.Add(11 * time.Second)
	if f.Lookup(m1) != nil {
		t.Fatal("m1 did not expire")
	}
	f.Learn(m3, h1) // the sweep makes room
	if f.Lookup(m3) == nil || f.Len() != 1 {
		t.Fatalf("m3 after the sweep: %v, len %d", f.Lookup(m3), f.Len())
	}
	f.Learn(m2, h2)
	f.Forget(h1)
	if f.Lookup(m3) != nil || f.Lookup(m2) == nil {
		t.Fatal("Forget removed the wrong entries")
	}
}

// listen opens a UDP socket on ip:port (0: any port) to play a host.
func listen(t *testing.T, ip string, port int) *net.UDPConn {
	t.Helper()
	a := netip.MustParseAddr(ip)
	c, err := net.ListenUDP(udpNet(a), net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, uint16(port))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func udpNet(a netip.Addr) string {
	if a.Is4() {
		return "udp4"
	}
	return "udp6"
}

// sendVX sends f from c to to as a VXLAN datagram of network vni.
func sendVX(t *testing.T, c *net.UDPConn, to string, vni uint32, f []byte) {
	t.Helper()
	d := make([]byte, HeaderLen, HeaderLen+len(f))
	PutHeader(d, vni)
	if _, err := c.WriteToUDPAddrPort(append(d, f...), netip.MustParseAddrPort(to)); err != nil {
		t.Fatal(err)
	}
}

func portOf(c *net.UDPConn) int { return c.LocalAddr().(*net.UDPAddr).Port }

// A unicast end takes its peer's datagrams from PORT alone by default, and
// from the ports srcport names when it is given; a frame from another
// port is dropped (were it not, it would be read first: the peer's next
// frame, from an accepted port, follows it on the loopback).
func TestUnicastSourcePort(t *testing.T) {
	t.Run("default", func(t *testing.T) {
		p := freePort(t, "127.0.0.1", "127.0.0.2")
		b := open(t, fmt.Sprintf("127.0.0.1:%d/vni=1/local=127.0.0.2", p))
		to := fmt.Sprintf("127.0.0.2:%d", p)
		other, atPort := listen(t, "127.0.0.1", 0), listen(t, "127.0.0.1", p)
		sendVX(t, other, to, 1, frame(1, "from another port"))
		sendVX(t, atPort, to, 1, frame(1, "from PORT"))
		if got := next(t, b, 5*time.Second); !bytes.Equal(got, frame(1, "from PORT")) {
			t.Fatalf("got %q, want the frame from PORT", got)
		}
	})
	t.Run("range", func(t *testing.T) {
		in := listen(t, "127.0.0.1", 0)
		p := freePort(t, "127.0.0.1", "127.0.0.2")
		lo, hi := portOf(in), portOf(in)+1
		if p == hi {
			lo, hi = lo-1, lo
		}
		b := open(t, fmt.Sprintf("127.0.0.1:%d/vni=1/local=127.0.0.2/srcport=%d-%d", p, lo, hi))
		to := fmt.Sprintf("127.0.0.2:%d", p)
		atPort := listen(t, "127.0.0.1", p) // PORT is not in the range
		out := listen(t, "127.0.0.1", 0)
		for portOf(out) >= lo && portOf(out) <= hi {
			out = listen(t, "127.0.0.1", 0)
		}
		sendVX(t, atPort, to, 1, frame(1, "from PORT"))
		sendVX(t, out, to, 1, frame(1, "outside"))
		sendVX(t, in, to, 1, frame(1, "inside"))
		if got := next(t, b, 5*time.Second); !bytes.Equal(got, frame(1, "inside")) {
			t.Fatalf("got %q, want the frame from inside %d-%d", got, lo, hi)
		}
	})
	t.Run("ipv6", func(t *testing.T) {
		probe, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback})
		if err != nil {
			t.Skipf("no IPv6 loopback: %v", err)
		}
		p := portOf(probe)
		probe.Close()
		in, other := listen(t, "::1", 0), listen(t, "::1", 0)
		b := open(t, fmt.Sprintf("[::1]:%d/vni=1/local=::1/srcport=%d", p, portOf(in)))
		to := fmt.Sprintf("[::1]:%d", p)
		sendVX(t, other, to, 1, frame(1, "from another port"))
		sendVX(t, in, to, 1, frame(1, "from srcport"))
		if got := next(t, b, 5*time.Second); !bytes.Equal(got, frame(1, "from srcport")) {
			t.Fatalf("got %q, want the frame from srcport", got)
		}
	})
}

// A multicast end with allow=127.0.0.2/32 neither delivers nor learns the
// frames of 127.0.0.3; without allow it takes both. The group is joined
// on lo, where 127.0.0.2 and 127.0.0.3 play two hosts.
func TestMulticastAllow(t *testing.T) {
	for _, tc := range []struct {
		name, opt string
		stranger  bool // 127.0.0.3 gets in
	}{
		{"open", "", true},
		{"allow", "/allow=127.0.0.2/32", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := freePort(t, "0.0.0.0")
			spec := fmt.Sprintf("239.193.77.1:%d/if=lo%s/vni=3", p, tc.opt)
			cfg, err := ParseSpec(context.Background(), spec)
			if err != nil {
				t.Fatalf("vxlan://%s: %v", spec, err)
			}
			e, err := New(context.Background(), cfg)
			if err != nil {
				if os.Getenv("CI") != "" {
					t.Fatalf("CI can join a group on lo: %v", err)
				}
				t.Skipf("no multicast on lo: %v", err)
			}
			t.Cleanup(func() { e.Close() })
			to := fmt.Sprintf("239.193.77.1:%d", p)
			friend, stranger := listen(t, "127.0.0.2", 0), listen(t, "127.0.0.3", 0)
			sendVX(t, stranger, to, 3, frame(3, "stranger"))
			sendVX(t, friend, to, 3, frame(2, "friend"))
			if tc.stranger {
				if got := next(t, e, 5*time.Second); !bytes.Equal(got, frame(3, "stranger")) {
					t.Fatalf("got %q, want the stranger's frame", got)
				}
			}
			if got := next(t, e, 5*time.Second); !bytes.Equal(got, frame(2, "friend")) {
				t.Fatalf("got %q, want the friend's frame", got)
			}
			if a := e.FDB().Lookup([]byte{2, 0, 0, 0, 0, 2}); a == nil || a.AddrPort() != netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), uint16(p)) {
				t.Errorf("friend's MAC learnt at %v, want 127.0.0.2:%d", a, p)
			}
			if a := e.FDB().Lookup([]byte{2, 0, 0, 0, 0, 3}); (a != nil) != tc.stranger {
				t.Errorf("stranger's MAC learnt at %v, want learnt %v", a, tc.stranger)
			}
		})
	}
}

func TestParseSpecSources(t *testing.T) {
	ctx := context.Background()
	c, err := ParseSpec(ctx, "239.1.1.1/allow=10.0.0.0/8,192.168.5.0/24,fd00::/64/vni=7/ttl=2")
	if err != nil || c.VNI != 7 || c.TTL != 2 || c.Allow.String() != "10.0.0.0/8,192.168.5.0/24,fd00::/64" {
		t.Errorf("allow: %+v %v", c, err)
	}
	c, err = ParseSpec(ctx, "[ff05::7]/vni=3/allow=fd00::/64,192.0.2.1")
	if err != nil || c.VNI != 3 || c.Allow.String() != "fd00::/64,192.0.2.1" {
		t.Errorf("v6 allow: %+v %v", c, err)
	}
	c, err = ParseSpec(ctx, "10.0.0.1/srcport=32768-60999/vni=4")
	if err != nil || c.SrcPortMin != 32768 || c.SrcPortMax != 60999 || c.VNI != 4 {
		t.Errorf("srcport range: %+v %v", c, err)
	}
	if c, err = ParseSpec(ctx, "10.0.0.1/srcport=4790/vni=1"); err != nil || c.SrcPortMin != 4790 || c.SrcPortMax != 4790 {
		t.Errorf("srcport: %+v %v", c, err)
	}
	if c, err = ParseSpec(ctx, "10.0.0.1/vni=1"); err != nil || c.SrcPortMin != 0 || c.Allow != nil {
		t.Errorf("defaults: %+v %v", c, err)
	}
	for _, tc := range []struct{ spec, names string }{
		{"10.0.0.1/srcport=0", `"0"`},
		{"10.0.0.1/srcport=5000-4000", `"5000-4000"`},
		{"10.0.0.1/srcport=1-65536", `"1-65536"`},
		{"10.0.0.1/srcport=x", `"x"`},
		{"10.0.0.1/srcport=", `""`},
		{"239.1.1.1/srcport=4789/vni=1", "srcport=4789-4789"},
		{"10.0.0.1/allow=10.0.0.0/8/vni=1", "allow=10.0.0.0/8"},
		{"239.1.1.1/allow=10.0.0.0/33", `"10.0.0.0/33"`},
		{"239.1.1.1/allow=10.0.0.1,bogus/vni=2", `"bogus"`},
		{"239.1.1.1/allow=", "empty list"},
		{"239.1.1.1/allow=10.0.0.0//8", `"8"`},
	} {
		_, err := ParseSpec(ctx, tc.spec)
		if err == nil {
			t.Errorf("%q parsed", tc.spec)
		} else if !strings.Contains(err.Error(), tc.names) {
			t.Errorf("%q: error %q does not name %s", tc.spec, err, tc.names)
		}
	}
}
