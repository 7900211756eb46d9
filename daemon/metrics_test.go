package daemon_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/ipn-project/ipn"
	"github.com/ipn-project/ipn/daemon"
	"github.com/ipn-project/ipn/internal/daemontest"
)

// scrape is one scrape of /metrics, parsed.
type scrape map[string]*dto.MetricFamily

// scraper scrapes a daemon's metrics through client.
type scraper struct {
	t      *testing.T
	url    string
	client *http.Client
}

// metricsDaemon starts a daemon of cfg serving metrics at cfg.Metrics and
// returns a scraper of them, at the address the daemon reports.
func metricsDaemon(t *testing.T, cfg daemon.Config) (*scraper, *daemontest.Daemon) {
	t.Helper()
	addrs := make(chan net.Addr, 1)
	cfg.MetricsReady = func(a net.Addr) { addrs <- a }
	d := serve(t, cfg)
	var a net.Addr
	select { // after Ready: the daemon binds its metrics once it accepts clients
	case a = <-addrs:
	case <-time.After(wait):
		t.Fatalf("the daemon has not said where its metrics are within %v of being ready", wait)
	}
	sc := &scraper{t: t, client: &http.Client{Timeout: wait}}
	if a.Network() == "unix" {
		sc.url = "http://ipn/metrics"
		sc.client.Transport = &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", a.String())
		}}
	} else {
		sc.url = "http://" + a.String() + "/metrics"
	}
	t.Cleanup(sc.client.CloseIdleConnections)
	return sc, d
}

// get scrapes the metrics once.
func (sc *scraper) get() scrape {
	sc.t.Helper()
	res, err := sc.client.Get(sc.url)
	if err != nil {
		sc.t.Fatalf("scrape: %v", err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(res.Body)
		sc.t.Fatalf("scrape: %s: %s", res.Status, b)
	}
	if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		sc.t.Fatalf("scrape: content type %q, want the text format", ct)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(res.Body)
	if err != nil {
		sc.t.Fatalf("scrape: parse: %v", err)
	}
	return fams
}

// until scrapes until cond holds of a scrape, which it returns, failing
// the test if it does not within wait.
func (sc *scraper) until(what string, cond func(scrape) bool) scrape {
	sc.t.Helper()
	deadline := time.Now().Add(wait)
	// Scrapes go 5 ms apart at most once a scrape fails the condition,
	// so as not to keep a core busy with them.
	poll := time.NewTicker(5 * time.Millisecond)
	defer poll.Stop()
	for {
		s := sc.get()
		if cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			sc.t.Fatalf("no scrape within %v where %s; the last:\n%s", wait, what, s.dump("ipn_"))
		}
		<-poll.C
	}
}

