package daemon

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/endpoint"
	"github.com/ipn-project/ipn/engine"
	"github.com/ipn-project/ipn/internal/sockio"
	"github.com/ipn-project/ipn/internal/spec"
	"github.com/ipn-project/ipn/internal/wire"
	"github.com/ipn-project/ipn/policy"
	"github.com/ipn-project/ipn/port/seqpacket"
	"github.com/ipn-project/ipn/port/shm"
)

// session is one IPN socket of a client: its control connection, the
// options set on it, and the network it is bound or connected to.
type session struct {
	srv  *server
	conn *net.UnixConn
	cred cred

	wmu sync.Mutex // serializes writes on conn (replies and OOB events)
	// frozen stops serve between two requests, for a takeover; out is
	// closed when serve has returned (run). stopped, under fmu, says that
	// serve stopped for the freeze: whoever thaws serves it again.
	frozen  atomic.Bool
	out     chan struct{}
	fmu     sync.Mutex
	stopped bool
	// holds is set once the session is bound or connected: its network
	// ends if the daemon stops.
	holds atomic.Bool

	// The fields below belong to the serve goroutine.
	hello     bool
	version   int        // the protocol version the client said at hello
	proto     policy.Tag // said at hello; Any: whatever the network's is
	netCfg    engine.Config
	portOpts  engine.PortOptions
	shutRead  bool
	shutWrite bool
	bound     *engine.Network // held reference when bound (manager)
	port      *engine.Port
	data      *net.UnixConn        // daemon's end of the data socket, or nil
	wantFast  bool                 // the client asked for the fast path
	wantLog   bool                 // and can read a hub's shared log
	fast      *shm.Endpoint        // the port's rings on the fast path, or nil
	status    *statusPage          // the port's status page (status.go), or nil
	vde       map[int]*engine.Port // ports of VDE clients this session serves
	paged     []byte               // a paged answer being read (OpList, OpPolicy)
	pagedOp   uint16               // the op it answers
}

// serve answers the client's requests until it closes the connection or
// breaks the protocol, then releases everything the session holds.
// serve reports true if a takeover's freeze stopped it: then it has
// released nothing, and the session may be served again or handed over.
func (ss *session) serve() (frozen bool) {
	defer func() {
		if !frozen {
			ss.close()
		}
	}()
	buf := make([]byte, wire.HeaderLen+spec.MaxOOB+64)
	if !ss.hello {
		ss.portOpts.Want = -1
		ss.conn.SetReadDeadline(time.Now().Add(ss.srv.cfg.HelloTimeout))
	}
	for {
		if ss.stopFrozen() { // a freeze that came while a request was handled
			return true
		}
		pkt, fds, err := wire.Recv(ss.conn, buf)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && (ss.hello || ss.frozen.Load()) {
				// The freeze's deadline (a session that said hello has
				// no other): stop, or serve on if it is over already.
				if ss.stopFrozen() {
					return true
				}
				continue
			}
			switch {
			case errors.Is(err, os.ErrDeadlineExceeded):
				ss.srv.log.Warn("dropping client that did not say hello", "client", ss.cred, "after", ss.srv.cfg.HelloTimeout)
			case !wire.IsEOF(err) && !errors.Is(err, net.ErrClosed):
				ss.srv.log.Warn("dropping client", "client", ss.cred, "err", err)
			}
			return false
		}

		op, body, err := wire.Split(pkt)
		if err != nil {
			closeFDs(fds)
			ss.srv.log.Warn("dropping client", "client", ss.cred, "err", err)
			return false
		}
		wasHello := ss.hello
		reply, rfds := ss.handle(op, body, fds)
		closeFDs(fds)
		if ss.hello && !wasHello {
			ss.conn.SetReadDeadline(time.Time{})
		}
		sendErr := ss.send(reply, rfds...)
		closeFDs(rfds)
		if sendErr != nil {
			return false
		}
	}
}

// stopFrozen reports whether the session is frozen, and if so marks it
// stopped, for thaw to serve it again.
func (ss *session) stopFrozen() bool {
	ss.fmu.Lock()
	defer ss.fmu.Unlock()
	if ss.frozen.Load() {
		ss.stopped = true
	}
	return ss.stopped
}

