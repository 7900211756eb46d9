package ipn

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/internal/wire"
)

// Crash recovery: a socket with SetRejoin re-joins by itself when its
// daemon goes away (docs/reliability.md). One goroutine per such
// socket, rejoinLoop, waits for the control connection to end, retires
// the data path (counting what it lost), then dials a daemon again,
// replays the socket's state, and puts the new connection and data path
// in place; Send and Recv wait meanwhile. Close stops it.

// Rejoin is a step of a socket's re-join after its daemon went away.
type Rejoin struct {
	// Rejoined is false when the daemon has just gone and the socket
	// begins to re-join, true once it has.
	Rejoined bool
	// Daemon is the control socket of the daemon that went away.
	Daemon string
	// Err says how it went (an error wrapping ECONNRESET).
	Err error
	// Port is the socket's port number once re-joined (-1 if it is not
	// connected).
	Port int
	// Lost is how many of the messages Send accepted before the daemon
	// went away it never finished with (delivered or dropped); LostKnown
	// is false if the daemon kept no count (an older daemon).
	Lost      uint64
	LostKnown bool
	// Sent is how many messages Send accepted on the connection to the
	// daemon that went away (since it connected): Lost of them were lost.
	Sent uint64
	// Took is the time from losing the daemon to re-joining.
	Took time.Duration
}

// rejoinState is a socket's re-join: what it replays and its progress.
// Its fields are guarded by Socket.mu, but mu and wg.
type rejoinState struct {
	// mu is the state lock: a call that changes what a re-join replays
	// (an option, a shutdown, Bind, Connect) holds it from its request
	// to its record (stateCall), and a re-join for each attempt.
	mu sync.Mutex
	wg sync.WaitGroup // the re-join goroutine

	on      bool
	notify  func(Rejoin)
	stateCh chan struct{} // closed and replaced by bump
	// drain holds the data paths of daemons gone, which Recv reads to
	// their end before the new one.
	drain  []dataPath
	status *statusView // the current data path's status page, or nil
	lost   uint64      // messages lost with daemons gone, counted
	// unknown: a daemon went away that kept no count of what it lost.
	unknown  bool
	opts     []optVal // the options set, in order, the last of each
	wantPort int      // SetPort's, -1 any
	netProto Protocol // the network's protocol, once known
	connFD   int      // a dup of ConnectFile's file, or -1
}

type optVal struct {
	opt uint32
	val []byte
}

func (r *rejoinState) init() {
	r.stateCh = make(chan struct{})
	r.wantPort = -1
	r.connFD = -1
}

// release frees what the re-join kept, once the socket is closed.
func (r *rejoinState) release() {
	if r.status != nil {
		r.status.close()
		r.status = nil
	}
	if r.connFD >= 0 {
		unix.Close(r.connFD)
		r.connFD = -1
	}
}

// errRejoining is sendCheck's while the socket re-joins.
var errRejoining = errors.New("re-joining")

// SetRejoin makes the socket, before Bind or Connect, re-join by itself when its daemon goes away (see docs/reliability.md).
func (s *Socket) SetRejoin(on bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.bound || s.connected:
		return s.opErrorLocked("setrejoin", syscall.EISCONN)
	case s.isClosing():
		return s.opErrorLocked("setrejoin", net.ErrClosed)
	}
	if on && !s.rj.on {
		s.rj.wg.Add(1)
		go s.rejoinLoop()
	}
	s.rj.on = on
	return nil
}

// OnRejoin sets f to be told each step of a re-join (SetRejoin); f runs on the re-joining goroutine and should not block.
func (s *Socket) OnRejoin(f func(Rejoin)) {
	s.mu.Lock()
	s.rj.notify = f
	s.mu.Unlock()
}

// Lost returns how many messages Send accepted that a daemon which went away never delivered (cumulative), and false if a daemon kept no count.
func (s *Socket) Lost() (n uint64, known bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, known = s.rj.lost, !s.rj.unknown
	if s.dp != nil && !ctlAlive(s.cc) { // gone, not yet retired
		m, k := s.curLostLocked()
		n, known = n+m, known && k
	}
	return n, known
}

