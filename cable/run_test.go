package cable_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ipn-project/ipn"
	"github.com/ipn-project/ipn/cable"
	"github.com/ipn-project/ipn/daemon"
	"github.com/ipn-project/ipn/endpoint"
	"github.com/ipn-project/ipn/endpoint/endpointtest"
	"github.com/ipn-project/ipn/internal/daemontest"
	"github.com/ipn-project/ipn/policy/loop"
)

const wait = 5 * time.Second

// network makes a network at a new path of a daemon served for t, and
// returns the path and its manager (which holds it).
func network(t *testing.T, dir, name string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	mgr, err := ipn.NewSocket(ipn.Any)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mgr.Close() })
	if err := mgr.Bind(path); err != nil {
		t.Fatal(err)
	}
	return path
}

// join connects a member to the network at path, as a link if link.
func join(t *testing.T, path string, link bool) *ipn.Socket {
	t.Helper()
	s, err := ipn.NewSocket(ipn.Any)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if link {
		if err := s.SetLink(true); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Connect(path); err != nil {
		t.Fatal(err)
	}
	return s
}

// recv returns the next message of s that is not a loop probe.
func recv(t *testing.T, s *ipn.Socket) []byte {
	t.Helper()
	s.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 65536)
	for {
		n, flags, err := s.Recv(buf)
		if err != nil {
			t.Fatalf("receive: %v", err)
		}
		if flags&ipn.MsgOOB == 0 && !loop.IsProbe(buf[:n]) {
			return append([]byte(nil), buf[:n]...)
		}
	}
}

// farRecv returns the next frame the fake far end got that is not a loop
// probe.
func farRecv(t *testing.T, far *endpointtest.Endpoint) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	for {
		m, err := far.Recv(ctx)
		if err != nil {
			t.Fatalf("far end: %v", err)
		}
		if !loop.IsProbe(m) {
			return m
		}
	}
}

// run runs the cable between s and far until the test ends, and returns
// the channel of its result.
func run(t *testing.T, ctx context.Context, s *ipn.Socket, far endpoint.Endpoint) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cable.Run(ctx, s, far) }()
	return done
}

func result(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(wait):
		t.Fatal("cable still running")
		return nil
	}
}

// closeCount is a far end that counts its closes.
type closeCount struct {
	*endpointtest.Endpoint
	closed atomic.Int32
}

func (c *closeCount) Close() error {
	c.closed.Add(1)
	return c.Endpoint.Close()
}

// A cable carries frames both ways between its network and the far end,
// and stops with ErrFarEnd when the far end hangs up.
func TestRunCarriesBothWays(t *testing.T) {
	daemontest.Start(t, daemon.Config{})
	path := network(t, t.TempDir(), "net")
	near := join(t, path, true)
	peer := join(t, path, false)
	far := &closeCount{Endpoint: endpointtest.New(16)}
	done := run(t, context.Background(), near, far)

	for _, m := range []string{"from the far end", "again"} {
		if err := far.Inject(context.Background(), []byte(m)); err != nil {
			t.Fatal(err)
		}
		if got := recv(t, peer); string(got) != m {
			t.Fatalf("peer received %q, want %q", got, m)
		}
	}
	// An empty frame is not sent on.
	if err := far.Inject(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	if err := peer.Send([]byte("to the far end")); err != nil {
		t.Fatal(err)
	}
	if got := farRecv(t, far.Endpoint); string(got) != "to the far end" {
		t.Fatalf("far end received %q", got)
	}
	far.Hangup()
	err := result(t, done)
	if !errors.Is(err, cable.ErrFarEnd) {
		t.Fatalf("after hangup: %v, want ErrFarEnd", err)
	}
	// Run closed the far end, not the socket.
	if n := far.closed.Load(); n != 1 {
		t.Errorf("Run closed the far end %d times, want once", n)
	}
	if err := near.Send([]byte("still open")); err != nil {
		t.Errorf("socket after Run: %v", err)
	}
	if got := recv(t, peer); string(got) != "still open" {
		t.Errorf("peer received %q", got)
	}
}

// A cable stops with the context's error when it is cancelled, and with
// ErrNetwork when its socket goes.
func TestRunStops(t *testing.T) {
	daemontest.Start(t, daemon.Config{})
	path := network(t, t.TempDir(), "net")
	ctx, cancel := context.WithCancel(context.Background())
	done := run(t, ctx, join(t, path, true), endpointtest.New(4))
	cancel()
	if err := result(t, done); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v, want context.Canceled", err)
	}

	s := join(t, path, true)
	done = run(t, context.Background(), s, endpointtest.New(4))
	s.Close()
	if err := result(t, done); !errors.Is(err, cable.ErrNetwork) {
		t.Errorf("socket closed: %v, want ErrNetwork", err)
	}
}

