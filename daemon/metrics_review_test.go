package daemon_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
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
		fd := -1
		asUser(t, 2302, 2302, func() error {
			s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			if err := unix.Connect(s, &unix.SockaddrUnix{Name: sock}); err != nil {
				unix.Close(s)
				return err
			}
			fd = s
			return nil
		})
		f := os.NewFile(uintptr(fd), "metrics")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
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
