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
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/engine"
	"github.com/ipn-project/ipn/internal/ctlsock"
	"github.com/ipn-project/ipn/internal/throttle"
	"github.com/ipn-project/ipn/internal/wire"
	_ "github.com/ipn-project/ipn/policy/hub" // the built-in policy
)

// Config is how a daemon serves.
type Config struct {
	// Socket is the control socket's path; DefaultSocket() if empty.
	Socket string
	// IdleExit, if positive, stops the daemon after it has had no client
	// for that long.
	IdleExit time.Duration
	// Logger receives the daemon's log; slog.Default() if nil. Repeated
	// messages are rate-limited.
	Logger *slog.Logger
	// Ready, if set, is called once the control socket accepts clients.
	Ready func()
	// NoFastPath refuses the shared-memory fast path, answering its option
	// as a daemon without it does (ENOPROTOOPT): every member uses a
	// socket.
	NoFastPath bool
	// Limits bound each user (zero fields: DefaultLimits).
	Limits Limits
	// HelloTimeout is how long a new connection may take to say hello
	// before it is dropped; DefaultHelloTimeout if zero.
	HelloTimeout time.Duration
	// Takeover makes the daemon take over from the one serving Socket,
	// which hands it every network, port and member (see takeover.go),
	// or start afresh if none serves there.
	Takeover bool
	// MaxFiles, if positive, sets the daemon's descriptor limit
	// (RLIMIT_NOFILE); otherwise root's daemon takes as many as the
	// kernel allows a process.
	MaxFiles int
	// Metrics, if set, is where the daemon serves Prometheus metrics at
	// /metrics (metrics.go, docs/metrics.md): HOST:PORT on a loopback
	// address (any address with MetricsAny; port 0 picks one), or the
	// path of a Unix socket (it begins with "/"), of mode MetricsMode.
	Metrics string
	// MetricsAny allows a Metrics address that is not loopback.
	MetricsAny bool
	// MetricsMode is the mode of a Metrics Unix socket; DefaultMetricsMode
	// if zero.
	MetricsMode os.FileMode
	// MetricsReady, if set, is called with the address metrics are served
	// at once they are: after Ready, from a goroutine of the daemon's,
	// since the daemon accepts clients first and binds Metrics then,
	// trying again while it cannot (metrics.go, runMetrics).
	MetricsReady func(net.Addr)
}

// DefaultHelloTimeout is how long a connection may stay silent at first.
const DefaultHelloTimeout = 10 * time.Second

// ErrRunning reports that another daemon already serves the socket.
var ErrRunning = errors.New("a daemon is already running")

// server is a running daemon.
type server struct {
	cfg    Config
	log    *slog.Logger
	engine *engine.Engine
	ln     *net.UnixListener
	acct   *accounts
	stop   chan struct{} // closed when the daemon stops
	// refusing holds a slot per connection being refused with a reason.
	refusing chan struct{}

	mu       sync.Mutex
	sessions map[*session]struct{} // guarded by mu
	idle     *time.Timer           // guarded by mu; nil unless IdleExit
	wg       sync.WaitGroup

	// A takeover's (takeover.go): lock is the daemon lock's file; gate,
	// while not nil, parks the accept loop, which says so on parked;
	// handed is closed once another daemon owns everything.
	lock   *os.File
	gate   chan struct{} // guarded by mu
	parked chan struct{}
	handed chan struct{}
	// handMu makes a hand-over and the daemon's stop exclusive: each
	// holds it throughout; stopping, under it, refuses hand-overs.
	handMu   sync.Mutex
	stopping bool

	// activated says the control socket is systemd's (socket activation,
	// passed at start or handed over): its file stays when the daemon
	// stops, for systemd to start the next one on.
	activated bool

	devices devices
}

// newServer returns a server with no listener, for Serve and for tests.
func newServer(cfg Config) *server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.HelloTimeout <= 0 {
		cfg.HelloTimeout = DefaultHelloTimeout
	}
	return &server{
		cfg:      cfg,
		log:      slog.New(throttle.New(cfg.Logger.Handler(), throttle.DefaultBurst, throttle.DefaultEvery)),
		engine:   engine.New(),
		acct:     newAccounts(cfg.Limits),
		stop:     make(chan struct{}),
		refusing: make(chan struct{}, 64),
		sessions: make(map[*session]struct{}),
		devices:  newDevices(),
		parked:   make(chan struct{}, 1),
		handed:   make(chan struct{}),
	}
}