// thaw ends the session's freeze and reports whether serve had stopped
// for it (then the caller serves it again).
func (ss *session) thaw() bool {
	ss.fmu.Lock()
	defer ss.fmu.Unlock()
	ss.frozen.Store(false)
	was := ss.stopped
	ss.stopped = false
	return was
}

// send writes one packet to the client.
func (ss *session) send(pkt []byte, fds ...int) error {
	ss.wmu.Lock()
	defer ss.wmu.Unlock()
	return wire.Send(ss.conn, pkt, fds...)
}

// sendOOB delivers an out-of-band message as an event.
func (ss *session) sendOOB(m []byte) error {
	return ss.send(wire.Packet(wire.OpOOB, m))
}

// drainTimeout bounds how long a leaving client's last messages may take
// to enter the network (a lossless network may be full).
const drainTimeout = 2 * time.Second

func (ss *session) close() {
	if ended := ss.release(); ended {
		// The client may now remove the network's file.
		ss.conn.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		ss.send(wire.Packet(wire.OpEnded))
	}
	ss.conn.Close()
}

// release gives up the session's ports and bound network, and reports
// whether that ended the network.
func (ss *session) release() (ended bool) {
	n := ss.network()
	for _, p := range ss.vde {
		p.Close()
	}
	ss.srv.devices.release(ss)
	if ss.port != nil {
		// Messages the client wrote before it went are in the data
		// socket or its ring: let the port's reader take them, up to
		// its EOF.
		if ss.fast != nil {
			ss.fast.PeerGone()
		}
		t := time.NewTimer(drainTimeout)
		select {
		case <-ss.port.ReadDone():
		case <-t.C:
		}
		t.Stop()
		ss.port.Close()
	}
	if ss.bound != nil {
		ss.bound.Release()
	}
	ss.dropPaged()
	return n != nil && !ss.srv.engine.Live(n.Key())
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// handle answers one request. It returns the reply and the descriptors to
// pass with it, which the caller closes after sending.
func (ss *session) handle(op uint16, body []byte, fds []int) (reply []byte, rfds []int) {
	if !ss.hello && op != wire.OpHello {
		return wire.Reply(op, syscall.EPROTO), nil
	}
	var err error
	var res []byte
	switch op {
	case wire.OpHello:
		if err = ss.doHello(body); err == nil {
			res = wire.EncodeHelloReply(wire.Version, spec.Build())
		}
	case wire.OpSetOpt:
		err = ss.doSetOpt(body)
	case wire.OpGetOpt:
		res, err = ss.doGetOpt(body)
	case wire.OpBind:
		err = ss.doBind(fds)
	case wire.OpConnect:
		res, rfds, err = ss.doConnect(fds)
	case wire.OpShutdown:
		err = ss.doShutdown(body)
	case wire.OpSendOOB:
		err = ss.doSendOOB(body)
	case wire.OpList:
		res, err = ss.doList(body, fds)
	case wire.OpPolicy:
		res, err = ss.doPolicy(body, fds)
	case wire.OpAttachDevice:
		res, err = ss.doDevice(body, fds)
	case wire.OpVDEJoin:
		res, err = ss.doVDEJoin(body, fds)
	case wire.OpVDELeave:
		err = ss.doVDELeave(body)
	default:
		err = fmt.Errorf("unknown op %d: %w", op, syscall.EINVAL)
	}
	if err != nil {
		return wire.Reply(op, err), nil
	}
	return wire.Reply(op, nil, res), rfds
}

func (ss *session) doHello(body []byte) error {
	if ss.hello {
		return syscall.EISCONN
	}
	if len(body) < 4 {
		return wire.ErrMalformed
	}
	v, proto := uint16(body[0])|uint16(body[1])<<8, policy.Tag(uint16(body[2])|uint16(body[3])<<8)
	if v < wire.MinVersion || v > wire.Version {
		return fmt.Errorf("protocol version %d: this daemon (%s) speaks %d..%d: replace it with a newer one (ipn daemon --takeover) or use an older program: %w",
			v, spec.Build(), wire.MinVersion, wire.Version, syscall.EPROTONOSUPPORT)
	}
	if _, _, ok := policy.Lookup(proto); proto != policy.Any && !ok {
		return fmt.Errorf("policy %d: %w", proto, syscall.EPROTONOSUPPORT)
	}
	ss.hello, ss.proto, ss.version = true, proto, int(v)
	return nil
}

func (ss *session) doSetOpt(body []byte) error {
	opt, err := wire.GetU32(body)
	if err != nil {
		return err
	}
	val := body[4:]
	if opt == wire.OptDescr {
		if ss.port != nil {
			return syscall.EISCONN
		}
		if err := engine.CheckDescription(len(val)); err != nil {
			return err
		}
		ss.portOpts.Description = printable(val)
		return nil
	}
	v, err := wire.GetU32(val)
	if err != nil {
		return err
	}
	switch opt {
	case wire.OptChangeNumNodes:
		if ss.bound == nil {
			return fmt.Errorf("not bound (managing needs bind): %w", syscall.EACCES)
		}
		return ss.changeNumNodes(int(v))
	case wire.OptPort, wire.OptHandleOOB, wire.OptWantOOBNumNode, wire.OptFastPath, wire.OptMonitor, wire.OptLink:
		if ss.port != nil {
			return syscall.EISCONN
		}
		switch opt {
		case wire.OptPort:
			want := int(int32(v))
			if err := engine.CheckWant(want); err != nil {
				return err
			}
			ss.portOpts.Want = want
		case wire.OptHandleOOB:
			ss.portOpts.HandleOOB = v != 0
		case wire.OptFastPath:
			if ss.srv.cfg.NoFastPath {
				return fmt.Errorf("fast path off: %w", syscall.ENOPROTOOPT)
			}
			ss.wantFast, ss.wantLog = v != 0, v == wire.FastPathLog
		case wire.OptMonitor:
			ss.portOpts.Monitor = v != 0
		case wire.OptLink:
			ss.portOpts.Link = v != 0
		default:
			ss.portOpts.WantNumNodes = v != 0
		}
		return nil
	case wire.OptMTU, wire.OptNumNodes, wire.OptMsgPoolSize, wire.OptFlags:
		if ss.bound != nil || ss.port != nil {
			return syscall.EISCONN
		}
		// Each value is checked now, by the engine's check, so that the
		// option that is wrong fails, not the bind that would use it; a
		// wrong value leaves the option as it was.
		cfg := ss.netCfg
		switch opt {
		case wire.OptMTU:
			cfg.MTU, err = int(v), engine.CheckMTU(int(v))
		case wire.OptNumNodes:
			cfg.NumPorts, err = int(v), engine.CheckNumPorts(int(v))
		case wire.OptMsgPoolSize:
			cfg.PoolSize, err = int(v), engine.CheckPoolSize(int(v))
		default:
			cfg.Flags, err = engine.Flags(v), engine.CheckFlags(engine.Flags(v))
		}
		if err != nil {
			return err
		}
		ss.netCfg = cfg
		return nil
	}
	return fmt.Errorf("option %d: %w", opt, syscall.ENOPROTOOPT)
}

// network returns the network the session is bound or connected to.
func (ss *session) network() *engine.Network {
	if ss.port != nil {
		return ss.port.Network()
	}
	return ss.bound
}

func (ss *session) doGetOpt(body []byte) ([]byte, error) {
	opt, err := wire.GetU32(body)
	if err != nil {
		return nil, err
	}
	cfg := ss.netCfg
	if n := ss.network(); n != nil {
		cfg = n.Config()
	} else if c, err := cfg.WithDefaults(); err == nil {
		cfg = c
	}
	switch opt {
	case wire.OptDescr:
		return []byte(ss.portOpts.Description), nil
	case wire.OptPort:
		if ss.port == nil {
			return wire.U32(uint32(int32(ss.portOpts.Want))), nil
		}
		return wire.U32(uint32(ss.port.Num())), nil
	case wire.OptMTU:
		return wire.U32(uint32(cfg.MTU)), nil
	case wire.OptNumNodes:
		return wire.U32(uint32(cfg.NumPorts)), nil
	case wire.OptMsgPoolSize:
		return wire.U32(uint32(cfg.PoolSize)), nil
	case wire.OptFlags:
		return wire.U32(uint32(cfg.Flags)), nil
	case wire.OptHandleOOB:
		return boolU32(ss.portOpts.HandleOOB), nil
	case wire.OptWantOOBNumNode:
		return boolU32(ss.portOpts.WantNumNodes), nil
	case wire.OptMonitor:
		return boolU32(ss.portOpts.Monitor), nil
	case wire.OptLink:
		return boolU32(ss.portOpts.Link), nil
	}
	return nil, fmt.Errorf("option %d: %w", opt, syscall.ENOPROTOOPT)
}

func boolU32(b bool) []byte {
	if b {
		return wire.U32(1)
	}
	return wire.U32(0)
}

// oneFD returns the single descriptor a request must carry.
func oneFD(fds []int) (int, error) {
	if len(fds) != 1 {
		return -1, fmt.Errorf("want 1 descriptor, got %d: %w", len(fds), syscall.EINVAL)
	}
	return fds[0], nil
}

// doBind joins the live network on the file passed as a manager, or makes
// one on it. The network's name is the path the kernel gives the file, not
// what the client says.
func (ss *session) doBind(fds []int) error {
	if ss.bound != nil || ss.port != nil {
		return syscall.EINVAL
	}
	fd, err := oneFD(fds)
	if err != nil {
		return err
	}
	id, st, err := statNetFile(fd)
	if err != nil {
		return err
	}
	eng := ss.srv.engine
	for range 3 {
		n, err := eng.Acquire(id)
		if err == nil {
			if err := ss.checkManager(n); err != nil {
				n.Release()
				return err
			}
			ss.bound = n
			ss.holds.Store(true)
			return nil
		}
		n, err = ss.create(fd, id, st)
		if errors.Is(err, syscall.EEXIST) {
			continue // someone made it first; join theirs
		}
		if err != nil {
			return err
		}
		ss.bound = n
		ss.holds.Store(true)
		return nil
	}
	return syscall.EAGAIN
}

// create makes a network on the file behind fd, which has no live network:
// the file's owner (or root) may.
func (ss *session) create(fd int, id fileID, st *unix.Stat_t) (*engine.Network, error) {
	if ss.cred.UID != 0 && ss.cred.UID != st.Uid {
		return nil, ss.noNetwork(st, fmt.Errorf("only its owner (uid %d) may make one: %w", st.Uid, syscall.ECONNREFUSED))
	}
	cfg := ss.netCfg
	cfg.Proto = ss.proto
	n, err := ss.srv.createNetwork(fd, id, cfg, ss.cred.UID, "")
	if err != nil {
		return nil, err
	}
	ss.srv.log.Info("network created", "path", n.Name(), "proto", n.Config().Proto, "by", ss.cred)
	return n, nil
}

// createNetwork makes a network of cfg on the file behind fd (of identity
// id), which has no live network, charging creator for it. Its name is the
// file's path, or name if the file has none (removed) and name is not "".
func (s *server) createNetwork(fd int, id fileID, cfg engine.Config, creator uint32, name string) (*engine.Network, error) {
	nf, err := pin(fd, id)
	if err != nil {
		return nil, err
	}
	path := nf.name()
	if path == "" {
		path = name
	}
	if path == "" {
		nf.close()
		return nil, fmt.Errorf("the network file has no path (removed?): %w", syscall.ENOENT)
	}
	cfg, err = cfg.WithDefaults()
	if err != nil {
		nf.close()
		return nil, err
	}
	cfg.Name, cfg.Data = path, nf
	nf.creator, nf.memory = creator, netMemory(cfg)
	charge := usage{networks: 1, memory: nf.memory} // the policy's tables once it exists
	if err := s.acct.take(nf.creator, charge); err != nil {
		nf.close()
		return nil, err
	}
	acct := s.acct
	cfg.OnDelete = func() {
		nf.mu.Lock()
		acct.give(nf.creator, usage{networks: 1, memory: nf.memory})
		nf.mu.Unlock()
		nf.closeLog(acct)
		nf.close()
	}
	n, err := s.engine.Create(id, cfg)
	if err != nil {
		acct.give(nf.creator, charge)
		nf.close()
		return nil, err
	}
	if err := s.recharge(n, func() error { return nil }, nil); err != nil {
		n.Release() // gives back the charge
		return nil, err
	}
	return n, nil
}

// checkManager checks that the session may bind to the existing network n.
func (ss *session) checkManager(n *engine.Network) error {
	cfg := n.Config()
	if ss.netCfg.Flags&engine.Excl != 0 || cfg.Flags&engine.Excl != 0 {
		return fmt.Errorf("exclusive network: %w", syscall.EEXIST)
	}
	if ss.proto != policy.Any && ss.proto != cfg.Proto {
		return fmt.Errorf("the network's policy is %s, the socket's %s: %w", cfg.Proto, ss.proto, syscall.EPROTO)
	}
	return ss.mayManage(n)
}

// mayManage checks that the session's user has x on n's file now.
func (ss *session) mayManage(n *engine.Network) error {
	r, err := netFileOf(n).rights(ss.cred)
	if err != nil {
		return err
	}
	if !r.X {
		return fmt.Errorf("managing needs x on the network; you have %s: %w", r, syscall.EACCES)
	}
	return nil
}

// changeNumNodes resizes the bound network (OptChangeNumNodes), which
// needs x now (as at bind), charging its maker for the memory the new size
// may hold.
func (ss *session) changeNumNodes(num int) error {
	n := ss.bound
	if err := ss.mayManage(n); err != nil {
		return err
	}
	old := n.NumPorts()
	return ss.srv.recharge(n, func() error { return n.ChangeNumPorts(num) }, func() { n.ChangeNumPorts(old) })
}

func (ss *session) doConnect(fds []int) (reply []byte, rfds []int, err error) {
	if ss.port != nil {
		return nil, nil, syscall.EISCONN
	}
	var n *engine.Network
	switch {
	case len(fds) == 0 && ss.bound != nil:
		n = ss.bound
	case len(fds) == 1:
		id, st, err := statNetFile(fds[0])
		if err != nil {
			return nil, nil, err
		}
		if ss.bound != nil && ss.bound.Key() != id {
			return nil, nil, fmt.Errorf("bound to another network: %w", syscall.EINVAL)
		}
		if n, err = ss.srv.engine.Acquire(id); err != nil {
			return nil, nil, ss.noNetwork(st, err)
		}
		defer n.Release() // the port takes its own reference
	default:
		return nil, nil, fmt.Errorf("connect needs the network file: %w", syscall.EDESTADDRREQ)
	}
	cfg := n.Config()
	if ss.proto != policy.Any && ss.proto != cfg.Proto {
		return nil, nil, fmt.Errorf("the network's policy is %s, the socket's %s: %w", cfg.Proto, ss.proto, syscall.EPROTO)
	}
	// Rights are read again at each connect, so a chmod since bind counts.
	rights, err := netFileOf(n).rights(ss.cred)
	if err != nil {
		return nil, nil, err
	}
	if !rights.R && !rights.W {
		return nil, nil, fmt.Errorf("no r nor w on %s: %w", cfg.Name, syscall.EACCES)
	}
	canRead, canWrite := rights.R && !ss.shutRead, rights.W && !ss.shutWrite
	// A monitor mirrors the other members' traffic, unicast included:
	// managing (x) on top of receiving (r). It never sends.
	switch mon := ss.portOpts.Monitor; {
	case mon && canWrite:
		return nil, nil, fmt.Errorf("a monitor port is receive-only: shut down its send side before connect: %w", syscall.EINVAL)
	case mon && !rights.X:
		return nil, nil, fmt.Errorf("a monitor port needs x (manage) on %s; you have %s: %w", cfg.Name, rights, syscall.EACCES)
	case mon && !rights.R:
		return nil, nil, fmt.Errorf("a monitor port needs r on %s; you have %s: %w", cfg.Name, rights, syscall.EACCES)
	}
	if err := ss.srv.acct.take(ss.cred.UID, usage{ports: 1}); err != nil {
		return nil, nil, err
	}
	held := usage{ports: 1}
	defer func() {
		if err != nil {
			ss.srv.acct.give(ss.cred.UID, held)
		}
	}()

	opts := ss.portOpts
	opts.NoRead, opts.NoWrite = !canRead, !canWrite
	opts.Peer = ss.cred.String()
	var ep endpoint.Endpoint
	// A lossy hub's member may read its shared log (not a monitor, which
	// gets copies, nor a link, which the hub may block).
	logged := ss.wantLog && cfg.Proto == policy.Broadcast && cfg.Flags&engine.Lossless == 0 && !opts.Monitor && !opts.Link
	if ss.wantFast && (cfg.MTU <= engine.BigMin || logged) {
		// The rings, if they can be made and the user has room for them;
		// else the data socket. A network with big messages (an MTU
		// over 64 KiB) uses the socket, but for a member of a lossy hub
		// that reads the shared log: its big messages go to the daemon
		// in chunks, and come from it in the log.
		fast, fds, ring, ferr := ss.rings(n, cfg, logged && canRead)
		if ferr != nil {
			ss.srv.log.Warn("no fast path, using a socket", "client", ss.cred, "err", ferr)
		} else {
			ep, ss.fast, rfds, held.shm = fast, fast, fds, ring
		}
	}
	if ep == nil {
		if wire.Fragmented(cfg.MTU) && ss.version < wire.FragVersion {
			return nil, nil, fmt.Errorf("%s: an MTU of %d bytes, over %d, has its messages in fragments, which protocol version %d has not (version %d and later do): %w",
				cfg.Name, cfg.MTU, wire.FragMTU, ss.version, wire.FragVersion, syscall.EPROTONOSUPPORT)
		}
		pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, nil, err
		}
		if cfg.MTU > engine.BigMin {
			// Both ends' send buffers hold a message of the MTU, or
			// four fragments on a network of fragments: forced by a
			// daemon run by root, else as far as wmem_max lets
			// (docs/protocol.md).
			sockio.SizeFor(pair[0], min(cfg.MTU, wire.FragMTU))
			sockio.SizeFor(pair[1], min(cfg.MTU, wire.FragMTU))
		}
		f := os.NewFile(uintptr(pair[0]), "ipn-data")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			unix.Close(pair[1])
			return nil, nil, err
		}
		ss.data = c.(*net.UnixConn)
		sp := seqpacket.NewFor(ss.data, ss.sendOOB, cfg.MTU)
		ep, rfds = sp, []int{pair[1]}
		if cfg.Flags&engine.Lossless == 0 {
			ep = seqpacket.Lossy{Endpoint: sp}
		}
	}
	// The status page, after the data descriptors; without one (no
	// memfd), the client only cannot count what a crash lost. It is
	// charged nothing: one page a port, bounded by the port limit.
	var st *statusPage
	var serr error
	if ss.version >= 2 { // a client of version 1 takes the data descriptors only
		st, serr = newStatusPage()
	}
	if serr != nil {
		ss.srv.log.Warn("no status page", "client", ss.cred, "err", serr)
	} else if st != nil {
		if fd := st.FD(); fd >= 0 {
			rfds = append(rfds, fd)
		} else {
			st.Close()
			st = nil
		}
	}
	uid, acct, charge := ss.cred.UID, ss.srv.acct, held
	opts.OnLeave = func() {
		acct.give(uid, charge)
		if st != nil {
			st.leave()
		}
	}
	port, err := n.Join(ep, opts)
	if err != nil {
		ep.Close()
		closeFDs(rfds)
		if st != nil {
			st.Close()
		}
		ss.data, ss.fast = nil, nil
		if errors.Is(err, syscall.EADDRNOTAVAIL) {
			err = withHint(err, "ipn ls "+cfg.Name+" shows who holds the ports")
		}
		return nil, nil, err
	}
	if st != nil {
		st.attach(port) // before the reply: the client cannot send yet
		ss.status = st
	}
	if ss.fast != nil {
		ss.fast.SetPort(port.Num())
	}
	ss.port = port
	ss.holds.Store(true)
	ss.applyShutdown(!canRead, !canWrite)
	rep := wire.ConnectReply{
		Port: uint32(port.Num()), MTU: uint32(cfg.MTU), Proto: uint16(cfg.Proto),
		CanRead: canRead, CanWrite: canWrite,
	}
	return rep.Encode(), rfds, nil
}

