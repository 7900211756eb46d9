package daemon

import (
	"fmt"
	"net"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/internal/perm"
)

// cred is who is on the other end of a connection, as the kernel saw it
// when the client connected.
type cred struct {
	pid int32
	perm.Cred
}

func (c cred) String() string {
	return fmt.Sprintf("pid %d uid %d", c.pid, c.UID)
}

// peerCred reads SO_PEERCRED and SO_PEERGROUPS of conn.
func peerCred(conn *net.UnixConn) (cred, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return cred{}, err
	}
	var c cred
	var serr error
	err = raw.Control(func(fd uintptr) { c, serr = fdCred(int(fd)) })
	if err == nil {
		err = serr
	}
	return c, err
}

// fdCred reads SO_PEERCRED and SO_PEERGROUPS of the connected Unix socket
// fd.
func fdCred(fd int) (cred, error) {
	pid, c, err := perm.Peer(fd)
	return cred{pid: pid, Cred: c}, err
}

// unixSocket checks that fd is an AF_UNIX socket of type typ.
func unixSocket(fd, typ int, what string) error {
	dom, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil || dom != unix.AF_UNIX {
		return fmt.Errorf("%s is not a Unix socket: %w", what, syscall.EINVAL)
	}
	if t, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil || t != typ {
		return fmt.Errorf("%s is not of the right type: %w", what, syscall.EINVAL)
	}
	return nil
}