// dump formats the series of families named with prefix, for failures.
func (s scrape) dump(prefix string) string {
	var names []string
	for name := range s {
		if strings.HasPrefix(name, prefix) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	var b strings.Builder
	for _, name := range names {
		expfmt.MetricFamilyToText(&b, s[name])
	}
	return b.String()
}

// value returns the value of the series of metric name whose labels
// include want ("k", "v", ...), and whether there is exactly one.
func (s scrape) value(name string, want ...string) (float64, bool) {
	f := s[name]
	if f == nil {
		return 0, false
	}
	n, v := 0, 0.0
	for _, m := range f.GetMetric() {
		if !hasLabels(m, want) {
			continue
		}
		n++
		switch {
		case m.GetCounter() != nil:
			v = m.GetCounter().GetValue()
		case m.GetGauge() != nil:
			v = m.GetGauge().GetValue()
		}
	}
	return v, n == 1
}

// must is value for a series that must be there.
func (s scrape) must(t *testing.T, name string, want ...string) float64 {
	t.Helper()
	v, ok := s.value(name, want...)
	if !ok {
		t.Fatalf("no single series %s%v in the scrape:\n%s", name, want, s.dump("ipn_"))
	}
	return v
}

func hasLabels(m *dto.Metric, want []string) bool {
	for i := 0; i+1 < len(want); i += 2 {
		found := false
		for _, l := range m.GetLabel() {
			if l.GetName() == want[i] && l.GetValue() == want[i+1] {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// portOf returns the port number of the port of network path described
// descr, from ipn_port_info.
func (s scrape) portOf(t *testing.T, path, descr string) string {
	t.Helper()
	for _, m := range s["ipn_port_info"].GetMetric() {
		if hasLabels(m, []string{"network", path, "description", descr}) {
			for _, l := range m.GetLabel() {
				if l.GetName() == "port" {
					return l.GetValue()
				}
			}
		}
	}
	t.Fatalf("no port %q on %s in the scrape:\n%s", descr, path, s.dump("ipn_port_info"))
	return ""
}

// joinAs connects a socket of proto to path (binding it first if bind),
// described descr, on the fast path if fast, with the sides how shuts.
func joinAs(t *testing.T, proto ipn.Protocol, path, descr string, bind, fast bool, how ipn.How) *ipn.Socket {
	t.Helper()
	s, err := ipn.NewSocket(proto)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	s.SetFastPath(fast)
	if err := s.SetDescription(descr); err != nil {
		t.Fatal(err)
	}
	if how != 0 {
		if err := s.Shutdown(how); err != nil {
			t.Fatal(err)
		}
	}
	target := path
	if bind {
		if err := s.Bind(path); err != nil {
			t.Fatal(err)
		}
		target = ""
	}
	if err := s.Connect(target); err != nil {
		t.Fatal(err)
	}
	if s.FastPath() != fast {
		t.Fatalf("%s: on the fast path %v, want %v", descr, s.FastPath(), fast)
	}
	return s
}

// traffic runs goroutines that the test's cleanup stops and joins.
type traffic struct {
	stop chan struct{}
	once sync.Once
	wg   sync.WaitGroup
}

func newTraffic(t *testing.T) *traffic {
	tr := &traffic{stop: make(chan struct{})}
	t.Cleanup(tr.end)
	return tr
}

// end stops the goroutines and waits for them; sockets they use must be
// closed after (cleanups run last in, first out: newTraffic goes last).
func (tr *traffic) end() {
	tr.once.Do(func() { close(tr.stop) })
	tr.wg.Wait()
}

// send sends msg on s until stopped, pausing on errors (a full lossless
// network never happens here: the networks are lossy).
func (tr *traffic) send(s *ipn.Socket, msgs ...[]byte) {
	tr.wg.Add(1)
	go func() {
		defer tr.wg.Done()
		for i := 0; ; i++ {
			select {
			case <-tr.stop:
				return
			default:
			}
			s.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
			s.Send(msgs[i%len(msgs)])
		}
	}()
}

// drain receives on s until stopped.
func (tr *traffic) drain(s *ipn.Socket) {
	tr.wg.Add(1)
	go func() {
		defer tr.wg.Done()
		buf := make([]byte, 2048)
		for {
			select {
			case <-tr.stop:
				return
			default:
			}
			s.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			if _, _, err := s.Recv(buf); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				return
			}
		}
	}()
}

// A daemon with --metrics serves them while traffic flows: the counters of
// a hub's ports move between two scrapes, on the fast path and the socket
// path; a receiver that never reads has its drops counted; a switch's MAC
// table has the MACs its members sent; members, readers, writers and the
// ports on each path are right.
func TestMetricsWhileTrafficFlows(t *testing.T) {
	sc, _ := metricsDaemon(t, daemon.Config{Metrics: "127.0.0.1:0"})
	dir := t.TempDir()
	hub := filepath.Join(dir, "hub")
	sw := filepath.Join(dir, "sw")

	// The hub: a sender on the fast path that only sends, a fast reader
	// and a socket reader that read, and a socket reader that never does.
	sender := joinAs(t, ipn.Hub, hub, "sender", true, true, ipn.ShutRead)
	fastR := joinAs(t, ipn.Any, hub, "fast reader", false, true, ipn.ShutWrite)
	sockR := joinAs(t, ipn.Any, hub, "socket reader", false, false, ipn.ShutWrite)
	joinAs(t, ipn.Any, hub, "stuck", false, false, ipn.ShutWrite)

	// The switch: three members, sending broadcasts from five MACs, and a
	// receiver.
	macs := [][]byte{{2, 0, 0, 0, 0, 1}, {2, 0, 0, 0, 0, 2}, {2, 0, 0, 0, 0, 3}, {2, 0, 0, 0, 0, 4}, {2, 0, 0, 0, 0, 5}}
	bcast := []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	eth := func(src []byte) []byte {
		return append(append(append(append([]byte{}, bcast...), src...), 0x08, 0x00), make([]byte, 46)...)
	}
	sw0 := joinAs(t, ipn.VDESwitch, sw, "sw0", true, true, ipn.ShutRead)
	sw1 := joinAs(t, ipn.Any, sw, "sw1", false, false, ipn.ShutRead)
	sw2 := joinAs(t, ipn.Any, sw, "sw2", false, true, ipn.ShutRead)
	swR := joinAs(t, ipn.Any, sw, "swR", false, true, ipn.ShutWrite)

	tr := newTraffic(t)
	msg := make([]byte, 100)
	tr.send(sender, msg)
	tr.drain(fastR)
	tr.drain(sockR)
	tr.send(sw0, eth(macs[0]), eth(macs[1]))
	tr.send(sw1, eth(macs[2]))
	tr.send(sw2, eth(macs[3]), eth(macs[4]))
	tr.drain(swR)

	first := sc.until("the hub's readers have messages and the stuck one drops", func(s scrape) bool {
		if s["ipn_port_info"] == nil {
			return false
		}
		fr, _ := s.value("ipn_port_out_messages_total", "network", hub, "port", s.portOf(t, hub, "fast reader"))
		sr, _ := s.value("ipn_port_out_messages_total", "network", hub, "port", s.portOf(t, hub, "socket reader"))
		drops, _ := s.value("ipn_port_out_drops_total", "network", hub, "port", s.portOf(t, hub, "stuck"))
		return fr > 0 && sr > 0 && drops > 0
	})
	t.Logf("a scrape while traffic flows:\n%s", first.dump("ipn_"))
	port := map[string]string{}
	for _, d := range []string{"sender", "fast reader", "socket reader", "stuck"} {
		port[d] = first.portOf(t, hub, d)
	}
	in := func(s scrape, d, what string) float64 {
		return s.must(t, "ipn_port_"+what, "network", hub, "proto", "hub", "port", port[d])
	}
	second := sc.until("every counter of the hub moved", func(s scrape) bool {
		return in(s, "sender", "in_messages_total") > in(first, "sender", "in_messages_total") &&
			in(s, "sender", "in_bytes_total") > in(first, "sender", "in_bytes_total") &&
			in(s, "fast reader", "out_messages_total") > in(first, "fast reader", "out_messages_total") &&
			in(s, "fast reader", "out_bytes_total") > in(first, "fast reader", "out_bytes_total") &&
			in(s, "socket reader", "out_messages_total") > in(first, "socket reader", "out_messages_total") &&
			in(s, "socket reader", "out_bytes_total") > in(first, "socket reader", "out_bytes_total")
	})
	// Counters, and only they, end in _total.
	for name, f := range second {
		if strings.HasPrefix(name, "ipn_") && (f.GetType() == dto.MetricType_COUNTER) != strings.HasSuffix(name, "_total") {
			t.Errorf("%s is a %v", name, f.GetType())
		}
	}
	// Bytes are the messages' own: 100 each.
	if m, b := in(second, "sender", "in_messages_total"), in(second, "sender", "in_bytes_total"); b != 100*m {
		t.Errorf("sender: %v bytes in %v messages, want 100 a message", b, m)
	}
	// The stuck receiver got at most its queue; the rest it missed.
	if out, drops := in(second, "stuck", "out_messages_total"), in(second, "stuck", "out_drops_total"); drops == 0 || out > 10000 {
		t.Errorf("the receiver that never reads: %v delivered, %v dropped", out, drops)
	}
	for _, d := range []string{"sender", "fast reader", "socket reader", "stuck"} {
		if e := in(second, d, "in_errors_total"); e != 0 {
			t.Errorf("%s: %v errors, want 0", d, e)
		}
	}

	// What each network is made of.
	for _, c := range []struct {
		net, proto                string
		shm, socket, r, w, logged float64
	}{
		{hub, "hub", 2, 2, 3, 1, 1},   // the fast reader reads the shared log
		{sw, "switch", 3, 1, 1, 3, 0}, // a switch has no shared log
	} {
		nl := []string{"network", c.net, "proto", c.proto}
		for _, x := range []struct {
			name string
			got  float64
			want float64
		}{
			{"shm ports", second.must(t, "ipn_network_ports", append(nl, "kind", "shm")...), c.shm},
			{"socket ports", second.must(t, "ipn_network_ports", append(nl, "kind", "socket")...), c.socket},
			{"vde ports", second.must(t, "ipn_network_ports", append(nl, "kind", "vde")...), 0},
			{"readers", second.must(t, "ipn_network_readers", nl...), c.r},
			{"writers", second.must(t, "ipn_network_writers", nl...), c.w},
			{"shared log readers", second.must(t, "ipn_network_shared_log_readers", nl...), c.logged},
			{"max ports", second.must(t, "ipn_network_max_ports", nl...), 64},
			{"mtu", second.must(t, "ipn_network_mtu_bytes", nl...), 1514},
		} {
			if x.got != x.want {
				t.Errorf("%s: %s %v, want %v", c.net, x.name, x.got, x.want)
			}
		}
	}
	for d, kind := range map[string]string{"sender": "shm", "fast reader": "shm", "socket reader": "socket", "stuck": "socket"} {
		sides := map[string]string{"sender": "w"}[d]
		if sides == "" {
			sides = "r"
		}
		second.must(t, "ipn_port_info", "network", hub, "port", port[d], "kind", kind, "description", d, "role", "member", "sides", sides)
	}
	if v := second.must(t, "ipn_network_shared_log_bytes", "network", hub); v <= 0 {
		t.Errorf("the hub's shared log has %v bytes", v)
	}
	if _, ok := second.value("ipn_network_table_entries", "network", hub); ok {
		t.Errorf("a hub has a table:\n%s", second.dump("ipn_network_table"))
	}

	// The switch's table has the five MACs sent, and only those.
	sc.until("the switch's MAC table has the 5 MACs", func(s scrape) bool {
		v, _ := s.value("ipn_network_table_entries", "network", sw, "proto", "switch", "table", "mac")
		return v == 5
	})
	if v := second.must(t, "ipn_network_table_max_entries", "network", sw, "table", "mac"); v != 4096 {
		t.Errorf("the switch's MAC table holds %v, want 4096", v)
	}
	third := sc.get()
	if v := third.must(t, "ipn_network_table_entries", "network", sw, "table", "mac"); v != 5 {
		t.Errorf("the switch's MAC table has %v entries, want 5", v)
	}

	// The daemon's own: two networks, the members' connections.
	if v := third.must(t, "ipn_networks"); v != 2 {
		t.Errorf("%v networks, want 2", v)
	}
	if v := third.must(t, "ipn_connections"); v < 8 {
		t.Errorf("%v connections, want at least the 8 members'", v)
	}
	if _, ok := third.value("process_resident_memory_bytes"); !ok {
		t.Error("no process_resident_memory_bytes")
	}

	// A member that leaves takes its series with it.
	tr.end()
	fastR.Close()
	sc.until("the fast reader's port is gone", func(s scrape) bool {
		_, ok := s.value("ipn_port_out_messages_total", "network", hub, "port", port["fast reader"])
		v, _ := s.value("ipn_network_ports", "network", hub, "kind", "shm")
		return !ok && v == 1
	})
}

// Metrics on a Unix socket: the socket has the mode asked, and is gone
// when the daemon stops; a file at the path that is not a socket is left
// alone, and the daemon refuses to start.
func TestMetricsUnixSocket(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("precious"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A file there keeps the metrics out, not the networks: the daemon
	// says why and serves on.
	log := watchLog(t)
	fd := serve(t, daemon.Config{Metrics: file, Logger: log.logger()})
	log.expect(t, "level=ERROR", file, "is not a socket")
	joinAs(t, ipn.Hub, filepath.Join(t.TempDir(), "net"), "served", true, true, 0)
	if err := fd.Stop(); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "precious" {
		t.Errorf("the file holds %q (%v), want it unchanged", b, err)
	}

	sock := filepath.Join(dir, "metrics.sock")
	sc, d := metricsDaemon(t, daemon.Config{Metrics: sock, MetricsMode: 0o640})
	fi, err := os.Lstat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o640 {
		t.Errorf("metrics socket %v, want a socket of mode 0640", fi.Mode())
	}
	path := filepath.Join(t.TempDir(), "net")
	joinAs(t, ipn.Hub, path, "only", true, true, 0)
	s := sc.get()
	if v := s.must(t, "ipn_network_ports", "network", path, "kind", "shm"); v != 1 {
		t.Errorf("%v ports on the fast path, want 1", v)
	}
	if v := s.must(t, "ipn_network_shared_log_readers", "network", path); v != 1 {
		t.Errorf("%v shared log readers, want 1", v)
	}
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the metrics socket outlived the daemon: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".metrics-*")); len(left) != 0 {
		t.Errorf("left behind: %v", left)
	}
}

// A metrics address that is not loopback is refused, naming it and the
// way to have it anyway; a loopback one, or any with MetricsAny, is not.
func TestMetricsAddressChecked(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:9215", ":9215", "192.0.2.1:9215", "[::]:9215", "example.com:9215"} {
		err := daemon.CheckMetricsAddr(addr, false)
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%q", addr)) || !strings.Contains(err.Error(), "--metrics-any") {
			t.Errorf("%s: %v, want a refusal naming it and --metrics-any", addr, err)
		}
		if err := daemon.CheckMetricsAddr(addr, true); err != nil {
			t.Errorf("%s with any: %v", addr, err)
		}
	}
	for _, addr := range []string{"127.0.0.1:9215", "127.1.2.3:0", "[::1]:9215", "localhost:9215", "/run/ipn/metrics.sock"} {
		if err := daemon.CheckMetricsAddr(addr, false); err != nil {
			t.Errorf("%s: %v", addr, err)
		}
	}
	if err := daemon.CheckMetricsAddr("127.0.0.1", false); err == nil || !strings.Contains(err.Error(), "HOST:PORT") {
		t.Errorf("no port: %v", err)
	}
	// The daemon itself refuses one, and serves nothing.
	dir := t.TempDir()
	err := daemon.Serve(context.Background(), daemon.Config{Socket: filepath.Join(dir, "ipn.sock"), Metrics: "0.0.0.0:0"})
	if err == nil || !strings.Contains(err.Error(), "--metrics-any") {
		t.Fatalf("a daemon with metrics on 0.0.0.0: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "ipn.sock")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the refused daemon left its socket: %v", err)
	}
}

// A daemon that takes over serves the metrics at the same address, on TCP
// once the old one has let the port go, on a Unix socket at once; the
// counters it serves are those the old one handed over, and the old one's
// exit does not remove the new one's socket.
func TestMetricsTakeover(t *testing.T) {
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tcp := free.Addr().String()
	free.Close()
	for _, addr := range []string{tcp, filepath.Join(t.TempDir(), "metrics.sock")} {
		t.Run(filepath.Base(addr), func(t *testing.T) {
			sc, d := metricsDaemon(t, daemon.Config{Metrics: addr})
			path := filepath.Join(t.TempDir(), "net")
			s := joinAs(t, ipn.Hub, path, "sender", true, false, ipn.ShutRead)
			for range 10 {
				if err := s.Send(make([]byte, 10)); err != nil {
					t.Fatal(err)
				}
			}
			port := ""
			sc.until("10 messages in", func(s scrape) bool {
				if s["ipn_port_info"] == nil {
					return false
				}
				port = s.portOf(t, path, "sender")
				v, _ := s.value("ipn_port_in_messages_total", "network", path, "port", port)
				return v == 10
			})

			addrs := make(chan net.Addr, 1)
			ctx, cancel := context.WithCancel(context.Background())
			ready := make(chan struct{})
			done := make(chan error, 1)
			go func() {
				done <- daemon.Serve(ctx, daemon.Config{Socket: d.Socket, Takeover: true, Metrics: addr,
					Logger:       slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
					MetricsReady: func(a net.Addr) { addrs <- a }, Ready: func() { close(ready) }})
			}()
			t.Cleanup(func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("the daemon that took over ended with: %v", err)
				}
			})
			select {
			case <-ready:
			case err := <-done:
				done <- err
				t.Fatalf("takeover: %v", err)
			}
			select { // once the old daemon has let the address go
			case a := <-addrs:
				if a.String() != addr {
					t.Errorf("metrics at %s after the takeover, want %s", a, addr)
				}
			case <-time.After(wait):
				t.Fatalf("the daemon that took over serves no metrics within %v", wait)
			}
			// The old daemon has exited: whatever answers is the new one.
			if err := d.Stop(); err != nil {
				t.Fatal(err)
			}
			if v := sc.get().must(t, "ipn_port_in_messages_total", "network", path, "port", port); v != 10 {
				t.Errorf("after the takeover %v messages in, want the 10 of before", v)
			}
			if err := s.Send(make([]byte, 10)); err != nil {
				t.Fatal(err)
			}
			sc.until("11 messages in, counted by the new daemon", func(s scrape) bool {
				v, _ := s.value("ipn_port_in_messages_total", "network", path, "port", port)
				return v == 11
			})
		})
	}
}