// Two networks joined by an ipn:// cable are one: a frame of either
// reaches the other's members. A cable from a network to itself, by any
// path, is refused with ErrLoop.
func TestRunIPNFarEnd(t *testing.T) {
	daemontest.Start(t, daemon.Config{})
	dir := t.TempDir()
	pa, pb := network(t, dir, "a"), network(t, dir, "b")
	ma, mb := join(t, pa, false), join(t, pb, false)
	far, err := cable.Open(context.Background(), "ipn://"+pb)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := run(t, ctx, join(t, pa, true), far)
	if err := ma.Send([]byte("a to b")); err != nil {
		t.Fatal(err)
	}
	if got := recv(t, mb); string(got) != "a to b" {
		t.Fatalf("b received %q", got)
	}
	if err := mb.Send([]byte("b to a")); err != nil {
		t.Fatal(err)
	}
	if got := recv(t, ma); string(got) != "b to a" {
		t.Fatalf("a received %q", got)
	}
	cancel()
	if err := result(t, done); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}

	link := filepath.Join(dir, "also-a")
	if err := os.Symlink(pa, link); err != nil {
		t.Fatal(err)
	}
	self, err := cable.Open(context.Background(), "ipn://"+link)
	if err != nil {
		t.Fatal(err)
	}
	err = cable.Run(context.Background(), join(t, pa, true), self)
	if !errors.Is(err, cable.ErrLoop) || !errors.Is(err, syscall.ELOOP) {
		t.Fatalf("cable to itself: %v, want ErrLoop", err)
	}
	if _, err := cable.Open(context.Background(), "ipn://"+filepath.Join(dir, "none")); err == nil {
		t.Error("ipn:// to no network opened")
	}
}

// Open names the schemes it knows when the URL has none it knows.
func TestOpenSchemes(t *testing.T) {
	schemes := cable.Schemes()
	for _, s := range []string{"ipn", "stdio", "udp", "vde", "vxlan", "vxvde"} {
		if !slices.Contains(schemes, s) {
			t.Errorf("schemes %v lack %s", schemes, s)
		}
	}
	if !slices.IsSorted(schemes) {
		t.Errorf("schemes %v not sorted", schemes)
	}
	for _, url := range []string{"nowhere", "gopher://x"} {
		_, err := cable.Open(context.Background(), url)
		if err == nil || cable.Retryable(err) {
			t.Errorf("%s: %v, want a final error", url, err)
			continue
		}
		for _, s := range schemes {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("%s: %q does not name scheme %s", url, err, s)
			}
		}
	}
	cable.Register("test-fake", func(ctx context.Context, spec string) (endpoint.Endpoint, error) {
		if spec == "fail" {
			return nil, syscall.ECONNREFUSED
		}
		return endpointtest.New(1), nil
	})
	far, err := cable.Open(context.Background(), "test-fake://ok")
	if err != nil {
		t.Fatal(err)
	}
	far.Close()
	_, err = cable.Open(context.Background(), "test-fake://fail")
	if !errors.Is(err, syscall.ECONNREFUSED) || !cable.Retryable(err) || !strings.Contains(err.Error(), "cable test-fake://fail") {
		t.Errorf("failing opener: %v, want a retryable error naming the URL", err)
	}
}

// Retryable tells waiting from wrong.
func TestRetryable(t *testing.T) {
	for err, want := range map[error]bool{
		syscall.ECONNREFUSED:                     true,
		syscall.ENOENT:                           true,
		syscall.EINVAL:                           false,
		os.ErrDeadlineExceeded:                   true,
		errors.New("bad url"):                    false,
		&os.PathError{Err: syscall.EHOSTUNREACH}: true,
	} {
		if got := cable.Retryable(err); got != want {
			t.Errorf("Retryable(%v) = %v, want %v", err, got, want)
		}
	}
}
