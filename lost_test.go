package ipn_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ipn-project/ipn"
)

// A cat asked for the one side the network file does not give it exits at
// once, naming the right it lacks, instead of idling on a port.
func TestCatSideWithoutRight(t *testing.T) {
	requireRoot(t)
	ipnc := ipnCommand(t)
	for _, c := range []struct {
		mode os.FileMode
		flag string
		want string
	}{
		{0o744, "--send-only", "no w permission"},
		{0o722, "--recv-only", "no r permission"},
	} {
		path, _ := bindNet(t, func(s *ipn.Socket) { s.SetMode(c.mode) })
		os.Chmod(path, c.mode)
		p := start(t, asOther, nil, ipnc, "cat", c.flag, path)
		err := p.wait(15 * time.Second)
		if exitStatus(err) != 1 || !strings.Contains(p.stderr(), c.want) {
			t.Errorf("cat %s on a %#o network: %v, stderr %q; want status 1 and %q", c.flag, c.mode, err, p.stderr(), c.want)
		}
		if r, ports := readersOf(path); ports != 1 {
			t.Errorf("after cat %s: %d readers, %d ports; want only the binder's", c.flag, r, ports)
		}
	}
}

// portsVia counts the ports of the network at path as the daemon that env
// names lists them.
func portsVia(env []string, ipnc, path string) int {
	cmd := exec.Command(ipnc, "ls", "--json", path)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.Output()
	if err != nil {
		return -1
	}
	var nets []struct {
		Ports []json.RawMessage `json:"port_list"`
	}
	if json.Unmarshal(out, &nets) != nil || len(nets) != 1 {
		return -1
	}
	return len(nets[0].Ports)
}

// Every command that holds a network, told not to re-join (--no-rejoin),
// says so and exits with status 1 when its daemon goes away, killed or
// stopped, instead of exiting 0 in silence or serving nothing.
func TestCommandsSayTheDaemonWentAway(t *testing.T) {
	requireRoot(t)
	ipnc := ipnCommand(t)
	for _, how := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
		t.Run(how.String(), func(t *testing.T) {
			sock, d := ownDaemon(t)
			env := []string{"IPN_SOCKET=" + sock}
			dir := tempDir(t)
			net := filepath.Join(dir, "net")
			cmds := map[string]*proc{"cat --bind": start(t, nil, env, ipnc, "cat", "--no-rejoin", "--bind", "--recv-only", net)}
			waitFor(t, 15*time.Second, "the binder", func() bool { return portsVia(env, ipnc, net) == 1 })
			cmds["cat (fast path)"] = start(t, nil, env, ipnc, "cat", "--no-rejoin", "--recv-only", net)
			cmds["cat (socket path)"] = start(t, nil, append(env, "IPN_FASTPATH=0"), ipnc, "cat", "--no-rejoin", "--recv-only", net)
			cmds["cat --send-only"] = start(t, nil, env, ipnc, "cat", "--no-rejoin", "--send-only", net)
			cmds["dump"] = start(t, nil, env, ipnc, "dump", "--no-rejoin", net)
			cmds["vde"] = start(t, nil, env, ipnc, "vde", "--no-rejoin", filepath.Join(dir, "lan"), filepath.Join(dir, "lan.vde"))
			waitFor(t, 15*time.Second, "the members", func() bool { return portsVia(env, ipnc, net) == 5 })
			waitFor(t, 15*time.Second, "ipn vde serving", func() bool { return strings.Contains(cmds["vde"].stderr(), "serves VDE clients") })
			d.cmd.Process.Signal(how)
			d.wait(15 * time.Second)
			for name, p := range cmds {
				err := p.wait(15 * time.Second)
				if exitStatus(err) != 1 || !strings.Contains(p.stderr(), "daemon") {
					t.Errorf("%s after the daemon's %v: %v, stderr %q; want status 1, naming the daemon", name, how, err, p.stderr())
				}
			}
		})
	}
}

// An interrupted command exits with the status shells expect: 128 + the
// signal's number.
func TestInterruptedCommandsExitStatus(t *testing.T) {
	ipnc := ipnCommand(t)
	dir := tempDir(t)
	net, _ := bindNet(t, nil)
	for _, c := range []struct {
		sig  syscall.Signal
		args []string
	}{
		{syscall.SIGINT, []string{"cat", "--bind", filepath.Join(dir, "a")}},
		{syscall.SIGTERM, []string{"cat", "--bind", filepath.Join(dir, "b")}},
		{syscall.SIGINT, []string{"dump", net}},
		{syscall.SIGINT, []string{"vde", filepath.Join(dir, "c"), filepath.Join(dir, "c.vde")}},
	} {
		p := start(t, nil, nil, ipnc, c.args...)
		path := c.args[len(c.args)-1]
		if c.args[0] == "vde" {
			path = filepath.Join(path, "ctl")
		}
		waitFor(t, 15*time.Second, strings.Join(c.args, " "), func() bool {
			if c.args[0] == "dump" {
				_, ports := readersOf(path)
				return ports == 2
			}
			_, err := os.Stat(path)
			return err == nil
		})
		switch c.args[0] {
		case "cat":
			waitFor(t, 15*time.Second, "cat's port", func() bool { _, ports := readersOf(path); return ports == 1 })
		case "vde":
			waitFor(t, 15*time.Second, "ipn vde serving", func() bool { return strings.Contains(p.stderr(), "serves VDE clients") })
		}
		p.cmd.Process.Signal(c.sig)
		err := p.wait(15 * time.Second)
		if got, want := exitStatus(err), 128+int(c.sig); got != want {
			t.Errorf("ipn %s on %v: exit status %d, want %d; stderr %q", strings.Join(c.args, " "), c.sig, got, want, p.stderr())
		}
	}
}

