package ipn

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/internal/wire"
)

// Bind creates the network at path, owned by the caller with the mode set
// by SetMode (DefaultMode if none: x for the owner alone) less the umask,
// or joins the existing network there as a manager (which needs x on the
// file). A bound socket may change the network (ChangeNumNodes) and
// Connect("") to it.
func (s *Socket) Bind(path string) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return s.opError("bind", err)
	}
	err = s.stateCall(func(cc *ctlConn) error {
		s.mu.Lock()
		if s.bound || s.connected {
			s.mu.Unlock()
			return syscall.EINVAL
		}
		mode, rejoin := s.mode, s.rj.on
		s.mu.Unlock()
		id, err := s.bindAt(cc, abs, mode)
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.bound, s.path, s.file = true, abs, id
		s.mu.Unlock()
		if rejoin {
			if fd, err := unix.Open(abs, unix.O_PATH|unix.O_CLOEXEC, 0); err == nil {
				s.learnNet(cc, abs, fd)
				unix.Close(fd)
			}
		}
		return nil
	})
	if err != nil {
		return &net.OpError{Op: "bind", Net: "ipn", Addr: Addr(abs), Err: err}
	}
	return nil
}

// bindAt makes the network file at path, as the caller, so the kernel
// checks the directory and sets owner and mode (less the umask), or takes
// the one there (EEXIST), and binds it. It works in the directory opened
// once: a file it made and that the bind refused is removed only if the
// directory still holds that very file, whatever was renamed meanwhile.
func (s *Socket) bindAt(cc *ctlConn, path string, mode os.FileMode) (fileID, error) {
	dir, err := unix.Open(filepath.Dir(path), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fileID{}, err
	}
	defer unix.Close(dir)
	base := filepath.Base(path)
	created := true
	if err := unix.Mknodat(dir, base, unix.S_IFSOCK|uint32(mode.Perm()), 0); err != nil {
		if !errors.Is(err, syscall.EEXIST) {
			return fileID{}, err
		}
		created = false
	}
	fd, err := unix.Openat(dir, base, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return fileID{}, err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fileID{}, err
	}
	id := fileID{uint64(st.Dev), st.Ino}
	if _, _, err := s.requestOn(cc, wire.OpBind, []byte(path), fd); err != nil {
		if created {
			unlinkIf(dir, base, id)
		}
		return fileID{}, err
	}
	return id, nil
}

// fileID identifies a network file by device and inode.
type fileID struct{ dev, ino uint64 }

// unlinkIf removes base from the directory dir if it is the socket file id.
func unlinkIf(dir int, base string, id fileID) {
	var st unix.Stat_t
	if unix.Fstatat(dir, base, &st, unix.AT_SYMLINK_NOFOLLOW) != nil {
		return
	}
	if (fileID{uint64(st.Dev), st.Ino}) == id && st.Mode&unix.S_IFMT == unix.S_IFSOCK {
		unix.Unlinkat(dir, base, 0)
	}
}

// removeEnded removes the network file once the network has ended with
// this socket's leaving, if the path still names that file: what a
// network leaves behind is cleared by its last member, with that member's
// own rights.
func (s *Socket) removeEnded() {
	s.mu.Lock()
	path, id, ended := s.path, s.file, s.ended
	s.mu.Unlock()
	if !ended || id == (fileID{}) || path == "" {
		return
	}
	dir, err := unix.Open(filepath.Dir(path), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	defer unix.Close(dir)
	unlinkIf(dir, filepath.Base(path), id)
}

// Connect joins the network at path, or the bound one if path is "". The
// sides the caller has no right to (no r: receive, no w: send) are shut
// down; with neither right it fails with EACCES.
func (s *Socket) Connect(path string) error {
	s.mu.Lock()
	bound, boundPath, connected := s.bound, s.path, s.connected
	s.mu.Unlock()
	if connected {
		return s.opError("connect", syscall.EISCONN)
	}
	abs := boundPath
	if path != "" {
		var err error
		if abs, err = filepath.Abs(path); err != nil {
			return s.opError("connect", err)
		}
	}
	if abs == "" {
		return s.opError("connect", syscall.EDESTADDRREQ)
	}
	if bound && abs == boundPath {
		return s.stateCall(func(cc *ctlConn) error { return s.connect(cc, abs, -1, fileID{}) })
	}
	fd, err := unix.Open(abs, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return &net.OpError{Op: "connect", Net: "ipn", Addr: Addr(abs), Err: err}
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return &net.OpError{Op: "connect", Net: "ipn", Addr: Addr(abs), Err: err}
	}
	return s.stateCall(func(cc *ctlConn) error { return s.connect(cc, abs, fd, fileID{uint64(st.Dev), st.Ino}) })
}

// ConnectFile joins the network whose file f is, opened by the caller
// (O_PATH is enough): for a program that resolves the network's path
// itself, as a file system serving other users does with their rights.
// The network's path is f.Name(); the socket never removes the file.
func (s *Socket) ConnectFile(f *os.File) error {
	s.mu.Lock()
	connected := s.connected
	s.mu.Unlock()
	if connected {
		return s.opError("connect", syscall.EISCONN)
	}
	raw, err := f.SyscallConn()
	if err != nil {
		return &net.OpError{Op: "connect", Net: "ipn", Addr: Addr(f.Name()), Err: err}
	}
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cerr = s.stateCall(func(cc *ctlConn) error { return s.connect(cc, f.Name(), int(fd), fileID{}) })
		s.mu.Lock()
		if cerr == nil && s.rj.on && s.rj.connFD < 0 {
			// A re-join connects to that very file again.
			s.rj.connFD, _ = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
		}
		s.mu.Unlock()
	}); err != nil {
		return &net.OpError{Op: "connect", Net: "ipn", Addr: Addr(f.Name()), Err: err}
	}
	return cerr
}

