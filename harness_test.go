package ipn_test

// The root package's test harness, in one place: processes the tests start
// and watch, temporary directories, the ipn command built once, networks
// and members, frames, exit statuses, daemons of the tests' own.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ipn-project/ipn"
)

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// tempDir returns a fresh directory under testDir, reachable by every user.
func tempDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp(testDir, strings.ReplaceAll(t.Name(), "/", "_"))
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(d, 0o777|os.ModeSticky)
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

var (
	buildOnce sync.Once
	ipnBin    string
	buildErr  error
)

// ipnCommand returns the path of the ipn command, built once.
func ipnCommand(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		ipnBin = filepath.Join(testDir, "ipn")
		out, err := exec.Command("go", "build", "-o", ipnBin, "./cmd/ipn").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build ./cmd/ipn: %v\n%s", err, out)
		}
		os.Chmod(ipnBin, 0o755)
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return ipnBin
}

// proc is a process started by a test, with its stdout read line by line.
type proc struct {
	t     testing.TB
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
	errb  *strings.Builder
	mu    sync.Mutex
	done  chan struct{}
	err   error
}

// start runs a process; cred, if not nil, sets the user it runs as.
func start(t testing.TB, cred *syscall.Credential, env []string, name string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	// A process group of its own: cleanup kills what it started too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setpgid: true}
	p := &proc{t: t, cmd: cmd, lines: make(chan string, 1024), errb: &strings.Builder{}, done: make(chan struct{})}
	var err error
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = lockedWriter{&p.mu, p.errb}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<16), 1<<20)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	})
	return p
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *strings.Builder
}

func (w lockedWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(b)
}

// stderr returns what the process wrote to stderr so far.
func (p *proc) stderr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.errb.String()
}

// helper runs this test binary as helper name.
func helper(t testing.TB, cred *syscall.Credential, name string, args ...string) *proc {
	t.Helper()
	return start(t, cred, []string{helperEnv + "=" + name}, helperBin, args...)
}

// line returns the next stdout line, failing the test after d.
func (p *proc) line(d time.Duration) string {
	p.t.Helper()
	select {
	case l, ok := <-p.lines:
		if !ok {
			<-p.done
			p.t.Fatalf("%s exited (%v) before printing a line; stderr:\n%s", p.cmd.Path, p.err, p.stderr())
		}
		return l
	case <-time.After(d):
		p.t.Fatalf("%s printed nothing in %v; stderr:\n%s", p.cmd.Path, d, p.stderr())
	}
	return ""
}

