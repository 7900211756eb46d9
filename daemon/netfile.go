package daemon

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/engine"
	"github.com/ipn-project/ipn/internal/ctlsock"
	"github.com/ipn-project/ipn/internal/perm"
	"github.com/ipn-project/ipn/internal/shmring"
	"github.com/ipn-project/ipn/port/shm"
)

// fileID identifies a network file by device and inode.
type fileID struct {
	dev, ino uint64
}

func idOf(st *unix.Stat_t) fileID { return fileID{uint64(st.Dev), st.Ino} }

// netFile is a network's file, held open (an O_PATH descriptor) by the
// daemon for the network's whole life: its inode cannot be freed and given
// to another file while the network lives, so the network is that file's,
// and no other's, from its first bind to its end.
type netFile struct {
	fd      int
	id      fileID
	creator uint32 // the user charged for the network

	mu     sync.Mutex
	memory int64    // guarded by mu; the message memory charged (netMemory)
	log    *shm.Log // guarded by mu; a hub's shared log, once a member reads it
	logMem int64    // guarded by mu; its memory, charged to the creator
}

// logOf returns hub network n's shared log, made at the first call and
// charged to the network's maker; nil if it cannot be made (the members
// then get their messages in their rings).
func (s *server) logOf(n *engine.Network) *shm.Log {
	nf := netFileOf(n)
	nf.mu.Lock()
	defer nf.mu.Unlock()
	if nf.log != nil {
		return nf.log
	}
	size := int64(shmring.LogBytes(n.Config().MTU)) + 4096
	if err := s.acct.take(nf.creator, usage{memory: size}); err != nil {
		s.log.Warn("no shared log, members get copies", "network", n.Name(), "err", err)
		return nil
	}
	log, err := shm.NewLog(n.Config().MTU)
	if err != nil {
		s.acct.give(nf.creator, usage{memory: size})
		s.log.Warn("no shared log, members get copies", "network", n.Name(), "err", err)
		return nil
	}
	nf.log, nf.logMem = log, size
	return log
}

// closeLog releases the network's shared log, once the network has ended,
// and gives back its charge.
func (f *netFile) closeLog(acct *accounts) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.log != nil {
		f.log.Close()
		acct.give(f.creator, usage{memory: f.logMem})
		f.log, f.logMem = nil, 0
	}
}

// statNetFile checks that fd is a descriptor of a network file, an inode of
// type socket in a file system (not a socket itself, as a socketpair's end
// would be), and returns its identity and status.
func statNetFile(fd int) (fileID, *unix.Stat_t, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fileID{}, nil, fmt.Errorf("network file: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return fileID{}, nil, fmt.Errorf("%s, not a network (a network is a socket file): %w", ctlsock.FileKind(st.Mode), syscall.ECONNREFUSED)
	}
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(fd, &sfs); err != nil {
		return fileID{}, nil, fmt.Errorf("network file: %w", err)
	}
	if sfs.Type == unix.SOCKFS_MAGIC {
		return fileID{}, nil, fmt.Errorf("a socket, not a socket file in a file system: %w", syscall.EINVAL)
	}
	return idOf(&st), &st, nil
}

// pin returns a netFile holding its own descriptor of the file behind fd,
// which statNetFile accepted.
func pin(fd int, id fileID) (*netFile, error) {
	keep, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("network file: %w", err)
	}
	return &netFile{fd: keep, id: id}, nil
}

// close gives the file up, once the network has ended.
func (f *netFile) close() { unix.Close(f.fd) }

// path returns the file's path now, as the kernel names the descriptor, if
// that path leads to this very file in the daemon's mount namespace; else
// "" (the file was removed, or lives in another mount namespace, where the
// kernel's name for it may be any path of this one).
func (f *netFile) path() string {
	p := f.name()
	if p == "" {
		return ""
	}
	var st unix.Stat_t
	if unix.Lstat(p, &st) != nil || idOf(&st) != f.id {
		return ""
	}
	return p
}

// name returns the kernel's name for the file, whether or not it leads
// there from the daemon's mount namespace ("" if removed): for messages.
func (f *netFile) name() string {
	p, err := readlinkFD(f.fd)
	if err != nil || !strings.HasPrefix(p, "/") || strings.HasSuffix(p, " (deleted)") {
		return ""
	}
	return p
}

// stat returns the file's status now (owner and mode may have changed).
func (f *netFile) stat() (*unix.Stat_t, error) {
	var st unix.Stat_t
	if err := unix.Fstat(f.fd, &st); err != nil {
		return nil, fmt.Errorf("network file: %w", err)
	}
	return &st, nil
}

// rights returns what c may do with the network, as the kernel decides on
// the file.
func (f *netFile) rights(c cred) (perm.Rights, error) {
	return perm.Of(f.fd, c.Cred)
}

// visibleTo reports whether c can reach the file by its path now: the
// lookup, done with c's credentials, finds this very file.
func (f *netFile) visibleTo(c cred) bool {
	if c.UID == 0 {
		return true
	}
	p := f.name() // the lookup as c checks it leads here
	if p == "" {
		return false
	}
	st, err := perm.Stat(c.Cred, p)
	return err == nil && idOf(&st) == f.id
}

func readlinkFD(fd int) (string, error) {
	buf := make([]byte, unix.PathMax)
	n, err := unix.Readlink("/proc/self/fd/"+strconv.Itoa(fd), buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}
