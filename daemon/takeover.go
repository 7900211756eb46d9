package daemon

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/endpoint"
	"github.com/ipn-project/ipn/engine"
	"github.com/ipn-project/ipn/internal/perm"
	"github.com/ipn-project/ipn/internal/shmring"
	"github.com/ipn-project/ipn/internal/sockio"
	"github.com/ipn-project/ipn/internal/spec"
	"github.com/ipn-project/ipn/internal/wire"
	"github.com/ipn-project/ipn/policy"
	"github.com/ipn-project/ipn/port/grab"
	"github.com/ipn-project/ipn/port/seqpacket"
	"github.com/ipn-project/ipn/port/shm"
	"github.com/ipn-project/ipn/port/tap"
	"github.com/ipn-project/ipn/port/vde"
)

// A takeover hands a running daemon's whole state to a new daemon process
// (an upgrade) while members notice nothing: the old daemon stops its
// sessions between requests and its ports where they are (engine.Freeze),
// and passes every descriptor (control socket, lock, network files, each
// session's control connection, data sockets, rings, VDE clients' sockets,
// taps, grabs) with SCM_RIGHTS and its state as JSON (options, policies'
// tables, counters, queued messages, limits' accounts) over a Unix socket
// beside the control socket, SOCKET.takeover, that only the daemon's own
// user may reach (mode 0600; and the peers' credentials are checked both
// ways). The new daemon rebuilds it all, says it is ready, and starts only
// once the old one has let go; until then the old one can resume as if
// nothing happened, which it does if the new one fails or goes silent.
//
// The exchange, each a packet: new→old hello (JSON takeoverHello); old→new
// the descriptors, at most fdBatch a packet ('F'), then the state's JSON in
// pieces ('J'), then 'E'; new→old 'R' (ready) or 'X'+error; old→new 'G'
// (go: the old daemon has let go), after which the old daemon exits.

// takeoverFormat is the version of the state's format this build writes
// and reads.
const takeoverFormat = 1

// Limits of the exchange.
const (
	fdBatch         = 200       // descriptors per packet (the kernel takes 253)
	jsonChunk       = 32 << 10  // bytes of state per packet
	maxTakeoverJSON = 256 << 20 // the most state a new daemon accepts
	freezeTimeout   = 5 * time.Second
	takeoverTimeout = 30 * time.Second
)

// TakeoverSocket returns the path of the hand-over socket of the daemon
// at socket.
func TakeoverSocket(socket string) string { return socket + ".takeover" }

type takeoverHello struct {
	Format int
	PID    int
	Build  string
}

// state is what a daemon hands over. Descriptors are indexes into the
// descriptors passed with it.
type state struct {
	Format   int
	Build    string
	Listener int
	Lock     int
	Networks []netState
	Sessions []sessionState
	Accounts map[uint32]usageState
	// Activated says Listener is systemd's (socket activation).
	Activated bool `json:",omitempty"`
}

type usageState struct {
	Networks, Ports, Conns int
	Shm, Memory            int64
}

type netState struct {
	Engine  engine.NetworkState
	File    int // the network file's O_PATH descriptor
	Creator uint32
	Memory  int64
	Log     *logState   `json:",omitempty"` // a hub's shared log
	Ports   []portState // beside Engine.Ports, one each
}

// logState is what makes a hub's shared log again.
type logState struct {
	FD     int // the log's memfd, open for writing
	Pos    shm.LogPos
	Memory int64 // charged to the network's creator
}

// portState is what makes a port's endpoint and its owner again.
type portState struct {
	Kind     string // see endpointOf
	FDs      []int
	Name     string        `json:",omitempty"` // a device's
	Sender   *unix.Ucred   `json:",omitempty"` // a VDE port's datagram credentials
	Lossless bool          `json:",omitempty"`
	Session  int           // the session whose port this is (member, VDE), or -1
	UID      uint32        // the user charged for it
	Shm      int64         `json:",omitempty"` // fast-path memory charged
	Status   int           // the member's status page's descriptor, or -1
	Ring     *shm.Position `json:",omitempty"` // a fast-path port's rings
	ReadsLog bool          `json:",omitempty"` // and it reads the network's log
	Device   *deviceState  `json:",omitempty"`
}

type deviceState struct {
	Maker   uint32
	Persist bool
	Owner   int // session index, or -1
}

type sessionState struct {
	Conn      int
	PID       int32
	Cred      perm.Cred
	Hello     bool
	Version   int
	Proto     policy.Tag
	NetCfg    engine.Config
	PortOpts  engine.PortOptions
	ShutRead  bool   `json:",omitempty"`
	ShutWrite bool   `json:",omitempty"`
	WantFast  bool   `json:",omitempty"`
	Holds     bool   `json:",omitempty"`
	Bound     int    // network index, or -1
	Paged     []byte `json:",omitempty"`
	PagedOp   uint16 `json:",omitempty"`
}

