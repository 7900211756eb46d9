package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// ipnCmd runs the test binary as ipn with args, bounded by 30 s.
func ipnCmd(t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	cmd.Env = append(os.Environ(), asIPNEnv+"=1")
	return cmd
}

// ipn daemon --help documents the metrics flags and where the metrics are
// listed.
func TestDaemonHelpDocumentsMetrics(t *testing.T) {
	out, err := ipnCmd(t, "daemon", "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("ipn daemon --help: %v\n%s", err, out)
	}
	for _, want := range []string{"--metrics string", "--metrics-any", "--metrics-mode string", "docs/metrics.md", "loopback"} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("ipn daemon --help does not say %q:\n%s", want, out)
		}
	}
}

// ipn daemon refuses a metrics address that is not loopback without
// --metrics-any, and a bad mode, before it serves anything.
func TestDaemonMetricsRefused(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "ipn.sock")
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"--foreground", "--metrics", "0.0.0.0:9215"}, []string{`"0.0.0.0:9215"`, "--metrics-any"}},
		{[]string{"--foreground", "--metrics", ":9215"}, []string{`":9215"`, "every interface", "--metrics-any"}},
		{[]string{"--metrics", "192.0.2.1:9215"}, []string{`"192.0.2.1:9215"`, "--metrics-any"}},
		{[]string{"--foreground", "--metrics", "/tmp/m.sock", "--metrics-mode", "999"}, []string{`--metrics-mode "999"`, "octal"}},
	} {
		cmd := ipnCmd(t, append([]string{"daemon", "--socket", socket, "--idle-exit", "1s"}, c.args...)...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Errorf("ipn daemon %v: %v, want a failure\n%s", c.args, err, stderr.String())
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(stderr.String(), w) {
				t.Errorf("ipn daemon %v: stderr %q, want %q", c.args, stderr.String(), w)
			}
		}
		if _, err := os.Lstat(socket); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("ipn daemon %v made its socket: %v", c.args, err)
		}
	}
}

// ipn daemon -f --metrics 127.0.0.1:0 logs the address it serves at, and
// serves the metrics there until stopped.
func TestDaemonServesMetrics(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "ipn.sock")
	cmd := ipnCmd(t, "daemon", "--foreground", "--socket", socket, "--metrics", "127.0.0.1:0")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The log's "serving metrics addr=127.0.0.1:PORT" line says where.
	addrs := make(chan string, 1)
	logged := make(chan struct{})
	go func() {
		defer close(logged)
		re := regexp.MustCompile(`msg="serving metrics" addr=(127\.0\.0\.1:[0-9]+)`)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				addrs <- m[1]
			}
		}
		io.Copy(io.Discard, stderr)
	}()
	defer func() {
		cmd.Process.Kill()
		<-logged
		cmd.Wait()
	}()
	var addr string
	select {
	case addr = <-addrs:
	case <-logged:
		t.Fatal("the daemon ended without saying where its metrics are")
	case <-time.After(20 * time.Second):
		t.Fatal("the daemon did not say where its metrics are within 20 s")
	}
	res, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %s, %v", res.Status, err)
	}
	for _, want := range []string{"# TYPE ipn_networks gauge", "ipn_networks 0", "ipn_connections ", "process_resident_memory_bytes "} {
		if !bytes.Contains(body, []byte(want)) {
			t.Errorf("the scrape has no %q:\n%s", want, body)
		}
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-logged
	if err := cmd.Wait(); err != nil {
		t.Errorf("ipn daemon after SIGTERM: %v", err)
	}
	// Stopped with the daemon: nothing answers there any more.
	if res, err := (&http.Client{Timeout: 2 * time.Second}).Get("http://" + addr + "/metrics"); err == nil {
		res.Body.Close()
		t.Errorf("metrics still served at %s after the daemon stopped", addr)
	}
}
