// Package ctlsock is the daemon's control socket as both ends see it:
// where it is, which directories may hold it, who may serve it, and how a
// client reaches it, starting a daemon there if it is given a way to.
package ctlsock

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/internal/perm"
	"github.com/ipn-project/ipn/internal/spec"
)

// ErrNoDaemon reports that no daemon answers at the control socket, and
// none was started there.
var ErrNoDaemon = errors.New("no ipn daemon runs")

// Connect connects to the daemon that serves this process: the one at
// socket if it is not empty, else at $IPN_SOCKET if set, else the system
// daemon if it answers, else the user's own. If none answers there and
// start is not nil (and $IPN_NO_AUTOSTART is not 1), it calls start with
// the socket and dials again; otherwise it fails with an error wrapping
// ErrNoDaemon that names the socket.
//
// Before anything is sent, the daemon must prove who it is: the process on
// the other end (SO_PEERCRED) must be root or the caller's own user, and the
// user's socket directory must be the user's own and not writable by
// others; otherwise Connect fails with EACCES or EPERM and says why.
func Connect(socket string, start func(socket string) error) (*net.UnixConn, error) {
	if socket == "" {
		socket = os.Getenv(spec.SocketEnv)
	}
	if socket != "" {
		return connect(socket, false, start)
	}
	if os.Geteuid() != 0 {
		if c, err := Dial(spec.SystemSocket); err == nil {
			return c, nil
		} else if errors.Is(err, ErrNotDaemon) {
			return nil, err
		}
		return connect(spec.UserSocket(), true, start)
	}
	return connect(spec.SystemSocket, false, start)
}

// connect dials path, starting a daemon there with start (if not nil) when
// none answers. The user's own socket directory (own) must be the user's,
// and no one else's to change: else whoever answers there could be another
// user's.
func connect(path string, own bool, start func(string) error) (*net.UnixConn, error) {
	if own {
		if err := CheckDir(filepath.Dir(path), true); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
	}
	c, err := Dial(path)
	switch {
	case err == nil || errors.Is(err, ErrNotDaemon):
		return c, err
	case CheckSocket(path) != nil:
		return nil, CheckSocket(path)
	case start == nil || os.Getenv(spec.NoAutostartEnv) == "1":
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("%w (at %s)", ErrNoDaemon, path)
		}
		return nil, fmt.Errorf("ipn daemon at %s: %w", path, err)
	}
	if err := start(path); err != nil {
		return nil, err
	}
	c, err = Dial(path)
	if err != nil {
		return nil, fmt.Errorf("ipn daemon at %s: %w", path, err)
	}
	return c, nil
}

// ErrNotDaemon reports a control socket served by a process that is
// neither root nor the caller's user: not a daemon to trust.
var ErrNotDaemon = errors.New("not a daemon to trust")

// Dial connects to the control socket at path and checks who serves it.
func Dial(path string) (*net.UnixConn, error) {
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, err
	}
	pid, peer, err := peerCred(c)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("ipn daemon at %s: %w", path, err)
	}
	if me := uint32(os.Geteuid()); !Trusted(peer.UID) {
		c.Close()
		return nil, fmt.Errorf("%w: the process serving %s (pid %d) runs as uid %d, neither root nor you (uid %d); refusing to talk to it: %w",
			ErrNotDaemon, path, pid, peer.UID, me, syscall.EACCES)
	}
	return c, nil
}

// peerCred reads who serves the connected socket c.
func peerCred(c *net.UnixConn) (int32, perm.Cred, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, perm.Cred{}, err
	}
	var pid int32
	var cr perm.Cred
	var perr error
	if err := raw.Control(func(fd uintptr) { pid, cr, perr = perm.Peer(int(fd)) }); err != nil {
		return 0, perm.Cred{}, err
	}
	return pid, cr, perr
}

// ErrUnsafeDir reports a socket directory that another user could change:
// a daemon there, or files beside its socket, could be another user's.
var ErrUnsafeDir = errors.New("unsafe daemon socket directory")

