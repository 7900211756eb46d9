package ipn_test

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn"
	"github.com/ipn-project/ipn/daemon"
	"github.com/ipn-project/ipn/internal/wire"
)

// Make socket files until one gets the inode of another user's private
// network whose file is gone while the network is in use: the daemon
// keeps that inode, so none does, and mallory never joins it.
func TestAttackInodeReuse(t *testing.T) {
	a, m := realUsers(t)
	adir := userDir(t, a, 0o700)
	path := filepath.Join(adir, "private")
	binder := helper(t, a.cred(), "bindwait", path)
	binder.expect("ok ", waitProcs)
	recv := helper(t, a.cred(), "recv", path)
	recv.expect("ready ", waitProcs)
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	binder.stdin.Close() // the binder goes; alice's receiver keeps the network
	if err := binder.wait(waitProcs); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	mdir := userDir(t, m, 0o755)
	h := helper(t, m.cred(), "inodes", mdir, strconv.FormatUint(st.Ino, 10), "2s")
	got := h.expect("tries ", 30*time.Second)
	if n, _ := strconv.Atoi(strings.Fields(got)[1]); n < 100 {
		t.Fatalf("mallory made only %d files: %s", n, h.stderr())
	}
	if l := h.expect("reused ", waitProcs); l != "reused 0" {
		t.Fatalf("a file of mallory's took the network's inode: %s", l)
	}
	legit(t, a, "")
}

// helpInodes makes, stats and removes socket files in dir for d, and
// reports how often one had inode ino (trying to join through it).
func helpInodes(dir, inoS, dS string) error {
	ino, _ := strconv.ParseUint(inoS, 10, 64)
	d, _ := time.ParseDuration(dS)
	p := filepath.Join(dir, "probe")
	tries, reused := 0, 0
	for end := time.Now().Add(d); time.Now().Before(end); tries++ {
		if err := unix.Mknod(p, unix.S_IFSOCK|0o600, 0); err != nil {
			return err
		}
		var st unix.Stat_t
		unix.Stat(p, &st)
		if st.Ino == ino {
			reused++
			if s, err := join(p, 0); err == nil {
				fmt.Println("joined the victim's network")
				s.Close()
			}
		}
		os.Remove(p)
	}
	fmt.Printf("tries %d\n", tries)
	fmt.Printf("reused %d\n", reused)
	return nil
}

// A fake daemon in /tmp/ipn-UID (or wherever the user's socket directory
// is) made by another user: the victim's library refuses it before
// sending a byte, and says why.
func TestAttackFakeUserDaemon(t *testing.T) {
	a, m := realUsers(t)
	for _, c := range []struct {
		name  string
		owner testUser
		mode  os.FileMode
		want  string
	}{
		{"directory of the attacker's", m, 0o777, "belongs to uid " + strconv.Itoa(int(m.uid))},
		{"victim's directory writable by others", a, 0o777, "is writable by others"},
	} {
		t.Run(c.name, func(t *testing.T) {
			tmp := shortDir(t)
			dir := filepath.Join(tmp, fmt.Sprintf("ipn-%d", a.uid))
			os.Mkdir(dir, c.mode)
			os.Chmod(dir, c.mode)
			os.Chown(dir, int(c.owner.uid), int(c.owner.gid))
			fake := helper(t, m.cred(), "fakedaemon", filepath.Join(dir, "ipn.sock"))
			fake.expect("listening", waitProcs)
			env := []string{"IPN_SOCKET=", "XDG_RUNTIME_DIR=", "TMPDIR=" + tmp, "IPN_NO_AUTOSTART=1"}
			net := filepath.Join(userDir(t, a, 0o700), "chat")
			// In a mount namespace where /run/ipn is empty: no system
			// daemon answers, as on a machine without one.
			os.MkdirAll(filepath.Dir(daemon.SystemSocket), 0o755)
			out, err := runAs(t, nil, env, "unshare", "-m", "sh", "-c",
				fmt.Sprintf("mount -t tmpfs tmpfs %s && exec setpriv --reuid=%d --regid=%d --clear-groups %s cat --bind %s",
					filepath.Dir(daemon.SystemSocket), a.uid, a.gid, ipnCommand(t), net))
			if err == nil || !strings.Contains(out, c.want) {
				t.Fatalf("alice's ipn cat --bind: %v, output %q; want a failure saying %q", err, out, c.want)
			}
			fake.stdin.Close()
			for l := range fake.lines {
				if strings.HasPrefix(l, "got") {
					t.Fatalf("the fake daemon received %s", l)
				}
			}
		})
	}
	legit(t, a, "")
}

