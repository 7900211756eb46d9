package daemon

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// SocketEnv names the environment variable that sets the daemon's control
// socket, for the library and the daemon alike.
const SocketEnv = "IPN_SOCKET"

// SystemSocket is the control socket of a daemon run by root for all users.
const SystemSocket = "/run/ipn/ipn.sock"

// UserSocket returns the control socket of a daemon serving the calling
// user alone: in $XDG_RUNTIME_DIR, else in /tmp/ipn-UID.
func UserSocket() string {
	if dir := os.Getenv("XDG_RUNTIME_DIR"); dir != "" {
		return filepath.Join(dir, "ipn", "ipn.sock")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("ipn-%d", os.Geteuid()), "ipn.sock")
}

// DefaultSocket returns the control socket a daemon started by this process
// uses: $IPN_SOCKET, else SystemSocket for root, else UserSocket.
func DefaultSocket() string {
	if p := os.Getenv(SocketEnv); p != "" {
		return p
	}
	if os.Geteuid() == 0 {
		return SystemSocket
	}
	return UserSocket()
}

// ErrUnsafeDir reports a socket directory that another user could change:
// a daemon there, or files beside its socket, could be another user's.
var ErrUnsafeDir = errors.New("unsafe daemon socket directory")

// checkDir checks that dir, a daemon socket's directory, is a directory
// (not a symbolic link) that only its owner can change, and that the owner
// is the calling user or root (the calling user alone if own).
func checkDir(dir string, own bool) error {
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
			ErrUnsafeDir, dir, st.Uid, me, SocketEnv, syscall.EPERM)
	case !trusted(st.Uid):
		return fmt.Errorf("%w: %s belongs to uid %d, not to you (uid %d) nor root; use a directory of your own: %w",
			ErrUnsafeDir, dir, st.Uid, me, syscall.EPERM)
	case st.Mode&0o022 != 0:
		return fmt.Errorf("%w: %s is writable by others (mode %#o), who could put their own socket there; use a directory only you can write, such as %s: %w",
			ErrUnsafeDir, dir, st.Mode&0o7777, filepath.Join(dir, fmt.Sprintf("ipn-%d", me)), syscall.EPERM)
	}
	return nil
}

// trusted reports whether uid may serve this process: root or its own
// user. In a user namespace that does not map root (a rootless container,
// unshare -U), root and every other unmapped user look the same, the
// overflow user: it is trusted there, and the socket directory's mode is
// what keeps others out.
func trusted(uid uint32) bool {
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

// makeDir makes the socket directory dir if missing (mode: dirMode) and
// checks it (checkDir).
func makeDir(dir string) error {
	if err := os.Mkdir(dir, dirMode()); err != nil && !errors.Is(err, os.ErrExist) {
		if errors.Is(err, os.ErrNotExist) {
			if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
				return fmt.Errorf("daemon socket directory: %w", err)
			}
			return makeDir(dir)
		}
		return fmt.Errorf("daemon socket directory: %w", err)
	}
	return checkDir(dir, false)
}

// dirMode is the mode of a socket directory the daemon makes: open to all
// for root's system daemon, private to the user otherwise.
func dirMode() os.FileMode {
	if os.Geteuid() == 0 {
		return 0o755
	}
	return 0o700
}

// openBeside opens (creating) the file path beside a daemon socket, never
// through a symbolic link.
func openBeside(path string, flag int) (*os.File, error) {
	f, err := os.OpenFile(path, flag|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("%s is a symbolic link; refusing to open it: %w", path, err)
	}
	return f, err
}
