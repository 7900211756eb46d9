package ipn_test

import (
	"os/exec"
	"strings"
	"testing"
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
