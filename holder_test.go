package ipn_test

// The tests of this file kill a daemon (a process of its own, the ipn
// command) that holds persistent taps in namespaces they make, and check
// that the holder kept the taps and that the next daemon brings the ports
// back; and that no other user can reach the holder.

import (
	"encoding/json"
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
)

// holderPokeEnv makes this test binary the helper holderPoke.
const holderPokeEnv = "IPN_TEST_HOLDERPOKE"

func init() {
	if args := os.Getenv(holderPokeEnv); args != "" {
		holderPoke(strings.Split(args, ","))
		os.Exit(0)
	}
}

// holderDaemon runs the ipn command as a daemon on sock and waits until it
// answers.
func holderDaemon(t *testing.T, sock string) *proc {
	t.Helper()
	d := daemonAt(t, sock)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("daemon pid %d stderr:\n%s", d.cmd.Process.Pid, d.stderr())
			if b, err := os.ReadFile(sock + ".holder.log"); err == nil {
				t.Logf("holder log:\n%s", b)
			}
		}
	})
	return d
}

// holderPid returns the pid of the holder of the daemon at sock (the
// process named ipn-holder whose socket it is), or 0. It does not connect
// to the holder: a connection of root's would replace its daemon's.
func holderPid(sock string) int {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmd, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		env, _ := os.ReadFile("/proc/" + e.Name() + "/environ")
		if string(cmd) == "ipn-holder\x00" && strings.Contains("\x00"+string(env)+"\x00", "\x00IPN_SOCKET="+sock+"\x00") && !exited(pid) {
			return pid
		}
	}
	return 0
}

