package main

import (
	"bufio"
	"bytes"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ipn-project/ipn"
	"github.com/ipn-project/ipn/daemon"
	"github.com/ipn-project/ipn/internal/daemontest"
)

// need skips a test without the program name, except under CI, which
// must install it (the report of .ci/run names the package).
func need(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s (Debian's %s) is missing; CI must install it", name, pkg)
		}
		t.Skipf("needs %s (Debian's %s)", name, pkg)
	}
	return p
}

// activator is systemd-socket-activate running this test binary as ipn
// daemon -f on the socket it made, with its stderr (the daemon's too)
// gathered line by line.
type activator struct {
	cmd   *exec.Cmd
	mu    sync.Mutex
	lines []string
	more  chan struct{} // gets a token on each line
	done  chan struct{} // closed once stderr ended
}

// activate starts systemd-socket-activate with its options opts, running
// ipn daemon -f --socket sock (and the options daemonArgs) once a client
// comes, and returns once it listens at listenAt. Cleanup kills it and
// its daemon.
func activate(t *testing.T, opts []string, env []string, listenAt, sock string, daemonArgs ...string) *activator {
	t.Helper()
	bin := need(t, "systemd-socket-activate", "systemd")
	args := append([]string{}, opts...)
	args = append(args, "-E", asIPNEnv+"=1")
	for _, e := range env {
		args = append(args, "-E", e)
	}
	args = append(args, os.Args[0], "daemon", "-f", "--socket", sock)
	args = append(args, daemonArgs...)
	a := &activator{cmd: exec.Command(bin, args...), more: make(chan struct{}, 1), done: make(chan struct{})}
	a.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	r, err := a.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { // ends with stderr, when the group is killed
		defer close(a.done)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			a.mu.Lock()
			a.lines = append(a.lines, sc.Text())
			a.mu.Unlock()
			select {
			case a.more <- struct{}{}:
			default:
			}
		}
	}()
	t.Cleanup(func() {
		syscall.Kill(-a.cmd.Process.Pid, syscall.SIGKILL)
		<-a.done
		a.cmd.Wait()
	})
	a.expect(t, "Listening on "+listenAt)
	return a
}

// expect waits until a line of stderr contains want, and returns it.
func (a *activator) expect(t *testing.T, want string) string {
	t.Helper()
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	for {
		a.mu.Lock()
		lines := slices.Clone(a.lines)
		a.mu.Unlock()
		for _, l := range lines {
			if strings.Contains(l, want) {
				return l
			}
		}
		select {
		case <-a.more:
		case <-a.done:
			a.mu.Lock()
			n := len(a.lines)
			a.mu.Unlock()
			if n == len(lines) { // nothing more will come
				t.Fatalf("stderr ended without %q:\n%s", want, strings.Join(lines, "\n"))
			}
		case <-deadline.C:
			t.Fatalf("no %q on stderr in 30s:\n%s", want, strings.Join(lines, "\n"))
		}
	}
}

// socketDir returns a directory for a control socket that the daemon
// accepts: the caller's own, not writable by others.
func socketDir(t *testing.T) string {
	t.Helper()
	d := filepath.Join(t.TempDir(), "run")
	if err := os.Mkdir(d, 0o700); err != nil {
		t.Fatal(err)
	}
	return d
}