// CheckDir checks that dir, a daemon socket's directory, is a directory
// (not a symbolic link) that only its owner can change, and that the owner
// is the calling user or root (the calling user alone if own).
func CheckDir(dir string, own bool) error {
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return fmt.Errorf("daemon socket directory: %w", err)
	}
	me := uint32(os.Geteuid())
	switch {
	case st.Mode&unix.S_IFMT == unix.S_IFLNK:
		return fmt.Errorf("%w: %s is a symbolic link (remove it): %w", ErrUnsafeDir, dir, syscall.EPERM)
	case st.Mode&unix.S_IFMT != unix.S_IFDIR:
		return fmt.Errorf("%w: %s is not a directory: %w", ErrUnsafeDir, dir, syscall.ENOTDIR)
	case own && st.Uid != me:
		return fmt.Errorf("%w: %s belongs to uid %d, not to you (uid %d); remove it, or set XDG_RUNTIME_DIR or %s: %w",
			ErrUnsafeDir, dir, st.Uid, me, spec.SocketEnv, syscall.EPERM)
	case !Trusted(st.Uid):
		return fmt.Errorf("%w: %s belongs to uid %d, not to you (uid %d) nor root; use a directory of your own: %w",
			ErrUnsafeDir, dir, st.Uid, me, syscall.EPERM)
	case st.Mode&0o022 != 0:
		return fmt.Errorf("%w: %s is writable by others (mode %#o), who could put their own socket there; use a directory only you can write, such as %s: %w",
			ErrUnsafeDir, dir, st.Mode&0o7777, filepath.Join(dir, fmt.Sprintf("ipn-%d", me)), syscall.EPERM)
	}
	return nil
}

// Trusted reports whether uid may serve this process: root or its own
// user. In a user namespace that does not map root (a rootless container,
// unshare -U), root and every other unmapped user look the same, the
// overflow user: it is trusted there, and the socket directory's mode is
// what keeps others out.
func Trusted(uid uint32) bool {
	if uid == 0 || uid == uint32(os.Geteuid()) {
		return true
	}
	nsOnce.Do(readUserNS)
	return inUserNS && uid == overflowUID
}

var (
	nsOnce      sync.Once
	inUserNS    bool
	overflowUID uint32 = 65534
)

// readUserNS learns whether this process is in a user namespace other
// than the first, and the kernel's overflow user.
func readUserNS() {
	if b, err := os.ReadFile("/proc/self/uid_map"); err == nil {
		f := strings.Fields(string(b))
		inUserNS = !(len(f) == 3 && f[0] == "0" && f[1] == "0" && f[2] == "4294967295")
	}
	if b, err := os.ReadFile("/proc/sys/kernel/overflowuid"); err == nil {
		if n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32); err == nil {
			overflowUID = uint32(n)
		}
	}
}

// MakeDir makes the socket directory dir if missing (mode: dirMode) and
// checks it (CheckDir).
func MakeDir(dir string) error {
	if err := os.Mkdir(dir, dirMode()); err != nil && !errors.Is(err, os.ErrExist) {
		if errors.Is(err, os.ErrNotExist) {
			if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
				return fmt.Errorf("daemon socket directory: %w", err)
			}
			return MakeDir(dir)
		}
		return fmt.Errorf("daemon socket directory: %w", err)
	}
	return CheckDir(dir, false)
}

// dirMode is the mode of a socket directory the daemon makes: open to all
// for root's system daemon, private to the user otherwise.
func dirMode() os.FileMode {
	if os.Geteuid() == 0 {
		return 0o755
	}
	return 0o700
}

// OpenBeside opens (creating) the file path beside a daemon socket, never
// through a symbolic link.
func OpenBeside(path string, flag int) (*os.File, error) {
	f, err := os.OpenFile(path, flag|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("%s is a symbolic link; refusing to open it: %w", path, err)
	}
	return f, err
}

// CheckSocket refuses a control socket path that holds something other
// than a socket (a regular file, a directory...): a daemon must not
// replace it, and none can serve there. A missing path or a socket, live
// or stale, passes.
func CheckSocket(path string) error {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil || st.Mode&unix.S_IFMT == unix.S_IFSOCK {
		return nil
	}
	return fmt.Errorf("%s is %s, not a daemon socket: refusing to touch it (remove it, or give another --socket or $%s): %w",
		path, FileKind(st.Mode), spec.SocketEnv, syscall.ENOTSOCK)
}

// FileKind names the type of a file of mode (a stat's st_mode).
func FileKind(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "a regular file"
	case unix.S_IFDIR:
		return "a directory"
	case unix.S_IFLNK:
		return "a symbolic link"
	case unix.S_IFIFO:
		return "a named pipe"
	case unix.S_IFCHR:
		return "a character device"
	case unix.S_IFBLK:
		return "a block device"
	case unix.S_IFSOCK:
		return "a socket"
	}
	return fmt.Sprintf("a file of type %#o", mode&unix.S_IFMT)
}
