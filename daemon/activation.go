package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/coreos/go-systemd/v22/activation"
	"golang.org/x/sys/unix"
)

// ErrActivation reports a socket systemd passed (socket activation) that
// cannot be the control socket: not one listening SOCK_SEQPACKET Unix
// socket at the path the daemon serves.
var ErrActivation = errors.New("the socket systemd passed is not this daemon's control socket")

// passedListener returns the control socket systemd passed this process
// (sd_listen_fds(3): $LISTEN_PID is this process), or nil if it passed
// none. It refuses, closing them, sockets that are not one listening
// SOCK_SEQPACKET Unix socket bound at socket. Either way the variables are
// gone from the environment, so that no process the daemon starts takes
// them for its own.
func passedListener(socket string, log *slog.Logger) (*net.UnixListener, error) {
	files := activation.Files(true)
	if len(files) == 0 {
		return nil, nil
	}
	closeAll := func() {
		for _, f := range files {
			f.Close()
		}
	}
	if len(files) > 1 {
		var names []string
		for _, f := range files {
			names = append(names, f.Name())
		}
		closeAll()
		return nil, fmt.Errorf("systemd passed %d sockets (%s): %w; want one, ListenSequentialPacket=%s alone in the socket unit",
			len(files), strings.Join(names, ", "), ErrActivation, socket)
	}
	f := files[0]
	if fd := int(f.Fd()); checkPassed(fd, socket) != nil {
		err := checkPassed(fd, socket)
		f.Close()
		return nil, fmt.Errorf("systemd passed descriptor %d (%s): %w", fd, f.Name(), err)
	}
	fl, err := net.FileListener(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("systemd passed socket %s: %w", socket, err)
	}
	ln := fl.(*net.UnixListener) // checkPassed made sure
	ln.SetUnlinkOnClose(false)
	if os.Geteuid() == 0 {
		if fi, err := os.Stat(socket); err == nil && fi.Mode().Perm()&0o006 != 0o006 {
			// Not an error: the machine's owner may keep users out.
			log.Warn("users but root cannot reach the daemon: SocketMode=0666 in the socket unit lets them",
				"socket", socket, "mode", fmt.Sprintf("%#o", fi.Mode().Perm()))
		}
	}
	return ln, nil
}

// checkPassed checks that fd is a listening SOCK_SEQPACKET Unix socket
// bound at socket.
func checkPassed(fd int, socket string) error {
	domain, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return fmt.Errorf("not a socket (%w): %w", err, ErrActivation)
	}
	if domain != unix.AF_UNIX {
		return fmt.Errorf("a socket of address family %d, want a Unix socket (AF_UNIX, %d) at %s: %w",
			domain, unix.AF_UNIX, socket, ErrActivation)
	}
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return fmt.Errorf("socket type: %w", err)
	}
	if typ != unix.SOCK_SEQPACKET {
		return fmt.Errorf("a %s socket, want SOCK_SEQPACKET (ListenSequentialPacket=%s in the socket unit): %w",
			sockType(typ), socket, ErrActivation)
	}
	if on, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil || on == 0 {
		return fmt.Errorf("a connection, not a listening socket (the socket unit must not say Accept=yes): %w", ErrActivation)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return fmt.Errorf("socket address: %w", err)
	}
	ua, ok := sa.(*unix.SockaddrUnix)
	if !ok || ua.Name == "" || ua.Name[0] == 0 || ua.Name[0] == '@' {
		name := "unnamed"
		if ok && ua.Name != "" {
			name = fmt.Sprintf("abstract %q", ua.Name[1:])
		}
		return fmt.Errorf("an %s socket, want one at %s (processes in other namespaces reach a path): %w", name, socket, ErrActivation)
	}
	if !samePath(ua.Name, socket) {
		return fmt.Errorf("a socket at %s, but this daemon serves %s (--socket or $%s): %w",
			ua.Name, socket, SocketEnv, ErrActivation)
	}
	return nil
}

// samePath reports whether a and b name the same socket: equal once made
// absolute, or the same inode.
func samePath(a, b string) bool {
	aa, err1 := filepath.Abs(a)
	bb, err2 := filepath.Abs(b)
	if err1 == nil && err2 == nil && aa == bb {
		return true
	}
	ai, err1 := os.Stat(a)
	bi, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(ai, bi)
}

// sockType names a socket type.
func sockType(t int) string {
	switch t {
	case syscall.SOCK_STREAM:
		return "SOCK_STREAM (ListenStream=)"
	case syscall.SOCK_DGRAM:
		return "SOCK_DGRAM (ListenDatagram=)"
	case syscall.SOCK_RAW:
		return "SOCK_RAW"
	}
	return fmt.Sprintf("type %d", t)
}
