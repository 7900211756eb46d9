package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// NoAutostartEnv names the environment variable that, set to 1, stops the
// library from starting a daemon when none is running.
const NoAutostartEnv = "IPN_NO_AUTOSTART"

// childEnv marks the process the library re-executes as a daemon.
const childEnv = "IPN_DAEMON_CHILD"

// AutoIdleExit is how long a daemon started by the library lives without
// clients.
const AutoIdleExit = 30 * time.Second

// startTimeout bounds the wait for a daemon being started.
const startTimeout = 10 * time.Second

// Dial connects to the daemon that serves this process: the one at
// $IPN_SOCKET if set, else the system daemon if it answers, else the
// user's. If none answers, it starts one (unless $IPN_NO_AUTOSTART=1) by
// re-executing the current program, so any program using the library works
// on a machine where nothing was set up; racing callers start only one.
//
// Before anything is sent, the daemon must prove who it is: the process on
// the other end (SO_PEERCRED) must be root or the caller's own user, and the
// user's socket directory must be the user's own and not writable by
// others; otherwise Dial fails with EACCES or EPERM and says why.
func Dial() (*net.UnixConn, error) { return dialDaemon(dialOrStart) }

// DialRunning is Dial for a call that only reads what a daemon serves (a
// listing, a table): it never starts a daemon, since a new one would serve
// nothing. When none answers, it fails with an error wrapping
// ErrNoDaemon that names the socket.
func DialRunning() (*net.UnixConn, error) { return dialDaemon(dialRunning) }

// ErrNoDaemon reports that no daemon answers at the control socket, which
// DialRunning does not start.
var ErrNoDaemon = errors.New("no ipn daemon runs")

// dialDaemon finds the control socket as Dial says and connects with at,
// passing whether the socket is in the user's own directory.
func dialDaemon(at func(path string, own bool) (*net.UnixConn, error)) (*net.UnixConn, error) {
	if p := os.Getenv(SocketEnv); p != "" {
		return at(p, false)
	}
	if os.Geteuid() != 0 {
		if c, err := dial(SystemSocket); err == nil {
			return c, nil
		} else if errors.Is(err, ErrNotDaemon) {
			return nil, err
		}
		return at(UserSocket(), true)
	}
	return at(SystemSocket, false)
}

// dialRunning dials path, as dialOrStart does, but starts no daemon.
func dialRunning(path string, own bool) (*net.UnixConn, error) {
	if own {
		if err := checkDir(filepath.Dir(path), true); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
	}
	c, err := dial(path)
	switch {
	case err == nil || errors.Is(err, ErrNotDaemon):
		return c, err
	case CheckSocket(path) != nil:
		return nil, CheckSocket(path)
	case errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED):
		return nil, fmt.Errorf("%w (at %s)", ErrNoDaemon, path)
	}
	return nil, fmt.Errorf("ipn daemon at %s: %w", path, err)
}

// ErrNotDaemon reports a control socket served by a process that is
// neither root nor the caller's user: not a daemon to trust.
var ErrNotDaemon = errors.New("not a daemon to trust")

// dial connects to the control socket at path and checks who serves it.
func dial(path string) (*net.UnixConn, error) {
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, err
	}
	peer, err := peerCred(c)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("ipn daemon at %s: %w", path, err)
	}
	if me := uint32(os.Geteuid()); !trusted(peer.UID) {
		c.Close()
		return nil, fmt.Errorf("%w: the process serving %s (pid %d) runs as uid %d, neither root nor you (uid %d); refusing to talk to it: %w",
			ErrNotDaemon, path, peer.pid, peer.UID, me, syscall.EACCES)
	}
	return c, nil
}

