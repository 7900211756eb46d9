package ipn_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ipn-project/ipn"
)

// TestMgmtActsOnPinnedNetworkAfterPathSwap: a console checks a caller's x
// on the network file it opened at start, and must act on that file's
// network, never on what its path names later. A root console for
// mallory's network, in a directory of hers, lets her move that directory
// aside and put a link to alice's directory in its place: her vlan/create
// must still make the VLAN on her own network, never on alice's (where she
// has no x).
func TestMgmtActsOnPinnedNetworkAfterPathSwap(t *testing.T) {
	a, m := realUsers(t)
	adir := userDir(t, a, 0o755)
	alan := filepath.Join(adir, "lan")
	start(t, a.cred(), nil, ipnCommand(t), "cat", "--bind", "--proto", "switch", "--mode", "0744", alan)
	waitFor(t, waitProcs, "alice's switch", func() bool { _, err := os.Stat(alan); return err == nil })

	mdir := userDir(t, m, 0o755)
	box := filepath.Join(mdir, "box")
	if err := os.Mkdir(box, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chown(box, int(m.uid), int(m.gid))
	mlan := filepath.Join(box, "lan")
	start(t, m.cred(), nil, ipnCommand(t), "cat", "--bind", "--proto", "switch", "--mode", "0744", mlan)
	waitFor(t, waitProcs, "mallory's switch", func() bool { _, err := os.Stat(mlan); return err == nil })

	// Root serves a console for mallory's network.
	mgmt := filepath.Join(shortDir(t), "m.mgmt")
	p := start(t, nil, nil, ipnCommand(t), "mgmt", mlan, "--mgmt", mgmt, "--mgmt-mode", "666")
	waitFor(t, waitProcs, "the console", func() bool { _, err := os.Stat(mgmt); return err == nil })
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("ipn mgmt:\n%s", p.stderr())
		}
	})
	if out, err := vdecmd(t, &m, mgmt, "vlan/create 8"); err != nil || out != "1000 Success\n" {
		t.Fatalf("mallory on the console of her network: %v %q", err, out)
	}

	// What mallory may do in her own directory: box aside, a link to
	// alice's directory in its place.
	if out, err := runAs(t, &m, nil, "/bin/sh", "-c", "mv "+box+" "+box+".old && ln -s "+adir+" "+box); err != nil {
		t.Fatalf("mallory's swap: %v %s", err, out)
	}
	out, _ := vdecmd(t, &m, mgmt, "vlan/create 9")
	vl, err := ipn.PolicyOption(alan, "vlans")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(vl, "9") {
		t.Errorf("mallory (no x on alice's %s) made VLAN 9 there through root's console of her own network (%q): alice's vlans %s", alan, out, vl)
	}
	ml, err := ipn.PolicyOption(filepath.Join(box+".old", "lan"), "vlans")
	if err != nil {
		t.Fatal(err)
	}
	if out != "1000 Success\n" || !strings.Contains(ml, "9") {
		t.Errorf("mallory's vlan/create 9 after the swap: %q; her own network's vlans %s, want 9 there", out, ml)
	}
}
