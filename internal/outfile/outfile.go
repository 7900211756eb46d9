// Package outfile creates the files the ipn command writes where a user
// tells it to (captures, results, profiles), without letting a link or a
// special file planted there turn the write against another file.
//
// The command often runs as root and the path is often in a directory
// others can write (/tmp), where fs.protected_symlinks may be off. So
// Create never follows a symbolic link as the last component of the path,
// never truncates before it has checked, on the descriptor it opened (no
// race between check and use), that it holds a regular file of the caller
// with a single link, and never blocks on a named pipe.
//
// Symbolic links in the directories of the path are followed: they are the
// caller's choice of place, not the file written.
package outfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Mode is the mode of a file Create makes, less the umask.
const Mode = 0o644

// RefusedError is the error of Create for an existing file it will not
// write to.
type RefusedError struct {
	Path   string        // the path given to Create
	Reason string        // why, as in "is a symbolic link; refusing to write through it"
	Errno  syscall.Errno // the errno closest to the reason, for errors.Is
}

// Error returns the path and the reason.
func (e *RefusedError) Error() string { return e.Path + " " + e.Reason }

// Unwrap returns e.Errno.
func (e *RefusedError) Unwrap() error { return e.Errno }

// Create opens path for writing, making it (with Mode less the umask) if
// it does not exist and truncating it if it does. It refuses, with a
// *RefusedError, a path that is a symbolic link, anything but a regular
// file, a file owned by another user than the caller's effective uid, and
// a file with more than one hard link; a refused file is left unchanged.
// Other errors are *fs.PathError, as from os.Create.
func Create(path string) (*os.File, error) {
	// Checking before opening spares special files the side effects of
	// an open; the check openChecked makes on the descriptor is the one
	// that counts.
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err == nil {
		if err := check(path, &st); err != nil {
			return nil, err
		}
	}
	return openChecked(path)
}

// openChecked is Create without the first check: it opens path, checks
// the file it got and truncates it.
func openChecked(path string) (*os.File, error) {
	// No O_TRUNC: nothing changes until the checks pass. O_NONBLOCK keeps
	// an open of a named pipe with no reader from blocking (it fails with
	// ENXIO); O_NOCTTY keeps a terminal from becoming ours.
	flags := unix.O_WRONLY | unix.O_CREAT | unix.O_NOFOLLOW | unix.O_CLOEXEC | unix.O_NONBLOCK | unix.O_NOCTTY
	fd, err := unix.Open(path, flags, Mode)
	for err == unix.EINTR { // as os.OpenFile does, on slow file systems
		fd, err = unix.Open(path, flags, Mode)
	}
	if err != nil {
		return nil, explain(path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, &fs.PathError{Op: "fstat", Path: path, Err: err}
	}
	if err := check(path, &st); err != nil {
		unix.Close(fd)
		return nil, err
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, &fs.PathError{Op: "fcntl", Path: path, Err: err}
	}
	if err := unix.Ftruncate(fd, 0); err != nil {
		unix.Close(fd)
		return nil, &fs.PathError{Op: "truncate", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}

// WriteFile writes data to the file at path, made or truncated as Create
// does, and closes it.
func WriteFile(path string, data []byte) error {
	f, err := Create(path)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// check refuses st, the status of the file at path, unless it is a regular
// file of the caller's effective uid with one link.
func check(path string, st *unix.Stat_t) error {
	refuse := func(errno syscall.Errno, format string, args ...any) error {
		return &RefusedError{Path: path, Reason: fmt.Sprintf(format, args...), Errno: errno}
	}
	switch typ := st.Mode & unix.S_IFMT; {
	case typ == unix.S_IFLNK:
		return refuse(unix.ELOOP, "is a symbolic link; refusing to write through it")
	case typ != unix.S_IFREG:
		return refuse(unix.EPERM, "is %s, not a regular file; refusing to write to it", kind(typ))
	}
	if uid := os.Geteuid(); st.Uid != uint32(uid) {
		return refuse(unix.EPERM, "is owned by uid %d, not by this user (uid %d); refusing to write to it", st.Uid, uid)
	}
	if st.Nlink > 1 {
		return refuse(unix.EMLINK, "has %d hard links; refusing to write to it", st.Nlink)
	}
	return nil
}

// explain turns the error of opening path into a RefusedError when the
// path holds something Create refuses (it changed since the first check),
// or else a *fs.PathError.
func explain(path string, err error) error {
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENXIO) {
		var st unix.Stat_t
		if unix.Lstat(path, &st) == nil {
			if rerr := check(path, &st); rerr != nil {
				return rerr
			}
		}
	}
	return &fs.PathError{Op: "open", Path: path, Err: err}
}

// kind names a file type, for errors.
func kind(typ uint32) string {
	switch typ {
	case unix.S_IFDIR:
		return "a directory"
	case unix.S_IFIFO:
		return "a named pipe"
	case unix.S_IFSOCK:
		return "a socket"
	case unix.S_IFCHR:
		return "a character device"
	case unix.S_IFBLK:
		return "a block device"
	}
	return fmt.Sprintf("a file of type %#o", typ)
}