// rings makes a member's fast-path rings for network n of cfg, charging
// their size to the user, and returns them with the descriptors to pass
// and the size charged. If readLog, the member of a lossy hub reads the
// network's shared log too (made at the first such member, charged to the
// network's maker), if it can have one.
func (ss *session) rings(n *engine.Network, cfg engine.Config, readLog bool) (*shm.Endpoint, []int, int64, error) {
	ring := int64(shm.LayoutFor(cfg.MTU).Bytes())
	if err := ss.srv.acct.take(ss.cred.UID, usage{shm: ring}); err != nil {
		return nil, nil, 0, err
	}
	fast, err := shm.New(cfg.MTU, cfg.Flags&engine.Lossless != 0, ss.sendOOB)
	if err == nil && readLog {
		if log := ss.srv.logOf(n); log != nil {
			fast.ReadLog(log, false)
		} else if cfg.MTU > engine.BigMin {
			// Big messages reach a member through the log only.
			fast.Close()
			err = fmt.Errorf("no shared log for big messages: %w", syscall.ENOMEM)
		}
	}
	if err == nil {
		var fds []int
		if fds, err = fast.DupFDs(); err == nil {
			return fast, fds, ring, nil
		}
		fast.Close()
	}
	ss.srv.acct.give(ss.cred.UID, usage{shm: ring})
	return nil, nil, 0, err
}

