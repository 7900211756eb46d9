package ipn_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/ipn-project/ipn"
)

// The tests of this file check what the read-only commands print (ipn ls,
// port, policy, device) and that they start no daemon.

// ipnRun runs the ipn command with args and env (added to the test's) and
// returns its stdout, its stderr and how it exited.
func ipnRun(t *testing.T, env []string, args ...string) (string, string, error) {
	t.Helper()
	p := start(t, nil, env, ipnCommand(t), args...)
	out := strings.Join(drain(p), "\n")
	err := p.wait(waitProcs)
	return out, p.stderr(), err
}

// lsNet is a network as ipn ls --json prints it: the daemon's fields, and
// the mode as an octal string.
type lsNet struct {
	ipn.NetInfo
	Mode string `json:"mode"`
}

// decodeLs reads the output of ipn ls --json, with each network's mode
// (an octal string there) back in NetInfo.Mode.
func decodeLs(out string) ([]ipn.NetInfo, error) {
	var raw []lsNet
	if err := json.Unmarshal([]byte(out), &raw); err != nil {
		return nil, err
	}
	nets := make([]ipn.NetInfo, len(raw))
	for i, n := range raw {
		mode, err := strconv.ParseUint(n.Mode, 8, 32)
		if err != nil || len(n.Mode) != 4 {
			return nil, fmt.Errorf("mode %q of %s: want 4 octal digits", n.Mode, n.Path)
		}
		nets[i] = n.NetInfo
		nets[i].Mode = uint32(mode)
	}
	return nets, nil
}

// ipn ls --json prints the mode as ls -l's octal digits, "0764".
func TestLsJSONModeOctal(t *testing.T) {
	path, _ := bindNet(t, nil)
	if err := os.Chmod(path, 0o764); err != nil {
		t.Fatal(err)
	}
	out, errs, err := ipnRun(t, nil, "ls", "--json", path)
	if err != nil {
		t.Fatalf("ipn ls --json: %v: %s", err, errs)
	}
	var raw []map[string]any
	if err := json.Unmarshal([]byte(out), &raw); err != nil || len(raw) != 1 {
		t.Fatalf("ipn ls --json: %v\n%s", err, out)
	}
	if m := raw[0]["mode"]; m != "0764" {
		t.Errorf(`mode %#v, want "0764"`, m)
	}
	if nets, err := decodeLs(out); err != nil || nets[0].Mode != 0o764 {
		t.Errorf("decoded: %v %+v", err, nets)
	}
}

// ipn port lists the ports in use, --all every port, in text and JSON.
func TestPortListsUsedPorts(t *testing.T) {
	path, _ := devSwitch(t)
	a := member(t, path, nil)
	b := member(t, path, nil)
	used := map[int]bool{a.Port(): true, b.Port(): true}
	for _, c := range []struct {
		all  bool
		want int
	}{{false, 2}, {true, 64}} {
		args := []string{"port", path}
		if c.all {
			args = append(args, "--all")
		}
		out, errs, err := ipnRun(t, nil, args...)
		if err != nil {
			t.Fatalf("ipn %v: %v: %s", args, err, errs)
		}
		lines := strings.Split(out, "\n")
		if len(lines) != c.want+1 || !strings.HasPrefix(lines[0], "PORT") {
			t.Errorf("ipn %v: %d lines, want a header and %d ports:\n%s", args, len(lines), c.want, out)
		}
		out, errs, err = ipnRun(t, nil, append(args, "--json")...)
		if err != nil {
			t.Fatalf("ipn %v --json: %v: %s", args, err, errs)
		}
		var ports []struct{ Port int }
		if err := json.Unmarshal([]byte(out), &ports); err != nil || len(ports) != c.want {
			t.Fatalf("ipn %v --json: %v, %d ports, want %d:\n%s", args, err, len(ports), c.want, out)
		}
		for _, p := range ports {
			if !c.all && !used[p.Port] {
				t.Errorf("ipn %v lists port %d, not in use", args, p.Port)
			}
		}
	}
}

// ipn policy --json prints JSON: the settings as an object, a setting as
// a JSON value, a table as it is.
func TestPolicyJSON(t *testing.T) {
	sw, _ := devSwitch(t)
	l3 := filepath.Join(tempDir(t), "l3")
	bindAt(t, ipn.VDESwitchL3, l3, nil, false)
	for _, c := range []struct {
		path string
		keys []string
	}{{sw, []string{"expire", "hashsize", "loop.interval"}}, {l3, []string{"expire", "hashsize"}}} {
		out, errs, err := ipnRun(t, nil, "policy", c.path, "--json")
		if err != nil {
			t.Fatalf("ipn policy %s --json: %v: %s", c.path, err, errs)
		}
		var settings map[string]any
		if err := json.Unmarshal([]byte(out), &settings); err != nil {
			t.Fatalf("ipn policy %s --json: %v\n%s", c.path, err, out)
		}
		for _, k := range c.keys {
			if settings[k] == nil {
				t.Errorf("ipn policy %s --json lacks %s: %s", c.path, k, out)
			}
		}
		if settings["hashsize"] != 4096.0 || settings["expire"] != "2m0s" {
			t.Errorf("ipn policy %s --json: %s", c.path, out)
		}
	}
	for _, args := range [][]string{{sw, "expire"}, {sw, "ports"}, {l3, "ips"}} {
		out, errs, err := ipnRun(t, nil, append([]string{"policy", "--json"}, args...)...)
		if err != nil || !json.Valid([]byte(out)) {
			t.Errorf("ipn policy --json %v: %v %s: %q", args, err, errs, out)
		}
	}
}