// Label values that users choose (a network's path, a port's
// description) cannot break a scrape or forge a series: quotes and
// newlines are escaped, bytes that are not UTF-8 mended.
func TestMetricsHostileLabels(t *testing.T) {
	sc, _ := metricsDaemon(t, daemon.Config{Metrics: "[::1]:0"})
	path := filepath.Join(t.TempDir(), "n\xff\"}\n# TYPE forged counter\nforged 1")
	descr := "d\xfe\"} 7\nforged_total 1\n"
	joinAs(t, ipn.Hub, path, descr, true, true, 0)
	s := sc.get()
	for name := range s {
		if strings.HasPrefix(name, "forged") {
			t.Errorf("a user's label forged the series %s:\n%s", name, s.dump(name))
		}
	}
	mended := strings.ToValidUTF8(path, "\ufffd")
	s.must(t, "ipn_port_info", "network", mended)
	// The daemon keeps descriptions printable already; what it keeps
	// is valid UTF-8 here.
	for _, m := range s["ipn_port_info"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "description" && (!utf8.ValidString(l.GetValue()) || !strings.HasPrefix(l.GetValue(), "d")) {
				t.Errorf("description %q, want %q, mended", l.GetValue(), descr)
			}
		}
	}
	if v := s.must(t, "ipn_network_ports", "network", mended, "kind", "shm"); v != 1 {
		t.Errorf("%v ports on the fast path, want 1", v)
	}
}

