package qemu

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// fileID names a file for good: its device and inode.
type fileID struct{ dev, ino uint64 }

// sockFile is a Unix socket file this process made, which it removes when
// it is done with it, unless another file has taken its name meanwhile.
type sockFile struct {
	path  string
	dirfd int // the directory, held so that a rename of it changes nothing
	name  string
	id    fileID
}

// at returns a path that reaches name in the directory through its
// descriptor, for bind and connect, which take no directory descriptor.
func (f *sockFile) at(name string) string {
	return "/proc/self/fd/" + strconv.Itoa(f.dirfd) + "/" + name
}

// makeSock binds a Unix socket at path, an absolute path, safely: bind
// makes a new file and never follows a symlink; a file at path that is
// not a socket, or a socket someone serves, is refused; a stale socket
// there is replaced. A stream's listener (asName false) is bound under a
// temporary name in path's directory, given mode (0: the mode bind gives,
// 0777 less the umask) and then renamed to path, so that path never has
// another mode. A datagram socket (asName true) is bound at path itself,
// the name its datagrams carry as their source (QEMU may check it), and
// then given mode. listen receives the address to bind and returns the
// bound socket.
func makeSock[T interface{ Close() error }](path string, mode os.FileMode, asName bool, listen func(addr string) (T, error)) (T, *sockFile, error) {
	var zero T
	longest := len(unix.RawSockaddrUnix{}.Path) - 1
	if asName && len(path) > longest {
		return zero, nil, fmt.Errorf("%s: path too long for a socket: at most %d bytes, this one has %d: %w", path, longest, len(path), syscall.EINVAL)
	}
	dir, name := filepath.Split(path)
	dirfd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return zero, nil, fmt.Errorf("directory of %s: %w", path, err)
	}
	f := &sockFile{path: path, dirfd: dirfd, name: name}
	fail := func(err error) (T, *sockFile, error) {
		unix.Close(dirfd)
		return zero, nil, err
	}
	tmp := name
	if !asName {
		tmp = fmt.Sprintf(".%s.%d.tmp", name, os.Getpid())
		if len(f.at(tmp)) > longest {
			most := longest - len(f.at("")) - (len(tmp) - len(name))
			return fail(fmt.Errorf("%s: socket name %q is too long (at most %d bytes): %w", path, name, most, syscall.EINVAL))
		}
	}
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil {
		if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
			return fail(fmt.Errorf("%s is there and is not a socket (mode %#o): remove it or choose another path: %w", path, st.Mode, syscall.EEXIST))
		}
		if served(f.at(name)) {
			return fail(fmt.Errorf("%s: a program already serves that socket: %w", path, syscall.EADDRINUSE))
		}
		if asName {
			unix.Unlinkat(dirfd, name, 0) // stale; bind refuses a name that is taken again
		}
	}
	if !asName && unix.Fstatat(dirfd, tmp, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFSOCK {
		unix.Unlinkat(dirfd, tmp, 0) // left by a process of this pid that died
	}
	addr := path
	if !asName {
		addr = f.at(tmp)
	}
	s, err := listen(addr)
	if err != nil {
		return fail(fmt.Errorf("bind %s: %w", path, unwrapOp(err)))
	}
	undo := func(err error) (T, *sockFile, error) {
		f.unlink(tmp)
		s.Close()
		return fail(err)
	}
	if err := unix.Fstatat(dirfd, tmp, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		s.Close()
		return fail(fmt.Errorf("bind %s: the socket is not where it was bound (%v)", path, err))
	}
	f.id = fileID{uint64(st.Dev), st.Ino}
	if mode != 0 {
		if err := unix.Fchmodat(dirfd, tmp, uint32(mode.Perm()), 0); err != nil {
			return undo(fmt.Errorf("chmod %s to %#o: %w", path, mode.Perm(), err))
		}
	}
	if !asName {
		if err := unix.Renameat(dirfd, tmp, dirfd, name); err != nil {
			return undo(fmt.Errorf("%s: %w", path, err))
		}
	}
	return s, f, nil
}

// served reports whether a socket at path answers a connection, of
// either type.
func served(path string) bool {
	for _, n := range []string{"unix", "unixgram"} {
		if c, err := net.Dial(n, path); err == nil {
			c.Close()
			return true
		}
	}
	return false
}

// unlink removes name from the directory if it is still this socket.
func (f *sockFile) unlink(name string) {
	var st unix.Stat_t
	if unix.Fstatat(f.dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && (fileID{uint64(st.Dev), st.Ino}) == f.id {
		unix.Unlinkat(f.dirfd, name, 0)
	}
}

// remove removes the socket file, if it is still this socket's, and lets
// the directory go.
func (f *sockFile) remove() {
	f.unlink(f.name)
	unix.Close(f.dirfd)
}

// unwrapOp returns the error inside a *net.OpError (whose text would name
// the /proc path bind was given) and an *os.SyscallError.
func unwrapOp(err error) error {
	var op *net.OpError
	if errors.As(err, &op) {
		err = op.Err
	}
	var sc *os.SyscallError
	if errors.As(err, &sc) {
		err = sc.Err
	}
	return err
}
