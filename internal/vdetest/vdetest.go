// Package vdetest runs Debian's VDE programs for tests: a vde_switch whose
// console the test drives, and the check that the programs are installed.
package vdetest

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// Need skips t when one of progs is missing, except under CI (the
// environment sets CI), where .ci/run installs them and t fails.
func Need(t testing.TB, progs ...string) {
	t.Helper()
	for _, p := range progs {
		if _, err := exec.LookPath(p); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is needed under CI: %v", p, err)
			}
			t.Skipf("%s not installed (Debian packages vde2, vdeplug)", p)
		}
	}
}

// ConsoleWait bounds how long a console command may take.
const ConsoleWait = 15 * time.Second

// Switch is a vde_switch in the foreground, its console on a pipe the test
// keeps open: when the pipe ends, so does the switch.
type Switch struct {
	Dir    string // its directory (-s)
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	stderr lockedBuffer
	done   chan struct{}
}

// Start runs vde_switch -s dir with args until the test ends, and returns
// once its console answers.
func Start(t testing.TB, dir string, args ...string) *Switch {
	t.Helper()
	Need(t, "vde_switch")
	sw := &Switch{Dir: dir, lines: make(chan string, 256), done: make(chan struct{})}
	sw.cmd = exec.Command("vde_switch", append([]string{"-s", dir}, args...)...)
	sw.cmd.Stderr = &sw.stderr
	sw.cmd.WaitDelay = 5 * time.Second
	var err error
	if sw.stdin, err = sw.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := sw.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := sw.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			sw.lines <- sc.Text()
		}
		close(sw.lines)
		sw.cmd.Wait()
		close(sw.done)
	}()
	t.Cleanup(sw.Kill)
	// The console answers once the switch serves its ctl socket. (Not a
	// test connection: vde_switch 2.3.2 never frees a port whose data
	// socket gets a lower fd than its control connection, which a
	// connection closed just before makes happen.)
	sw.Console(t, "showinfo")
	return sw
}

// Console runs a command on the switch's console and returns its output.
func (sw *Switch) Console(t testing.TB, cmd string) []string {
	t.Helper()
	fmt.Fprintln(sw.stdin, cmd)
	var out []string
	timeout := time.After(ConsoleWait)
	for {
		select {
		case l, ok := <-sw.lines:
			if !ok {
				t.Fatalf("vde_switch -s %s exited: %v\n%s", sw.Dir, sw.cmd.ProcessState, sw.stderr.String())
			}
			if len(l) >= 5 && l[4] == ' ' && l[0] >= '1' && l[0] <= '9' {
				if !strings.HasPrefix(l, "1000 ") {
					t.Fatalf("vde_switch console %q: %s", cmd, l)
				}
				return out
			}
			out = append(out, l)
		case <-timeout:
			t.Fatalf("vde_switch console %q: no answer in %v; stderr:\n%s", cmd, ConsoleWait, sw.stderr.String())
		}
	}
}

// Endpoints returns the switch's connected clients, one line each.
func (sw *Switch) Endpoints(t testing.TB) []string {
	t.Helper()
	var l []string
	for _, line := range sw.Console(t, "port/allprint") {
		if strings.Contains(line, "-- endpoint ID") {
			l = append(l, strings.TrimSpace(line))
		}
	}
	return l
}

// WaitEndpoints waits until the switch has n clients.
func (sw *Switch) WaitEndpoints(t testing.TB, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		l := sw.Endpoints(t)
		if len(l) == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("vde_switch %s: %d clients after 30s, want %d: %q", sw.Dir, len(l), n, l)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Kill ends the switch with SIGKILL, as a crash would (its files stay), and
// waits for it.
func (sw *Switch) Kill() {
	sw.cmd.Process.Kill()
	<-sw.done
	sw.stdin.Close()
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
