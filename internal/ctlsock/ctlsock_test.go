package ctlsock

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI runs as root; this test must not skip there")
		}
		t.Skip("needs root to play another user")
	}
}

func TestCheckDir(t *testing.T) {
	needRoot(t)
	base := t.TempDir()
	mk := func(name string, mode os.FileMode, uid int) string {
		d := filepath.Join(base, name)
		os.Mkdir(d, mode)
		os.Chmod(d, mode)
		os.Chown(d, uid, uid)
		return d
	}
	link := filepath.Join(base, "link")
	os.Symlink(mk("target", 0o700, 0), link)
	for _, c := range []struct {
		dir  string
		own  bool
		want string // "" for accepted
	}{
		{mk("own", 0o700, 0), true, ""},
		{mk("shared", 0o755, 0), false, ""},
		{mk("others", 0o700, 2101), false, "belongs to uid 2101"},
		{mk("others2", 0o700, 2102), true, "belongs to uid 2102"},
		{mk("open", 0o777, 0), false, "writable by others"},
		{mk("group", 0o770, 0), true, "writable by others"},
		{link, false, "symbolic link"},
	} {
		err := CheckDir(c.dir, c.own)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", c.dir, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want) || !errors.Is(err, ErrUnsafeDir)):
			t.Errorf("%s: %v, want %q", c.dir, err, c.want)
		}
	}
}

// A control socket served by a process of another user is refused before
// anything is sent.
func TestDialChecksWhoServes(t *testing.T) {
	needRoot(t)
	py := "/usr/bin/python3" // Debian's, which every user may run
	if _, err := os.Stat(py); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("python3 is missing")
		}
		t.Skip("no python3 to play the other user's listener")
	}
	dir, err := os.MkdirTemp("", "ipn-dial-") // reachable by the other user
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o777)
	sock := filepath.Join(dir, "fake.sock")
	cmd := exec.Command(py, "-c", `
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.bind(sys.argv[1])
s.listen(8)
print("listening", flush=True)
c, _ = s.accept()
data = c.recv(4096)
print("got %d" % len(data), flush=True)
`, sock)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 2101, Gid: 2101}}
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	lines := bufio.NewScanner(out)
	if !lines.Scan() || lines.Text() != "listening" {
		t.Fatalf("listener: %q", lines.Text())
	}
	c, err := Dial(sock)
	if err == nil {
		c.Close()
		t.Fatal("dial accepted a socket served by uid 2101")
	}
	if !errors.Is(err, ErrNotDaemon) || !errors.Is(err, syscall.EACCES) || !strings.Contains(err.Error(), "runs as uid 2101") {
		t.Fatalf("dial: %v", err)
	}
	// It closed without a word: the listener read end of file.
	done := make(chan string, 1)
	go func() {
		lines.Scan()
		done <- lines.Text()
	}()
	select {
	case got := <-done:
		if got != "got 0" {
			t.Fatalf("the other user's listener received: %q", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the listener saw nothing")
	}
}