// dialOrStart dials path, starting a daemon there if none answers. The
// user's own socket directory (own) must be the user's, and no one else's
// to change: else whoever answers there could be another user's.
func dialOrStart(path string, own bool) (*net.UnixConn, error) {
	if own {
		if err := checkDir(filepath.Dir(path), true); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
	}
	c, err := dial(path)
	if err == nil || errors.Is(err, ErrNotDaemon) {
		return c, err
	}
	if err := CheckSocket(path); err != nil {
		return nil, err
	}
	if os.Getenv(NoAutostartEnv) == "1" {
		return nil, fmt.Errorf("ipn daemon at %s: %w", path, err)
	}
	if err := start(path); err != nil {
		return nil, err
	}
	c, err = dial(path)
	if err != nil {
		return nil, fmt.Errorf("ipn daemon at %s: %w", path, err)
	}
	return c, nil
}

// Start starts a daemon in the background on socket (DefaultSocket() if
// empty), as the library does when none answers, and returns once it
// serves. It does nothing if one already answers there.
func Start(socket string) error {
	if socket == "" {
		socket = DefaultSocket()
	}
	return start(socket)
}

// start runs a daemon on socket and waits until it serves. A lock makes
// racing starters take turns; the later ones find the daemon running.
func start(socket string) error {
	if err := CheckSocket(socket); err != nil {
		return fmt.Errorf("start ipn daemon: %w", err)
	}
	if err := makeDir(filepath.Dir(socket)); err != nil {
		return fmt.Errorf("start ipn daemon: %w", err)
	}
	lock, err := openBeside(socket+".start", os.O_RDWR)
	if err != nil {
		return fmt.Errorf("start ipn daemon: %w", err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("start ipn daemon: lock: %w", err)
	}
	if c, err := dial(socket); err == nil {
		c.Close()
		return nil
	} else if errors.Is(err, ErrNotDaemon) {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("start ipn daemon: %w", err)
	}
	logPath := socket + ".log"
	logf, err := openBeside(logPath, os.O_WRONLY|os.O_APPEND)
	if err != nil {
		return fmt.Errorf("start ipn daemon: %w", err)
	}
	defer logf.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("start ipn daemon: %w", err)
	}
	defer r.Close()
	// The child starts the daemon as its own child and exits, so the
	// daemon is adopted by init and this process leaves no zombie.
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), childEnv+"=1", SocketEnv+"="+socket)
	cmd.Stderr = logf
	cmd.ExtraFiles = []*os.File{w}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Run()
	w.Close()
	if err != nil {
		return fmt.Errorf("start ipn daemon: %w", err)
	}
	r.SetReadDeadline(time.Now().Add(startTimeout))
	var b [1]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return fmt.Errorf("start ipn daemon: it did not come up (%v); see %s%s", err, logPath, lastLine(logPath))
	}
	return nil
}

// lastLine returns ": " and the last line of the file at path, or "".
func lastLine(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if l := lines[len(lines)-1]; l != "" {
		return ": " + l
	}
	return ""
}

// RunIfChild turns the process into a daemon if the library re-executed it
// to be one, and then exits; otherwise it returns at once. The ipn package
// calls it from its init.
func RunIfChild() {
	switch os.Getenv(childEnv) {
	case "1":
		// Stage one: start the daemon itself, detached, and go.
		exe, err := os.Executable()
		if err == nil {
			cmd := exec.Command(exe)
			cmd.Env = append(os.Environ(), childEnv+"=2")
			cmd.Stderr = os.Stderr
			cmd.ExtraFiles = []*os.File{os.NewFile(3, "ready")}
			err = cmd.Start()
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "ipn daemon:", err)
			os.Exit(1)
		}
		os.Exit(0)
	case "2":
		os.Unsetenv(childEnv)
		ready := os.NewFile(3, "ready")
		log := slog.New(slog.NewTextHandler(os.Stderr, nil))
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		err := Serve(ctx, Config{
			IdleExit: AutoIdleExit,
			Logger:   log,
			Ready: func() {
				ready.Write([]byte{1})
				ready.Close()
			},
		})
		stop()
		if err != nil && !errors.Is(err, ErrRunning) {
			log.Error("daemon", "err", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
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
		path, fileKind(st.Mode), SocketEnv, syscall.ENOTSOCK)
}

// fileKind names the type of a file of mode (a stat's st_mode).
func fileKind(mode uint32) string {
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