// ipn policy --help lists every option of each built-in policy, the
// l3switch's ips among them.
func TestPolicyHelpListsOptions(t *testing.T) {
	out, errs, err := ipnRun(t, nil, "policy", "--help")
	if err != nil {
		t.Fatalf("ipn policy --help: %v: %s", err, errs)
	}
	_, l3, ok := strings.Cut(out, "l3switch:")
	if !ok {
		t.Fatalf("ipn policy --help has no l3switch section:\n%s", out)
	}
	for _, want := range []string{"ips", "macs", "expire", "hashsize", "1..1048576"} {
		if !strings.Contains(l3, want) {
			t.Errorf("the l3switch section of ipn policy --help lacks %q:\n%s", want, l3)
		}
	}
	for _, want := range []string{"loop.interval", "mac.flush", "vlan.add", "port.trunk", "ports", "vlans"} {
		if !strings.Contains(out, want) {
			t.Errorf("ipn policy --help lacks %q", want)
		}
	}
}

// ipn plug names every scheme it takes when given one it does not, tap
// and grab included.
func TestPlugUnknownSchemeListsDevices(t *testing.T) {
	path, _ := bindNet(t, nil)
	_, errs, err := ipnRun(t, nil, "plug", path, "bogus://x")
	if err == nil {
		t.Fatal("ipn plug bogus:// succeeded")
	}
	for _, want := range []string{`"bogus"`, "tap", "grab", "vxlan", "ipn"} {
		if !strings.Contains(errs, want) {
			t.Errorf("ipn plug bogus://x: error lacks %s: %s", want, errs)
		}
	}
}

// ipn device clear of a device the network lacks names the device and the
// network, and says where to look.
func TestDeviceClearMissingNamesIt(t *testing.T) {
	path, _ := devSwitch(t)
	for _, op := range []string{"clear", "join"} {
		_, errs, err := ipnRun(t, nil, "device", path, op, "nosuch0")
		want := fmt.Sprintf("no device nosuch0 on %s: ipn ls %s lists its ports", path, path)
		if err == nil || !strings.Contains(errs, want) || strings.Contains(errs, "no such file") {
			t.Errorf("ipn device %s nosuch0: %v %q, want %q", op, err, errs, want)
		}
	}
}

// lsPeer returns the PEER column of the port described descr in ipn ls
// path, and the peer of that port in ipn ls --json.
func lsPeer(t *testing.T, path, descr string) (string, string) {
	t.Helper()
	table, errs, err := ipnRun(t, nil, "ls", path)
	if err != nil {
		t.Fatalf("ipn ls: %v: %s", err, errs)
	}
	col := ""
	for _, l := range strings.Split(table, "\n") {
		f := strings.Fields(l)
		// PORT SIDES DESCR... [PERSIST] PEER...: the description is
		// "tap NAME", two words.
		if len(f) > 4 && f[2]+" "+f[3] == descr {
			rest := f[4:]
			if rest[0] == "PERSIST" {
				rest = rest[1:]
			}
			col = strings.Join(rest, " ")
		}
	}
	if col == "" {
		t.Fatalf("ipn ls has no port %q:\n%s", descr, table)
	}
	out, errs, err := ipnRun(t, nil, "ls", "--json", path)
	if err != nil {
		t.Fatalf("ipn ls --json: %v: %s", err, errs)
	}
	nets, err := decodeLs(out)
	if err != nil || len(nets) != 1 {
		t.Fatalf("ipn ls --json: %v\n%s", err, out)
	}
	for _, p := range nets[0].PortsInfo {
		if p.Descr == descr {
			return col, p.Peer
		}
	}
	t.Fatalf("ipn ls --json has no port %q:\n%s", descr, out)
	return "", ""
}