// ipn daemon -f, socket-activated by systemd-socket-activate --seqpacket
// (as ipn.socket does), serves on the socket it is passed: the first
// client's connection, made before the daemon ran, is served; members
// exchange messages; the daemon tells NOTIFY_SOCKET it is ready, and
// which process it is. A reload (ipn daemon --takeover) hands everything
// to a new daemon that says so too; stopped, that one leaves systemd's
// socket in place.
func TestSocketActivation(t *testing.T) {
	dir := socketDir(t)
	sock := filepath.Join(dir, "ipn.sock")
	notifyPath := filepath.Join(dir, "notify")
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()
	a := activate(t, []string{"--seqpacket", "-l", sock}, []string{"NOTIFY_SOCKET=" + notifyPath}, sock, sock)
	if fi, err := os.Lstat(sock); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("systemd-socket-activate made no socket at %s: %v", sock, err)
	}

	// The first connection starts the daemon.
	dial := &ipn.Dialer{Socket: sock}
	netPath := filepath.Join(t.TempDir(), "net")
	sender, err := dial.NewSocket(ipn.Hub)
	if err != nil {
		t.Fatal(err)
	}
	defer sender.Close()
	if err := sender.Bind(netPath); err != nil {
		t.Fatal(err)
	}
	if err := sender.Connect(""); err != nil {
		t.Fatal(err)
	}
	recv, err := dial.NewSocket(ipn.Any)
	if err != nil {
		t.Fatal(err)
	}
	defer recv.Close()
	if err := recv.Connect(netPath); err != nil {
		t.Fatal(err)
	}
	recv.SetReadDeadline(time.Now().Add(20 * time.Second))
	buf := make([]byte, 100)
	for i := 0; i < 3; i++ {
		msg := "through systemd's socket " + strconv.Itoa(i)
		if err := sender.Send([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		n, _, err := recv.Recv(buf)
		if err != nil || string(buf[:n]) != msg {
			t.Fatalf("Recv: %q %v, want %q", buf[:n], err, msg)
		}
	}

	// READY=1, with the daemon as the main process.
	notify.SetReadDeadline(time.Now().Add(20 * time.Second))
	n, err := notify.Read(buf)
	if err != nil {
		t.Fatalf("no notification on NOTIFY_SOCKET: %v", err)
	}
	fields := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(buf[:n])), "\n") {
		k, v, _ := strings.Cut(l, "=")
		fields[k] = v
	}
	if fields["READY"] != "1" {
		t.Fatalf("notification %q, want READY=1", buf[:n])
	}
	pid, err := strconv.Atoi(fields["MAINPID"])
	if err != nil {
		t.Fatalf("notification %q: MAINPID: %v", buf[:n], err)
	}
	cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if !strings.Contains(string(cmdline), "daemon\x00-f\x00--socket\x00"+sock) {
		t.Fatalf("MAINPID %d runs %q, not the daemon", pid, cmdline)
	}
	a.expect(t, "systemd_socket=true")

	// A reload, as ipn.service's ExecReload: ipn daemon --takeover, in
	// the background. The new daemon takes systemd's socket over, says
	// it is the main process now, and the old one exits.
	runIPN(t, []string{"NOTIFY_SOCKET=" + notifyPath}, "daemon", "--takeover", "--socket", sock)
	notify.SetReadDeadline(time.Now().Add(20 * time.Second))
	n, err = notify.Read(buf)
	if err != nil {
		t.Fatalf("no notification from the daemon that took over: %v", err)
	}
	if got := string(buf[:n]); !strings.HasPrefix(got, "READY=1\nMAINPID=") {
		t.Fatalf("notification %q, want READY=1 and MAINPID", got)
	}
	newPID, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(string(buf[:n]), "READY=1\nMAINPID=")))
	if err != nil || newPID == pid {
		t.Fatalf("notification %q: MAINPID %d (%v), want a new daemon's (the old is %d)", buf[:n], newPID, err, pid)
	}
	t.Cleanup(func() { syscall.Kill(newPID, syscall.SIGKILL) }) // not in the activator's group
	a.expect(t, "exiting after the takeover")
	msg := "after the reload"
	if err := sender.Send([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	if n, _, err := recv.Recv(buf); err != nil || string(buf[:n]) != msg {
		t.Fatalf("Recv after the takeover: %q %v, want %q", buf[:n], err, msg)
	}

	// Stopped, the daemon ends its networks and leaves the socket,
	// which is systemd's, where it is.
	if err := syscall.Kill(newPID, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	recv.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, _, err := recv.Recv(buf); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("Recv after the daemon's SIGTERM: %v, want ECONNRESET", err)
	}
	log, err := os.ReadFile(sock + ".log") // the background daemon's
	if err != nil || !strings.Contains(string(log), "msg=stopping") {
		t.Fatalf("the daemon that took over did not log its stop (%v):\n%s", err, log)
	}
	if fi, err := os.Lstat(sock); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("the daemon removed systemd's socket %s: %v", sock, err)
	}
}

