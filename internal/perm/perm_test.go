package perm

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// openDir returns a new directory every user may search.
func openDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ipn-perm-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI runs as root; this test must not skip there")
		}
		t.Skip("needs root to take other users' credentials")
	}
}

var sockN int

// sockFile makes a socket file (as a network file is) with owner uid:gid
// and mode, and returns an O_PATH descriptor of it.
func sockFile(t *testing.T, dir string, uid, gid uint32, mode uint32) (string, int) {
	t.Helper()
	sockN++
	p := filepath.Join(dir, "net"+strconv.Itoa(sockN))
	if err := unix.Mknod(p, unix.S_IFSOCK|0o600, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(p, int(uid), int(gid)); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, os.FileMode(mode)); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(p, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return p, fd
}

func TestOfIsTheKernelsDecision(t *testing.T) {
	needRoot(t)
	dir := openDir(t)
	for _, c := range []struct {
		name string
		mode uint32
		cred Cred
		want string
	}{
		{"owner", 0o700, Cred{UID: 2101, GID: 2101}, "rwx"},
		{"owner bits only", 0o077, Cred{UID: 2101, GID: 2200}, "---"},
		{"group", 0o750, Cred{UID: 2102, GID: 2200}, "r-x"},
		{"supplementary group", 0o740, Cred{UID: 2102, GID: 2300, Groups: []uint32{5, 2200}}, "r--"},
		{"not in group", 0o740, Cred{UID: 2102, GID: 2300}, "---"},
		{"other", 0o702, Cred{UID: 2102, GID: 2300}, "-w-"},
		{"root", 0o000, Cred{}, "rw-"},
		{"root x", 0o001, Cred{}, "rwx"},
	} {
		_, fd := sockFile(t, dir, 2101, 2200, c.mode)
		r, err := Of(fd, c.cred)
		if err != nil || r.String() != c.want {
			t.Errorf("%s (mode %#o): %v %v, want %s", c.name, c.mode, r, err, c.want)
		}
	}
}

func TestOfHonoursACLs(t *testing.T) {
	needRoot(t)
	setfacl, err := exec.LookPath("setfacl")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("setfacl (Debian's acl) is missing")
		}
		t.Skip("no setfacl")
	}
	dir := openDir(t)
	p, fd := sockFile(t, dir, 2101, 2200, 0o777)
	if out, err := exec.Command(setfacl, "-m", "u:2102:---,u:2103:r--", p).CombinedOutput(); err != nil {
		t.Skipf("setfacl on %s: %v %s (no ACLs on this file system)", dir, err, out)
	}
	for uid, want := range map[uint32]string{2102: "---", 2103: "r--", 2104: "rwx"} {
		r, err := Of(fd, Cred{UID: uid, GID: 2300})
		if err != nil || r.String() != want {
			t.Errorf("uid %d: %v %v, want %s", uid, r, err, want)
		}
	}
}

func TestOpenResolvesAsTheUser(t *testing.T) {
	needRoot(t)
	dir := openDir(t)
	private := filepath.Join(dir, "private")
	os.Mkdir(private, 0o700)
	os.Chown(private, 2101, 2101)
	p, _ := sockFile(t, private, 2101, 2101, 0o777)
	if fd, err := Open(Cred{UID: 2101, GID: 2101}, p, unix.O_PATH); err != nil {
		t.Errorf("the owner of the directory: %v", err)
	} else {
		unix.Close(fd)
	}
	if _, err := Open(Cred{UID: 2102, GID: 2102}, p, unix.O_PATH); !errors.Is(err, syscall.EACCES) {
		t.Errorf("another user through a directory it cannot search: %v, want EACCES", err)
	}
	if _, err := Stat(Cred{UID: 2102, GID: 2102}, p); !errors.Is(err, syscall.EACCES) {
		t.Errorf("stat by another user: %v, want EACCES", err)
	}
	// A symlink the other user may follow leads no further than the user
	// could go.
	link := filepath.Join(dir, "link")
	os.Symlink(p, link)
	if _, err := Open(Cred{UID: 2102, GID: 2102}, link, unix.O_PATH); !errors.Is(err, syscall.EACCES) {
		t.Errorf("through a symlink: %v, want EACCES", err)
	}
}

// The process's other threads keep root's rights while a check runs as a
// user, and the credentials are back after it.
func TestAsLeavesTheProcessAlone(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	if err := os.WriteFile(secret, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	failures := make(chan error, 1)
	wg.Add(1)
	go func() { // root's reads, on whatever threads run them meanwhile
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := os.ReadFile(secret); err != nil {
				select {
				case failures <- err:
				default:
				}
				return
			}
		}
	}()
	for range 200 {
		err := As(Cred{UID: 2102, GID: 2102}, func() error {
			_, err := os.ReadFile(secret)
			return err
		})
		if !errors.Is(err, os.ErrPermission) {
			t.Fatalf("as uid 2102: %v, want permission denied", err)
		}
	}
	close(stop)
	wg.Wait()
	select {
	case err := <-failures:
		t.Fatalf("root's own read failed while checks ran as a user: %v", err)
	default:
	}
	if _, err := os.ReadFile(secret); err != nil {
		t.Fatalf("after the checks: %v", err)
	}
}