// Serve runs a daemon until ctx is done (or it has been idle for
// cfg.IdleExit), then closes every port and connection and returns.
func Serve(ctx context.Context, cfg Config) error {
	if cfg.Socket == "" {
		cfg.Socket = DefaultSocket()
	}
	if cfg.Metrics != "" {
		if err := checkMetrics(cfg); err != nil {
			return err
		}
	}
	s := newServer(cfg)
	// systemd's notify socket is this daemon's alone, not what it starts
	// (a holder).
	notify := os.Getenv("NOTIFY_SOCKET")
	os.Unsetenv("NOTIFY_SOCKET")
	passed, err := passedListener(cfg.Socket, s.log)
	if err != nil {
		return err
	}
	if err := setFileLimit(cfg.MaxFiles); err != nil {
		if passed != nil {
			passed.Close()
		}
		return err
	}
	took := false
	if cfg.Takeover {
		switch err := s.takeOver(); {
		case err == nil:
			took = true
		case errors.Is(err, errNone):
			s.log.Info("no daemon to take over; starting afresh", "socket", cfg.Socket)
		default:
			if passed != nil {
				passed.Close()
			}
			return err
		}
	}
	if took && passed != nil {
		// The old daemon's listener serves: it is the one clients reach.
		s.log.Warn("took over; closing the socket systemd passed", "socket", cfg.Socket)
		passed.Close()
	}
	if !took {
		lock, err := lockDaemon(cfg.Socket)
		if err != nil {
			if passed != nil {
				passed.Close()
			}
			return err
		}
		ln := passed
		if ln == nil {
			if ln, err = listen(cfg.Socket); err != nil {
				lock.Close()
				return err
			}
		} else {
			s.activated = true
		}
		s.ln, s.lock = ln, lock
	}
	defer s.lock.Close()
	ln := s.ln
	tln, err := s.listenTakeover()
	if err != nil {
		s.log.Warn("no takeovers", "err", err)
	} else {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serveTakeovers(tln)
		}()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if cfg.IdleExit > 0 {
		s.mu.Lock()
		s.idle = time.AfterFunc(cfg.IdleExit, cancel)
		if len(s.sessions) > 0 { // taken over: clients are here already
			s.idle.Stop()
		}
		s.mu.Unlock()
	}
	s.restoreHeld()
	if took {
		// Persistent device ports handed over that the holder does not
		// keep yet go there (a holder starts if need be).
		s.devices.resumeHolder()
	}
	idle := "never"
	if cfg.IdleExit > 0 {
		idle = cfg.IdleExit.String()
	}
	s.log.Info("serving", "socket", cfg.Socket, "pid", os.Getpid(), "uid", os.Geteuid(), "idle_exit", idle, "systemd_socket", s.activated)
	if cfg.Ready != nil {
		cfg.Ready()
	}
	if err := notifySystemd(notify); err != nil {
		s.log.Warn("cannot tell systemd the daemon is ready", "err", err)
	}
	acceptDone := make(chan struct{})
	go func() {
		defer close(acceptDone)
		s.acceptLoop()
	}()
	// Metrics come after the clients, and never keep them out: the
	// address may be another process's for now (metrics.go).
	stopMetrics := func() {}
	if cfg.Metrics != "" {
		mr := s.runMetrics(took)
		stopMetrics = mr.stop
		defer mr.stop()
	}
	select {
	case <-ctx.Done():
	case <-s.handed:
	}
	// A hand-over under way ends first; none starts after.
	s.handMu.Lock()
	s.stopping = true
	s.handMu.Unlock()
	select {
	case <-s.handed:
		// Everything is the new daemon's: this one lets its copies go,
		// telling no one anything, and the metrics address first, which
		// the new daemon waits for.
		stopMetrics()
		s.abandon()
		s.log.Info("exiting after the takeover")
		return nil
	default:
	}
	s.log.Info("stopping")
	close(s.stop)
	// Unlink first so that no new client reaches this daemon; systemd's
	// socket stays, and its clients wait for the daemon it starts next.
	s.unlinkSocket()
	ln.Close()
	stopMetrics()
	if tln != nil {
		os.Remove(TakeoverSocket(cfg.Socket))
		tln.Close()
	}
	<-acceptDone
	// A port's writer may be stuck writing a notice to a client that does
	// not read its control connection: it gets a moment, then fails, so
	// that its port can close.
	s.mu.Lock()
	for ss := range s.sessions {
		ss.conn.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	}
	s.mu.Unlock()
	s.engine.Close()
	s.mu.Lock()
	for ss := range s.sessions {
		// Every network ends: its members may remove its file.
		if ss.holds.Load() {
			ss.conn.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
			ss.send(wire.Packet(wire.OpEnded))
		}
		ss.conn.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

// unlinkSocket removes the control socket's file, unless it is systemd's
// (s.activated): that one stays, for the next daemon systemd starts.
func (s *server) unlinkSocket() {
	if !s.activated {
		os.Remove(s.cfg.Socket)
	}
}

// setFileLimit sets the descriptor limit to n, or, if n is 0, lets root's
// daemon open as many descriptors as the kernel allows a process, so that
// the per-user limits, not the descriptor table, bound what users hold.
func setFileLimit(n int) error {
	if n > 0 {
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: uint64(n), Max: uint64(n)}); err != nil {
			return fmt.Errorf("descriptor limit %d: %w", n, err)
		}
		return nil
	}
	raiseFileLimit()
	return nil
}

