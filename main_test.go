package ipn_test

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	// Helper processes are this test binary: it must be able to start as
	// a daemon too (TestAutostartRaceAndSIGTERM).
	_ "github.com/ipn-project/ipn/daemon/autostart"
	"github.com/ipn-project/ipn/internal/daemontest"
)

// The package's tests share one daemon, served from this test process, on a
// socket in testDir (mode 0755 so that helpers running as other users reach
// it). Helper processes are this test binary again, copied to testDir.
var (
	testDir   string
	helperBin string
	socket    string
)

const helperEnv = "IPN_TEST_HELPER"

func TestMain(m *testing.M) {
	if name := os.Getenv(helperEnv); name != "" {
		os.Exit(runHelper(name, os.Args[1:]))
	}
	os.Exit(run(m))
}

func run(m *testing.M) int {
	var err error
	if testDir, err = os.MkdirTemp("", "ipn-test-"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(testDir)
	os.Chmod(testDir, 0o755)
	self, _ := os.Executable()
	helperBin = filepath.Join(testDir, "helper.test")
	if err := copyFile(self, helperBin, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	socket = filepath.Join(testDir, "daemon.sock")
	stop, err := daemontest.Serve(socket)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	code := m.Run()
	removeUsers()
	if err := stop(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return code
}

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