// ipn daemon -f refuses, saying why, a socket systemd passes that cannot
// be its control socket: a stream socket (ListenStream=), or a socket at
// another path than the one it serves.
func TestSocketActivationRefuses(t *testing.T) {
	for _, c := range []struct {
		name     string
		opts     func(sock, other string) []string
		dialNet  string
		listenAt func(sock, other string) string
		want     []string
	}{
		{"stream", func(sock, _ string) []string { return []string{"-l", sock} }, "unix",
			func(sock, _ string) string { return sock },
			[]string{"SOCK_STREAM", "want SOCK_SEQPACKET", "ListenSequentialPacket="}},
		{"datagram", func(sock, _ string) []string { return []string{"--datagram", "-l", sock} }, "unixgram",
			func(sock, _ string) string { return sock },
			[]string{"SOCK_DGRAM", "want SOCK_SEQPACKET"}},
		{"elsewhere", func(_, other string) []string { return []string{"--seqpacket", "-l", other} }, "unixpacket",
			func(_, other string) string { return other },
			[]string{"a socket at ", "other.sock, but this daemon serves ", "ipn.sock"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := socketDir(t)
			sock, other := filepath.Join(dir, "ipn.sock"), filepath.Join(dir, "other.sock")
			at := c.listenAt(sock, other)
			a := activate(t, c.opts(sock, other), nil, at, sock)
			// A client's first packet wakes systemd-socket-activate.
			conn, err := net.Dial(c.dialNet, at)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if c.dialNet == "unixgram" {
				conn.Write([]byte("wake"))
			}
			l := a.expect(t, "ipn: systemd passed descriptor 3")
			for _, w := range c.want {
				if !strings.Contains(l, w) {
					t.Errorf("refusal %q does not say %q", l, w)
				}
			}
			if !strings.Contains(l, daemon.ErrActivation.Error()) {
				t.Errorf("refusal %q does not say %q", l, daemon.ErrActivation)
			}
			if _, err := os.Lstat(sock + ".lock"); err == nil {
				t.Errorf("the daemon took its lock before refusing the socket")
			}
		})
	}
}