// applyShutdown closes the data socket's directions that the node may no
// longer use, so that a raw client sees EOF or EPIPE.
func (ss *session) applyShutdown(read, write bool) {
	if ss.data == nil {
		return // the fast path's client knows its sides
	}
	raw, err := ss.data.SyscallConn()
	if err != nil {
		return
	}
	raw.Control(func(fd uintptr) {
		if read {
			unix.Shutdown(int(fd), unix.SHUT_WR) // nothing more to the node
		}
		if write {
			unix.Shutdown(int(fd), unix.SHUT_RD) // nothing more from it
		}
	})
}

func (ss *session) doShutdown(body []byte) error {
	how, err := wire.GetU32(body)
	if err != nil {
		return err
	}
	if how == 0 || how&^uint32(wire.ShutRead|wire.ShutWrite) != 0 {
		return syscall.EINVAL
	}
	read, write := how&wire.ShutRead != 0, how&wire.ShutWrite != 0
	ss.shutRead = ss.shutRead || read
	ss.shutWrite = ss.shutWrite || write
	if ss.port != nil {
		ss.port.Shutdown(read, write)
		ss.applyShutdown(read, write)
	}
	return nil
}

func (ss *session) doSendOOB(body []byte) error {
	if ss.port == nil {
		return syscall.ENOTCONN
	}
	if !ss.port.CanWrite() {
		return syscall.EPIPE
	}
	if len(body) > min(ss.port.Network().Config().MTU, spec.MaxOOB) {
		return syscall.EOVERFLOW
	}
	ss.port.SendOOB(body)
	return nil
}