// helpFakeDaemon listens at sock as a daemon would and prints what its
// clients send, until stdin closes.
func helpFakeDaemon(sock string) error {
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: sock, Net: "unixpacket"})
	if err != nil {
		return err
	}
	os.Chmod(sock, 0o777)
	fmt.Println("listening")
	go func() {
		for {
			c, err := ln.AcceptUnix()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf, oob := make([]byte, 4096), make([]byte, 256)
				for {
					n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
					if n > 0 || oobn > 0 {
						fmt.Printf("got %d bytes, %d of control\n", n, oobn)
					}
					if err != nil || n == 0 {
						return
					}
				}
			}()
		}
	}()
	waitStdin()
	ln.Close()
	return nil
}

// Connections until the daemon runs out of descriptors: it waits EMFILE
// out instead of giving up accepting, and alice joins once mallory has
// gone. A per-user limit below that stops mallory first, and alice joins
// while mallory holds her connections.
func TestAttackDescriptorExhaustion(t *testing.T) {
	a, m := realUsers(t)
	t.Run("EMFILE", func(t *testing.T) {
		sock, d := ownDaemon(t, "--max-files", "100", "--max-conns", "100000")
		h := start(t, m.cred(), []string{helperEnv + "=conns"}, helperBin, sock, "300")
		held := h.expect("held ", 60*time.Second)
		if n, _ := strconv.Atoi(strings.Fields(held)[1]); n >= 300 || n < 50 {
			t.Fatalf("mallory %s of 300: the descriptor limit did not bite", held)
		}
		h.stdin.Close()
		if err := h.wait(waitProcs); err != nil {
			t.Fatal(err)
		}
		legit(t, a, sock)
		if !strings.Contains(d.stderr(), "too many open files") {
			t.Errorf("the daemon did not run out of descriptors; its log:\n%s", d.stderr())
		}
	})
	t.Run("per-user limit", func(t *testing.T) {
		sock, d := ownDaemon(t, "--max-conns", "20")
		h := start(t, m.cred(), []string{helperEnv + "=conns"}, helperBin, sock, "30")
		if got := h.expect("held ", 60*time.Second); got != "held 20" {
			t.Fatalf("mallory %s, want 20", got)
		}
		if got := h.expect("refused ", waitProcs); !strings.Contains(got, "--max-conns") || !strings.Contains(got, "resource temporarily unavailable") {
			t.Fatalf("mallory's 21st connection: %q, want the limit named", got)
		}
		legit(t, a, sock) // while mallory holds hers
		// Refused connections that pass descriptors leave none behind.
		before := openFiles(t, d.cmd.Process.Pid)
		r := start(t, m.cred(), []string{helperEnv + "=refusedfds"}, helperBin, sock, "50")
		r.expect("refused 50", 30*time.Second)
		waitFor(t, waitProcs, "the daemon to close what the refused connections passed", func() bool {
			return openFiles(t, d.cmd.Process.Pid) <= before
		})
	})
}

// A POSIX ACL entry denying a user decides, as the kernel would: the mode
// bits alone would let mallory in.
func TestAttackACLDenies(t *testing.T) {
	a, m := realUsers(t)
	setfacl, err := exec.LookPath("setfacl")
	if err != nil {
		t.Fatal("setfacl (Debian's acl) is needed")
	}
	path, root := bindNet(t, nil)
	os.Chown(path, int(a.uid), int(a.gid))
	os.Chmod(path, 0o777)
	if out, err := exec.Command(setfacl, "-m", "u:"+m.name+":---", path).CombinedOutput(); err != nil {
		t.Fatalf("setfacl: %v %s", err, out)
	}
	for _, op := range []string{"connect", "bind"} {
		h := helper(t, m.cred(), "perm", op, path)
		if got := h.line(waitProcs); got != op+" err=EACCES" {
			t.Fatalf("mallory's %s under u:%s:---: %q", op, m.name, got)
		}
	}
	if out, err := exec.Command(setfacl, "-m", "u:"+m.name+":r--", path).CombinedOutput(); err != nil {
		t.Fatalf("setfacl: %v %s", err, out)
	}
	h := helper(t, m.cred(), "perm", "connect", path)
	if got := h.line(waitProcs); got != "connect ok read=true write=false" {
		t.Fatalf("mallory under u:%s:r--: %q", m.name, got)
	}
	root.Send([]byte("for readers"))
	h.expect("send err=EPIPE", waitProcs)
	// alice, the owner, keeps rwx
	o := helper(t, a.cred(), "perm", "connect", path)
	if got := o.line(waitProcs); got != "connect ok read=true write=true" {
		t.Fatalf("alice: %q", got)
	}
	legit(t, a, "")
}

