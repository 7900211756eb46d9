package ipn_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ipn-project/ipn/internal/vdetest"
)

// These tests drive vde_switch's management console as ipn serves it
// (ipn vde --mgmt, ipn mgmt --mgmt) with Debian's unixterm and unixcmd
// (vde2) and with examples/python/vdecmd.py, and check it against a real
// vde_switch -M.

// mgmtShape is the sequence of commands that a vde_switch with two
// clients, ports 1 and 2, and ipn vde with two clients, ports 0 and 1,
// answer alike: the same framing, the same number of data lines, the same
// codes.
var mgmtShape = []string{
	"showinfo", "hash/showinfo", "ds/showinfo",
	"port/print", "port/print 1", "port/print 3", "port/print 99", "port/allprint",
	"hash/print", "hash/find 02:00:00:00:00:01", "hash/find 02:00:00:00:00:09", "hash/find zz",
	"port/showinfo", "vlan/allprint", "vlan/allprint 0",
	"vlan/print", "vlan/create 5", "vlan/create 5", "vlan/create 5000", "vlan/create abc",
	"vlan/addport 5 1", "vlan/addport 9 1", "vlan/print", "vlan/print 9",
	"vlan/remove 5", "vlan/delport 5 1", "vlan/remove 5", "vlan/remove 77",
	"port/setvlan 99 5", "port/setvlan 1 77", "port/setvlan x",
	"port/resetcounter", "port/resetcounter 1", "port/resetcounter 999",
	"port/setnumports 0", "port/setnumports 40", "hash/setexpire 300",
	"", "# a comment", "bogus", "logout",
}

// vdecmd runs examples/python/vdecmd.py on the console at sock.
func vdecmd(t *testing.T, u *testUser, args ...string) (string, error) {
	t.Helper()
	// Debian's python3, which every user may run, and a copy of the
	// script that every user may read.
	python := "/usr/bin/python3"
	if _, err := os.Stat(python); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is needed under CI (Debian's python3): %v", python, err)
		}
		t.Skip("no /usr/bin/python3 (Debian's python3)")
	}
	script := filepath.Join(testDir, "vdecmd.py")
	if err := copyFile("examples/python/vdecmd.py", script, 0o755); err != nil {
		t.Fatal(err)
	}
	return runAs(t, u, nil, python, append([]string{script}, args...)...)
}

// twoPlugs starts two vde_plug clients of the VDE switch at dir, each
// sending one broadcast frame from its own MAC, and waits until the
// console at mgmt has learnt both.
func twoPlugs(t *testing.T, dir, mgmt string) {
	t.Helper()
	var frames [][]byte
	var plugs []*vdeFramed
	for i := byte(1); i <= 2; i++ {
		plugs = append(plugs, startVDEFramed(t, "vde_plug", "vde://"+dir))
		f := append(bytes.Repeat([]byte{0xff}, 6), 2, 0, 0, 0, 0, i, 8, 0)
		f = append(f, make([]byte, 50)...)
		var hdr [2]byte
		binary.BigEndian.PutUint16(hdr[:], uint16(len(f)))
		frames = append(frames, append(hdr[:], f...))
	}
	deadline := time.Now().Add(waitProcs)
	for {
		for i, p := range plugs {
			p.stdin.Write(frames[i])
		}
		out, _ := vdecmd(t, nil, mgmt, "hash/print")
		if strings.Contains(out, "02:00:00:00:00:01") && strings.Contains(out, "02:00:00:00:00:02") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the console at %s has not learnt both clients' MACs: %s", mgmt, out)
		}
	}
}

// ipnVDEMgmt starts ipn vde with a console at DIR.mgmt and returns the
// network, the VDE directory and the console's socket.
func ipnVDEMgmt(t *testing.T, extra ...string) (*proc, string, string, string) {
	t.Helper()
	d := shortDir(t)
	path, dir, mgmt := filepath.Join(d, "lan"), filepath.Join(d, "lan.vde"), filepath.Join(d, "lan.mgmt")
	p := start(t, nil, nil, ipnCommand(t), append([]string{"vde", path, dir, "--mgmt", mgmt}, extra...)...)
	waitFor(t, waitProcs, "the console socket", func() bool {
		c, err := net.Dial("unix", mgmt)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("ipn vde stderr:\n%s", p.stderr())
		}
	})
	return p, path, dir, mgmt
}