// doPolicy reads (with r or x) or changes (with x) a setting of the policy
// of the network whose file descriptor comes with the request.
func (ss *session) doPolicy(body []byte, fds []int) ([]byte, error) {
	set, name, value, err := wire.DecodePolicy(body)
	if err != nil {
		return nil, err
	}
	fd, err := oneFD(fds)
	if err != nil {
		return nil, err
	}
	id, st, err := statNetFile(fd)
	if err != nil {
		return nil, err
	}
	n, err := ss.srv.engine.Acquire(id)
	if err != nil {
		return nil, ss.noNetwork(st, err)
	}
	defer n.Release()
	r, err := netFileOf(n).rights(ss.cred)
	if err != nil {
		return nil, err
	}
	if set {
		if !r.X {
			return nil, fmt.Errorf("managing needs x on the network; you have %s: %w", r, syscall.EACCES)
		}
		ss.srv.log.Info("policy option", "path", n.Name(), "name", name, "value", value[:min(len(value), 128)], "by", ss.cred)
		// A setting that lets the policy's tables grow is charged to the
		// network's maker, and undone if over the limit.
		old, oerr := n.PolicyOption(name)
		undo := func() {
			if oerr == nil {
				n.SetPolicyOption(name, old)
			}
		}
		return nil, policyErr(n, ss.srv.recharge(n, func() error { return n.SetPolicyOption(name, value) }, undo))
	}
	if !r.R && !r.X {
		return nil, fmt.Errorf("reading needs r or x on the network; you have %s: %w", r, syscall.EACCES)
	}
	// A get's value is the offset into the answer (empty: 0): a table may
	// be far longer than a packet.
	var off uint32
	if value != "" {
		if off, err = wire.GetU32([]byte(value)); err != nil {
			return nil, err
		}
	}
	return ss.page(wire.OpPolicy, off, func() ([]byte, error) {
		v, err := n.PolicyOption(name)
		return []byte(v), policyErr(n, err)
	})
}