// Networks, ports, memory and shared memory are bounded per user; a
// connection that never says hello is dropped. alice is unaffected.
func TestAttackResourceLimits(t *testing.T) {
	a, m := realUsers(t)
	sock, d := ownDaemon(t, "--max-networks", "3", "--max-ports", "4", "--max-shm", "4", "--max-memory", "64", "--hello-timeout", "1s")
	dir := userDir(t, m, 0o755)
	h := start(t, m.cred(), []string{helperEnv + "=limits", "IPN_SOCKET=" + sock}, helperBin, dir)
	for _, want := range []string{
		"net 0 ok", "net 1 ok", "net 2 ok", "net 3 EDQUOT --max-networks",
		"big EDQUOT --max-memory", "tiny EDQUOT --max-memory",
		"hashsize EDQUOT --max-memory", "hashsize after 4096",
		"port 0 ok fast=true", "port 1 ok fast=true", "port 2 ok fast=false", "port 3 ok fast=false", "port 4 EAGAIN --max-ports",
	} {
		got := h.line(waitProcs)
		f := strings.Fields(want)
		if !strings.HasPrefix(got, strings.Join(f[:len(f)-1], " ")) || !strings.Contains(got, f[len(f)-1]) {
			t.Fatalf("mallory: %q, want %q; stderr: %s", got, want, h.stderr())
		}
	}
	// Silence is dropped after the hello timeout.
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: sock, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(15 * time.Second))
	if _, err := c.Read(make([]byte, 16)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a silent connection: %v, want it closed by the daemon", err)
	}
	legit(t, a, sock)
	if rss := vmRSS(t, d.cmd.Process.Pid); rss > 200<<20 {
		t.Errorf("daemon RSS %d MiB after the attack", rss>>20)
	}
	h.stdin.Close()
}

// helpLimits runs into each per-user limit of a daemon started with
// --max-networks 3 --max-ports 4 --max-shm 4 --max-memory 64.
func helpLimits(dir string) error {
	var nets []*ipn.Socket
	for i := range 4 {
		s, err := ipn.NewSocket(ipn.Hub)
		if err == nil {
			err = s.Bind(filepath.Join(dir, fmt.Sprintf("n%d", i)))
		}
		if err != nil {
			fmt.Printf("net %d %s %v\n", i, errnoOf(err), err)
			continue
		}
		fmt.Printf("net %d ok\n", i)
		nets = append(nets, s)
	}
	nets[2].Close() // room for one more network (two, later), but not a huge one
	nets[1].Close()
	s, err := ipn.NewSocket(ipn.Hub)
	if err == nil {
		s.SetMTU(65535)
		s.SetMsgPoolSize(65536)
		err = s.Bind(filepath.Join(dir, "big"))
	}
	fmt.Printf("big %s %v\n", errnoOf(err), err)
	// A tiny MTU still takes a 2 KiB buffer a message, and a lossless
	// network's out-of-band queues count too.
	s, err = ipn.NewSocket(ipn.Hub)
	if err == nil {
		s.SetMTU(1)
		s.SetMsgPoolSize(65536)
		s.SetFlags(ipn.Lossless)
		s.SetNumNodes(2)
		err = s.Bind(filepath.Join(dir, "tiny"))
	}
	fmt.Printf("tiny %s %v\n", errnoOf(err), err)
	// A switch's table is charged for the entries it may hold.
	sw, err := ipn.NewSocket(ipn.VDESwitch)
	if err == nil {
		err = sw.Bind(filepath.Join(dir, "sw"))
	}
	if err != nil {
		return err
	}
	err = ipn.SetPolicyOption(filepath.Join(dir, "sw"), "hashsize", "1048576")
	fmt.Printf("hashsize %s %v\n", errnoOf(err), err)
	v, err := ipn.PolicyOption(filepath.Join(dir, "sw"), "hashsize")
	fmt.Printf("hashsize after %s %v\n", v, err)
	sw.Close()
	for i := range 5 {
		p, err := join(filepath.Join(dir, "n0"), 0)
		if err != nil {
			fmt.Printf("port %d %s %v\n", i, errnoOf(err), err)
			continue
		}
		fmt.Printf("port %d ok fast=%v\n", i, p.FastPath())
		defer p.Close()
	}
	waitStdin()
	return nil
}