// raiseFileLimit raises root's descriptor limit to the kernel's most.
func raiseFileLimit() {
	if os.Geteuid() != 0 {
		return // Go has raised the soft limit to the hard one already
	}
	b, err := os.ReadFile("/proc/sys/fs/nr_open")
	if err != nil {
		return
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return
	}
	var cur unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &cur) == nil && cur.Max >= n {
		return
	}
	unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: n, Max: n})
}

// acceptLoop accepts clients until the listener is closed. Other errors,
// such as EMFILE and ENFILE when descriptors run out, are waited out with a
// growing pause: they never end the loop.
func (s *server) acceptLoop() {
	var pause time.Duration
	for {
		conn, err := s.ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.mu.Lock()
			gate := s.gate
			s.mu.Unlock()
			if gate != nil { // a takeover's freeze: wait until it is over
				s.parked <- struct{}{}
				select {
				case <-gate:
					continue
				case <-s.handed:
					return
				case <-s.stop:
					return
				}
			}
			pause = min(max(2*pause, 5*time.Millisecond), time.Second)
			s.log.Warn("accept failed; retrying", "err", err, "pause", pause)
			t := time.NewTimer(pause)
			select {
			case <-t.C:
			case <-s.stop:
				t.Stop()
				return
			}
			continue
		}
		pause = 0
		s.admit(conn)
	}
}

// admit starts a session for a new connection, or refuses it (with a
// reply that says why) if its user has too many.
func (s *server) admit(conn *net.UnixConn) {
	c, err := peerCred(conn)
	if err == nil && os.Geteuid() != 0 && c.UID != uint32(os.Geteuid()) {
		err = fmt.Errorf("this daemon serves uid %d only: %w", os.Geteuid(), syscall.EACCES)
	}
	if err == nil {
		err = s.acct.take(c.UID, usage{conns: 1})
	}
	if err != nil {
		s.log.Warn("refusing client", "client", c, "err", err)
		select {
		case s.refusing <- struct{}{}:
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				refuse(conn, err)
				<-s.refusing
			}()
		default:
			conn.Close() // too many at once to say why
		}
		return
	}
	ss := &session{srv: s, conn: conn, cred: c}
	s.mu.Lock()
	s.sessions[ss] = struct{}{}
	s.mu.Unlock()
	s.run(ss)
}

// run serves a session of s.sessions on a goroutine of its own, until the
// client goes (the session is then dropped, and its connection given back
// to its user's account) or a takeover's freeze stops it.
func (s *server) run(ss *session) {
	ss.out = make(chan struct{})
	s.mu.Lock()
	if s.idle != nil {
		s.idle.Stop()
	}
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(ss.out)
		if ss.serve() {
			return // frozen: it stays for a takeover, or resumes
		}
		s.acct.give(ss.cred.UID, usage{conns: 1})
		s.mu.Lock()
		delete(s.sessions, ss)
		if s.idle != nil && len(s.sessions) == 0 {
			s.idle.Reset(s.cfg.IdleExit)
		}
		s.mu.Unlock()
	}()
}

// refuse answers the first request on conn with err and closes it once
// the client has read the answer (or after a second): closed with the
// request unread, the connection would be reset before the answer is read.
func refuse(conn *net.UnixConn, err error) {
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 512)
	// read takes a packet, closing what descriptors came with it.
	read := func() error {
		_, fds, err := wire.Recv(conn, buf)
		closeFDs(fds)
		return err
	}
	if read() != nil || wire.Send(conn, wire.Reply(wire.OpHello, err)) != nil {
		return
	}
	conn.CloseWrite()
	for read() == nil {
	}
}

// lockDaemon takes the lock that one daemon per socket holds while it runs.
func lockDaemon(socket string) (*os.File, error) {
	if err := ctlsock.MakeDir(filepath.Dir(socket)); err != nil {
		return nil, err
	}
	f, err := ctlsock.OpenBeside(socket+".lock", os.O_RDWR)
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

// netFileOf returns the file of network n, which the daemon made.
func netFileOf(n *engine.Network) *netFile {
	return n.Config().Data.(*netFile)
}