// A persistent tap whose plug exited shows no process behind it; one that
// ipn device join took over shows that process.
func TestDevicePeerAfterPlugExits(t *testing.T) {
	netnsNeed(t)
	ns := netnsAdd(t, "peer")
	path, s := devSwitch(t)
	tap := devName("tq")
	t.Cleanup(func() { s.ClearPersist(tap) })
	p := devPlug(t, ns, path, "tap", tap, "--persist")
	if pi := devicePort(path, "tap "+tap); pi == nil || !strings.Contains(pi.Peer, "pid ") {
		t.Errorf("while the plug runs, the tap's peer is %+v, want the plug's pid", pi)
	}
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	p.wait(waitProcs)
	// The daemon learns that the plug has gone when its session ends.
	waitFor(t, waitProcs, "the listing to show no process behind the tap whose plug exited", func() bool {
		pi := devicePort(path, "tap "+tap)
		return pi != nil && pi.Persist && !strings.Contains(pi.Peer, "pid ")
	})
	col, peer := lsPeer(t, path, "tap "+tap)
	if strings.Contains(col, "pid") || strings.Contains(peer, "pid") {
		t.Errorf("after the plug exited, ipn ls shows PEER %q, JSON peer %q: want no process", col, peer)
	}

	j := start(t, nil, nil, ipnCommand(t), "device", path, "join", tap)
	j.expect("joined "+tap, waitProcs)
	want := fmt.Sprintf("pid %d uid 0", j.cmd.Process.Pid)
	if col, peer := lsPeer(t, path, "tap "+tap); !strings.Contains(col, want) || !strings.Contains(peer, want) {
		t.Errorf("after ipn device join, ipn ls shows PEER %q, JSON peer %q: want %q", col, peer, want)
	}
}

// daemonsOn returns the pids of the processes whose environment points the
// library at sock.
func daemonsOn(sock string) []int {
	var pids []int
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", d.Name(), "environ"))
		if err == nil && strings.Contains("\x00"+string(env), "\x00IPN_SOCKET="+sock+"\x00") {
			pids = append(pids, pid)
		}
	}
	return pids
}

// The read-only commands start no daemon where none runs: ipn ls lists no
// networks and says why; the others, and ls PATH, fail and say why.
func TestReadOnlyCommandsStartNoDaemon(t *testing.T) {
	// A directory a daemon could start in: only its user may write it.
	dir := filepath.Join(tempDir(t), "run")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "none.sock")
	env := []string{"IPN_SOCKET=" + sock, "IPN_NO_AUTOSTART=0"}
	t.Cleanup(func() {
		for _, pid := range daemonsOn(sock) { // a daemon a failed test started
			syscall.Kill(pid, syscall.SIGTERM)
		}
	})
	path, _ := devSwitch(t) // served by the test's daemon, not at sock
	noDaemon := "no ipn daemon runs (at " + sock + ")"

	out, errs, err := ipnRun(t, env, "ls")
	if err != nil || !strings.Contains(out, "no networks") || !strings.Contains(out, noDaemon) {
		t.Errorf("ipn ls: %v, stdout %q, stderr %q; want exit 0 and %q", err, out, errs, noDaemon)
	}
	if out, errs, err := ipnRun(t, env, "ls", "--json"); err != nil || out != "[]" {
		t.Errorf("ipn ls --json: %v, stdout %q, stderr %q; want []", err, out, errs)
	}
	for _, args := range [][]string{
		{"ls", path}, {"mac", path}, {"port", path}, {"vlan", path},
		{"policy", path}, {"policy", path, "expire"}, {"device", path, "clear", "tap0"},
		{"dump", path}, {"cat", path}, {"cat", "--recv-only", path},
	} {
		_, errs, err := ipnRun(t, env, args...)
		if err == nil || !strings.Contains(errs, noDaemon+": no network at "+path) {
			t.Errorf("ipn %s: %v, stderr %q; want it to fail with %q", strings.Join(args, " "), err, errs, noDaemon)
		}
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("files appeared beside the socket: %v", left)
	}
	if pids := daemonsOn(sock); len(pids) != 0 {
		t.Errorf("processes serving %s: %v", sock, pids)
	}
}

// Everyone who lists a network sees which ports are monitors (they get a
// copy of all traffic) and which are links.
func TestListingMarksMonitorsAndLinks(t *testing.T) {
	path, _ := bindNet(t, nil)
	mon := monitor(t, path)
	link := member(t, path, func(s *ipn.Socket) { s.SetLink(true) })
	plain := member(t, path, nil)
	nets, err := ipn.List(path)
	if err != nil || len(nets) != 1 {
		t.Fatalf("list: %v %v", nets, err)
	}
	want := map[int][2]bool{mon.Port(): {true, false}, link.Port(): {false, true}, plain.Port(): {false, false}}
	for _, p := range nets[0].PortsInfo {
		if w, ok := want[p.Port]; ok && (p.Monitor != w[0] || p.Link != w[1]) {
			t.Errorf("port %d: monitor %v link %v, want %v %v", p.Port, p.Monitor, p.Link, w[0], w[1])
		}
	}
	out, err := exec.Command(ipnCommand(t), "ls", path).Output()
	if err != nil || !strings.Contains(string(out), "MONITOR") || !strings.Contains(string(out), "LINK") {
		t.Errorf("ipn ls (%v) does not mark both:\n%s", err, out)
	}
}
