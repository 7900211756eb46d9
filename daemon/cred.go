package daemon

import (
	"encoding/binary"
	"fmt"
	"net"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/internal/perm"
)

// cred is who is on the other end of a control connection, as the kernel
// saw it when the client connected.
type cred struct {
	pid    int32
	uid    uint32
	gid    uint32
	groups []uint32 // supplementary groups
}

func (c cred) String() string {
	return fmt.Sprintf("pid %d uid %d", c.pid, c.uid)
}

// peerCred reads SO_PEERCRED and SO_PEERGROUPS of conn.
func peerCred(conn *net.UnixConn) (cred, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return cred{}, err
	}
	var c cred
	var serr error
	err = raw.Control(func(fd uintptr) {
		var uc *unix.Ucred
		uc, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if serr != nil {
			return
		}
		c.pid, c.uid, c.gid = uc.Pid, uc.Uid, uc.Gid
		c.groups, serr = peerGroups(int(fd))
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return cred{}, fmt.Errorf("peer credentials: %w", err)
	}
	return c, nil
}

// peerGroups reads SO_PEERGROUPS, growing the buffer when the kernel says
// it is too small.
func peerGroups(fd int) ([]uint32, error) {
	buf := make([]byte, 64*4)
	for {
		size := uint32(len(buf))
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&size)), 0)
		if errno == unix.ERANGE && int(size) > len(buf) {
			buf = make([]byte, size)
			continue
		}
		if errno != 0 {
			return nil, errno
		}
		groups := make([]uint32, size/4)
		for i := range groups {
			groups[i] = binary.NativeEndian.Uint32(buf[i*4:])
		}
		return groups, nil
	}
}

// access returns the read, write and execute rights c has on a file with
// st's owner, group and mode (see perm.Rights).
func access(st *unix.Stat_t, c cred) (r, w, x bool) {
	return perm.Rights(st.Uid, st.Gid, st.Mode, c.uid, c.gid, c.groups)
}
