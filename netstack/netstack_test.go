package netstack_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ipn-project/ipn"
	"github.com/ipn-project/ipn/internal/daemontest"
	"github.com/ipn-project/ipn/netstack"
)

// The tests share one daemon served from this test process.
func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "ipn-netstack-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	stop, err := daemontest.Serve(filepath.Join(dir, "daemon.sock"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	code := m.Run()
	if err := stop(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return code
}

// switchNet creates a switch network, applying opts before Bind, and
// returns its path.
func switchNet(t testing.TB, opts func(*ipn.Socket)) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "lan")
	s, err := ipn.NewSocket(ipn.VDESwitch)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if opts != nil {
		opts(s)
	}
	if err := s.Bind(path); err != nil {
		t.Fatal(err)
	}
	return path
}

// newStack joins a stack with address addr (a prefix) to the network at path.
func newStack(t testing.TB, path string, addrs ...string) *netstack.Stack {
	t.Helper()
	sock, err := ipn.NewSocket(ipn.Any)
	if err != nil {
		t.Fatal(err)
	}
	if err := sock.Connect(path); err != nil {
		sock.Close()
		t.Fatal(err)
	}
	var cfg netstack.Config
	for _, a := range addrs {
		cfg.Addrs = append(cfg.Addrs, netip.MustParsePrefix(a))
	}
	st, err := netstack.New(sock, cfg)
	if err != nil {
		sock.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// pair returns two stacks on a fresh switch: 10.55.0.1 (and fd55::1) and
// 10.55.0.2 (fd55::2).
func pair(t testing.TB) (a, b *netstack.Stack) { return pairOn(t, nil) }

// pairOn is pair on a switch made with opts.
func pairOn(t testing.TB, opts func(*ipn.Socket)) (a, b *netstack.Stack) {
	path := switchNet(t, opts)
	return newStack(t, path, "10.55.0.1/24", "fd55::1/64"), newStack(t, path, "10.55.0.2/24", "fd55::2/64")
}

// echoServer accepts connections on l and echoes what they send.
func echoServer(t testing.TB, l net.Listener) {
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
}

func TestTCPEcho(t *testing.T) {
	a, b := pair(t)
	l, err := a.Listen("tcp", ":7")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	echoServer(t, l)
	for _, addr := range []string{"10.55.0.1:7", "[fd55::1]:7"} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := b.DialContext(ctx, "tcp", addr)
		cancel()
		if err != nil {
			t.Fatalf("dial %s: %v", addr, err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		msg := []byte("hello over " + addr)
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, msg) {
			t.Fatalf("echo: %q, want %q", got, msg)
		}
		if ra := c.RemoteAddr().String(); ra != addr {
			t.Errorf("remote address %s, want %s", ra, addr)
		}
		c.Close()
	}
}

// transfer sends n random bytes from b to a over TCP and checks their
// sha256 on arrival; it returns the time it took.
func transfer(t testing.TB, a, b *netstack.Stack, port, n int) time.Duration {
	t.Helper()
	l, err := a.Listen("tcp4", fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	type result struct {
		sum [sha256.Size]byte
		n   int64
		err error
	}
	res := make(chan result, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			res <- result{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(60 * time.Second))
		h := sha256.New()
		m, err := io.Copy(h, c)
		var r result
		copy(r.sum[:], h.Sum(nil))
		r.n, r.err = m, err
		res <- r
	}()
	data := make([]byte, n)
	rand.Read(data)
	want := sha256.Sum256(data)
	start := time.Now()
	c, err := b.Dial("tcp", fmt.Sprintf("10.55.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := c.Write(data); err != nil {
		t.Fatal(err)
	}
	c.Close()
	r := <-res
	took := time.Since(start)
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.n != int64(n) || r.sum != want {
		t.Fatalf("received %d bytes with sha256 %x, want %d with %x", r.n, r.sum, n, want)
	}
	return took
}

// networks are the switch networks the transfer runs on: the default one
// (lossy, 8 frames queued per port) and a lossless one with a larger pool.
var networks = []struct {
	name string
	opts func(*ipn.Socket)
}{
	{"default", nil},
	{"lossless-64", func(s *ipn.Socket) {
		s.SetFlags(ipn.Lossless)
		s.SetMsgPoolSize(64)
	}},
}

func TestTCPTransfer(t *testing.T) {
	for _, nw := range networks {
		t.Run(nw.name, func(t *testing.T) {
			a, b := pairOn(t, nw.opts)
			const n = 4 << 20
			took := transfer(t, a, b, 9000, n)
			t.Logf("4 MB over TCP in %v: %.1f MB/s", took, float64(n)/1e6/took.Seconds())
		})
	}
}

func BenchmarkTCPTransfer(b *testing.B) {
	for _, nw := range networks {
		b.Run(nw.name, func(b *testing.B) {
			x, y := pairOn(b, nw.opts)
			const n = 4 << 20
			b.SetBytes(n)
			for i := 0; b.Loop(); i++ {
				transfer(b, x, y, 9000+i%1000, n)
			}
		})
	}
}

func TestUDP(t *testing.T) {
	a, b := pair(t)
	for _, tc := range []struct{ network, listen, dial string }{
		{"udp4", "10.55.0.1:53", "10.55.0.1:53"},
		{"udp6", "[fd55::1]:53", "[fd55::1]:53"},
	} {
		pc, err := a.ListenPacket(tc.network, tc.listen)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			buf := make([]byte, 2048)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				pc.WriteTo(append([]byte("re: "), buf[:n]...), from)
			}
		}()
		c, err := b.Dial(tc.network, tc.dial)
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 2048)
		var got string
		// UDP may lose the first datagram while addresses resolve: retry.
		for i := 0; i < 10 && got == ""; i++ {
			if _, err := c.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(time.Second))
			if n, err := c.Read(buf); err == nil {
				got = string(buf[:n])
			}
		}
		if got != "re: ping" {
			t.Fatalf("%s: got %q, want %q", tc.network, got, "re: ping")
		}
		c.Close()
		pc.Close()
	}
}

func TestBadAddresses(t *testing.T) {
	a, _ := pair(t)
	for _, c := range []struct{ network, addr string }{
		{"tcp", "example.com:80"},
		{"tcp4", "[fd55::1]:80"},
		{"sctp", "10.55.0.1:80"},
		{"tcp", "10.55.0.1"},
	} {
		if _, err := a.Dial(c.network, c.addr); err == nil {
			t.Errorf("Dial(%q, %q) succeeded", c.network, c.addr)
		}
	}
}

func TestCloseStopsConnections(t *testing.T) {
	a, b := pair(t)
	l, err := a.Listen("tcp", ":7")
	if err != nil {
		t.Fatal(err)
	}
	echoServer(t, l)
	c, err := b.Dial("tcp", "10.55.0.1:7")
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 10))
		errc <- err
	}()
	b.Close()
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("read succeeded after Close")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("read still blocked 10s after Close")
	}
	if err := b.Close(); err != nil {
		t.Logf("second Close: %v", err)
	}
}
