package ipn_test

import (
	"os/exec"
	"testing"
	"time"
)

// A program in another language joins with plain Unix sockets, following
// docs/protocol.md: examples/python/ipn_join.py.
func TestPythonClientJoins(t *testing.T) {
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not installed")
	}
	path, member := bindNet(t, nil)
	py := start(t, nil, nil, python, "examples/python/ipn_join.py", path, "from python")
	if got := recvString(t, member); got != "from python" {
		t.Fatalf("Go member got %q", got)
	}
	member.Send([]byte("to python"))
	if got := py.line(15 * time.Second); got != "to python" {
		t.Fatalf("python printed %q; stderr: %s", got, py.stderr())
	}
	if err := py.wait(15 * time.Second); err != nil {
		t.Fatalf("python client: %v; stderr: %s", err, py.stderr())
	}
}