// vmRSS returns the resident memory of process pid.
func vmRSS(t *testing.T, pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.Fields(rest)[0], 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// loop.interval=1ns on one's own switch would keep the daemon busy: every
// policy option has a range.
func TestAttackPolicyOptionRange(t *testing.T) {
	path := filepath.Join(tempDir(t), "sw")
	bindAt(t, ipn.VDESwitch, path, nil, true)
	err := ipn.SetPolicyOption(path, "loop.interval", "1ns")
	if !errors.Is(err, syscall.EINVAL) || !strings.Contains(err.Error(), "10ms..1h") {
		t.Fatalf("loop.interval=1ns: %v, want EINVAL naming the range", err)
	}
}

// A network made with the default mode gives x (manage) to its owner
// alone: other users cannot change alice's switch.
func TestAttackDefaultModeKeepsManagement(t *testing.T) {
	a, m := realUsers(t)
	path := filepath.Join(userDir(t, a, 0o755), "sw")
	sw := helper(t, a.cred(), "mkswitch", path)
	if got := sw.line(waitProcs); got != "ok mode=0744" {
		t.Fatalf("alice's switch: %q (umask 022 wanted)", got)
	}
	for _, args := range [][]string{
		{"vlan", path, "add", "30"},
		{"policy", path, "expire", "10s"},
		{"port", path, "0", "--vlan", "0"},
	} {
		out, err := runAs(t, &m, nil, ipnCommand(t), args...)
		if err == nil || !strings.Contains(out, "permission denied") {
			t.Errorf("mallory's ipn %s: %v %q, want permission denied", strings.Join(args, " "), err, out)
		}
	}
	if out, err := runAs(t, &a, nil, ipnCommand(t), "vlan", path, "add", "30"); err != nil {
		t.Fatalf("alice's own ipn vlan add: %v %s", err, out)
	}
}

// helpMkSwitch makes a switch network at path with the default mode and
// stays until stdin closes.
func helpMkSwitch(path string) error {
	syscall.Umask(0o022)
	s, err := ipn.NewSocket(ipn.VDESwitch)
	if err != nil {
		return err
	}
	defer s.Close()
	if err := s.Bind(path); err != nil {
		return err
	}
	if err := s.Connect(""); err != nil {
		return err
	}
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	fmt.Printf("ok mode=%#o\n", st.Mode().Perm())
	waitStdin()
	return nil
}

// Listings show a user only the networks it can reach, peers to managers
// only, and work at any size.
func TestAttackListingPrivacy(t *testing.T) {
	a, m := realUsers(t)
	private := filepath.Join(userDir(t, a, 0o700), "private")
	binder := helper(t, a.cred(), "bindwait", private)
	binder.expect("ok ", waitProcs)
	public, root := bindNet(t, nil)
	os.Chmod(public, 0o744)
	member(t, public, nil)
	lsJSON := func(u *testUser, args ...string) []ipn.NetInfo {
		t.Helper()
		out, err := runAs(t, u, nil, ipnCommand(t), append([]string{"ls", "--json"}, args...)...)
		if err != nil {
			t.Fatalf("ipn ls: %v %s", err, out)
		}
		nets, err := decodeLs(out)
		if err != nil {
			t.Fatalf("ipn ls --json: %v: %s", err, out)
		}
		return nets
	}
	find := func(nets []ipn.NetInfo, path string) *ipn.NetInfo {
		for i := range nets {
			if nets[i].Path == path {
				return &nets[i]
			}
		}
		return nil
	}
	mine := lsJSON(&m)
	if find(mine, private) != nil {
		t.Fatalf("mallory's ipn ls shows %s, in a directory of alice's she cannot search", private)
	}
	n := find(mine, public)
	if n == nil || len(n.PortsInfo) != 2 {
		t.Fatalf("mallory's ipn ls lacks %s: %+v", public, n)
	}
	for _, p := range n.PortsInfo {
		if p.Peer != "" {
			t.Fatalf("mallory (no x) sees the peer of port %d: %q", p.Port, p.Peer)
		}
	}
	if n := find(lsJSON(&a), private); n == nil || n.PortsInfo[0].Peer == "" {
		t.Fatalf("alice does not see her own network and peers: %+v", n)
	}
	if n := find(lsJSON(nil, public), public); n == nil || n.PortsInfo[0].Peer == "" {
		t.Fatalf("root does not see the peers: %+v", n)
	}
	root.Close()

	// 1500 networks: a listing of far more than one packet.
	dir := tempDir(t)
	for i := range 1500 {
		bindAt(t, ipn.Hub, filepath.Join(dir, fmt.Sprintf("many%04d", i)), nil, false)
	}
	for _, u := range []*testUser{nil, &m} {
		count := 0
		for _, n := range lsJSON(u) {
			if strings.HasPrefix(n.Path, dir) {
				count++
			}
		}
		if count != 1500 {
			t.Fatalf("ipn ls lists %d of 1500 networks", count)
		}
	}
	legit(t, a, "")
}

// A network is named by its file's path as the kernel has it, not by what
// its creator claims; a socket that is not a file makes no network.
func TestAttackClaimedName(t *testing.T) {
	dir := tempDir(t)
	path := filepath.Join(dir, "real")
	if err := unix.Mknod(path, unix.S_IFSOCK|0o600, 0); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(path, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	c := rawClient(t)
	if e, err := roundTrip(t, c, hello(wire.Version, 0)); err != nil || e != 0 {
		t.Fatalf("hello: %v %v", e, err)
	}
	if e, err := roundTrip(t, c, wire.Packet(wire.OpBind, []byte("/etc/passwd")), fd); err != nil || e != 0 {
		t.Fatalf("bind: %v %v", e, err)
	}
	nets, err := ipn.List("")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nets {
		if n.Path == "/etc/passwd" {
			t.Fatal("the listing shows the name the client claimed")
		}
	}
	if nets, err := ipn.List(path); err != nil || len(nets) != 1 || nets[0].Path != path {
		t.Fatalf("the network on %s: %+v %v", path, nets, err)
	}
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pair[0])
	defer unix.Close(pair[1])
	c2 := rawClient(t)
	roundTrip(t, c2, hello(wire.Version, 0))
	if e, err := roundTrip(t, c2, wire.Packet(wire.OpBind, []byte(path)), pair[0]); err != nil || e != syscall.EINVAL {
		t.Fatalf("bind on a socketpair: errno %v, %v; want EINVAL", e, err)
	}
}

// Garbage from many connections, fast: the daemon's log stays small.
func TestAttackLogFlood(t *testing.T) {
	a, m := realUsers(t)
	sock, d := ownDaemon(t)
	h := start(t, m.cred(), []string{helperEnv + "=garbage"}, helperBin, sock, "2s")
	got := h.expect("sent ", 30*time.Second)
	if n, _ := strconv.Atoi(strings.Fields(got)[1]); n < 500 {
		t.Fatalf("mallory sent only %s garbage packets", got)
	}
	legit(t, a, sock)
	if lines := strings.Count(d.stderr(), "\n"); lines > 100 {
		t.Fatalf("the daemon wrote %d log lines for %s:\n%s", lines, got, d.stderr()[:min(len(d.stderr()), 2000)])
	}
}

// helpGarbage connects to sock and sends one byte that is no request, as
// fast as it can for d.
func helpGarbage(sock, dS string) error {
	d, _ := time.ParseDuration(dS)
	n := 0
	for end := time.Now().Add(d); time.Now().Before(end); n++ {
		c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: sock, Net: "unixpacket"})
		if err != nil {
			continue
		}
		c.Write([]byte{1})
		c.Close()
	}
	fmt.Printf("sent %d\n", n)
	return nil
}

