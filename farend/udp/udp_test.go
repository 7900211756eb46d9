package udp_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ipn-project/ipn/endpoint"
	"github.com/ipn-project/ipn/farend/udp"
)

// freePorts returns n UDP ports free on 127.0.0.1 a moment ago.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	var conns []*net.UDPConn
	for i := 0; i < n; i++ {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		ports = append(ports, c.LocalAddr().(*net.UDPAddr).Port)
	}
	for _, c := range conns {
		c.Close()
	}
	return ports
}

func open(t *testing.T, spec string) endpoint.Endpoint {
	t.Helper()
	e, err := udp.Open(context.Background(), spec)
	if err != nil {
		t.Fatalf("open %s: %v", spec, err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// pair opens two endpoints cabled to each other on the loopback.
func pair(t *testing.T) (a, b endpoint.Endpoint, pa, pb int) {
	t.Helper()
	p := freePorts(t, 2)
	a = open(t, fmt.Sprintf("127.0.0.1:%d/127.0.0.1:%d", p[0], p[1]))
	b = open(t, fmt.Sprintf("%d/127.0.0.1:%d", p[1], p[0]))
	return a, b, p[0], p[1]
}

// readFrames reads until it has n frames or d passes.
func readFrames(t *testing.T, e endpoint.Endpoint, n int, d time.Duration) [][]byte {
	t.Helper()
	type result struct {
		frames [][]byte
		err    error
	}
	ch := make(chan result, 1)
	go func() {
		var got [][]byte
		bufs := make([][]byte, e.BatchSize())
		sizes := make([]int, len(bufs))
		for i := range bufs {
			bufs[i] = make([]byte, 2048)
		}
		for len(got) < n {
			k, err := e.Read(bufs, sizes)
			for i := 0; i < k; i++ {
				got = append(got, append([]byte(nil), bufs[i][:min(sizes[i], len(bufs[i]))]...))
			}
			if err != nil {
				ch <- result{got, err}
				return
			}
		}
		ch <- result{got, nil}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("read after %d frames: %v", len(r.frames), r.err)
		}
		return r.frames
	case <-time.After(d):
		e.Close()
		t.Fatalf("no %d frames in %v", n, d)
	}
	return nil
}

func frame(s string) []byte {
	return append([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1, 0x08, 0x00}, s...)
}

func TestExchange(t *testing.T) {
	a, b, _, _ := pair(t)
	want := [][]byte{frame("one"), frame("two"), frame("three")}
	if n, err := a.Write(want); n != 3 || err != nil {
		t.Fatalf("write: %d %v", n, err)
	}
	got := readFrames(t, b, 3, 5*time.Second)
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Errorf("frame %d: got %x, want %x", i, got[i], want[i])
		}
	}
	if _, err := b.Write([][]byte{frame("back")}); err != nil {
		t.Fatal(err)
	}
	if got := readFrames(t, a, 1, 5*time.Second); !bytes.Equal(got[0], frame("back")) {
		t.Errorf("got %x", got[0])
	}
}

// Datagrams from anywhere but REMOTE are ignored.
func TestOnlyRemoteIsAccepted(t *testing.T) {
	a, b, _, pb := pair(t)
	other, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: pb})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := other.Write(frame("intruder")); err != nil {
		t.Fatal(err)
	}
	a.Write([][]byte{frame("from a")})
	if got := readFrames(t, b, 1, 5*time.Second); !bytes.Equal(got[0], frame("from a")) {
		t.Fatalf("got %q, want the frame from a", got[0])
	}
}

// A far end that is not there loses frames; it does not end the cable.
func TestNoPeerIsNotAnError(t *testing.T) {
	p := freePorts(t, 2)
	a := open(t, fmt.Sprintf("127.0.0.1:%d/127.0.0.1:%d", p[0], p[1]))
	for i := 0; i < 5; i++ { // ICMP port unreachable comes back in between
		if _, err := a.Write([][]byte{frame("lost")}); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		time.Sleep(time.Millisecond)
	}
	b := open(t, fmt.Sprintf("127.0.0.1:%d/127.0.0.1:%d", p[1], p[0]))
	b.Write([][]byte{frame("late")})
	if got := readFrames(t, a, 1, 5*time.Second); !bytes.Equal(got[0], frame("late")) {
		t.Fatalf("got %q", got[0])
	}
}

func TestTruncated(t *testing.T) {
	a, b, _, _ := pair(t)
	a.Write([][]byte{frame("a frame longer than the buffer")})
	bufs, sizes := [][]byte{make([]byte, 10)}, []int{0}
	n, err := b.Read(bufs, sizes)
	if n != 1 || err != nil || sizes[0] <= 10 {
		t.Fatalf("got n=%d err=%v size=%d, want a size over 10", n, err, sizes[0])
	}
}

func TestIPv6(t *testing.T) {
	c, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback})
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	p1 := c.LocalAddr().(*net.UDPAddr).Port
	c2, _ := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback})
	p2 := c2.LocalAddr().(*net.UDPAddr).Port
	c.Close()
	c2.Close()
	a := open(t, fmt.Sprintf("[::1]:%d/[::1]:%d", p1, p2))
	b := open(t, fmt.Sprintf("[::1]:%d/[::1]:%d", p2, p1))
	a.Write([][]byte{frame("v6")})
	if got := readFrames(t, b, 1, 5*time.Second); !bytes.Equal(got[0], frame("v6")) {
		t.Fatalf("got %q", got[0])
	}
}

