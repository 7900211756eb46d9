package main_test

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ipn-project/ipn"
	"github.com/ipn-project/ipn/daemon"
	"github.com/ipn-project/ipn/examples/fanout/fanout"
)

const wait = 15 * time.Second

// proc is a process started by a test, with its stdout read line by line.
type proc struct {
	t     *testing.T
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
	mu    sync.Mutex
	errb  strings.Builder
	done  chan struct{}
	err   error
}

func start(t *testing.T, name string, env []string, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, name: name, lines: make(chan string, 100), done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stderr = writerFunc(func(b []byte) (int, error) {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.errb.Write(b)
	})
	var err error
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("%s stderr:\n%s", name, p.stderr())
		}
	})
	return p
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

func (p *proc) stderr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.errb.String()
}

// line returns the next stdout line, failing the test after d.
func (p *proc) line(d time.Duration) string {
	p.t.Helper()
	select {
	case l, ok := <-p.lines:
		if !ok {
			<-p.done
			p.t.Fatalf("%s exited (%v) before printing a line; stderr:\n%s", p.name, p.err, p.stderr())
		}
		return l
	case <-time.After(d):
		p.t.Fatalf("%s printed nothing in %v; stderr:\n%s", p.name, d, p.stderr())
	}
	return ""
}

// expectLines checks that the next lines are want, in order.
func (p *proc) expectLines(want ...string) {
	p.t.Helper()
	for _, w := range want {
		if got := p.line(wait); got != w {
			p.t.Fatalf("%s printed %q, want %q", p.name, got, w)
		}
	}
}

// quiet checks that p prints nothing for d.
func (p *proc) quiet(d time.Duration) {
	p.t.Helper()
	select {
	case l, ok := <-p.lines:
		if ok {
			p.t.Fatalf("%s printed %q, want nothing", p.name, l)
		}
	case <-time.After(d):
	}
}

func (p *proc) send(lines ...string) {
	p.t.Helper()
	if _, err := io.WriteString(p.stdin, strings.Join(lines, "\n")+"\n"); err != nil {
		p.t.Fatalf("%s stdin: %v", p.name, err)
	}
}

// exit waits for p to end and returns its error.
func (p *proc) exit(d time.Duration) error {
	p.t.Helper()
	select {
	case <-p.done:
		return p.err
	case <-time.After(d):
		p.t.Fatalf("%s still running after %v; stderr:\n%s", p.name, d, p.stderr())
	}
	return nil
}

// waitFor polls cond until it holds, failing the test after d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func build(t *testing.T, out, pkg string) {
	t.Helper()
	cmd := exec.Command("go", "build", "-o", out, pkg)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
}

func TestNumericProtocol(t *testing.T) {
	if p, ok := ipn.ProtocolByName("100"); !ok || p != fanout.Tag {
		t.Fatalf(`ProtocolByName("100") = %v %v`, p, ok)
	}
	for _, bad := range []string{"0", "65536", "-1", "1x"} {
		if _, ok := ipn.ProtocolByName(bad); ok {
			t.Errorf("ProtocolByName(%q) accepted", bad)
		}
	}
}

// The command serves a fanout network; ipn cat members subscribe, a source
// sends two streams, and each member gets exactly its streams.
func TestFanoutEndToEnd(t *testing.T) {
	dir := t.TempDir()
	fanoutBin, ipnBin := filepath.Join(dir, "fanout"), filepath.Join(dir, "ipn")
	build(t, fanoutBin, ".")
	build(t, ipnBin, "../../cmd/ipn")
	sock, media := filepath.Join(dir, "d.sock"), filepath.Join(dir, "media")
	env := []string{daemon.SocketEnv + "=" + sock, daemon.NoAutostartEnv + "=1"}
	t.Setenv(daemon.SocketEnv, sock) // for ipn.List in this process
	t.Setenv(daemon.NoAutostartEnv, "1")

	srv := start(t, "fanout", nil, fanoutBin, "--socket", sock, media)
	srv.expectLines("serving " + media)
	if nets, err := ipn.List(media); err != nil || len(nets) != 1 || nets[0].Tag != uint16(fanout.Tag) || nets[0].Proto != fanout.Name {
		t.Fatalf("ipn.List: %+v, %v", nets, err)
	}

	cat := func(name string, args ...string) *proc {
		// --no-rejoin: the members end with the server, below.
		return start(t, name, env, ipnBin, append(append([]string{"cat", "--no-rejoin"}, args...), media)...)
	}
	a, b, c := cat("consumer A"), cat("consumer B"), cat("consumer C")
	a.send("+audio")
	a.expectLines("subscribed audio")
	b.send("+video", "+audio")
	b.expectLines("subscribed video", "subscribed audio")
	// C subscribes to nothing, but is connected before the source sends.
	waitFor(t, wait, "three readers", func() bool {
		nets, err := ipn.List(media)
		return err == nil && len(nets) == 1 && nets[0].Readers == 3
	})

	// The source names the protocol by number: its ipn command does not
	// know the fanout policy.
	src := cat("source", "--proto", "100")
	src.send("audio:a1", "video:v1", "not a frame", "audio:a2")
	a.expectLines("audio:a1", "audio:a2") // and no video:v1 in between
	b.expectLines("audio:a1", "video:v1", "audio:a2")
	c.quiet(300 * time.Millisecond)
	a.quiet(0)
	b.quiet(0)
	src.quiet(0) // subscribed to nothing: its own frames do not come back

	// The invalid message counts as an error of the source's port, and the
	// subscriptions show in the listing.
	waitFor(t, wait, "the source's error counted", func() bool {
		nets, err := ipn.List(media)
		if err != nil || len(nets) != 1 {
			return false
		}
		var errs uint64
		for _, p := range nets[0].PortsInfo {
			errs += p.Errors
		}
		return errs == 1
	})

	// A unsubscribes from audio. Its messages are routed in order, so
	// once "+sync" is acknowledged, "-audio" has taken effect; and the
	// source's frames arrive in order, so A's next line is sync:s1.
	a.send("-audio", "+sync")
	a.expectLines("subscribed sync")
	src.send("audio:a3", "video:v2", "sync:s1")
	a.expectLines("sync:s1")
	b.expectLines("audio:a3", "video:v2")

	if err := srv.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := srv.exit(wait); err != nil {
		t.Fatalf("fanout after SIGTERM: %v", err)
	}
	for _, p := range []*proc{a, b, c, src} {
		p.stdin.Close()
		p.exit(wait) // the daemon closed their ports: they end
	}
	for _, f := range []string{media, sock} {
		if _, err := os.Lstat(f); !os.IsNotExist(err) {
			t.Errorf("%s left after SIGTERM: %v", f, err)
		}
	}
}