// listenTakeover opens the hand-over socket: made in a fresh directory
// only the daemon's user can enter, set to 0600 there, then moved beside
// the control socket, so that it is never reachable by anyone else.
func (s *server) listenTakeover() (*net.UnixListener, error) {
	path := TakeoverSocket(s.cfg.Socket)
	tmp, err := os.MkdirTemp(filepath.Dir(path), ".takeover-")
	if err != nil {
		return nil, fmt.Errorf("takeover socket: %w", err)
	}
	defer os.RemoveAll(tmp)
	at := filepath.Join(tmp, "s")
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: at, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("takeover socket: %w", err)
	}
	ln.SetUnlinkOnClose(false)
	if err = os.Chmod(at, 0o600); err == nil {
		err = os.Rename(at, path)
	}
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("takeover socket: %w", err)
	}
	return ln, nil
}

// serveTakeovers answers, one at a time, the daemons that come to take
// over, until ln is closed.
func (s *server) serveTakeovers(ln *net.UnixListener) {
	for {
		conn, err := ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			select {
			case <-s.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		c, err := peerCred(conn)
		if err == nil && c.UID != uint32(os.Geteuid()) {
			err = fmt.Errorf("uid %d may not take over uid %d's daemon: %w", c.UID, os.Geteuid(), syscall.EACCES)
		}
		if err != nil {
			s.log.Warn("refusing takeover", "from", c, "err", err)
			conn.Close()
			continue
		}
		if err := s.handOver(conn, c); err != nil {
			s.log.Warn("takeover failed; serving on", "by", c, "err", err)
			conn.Close()
			continue
		}
		conn.Close()
		ln.Close() // its file is the new daemon's now: not unlinked
		return     // handed over: the daemon is stopping
	}
}

// handOver gives everything to the daemon on conn, or, failing, resumes.
func (s *server) handOver(conn *net.UnixConn, by cred) error {
	s.handMu.Lock()
	defer s.handMu.Unlock()
	if s.stopping {
		return fmt.Errorf("the daemon is stopping: %w", syscall.ESHUTDOWN)
	}
	conn.SetDeadline(time.Now().Add(takeoverTimeout))
	buf := make([]byte, 4096)
	kind, body, _, err := recvPiece(conn, buf)
	if err != nil {
		return fmt.Errorf("takeover hello: %w", err)
	}
	if kind != 'H' {
		return fmt.Errorf("takeover: a %q packet, not a hello: %w", kind, syscall.EPROTO)
	}
	var hello takeoverHello
	if err := json.Unmarshal(body, &hello); err != nil {
		return fmt.Errorf("takeover hello: %w", err)
	}
	if hello.Format != takeoverFormat {
		err := fmt.Errorf("the new daemon reads state format %d, this one writes %d: %w", hello.Format, takeoverFormat, syscall.EPROTONOSUPPORT)
		sendPiece(conn, 'X', []byte(err.Error()))
		return err
	}
	s.log.Info("handing over", "to pid", hello.PID, "build", hello.Build)
	t0 := time.Now()
	frozen, err := s.freeze()
	if err != nil {
		sendPiece(conn, 'X', []byte(err.Error()))
		return err
	}
	st, fds, err := s.save(frozen.engine)
	if err == nil {
		err = sendState(conn, st, fds)
	}
	closeFDs(fds)
	if err == nil {
		conn.SetDeadline(time.Now().Add(takeoverTimeout)) // for its restore
		kind, body, _, err = recvPiece(conn, buf)
		switch {
		case err != nil:
			err = fmt.Errorf("the new daemon went away before it was ready: %w", err)
		case kind != 'R':
			err = fmt.Errorf("the new daemon failed: %s", body)
		}
	}
	if err == nil {
		// The new daemon starts once it reads this; if it cannot, it
		// is gone, and this one serves on.
		if err = sendPiece(conn, 'G', nil); err != nil {
			err = fmt.Errorf("the new daemon went away when it was ready: %w", err)
		}
	}
	if err != nil {
		// Said before resuming: a new daemon that reads it never
		// serves what it got (without it, it serves only once this one
		// is gone).
		sendPiece(conn, 'X', []byte(err.Error()))
		s.thaw(frozen)
		return err
	}
	close(s.handed) // everything is the new daemon's
	s.log.Info("handed over", "to pid", hello.PID, "networks", len(st.Networks), "sessions", len(st.Sessions), "took", time.Since(t0).Round(time.Microsecond))
	return nil
}

// frozenServer is a server stopped for a hand-over.
type frozenServer struct {
	engine   *engine.Frozen
	sessions []*session
}

// freeze stops accepting, every session between two requests, then every
// port. A session whose client does not read its replies is dropped (its
// write fails): it cannot hold a takeover up.
func (s *server) freeze() (*frozenServer, error) {
	s.mu.Lock()
	s.gate = make(chan struct{})
	s.mu.Unlock()
	select { // a token from a freeze that failed before the loop parked
	case <-s.parked:
	default:
	}
	s.ln.SetDeadline(sockio.Past)
	select {
	case <-s.parked:
	case <-time.After(freezeTimeout):
		return nil, s.unfreeze(nil, fmt.Errorf("the accept loop did not stop: %w", syscall.ETIMEDOUT))
	}
	s.mu.Lock()
	f := &frozenServer{}
	for ss := range s.sessions {
		f.sessions = append(f.sessions, ss)
	}
	s.mu.Unlock()
	// The engine marks its ports as pausing first: then a port's writer
	// whose out-of-band write to a session's connection fails at the
	// deadline below keeps the message, and stops.
	ef, err := s.engine.Freeze(freezeTimeout, func() error {
		// A reply or notice being written has a second to go out: a
		// client that does not read for that long loses its session (a
		// reply) or waits for the new daemon (a notice, kept).
		wdl := time.Now().Add(time.Second)
		for _, ss := range f.sessions {
			ss.frozen.Store(true)
			ss.conn.SetReadDeadline(sockio.Past)
			ss.conn.SetWriteDeadline(wdl)
		}
		t := time.NewTimer(freezeTimeout)
		defer t.Stop()
		for _, ss := range f.sessions {
			select {
			case <-ss.out:
			case <-t.C:
				return fmt.Errorf("session of %v did not stop between requests: %w", ss.cred, syscall.ETIMEDOUT)
			}
		}
		return nil
	}, func() { f.clearDeadlines() })
	if err != nil {
		return nil, s.unfreeze(f, err)
	}
	f.engine = ef
	return f, nil
}

// clearDeadlines takes the freeze's deadlines off the sessions'
// connections, before the ports resume: a port's writer that finds one
// there fails its notice, and its port leaves.
func (f *frozenServer) clearDeadlines() {
	for _, ss := range f.sessions {
		ss.conn.SetDeadline(time.Time{})
	}
}

// thaw resumes a frozen server where it stopped.
func (s *server) thaw(f *frozenServer) {
	f.clearDeadlines()
	f.engine.Thaw()
	s.unfreeze(f, nil)
}

// unfreeze restarts the sessions of f (nil: none were stopped) that are
// still the server's (one whose client went meanwhile is not), and the
// accept loop, and returns err.
func (s *server) unfreeze(f *frozenServer, err error) error {
	if f != nil {
		for _, ss := range f.sessions {
			// The deadline first: a session still serving must not see
			// it once it is no longer frozen (it would be dropped).
			ss.conn.SetDeadline(time.Time{})
			if !ss.thaw() {
				continue // it did not stop: it serves on
			}
			<-ss.out // its goroutine ends at once
			s.mu.Lock()
			_, ours := s.sessions[ss]
			s.mu.Unlock()
			if ours { // (a session whose client went is not)
				if !ss.hello {
					ss.conn.SetReadDeadline(time.Now().Add(s.cfg.HelloTimeout))
				}
				s.run(ss)
			}
		}
	}
	s.ln.SetDeadline(time.Time{})
	s.mu.Lock()
	close(s.gate)
	s.gate = nil
	s.mu.Unlock()
	return err
}

// save describes the frozen server and returns the descriptors the
// description indexes, which the caller closes.
func (s *server) save(ef *engine.Frozen) (*state, []int, error) {
	var fds []int
	fail := func(err error) (*state, []int, error) {
		closeFDs(fds)
		return nil, nil, err
	}
	add := func(fd int, err error) (int, error) {
		if err != nil {
			return -1, err
		}
		fds = append(fds, fd)
		return len(fds) - 1, nil
	}
	dupFD := func(fd int) (int, error) {
		return add(unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0))
	}
	st := &state{Format: takeoverFormat, Build: spec.Build(), Activated: s.activated, Accounts: map[uint32]usageState{}}
	rawLn, err := s.ln.SyscallConn()
	if err != nil {
		return fail(err)
	}
	if st.Listener, err = add(sockio.Dup(rawLn)); err != nil {
		return fail(err)
	}
	if st.Lock, err = dupFD(int(s.lock.Fd())); err != nil {
		return fail(err)
	}
	s.mu.Lock()
	sessions := make([]*session, 0, len(s.sessions))
	for ss := range s.sessions {
		sessions = append(sessions, ss)
	}
	s.mu.Unlock()
	sessionIdx := map[*session]int{}
	for i, ss := range sessions {
		sessionIdx[ss] = i
	}
	idx := func(ss *session) int {
		if i, ok := sessionIdx[ss]; ok && ss != nil {
			return i
		}
		return -1
	}
	nets, err := ef.Save()
	if err != nil {
		return fail(err)
	}
	netIdx := map[*engine.Network]int{}
	// Who is behind each port: a session's member port, a VDE client of a
	// session, or a device.
	owner := map[*engine.Port]*session{}
	for _, ss := range sessions {
		if ss.port != nil {
			owner[ss.port] = ss
		}
		for _, p := range ss.vde {
			owner[p] = ss
		}
	}
	s.devices.mu.Lock()
	defer s.devices.mu.Unlock()
	for _, ns := range nets {
		var nw *engine.Network
		for _, e := range s.engine.Networks() {
			if e.Key() == ns.Key {
				nw = e
			}
		}
		if nw == nil {
			continue
		}
		nf := netFileOf(nw)
		out := netState{Engine: ns, Creator: nf.creator}
		nf.mu.Lock()
		out.Memory = nf.memory
		lg, logMem := nf.log, nf.logMem
		nf.mu.Unlock()
		if out.File, err = dupFD(nf.fd); err != nil {
			return fail(err)
		}
		if lg != nil {
			i, err := dupFD(lg.FD())
			if err != nil {
				return fail(err)
			}
			out.Log = &logState{FD: i, Pos: lg.Pos(), Memory: logMem}
		}
		for _, ps := range ns.Ports {
			p := ps.Port
			pst := portState{Session: -1, Status: -1}
			ss := owner[p]
			switch ep := p.Endpoint().(type) {
			case *shm.Endpoint:
				pst.Kind, pst.Lossless = "shm", nw.Config().Flags&engine.Lossless != 0
				pos := ep.Position()
				pst.Ring = &pos
				dups, err := ep.DupFDs()
				if err != nil {
					return fail(err)
				}
				if pst.ReadsLog = ep.FanOut() != nil; pst.ReadsLog {
					// The log passes once, with its network.
					closeFDs(dups[wire.FastPathFDs:])
					dups = dups[:wire.FastPathFDs]
				}
				for _, d := range dups {
					i, _ := add(d, nil)
					pst.FDs = append(pst.FDs, i)
				}
			case *seqpacket.Endpoint, seqpacket.Lossy:
				pst.Kind = "seqpacket"
				var sp *seqpacket.Endpoint
				if l, ok := ep.(seqpacket.Lossy); ok {
					sp, pst.Kind = l.Endpoint, "seqpacket-lossy"
				} else {
					sp = ep.(*seqpacket.Endpoint)
				}
				raw, err := sp.Conn().SyscallConn()
				if err != nil {
					return fail(err)
				}
				i, err := add(sockio.Dup(raw))
				if err != nil {
					return fail(err)
				}
				pst.FDs = []int{i}
			case *vde.Endpoint:
				fd, sender, err := ep.Dup()
				i, err := add(fd, err)
				if err != nil {
					return fail(err)
				}
				pst.Kind, pst.FDs, pst.Sender = "vde", []int{i}, sender
			case *tap.Endpoint, *grab.Endpoint:
				var fd int
				var err error
				if t, ok := ep.(*tap.Endpoint); ok {
					pst.Kind = "tap"
					fd, err = t.Dup()
				} else {
					pst.Kind = "grab"
					fd, err = ep.(*grab.Endpoint).Dup()
				}
				i, err := add(fd, err)
				if err != nil {
					return fail(err)
				}
				pst.FDs = []int{i}
			default:
				return fail(fmt.Errorf("port %d of %s: an endpoint of type %T cannot be handed over: %w", p.Num(), nw.Name(), ep, syscall.EOPNOTSUPP))
			}
			if d := s.devices.byPort[p]; d != nil {
				pst.Name, pst.UID = d.key.name, d.maker
				pst.Device = &deviceState{Maker: d.maker, Persist: d.persist, Owner: idx(d.owner)}
			} else if ss != nil {
				pst.Session, pst.UID = idx(ss), ss.cred.UID
				if ss.fast != nil && ss.port == p {
					pst.Shm = int64(shmring.LayoutFor(nw.Config().MTU).Bytes())
				}
				if ss.status != nil && ss.port == p {
					fd := ss.status.FD()
					if fd < 0 {
						return fail(fmt.Errorf("status page of %v: %w", ss.cred, syscall.EMFILE))
					}
					pst.Status, _ = add(fd, nil)
				}
			}
			out.Ports = append(out.Ports, pst)
		}
		netIdx[nw] = len(st.Networks)
		st.Networks = append(st.Networks, out)
	}
	for _, ss := range sessions {
		raw, err := ss.conn.SyscallConn()
		if err != nil {
			return fail(err)
		}
		ci, err := add(sockio.Dup(raw))
		if err != nil {
			return fail(err)
		}
		sst := sessionState{
			Conn: ci, PID: ss.cred.pid, Cred: ss.cred.Cred, Hello: ss.hello, Version: ss.version, Proto: ss.proto,
			NetCfg: ss.netCfg, PortOpts: ss.portOpts, ShutRead: ss.shutRead, ShutWrite: ss.shutWrite,
			WantFast: ss.wantFast, Holds: ss.holds.Load(), Bound: -1, Paged: ss.paged, PagedOp: ss.pagedOp,
		}
		sst.NetCfg.OnDelete, sst.NetCfg.Data, sst.PortOpts.OnLeave = nil, nil, nil
		if ss.bound != nil {
			i, ok := netIdx[ss.bound]
			if !ok {
				return fail(fmt.Errorf("session of %v: its network %s is not frozen: %w", ss.cred, ss.bound.Name(), syscall.EINVAL))
			}
			sst.Bound = i
		}
		st.Sessions = append(st.Sessions, sst)
	}
	s.acct.mu.Lock()
	for uid, u := range s.acct.by {
		st.Accounts[uid] = usageState{u.networks, u.ports, u.conns, u.shm, u.memory}
	}
	s.acct.mu.Unlock()
	return st, fds, nil
}