// curLostLocked returns how many messages the current data path accepted
// that its daemon did not finish with: exact once the daemon is gone. The
// caller holds mu.
func (s *Socket) curLostLocked() (uint64, bool) {
	sent := s.sent.Load()
	if sent == 0 {
		return 0, true
	}
	if s.rj.status == nil {
		return 0, false
	}
	done := s.rj.status.done()
	if done >= sent {
		return 0, true
	}
	return sent - done, true
}

func (s *Socket) isClosing() bool {
	select {
	case <-s.closing:
		return true
	default:
		return false
	}
}

// bump wakes whoever waits on the socket's re-join state or deadlines.
func (s *Socket) bump() {
	s.mu.Lock()
	close(s.rj.stateCh)
	s.rj.stateCh = make(chan struct{})
	s.mu.Unlock()
}

// rejoinAfter reports whether a request on cc that failed should be made
// again: cc ended with its daemon, and the socket re-joins.
func (s *Socket) rejoinAfter(cc *ctlConn) bool {
	if ctlAlive(cc) || s.isClosing() {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.done:
		return false
	default:
	}
	return s.rj.on && cc.hung == nil
}

// waitConn returns the control connection for a request: while the socket
// re-joins, the new one once it has, waiting up to the request timeout.
func (s *Socket) waitConn() (*ctlConn, error) {
	var timeout <-chan time.Time
	for {
		s.mu.Lock()
		cc, on, ch := s.cc, s.rj.on, s.rj.stateCh
		s.mu.Unlock()
		if !on || ctlAlive(cc) || !s.rejoinAfter(cc) {
			return cc, nil // the request says what went wrong
		}
		if timeout == nil {
			t := time.NewTimer(s.reqTimeout)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case <-ch:
		case <-s.done:
		case <-s.closing:
			return nil, net.ErrClosed
		case <-timeout:
			return nil, fmt.Errorf("the ipn daemon went away and re-joining took over %v: %w", s.reqTimeout, syscall.ETIMEDOUT)
		}
	}
}

// stateCall runs call, which changes what a re-join replays, on the
// current control connection, holding the state lock from its request to
// its record; a call that failed because the daemon went away is made
// again once the socket has re-joined.
func (s *Socket) stateCall(call func(cc *ctlConn) error) error {
	for {
		cc, err := s.waitConn()
		if err != nil {
			return err
		}
		s.rj.mu.Lock()
		if s.conn() != cc {
			s.rj.mu.Unlock()
			continue
		}
		err = call(cc)
		s.rj.mu.Unlock()
		if err != nil && s.rejoinAfter(cc) {
			continue
		}
		return err
	}
}

// recordOpt notes an option set, for a re-join to replay. The caller holds
// the state lock.
func (s *Socket) recordOpt(opt uint32, val []byte) {
	switch opt {
	case wire.OptFastPath:
		return // Connect asks for it
	case wire.OptPort:
		s.mu.Lock()
		s.rj.wantPort = int(int32(binary.LittleEndian.Uint32(val)))
		s.mu.Unlock()
		return
	case wire.OptChangeNumNodes:
		opt = wire.OptNumNodes // the network to make again has that size
	}
	val = append([]byte(nil), val...)
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.rj.opts {
		if s.rj.opts[i].opt == opt {
			s.rj.opts[i].val = val
			return
		}
	}
	s.rj.opts = append(s.rj.opts, optVal{opt, val})
}

