package ipn_test

import (
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/ipn-project/ipn/internal/vdetest"
)

// Two networks joined by ipn plug's stream cable through a real pipe
// (dpipe from Debian's vdeplug): frames cross both ways, bytes intact.
func TestPlugStdioJoinsNetworks(t *testing.T) {
	vdetest.Need(t, "dpipe")
	dpipe, _ := exec.LookPath("dpipe")
	ipnc := ipnCommand(t)
	pathA, a := bindNet(t, nil)
	pathB := filepath.Join(tempDir(t), "b")
	_, b := bindNetAt(t, pathB)
	start(t, nil, nil, dpipe, ipnc, "plug", pathA, "-", "=", ipnc, "plug", pathB, "-")
	waitFor(t, 15*time.Second, "cable on both networks", func() bool {
		_, pa := readersOf(pathA)
		_, pb := readersOf(pathB)
		return pa == 2 && pb == 2
	})
	fa := ethFrame(bcast, macOf(1), "a to b")
	a.Send(fa)
	if got := recvString(t, b); got != string(fa) {
		t.Fatalf("b got %x", got)
	}
	fb := ethFrame(bcast, macOf(2), "b to a")
	b.Send(fb)
	if got := recvString(t, a); got != string(fb) {
		t.Fatalf("a got %x", got)
	}
}