// takeOver connects to the daemon serving cfg.Socket, takes everything it
// holds, and returns once this server may serve it: the caller then serves
// as if it had started there. If no daemon runs there, it returns errNone.
func (s *server) takeOver() error {
	path := TakeoverSocket(s.cfg.Socket)
	conn, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			if c, derr := net.Dial("unixpacket", s.cfg.Socket); derr == nil {
				c.Close()
				return fmt.Errorf("the daemon at %s answers but offers no takeover (an older build, before takeovers): stop it to replace it (its members lose their networks): %w", s.cfg.Socket, syscall.EPROTONOSUPPORT)
			}
			return errNone
		}
		return fmt.Errorf("take over %s: %w", s.cfg.Socket, err)
	}
	defer conn.Close()
	c, err := peerCred(conn)
	if err == nil && c.UID != uint32(os.Geteuid()) {
		err = fmt.Errorf("the takeover socket %s is uid %d's, not this daemon's user's (%d): %w", path, c.UID, os.Geteuid(), syscall.EACCES)
	}
	if err != nil {
		return err
	}
	conn.SetDeadline(time.Now().Add(takeoverTimeout))
	hello, _ := json.Marshal(takeoverHello{Format: takeoverFormat, PID: os.Getpid(), Build: spec.Build()})
	if err := sendPiece(conn, 'H', hello); err != nil {
		return fmt.Errorf("take over %s: %w", s.cfg.Socket, err)
	}
	st, fds, err := recvState(conn)
	if err != nil {
		return fmt.Errorf("take over %s: %w", s.cfg.Socket, err)
	}
	start, err := s.restore(st, fds)
	if err != nil {
		// Nothing has started: the old daemon resumes; our copies go.
		closeFDs(fds)
		sendPiece(conn, 'X', []byte(err.Error()))
		return fmt.Errorf("take over %s: %w", s.cfg.Socket, err)
	}
	conn.SetDeadline(time.Now().Add(takeoverTimeout)) // restoring took its time
	if err := sendPiece(conn, 'R', nil); err != nil {
		closeFDs(fds)
		return fmt.Errorf("take over %s: %w", s.cfg.Socket, err)
	}
	buf := make([]byte, 64)
	kind, body, _, err := recvPiece(conn, buf)
	switch {
	case err == nil && kind == 'X':
		closeFDs(fds)
		return fmt.Errorf("take over %s: the old daemon resumed: %s: %w", s.cfg.Socket, body, syscall.ECANCELED)
	case err != nil || kind != 'G':
		// No word: if the old daemon is gone (it died after it read
		// ready), no one else serves: this one does.
		if !waitGone(c.pid, freezeTimeout) {
			closeFDs(fds)
			return fmt.Errorf("take over %s: the old daemon did not let go: %v: %w", s.cfg.Socket, err, syscall.EPROTO)
		}
		s.log.Warn("the old daemon died before it let go; serving what it handed over", "pid", c.pid)
	}
	start()
	closeFDs(fds) // what was made of them holds its own copies
	s.log.Info("took over", "from pid", c.pid, "build", st.Build, "networks", len(st.Networks), "sessions", len(st.Sessions))
	return nil
}

