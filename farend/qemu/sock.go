package qemu

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// fileID names a file for good: its device and inode.
type fileID struct{ dev, ino uint64 }

func idOf(st *unix.Stat_t) fileID { return fileID{uint64(st.Dev), st.Ino} }

// sockFile is a Unix socket file this process made, which it removes when
// it is done with it, unless another file has taken its name meanwhile.
type sockFile struct {
	path  string
	dirfd int // the directory, held so that a rename of it changes nothing
	name  string
	id    fileID
}

// fdPath returns a path that reaches name in the directory open as dirfd,
// for bind and connect, which take no directory descriptor; with name "",
// the file open as dirfd itself.
func fdPath(dirfd int, name string) string {
	p := "/proc/self/fd/" + strconv.Itoa(dirfd)
	if name != "" {
		p += "/" + name
	}
	return p
}

// beforeChmod, when a test sets it, runs after the socket just bound is
// found at its name and before its mode is set: where a rename can strike.
var beforeChmod func(dirfd int, name string)

// makeSock binds a Unix socket at path, an absolute path, safely: bind
// makes a new file and never follows a symlink; a file at path that is
// not a socket, or a socket someone serves, is refused; a stale socket
// there is replaced. listen receives the address to bind and returns the
// bound socket.
//
// The socket's mode is mode (0: the mode bind gives, 0777 less the umask),
// and it is given to the socket alone, never to a file swapped in for it:
//
//   - A stream's listener (asName false) is bound in a new directory of
//     mode 0700 beside path, which no one else may write, given its mode
//     there, and moved to path with a rename that replaces nothing, so that
//     path never has another mode and its name is never another file's.
//   - A datagram socket (asName true) is bound at path itself, the name its
//     datagrams carry as their source (QEMU may check it). Its mode is set
//     through a descriptor of the file at path that is no symlink and is
//     the socket found there just after bind (same device and inode), and
//     is refused otherwise.
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
	// The descriptor numbers of the private directory are not known yet:
	// bound the name with the largest.
	if !asName && len(fdPath(1<<30, name)) > longest {
		most := longest - len(fdPath(1<<30, ""))
		return fail(fmt.Errorf("%s: socket name %q is too long (at most %d bytes): %w", path, name, most, syscall.EINVAL))
	}
	var st unix.Stat_t
	var stale *fileID
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil {
		if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
			return fail(fmt.Errorf("%s is there and is not a socket (mode %#o): remove it or choose another path: %w", path, st.Mode, syscall.EEXIST))
		}
		if served(fdPath(dirfd, name)) {
			return fail(fmt.Errorf("%s: a program already serves that socket: %w", path, syscall.EADDRINUSE))
		}
		id := idOf(&st)
		stale = &id
	}
	if asName {
		if stale != nil {
			unlinkIf(dirfd, name, *stale) // bind refuses a name that is taken
		}
		s, err := listen(path)
		if err != nil {
			return fail(fmt.Errorf("bind %s: %w", path, unwrapOp(err)))
		}
		if f.id, err = boundID(dirfd, name, path); err == nil {
			err = chmodSock(dirfd, name, f.id, mode, path)
		}
		if err != nil {
			if f.id != (fileID{}) {
				unlinkIf(dirfd, name, f.id)
			}
			s.Close()
			return fail(err)
		}
		return s, f, nil
	}

	tmp, tmpfd, err := privateDir(dirfd, name, path)
	if err != nil {
		return fail(err)
	}
	defer func() {
		removeDir(dirfd, tmp, tmpfd)
		unix.Close(tmpfd)
	}()
	s, err := listen(fdPath(tmpfd, name))
	if err != nil {
		return fail(fmt.Errorf("bind %s: %w", path, unwrapOp(err)))
	}
	undo := func(err error) (T, *sockFile, error) {
		unlinkIf(tmpfd, name, f.id)
		s.Close()
		return fail(err)
	}
	if f.id, err = boundID(tmpfd, name, path); err != nil {
		return undo(err)
	}
	if err := chmodSock(tmpfd, name, f.id, mode, path); err != nil {
		return undo(err)
	}
	if stale != nil {
		unlinkIf(dirfd, name, *stale)
	}
	if err := renameNoReplace(tmpfd, name, dirfd, name); err != nil {
		if errors.Is(err, unix.EEXIST) {
			err = fmt.Errorf("another file took the name while the socket was made: %w", err)
		}
		return undo(fmt.Errorf("%s: %w", path, err))
	}
	return s, f, nil
}

