// Package perm asks the kernel what a user may do with a file. A process
// that serves other users (the root daemon, a root mount) runs each check,
// or each path lookup, on an OS thread that has taken that user's
// file-system credentials (fsuid, fsgid and supplementary groups), so that
// ACLs, directory search rights and whatever else the kernel applies decide
// exactly as they would for the user. The process's other threads keep
// their own credentials throughout.
//
// A process without CAP_SETUID and CAP_SETGID (not root) cannot take
// another user's credentials: it acts for its own user only and refuses the
// others with EACCES.
package perm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Cred is a user as the kernel knows a process: user, primary group and
// supplementary groups (from SO_PEERCRED and SO_PEERGROUPS, say).
type Cred struct {
	UID, GID uint32
	Groups   []uint32
}

func (c Cred) String() string { return fmt.Sprintf("uid %d gid %d", c.UID, c.GID) }

// Rights is what a user may do with a network file: r receives, w sends,
// x manages.
type Rights struct {
	R, W, X bool
}

func (r Rights) String() string {
	b := []byte("---")
	if r.R {
		b[0] = 'r'
	}
	if r.W {
		b[1] = 'w'
	}
	if r.X {
		b[2] = 'x'
	}
	return string(b)
}

// Of returns the rights c has on the file behind fd (an O_PATH descriptor,
// or any other), as the kernel's access check decides them for c: mode
// bits, ACLs, and root's override (r and w always, x if any x bit is set).
func Of(fd int, c Cred) (Rights, error) {
	var r Rights
	err := As(c, func() error {
		r = Rights{
			R: faccess(fd, unix.R_OK) == nil,
			W: faccess(fd, unix.W_OK) == nil,
			X: faccess(fd, unix.X_OK) == nil,
		}
		// A descriptor that is not there is an error, not "no rights".
		var st unix.Stat_t
		return unix.Fstat(fd, &st)
	})
	return r, err
}

// faccess asks the kernel whether the thread's file-system credentials
// grant mode on the file behind fd.
func faccess(fd int, mode uint32) error {
	return unix.Faccessat2(fd, "", mode, unix.AT_EMPTY_PATH|unix.AT_EACCESS)
}

// Open opens path with flags as c would: the lookup, its directory search
// rights and symlinks are the kernel's for c. O_CLOEXEC is always added.
func Open(c Cred, path string, flags int) (int, error) {
	fd := -1
	err := As(c, func() error {
		var err error
		fd, err = unix.Open(path, flags|unix.O_CLOEXEC, 0)
		return err
	})
	return fd, err
}

// Stat returns the status of path, not following a final symlink, as c
// would see it (ENOENT or EACCES if c cannot reach it).
func Stat(c Cred, path string) (unix.Stat_t, error) {
	var st unix.Stat_t
	err := As(c, func() error { return unix.Lstat(path, &st) })
	return st, err
}

// Peer returns the process id and the credentials of the process that
// connected the Unix socket fd (or made the socket pair), as the kernel
// recorded them then: SO_PEERCRED and SO_PEERGROUPS.
func Peer(fd int) (pid int32, c Cred, err error) {
	uc, err := unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
	if err != nil {
		return 0, Cred{}, fmt.Errorf("peer credentials: %w", err)
	}
	c = Cred{UID: uc.Uid, GID: uc.Gid}
	if c.Groups, err = peerGroups(fd); err != nil {
		return 0, Cred{}, fmt.Errorf("peer groups: %w", err)
	}
	return uc.Pid, c, nil
}

// peerGroups reads SO_PEERGROUPS, growing the buffer when the kernel says
// it is too small.
func peerGroups(fd int) ([]uint32, error) {
	buf := make([]byte, 64*4)
	for {
		size := uint32(len(buf))
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&size)), 0)
		if errno == unix.ERANGE && int(size) > len(buf) && size <= 65536*4 {
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

// Self returns the calling process's own credentials.
func Self() Cred {
	c := Cred{UID: uint32(os.Geteuid()), GID: uint32(os.Getegid())}
	if gs, err := unix.Getgroups(); err == nil {
		for _, g := range gs {
			c.Groups = append(c.Groups, uint32(g))
		}
	}
	return c
}

// Privileged reports whether this process may take other users'
// credentials (it runs as root).
func Privileged() bool { return os.Geteuid() == 0 }

var (
	selfOnce sync.Once
	self     Cred
)

// ErrNotPrivileged reports an action for another user that a process
// without root cannot take.
var ErrNotPrivileged = errors.New("cannot act as another user without root")

// As runs fn on an OS thread whose file-system credentials are c's, and
// returns what fn returns. fn must not start goroutines that rely on those
// credentials. In a process that is not root, fn runs as the process itself
// if c is its own user, and As fails with EACCES otherwise.
func As(c Cred, fn func() error) error {
	selfOnce.Do(func() { self = Self() })
	if !Privileged() {
		if c.UID != self.UID {
			return fmt.Errorf("%w (uid %d): %w", ErrNotPrivileged, c.UID, syscall.EACCES)
		}
		return fn()
	}
	done := make(chan error, 1)
	go func() {
		// The thread is this goroutine's alone while its credentials
		// differ from the process's. If they cannot be put back, the
		// goroutine exits still locked, and the runtime ends the thread.
		runtime.LockOSThread()
		if err := become(c); err != nil {
			done <- err
			return
		}
		err := fn()
		if rerr := become(self); rerr != nil {
			done <- fmt.Errorf("restoring credentials: %w", rerr)
			return
		}
		runtime.UnlockOSThread()
		done <- err
	}()
	return <-done
}

// become sets the calling thread's supplementary groups, fsgid and fsuid
// to c's, in that order (setgroups needs CAP_SETGID, which a thread whose
// fsuid is not 0 still has; the file-system capabilities go and come back
// with fsuid 0). The raw system calls act on this thread alone.
func become(c Cred) error {
	gs := make([]uint32, len(c.Groups))
	copy(gs, c.Groups)
	var p unsafe.Pointer
	if len(gs) > 0 {
		p = unsafe.Pointer(&gs[0])
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(gs)), uintptr(p), 0); e != 0 {
		return fmt.Errorf("setgroups: %w", e)
	}
	runtime.KeepAlive(gs)
	// setfsuid and setfsgid return the previous value and no error; a
	// second call with an invalid id reads the value back.
	unix.RawSyscall(unix.SYS_SETFSGID, uintptr(c.GID), 0, 0)
	if g, _, _ := unix.RawSyscall(unix.SYS_SETFSGID, ^uintptr(0), 0, 0); uint32(g) != c.GID {
		return fmt.Errorf("setfsgid %d: %w", c.GID, syscall.EPERM)
	}
	unix.RawSyscall(unix.SYS_SETFSUID, uintptr(c.UID), 0, 0)
	if u, _, _ := unix.RawSyscall(unix.SYS_SETFSUID, ^uintptr(0), 0, 0); uint32(u) != c.UID {
		return fmt.Errorf("setfsuid %d: %w", c.UID, syscall.EPERM)
	}
	return nil
}