// Root's ipn dump -w into a shared directory where mallory planted a link
// to a file of root's: refused, the file intact.
func TestAttackDumpWritesNoLink(t *testing.T) {
	_, m := realUsers(t)
	path, _ := bindNet(t, nil)
	secret := filepath.Join(testDir, "secret-"+strconv.Itoa(os.Getpid()))
	os.WriteFile(secret, []byte("root's"), 0o600)
	defer os.Remove(secret)
	shared := tempDir(t) // 1777, as /tmp
	link := filepath.Join(shared, "capture.pcap")
	if out, err := runAs(t, &m, nil, "ln", "-s", secret, link); err != nil {
		t.Fatalf("ln -s: %v %s", err, out)
	}
	out, err := runAs(t, nil, nil, ipnCommand(t), "dump", "-w", link, "-c", "1", path)
	if err == nil || !strings.Contains(out, "symbolic link") {
		t.Fatalf("ipn dump -w through a link: %v %q", err, out)
	}
	if b, _ := os.ReadFile(secret); string(b) != "root's" {
		t.Fatalf("the link's target now holds %q", b)
	}
}

// In a lossless network, a receiver that never reads its ring (r is all
// it needs) holds the senders up, as lossless delivery must; but a sender
// that gives up and leaves is gone for good, its connection given back.
func TestAttackLosslessStuckReader(t *testing.T) {
	a, m := realUsers(t)
	sock, _ := ownDaemon(t, "--max-conns", "2")
	env := []string{"IPN_SOCKET=" + sock}
	path := filepath.Join(userDir(t, a, 0o755), "ll")
	b := start(t, a.cred(), append(env, helperEnv+"=bindlossless"), helperBin, path)
	b.expect("ok", waitProcs)
	idle := start(t, m.cred(), append(env, helperEnv+"=idle"), helperBin, path)
	idle.expect("ready ", waitProcs)
	for i := range 4 { // her binder holds one of her 2 connections: a leak shows at the next round
		h := start(t, a.cred(), append(env, helperEnv+"=sendclose"), helperBin, path)
		if got := h.expect("closed", 30*time.Second); got != "closed" {
			t.Fatalf("round %d: %q", i, got)
		}
		if err := h.wait(waitProcs); err != nil {
			t.Fatalf("round %d: %v %s", i, err, h.stderr())
		}
	}
}