// processGone reports whether the process pid has exited (or was never
// this daemon's user's to signal).
func processGone(pid int32) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(int(pid), 0)
	if err == nil {
		// A zombie is gone too: its descriptors are closed.
		b, rerr := os.ReadFile("/proc/" + strconv.Itoa(int(pid)) + "/stat")
		if rerr != nil {
			return true
		}
		if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) {
			return b[i+2] == 'Z' || b[i+2] == 'X'
		}
		return false
	}
	return errors.Is(err, syscall.ESRCH)
}

// waitGone waits, up to d, for the process pid to be gone.
func waitGone(pid int32, d time.Duration) bool {
	for t0 := time.Now(); !processGone(pid); time.Sleep(10 * time.Millisecond) {
		if time.Since(t0) > d {
			return false
		}
	}
	return true
}

// errNone says there was no daemon to take over.
var errNone = errors.New("no daemon to take over")

// restore rebuilds st, whose descriptors are fds, in this server, starting
// nothing; the returned func starts it all. On error the caller closes fds
// (restore has closed nothing of them, and told no member anything).
func (s *server) restore(st *state, fds []int) (start func(), err error) {
	if st.Format != takeoverFormat {
		return nil, fmt.Errorf("state format %d: %w", st.Format, syscall.EPROTONOSUPPORT)
	}
	// take returns a descriptor of fds as this server's own: a dup, so that
	// the caller's copies can all be closed whatever happens.
	take := func(i int) (int, error) {
		if i < 0 || i >= len(fds) {
			return -1, fmt.Errorf("descriptor %d of %d: %w", i, len(fds), syscall.EINVAL)
		}
		return unix.FcntlInt(uintptr(fds[i]), unix.F_DUPFD_CLOEXEC, 0)
	}
	var undo []func() // run on failure, latest first
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	takeFile := func(i int, name string) (*os.File, error) {
		fd, err := take(i)
		if err != nil {
			return nil, err
		}
		return os.NewFile(uintptr(fd), name), nil
	}
	conn := func(i int, name string) (*net.UnixConn, error) {
		f, err := takeFile(i, name)
		if err != nil {
			return nil, err
		}
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			return nil, err
		}
		uc, ok := c.(*net.UnixConn)
		if !ok {
			c.Close()
			return nil, fmt.Errorf("%s is not a Unix socket: %w", name, syscall.EINVAL)
		}
		undo = append(undo, func() { uc.Close() })
		return uc, nil
	}
	lf, err := takeFile(st.Lock, "ipn daemon lock")
	if err != nil {
		return nil, err
	}
	undo = append(undo, func() { lf.Close() })
	lnf, err := takeFile(st.Listener, "ipn control socket")
	if err != nil {
		return nil, err
	}
	fl, err := net.FileListener(lnf)
	lnf.Close()
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	ln, ok := fl.(*net.UnixListener)
	if !ok {
		fl.Close()
		return nil, fmt.Errorf("control socket is not a Unix socket: %w", syscall.EINVAL)
	}
	ln.SetUnlinkOnClose(false)
	undo = append(undo, func() { ln.Close() })

	sessions := make([]*session, len(st.Sessions))
	for i, sst := range st.Sessions {
		c, err := conn(sst.Conn, "ipn control connection")
		if err != nil {
			return nil, err
		}
		ss := &session{srv: s, conn: c, cred: cred{pid: sst.PID, Cred: sst.Cred},
			hello: sst.Hello, version: sst.Version, proto: sst.Proto, netCfg: sst.NetCfg, portOpts: sst.PortOpts,
			shutRead: sst.ShutRead, shutWrite: sst.ShutWrite, wantFast: sst.WantFast,
			paged: sst.Paged, pagedOp: sst.PagedOp}
		ss.holds.Store(sst.Holds)
		sessions[i] = ss
	}
	sessionAt := func(i int) *session {
		if i < 0 || i >= len(sessions) {
			return nil
		}
		return sessions[i]
	}
	var starts []func()
	// Sessions whose port could not be made again go, as if their client
	// had left, and what their lost ports held is given back.
	dropped := map[*session]bool{}
	type usageOf struct {
		uid uint32
		u   usage
	}
	var gone []usageOf
	type devRestore struct {
		d   *devPort
		num int
		net *engine.Network
	}
	var devs []devRestore
	nets := make([]*engine.Network, len(st.Networks))
	for ni := range st.Networks {
		ns := &st.Networks[ni]
		if len(ns.Ports) != len(ns.Engine.Ports) {
			return nil, fmt.Errorf("network %d: %d ports described, %d saved: %w", ni, len(ns.Ports), len(ns.Engine.Ports), syscall.EINVAL)
		}
		ffd, err := take(ns.File)
		if err != nil {
			return nil, err
		}
		id, _, err := statNetFile(ffd)
		if err != nil {
			unix.Close(ffd)
			return nil, err
		}
		nf := &netFile{fd: ffd, id: id, creator: ns.Creator, memory: ns.Memory}
		cfg := ns.Engine.Config
		if ns.Log != nil {
			lfd, err := take(ns.Log.FD)
			if err == nil {
				nf.log, err = shm.AdoptLog(lfd, cfg.MTU, ns.Log.Pos)
			}
			if err != nil {
				nf.close()
				return nil, fmt.Errorf("network %s: shared log: %w", cfg.Name, err)
			}
			nf.logMem = ns.Log.Memory
		}
		cfg.Data = nf
		acct := s.acct
		cfg.OnDelete = func() {
			nf.mu.Lock()
			acct.give(nf.creator, usage{networks: 1, memory: nf.memory})
			nf.mu.Unlock()
			nf.closeLog(acct)
			nf.close()
		}
		ns.Engine.Config = cfg
		ns.Engine.Key = id
		var owners []*session
		for pi := 0; pi < len(ns.Ports); pi++ {
			ps := &ns.Ports[pi]
			ep, ss, err := s.endpointOf(ps, cfg.MTU, sessionAt, take)
			if err != nil {
				// One member's port (whose rings it spoilt, say) does not
				// stop the takeover: it goes, with its session.
				num := ns.Engine.Ports[pi].Num
				s.log.Warn("a port could not be taken over; it goes", "network", cfg.Name, "port", num, "err", err)
				if ss := sessionAt(ps.Session); ss != nil {
					dropped[ss] = true
				}
				gone = append(gone, usageOf{ps.UID, usage{ports: 1, shm: ps.Shm}})
				ns.Ports = slices.Delete(ns.Ports, pi, pi+1)
				ns.Engine.Ports = slices.Delete(ns.Engine.Ports, pi, pi+1)
				pi--
				continue
			}
			if e, ok := ep.(*shm.Endpoint); ok {
				if ps.ReadsLog && nf.log != nil {
					e.ReadLog(nf.log, true) // where the member is in it
				}
				e.SetPort(ns.Engine.Ports[pi].Num)
			}
			ns.Engine.Ports[pi].Endpoint = ep
			uid, charge := ps.UID, usage{ports: 1, shm: ps.Shm}
			if ps.Device != nil {
				eps := &ns.Engine.Ports[pi]
				d := &devPort{key: devKey{name: ps.Name}, maker: ps.Device.Maker, persist: ps.Device.Persist, owner: sessionAt(ps.Device.Owner),
					kind: wire.DevTap, noRead: !eps.CanRead, noWrite: !eps.CanWrite}
				if ps.Kind == "grab" {
					d.kind = wire.DevGrab
				}
				if d.persist && len(ps.FDs) > 0 && ps.FDs[0] >= 0 && ps.FDs[0] < len(fds) {
					// The descriptors the holder gets (restoreHeld
					// puts it there if it does not hold it yet).
					if d.hfds, err = dupFDs(fds[ps.FDs[0]], ffd); err != nil {
						return nil, err
					}
				}
				ds := &s.devices
				ns.Engine.Ports[pi].Options.OnLeave = func() {
					acct.give(uid, charge)
					ds.forget(d)
				}
				devs = append(devs, devRestore{d: d, num: ns.Engine.Ports[pi].Num})
			} else {
				var page *statusPage
				if ps.Status >= 0 {
					fd, err := take(ps.Status)
					if err == nil {
						page, err = adoptStatusPage(fd)
					}
					if err != nil {
						return nil, fmt.Errorf("network %s port %d: %w", cfg.Name, ns.Engine.Ports[pi].Num, err)
					}
					ns.Engine.Ports[pi].Done = page.Done
					if ss != nil {
						ss.status = page
					}
				}
				ns.Engine.Ports[pi].Options.OnLeave = func() {
					acct.give(uid, charge)
					if page != nil {
						page.leave()
					}
				}
			}
			owners = append(owners, ss)
		}
		n, startNet, err := s.engine.Restore(&ns.Engine)
		if err != nil {
			nf.close()
			return nil, err
		}
		undo = append(undo, n.Discard)
		nets[ni] = n
		starts = append(starts, startNet)
		ports := map[int]*engine.Port{}
		for _, p := range n.Ports() {
			ports[p.Num()] = p
		}
		for pi, ss := range owners {
			ps := &ns.Ports[pi]
			p := ports[ns.Engine.Ports[pi].Num]
			switch {
			case ps.Device != nil:
			case ss == nil:
			case ps.Kind == "vde":
				if ss.vde == nil {
					ss.vde = map[int]*engine.Port{}
				}
				ss.vde[p.Num()] = p
			default:
				ss.port = p
				if ss.status != nil {
					ss.status.attach(p)
				}
			}
		}
		for i := range devs {
			if devs[i].net == nil {
				devs[i].net = n
				devs[i].d.key.net = n
				devs[i].d.port = ports[devs[i].num]
			}
		}
	}
	// Each bound session holds a reference; the first takes Restore's.
	held := make([]bool, len(nets))
	for i, sst := range st.Sessions {
		if sst.Bound < 0 {
			continue
		}
		if sst.Bound >= len(nets) {
			return nil, fmt.Errorf("session %d bound to network %d of %d: %w", i, sst.Bound, len(nets), syscall.EINVAL)
		}
		n := nets[sst.Bound]
		if held[sst.Bound] {
			if _, err := s.engine.Acquire(n.Key()); err != nil {
				return nil, err
			}
		}
		held[sst.Bound] = true
		sessions[i].bound = n
	}
	return func() {
		s.ln, s.lock, s.activated = ln, lf, st.Activated
		s.acct.mu.Lock()
		for uid, u := range st.Accounts {
			s.acct.by[uid] = &usage{u.Networks, u.Ports, u.Conns, u.Shm, u.Memory}
		}
		s.acct.mu.Unlock()
		s.devices.mu.Lock()
		for _, dr := range devs {
			s.devices.byKey[dr.d.key], s.devices.byPort[dr.d.port] = dr.d, dr.d
		}
		s.devices.mu.Unlock()
		for i, n := range nets {
			if !held[i] {
				n.Release() // its ports hold it
			}
		}
		for _, f := range starts {
			f()
		}
		for _, g := range gone {
			s.acct.give(g.uid, g.u)
		}
		for _, ss := range sessions {
			s.mu.Lock()
			s.sessions[ss] = struct{}{}
			s.mu.Unlock()
			if dropped[ss] {
				ss.conn.CloseRead() // serve ends at once, releasing the rest
			}
			s.run(ss)
		}
	}, nil
}

