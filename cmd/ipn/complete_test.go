package main

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn"
)

// complete asks ipn for the completions of args (the last one the word
// being typed), as the shells' scripts do (ipn __complete ...), and
// returns the words offered, without their descriptions, and the
// directive.
func complete(t *testing.T, env []string, args ...string) ([]string, int) {
	t.Helper()
	out := runIPN(t, env, append([]string{"__complete"}, args...)...)
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	last := lines[len(lines)-1]
	dir, err := strconv.Atoi(strings.TrimPrefix(last, ":"))
	if !strings.HasPrefix(last, ":") || err != nil {
		t.Fatalf("ipn __complete %q: no directive line:\n%s", args, out)
	}
	var words []string
	for _, l := range lines[:len(lines)-1] {
		w, _, _ := strings.Cut(l, "\t")
		words = append(words, w)
	}
	return words, dir
}

// wantWords fails unless got holds every word of want.
func wantWords(t *testing.T, what string, got, want []string) {
	t.Helper()
	for _, w := range want {
		if !slices.Contains(got, w) {
			t.Errorf("%s: %q lacks %q", what, got, w)
		}
	}
}

// noDaemonEnv is an environment in which no daemon answers and none starts.
func noDaemonEnv(t *testing.T) []string {
	return []string{"IPN_SOCKET=" + filepath.Join(socketDir(t), "ipn.sock"), "IPN_NO_AUTOSTART=1"}
}

// Completion offers ipn's own words: plug's URL schemes and the
// interfaces a tap:// or grab:// may name, the policies of --proto, the
// settings of ipn policy, the actions of vlan and device; files only
// where a file is meant.
func TestCompletion(t *testing.T) {
	env := noDaemonEnv(t)
	urls, dir := complete(t, env, "plug", "/tmp/net", "")
	want := []string{"-", "stdio"}
	for _, s := range plugSchemes() {
		if s != "stdio" {
			want = append(want, s+"://")
		}
	}
	wantWords(t, "plug's URLs", urls, append(want, "ipn://", "vde://", "udp://", "vxlan://", "vxvde://", "tap://", "grab://"))
	if dir&4 == 0 || dir&2 == 0 { // NoFileComp, NoSpace
		t.Errorf("plug's URLs: directive %d, want no files and no space after a scheme", dir)
	}
	ifaces, _ := os.ReadDir("/sys/class/net")
	var grabs []string
	for _, e := range ifaces {
		grabs = append(grabs, "grab://"+e.Name())
	}
	got, _ := complete(t, env, "plug", "/tmp/net", "grab://")
	wantWords(t, "grab:// interfaces", got, append(grabs, "grab://lo"))
	if path, _ := complete(t, env, "plug", ""); len(path) != 0 {
		t.Errorf("plug's PATH: %q, want files (no words)", path)
	}

	protos := append([]string{"any"}, ipn.ProtocolNames()...)
	for _, args := range [][]string{{"cat", "--proto", ""}, {"cat", "-p", ""}, {"vde", "/tmp/n", "--proto", ""}} {
		got, dir := complete(t, env, args...)
		wantWords(t, strings.Join(args, " "), got, append(protos, "hub", "switch", "l3switch"))
		if dir&4 == 0 {
			t.Errorf("%q: directive %d, want no files", args, dir)
		}
	}

	// No daemon to ask: every built-in policy's settings.
	got, _ = complete(t, env, "policy", "/tmp/nonet", "")
	var all []string
	for _, p := range policyOpts {
		for _, o := range p.opts {
			all = append(all, o.name)
		}
	}
	wantWords(t, "ipn policy's settings", got, append(all, "expire", "hashsize", "loop.interval", "ips"))

	got, _ = complete(t, env, "vlan", "/tmp/n", "")
	wantWords(t, "vlan's actions", got, []string{"add", "del"})
	got, _ = complete(t, env, "device", "/tmp/n", "")
	wantWords(t, "device's actions", got, []string{"join", "clear"})
	if _, dir := complete(t, env, "mount", ""); dir&16 == 0 { // FilterDirs
		t.Errorf("mount's DIR: directive %d, want directories", dir)
	}
	got, _ = complete(t, env, "bench", "--paths", "fast,")
	wantWords(t, "bench --paths", got, []string{"fast,socket", "fast,vde_switch"})
	if slices.Contains(got, "fast,fast") {
		t.Errorf("bench --paths offers a path twice: %q", got)
	}
	got, _ = complete(t, env, "completion", "")
	wantWords(t, "completion's shells", got, []string{"bash", "zsh", "fish"})
}

