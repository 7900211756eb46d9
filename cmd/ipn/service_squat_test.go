package main

import (
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ipn-project/ipn"
)

// A socket-activated daemon whose metrics address another process holds
// (any local user may take 127.0.0.1:PORT first) serves its clients on
// systemd's socket all the same, says why it has no metrics, leaves the
// socket where systemd put it, and serves the metrics once the address
// is free.
func TestActivatedDaemonServesWhileMetricsAddressTaken(t *testing.T) {
	squat, err := net.Listen("tcp", "127.0.0.1:0") // another user's, say
	if err != nil {
		t.Fatal(err)
	}
	defer squat.Close()
	addr := squat.Addr().String()
	dir := socketDir(t)
	sock := filepath.Join(dir, "ipn.sock")
	a := activate(t, []string{"--seqpacket", "-l", sock}, nil, sock, sock, "--metrics", addr)

	// The first connection starts the daemon, which serves it.
	dial := &ipn.Dialer{Socket: sock}
	s, err := dial.NewSocket(ipn.Hub)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Bind(filepath.Join(t.TempDir(), "net")); err != nil {
		t.Fatal(err)
	}
	if err := s.Connect(""); err != nil {
		t.Fatal(err)
	}
	line := a.expect(t, "cannot serve metrics")
	for _, want := range []string{"level=ERROR", "addr=" + addr, "address already in use"} {
		if !strings.Contains(line, want) {
			t.Errorf("the daemon logged %q, want %q in it", line, want)
		}
	}
	if fi, err := os.Lstat(sock); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("systemd's socket %s: %v, want it there", sock, err)
	}

	squat.Close()
	a.expect(t, `msg="serving metrics" addr=`+addr)
	res, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil || res.StatusCode != http.StatusOK || !strings.Contains(string(body), "ipn_networks 1") {
		t.Fatalf("scrape: %s, %v, want 200 and ipn_networks 1:\n%s", res.Status, err, body)
	}
}