// learnNet records the shape of the network the socket bound at path (its
// MTU, ports, pool, flags and protocol), so that a re-join makes the very
// same one again, whoever made it first. The caller holds the state lock.
func (s *Socket) learnNet(cc *ctlConn, path string, fd int) {
	for _, opt := range []uint32{wire.OptMTU, wire.OptNumNodes, wire.OptMsgPoolSize, wire.OptFlags} {
		b, _, err := s.requestOn(cc, wire.OpGetOpt, wire.U32(opt))
		if err == nil && len(b) >= 4 {
			s.recordOpt(opt, b[:4])
		}
	}
	fds := []int{fd}
	all, err := s.paged(func(off uint32) ([]byte, error) {
		body, rfds, err := s.requestOn(cc, wire.OpList, wire.U32(off), fds...)
		closeFDs(rfds)
		fds = nil
		return body, err
	})
	var list []NetInfo
	if err == nil && json.Unmarshal(all, &list) == nil && len(list) == 1 && list[0].Tag != 0 {
		s.mu.Lock()
		s.rj.netProto = Protocol(list[0].Tag)
		s.mu.Unlock()
	}
}

// notify tells the OnRejoin function of a step.
func (s *Socket) notify(r Rejoin) {
	s.mu.Lock()
	f := s.rj.notify
	s.mu.Unlock()
	if f != nil {
		f(r)
	}
}

// rejoinLoop re-joins each time the control connection ends with its
// daemon, until Close, a daemon that hung (given up), or SetRejoin(false).
func (s *Socket) rejoinLoop() {
	defer s.rj.wg.Done()
	for {
		cc := s.conn()
		select {
		case <-cc.done:
		case <-s.closing:
			return
		}
		if s.isClosing() {
			return
		}
		s.mu.Lock()
		on, hung := s.rj.on, cc.hung
		s.mu.Unlock()
		why := s.lostDaemon(cc, cc.err)
		if !on || hung != nil {
			s.finish(why) // a daemon that hung is not asked again
			return
		}
		t0 := time.Now()
		sent, lost, known := s.retire()
		daemon := cc.c.RemoteAddr().String()
		cc.c.Close() // its reader has stopped: nothing reads it any more
		s.notify(Rejoin{Daemon: daemon, Err: why, Port: -1, Lost: lost, LostKnown: known, Sent: sent})
		port, err := s.rejoinRetry()
		if err != nil {
			return // closed
		}
		s.notify(Rejoin{Rejoined: true, Daemon: daemon, Err: why, Port: port, Lost: lost, LostKnown: known, Sent: sent, Took: time.Since(t0)})
		s.mu.Lock()
		v := s.vde
		s.mu.Unlock()
		if v != nil {
			v.rejoin()
		}
	}
}

// retire takes the data path of the daemon gone out of use and returns
// what it accepted and what it lost: the messages it accepted that the
// daemon did not finish with. Its messages still to read are kept for
// Recv.
func (s *Socket) retire() (sent, lost uint64, known bool) {
	s.gate.Lock() // no Send uses the data path now
	s.mu.Lock()
	sent = s.sent.Load()
	lost, known = s.curLostLocked()
	s.rj.lost += lost
	s.rj.unknown = s.rj.unknown || !known
	s.sent.Store(0)
	st := s.rj.status
	s.rj.status = nil
	dp := s.dp
	s.dp = nil
	var shut dataPath
	if dp != nil {
		if s.canRead && !s.shutRead {
			s.rj.drain = append(s.rj.drain, dp)
		} else {
			shut = dp
		}
	}
	s.mu.Unlock()
	s.gate.Unlock()
	if st != nil {
		st.close()
	}
	if shut != nil {
		shut.close()
	}
	s.bump()
	return sent, lost, known
}

// drained drops old, a data path of a daemon gone, once read to its end.
func (s *Socket) drained(old dataPath) {
	s.mu.Lock()
	found := false
	for i, d := range s.rj.drain {
		if d == old {
			s.rj.drain = append(s.rj.drain[:i:i], s.rj.drain[i+1:]...)
			found = true
			break
		}
	}
	s.mu.Unlock()
	if found {
		old.close()
	}
}

