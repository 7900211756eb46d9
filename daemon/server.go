// Package daemon is the serving process of IPN: it holds the networks (an
// engine), accepts the library's control connections, checks every caller's
// kernel credentials against the network files, and is started on demand by
// the library when none is running.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/engine"
	_ "github.com/ipn-project/ipn/policy/hub" // the built-in policy
)

// Config is how a daemon serves.
type Config struct {
	// Socket is the control socket's path; DefaultSocket() if empty.
	Socket string
	// IdleExit, if positive, stops the daemon after it has had no client
	// for that long.
	IdleExit time.Duration
	// Logger receives the daemon's log; slog.Default() if nil.
	Logger *slog.Logger
	// Ready, if set, is called once the control socket accepts clients.
	Ready func()
	// NoFastPath refuses the shared-memory fast path, answering its option
	// as a daemon without it does (ENOPROTOOPT): every member uses a
	// socket.
	NoFastPath bool
}

// ErrRunning reports that another daemon already serves the socket.
var ErrRunning = errors.New("a daemon is already running")

// server is a running daemon.
type server struct {
	cfg    Config
	log    *slog.Logger
	engine *engine.Engine
	ln     *net.UnixListener

	mu       sync.Mutex
	sessions map[*session]struct{} // guarded by mu
	idle     *time.Timer           // guarded by mu; nil unless IdleExit
	wg       sync.WaitGroup
}

// Serve runs a daemon until ctx is done (or it has been idle for
// cfg.IdleExit), then closes every port and connection and returns.
func Serve(ctx context.Context, cfg Config) error {
	if cfg.Socket == "" {
		cfg.Socket = DefaultSocket()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	lock, err := lockDaemon(cfg.Socket)
	if err != nil {
		return err
	}
	defer lock.Close()
	ln, err := listen(cfg.Socket)
	if err != nil {
		return err
	}
	s := &server{
		cfg:      cfg,
		log:      cfg.Logger,
		engine:   engine.New(),
		ln:       ln,
		sessions: make(map[*session]struct{}),
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if cfg.IdleExit > 0 {
		s.idle = time.AfterFunc(cfg.IdleExit, cancel)
	}
	s.log.Info("serving", "socket", cfg.Socket, "pid", os.Getpid(), "uid", os.Geteuid())
	if cfg.Ready != nil {
		cfg.Ready()
	}
	acceptDone := make(chan struct{})
	go func() {
		defer close(acceptDone)
		s.acceptLoop()
	}()
	<-ctx.Done()
	s.log.Info("stopping")
	// Unlink first so that no new client reaches this daemon.
	os.Remove(cfg.Socket)
	ln.Close()
	<-acceptDone
	s.engine.Close()
	s.mu.Lock()
	for ss := range s.sessions {
		ss.conn.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

func (s *server) acceptLoop() {
	for {
		conn, err := s.ln.AcceptUnix()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.log.Error("accept", "err", err)
			}
			return
		}
		c, err := peerCred(conn)
		if err != nil {
			s.log.Warn("refusing client", "err", err)
			conn.Close()
			continue
		}
		ss := &session{srv: s, conn: conn, cred: c}
		s.mu.Lock()
		s.sessions[ss] = struct{}{}
		if s.idle != nil {
			s.idle.Stop()
		}
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			ss.serve()
			s.mu.Lock()
			delete(s.sessions, ss)
			if s.idle != nil && len(s.sessions) == 0 {
				s.idle.Reset(s.cfg.IdleExit)
			}
			s.mu.Unlock()
		}()
	}
}

// lockDaemon takes the lock that one daemon per socket holds while it runs.
func lockDaemon(socket string) (*os.File, error) {
	dir := filepath.Dir(socket)
	if err := os.MkdirAll(dir, dirMode()); err != nil {
		return nil, fmt.Errorf("daemon socket directory: %w", err)
	}
	f, err := os.OpenFile(socket+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("daemon lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s: %w", socket, ErrRunning)
		}
		return nil, fmt.Errorf("daemon lock: %w", err)
	}
	return f, nil
}

// dirMode is the mode of a socket directory the daemon makes: open to all
// for root's system daemon, private to the user otherwise.
func dirMode() os.FileMode {
	if os.Geteuid() == 0 {
		return 0o755
	}
	return 0o700
}

// listen opens the control socket, replacing a stale file left by a daemon
// that died (the caller holds the daemon lock, so no live daemon owns it).
func listen(path string) (*net.UnixListener, error) {
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		os.Remove(path)
	}
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(false)
	// Every user may reach a root daemon: access is checked per network.
	if os.Geteuid() == 0 {
		if err := os.Chmod(path, 0o666); err != nil {
			ln.Close()
			return nil, err
		}
	}
	return ln, nil
}

// fileID identifies a network file by device and inode.
type fileID struct {
	dev, ino uint64
}

// statFD returns the identity and status of the file behind an O_PATH fd,
// which must be a socket.
func statFD(fd int) (fileID, *unix.Stat_t, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fileID{}, nil, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return fileID{}, nil, fmt.Errorf("not a socket: %w", syscall.ECONNREFUSED)
	}
	return fileID{uint64(st.Dev), st.Ino}, &st, nil
}

// unlinkIf removes path if it still names the file id. The check and the
// removal happen in one directory opened without following a final
// symlink, so a renamed directory cannot redirect the removal.
func unlinkIf(path string, id fileID) {
	dir, err := unix.Open(filepath.Dir(path), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	defer unix.Close(dir)
	base := filepath.Base(path)
	var st unix.Stat_t
	if err := unix.Fstatat(dir, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return
	}
	if (fileID{uint64(st.Dev), st.Ino}) == id {
		unix.Unlinkat(dir, base, 0)
	}
}