// ipn vde serves an existing network as it is; a --proto that is not the
// network's is refused, naming both.
func TestVDEServesExistingNetworkAsItIs(t *testing.T) {
	ipnc := ipnCommand(t)
	path, _ := bindNet(t, nil) // a hub
	dir := tempDir(t)
	p := start(t, nil, nil, ipnc, "vde", path, filepath.Join(dir, "a.vde"))
	// It says so once it serves (its ctl appears a moment before).
	waitFor(t, 15*time.Second, "ipn vde serving the hub network", func() bool {
		select {
		case <-p.done:
			t.Fatalf("ipn vde on a hub network exited: %v: %s", p.err, p.stderr())
		default:
		}
		return strings.Contains(p.stderr(), "serves VDE clients")
	})
	q := start(t, nil, nil, ipnc, "vde", "--proto", "switch", path, filepath.Join(dir, "b.vde"))
	err := q.wait(15 * time.Second)
	if e := q.stderr(); err == nil || !strings.Contains(e, "hub") || !strings.Contains(e, "switch") {
		t.Errorf("ipn vde --proto switch on a hub network: %v, stderr %q; want an error naming hub and switch", err, e)
	}
}

// Values cat cannot use are refused, not replaced by defaults or ignored.
func TestCatRefusesValuesItCannotUse(t *testing.T) {
	ipnc := ipnCommand(t)
	dir := tempDir(t)
	path, _ := bindNet(t, nil)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--bind", "--mtu", "0", filepath.Join(dir, "m")}, "mtu"},
		{[]string{"--bind", "--ports", "0", filepath.Join(dir, "p")}, "ports"},
		{[]string{"--bind", "--pool", "0", filepath.Join(dir, "q")}, "pool"},
		{[]string{"--lossless", path}, "--bind"},
		{[]string{"--mtu", "1000", path}, "--bind"},
		{[]string{"--count", "-1", path}, "--count"},
	} {
		p := start(t, nil, nil, ipnc, append([]string{"cat"}, c.args...)...)
		p.stdin.Close()
		err := p.wait(15 * time.Second)
		if exitStatus(err) != 1 || !strings.Contains(strings.ToLower(p.stderr()), c.want) {
			t.Errorf("ipn cat %s: %v, stderr %q; want status 1 naming %q", strings.Join(c.args, " "), err, p.stderr(), c.want)
		}
	}
}

// A regular file is not a network, and cat does not suggest making one
// there (--bind would fail on it).
func TestCatOnRegularFile(t *testing.T) {
	path := filepath.Join(tempDir(t), "file")
	os.WriteFile(path, []byte("data"), 0o644)
	p := start(t, nil, nil, ipnCommand(t), "cat", path)
	err := p.wait(15 * time.Second)
	if e := p.stderr(); exitStatus(err) != 1 || !strings.Contains(e, "regular file") || strings.Contains(e, "--bind") {
		t.Errorf("cat on a regular file: %v, stderr %q; want status 1 saying it is a regular file, without --bind", err, e)
	}
	if b, _ := os.ReadFile(path); string(b) != "data" {
		t.Errorf("the file now holds %q", b)
	}
}

// ipn plug --reconnect retries a far end that is not there yet, but not a
// URL that is wrong: that is an error at once.
func TestPlugReconnectRefusesBadURL(t *testing.T) {
	path, _ := bindNet(t, nil)
	p := start(t, nil, nil, ipnCommand(t), "plug", "--reconnect", path, "vxlan://239.1.2.3")
	err := p.wait(15 * time.Second)
	if exitStatus(err) != 1 || !strings.Contains(p.stderr(), "vni") {
		t.Errorf("plug --reconnect with a URL without vni: %v, stderr %q; want status 1 naming vni", err, p.stderr())
	}
	q := start(t, nil, nil, ipnCommand(t), "plug", "--reconnect", path, "vde://"+filepath.Join(tempDir(t), "later"))
	waitFor(t, 15*time.Second, "a retry", func() bool { return strings.Contains(q.stderr(), "again in") })
}