func TestCloseUnblocksRead(t *testing.T) {
	a, _, _, _ := pair(t)
	errc := make(chan error, 1)
	go func() {
		_, err := a.Read([][]byte{make([]byte, 100)}, []int{0})
		errc <- err
	}()
	time.Sleep(20 * time.Millisecond) // let Read block; it must end either way
	a.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read after close: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not unblock Read")
	}
	if _, err := a.Write([][]byte{frame("x")}); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after close: %v", err)
	}
	if err := a.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
}

func TestBadSpecs(t *testing.T) {
	for _, s := range []string{"", "5000", "5000/", "5000/127.0.0.1", "x/127.0.0.1:1", "5000/127.0.0.1:99999", "[::1/[::1]:1"} {
		if e, err := udp.Open(context.Background(), s); err == nil {
			e.Close()
			t.Errorf("udp://%s opened", s)
		}
	}
}

func TestSplitHostPort(t *testing.T) {
	for _, tc := range []struct {
		in   string
		host string
		port int
	}{
		{"10.0.0.1", "10.0.0.1", 7}, {"10.0.0.1:80", "10.0.0.1", 80}, {":80", "", 80},
		{"[ff05::1]", "ff05::1", 7}, {"[ff05::1]:9", "ff05::1", 9}, {"ff05::1", "ff05::1", 7},
		{"", "", 7}, {"host.example:1", "host.example", 1},
	} {
		h, p, err := udp.SplitHostPort(tc.in, 7)
		if err != nil || h != tc.host || p != tc.port {
			t.Errorf("%q: got %q %d %v, want %q %d", tc.in, h, p, err, tc.host, tc.port)
		}
	}
}

func TestSplitOptions(t *testing.T) {
	for _, tc := range []struct {
		in    string
		flags []string
		want  []string
	}{
		{"", nil, nil},
		{"vni=7/port=9", nil, []string{"vni=7", "port=9"}},
		{"allow=10.0.0.0/8,192.168.5.0/24/vni=7", nil, []string{"allow=10.0.0.0/8,192.168.5.0/24", "vni=7"}},
		{"vni=7/allow=fd00::/64,10.1.2.3/v6", []string{"v4", "v6"}, []string{"vni=7", "allow=fd00::/64,10.1.2.3", "v6"}},
		{"v6/8", []string{"v6"}, []string{"v6", "8"}},               // a flag has no value to go on
		{"allow=10.0.0.0//8", nil, []string{"allow=10.0.0.0", "8"}}, // an empty segment ends it
		{"bogus/vni=1/", nil, []string{"bogus", "vni=1"}},
	} {
		got := udp.SplitOptions(tc.in, tc.flags...)
		if !slices.Equal(got, tc.want) {
			t.Errorf("%q: got %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestAllow(t *testing.T) {
	a, err := udp.ParseAllow("10.0.0.0/8,192.168.5.7,fd00::/64,::ffff:172.16.0.0/108,10.1.2.3/16")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := a.String(), "10.0.0.0/8,192.168.5.7,fd00::/64,172.16.0.0/12,10.1.0.0/16"; got != want {
		t.Errorf("String %q, want %q", got, want)
	}
	for addr, want := range map[string]bool{
		"10.200.0.1": true, "11.0.0.1": false, "192.168.5.7": true, "192.168.5.8": false,
		"fd00::1": true, "fd00:0:0:1::1": false, "fd00::1%eth0": true, "::ffff:10.0.0.1": true,
		"172.31.255.255": true, "172.32.0.0": false, "::1": false,
	} {
		if got := a.Contains(netip.MustParseAddr(addr)); got != want {
			t.Errorf("Contains(%s) = %v, want %v", addr, got, want)
		}
	}
	if !udp.Allow(nil).Contains(netip.MustParseAddr("203.0.113.9")) {
		t.Error("a nil Allow refused a source")
	}
	for _, bad := range []string{"", "10.0.0.0/33", "10.0.0.0/8,", "example.com", "fe80::1%eth0", "10.0.0.1,x/8", "300.1.1.1"} {
		_, err := udp.ParseAllow(bad)
		if err == nil {
			t.Errorf("%q parsed", bad)
			continue
		}
		if item := bad[strings.LastIndexByte(bad, ',')+1:]; bad != "" && !strings.Contains(err.Error(), fmt.Sprintf("%q", item)) {
			t.Errorf("%q: error %q does not name %q", bad, err, item)
		}
	}
}

// A Write of equal frames goes in one system call as one run; the other
// end reads the run coalesced and every frame back as it was.
func TestEndpointRuns(t *testing.T) {
	a, b, _, _ := pair(t)
	if s := b.(*udp.Endpoint).Stats(); !s.GSO || !s.GRO {
		t.Skipf("the kernel has no UDP GSO or GRO: %+v", s)
	}
	var want [][]byte
	for i := 0; i < 44; i++ {
		f := frame(strings.Repeat(string(rune('a'+i%26)), 1500))
		if i == 43 {
			f = frame("short")
		}
		want = append(want, f)
	}
	if n, err := a.Write(want); n != len(want) || err != nil {
		t.Fatalf("write: %d %v", n, err)
	}
	got := readFrames(t, b, len(want), 5*time.Second)
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("frame %d: %d bytes, want %d", i, len(got[i]), len(want[i]))
		}
	}
	if s := a.(*udp.Endpoint).Stats(); s.SendCalls != 1 || s.SendGSO != 1 || s.SendDatagrams != 44 {
		t.Errorf("a's stats %+v: want 1 call, 1 run of 44", s)
	}
	if s := b.(*udp.Endpoint).Stats(); s.RecvGRO != 1 || s.RecvDatagrams != 44 || s.RecvCalls != 1 {
		t.Errorf("b's stats %+v: want 1 call, 1 coalesced message of 44", s)
	}
}