// The same script, run against a real vde_switch -M and against ipn vde
// --mgmt, gets replies of the same structure: framing, data lines, codes.
func TestMgmtShapeMatchesVDESwitch(t *testing.T) {
	vdetest.Need(t, "vde_switch", "vde_plug")
	d := shortDir(t)
	swMgmt := filepath.Join(d, "sw.mgmt")
	sw := vdetest.Start(t, filepath.Join(d, "sw"), "-M", swMgmt)
	twoPlugs(t, sw.Dir, swMgmt)
	want, err := vdecmd(t, nil, append([]string{"--shape", swMgmt}, mgmtShape...)...)
	if err != nil && !strings.Contains(err.Error(), "exit status 1") {
		t.Fatalf("vdecmd.py on vde_switch: %v\n%s", err, want)
	}

	_, _, dir, mgmt := ipnVDEMgmt(t)
	twoPlugs(t, dir, mgmt)
	got, err := vdecmd(t, nil, append([]string{"--shape", mgmt}, mgmtShape...)...)
	if err != nil && !strings.Contains(err.Error(), "exit status 1") {
		t.Fatalf("vdecmd.py on ipn: %v\n%s", err, got)
	}
	wl, gl := strings.Split(want, "\n"), strings.Split(got, "\n")
	if len(wl) != len(gl) {
		t.Fatalf("vde_switch answered %d lines, ipn %d:\nvde_switch:\n%s\nipn:\n%s", len(wl), len(gl), want, got)
	}
	for i := range wl {
		if wl[i] != gl[i] {
			t.Errorf("line %d: vde_switch %q, ipn %q", i, wl[i], gl[i])
		}
	}
	if t.Failed() {
		full, _ := vdecmd(t, nil, swMgmt, "port/print", "hash/print", "vlan/print")
		t.Logf("vde_switch now:\n%s", full)
		full, _ = vdecmd(t, nil, mgmt, "port/print", "hash/print", "vlan/print")
		t.Logf("ipn now:\n%s", full)
	}
	if !strings.Contains(got, "1017 File exists") || !strings.Contains(got, "1098 Address already in use") {
		t.Errorf("the script's codes miss the errors it provokes:\n%s", got)
	}
}

// utTerm is Debian's unixterm on a console, driven through its stdin.
type utTerm struct {
	t   *testing.T
	p   *proc
	out chan []byte
}

func startUnixterm(t *testing.T, cred *syscall.Credential, sock string) *utTerm {
	t.Helper()
	vdetest.Need(t, "unixterm")
	cmd := exec.Command("unixterm", sock)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setpgid: true}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	u := &utTerm{t: t, p: &proc{t: t, cmd: cmd, stdin: in, done: make(chan struct{})}, out: make(chan []byte, 64)}
	go func() {
		defer close(u.out)
		for {
			b := make([]byte, 4096)
			n, err := out.Read(b)
			if n > 0 {
				u.out <- b[:n]
			}
			if err != nil {
				break
			}
		}
		cmd.Wait()
		close(u.p.done)
	}()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-u.p.done
	})
	return u
}

// until reads unixterm's output up to the next prompt.
func (u *utTerm) until() string {
	u.t.Helper()
	var b []byte
	timeout := time.After(waitProcs)
	for !bytes.HasSuffix(b, []byte("vde$ ")) {
		select {
		case d, ok := <-u.out:
			if !ok {
				u.t.Fatalf("unixterm exited; it printed %q", b)
			}
			b = append(b, d...)
		case <-timeout:
			u.t.Fatalf("unixterm: no prompt in %v; got %q", waitProcs, b)
		}
	}
	return string(b)
}

func (u *utTerm) cmd(c string) string {
	u.t.Helper()
	fmt.Fprintln(u.p.stdin, c)
	return u.until()
}