// helpBindLossless makes a lossless network (pool 8, mode 0744) at path and
// holds it until stdin closes.
func helpBindLossless(path string) error {
	s, err := ipn.NewSocket(ipn.Hub)
	if err != nil {
		return err
	}
	defer s.Close()
	s.SetFlags(ipn.Lossless)
	s.SetMode(0o744)
	if err := s.Bind(path); err != nil {
		return err
	}
	fmt.Println("ok")
	waitStdin()
	return nil
}

// helpSendClose joins path and sends until a send fails (the network is
// full: a short write deadline), then leaves.
func helpSendClose(path string) error {
	s, err := join(path, ipn.ShutRead)
	if err != nil {
		return err
	}
	s.SetWriteDeadline(time.Now().Add(300 * time.Millisecond))
	for s.Send([]byte("lossless")) == nil {
	}
	s.Close()
	fmt.Println("closed")
	return nil
}

// mallory flips a directory of hers between her own and alice's private
// one while alice binds a network through it: what alice's library removes
// after a refused bind is only the file it made, never one of alice's
// elsewhere.
func TestAttackBindRemovesOnlyItsOwnFile(t *testing.T) {
	a, m := realUsers(t)
	docs := userDir(t, a, 0o700)
	precious := filepath.Join(docs, "net")
	os.WriteFile(precious, []byte("alice's"), 0o600)
	os.Chown(precious, int(a.uid), int(a.gid))
	mdir := userDir(t, m, 0o755)
	open := filepath.Join(mdir, "open")
	os.Mkdir(open, 0o777)
	os.Chmod(open, 0o777)
	os.Chown(open, int(m.uid), int(m.gid))
	sw := helper(t, m.cred(), "flip", filepath.Join(mdir, "sub"), open, docs, "3s")
	binds := helper(t, a.cred(), "bindloop", filepath.Join(mdir, "sub", "net"), "300")
	binds.expect("binds ", 60*time.Second)
	sw.expect("flipped ", 30*time.Second)
	if b, err := os.ReadFile(precious); err != nil || string(b) != "alice's" {
		t.Fatalf("alice's %s after her binds through mallory's directory: %q %v", precious, b, err)
	}
}

