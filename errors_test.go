package ipn_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ipn-project/ipn"
	"github.com/ipn-project/ipn/daemon"
)

// errorNets makes the networks the error tests refuse requests on: a hub,
// a 4-port switch, and a 1-port hub that its binder fills.
func errorNets(t *testing.T) (hub, sw, full string) {
	t.Helper()
	hub, _ = bindNet(t, nil)
	sw = filepath.Join(tempDir(t), "sw")
	bindAt(t, ipn.VDESwitch, sw, func(s *ipn.Socket) { s.SetNumNodes(4) }, true)
	full, _ = bindNet(t, func(s *ipn.Socket) { s.SetNumNodes(1) })
	return hub, sw, full
}

// A refused command fails and says what was wrong and what is allowed, or
// what to do next.
func TestErrorsNameValueAndRange(t *testing.T) {
	ipnc := ipnCommand(t)
	hub, sw, full := errorNets(t)
	dir := tempDir(t)
	regular := filepath.Join(dir, "regular")
	if err := os.WriteFile(regular, []byte("keep me\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want []string // each in stderr
	}{
		{"missing vlan", []string{"port", sw, "3", "--vlan", "77"}, []string{"vlan 77 does not exist", "ipn vlan", "add 77"}},
		{"missing vlan del", []string{"vlan", sw, "del", "77"}, []string{"vlan 77 does not exist"}},
		{"mac of a hub", []string{"mac", hub}, []string{"hub networks have no MAC table", "policy hub", "switch or l3switch"}},
		{"vlans of a hub", []string{"vlan", hub}, []string{"hub networks have no VLANs", "vlan needs switch"}},
		{"unknown option", []string{"policy", sw, "bogus"}, []string{`"bogus"`, "expire", "hashsize"}},
		{"unknown option set", []string{"policy", sw, "bogus", "1"}, []string{`"bogus"`, "vlan.add", "port.vlan"}},
		{"vlan out of range", []string{"vlan", sw, "add", "5000"}, []string{"5000", "1..4095"}},
		{"vlan with garbage", []string{"vlan", sw, "add", "10", "5x"}, []string{`"5x"`, "1..4095"}},
		{"negative vlan", []string{"vlan", sw, "add", "-3"}, []string{"-3", "1..4095", "--"}},
		{"negative port", []string{"port", sw, "-1", "--vlan", "1"}, []string{"-1", "a port is 0 or more"}},
		{"port with garbage", []string{"port", sw, "3x", "--vlan", "1"}, []string{`"3x"`, "port number"}},
		{"bad expire", []string{"policy", sw, "expire", "banana"}, []string{`"banana"`, "100ms..24h"}},
		{"port out of range", []string{"port", sw, "99", "--vlan", "1"}, []string{`port "99"`, "want 0..3, the network's ports"}},
		{"mtu out of range", []string{"cat", "--bind", "--mtu", "67108865", filepath.Join(dir, "big")}, []string{"mtu 67108865", "1..67108864"}},
		{"ports out of range", []string{"cat", "--bind", "--ports", "70000", filepath.Join(dir, "many")}, []string{"ports 70000", "1..65536"}},
		{"pool out of range", []string{"cat", "--bind", "--pool", "70000", filepath.Join(dir, "deep")}, []string{"pool size 70000", "1..65536"}},
		{"port taken", []string{"cat", "--port", "0", hub}, []string{"port 0 is taken", "ipn ls " + hub}},
		{"port beyond the network", []string{"cat", "--port", "9", sw}, []string{"port 9", "ports 0..3"}},
		{"network full", []string{"cat", full}, []string{"the network is full", "all 1 ports are in use"}},
		{"regular file", []string{"cat", regular}, []string{"a regular file, not a network"}},
		{"bind a regular file", []string{"cat", "--bind", regular}, []string{"a regular file, not a network"}},
		{"daemon on a regular file", []string{"daemon", "-f", "--socket", regular}, []string{regular, "a regular file, not a daemon socket", "refusing to touch it"}},
		{"vde port group", []string{"plug", hub, "vde://" + dir + "[abc]"}, []string{`"abc"`, "DIR[N]", "DIR[portgroup=NAME]"}},
		{"vxlan without vni", []string{"plug", hub, "vxlan://239.1.1.1"}, []string{"no vni", "vni=N", "e.g. vxlan://239.1.1.1/vni="}},
		{"negative bench pool", []string{"bench", "--pool", "-3"}, []string{"--pool -3", "1..65536"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := start(t, nil, nil, ipnc, tc.args...)
			err := p.wait(15 * time.Second)
			stderr := p.stderr()
			if err == nil {
				t.Fatalf("ipn %s succeeded; stderr %q", strings.Join(tc.args, " "), stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("ipn %s: stderr %q lacks %q", strings.Join(tc.args, " "), stderr, w)
				}
			}
		})
	}
	if b, err := os.ReadFile(regular); err != nil || string(b) != "keep me\n" {
		t.Errorf("the regular file after the commands: %q, %v", b, err)
	}
	if _, err := os.Lstat(regular + ".lock"); err == nil {
		t.Errorf("the daemon made %s.lock beside a regular file", regular)
	}
}

// The errors keep their errnos, for errors.Is, under their texts.
func TestErrorsKeepErrno(t *testing.T) {
	hub, sw, full := errorNets(t)
	dir := tempDir(t)
	check := func(what string, err error, errno syscall.Errno, texts ...string) {
		t.Helper()
		if !errors.Is(err, errno) {
			t.Errorf("%s: %v, want %v", what, err, errno)
			return
		}
		for _, s := range texts {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("%s: %q lacks %q", what, err, s)
			}
		}
	}
	s, err := ipn.NewSocket(ipn.Any)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	check("SetMTU(0)", s.SetMTU(0), syscall.EINVAL, "mtu 0", "1..67108864")
	check("SetMTU(67108865)", s.SetMTU(67108865), syscall.EINVAL, "mtu 67108865", "1..67108864")
	check("SetNumNodes(0)", s.SetNumNodes(0), syscall.EINVAL, "ports 0", "1..65536")
	check("SetMsgPoolSize(0)", s.SetMsgPoolSize(0), syscall.EINVAL, "pool size 0", "1..65536")
	check("SetFlags(64)", s.SetFlags(64), syscall.EINVAL, "0x40", "lossless")
	check("SetDescription(long)", s.SetDescription(strings.Repeat("d", 200)), syscall.EINVAL, "200 bytes", "at most 128")

	connectAt := func(path string, port int) error {
		c, err := ipn.NewSocket(ipn.Any)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if port >= 0 {
			if err := c.SetPort(port); err != nil {
				return err
			}
		}
		return c.Connect(path)
	}
	check("port beyond the network", connectAt(sw, 9), syscall.EADDRNOTAVAIL, "port 9: the network has ports 0..3")
	check("port taken", connectAt(hub, 0), syscall.EADDRNOTAVAIL, "port 0 is taken")
	check("full network", connectAt(full, -1), syscall.EADDRNOTAVAIL, "the network is full: all 1 ports are in use")

	check("missing vlan", ipn.SetPolicyOption(sw, "port.vlan", "3 77"), syscall.ENOENT, "vlan 77 does not exist", "vlan.add 77")
	check("missing trunk vlan", ipn.SetPolicyOption(sw, "port.trunk", "3 5,77"), syscall.ENOENT, "vlan 5 does not exist")
	_, err = ipn.PolicyOption(hub, "macs")
	check("hub macs", err, syscall.ENOPROTOOPT, "hub", `"macs"`)
	_, err = ipn.PolicyOption(sw, "bogus")
	check("switch bogus", err, syscall.ENOPROTOOPT, `"bogus"`, "expire")
	check("port out of range", ipn.SetPolicyOption(sw, "port.vlan", "99 1"), syscall.EINVAL, `port "99"`, "want 0..3, the network's ports")

	regular := filepath.Join(dir, "regular")
	os.WriteFile(regular, nil, 0o644)
	c, _ := ipn.NewSocket(ipn.Any)
	defer c.Close()
	check("connect to a regular file", c.Connect(regular), syscall.ECONNREFUSED, "a regular file, not a network")
	check("daemon socket on a regular file", daemon.CheckSocket(regular), syscall.ENOTSOCK, regular, "a regular file")
	if err := daemon.CheckSocket(filepath.Join(dir, "none")); err != nil {
		t.Errorf("CheckSocket of a missing path: %v", err)
	}
	if err := daemon.CheckSocket(hub); err != nil {
		t.Errorf("CheckSocket of a socket file: %v", err)
	}
}