// expect reads lines until one starts with prefix and returns it.
func (p *proc) expect(prefix string, d time.Duration) string {
	p.t.Helper()
	deadline := time.Now().Add(d)
	for {
		l := p.line(time.Until(deadline))
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
}

// wait waits for the process to exit and returns its error.
func (p *proc) wait(d time.Duration) error {
	p.t.Helper()
	select {
	case <-p.done:
		return p.err
	case <-time.After(d):
		p.t.Fatalf("%s still running after %v; stderr:\n%s", p.cmd.Path, d, p.stderr())
	}
	return nil
}

// waitFor polls cond until it holds, failing the test after d.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// bindNet creates a network at a fresh path with the options set by opts
// and returns the path and the bound, connected socket.
func bindNet(t *testing.T, opts func(*ipn.Socket)) (string, *ipn.Socket) {
	t.Helper()
	path := filepath.Join(tempDir(t), "net")
	return path, bindAt(t, ipn.Hub, path, opts, true)
}

// bindNetAt creates a hub network at path and returns it with the bound,
// connected socket.
func bindNetAt(t *testing.T, path string) (string, *ipn.Socket) {
	t.Helper()
	return path, bindAt(t, ipn.Hub, path, nil, true)
}

// bindAt binds a network of protocol proto at path, with the options set
// by opts, for as long as the test runs, and connects to it if join.
func bindAt(t testing.TB, proto ipn.Protocol, path string, opts func(*ipn.Socket), join bool) *ipn.Socket {
	t.Helper()
	return bindVia(t, ipn.DefaultDialer, proto, path, opts, join)
}

// bindVia is bindAt through the daemon dial reaches.
func bindVia(t testing.TB, dial *ipn.Dialer, proto ipn.Protocol, path string, opts func(*ipn.Socket), join bool) *ipn.Socket {
	t.Helper()
	s, err := dial.NewSocket(proto)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if opts != nil {
		opts(s)
	}
	if err := s.Bind(path); err != nil {
		t.Fatal(err)
	}
	if join {
		if err := s.Connect(""); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// member connects a new socket to path, applying opts before Connect.
func member(t testing.TB, path string, opts func(*ipn.Socket)) *ipn.Socket {
	t.Helper()
	return memberVia(t, ipn.DefaultDialer, path, opts)
}

// memberVia is member through the daemon dial reaches.
func memberVia(t testing.TB, dial *ipn.Dialer, path string, opts func(*ipn.Socket)) *ipn.Socket {
	t.Helper()
	s, err := dial.NewSocket(ipn.Any)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if opts != nil {
		opts(s)
	}
	if err := s.Connect(path); err != nil {
		t.Fatal(err)
	}
	return s
}

func recvString(t *testing.T, s *ipn.Socket) string {
	t.Helper()
	s.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 65536)
	n, flags, err := s.Recv(buf)
	if err != nil {
		t.Fatalf("recv: %v", err)
	}
	if flags&ipn.MsgOOB != 0 {
		t.Fatalf("unexpected OOB message %x", buf[:n])
	}
	return string(buf[:n])
}

// expectNothing checks that no message is waiting for s.
func expectNothing(t *testing.T, s *ipn.Socket) {
	t.Helper()
	s.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	buf := make([]byte, 2048)
	n, _, err := s.Recv(buf)
	if err == nil {
		t.Fatalf("unexpected message %q", buf[:n])
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("recv: %v, want deadline exceeded", err)
	}
}

// readersOf returns the number of readers and ports of the network at path.
func readersOf(path string) (readers, ports int) {
	nets, err := ipn.List(path)
	if err != nil || len(nets) != 1 {
		return -1, -1
	}
	return nets[0].Readers, len(nets[0].PortsInfo)
}

// exited reports whether process pid has ended (a zombie waiting for its
// reaper counts: it has exited).
func exited(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// The state follows the command name, which is in parentheses.
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] == 'Z'
}

func drain(p *proc) []string {
	var lines []string
	for l := range p.lines {
		lines = append(lines, l)
	}
	return lines
}

var bcast = []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

func macOf(b byte) []byte { return []byte{0x02, 0, 0, 0, 0, b} }

func ethFrame(dst, src []byte, payload string) []byte {
	f := append(append(append([]byte{}, dst...), src...), 0x08, 0x00)
	return append(f, payload...)
}

func ethTagged(dst, src []byte, vlan uint16, payload string) []byte {
	f := append(append(append([]byte{}, dst...), src...), 0x81, 0x00, byte(vlan>>8), byte(vlan), 0x08, 0x00)
	return append(f, payload...)
}

// copies counts the frames carrying payload that s receives within window.
func copies(s *ipn.Socket, payload string, window time.Duration) int {
	n := 0
	buf := make([]byte, 65536)
	s.SetReadDeadline(time.Now().Add(window))
	for {
		m, _, err := s.Recv(buf)
		if err != nil {
			return n
		}
		if bytes.HasSuffix(buf[:m], []byte(payload)) {
			n++
		}
	}
}

// exitStatus returns the exit status of a process that ended with err.
func exitStatus(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

// stopBy sends sig to p and waits for it to exit; it reports an error
// unless p exited as an interrupted command does, with 128 + sig.
func stopBy(t *testing.T, p *proc, sig syscall.Signal) error {
	t.Helper()
	p.cmd.Process.Signal(sig)
	err := p.wait(15 * time.Second)
	if got := exitStatus(err); got != 128+int(sig) {
		return fmt.Errorf("exit status %d (%v), want %d", got, err, 128+int(sig))
	}
	return nil
}

// userDaemon runs, as the user cred, that user's own daemon, its socket in
// a home directory of the user's; it returns the home directory, the
// environment that points a process at the daemon, and the daemon.
func userDaemon(t *testing.T, cred *syscall.Credential) (home string, env []string, d *proc) {
	t.Helper()
	dir := tempDir(t)
	home = filepath.Join(dir, "home")
	os.Mkdir(home, 0o755)
	os.Chown(home, int(cred.Uid), int(cred.Gid))
	sock := filepath.Join(home, "run", "ipn.sock")
	env = []string{"IPN_SOCKET=" + sock}
	d = start(t, cred, env, ipnCommand(t), "daemon", "--foreground")
	waitFor(t, 15*time.Second, "user daemon", func() bool { _, err := os.Stat(sock); return err == nil })
	return home, env, d
}

// ownDaemon runs a daemon of the test's own, as root, with extra
// arguments, and returns its socket.
func ownDaemon(t *testing.T, args ...string) (string, *proc) {
	t.Helper()
	sock := filepath.Join(tempDir(t), "daemon", "ipn.sock")
	return sock, daemonAt(t, sock, args...)
}

// daemonAt runs "ipn daemon -f" as a process of its own (one a test can
// kill or stop) on the control socket sock, with extra arguments, and
// returns once it answers.
func daemonAt(t *testing.T, sock string, args ...string) *proc {
	t.Helper()
	d := start(t, nil, nil, ipnCommand(t), append([]string{"daemon", "-f", "--socket", sock}, args...)...)
	waitFor(t, 15*time.Second, "the daemon at "+sock, func() bool {
		select {
		case <-d.done:
			t.Fatalf("daemon exited: %v: %s", d.err, d.stderr())
		default:
		}
		return sockReady(sock)
	})
	return d
}

// sockReady reports whether a daemon answers at sock.
func sockReady(sock string) bool {
	c, err := net.Dial("unixpacket", sock)
	if err == nil {
		c.Close()
	}
	return err == nil
}