// helpFlip makes link point to a, then b, and back, for d.
func helpFlip(link, a, b, dS string) error {
	d, _ := time.ParseDuration(dS)
	n := 0
	for end := time.Now().Add(d); time.Now().Before(end); n++ {
		for _, to := range []string{a, b} {
			tmp := link + ".new"
			os.Remove(tmp)
			os.Symlink(to, tmp)
			os.Rename(tmp, link)
		}
	}
	fmt.Printf("flipped %d\n", n)
	return nil
}

// helpBindLoop binds path n times, each time with a new socket it closes.
func helpBindLoop(path, nS string) error {
	n, _ := strconv.Atoi(nS)
	for range n {
		if s, err := ipn.NewSocket(ipn.Hub); err == nil {
			s.Bind(path)
			s.Close()
		}
	}
	fmt.Printf("binds %d\n", n)
	return nil
}

// A path with terminal escapes and a newline: ipn ls prints it quoted, so
// it can neither drive alice's terminal nor forge a line.
func TestAttackListingEscapes(t *testing.T) {
	a, m := realUsers(t)
	path := filepath.Join(userDir(t, m, 0o755), "x\x1b]0;owned\a\nforged  hub  alice")
	helper(t, m.cred(), "bindwait", path).expect("ok ", waitProcs)
	out, err := runAs(t, &a, nil, ipnCommand(t), "ls")
	if err != nil {
		t.Fatalf("ipn ls: %v %s", err, out)
	}
	if strings.ContainsAny(out, "\x1b\a") || strings.Contains(out, "\nforged") {
		t.Fatalf("ipn ls printed the escapes or the forged line:\n%q", out)
	}
	if !strings.Contains(out, `\x1b]0;owned\a\nforged`) {
		t.Fatalf("ipn ls does not show the path quoted:\n%s", out)
	}
}

// mallory mounts a file system of her own over alice's directory in a
// mount namespace of hers and makes a network there: the daemon cannot
// reach that file by the path the kernel names it with, so the network
// shows with no path rather than as alice's.
func TestAttackNameFromAnotherMountNamespace(t *testing.T) {
	a, m := realUsers(t)
	adir := userDir(t, a, 0o755)
	bank := filepath.Join(adir, "bank")
	helper(t, a.cred(), "bindwait", bank).expect("ok ", waitProcs)
	h := start(t, m.cred(), []string{helperEnv + "=bindwait"}, "unshare", "-Urm", "sh", "-c",
		fmt.Sprintf("mount -t tmpfs tmpfs %s && exec %s %s", adir, helperBin, bank))
	h.expect("ok ", waitProcs)
	nets, err := ipn.List("")
	if err != nil {
		t.Fatal(err)
	}
	named, elsewhere := 0, 0
	for _, n := range nets {
		switch {
		case n.Path == bank:
			named++
			if n.UID != a.uid {
				t.Fatalf("%s is listed as uid %d's", bank, n.UID)
			}
		case strings.HasPrefix(n.Path, "(no path here) ") && strings.HasSuffix(n.Path, bank):
			elsewhere++
		}
	}
	if named != 1 || elsewhere != 1 {
		t.Fatalf("%d networks named %s and %d with no path here, want 1 and 1: %+v", named, bank, elsewhere, nets)
	}
}

// openFiles counts the descriptors process pid has open.
func openFiles(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// helpRefusedFDs makes n connections to sock, over its user's limit, each
// passing 4 descriptors with its hello, and reads each refusal.
func helpRefusedFDs(sock, nS string) error {
	n, _ := strconv.Atoi(nS)
	var p [2]int
	if err := unix.Pipe(p[:]); err != nil {
		return err
	}
	refused := 0
	for range n {
		c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: sock, Net: "unixpacket"})
		if err != nil {
			return err
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		hello := wire.Packet(wire.OpHello, []byte{byte(wire.Version), 0, 0, 0})
		if err := wire.Send(c, hello, p[0], p[1], p[0], p[1]); err != nil {
			c.Close()
			return err
		}
		if pkt, _, err := wire.Recv(c, make([]byte, 2048)); err == nil {
			if _, body, err := wire.Split(pkt); err == nil {
				if _, err := wire.SplitReply(body); errors.Is(err, syscall.EAGAIN) {
					refused++
				}
			}
		}
		c.Close()
	}
	fmt.Printf("refused %d\n", refused)
	waitStdin()
	return nil
}
