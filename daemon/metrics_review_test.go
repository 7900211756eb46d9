package daemon_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

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

// Review: any local user may reach a loopback metrics address, and the
// server keeps 16 connections in all: one user opens 16, asks each for
// "/" once (keep-alive) and keeps them idle (IdleTimeout is a minute, and
// one request a minute keeps them for good), and Prometheus's scrape
// waits in the backlog, timed out.
func TestReviewMetricsIdleConnectionsStarveScrapes(t *testing.T) {
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
	}
	client := &http.Client{Timeout: 3 * time.Second}
	res, err := client.Get(sc.url)
	if err != nil {
		t.Errorf("a scrape while one user holds 16 idle connections: %v", err)
		return
	}
	res.Body.Close()
}
