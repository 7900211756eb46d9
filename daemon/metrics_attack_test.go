package daemon_test

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn"
	"github.com/ipn-project/ipn/daemon"
)

// Networks whose paths differ only in bytes that are not UTF-8, or from a
// path that is what another's mends to, share a network label, but each
// keeps its own series, told apart by the id label (the file's DEV:INO):
// no user's path can hide another network's metrics.
func TestMetricsMendedPathsStayApart(t *testing.T) {
	sc, _ := metricsDaemon(t, daemon.Config{Metrics: "127.0.0.1:0"})
	dir := t.TempDir()
	joinAs(t, ipn.Hub, filepath.Join(dir, "n\xff"), "first", true, true, 0)
	joinAs(t, ipn.Hub, filepath.Join(dir, "n\xfe"), "second", true, true, 0)
	joinAs(t, ipn.Hub, filepath.Join(dir, "n\ufffd"), "third", true, true, 0) // what the others mend to
	s := sc.get()
	found := map[string]bool{}
	for _, m := range s["ipn_port_info"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "description" {
				found[l.GetValue()] = true
			}
		}
	}
	if !found["first"] || !found["second"] || !found["third"] {
		t.Errorf("ports in ipn_port_info: %v, want first, second and third", found)
	}
	ids := map[string]bool{}
	for _, m := range s["ipn_network_mtu_bytes"].GetMetric() {
		for _, l := range m.GetLabel() {
			switch {
			case l.GetName() == "network" && l.GetValue() != filepath.Join(dir, "n\ufffd"):
				t.Errorf("network label %q, want the mended path %q", l.GetValue(), filepath.Join(dir, "n\ufffd"))
			case l.GetName() == "id":
				ids[l.GetValue()] = true
			}
		}
	}
	if len(ids) != 3 {
		t.Errorf("ids %v of ipn_network_mtu_bytes, want one a network (3):\n%s", ids, s.dump("ipn_network_mtu"))
	}
	if n := len(s["ipn_port_in_messages_total"].GetMetric()); n != 3 {
		t.Errorf("%d series of ipn_port_in_messages_total, want 3 (one port on each network)", n)
	}
}

// Any local user may reach a loopback metrics address, and the server
// holds 16 connections in all: one user who opens 16, asks each for "/"
// once (keep-alive) and keeps them idle cannot keep a scrape out, as no
// connection outlives its one request.
func TestMetricsIdleConnectionsCannotStarveScrapes(t *testing.T) {
	sc, _ := metricsDaemon(t, daemon.Config{Metrics: "127.0.0.1:0"})
	host := strings.TrimSuffix(strings.TrimPrefix(sc.url, "http://"), "/metrics")
	for i := 0; i < 16; i++ {
		c, err := net.Dial("tcp", host)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		br := bufio.NewReader(c)
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if !res.Close {
			t.Errorf("the answer to request %d keeps its connection open (no Connection: close)", i)
		}
	}
	client := &http.Client{Timeout: 3 * time.Second}
	res, err := client.Get(sc.url)
	if err != nil {
		t.Errorf("a scrape while one user holds 16 idle connections: %v", err)
		return
	}
	res.Body.Close()
}

// On a metrics Unix socket, which the kernel says the peers of, a user
// holds 4 connections at most: a fifth is closed unread, another user's
// scrape goes through, and a connection that ends gives its slot back.
func TestMetricsUnixSocketBoundsEachUser(t *testing.T) {
	needRoot(t)
	sock := filepath.Join(netDir(t), "metrics.sock")
	sc, _ := metricsDaemon(t, daemon.Config{Metrics: sock, MetricsMode: 0o666})
	dialAs := func() net.Conn {
		t.Helper()
		c := connectAs(t, sock, unix.SOCK_STREAM, 2302, 2302)
		t.Cleanup(func() { c.Close() })
		return c
	}
	// get asks for "/" on c and reports whether it was answered.
	get := func(c net.Conn) bool {
		c.SetDeadline(time.Now().Add(wait))
		if _, err := fmt.Fprintf(c, "GET / HTTP/1.0\r\n\r\n"); err != nil {
			return false
		}
		res, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK
	}
	var held []net.Conn
	for range 4 {
		held = append(held, dialAs()) // silent: each holds its slot
	}
	// The four are dropped 2 s after they connect (the header timeout):
	// the fifth comes well within that.
	if get(dialAs()) {
		t.Fatal("a fifth connection of uid 2302 is answered, want it closed unread")
	}
	sc.get() // root's scrape
	held[0].Close()
	deadline := time.Now().Add(wait)
	poll := time.NewTicker(5 * time.Millisecond)
	defer poll.Stop()
	for !get(dialAs()) {
		if time.Now().After(deadline) {
			t.Fatalf("uid 2302 is not served within %v of closing one of its 4 connections", wait)
		}
		<-poll.C
	}
}