// endpointOf makes the endpoint a saved port had, on descriptors taken
// with take, and returns it with the session it belongs to.
func (s *server) endpointOf(ps *portState, mtu int, sessionAt func(int) *session, take func(int) (int, error)) (ep endpoint.Endpoint, ss *session, err error) {
	ss = sessionAt(ps.Session)
	fdAt := func(k int) (int, error) {
		if k >= len(ps.FDs) {
			return -1, fmt.Errorf("%s port: descriptor %d missing: %w", ps.Kind, k, syscall.EINVAL)
		}
		return take(ps.FDs[k])
	}
	oob := func([]byte) error { return nil }
	if ss != nil {
		oob = ss.sendOOB
	}
	switch ps.Kind {
	case "shm":
		var mine []int
		for k := range ps.FDs {
			fd, err := fdAt(k)
			if err != nil {
				closeFDs(mine)
				return nil, nil, err
			}
			mine = append(mine, fd)
		}
		if ps.Ring == nil {
			closeFDs(mine)
			return nil, nil, fmt.Errorf("shm port without its position: %w", syscall.EINVAL)
		}
		e, err := shm.Adopt(mine, *ps.Ring, ps.Lossless, oob)
		if err != nil {
			return nil, nil, err
		}
		if ss != nil {
			ss.fast = e
		}
		return e, ss, nil
	case "seqpacket", "seqpacket-lossy", "vde":
		fd, err := fdAt(0)
		if err != nil {
			return nil, nil, err
		}
		f := os.NewFile(uintptr(fd), ps.Kind)
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			return nil, nil, err
		}
		uc, ok := c.(*net.UnixConn)
		if !ok {
			c.Close()
			return nil, nil, fmt.Errorf("%s port: not a Unix socket: %w", ps.Kind, syscall.EINVAL)
		}
		if ps.Kind == "vde" {
			e, err := vde.New(uc, ps.Sender)
			if err != nil {
				uc.Close()
			}
			return e, ss, err
		}
		sp := seqpacket.NewFor(uc, oob, mtu) // fragments on a network of them
		if ss != nil {
			ss.data = uc
		}
		if ps.Kind == "seqpacket-lossy" {
			return seqpacket.Lossy{Endpoint: sp}, ss, nil
		}
		return sp, ss, nil
	case "tap", "grab":
		fd, err := fdAt(0)
		if err != nil {
			return nil, nil, err
		}
		if ps.Kind == "tap" {
			e, err := tap.New(fd, ps.Name)
			return e, ss, err
		}
		e, err := grab.New(fd, ps.Name)
		return e, ss, err
	}
	return nil, nil, fmt.Errorf("port kind %q: %w", ps.Kind, syscall.EINVAL)
}