// boundID returns the device and inode of the socket just bound at name
// in dirfd, refusing anything else found there (path names it in errors).
func boundID(dirfd int, name, path string) (fileID, error) {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fileID{}, fmt.Errorf("bind %s: the socket is not where it was bound: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return fileID{}, fmt.Errorf("bind %s: the socket is not where it was bound: a file of mode %#o took its name: %w", path, st.Mode, syscall.EEXIST)
	}
	return idOf(&st), nil
}

// chmodSock gives mode (0: none) to the socket id at name in dirfd, and to
// nothing else: not to a symlink's target, not to a file that took the
// socket's name.
func chmodSock(dirfd int, name string, id fileID, mode os.FileMode, path string) error {
	if mode == 0 {
		return nil
	}
	if beforeChmod != nil {
		beforeChmod(dirfd, name)
	}
	fd, err := unix.Openat(dirfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("chmod %s to %#o: %w", path, mode.Perm(), err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("chmod %s to %#o: %w", path, mode.Perm(), err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK || idOf(&st) != id {
		return fmt.Errorf("chmod %s to %#o: refused: the name is no longer the socket just bound (now mode %#o, inode %d; the socket's inode %d): %w", path, mode.Perm(), st.Mode, st.Ino, id.ino, syscall.EEXIST)
	}
	// An O_PATH descriptor takes no fchmod; its /proc link reaches the file
	// it holds, whatever its name has become.
	if err := unix.Fchmodat(unix.AT_FDCWD, fdPath(fd, ""), uint32(mode.Perm()), 0); err != nil {
		return fmt.Errorf("chmod %s to %#o: %w", path, mode.Perm(), err)
	}
	return nil
}

// privateDir makes a directory of mode 0700 in dirfd, named after name,
// and opens it; no one else may make, rename or remove files in it.
func privateDir(dirfd int, name, path string) (string, int, error) {
	for range 8 {
		tmp := fmt.Sprintf(".%s.%d.%08x.tmp", name, os.Getpid(), rand.Uint32())
		err := unix.Mkdirat(dirfd, tmp, 0o700)
		if errors.Is(err, unix.EEXIST) {
			continue
		}
		if err != nil {
			return "", -1, fmt.Errorf("%s: a directory to make the socket in: %w", path, err)
		}
		fd, err := unix.Openat(dirfd, tmp, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return "", -1, fmt.Errorf("%s: the directory %s made to make the socket in: %w", path, tmp, err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil || st.Uid != uint32(os.Geteuid()) || st.Mode&0o077 != 0 {
			unix.Close(fd)
			return "", -1, fmt.Errorf("%s: the directory %s made to make the socket in was replaced (owner %d, mode %#o): %w", path, tmp, st.Uid, st.Mode, syscall.EEXIST)
		}
		return tmp, fd, nil
	}
	return "", -1, fmt.Errorf("%s: no free name for a directory to make the socket in: %w", path, syscall.EEXIST)
}

// removeDir removes the directory tmp of dirfd if it is still the one
// open as fd, and empty.
func removeDir(dirfd int, tmp string, fd int) {
	var a, b unix.Stat_t
	if unix.Fstat(fd, &a) == nil && unix.Fstatat(dirfd, tmp, &b, unix.AT_SYMLINK_NOFOLLOW) == nil && idOf(&a) == idOf(&b) {
		unix.Unlinkat(dirfd, tmp, unix.AT_REMOVEDIR)
	}
}

// renameNoReplace moves from to to, failing with EEXIST if to is taken;
// where the file system has no such rename, a link and an unlink do it.
func renameNoReplace(fromfd int, from string, tofd int, to string) error {
	err := unix.Renameat2(fromfd, from, tofd, to, unix.RENAME_NOREPLACE)
	if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOSYS) {
		return err
	}
	if err := unix.Linkat(fromfd, from, tofd, to, 0); err != nil {
		return err
	}
	unix.Unlinkat(fromfd, from, 0)
	return nil
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

// unlinkIf removes name from the directory dirfd if it is still the file
// id.
func unlinkIf(dirfd int, name string, id fileID) {
	var st unix.Stat_t
	if unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && idOf(&st) == id {
		unix.Unlinkat(dirfd, name, 0)
	}
}

// remove removes the socket file, if it is still this socket's, and lets
// the directory go.
func (f *sockFile) remove() {
	unlinkIf(f.dirfd, f.name, f.id)
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