// Debian's unixterm talks to ipn's console as to vde_switch's: the banner,
// the prompt, replies in vde_switch's framing, and logout ends it.
func TestMgmtUnixterm(t *testing.T) {
	vdetest.Need(t, "vde_plug")
	_, _, dir, mgmt := ipnVDEMgmt(t)
	twoPlugs(t, dir, mgmt)
	u := startUnixterm(t, nil, mgmt)
	if b := u.until(); !strings.HasPrefix(b, "VDE switch V.2.3.2\n") || !strings.HasSuffix(b, "\n\nvde$ ") {
		t.Fatalf("banner %q", b)
	}
	checks := []struct{ cmd, want string }{
		{"port/print 1", "0000 DATA END WITH '.'\nPort 0001 untagged_vlan=0001 ACTIVE - Unnamed Allocatable\n Current User: root Access Control: (User: NONE - Group: NONE)\n IN:  pkts "},
		{"vlan/create 7", "1000 Success\n\nvde$ "},
		{"vlan/create 7", "1017 File exists\n\nvde$ "},
		{"vlan/print 7", "0000 DATA END WITH '.'\nVLAN 0007\n.\n1000 Success\n\nvde$ "},
		{"vlan/addport 7 0", "1000 Success\n\nvde$ "},
		{"vlan/print 7", "0000 DATA END WITH '.'\nVLAN 0007\n -- Port 0000 tagged=1 active=1 status=Forwarding\n.\n1000 Success\n\nvde$ "},
		{"port/setvlan 1 7", "1000 Success\n\nvde$ "},
		{"vlan/remove 7", "1098 Address already in use\n\nvde$ "},
		{"hash/setexpire 50", "1000 Success\n\nvde$ "},
		{"hash/showinfo", "0000 DATA END WITH '.'\nHash size 4096\nGC interval 1 secs\nGC expire 50 secs\nMin persistence 0 secs\n.\n1000 Success\n\nvde$ "},
		{"vlan/create", "1022 Invalid argument\n\nvde$ "},
		{"port/print -1", "0000 DATA END WITH '.'\n.\n1022 Invalid argument\n\nvde$ "},
		{"nosuch/command", "1038 Function not implemented\n\nvde$ "},
		{strings.Repeat("x", 300), "1022 Invalid argument\n\nvde$ "},
		{"showinfo", "0000 DATA END WITH '.'\nVDE switch V.2.3.2\n"},
	}
	for _, c := range checks {
		if got := u.cmd(c.cmd); !strings.HasPrefix(got, c.want) {
			t.Errorf("%.40q: got %q, want it to begin %q", c.cmd, got, c.want)
		}
	}
	fmt.Fprintln(u.p.stdin, "logout")
	select {
	case <-u.p.done:
	case <-time.After(waitProcs):
		t.Fatal("unixterm still runs after logout")
	}
}

// Debian's unixcmd with its vdecmd parse machine (/etc/vde2/vdecmd), as
// vde2's scripts use it, gets the data lines of ipn's replies.
func TestMgmtUnixcmd(t *testing.T) {
	vdetest.Need(t, "unixcmd", "vde_plug")
	rc := "/etc/vde2/vdecmd"
	if _, err := os.Stat(rc); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is needed under CI (Debian's vde2 ships it): %v", rc, err)
		}
		t.Skipf("no %s (Debian's vde2 ships it)", rc)
	}
	_, _, dir, mgmt := ipnVDEMgmt(t)
	twoPlugs(t, dir, mgmt)
	out, _ := exec.Command("unixcmd", "-f", rc, "-s", mgmt, "hash/print").CombinedOutput()
	for _, mac := range []string{"02:00:00:00:00:01", "02:00:00:00:00:02"} {
		if !strings.Contains(string(out), "Addr: "+mac+" VLAN 0001 to port: ") {
			t.Errorf("unixcmd hash/print: no %s in %q", mac, out)
		}
	}
	out, _ = exec.Command("unixcmd", "-f", rc, "-s", mgmt, "hash/showinfo").CombinedOutput()
	if !strings.Contains(string(out), "GC expire 120 secs") {
		t.Errorf("unixcmd hash/showinfo: %q", out)
	}
}

// A user who may connect to the console but has no x on the network reads
// and is refused every change; root, who has x, changes. Shutdown by root
// ends ipn vde and removes the socket.
func TestMgmtRights(t *testing.T) {
	_, m := realUsers(t)
	p, path, _, mgmt := ipnVDEMgmt(t, "--mgmt-mode", "666")
	if err := os.Chmod(path, 0o744); err != nil {
		t.Fatal(err)
	}
	out, err := vdecmd(t, &m, mgmt, "port/print", "hash/print", "vlan/print", "hash/showinfo", "help", "showinfo")
	if err != nil {
		t.Fatalf("mallory's reads: %v\n%s", err, out)
	}
	for _, c := range []string{"vlan/create 5", "vlan/remove 1", "vlan/addport 1 0", "vlan/delport 1 0",
		"port/setvlan 0 0", "port/setnumports 2", "port/resetcounter", "hash/setexpire 1", "shutdown"} {
		out, err := vdecmd(t, &m, mgmt, c)
		if err == nil || out != "1013 Permission denied\n" {
			t.Errorf("mallory's %q: %v, %q; want 1013 Permission denied", c, err, out)
		}
	}
	out, _ = vdecmd(t, nil, mgmt, "vlan/print")
	if strings.Contains(out, "VLAN 0005") {
		t.Errorf("mallory made vlan 5:\n%s", out)
	}
	if out, err := vdecmd(t, nil, mgmt, "vlan/create 5", "shutdown"); err != nil || out != "1000 Success\n9999 END OF SESSION\n" {
		t.Fatalf("root's vlan/create and shutdown: %v\n%s", err, out)
	}
	if err := p.wait(waitProcs); err != nil {
		t.Fatalf("ipn vde after shutdown: %v\n%s", err, p.stderr())
	}
	if _, err := os.Lstat(mgmt); !os.IsNotExist(err) {
		t.Errorf("the console socket is still there after shutdown: %v", err)
	}
}