// sendPiece sends one packet of the exchange, with descriptors.
func sendPiece(conn *net.UnixConn, kind byte, body []byte, fds ...int) error {
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	_, _, err := conn.WriteMsgUnix(append([]byte{kind}, body...), oob, nil)
	return err
}

// recvPiece reads one packet of the exchange into buf.
func recvPiece(conn *net.UnixConn, buf []byte) (kind byte, body []byte, fds []int, err error) {
	oob := make([]byte, unix.CmsgSpace(fdBatch*4))
	n, oobn, flags, _, err := conn.ReadMsgUnix(buf, oob)
	if oobn > 0 {
		msgs, perr := unix.ParseSocketControlMessage(oob[:oobn])
		if perr == nil {
			for _, m := range msgs {
				if got, err := unix.ParseUnixRights(&m); err == nil {
					fds = append(fds, got...)
				}
			}
		}
	}
	if err == nil && (flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 || n == 0) {
		err = fmt.Errorf("takeover packet truncated or empty: %w", syscall.EPROTO)
	}
	if err != nil {
		closeFDs(fds)
		return 0, nil, nil, err
	}
	return buf[0], buf[1:n], fds, nil
}

// sendState sends st and its descriptors.
func sendState(conn *net.UnixConn, st *state, fds []int) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	for len(fds) > 0 {
		k := min(len(fds), fdBatch)
		if err := sendPiece(conn, 'F', nil, fds[:k]...); err != nil {
			return err
		}
		fds = fds[k:]
	}
	for len(b) > 0 {
		k := min(len(b), jsonChunk)
		if err := sendPiece(conn, 'J', b[:k]); err != nil {
			return err
		}
		b = b[k:]
	}
	return sendPiece(conn, 'E', nil)
}

