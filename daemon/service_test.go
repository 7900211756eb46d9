package daemon_test

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ipn-project/ipn/daemon"
	"github.com/ipn-project/ipn/internal/daemontest"
)

// TestMain lets this test binary be the daemon daemon.Start and
// daemon.StartService re-execute, as daemon/autostart lets a program.
func TestMain(m *testing.M) {
	daemon.RunIfChild()
	os.Exit(m.Run())
}

// stopDaemon stops the daemon pid at the end of t.
func stopDaemon(t *testing.T, pid int) {
	t.Cleanup(func() {
		syscall.Kill(pid, syscall.SIGTERM)
		if !daemontest.WaitExit(t, pid, 10*time.Second) {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Errorf("daemon %d did not exit on SIGTERM", pid)
		}
	})
}

// procArgs returns the argument vector and the name (comm) of process pid.
func procArgs(t *testing.T, pid int) ([]string, string) {
	t.Helper()
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	comm, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(string(cmdline), "\x00"), "\x00"), strings.TrimSpace(string(comm))
}

// servingLine returns the daemon log's line that says it serves.
func servingLine(t *testing.T, sock string) string {
	t.Helper()
	log, err := os.ReadFile(sock + ".log")
	if err != nil {
		t.Fatal(err)
	}
	l := regexp.MustCompile(`(?m)^.*msg=serving .*$`).FindString(string(log))
	if l == "" {
		t.Fatalf("no serving line in the daemon's log:\n%s", log)
	}
	return l
}

// A daemon the library starts for a program (this test binary) shows in
// ps as ipn daemon, named ipn, and keeps its idle exit.
func TestAutostartedDaemonIsNamedIPN(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "run", "ipn.sock")
	if err := daemon.Start(sock); err != nil {
		t.Fatal(err)
	}
	pid := daemontest.DaemonPID(t, sock)
	stopDaemon(t, pid)
	args, comm := procArgs(t, pid)
	want := []string{"ipn", "daemon", "--socket", sock, "--idle-exit", daemon.AutoIdleExit.String()}
	if strings.Join(args, " ") != strings.Join(want, " ") {
		t.Errorf("/proc/%d/cmdline: %q, want %q", pid, args, want)
	}
	if comm != "ipn" {
		t.Errorf("/proc/%d/comm: %q, want ipn", pid, comm)
	}
	if l := servingLine(t, sock); !strings.Contains(l, "idle_exit="+daemon.AutoIdleExit.String()) {
		t.Errorf("the library's daemon serves with no idle exit: %s", l)
	}
	// A second start finds it running and starts nothing.
	if err := daemon.Start(sock); err != nil {
		t.Fatal(err)
	}
	if p := daemontest.DaemonPID(t, sock); p != pid {
		t.Errorf("a second Start replaced daemon %d with %d", pid, p)
	}
}

// A daemon of StartService (ipn daemon without -f) serves until stopped,
// with the options it was given, and is named as the library's is; a
// second one on the same socket is refused.
func TestStartServiceServesUntilStopped(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "run", "ipn.sock")
	if err := daemon.StartService(daemon.Config{Socket: sock, HelloTimeout: 200 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	pid := daemontest.DaemonPID(t, sock)
	stopDaemon(t, pid)
	args, comm := procArgs(t, pid)
	if want := []string{"ipn", "daemon", "--socket", sock}; strings.Join(args, " ") != strings.Join(want, " ") {
		t.Errorf("/proc/%d/cmdline: %q, want %q", pid, args, want)
	}
	if comm != "ipn" {
		t.Errorf("/proc/%d/comm: %q, want ipn", pid, comm)
	}
	if l := servingLine(t, sock); !strings.Contains(l, "idle_exit=never") {
		t.Errorf("the service's daemon has an idle exit: %s", l)
	}
	// HelloTimeout reached the daemon: a silent connection is dropped
	// after it, not after the default 10 s.
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: sock, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(daemon.DefaultHelloTimeout / 2))
	if _, err := c.Read(make([]byte, 64)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("a silent connection: read %v, want it closed after the 200ms hello timeout", err)
	}
	err = daemon.StartService(daemon.Config{Socket: sock})
	if !errors.Is(err, daemon.ErrRunning) || !strings.Contains(err.Error(), "--takeover") {
		t.Errorf("a second service on %s: %v, want ErrRunning naming --takeover", sock, err)
	}
}

// StartService's IdleExit reaches the daemon: asked, it exits when idle.
func TestStartServiceIdleExitWhenAsked(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "run", "ipn.sock")
	if err := daemon.StartService(daemon.Config{Socket: sock, IdleExit: time.Second}); err != nil {
		t.Fatal(err)
	}
	// Its pid from its log: it may be gone already.
	m := regexp.MustCompile(`pid=(\d+) .*idle_exit=1s`).FindStringSubmatch(servingLine(t, sock))
	if m == nil {
		t.Fatalf("the daemon does not serve with idle_exit=1s: %s", servingLine(t, sock))
	}
	pid, _ := strconv.Atoi(m[1])
	if !daemontest.WaitExit(t, pid, 20*time.Second) {
		syscall.Kill(pid, syscall.SIGKILL)
		t.Fatal("the daemon asked to exit after 1s idle still runs after 20s")
	}
}