// Without a system daemon each user has their own: asking one's own daemon
// for another user's network says which daemon answered, and what shares
// networks between users.
func TestErrorsNameTheDaemon(t *testing.T) {
	requireRoot(t)
	home, env, d := userDaemon(t, asOther)
	sock := filepath.Join(home, "run", "ipn.sock")
	// A network of the shared test daemon, whose file is ownerUID's: the
	// other user's own daemon knows nothing of it.
	path, _ := bindNet(t, nil)
	os.Chown(path, ownerUID, ownerUID)
	os.Chmod(path, 0o777)
	p := start(t, asOther, env, ipnCommand(t), "cat", "--recv-only", path)
	err := p.wait(waitProcs)
	stderr := p.stderr()
	for _, want := range []string{"your own ipn daemon at " + sock, "uid 2101", "start a system daemon as root (ipn daemon)"} {
		if err == nil || !strings.Contains(stderr, want) {
			t.Errorf("ipn cat of another user's network: %v, stderr %q lacks %q", err, stderr, want)
		}
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	if err := d.wait(15 * time.Second); err != nil {
		t.Fatalf("user daemon on SIGTERM: %v: %s", err, d.stderr())
	}
}

// ipn mount names the real cause of a failed mount: a missing mount
// point, or a /dev/fuse the user may not open.
func TestErrorsMountCause(t *testing.T) {
	requireRoot(t)
	ipnc := ipnCommand(t)
	dir := tempDir(t)
	missing := filepath.Join(dir, "missing")
	p := start(t, asOther, nil, ipnc, "mount", missing)
	if err := p.wait(waitProcs); err == nil || !strings.Contains(p.stderr(), "the mount point is missing") || !strings.Contains(p.stderr(), missing) {
		t.Errorf("mount on a missing directory: %v, stderr %q", err, p.stderr())
	}
	fi, err := os.Stat("/dev/fuse")
	if err != nil || fi.Mode().Perm()&0o006 == 0o006 {
		t.Skip("/dev/fuse is missing or open to every user: no inaccessible /dev/fuse to report")
	}
	mp := filepath.Join(dir, "mp")
	os.Mkdir(mp, 0o777)
	p = start(t, asOther, nil, ipnc, "mount", mp)
	if err := p.wait(waitProcs); err == nil || !strings.Contains(p.stderr(), "/dev/fuse") || !strings.Contains(p.stderr(), "not open to you") {
		t.Errorf("mount with an inaccessible /dev/fuse: %v, stderr %q", err, p.stderr())
	}
}