// recvState reads what sendState sent; on error it has closed the
// descriptors it got.
func recvState(conn *net.UnixConn) (*state, []int, error) {
	buf := make([]byte, jsonChunk+64)
	var fds []int
	var b []byte
	for {
		kind, body, got, err := recvPiece(conn, buf)
		fds = append(fds, got...)
		if err == nil && len(got) > 0 && kind != 'F' {
			err = fmt.Errorf("descriptors with a %q packet: %w", kind, syscall.EPROTO)
		}
		if err == nil && kind == 'X' {
			err = fmt.Errorf("the old daemon refused: %s", body)
		}
		if err == nil && len(b)+len(body) > maxTakeoverJSON {
			err = fmt.Errorf("state over %d bytes: %w", maxTakeoverJSON, syscall.EMSGSIZE)
		}
		if err != nil {
			closeFDs(fds)
			return nil, nil, err
		}
		switch kind {
		case 'F':
		case 'J':
			b = append(b, body...)
		case 'E':
			var st state
			if err := json.Unmarshal(b, &st); err != nil {
				closeFDs(fds)
				return nil, nil, fmt.Errorf("state: %w", err)
			}
			return &st, fds, nil
		default:
			closeFDs(fds)
			return nil, nil, fmt.Errorf("takeover packet %q: %w", kind, syscall.EPROTO)
		}
	}
}

// abandon lets go of every descriptor and mapping of a daemon that handed
// everything over, telling no member anything: the new daemon has its own
// copies (closing these is seen by no one), and the rings are not marked
// closed. Nothing of this server runs any more.
func (s *server) abandon() {
	s.devices.detachHolder()
	for _, n := range s.engine.Networks() {
		for _, p := range n.Ports() {
			if a, ok := p.Endpoint().(interface{ Abandon() }); ok {
				a.Abandon()
			} else {
				p.Endpoint().Close()
			}
		}
		netFileOf(n).close()
	}
	s.mu.Lock()
	for ss := range s.sessions {
		ss.conn.Close()
		if ss.status != nil {
			ss.status.Close()
		}
	}
	s.mu.Unlock()
	s.ln.Close()
}