// policyErr names n's policy in an error of its options, so that a
// setting the policy lacks (ENOPROTOOPT) says which policy lacks it.
func policyErr(n *engine.Network, err error) error {
	proto := n.Config().Proto.String()
	if err == nil || !errors.Is(err, syscall.ENOPROTOOPT) || strings.HasPrefix(err.Error(), proto+" ") {
		return err // the policy named itself
	}
	return fmt.Errorf("policy %s: %w", proto, err)
}

// hintError is an error with a hint added to its text, before the errno's.
type hintError struct {
	msg string
	err error
}

func (e *hintError) Error() string { return e.msg }
func (e *hintError) Unwrap() error { return e.err }

// withHint adds hint, in parentheses, to the text of err, which keeps its
// errno: "port 3 is taken (HINT): cannot assign requested address".
func withHint(err error, hint string) error {
	msg := err.Error()
	var errno syscall.Errno
	if errors.As(err, &errno) {
		if m, ok := strings.CutSuffix(msg, ": "+errno.Error()); ok {
			return &hintError{msg: m + " (" + hint + "): " + errno.Error(), err: err}
		}
	}
	return &hintError{msg: msg + " (" + hint + ")", err: err}
}

// noNetwork is the error of a request for the network on a file (of
// status st) on which this daemon runs none (err, ECONNREFUSED): it says
// which daemon answered, since a user's own daemon serves only that
// user's networks, and another user's network lives in that user's.
func (ss *session) noNetwork(st *unix.Stat_t, err error) error {
	sock := ss.srv.cfg.Socket
	switch {
	case os.Geteuid() == 0:
		return fmt.Errorf("no network on this file in the ipn daemon at %s: %w", sock, err)
	case st.Uid != ss.cred.UID:
		return fmt.Errorf("no network on this file in your own ipn daemon at %s; the file is uid %d's, whose networks that user's own daemon serves: "+
			"start a system daemon as root (ipn daemon) to share networks between users: %w", sock, st.Uid, err)
	}
	return fmt.Errorf("no network on this file in your own ipn daemon at %s (it ended, or another daemon serves it): %w", sock, err)
}

// printable returns b as a string of at most engine.MaxDescription bytes
// with its control characters (and bytes that are not UTF-8) replaced, so
// that what a client names cannot drive the terminal of whoever lists it.
func printable(b []byte) string {
	var out strings.Builder
	for _, r := range string(b) {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == utf8.RuneError {
			r = '?'
		}
		if out.Len()+utf8.RuneLen(r) > engine.MaxDescription {
			break
		}
		out.WriteRune(r)
	}
	return out.String()
}
