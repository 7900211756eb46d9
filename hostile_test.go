package ipn_test

// The hostile-user suite: a root daemon shared by real users (made with
// useradd for the run), one of whom, mallory, attacks it the ways
// docs/security.md lists, while alice, a legitimate user, must go on
// joining and receiving. Each attack is played for real, races bounded in
// time, and must fail.

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	osuser "os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn"
	"github.com/ipn-project/ipn/internal/wire"
)

// testUser is a real user of this machine, made for the run.
type testUser struct {
	name     string
	uid, gid uint32
}

// cred runs a process as the user, with its own group only.
func (u testUser) cred() *syscall.Credential {
	return &syscall.Credential{Uid: u.uid, Gid: u.gid, Groups: []uint32{}}
}

var (
	usersOnce    sync.Once
	usersErr     error
	alice, mally testUser
	addedUsers   []string // removed at the end of the run
)

// realUsers returns alice (a legitimate user) and mallory (the attacker),
// real users of the machine, made with useradd on first use.
func realUsers(t *testing.T) (testUser, testUser) {
	t.Helper()
	requireRoot(t)
	usersOnce.Do(func() {
		if alice, usersErr = addUser("ipnt-alice"); usersErr == nil {
			mally, usersErr = addUser("ipnt-mallory")
		}
	})
	if usersErr != nil {
		t.Fatal(usersErr)
	}
	return alice, mally
}

func addUser(name string) (testUser, error) {
	if _, err := osuser.Lookup(name); err != nil {
		out, err := exec.Command("useradd", "--system", "--user-group", "--no-create-home",
			"--shell", "/usr/sbin/nologin", name).CombinedOutput()
		if err != nil {
			return testUser{}, fmt.Errorf("useradd %s: %v: %s", name, err, out)
		}
		addedUsers = append(addedUsers, name)
	}
	u, err := osuser.Lookup(name)
	if err != nil {
		return testUser{}, err
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return testUser{name: name, uid: uint32(uid), gid: uint32(gid)}, nil
}

// removeUsers deletes the users the run made.
func removeUsers() {
	for _, name := range addedUsers {
		exec.Command("userdel", name).Run()
	}
}

// shortDir returns a fresh directory with a short path (socket addresses
// hold 107 bytes), in which every user may make files, as in /tmp.
func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp(testDir, "s")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(d, 0o777|os.ModeSticky)
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// userDir makes a directory of u's with mode.
func userDir(t *testing.T, u testUser, mode os.FileMode) string {
	t.Helper()
	d := filepath.Join(shortDir(t), u.name[len("ipnt-"):])
	if err := os.Mkdir(d, mode); err != nil {
		t.Fatal(err)
	}
	os.Chmod(d, mode)
	if err := os.Chown(d, int(u.uid), int(u.gid)); err != nil {
		t.Fatal(err)
	}
	return d
}

// legit checks that alice still joins a network of hers on the daemon at
// sock ("" for the tests' own) and receives what she sends to it.
func legit(t *testing.T, a testUser, sock string) {
	t.Helper()
	var env []string
	if sock != "" {
		env = []string{"IPN_SOCKET=" + sock}
	}
	dir := userDir(t, a, 0o700)
	h := start(t, a.cred(), append(env, helperEnv+"=legit"), helperBin, filepath.Join(dir, "own"))
	if got := h.line(waitProcs); got != "legit ok" {
		t.Fatalf("alice, after the attack: %q; stderr: %s", got, h.stderr())
	}
}

// helpLegit joins a network at path twice and checks that a message sent
// on one arrives on the other.
func helpLegit(path string) error {
	a, err := ipn.Join(path, ipn.Hub)
	if err != nil {
		return err
	}
	defer a.Close()
	b, err := join(path, 0)
	if err != nil {
		return err
	}
	defer b.Close()
	if err := a.Send([]byte("ping")); err != nil {
		return err
	}
	b.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 64)
	n, _, err := b.Recv(buf)
	if err != nil {
		return err
	}
	if string(buf[:n]) != "ping" {
		return fmt.Errorf("got %q", buf[:n])
	}
	fmt.Println("legit ok")
	return nil
}

// helpConns opens up to n raw control connections to the daemon at sock,
// each saying hello, until one is refused; it prints how many it holds and
// the refusal, and holds them until stdin closes.
func helpConns(sock string, n int) error {
	var held []*net.UnixConn
	refused := ""
	for range n {
		c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: sock, Net: "unixpacket"})
		if err != nil {
			refused = "dial: " + err.Error()
			break
		}
		c.SetDeadline(time.Now().Add(2 * time.Second))
		err = wire.Send(c, wire.Packet(wire.OpHello, []byte{byte(wire.Version), byte(wire.Version >> 8), 0, 0}))
		var pkt []byte
		if err == nil {
			pkt, _, err = wire.Recv(c, make([]byte, 2048))
		}
		if err == nil {
			var body []byte
			if _, body, err = wire.Split(pkt); err == nil {
				_, err = wire.SplitReply(body)
			}
		}
		if err != nil {
			c.Close()
			refused = err.Error()
			break
		}
		c.SetDeadline(time.Time{})
		held = append(held, c)
	}
	fmt.Printf("held %d\n", len(held))
	fmt.Printf("refused %s\n", refused)
	waitStdin()
	for _, c := range held {
		c.Close()
	}
	return nil
}

// waitStdin returns when stdin closes.
func waitStdin() {
	buf := make([]byte, 64)
	for {
		if _, err := os.Stdin.Read(buf); err != nil {
			return
		}
	}
}

// errnoOf returns the name of the errno in err.
func errnoOf(err error) string {
	var e syscall.Errno
	if errors.As(err, &e) {
		return unix.ErrnoName(e)
	}
	return fmt.Sprint(err)
}

// run is a command's combined output and whether it failed.
func runAs(t *testing.T, u *testUser, env []string, name string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	if u != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: u.cred()}
	}
	done := make(chan struct{})
	var out []byte
	var err error
	go func() {
		out, err = cmd.CombinedOutput()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("%s %s: still running after 30s: %s", name, strings.Join(args, " "), out)
	}
	return string(out), err
}
