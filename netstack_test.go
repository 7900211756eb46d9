package ipn_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ipn-project/ipn"
)

// TestHTTPBetweenProcesses runs examples/http as two processes, each with a
// TCP/IP stack of its own on a switch network: get fetches what serve
// serves.
func TestHTTPBetweenProcesses(t *testing.T) {
	dir := tempDir(t)
	bin := filepath.Join(dir, "http")
	if out, err := exec.Command("go", "build", "-o", bin, "./examples/http").CombinedOutput(); err != nil {
		t.Fatalf("go build ./examples/http: %v\n%s", err, out)
	}
	os.Chmod(bin, 0o755)

	path := filepath.Join(dir, "lan")
	bindAt(t, ipn.VDESwitch, path, nil, false)

	srv := start(t, nil, nil, bin, "serve", path, "10.55.0.1/24", ":80")
	srv.expect("serving on", 10*time.Second)
	get := start(t, nil, nil, bin, "get", path, "10.55.0.2/24", "http://10.55.0.1/hello")
	l := get.line(30 * time.Second)
	if !strings.HasPrefix(l, "hello from 10.55.0.1:80 ") || !strings.HasSuffix(l, "over IPN: GET /hello") {
		t.Errorf("get printed %q", l)
	}
	if err := get.wait(10 * time.Second); err != nil {
		t.Fatalf("get: %v; stderr:\n%s", err, get.stderr())
	}
}

// TestPingNetstackFromTap pings the stack of a serving examples/http
// process from a kernel: a tap plugged into the switch, in a namespace of
// its own.
func TestPingNetstackFromTap(t *testing.T) {
	netnsNeed(t, "ping")
	ipnBin := ipnCommand(t)
	dir := tempDir(t)
	bin := filepath.Join(dir, "http")
	if out, err := exec.Command("go", "build", "-o", bin, "./examples/http").CombinedOutput(); err != nil {
		t.Fatalf("go build ./examples/http: %v\n%s", err, out)
	}
	path := filepath.Join(dir, "lan")
	bindAt(t, ipn.VDESwitch, path, nil, false)
	srv := start(t, nil, nil, bin, "serve", path, "10.55.0.1/24", ":80")
	srv.expect("serving on", 10*time.Second)

	ns := netnsAdd(t, "nstap")
	plug := start(t, nil, nil, "ip", "netns", "exec", ns, ipnBin, "plug", path, "tap://ipntap0")
	waitFor(t, 10*time.Second, "the tap in "+ns, func() bool {
		return exec.Command("ip", "-n", ns, "link", "show", "ipntap0").Run() == nil
	})
	netnsRun(t, ns, "addr add 10.55.0.9/24 dev ipntap0", "link set ipntap0 up")
	out, err := exec.Command("ip", "netns", "exec", ns, "ping", "-c", "2", "-W", "5", "10.55.0.1").CombinedOutput()
	if err != nil {
		t.Fatalf("ping: %v\n%s\nplug stderr:\n%s", err, out, plug.stderr())
	}
	if !strings.Contains(string(out), "2 received") {
		t.Fatalf("ping:\n%s", out)
	}
}