// The units in dist/systemd parse (systemd-analyze verify) and say what
// the daemon needs: the control socket as SOCK_SEQPACKET where the system
// daemon serves, reachable by all, and a service of Type=notify that
// runs ipn daemon in the foreground on it.
func TestSystemdUnits(t *testing.T) {
	analyze := need(t, "systemd-analyze", "systemd")
	units := filepath.Join("..", "..", "dist", "systemd")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, kind := range []string{"system", "user"} {
		src := units
		if kind == "user" {
			src = filepath.Join(units, "user")
		}
		socketUnit, err := os.ReadFile(filepath.Join(src, "ipn.socket"))
		if err != nil {
			t.Fatal(err)
		}
		service, err := os.ReadFile(filepath.Join(src, "ipn.service"))
		if err != nil {
			t.Fatal(err)
		}
		sockPath := daemon.SystemSocket
		if kind == "user" {
			sockPath = "%t/ipn/ipn.sock"
		}
		for _, want := range []string{"ListenSequentialPacket=" + sockPath + "\n", "Accept=", "SocketMode=0"} {
			if want == "Accept=" {
				if bytes.Contains(socketUnit, []byte("Accept=yes")) {
					t.Errorf("%s ipn.socket says Accept=yes: the daemon takes a listening socket", kind)
				}
				continue
			}
			if !bytes.Contains(socketUnit, []byte(want)) {
				t.Errorf("%s ipn.socket lacks %q", kind, want)
			}
		}
		if kind == "system" && !bytes.Contains(socketUnit, []byte("SocketMode=0666\n")) {
			t.Errorf("the system's ipn.socket is not SocketMode=0666: users could not reach the daemon")
		}
		for _, want := range []string{"Type=notify\n", "NotifyAccess=all\n",
			"ExecStart=/usr/local/bin/ipn daemon --foreground --socket " + sockPath + "\n",
			"ExecReload=/usr/local/bin/ipn daemon --takeover --socket " + sockPath + "\n"} {
			if !bytes.Contains(service, []byte(want)) {
				t.Errorf("%s ipn.service lacks %q", kind, want)
			}
		}
		// systemd-analyze checks that ExecStart's program exists: this
		// one stands in for /usr/local/bin/ipn.
		tmp := t.TempDir()
		for name, b := range map[string][]byte{"ipn.socket": socketUnit, "ipn.service": service} {
			b = bytes.ReplaceAll(b, []byte("/usr/local/bin/ipn"), []byte(exe))
			if err := os.WriteFile(filepath.Join(tmp, name), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		verify(t, analyze, kind, tmp, "--man=no")
	}
}

// verify runs systemd-analyze verify on dir's ipn.socket and ipn.service
// (a user's units if kind is user) and fails on any complaint: an unknown
// key is only a warning to it, and an error here.
func verify(t *testing.T, analyze, kind, dir string, opts ...string) {
	t.Helper()
	args := []string{"verify"}
	env := os.Environ()
	if kind == "user" {
		args = []string{"--user", "verify"}
		xdg := filepath.Join(t.TempDir(), "xdg")
		os.Mkdir(xdg, 0o700)
		env = append(env, "XDG_RUNTIME_DIR="+xdg)
	}
	args = append(args, opts...)
	args = append(args, filepath.Join(dir, "ipn.socket"), filepath.Join(dir, "ipn.service"))
	cmd := exec.Command(analyze, args...)
	cmd.Env = env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil || out.Len() > 0 {
		t.Errorf("systemd-analyze %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
}

// ipn daemon, without -f, starts a daemon in the background that serves
// until stopped (no idle exit unless --idle-exit), is ipn daemon in ps,
// and refuses to start beside a running one; --idle-exit reaches it.
func TestDaemonCommandServesUntilStopped(t *testing.T) {
	sock := filepath.Join(socketDir(t), "ipn.sock")
	if out := runIPN(t, nil, "daemon", "--socket", sock); out != "ipn daemon serving "+sock+"\n" {
		t.Errorf("ipn daemon printed %q", out)
	}
	pid := daemontest.DaemonPID(t, sock)
	t.Cleanup(func() {
		syscall.Kill(pid, syscall.SIGTERM)
		if !daemontest.WaitExit(t, pid, 10*time.Second) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if want := "ipn\x00daemon\x00--socket\x00" + sock + "\x00"; string(cmdline) != want {
		t.Errorf("/proc/%d/cmdline %q, want %q", pid, cmdline, want)
	}
	if comm, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm"); string(comm) != "ipn\n" {
		t.Errorf("/proc/%d/comm %q, want ipn", pid, comm)
	}
	log, _ := os.ReadFile(sock + ".log")
	if !strings.Contains(string(log), "msg=serving") || !strings.Contains(string(log), "idle_exit=never") {
		t.Errorf("the daemon of ipn daemon has an idle exit; its log:\n%s", log)
	}

	cmd := exec.Command(os.Args[0], "daemon", "--socket", sock)
	cmd.Env = append(os.Environ(), asIPNEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "a daemon is already running") || !strings.Contains(string(out), "--takeover") {
		t.Errorf("a second ipn daemon on %s: %v\n%s\nwant a failure naming --takeover", sock, err, out)
	}
	if daemontest.DaemonPID(t, sock) != pid {
		t.Errorf("a second ipn daemon replaced the first")
	}

	idleSock := filepath.Join(socketDir(t), "ipn.sock")
	runIPN(t, nil, "daemon", "--socket", idleSock, "--idle-exit", "1s")
	// Its pid from its log: it may be gone already.
	log, _ = os.ReadFile(idleSock + ".log")
	m := regexp.MustCompile(`msg=serving .*pid=(\d+) .*idle_exit=1s`).FindSubmatch(log)
	if m == nil {
		t.Fatalf("the daemon of ipn daemon --idle-exit 1s logged no serving with idle_exit=1s:\n%s", log)
	}
	idlePID, _ := strconv.Atoi(string(m[1]))
	if !daemontest.WaitExit(t, idlePID, 20*time.Second) {
		syscall.Kill(idlePID, syscall.SIGKILL)
		t.Fatal("ipn daemon --idle-exit 1s still serves after 20s without clients")
	}
}