// Backoff of the re-join's attempts.
const (
	rejoinFirst = 20 * time.Millisecond
	rejoinMax   = 250 * time.Millisecond
)

// rejoinRetry re-joins, trying again after a short pause, until it has or
// the socket is closed; it returns the new port number.
func (s *Socket) rejoinRetry() (int, error) {
	wait := rejoinFirst
	for {
		port, err := s.rejoinOnce()
		if err == nil {
			return port, nil
		}
		t := time.NewTimer(wait)
		select {
		case <-s.closing:
			t.Stop()
			return -1, net.ErrClosed
		case <-t.C:
		}
		wait = min(wait*3/2, rejoinMax)
	}
}

// rejoinOnce dials a daemon, says hello, replays the options, binds and
// connects as the socket had, and puts the new connection in place.
func (s *Socket) rejoinOnce() (port int, err error) {
	if s.isClosing() {
		return -1, net.ErrClosed
	}
	c, err := s.dial()
	if err != nil {
		return -1, err
	}
	cc := newCtlConn(c)
	go s.readControl(cc)
	var dp dataPath
	var st *statusView
	defer func() {
		if err != nil {
			if dp != nil {
				dp.close()
			}
			if st != nil {
				st.close()
			}
			c.Close()
			<-cc.done
		}
	}()
	s.rj.mu.Lock()
	defer s.rj.mu.Unlock()
	s.mu.Lock()
	proto := s.proto
	if proto == Any && s.rj.netProto != Any {
		proto = s.rj.netProto // to make the network again, its own
	}
	opts := append([]optVal(nil), s.rj.opts...)
	shutRead, shutWrite := s.shutRead, s.shutWrite
	bound, connected, path, mode := s.bound, s.connected, s.path, s.mode
	oldPort, wantPort, wantFast, connFD := s.port, s.rj.wantPort, !s.fastOff, s.rj.connFD
	s.mu.Unlock()

	if err := s.hello(cc, proto); err != nil {
		return -1, err
	}
	for _, o := range opts {
		if _, _, err := s.requestOn(cc, wire.OpSetOpt, append(wire.U32(o.opt), o.val...)); err != nil {
			return -1, err
		}
	}
	var how uint32
	if shutRead {
		how |= wire.ShutRead
	}
	if shutWrite {
		how |= wire.ShutWrite
	}
	if how != 0 {
		if _, _, err := s.requestOn(cc, wire.OpShutdown, wire.U32(how)); err != nil {
			return -1, err
		}
	}
	var id fileID
	if bound {
		if id, err = s.bindAt(cc, path, mode); err != nil {
			return -1, err
		}
	}
	var rep wire.ConnectReply
	if connected {
		fd := -1
		if !bound {
			if connFD >= 0 {
				fd = connFD
			} else {
				if fd, err = unix.Open(path, unix.O_PATH|unix.O_CLOEXEC, 0); err != nil {
					return -1, err
				}
				defer unix.Close(fd)
				var stt unix.Stat_t
				if err = unix.Fstat(fd, &stt); err != nil {
					return -1, err
				}
				id = fileID{uint64(stt.Dev), stt.Ino}
			}
		}
		// The same port number, if no one took it meanwhile; then any
		// free one, unless SetPort asked for that one.
		want := oldPort
		for {
			if _, _, err = s.requestOn(cc, wire.OpSetOpt, append(wire.U32(wire.OptPort), wire.U32(uint32(int32(want)))...)); err != nil {
				return -1, err
			}
			dp, rep, st, err = s.dialData(cc, path, fd, wantFast)
			if err != nil && errors.Is(err, syscall.EADDRNOTAVAIL) && wantPort < 0 && want >= 0 {
				want = -1
				continue
			}
			if err != nil {
				return -1, err
			}
			break
		}
	}
	s.oobMu.Lock()
	s.mu.Lock()
	s.cc = cc
	port = s.port
	if id != (fileID{}) {
		s.file = id
	}
	if connected {
		s.dp, s.rj.status = dp, st
		s.port, s.mtu = int(rep.Port), int(rep.MTU)
		s.canRead, s.canWrite = rep.CanRead, rep.CanWrite
		s.rj.netProto = Protocol(rep.Proto)
		port = s.port
		dp.setWriteDeadline(s.wdl)
		if len(s.oobq) > 0 {
			dp.interrupt()
		}
	}
	s.mu.Unlock()
	s.oobMu.Unlock()
	s.bump()
	return port, nil
}

