package ipn_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ipn-project/ipn"
)

// The client package links none of the server: no engine, no policy, no
// daemon and none of the daemon's ports. A program that joins networks
// carries the client alone.
func TestClientLinksNoServer(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "github.com/ipn-project/ipn").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		rest, ok := strings.CutPrefix(dep, "github.com/ipn-project/ipn/")
		if !ok {
			continue
		}
		for _, server := range []string{"engine", "policy", "daemon", "endpoint", "port", "farend", "cable", "devfs", "netstack"} {
			if rest == server || strings.HasPrefix(rest, server+"/") {
				t.Errorf("the client package links %s", dep)
			}
		}
	}
}

// A Dialer without Start (a program that does not import daemon/autostart)
// starts no daemon: NewSocket fails with ErrNoDaemon and says how to get
// one, and nothing appears at the socket.
func TestDialerWithoutStartStartsNoDaemon(t *testing.T) {
	dir := filepath.Join(tempDir(t), "run")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	d := &ipn.Dialer{Socket: filepath.Join(dir, "ipn.sock")}
	s, err := d.NewSocket(ipn.Any)
	if err == nil {
		s.Close()
		t.Fatal("NewSocket reached a daemon where none runs")
	}
	if !errors.Is(err, ipn.ErrNoDaemon) || !strings.Contains(err.Error(), "daemon/autostart") {
		t.Errorf("NewSocket: %v; want ErrNoDaemon naming daemon/autostart", err)
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("files appeared beside the socket: %v", left)
	}
}

// An Endpoint asked to read into no buffers says so at once.
func TestEndpointReadNoBuffers(t *testing.T) {
	path, _ := bindNet(t, nil)
	e := member(t, path, nil).Endpoint()
	done := make(chan error, 1)
	go func() { _, err := e.Read(nil, nil); done <- err }()
	select {
	case err := <-done:
		if !errors.Is(err, syscall.EINVAL) {
			t.Fatalf("Read(nil, nil): %v, want EINVAL", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Read(nil, nil) did not return")
	}
}