// startDaemon starts a daemon (this test binary as ipn daemon) on a socket
// of its own and returns the environment that points ipn at it; cleanup
// stops it.
func startDaemon(t *testing.T) ([]string, *ipn.Dialer) {
	t.Helper()
	sock := filepath.Join(socketDir(t), "ipn.sock")
	env := []string{"IPN_SOCKET=" + sock, "IPN_NO_AUTOSTART=1"}
	runIPN(t, env, "daemon", "--socket", sock) // returns once it serves
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: sock, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	cred, err := unix.GetsockoptUcred(fdOf(t, c), unix.SOL_SOCKET, unix.SO_PEERCRED)
	c.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		pidfd, err := unix.PidfdOpen(int(cred.Pid), 0)
		syscall.Kill(int(cred.Pid), syscall.SIGTERM)
		if err == nil { // wait for it to go: readable once it exited
			unix.Poll([]unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}, int((10 * time.Second).Milliseconds()))
			unix.Close(pidfd)
		}
	})
	return env, &ipn.Dialer{Socket: sock}
}

// fdOf returns c's descriptor.
func fdOf(t *testing.T, c *net.UnixConn) int {
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fd int
	raw.Control(func(f uintptr) { fd = int(f) })
	return fd
}

// ipn policy PATH completes the settings of the policy of the network at
// PATH, asking its daemon: a hub's are not a switch's.
func TestCompletionAsksTheNetworksPolicy(t *testing.T) {
	env, dial := startDaemon(t)
	dir := t.TempDir()
	for _, c := range []struct {
		proto     ipn.Protocol
		want, not []string
	}{
		{ipn.Hub, []string{"loop.interval", "loop.blocked"}, []string{"expire", "hashsize", "macs", "ips"}},
		{ipn.VDESwitch, []string{"expire", "hashsize", "macs", "vlans", "port.vlan"}, []string{"ips"}},
	} {
		path := filepath.Join(dir, c.proto.String())
		s, err := dial.NewSocket(c.proto)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if err := s.Bind(path); err != nil {
			t.Fatal(err)
		}
		got, _ := complete(t, env, "policy", path, "")
		wantWords(t, "settings of a "+c.proto.String(), got, c.want)
		for _, n := range c.not {
			if slices.Contains(got, n) {
				t.Errorf("settings of a %s: %q offers %q, another policy's", c.proto, got, n)
			}
		}
	}
}

// The script of ipn completion bash, in a real bash with Debian's
// bash-completion, completes plug's schemes and --proto's policies.
func TestBashCompletion(t *testing.T) {
	bash := need(t, "bash", "bash")
	const lib = "/usr/share/bash-completion/bash_completion"
	if _, err := os.Stat(lib); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is missing: CI must install Debian's bash-completion", lib)
		}
		t.Skipf("needs Debian's bash-completion (%s)", lib)
	}
	script := filepath.Join(t.TempDir(), "ipn.bash")
	if err := os.WriteFile(script, []byte(runIPN(t, nil, "completion", "bash")), 0o644); err != nil {
		t.Fatal(err)
	}
	// COMP_WORDS[0] is the program the script asks: this test binary.
	run := func(words ...string) []string {
		t.Helper()
		line := strings.Join(words, " ")
		var q []string
		for _, w := range words {
			q = append(q, "'"+w+"'")
		}
		prog := `source ` + lib + `; source ` + script + `
COMP_WORDS=('` + os.Args[0] + `' ` + strings.Join(q[1:], " ") + `)
COMP_CWORD=$((${#COMP_WORDS[@]}-1))
COMP_LINE='` + os.Args[0] + " " + strings.Join(words[1:], " ") + `'
COMP_POINT=${#COMP_LINE}
__start_ipn ipn "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}"`
		cmd := exec.Command(bash, "--norc", "-c", prog)
		cmd.Env = append(os.Environ(), asIPNEnv+"=1", "IPN_NO_AUTOSTART=1")
		var out bytes.Buffer
		cmd.Stdout = &out // stderr: compopt says it runs outside completion
		if err := cmd.Run(); err != nil {
			t.Fatalf("bash completing %q: %v", line, err)
		}
		return strings.Fields(out.String())
	}
	wantWords(t, "bash: ipn plug /tmp/n ", run("ipn", "plug", "/tmp/n", ""), []string{"-", "ipn://", "vde://", "tap://", "grab://", "vxlan://"})
	got := run("ipn", "cat", "--proto", "s")
	if !slices.Equal(got, []string{"switch"}) {
		t.Errorf("bash: ipn cat --proto s: %q, want switch", got)
	}
	wantWords(t, "bash: ipn p", run("ipn", "p"), []string{"plug", "policy", "port"})
}