// A user other than root has its share of the limits in ipn_user_*, by
// uid, and loses its series when it holds nothing.
func TestMetricsPerUser(t *testing.T) {
	needRoot(t)
	sc, d := metricsDaemon(t, daemon.Config{Metrics: "127.0.0.1:0"})
	_, fd := netFile(t, netDir(t), 2301, 2301, 0o700)
	u := dialAs(t, d.Socket, 2301, 2301).hello(0)
	if err := u.bind(fd); err != nil {
		t.Fatal(err)
	}
	if _, _, err := u.connect(-1); err != nil {
		t.Fatal(err)
	}
	s := sc.get()
	for name, want := range map[string]float64{"ipn_user_networks": 1, "ipn_user_ports": 1, "ipn_user_connections": 1} {
		if v := s.must(t, name, "uid", "2301"); v != want {
			t.Errorf("%s{uid=2301} %v, want %v", name, v, want)
		}
	}
	if v := s.must(t, "ipn_user_memory_bytes", "uid", "2301"); v <= 0 {
		t.Errorf("uid 2301 is charged %v bytes of memory", v)
	}
	if _, ok := s.value("ipn_user_networks", "uid", "0"); ok {
		t.Error("root has ipn_user_ series; it is not charged")
	}
	u.conn.Close()
	sc.until("uid 2301 holds nothing", func(s scrape) bool {
		_, ok := s.value("ipn_user_connections", "uid", "2301")
		return !ok
	})
}