// waitRejoin waits, after the socket lost the daemon of cc, until it has
// re-joined (a new connection and data path), up to the write (write) or
// read deadline; a Recv also returns when there is something to read (a
// data path of a daemon gone, or an out-of-band message).
func (s *Socket) waitRejoin(cc *ctlConn, write bool) error {
	for {
		s.oobMu.Lock()
		rdl, tick, oob := s.rdl, s.ctlTick, len(s.oobq)+len(s.held) > 0
		s.oobMu.Unlock()
		s.mu.Lock()
		ready := s.cc != cc && s.dp != nil
		ch, dl, drain := s.rj.stateCh, s.wdl, len(s.rj.drain) > 0
		s.mu.Unlock()
		if !write {
			dl = rdl
			ready = ready || drain || oob
		}
		switch {
		case ready:
			return nil
		case s.isClosed():
			return net.ErrClosed
		}
		select {
		case <-s.done:
			if err := s.Err(); err != nil {
				return err
			}
		default:
		}
		var timeout <-chan time.Time
		if !dl.IsZero() {
			d := time.Until(dl)
			if d <= 0 {
				return os.ErrDeadlineExceeded
			}
			t := time.NewTimer(d)
			defer t.Stop()
			timeout = t.C
		}
		if write {
			tick = nil
		}
		select {
		case <-ch:
		case <-tick:
		case <-s.done:
		case <-s.closed:
		case <-timeout:
		}
	}
}

// afterLost waits, after a data path of cc ended, to learn why: without
// SetRejoin it returns the error that says the network is lost (or the
// port dropped); with it, it waits for the re-join.
func (s *Socket) afterLost(cc *ctlConn, write bool) error {
	s.mu.Lock()
	on := s.rj.on
	s.mu.Unlock()
	if !on {
		return s.lost(cc)
	}
	t := time.NewTimer(lostWait)
	defer t.Stop()
	select {
	case <-cc.done:
	case <-s.closed:
		return net.ErrClosed
	case <-t.C:
		return fmt.Errorf("the ipn daemon dropped this port: %w", syscall.ECONNRESET)
	}
	return s.waitRejoin(cc, write)
}

// statusView is the client's read-only mapping of its status page.
type statusView struct {
	mem []byte
	cnt *atomic.Uint64
}

// mapStatus maps the status page memfd fd read-only, taking ownership of
// fd.
func mapStatus(fd int) (*statusView, error) {
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("status page: %w", err)
	}
	if st.Size < wire.StatusPageSize {
		return nil, fmt.Errorf("status page of %d bytes: %w", st.Size, syscall.EPROTO)
	}
	mem, err := unix.Mmap(fd, 0, wire.StatusPageSize, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map status page: %w", err)
	}
	if binary.LittleEndian.Uint64(mem) != wire.StatusMagic {
		unix.Munmap(mem)
		return nil, fmt.Errorf("status page magic: %w", syscall.EPROTO)
	}
	return &statusView{mem: mem, cnt: (*atomic.Uint64)(unsafe.Pointer(&mem[wire.StatusDoneOffset]))}, nil
}

// done returns the count of messages the daemon has finished with.
func (v *statusView) done() uint64 { return v.cnt.Load() }

func (v *statusView) close() { unix.Munmap(v.mem) }

// plural says n things: "1 message", "12 messages".
func plural(n uint64, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// rejoinOn reports whether the socket re-joins (SetRejoin).
func (s *Socket) rejoinOn() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rj.on
}