// ipn mgmt serves the console for any network, a hub too: the switch's
// tables answer vde_switch's "not implemented"; the socket gets its mode;
// a name already taken by a file is refused, and nothing is followed.
func TestMgmtAnyNetwork(t *testing.T) {
	d := shortDir(t)
	path, mgmt := filepath.Join(d, "hub"), filepath.Join(d, "hub.mgmt")
	start(t, nil, nil, ipnCommand(t), "cat", "--bind", "--proto", "hub", path) // port 0, until the test ends
	waitFor(t, waitProcs, "the hub", func() bool { _, err := os.Stat(path); return err == nil })
	p := start(t, nil, nil, ipnCommand(t), "mgmt", path, "--mgmt", mgmt, "--mgmt-mode", "640")
	waitFor(t, waitProcs, "the console socket", func() bool { _, err := os.Stat(mgmt); return err == nil })
	st, err := os.Lstat(mgmt)
	if err != nil || st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != 0o640 {
		t.Fatalf("console socket: %v %v", st.Mode(), err)
	}
	out, _ := vdecmd(t, nil, mgmt, "port/print", "hash/print", "vlan/create 3", "ds/showinfo")
	want := "| Port 0000 untagged_vlan=0000 ACTIVE - Unnamed Allocatable\n"
	if !strings.HasPrefix(out, want) || !strings.Contains(out, "1038 Function not implemented\n1038 Function not implemented\n") {
		t.Errorf("ipn mgmt on a hub:\n%s", out)
	}

	// A second console on the same name, or on a file or a symlink, is refused.
	target := filepath.Join(d, "target")
	os.WriteFile(target, []byte("x"), 0o600)
	link := filepath.Join(d, "link")
	os.Symlink(target, link)
	for _, at := range []string{mgmt, target, link} {
		out, err := runAs(t, nil, nil, ipnCommand(t), "mgmt", path, "--mgmt", at)
		if err == nil {
			t.Errorf("a console at %s: no error; %s", at, out)
		}
	}
	if b, _ := os.ReadFile(target); string(b) != "x" {
		t.Errorf("the file behind the link now holds %q", b)
	}
	if err := stopBy(t, p, syscall.SIGTERM); err != nil {
		t.Fatalf("ipn mgmt on SIGTERM: %v\n%s", err, p.stderr())
	}
	if _, err := os.Lstat(mgmt); !os.IsNotExist(err) {
		t.Errorf("the console socket is still there after ipn mgmt ended: %v", err)
	}
}

// A console that a user runs (not root) asks the kernel for that user's
// rights only: she changes; another user, even with x on the network,
// only reads, since she cannot take his credentials to ask for his.
func TestMgmtConsoleOfAUser(t *testing.T) {
	a, m := realUsers(t)
	dir := userDir(t, a, 0o755)
	path, mgmt := filepath.Join(dir, "lan"), filepath.Join(dir, "lan.mgmt")
	p := start(t, a.cred(), nil, ipnCommand(t), "vde", path, filepath.Join(dir, "lan.vde"), "--mgmt", mgmt, "--mgmt-mode", "666")
	waitFor(t, waitProcs, "alice's console", func() bool { _, err := os.Stat(mgmt); return err == nil })
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("alice's ipn vde:\n%s", p.stderr())
		}
	})
	if err := os.Chmod(path, 0o777); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Lstat(mgmt); err != nil || st.Sys().(*syscall.Stat_t).Uid != a.uid {
		t.Fatalf("the console socket is not alice's: %v", err)
	}
	if out, err := vdecmd(t, &m, mgmt, "port/print", "vlan/create 5"); err == nil || out != "1000 Success\n1013 Permission denied\n" {
		t.Errorf("mallory on alice's console: %v\n%s", err, out)
	}
	if out, err := vdecmd(t, &a, mgmt, "vlan/create 5", "vlan/print 5"); err != nil || out != "1000 Success\n| VLAN 0005\n1000 Success\n" {
		t.Errorf("alice on her console: %v\n%s", err, out)
	}
}