// connect joins, on cc, the network of the file fd (the bound one if fd
// is -1), named abs; id, if set, is the file's identity for removeEnded.
// The caller holds the state lock (stateCall).
func (s *Socket) connect(cc *ctlConn, abs string, fd int, id fileID) error {
	s.mu.Lock()
	wantFast := !s.fastOff
	s.mu.Unlock()
	dp, rep, st, err := s.dialData(cc, abs, fd, wantFast)
	if err != nil {
		return &net.OpError{Op: "connect", Net: "ipn", Addr: Addr(abs), Err: err}
	}
	s.oobMu.Lock()
	s.mu.Lock()
	s.connected, s.path, s.dp, s.rj.status = true, abs, dp, st
	if fd >= 0 {
		s.file = id
	}
	s.port, s.mtu = int(rep.Port), int(rep.MTU)
	s.canRead, s.canWrite = rep.CanRead, rep.CanWrite
	s.rj.netProto = Protocol(rep.Proto)
	wdl := s.wdl
	s.mu.Unlock()
	dp.setWriteDeadline(wdl)
	if len(s.oobq) > 0 {
		dp.interrupt() // a Recv serves the queue first
	}
	s.oobMu.Unlock()
	return nil
}

// dialData asks the daemon of cc for a port of the network of fd (the
// bound one if fd is -1), named abs, and returns its data path, the reply
// and the port's status page (nil from an older daemon, which passes none).
func (s *Socket) dialData(cc *ctlConn, abs string, fd int, wantFast bool) (dataPath, wire.ConnectReply, *statusView, error) {
	var rep wire.ConnectReply
	var fds []int
	if fd >= 0 {
		fds = []int{fd}
	}
	if wantFast {
		// A daemon that does not know the option answers the socket way.
		// FastPathLog: this client also reads a hub's shared log.
		if _, _, err := s.requestOn(cc, wire.OpSetOpt, append(wire.U32(wire.OptFastPath), wire.U32(wire.FastPathLog)...)); err != nil && !errors.Is(err, syscall.ENOPROTOOPT) {
			return nil, rep, nil, err
		}
	}
	body, rfds, err := s.requestOn(cc, wire.OpConnect, []byte(abs), fds...)
	if err != nil {
		return nil, rep, nil, err
	}
	// The data descriptors, then the status page.
	data := 0
	switch n := len(rfds); {
	case n == 1 || n == 2:
		data = 1
	case wantFast && (n == wire.FastPathFDs || n == wire.FastPathFDs+1):
		data = wire.FastPathFDs
	case wantFast && n == wire.FastPathFDs+2:
		data = wire.FastPathFDs + 1 // and the shared log
	default:
		closeFDs(rfds)
		return nil, rep, nil, fmt.Errorf("daemon passed %d descriptors: %w", n, syscall.EPROTO)
	}
	if rep, err = wire.DecodeConnectReply(body); err != nil {
		closeFDs(rfds)
		return nil, rep, nil, err
	}
	var st *statusView
	if len(rfds) > data {
		st, _ = mapStatus(rfds[data]) // without it, only the count is unknown
	}
	var dp dataPath
	if data >= wire.FastPathFDs {
		dp, err = newFastPath(rfds[:data], int(rep.Port))
	} else {
		f := os.NewFile(uintptr(rfds[0]), "ipn-data")
		var c net.Conn
		c, err = net.FileConn(f)
		f.Close()
		if err == nil {
			dp = newSockPath(c.(*net.UnixConn))
		}
	}
	if err != nil {
		if st != nil {
			st.close()
		}
		return nil, rep, nil, err
	}
	return dp, rep, st, nil
}