// logWatch is a daemon's log, kept for a test to wait on.
type logWatch struct {
	t     *testing.T
	mu    sync.Mutex
	lines []string      // guarded by mu
	more  chan struct{} // a token when a line comes
}

func watchLog(t *testing.T) *logWatch {
	return &logWatch{t: t, more: make(chan struct{}, 1)}
}

// logger returns a logger of every level into w (and t's log).
func (w *logWatch) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func (w *logWatch) Write(b []byte) (int, error) {
	w.t.Logf("%s", b)
	w.mu.Lock()
	w.lines = append(w.lines, string(b))
	w.mu.Unlock()
	select {
	case w.more <- struct{}{}:
	default:
	}
	return len(b), nil
}

// expect waits, up to metricsPatience, for a line that has every one of
// want, and returns it.
func (w *logWatch) expect(t *testing.T, want ...string) string {
	t.Helper()
	deadline := time.NewTimer(metricsPatience)
	defer deadline.Stop()
	for {
		w.mu.Lock()
		lines := slices.Clone(w.lines)
		w.mu.Unlock()
	next:
		for _, l := range lines {
			for _, s := range want {
				if !strings.Contains(l, s) {
					continue next
				}
			}
			return l
		}
		select {
		case <-w.more:
		case <-deadline.C:
			t.Fatalf("no line with %q logged within %v", want, metricsPatience)
		}
	}
}

// metricsPatience is how long a test waits for a daemon to bind a
// metrics address it could not have at first: its longest pause between
// tries (10 s) and some.
const metricsPatience = 15 * time.Second

// A metrics address that another process holds (any local user may bind
// 127.0.0.1:PORT first) keeps neither the daemon from starting nor its
// clients out: it logs an error naming the address, serves its networks
// without metrics, and serves the metrics once the address is free.
func TestMetricsAddressTakenServesOn(t *testing.T) {
	squat, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer squat.Close()
	addr := squat.Addr().String()
	log := watchLog(t)
	addrs := make(chan net.Addr, 1)
	serve(t, daemon.Config{Metrics: addr, Logger: log.logger(), MetricsReady: func(a net.Addr) { addrs <- a }})
	log.expect(t, "level=ERROR", "addr="+addr, "address already in use")
	// Served meanwhile: a network, its members, a message.
	path := filepath.Join(t.TempDir(), "net")
	recv := joinAs(t, ipn.Hub, path, "receiver", true, true, ipn.ShutWrite)
	send := joinAs(t, ipn.Hub, path, "sender", false, true, ipn.ShutRead)
	if err := send.Send([]byte("without metrics")); err != nil {
		t.Fatal(err)
	}
	recv.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 100)
	if n, _, err := recv.Recv(buf); err != nil || string(buf[:n]) != "without metrics" {
		t.Fatalf("Recv: %q %v", buf[:n], err)
	}
	squat.Close()
	select {
	case a := <-addrs:
		if a.String() != addr {
			t.Fatalf("metrics at %s, want %s", a, addr)
		}
	case <-time.After(metricsPatience):
		t.Fatalf("no metrics at %s within %v of its squatter's leaving", addr, metricsPatience)
	}
	sc := &scraper{t: t, url: "http://" + addr + "/metrics", client: &http.Client{Timeout: wait}}
	if v := sc.get().must(t, "ipn_network_ports", "network", path, "kind", "shm"); v != 2 {
		t.Errorf("%v ports on the fast path, want 2", v)
	}
}