// killHolder kills, when the test ends, the holder that serves beside
// sock then (it is in a session of its own, out of reach of the cleanup
// of the processes the test started).
func killHolder(t *testing.T, sock string) {
	t.Cleanup(func() {
		if pid := holderPid(sock); pid > 0 {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
}

// lsPorts returns the ports of the network at path as the daemon at sock
// lists them (ipn ls --json), by description.
func lsPorts(t *testing.T, sock, path string) map[string]ipn.PortInfo {
	t.Helper()
	cmd := exec.Command(ipnCommand(t), "ls", "--json", path)
	cmd.Env = append(os.Environ(), "IPN_SOCKET="+sock, "IPN_NO_AUTOSTART=1")
	out, err := cmd.Output()
	if err != nil {
		return nil
	}
	var nets []struct {
		Ports []ipn.PortInfo `json:"port_list"`
	}
	if json.Unmarshal(out, &nets) != nil || len(nets) != 1 {
		return nil
	}
	m := map[string]ipn.PortInfo{}
	for _, p := range nets[0].Ports {
		m[p.Descr] = p
	}
	return m
}

// holderPlug runs "ipn plug path tap://name --persist" in ns against the
// daemon at sock, waits for its persistent port, then kills the plug: the
// port stays. It returns the port's number.
func holderPlug(t *testing.T, sock, ns, path, name string) int {
	t.Helper()
	return holderPlugAs(t, sock, ns, path, "tap", name)
}

// holderPlugAs is holderPlug for a device of scheme (tap or grab).
func holderPlugAs(t *testing.T, sock, ns, path, scheme, name string) int {
	t.Helper()
	p := start(t, nil, []string{"IPN_SOCKET=" + sock, "IPN_NO_AUTOSTART=1"},
		"ip", "netns", "exec", ns, ipnCommand(t), "plug", "--persist", path, scheme+"://"+name)
	var port ipn.PortInfo
	waitFor(t, waitProcs, scheme+" "+name+" attached", func() bool {
		select {
		case <-p.done:
			t.Fatalf("ipn plug %s://%s exited: %v\n%s", scheme, name, p.err, p.stderr())
		default:
		}
		var ok bool
		port, ok = lsPorts(t, sock, path)[scheme+" "+name]
		return ok
	})
	if !port.Persist {
		t.Fatalf("%s %s: port %+v, want a persistent one", scheme, name, port)
	}
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	p.wait(waitProcs)
	return port.Port
}

// holderSetup runs a daemon on a socket of its own and attaches two
// persistent taps, in two namespaces, to a switch network; it returns the
// socket, the daemon, the network, the namespaces, the taps and their
// port numbers. The taps are 10.76.0.1 and .2.
func holderSetup(t *testing.T) (sock string, d *proc, path string, ns, taps [2]string, ports [2]int) {
	t.Helper()
	sock = filepath.Join(tempDir(t), "d", "ipn.sock")
	d = holderDaemon(t, sock)
	killHolder(t, sock)
	path = filepath.Join(tempDir(t), "net")
	binder, err := (&ipn.Dialer{Socket: sock}).NewSocket(ipn.VDESwitch)
	if err != nil {
		t.Fatal(err)
	}
	if err := binder.Bind(path); err != nil {
		t.Fatal(err)
	}
	for i, label := range []string{"ha", "hb"} {
		ns[i], taps[i] = netnsAdd(t, "hold"+label), devName(label)
		ports[i] = holderPlug(t, sock, ns[i], path, taps[i])
		netnsRun(t, ns[i], fmt.Sprintf("addr add 10.76.0.%d/24 dev %s", i+1, taps[i]), "link set "+taps[i]+" up")
		// Clear their persistence at the end, so that the holder lets
		// the taps go.
		t.Cleanup(func() {
			c := exec.Command(ipnCommand(t), "device", path, "clear", taps[i])
			c.Env = append(os.Environ(), "IPN_SOCKET="+sock, "IPN_NO_AUTOSTART=1")
			c.Run()
		})
	}
	binder.Close() // the persistent ports hold the network
	return
}

// tapAddr returns the IPv4 addresses of dev in ns ("" if there is no dev).
func tapAddr(ns, dev string) string {
	out, err := exec.Command("ip", "-n", ns, "-4", "-o", "addr", "show", "dev", dev).CombinedOutput()
	if err != nil {
		return ""
	}
	return string(out)
}

// A persistent tap outlives the daemon's SIGKILL, in its namespace with its
// address: the holder keeps it. The next daemon on the socket brings the
// network and both ports back, at the same numbers, persistent, and a ping
// goes through again; once their persistence is cleared the taps go.
func TestHolderTapSurvivesCrash(t *testing.T) {
	netnsNeed(t, "ping")
	sock, d, path, ns, taps, ports := holderSetup(t)
	nsPing(t, ns[0], "10.76.0.2")

	hpid := holderPid(sock)
	if hpid == 0 || hpid == d.cmd.Process.Pid {
		t.Fatalf("holder pid %d (daemon %d): want a holder of its own", hpid, d.cmd.Process.Pid)
	}
	var st unix.Stat_t
	if err := unix.Lstat(sock+".holder", &st); err != nil || st.Mode&0o7777 != 0o600 || st.Uid != 0 {
		t.Fatalf("holder socket: %v, mode %#o uid %d; want 0600 of root", err, st.Mode&0o7777, st.Uid)
	}

	syscall.Kill(d.cmd.Process.Pid, syscall.SIGKILL)
	d.wait(waitProcs)
	for i := range taps {
		if a := tapAddr(ns[i], taps[i]); !strings.Contains(a, fmt.Sprintf("10.76.0.%d/24", i+1)) {
			t.Fatalf("after the daemon's SIGKILL, tap %s in %s: %q; want it there with its address", taps[i], ns[i], a)
		}
	}
	if exited(hpid) {
		t.Fatal("the holder died with the daemon")
	}

	holderDaemon(t, sock)
	got := lsPorts(t, sock, path)
	for i, tap := range taps {
		p, ok := got["tap "+tap]
		if !ok || p.Port != ports[i] || !p.Persist || !p.Read || !p.Write {
			t.Errorf("after a new daemon, tap %s: %+v (listed %v); want persistent port %d, read and write", tap, p, ok, ports[i])
		}
	}
	if holderPid(sock) != hpid {
		t.Errorf("holder pid %d after the restart, want the same holder %d", holderPid(sock), hpid)
	}
	nsPing(t, ns[0], "10.76.0.2")

	// Cleared, each port goes, and so does its tap: the holder let it go.
	for i, tap := range taps {
		c := exec.Command(ipnCommand(t), "device", path, "clear", tap)
		c.Env = append(os.Environ(), "IPN_SOCKET="+sock, "IPN_NO_AUTOSTART=1")
		if out, err := c.CombinedOutput(); err != nil {
			t.Fatalf("ipn device clear %s: %v\n%s", tap, err, out)
		}
		waitFor(t, waitProcs, "tap "+tap+" gone", func() bool { return tapAddr(ns[i], tap) == "" })
	}
}

// The holder's socket, its log and lock, and its descriptors are out of
// reach of another user: a connection is refused by the file's mode
// (EACCES), and, with the mode opened up by mistake, by the holder itself
// (it answers nothing and keeps its daemon). The held taps come back
// after a crash all the same.
func TestHolderRefusesOtherUsers(t *testing.T) {
	netnsNeed(t, "ping")
	_, mal := realUsers(t)
	sock, d, path, ns, taps, ports := holderSetup(t)
	hpid := holderPid(sock)
	if hpid == 0 {
		t.Fatal("no holder")
	}
	poke := func(what string) map[string]string {
		t.Helper()
		p := start(t, mal.cred(), []string{holderPokeEnv + "=" + what + "," + sock + "," + strconv.Itoa(hpid)}, helperBin)
		if err := p.wait(waitProcs); err != nil {
			t.Fatalf("poke: %v\n%s", err, p.stderr())
		}
		res := map[string]string{}
		for _, l := range drain(p) {
			k, v, _ := strings.Cut(l, " ")
			res[k] = v
		}
		return res
	}
	res := poke("all")
	for k, want := range map[string]string{
		"connect": "EACCES", "log": "EACCES", "lock": "EACCES", "plant": "EACCES",
		"fds": "EACCES", "fd3": "EACCES", "getfd": "EPERM", "environ": "EACCES",
	} {
		if res[k] != want {
			t.Errorf("mallory's %s: %q, want %s (all: %v)", k, res[k], want, res)
		}
	}

	// The mode opened by mistake: the holder's own check refuses her.
	if err := os.Chmod(sock+".holder", 0o666); err != nil {
		t.Fatal(err)
	}
	res = poke("peer")
	os.Chmod(sock+".holder", 0o600)
	if res["dial"] != "ok" || res["hello"] != "EOF" || res["list"] != "none" {
		t.Errorf("mallory on an open holder socket: %v; want her connection closed unanswered", res)
	}

	// The daemon still holds its connection and the holder its taps.
	syscall.Kill(d.cmd.Process.Pid, syscall.SIGKILL)
	d.wait(waitProcs)
	holderDaemon(t, sock)
	got := lsPorts(t, sock, path)
	for i, tap := range taps {
		if p, ok := got["tap "+tap]; !ok || p.Port != ports[i] || !p.Persist {
			t.Errorf("after mallory and a crash, tap %s: %+v (listed %v), want persistent port %d", tap, p, ok, ports[i])
		}
	}
	nsPing(t, ns[0], "10.76.0.2")
}

// holderPoke is the helper that attacks the holder beside socket sock
// (pid pid) as another user, printing "WHAT RESULT" lines: with "all",
// every way in it can think of; with "peer", a connection to the socket,
// its mode opened up.
func holderPoke(args []string) {
	what, sock, pid := args[0], args[1], args[2]
	hsock := sock + ".holder"
	res := func(k string, err error) {
		if err == nil {
			fmt.Println(k, "ok")
			return
		}
		fmt.Println(k, errName(err))
	}
	if what == "peer" {
		c, err := net.DialTimeout("unixpacket", hsock, 5*time.Second)
		res("dial", err)
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 8192)
		n, err := c.Read(buf)
		if err == nil && n == 0 {
			err = errors.New("EOF")
		}
		res("hello", err)
		c.Write([]byte{4}) // list
		if n, err := c.Read(buf); err == nil && n > 0 {
			fmt.Println("list", "got", n)
		} else {
			fmt.Println("list", "none")
		}
		return
	}
	c, err := net.Dial("unixpacket", hsock)
	if err == nil {
		c.Close()
	}
	res("connect", unwrapErrno(err))
	for k, p := range map[string]string{"log": hsock + ".log", "lock": hsock + ".lock"} {
		f, err := os.Open(p)
		if err == nil {
			f.Close()
		}
		res(k, unwrapErrno(err))
	}
	f, err := os.OpenFile(filepath.Join(filepath.Dir(sock), "planted"), os.O_CREATE|os.O_WRONLY, 0o600)
	if err == nil {
		f.Close()
	}
	res("plant", unwrapErrno(err))
	_, err = os.ReadDir("/proc/" + pid + "/fd")
	res("fds", unwrapErrno(err))
	fd, err := unix.Open("/proc/"+pid+"/fd/3", unix.O_RDONLY, 0)
	if err == nil {
		unix.Close(fd)
	}
	res("fd3", err)
	_, err = os.ReadFile("/proc/" + pid + "/environ")
	res("environ", unwrapErrno(err))
	p, _ := strconv.Atoi(pid)
	pfd, err := unix.PidfdOpen(p, 0)
	if err == nil {
		var gfd int
		gfd, err = unix.PidfdGetfd(pfd, 3, 0)
		if err == nil {
			unix.Close(gfd)
		}
		unix.Close(pfd)
	}
	res("getfd", err)
}

// unwrapErrno returns the errno inside err, or err.
func unwrapErrno(err error) error {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno
	}
	return err
}

// A persistent grab outlives the daemon's SIGKILL too: the holder keeps
// its packet socket (and the interface its promiscuous mode), and the next
// daemon brings the port back at its number, a ping crossing it again.
func TestHolderGrabSurvivesCrash(t *testing.T) {
	netnsNeed(t, "ping")
	sock := filepath.Join(tempDir(t), "d", "ipn.sock")
	d := holderDaemon(t, sock)
	killHolder(t, sock)
	path := filepath.Join(tempDir(t), "net")
	binder, err := (&ipn.Dialer{Socket: sock}).NewSocket(ipn.VDESwitch)
	if err != nil {
		t.Fatal(err)
	}
	if err := binder.Bind(path); err != nil {
		t.Fatal(err)
	}
	ns1, ns2, ns3 := netnsAdd(t, "hg1"), netnsAdd(t, "hg2"), netnsAdd(t, "hg3")
	netnsIP(t, "-n", ns1, "link", "add", "veth1", "type", "veth", "peer", "name", "veth2", "netns", ns2)
	netnsRun(t, ns1, "addr add 10.74.0.1/24 dev veth1", "link set veth1 up")
	netnsRun(t, ns2, "link set veth2 up")
	grabbed := holderPlugAs(t, sock, ns2, path, "grab", "veth2")
	tap := devName("hg")
	holderPlug(t, sock, ns3, path, tap)
	netnsRun(t, ns3, "addr add 10.74.0.2/24 dev "+tap, "link set "+tap+" up")
	for _, dev := range [][2]string{{ns2, "veth2"}, {ns3, tap}} {
		t.Cleanup(func() {
			c := exec.Command(ipnCommand(t), "device", path, "clear", dev[1])
			c.Env = append(os.Environ(), "IPN_SOCKET="+sock, "IPN_NO_AUTOSTART=1")
			c.Run()
		})
	}
	binder.Close()
	nsPing(t, ns1, "10.74.0.2")
	promisc, _ := promiscuity(t, ns2, "veth2")

	syscall.Kill(d.cmd.Process.Pid, syscall.SIGKILL)
	d.wait(waitProcs)
	if n, _ := promiscuity(t, ns2, "veth2"); n != promisc {
		t.Errorf("veth2's promiscuity %d after the daemon's SIGKILL, %d before: the holder should keep the grab", n, promisc)
	}
	holderDaemon(t, sock)
	if p, ok := lsPorts(t, sock, path)["grab veth2"]; !ok || p.Port != grabbed || !p.Persist {
		t.Errorf("after a new daemon, grab veth2: %+v (listed %v); want persistent port %d", p, ok, grabbed)
	}
	nsPing(t, ns1, "10.74.0.2")
}
