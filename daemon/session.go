package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/endpoint"
	"github.com/ipn-project/ipn/endpoint/seqpacket"
	"github.com/ipn-project/ipn/endpoint/shm"
	"github.com/ipn-project/ipn/engine"
	"github.com/ipn-project/ipn/internal/wire"
	"github.com/ipn-project/ipn/policy"
)

// session is one IPN socket of a client: its control connection, the
// options set on it, and the network it is bound or connected to.
type session struct {
	srv  *server
	conn *net.UnixConn
	cred cred

	wmu sync.Mutex // serializes writes on conn (replies and OOB events)

	// The fields below belong to the serve goroutine.
	hello     bool
	proto     policy.Tag
	netCfg    engine.Config
	portOpts  engine.PortOptions
	shutRead  bool
	shutWrite bool
	bound     *engine.Network // held reference when bound (manager)
	boundID   fileID
	boundFD   int // O_PATH descriptor of the bound network file, or -1
	port      *engine.Port
	data      *net.UnixConn // daemon's end of the data socket, or nil
	wantFast  bool          // the client asked for the fast path
	fast      *shm.Endpoint // the port's rings on the fast path, or nil
	vde       []*vdeServer  // VDE switches serving the bound network
}

// serve answers the client's requests until it closes the connection or
// breaks the protocol, then releases everything the session holds.
func (ss *session) serve() {
	defer ss.close()
	ss.portOpts.Want = -1
	ss.boundFD = -1
	buf := make([]byte, wire.HeaderLen+engine.MaxMTU+64)
	for {
		pkt, fds, err := wire.Recv(ss.conn, buf)
		if err != nil {
			if !wire.IsEOF(err) && !errors.Is(err, net.ErrClosed) {
				ss.srv.log.Warn("dropping client", "client", ss.cred, "err", err)
			}
			return
		}
		op, body, err := wire.Split(pkt)
		if err != nil {
			closeFDs(fds)
			ss.srv.log.Warn("dropping client", "client", ss.cred, "err", err)
			return
		}
		reply, rfds := ss.handle(op, body, fds)
		closeFDs(fds)
		sendErr := ss.send(reply, rfds...)
		closeFDs(rfds)
		if sendErr != nil {
			return
		}
	}
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
	ss.release()
	ss.conn.Close()
}

// release gives up the session's port and bound network.
func (ss *session) release() {
	for _, v := range ss.vde {
		v.stop()
	}
	ss.releaseDevices()
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
		unix.Close(ss.boundFD)
	}
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
		err = ss.doHello(body)
	case wire.OpSetOpt:
		err = ss.doSetOpt(body)
	case wire.OpGetOpt:
		res, err = ss.doGetOpt(body)
	case wire.OpBind:
		err = ss.doBind(string(body), fds)
	case wire.OpConnect:
		res, rfds, err = ss.doConnect(string(body), fds)
	case wire.OpShutdown:
		err = ss.doShutdown(body)
	case wire.OpSendOOB:
		err = ss.doSendOOB(body)
	case wire.OpList:
		res, err = ss.doList(string(body))
	case wire.OpPolicy:
		res, err = ss.doPolicy(body, fds)
	case wire.OpServeVDE:
		err = ss.doServeVDE(string(body), fds)
	case wire.OpAttachDevice:
		res, err = ss.doDevice(body, fds)
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
	v, tag := uint16(body[0])|uint16(body[1])<<8, policy.Tag(uint16(body[2])|uint16(body[3])<<8)
	if v != wire.Version {
		return fmt.Errorf("protocol version %d: %w", v, syscall.EPROTONOSUPPORT)
	}
	if _, _, ok := policy.Lookup(tag); tag != policy.Any && !ok {
		return fmt.Errorf("policy %d: %w", tag, syscall.EPROTONOSUPPORT)
	}
	ss.hello, ss.proto = true, tag
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
		if len(val) > engine.MaxDescription {
			return syscall.EINVAL
		}
		ss.portOpts.Description = string(val)
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
		return ss.bound.ChangeNumPorts(int(v))
	case wire.OptPort, wire.OptHandleOOB, wire.OptWantOOBNumNode, wire.OptFastPath:
		if ss.port != nil {
			return syscall.EISCONN
		}
		switch opt {
		case wire.OptPort:
			ss.portOpts.Want = int(int32(v))
		case wire.OptHandleOOB:
			ss.portOpts.HandleOOB = v != 0
		case wire.OptFastPath:
			if ss.srv.cfg.NoFastPath {
				return fmt.Errorf("fast path off: %w", syscall.ENOPROTOOPT)
			}
			ss.wantFast = v != 0
		default:
			ss.portOpts.WantNumNodes = v != 0
		}
		return nil
	case wire.OptMTU, wire.OptNumNodes, wire.OptMsgPoolSize, wire.OptFlags:
		if ss.bound != nil || ss.port != nil {
			return syscall.EISCONN
		}
		switch opt {
		case wire.OptMTU:
			if v < 1 || v > engine.MaxMTU {
				return syscall.EINVAL
			}
			ss.netCfg.MTU = int(v)
		case wire.OptNumNodes:
			if v < 1 || v > engine.MaxPorts {
				return syscall.EINVAL
			}
			ss.netCfg.NumPorts = int(v)
		case wire.OptMsgPoolSize:
			if v < 1 || v > engine.MaxPoolSize {
				return syscall.EINVAL
			}
			ss.netCfg.PoolSize = int(v)
		default:
			if engine.Flags(v)&^(engine.Lossless|engine.Excl|engine.FlexMTU) != 0 {
				return syscall.EINVAL
			}
			ss.netCfg.Flags = engine.Flags(v)
		}
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

func (ss *session) doBind(path string, fds []int) error {
	if ss.bound != nil || ss.port != nil {
		return syscall.EINVAL
	}
	fd, err := oneFD(fds)
	if err != nil {
		return err
	}
	id, st, err := statFD(fd)
	if err != nil {
		return err
	}
	keep, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return err
	}
	if err := ss.bind(path, id, st); err != nil {
		unix.Close(keep)
		return err
	}
	ss.boundFD = keep
	return nil
}

// bind joins the live network on file id as a manager, or makes one.
func (ss *session) bind(path string, id fileID, st *unix.Stat_t) error {
	eng := ss.srv.engine
	for attempt := 0; attempt < 3; attempt++ {
		n, err := eng.Acquire(id)
		if err == nil {
			if err := ss.checkManager(n, st); err != nil {
				n.Release()
				return err
			}
			ss.bound, ss.boundID = n, id
			return nil
		}
		// No live network: the file's owner (or root) makes one on it.
		if ss.cred.uid != 0 && ss.cred.uid != st.Uid {
			return fmt.Errorf("no network at %s: %w", path, syscall.ECONNREFUSED)
		}
		cfg := ss.netCfg
		cfg.Name = path
		cfg.Proto = ss.proto
		cfg.OnDelete = func() { unlinkIf(path, id) }
		n, err = eng.Create(id, cfg)
		if errors.Is(err, syscall.EEXIST) {
			continue // someone made it first; join theirs
		}
		if err != nil {
			return err
		}
		ss.srv.log.Info("network created", "path", path, "proto", n.Config().Proto, "by", ss.cred)
		ss.bound, ss.boundID = n, id
		return nil
	}
	return syscall.EAGAIN
}

// checkManager checks that the session may bind to the existing network n.
func (ss *session) checkManager(n *engine.Network, st *unix.Stat_t) error {
	cfg := n.Config()
	if ss.netCfg.Flags&engine.Excl != 0 || cfg.Flags&engine.Excl != 0 {
		return fmt.Errorf("exclusive network: %w", syscall.EEXIST)
	}
	if ss.proto != policy.Any && ss.proto != cfg.Proto {
		return fmt.Errorf("network uses %s, socket %s: %w", cfg.Proto, ss.proto, syscall.EPROTO)
	}
	if _, _, x := access(st, ss.cred); !x {
		return fmt.Errorf("managing needs x: %w", syscall.EACCES)
	}
	return nil
}

func (ss *session) doConnect(path string, fds []int) (reply []byte, rfds []int, err error) {
	if ss.port != nil {
		return nil, nil, syscall.EISCONN
	}
	var n *engine.Network
	var st *unix.Stat_t
	switch {
	case len(fds) == 0 && ss.bound != nil:
		if st, err = ss.statBound(); err != nil {
			return nil, nil, err
		}
		n = ss.bound
	case len(fds) == 1:
		id, s, err := statFD(fds[0])
		if err != nil {
			return nil, nil, err
		}
		if ss.bound != nil && id != ss.boundID {
			return nil, nil, fmt.Errorf("bound to another network: %w", syscall.EINVAL)
		}
		st = s
		if n, err = ss.srv.engine.Acquire(id); err != nil {
			return nil, nil, fmt.Errorf("no network at %s: %w", path, err)
		}
		defer n.Release() // the port takes its own reference
	default:
		return nil, nil, fmt.Errorf("connect needs the network file: %w", syscall.EDESTADDRREQ)
	}
	cfg := n.Config()
	if ss.proto != policy.Any && ss.proto != cfg.Proto {
		return nil, nil, fmt.Errorf("network uses %s, socket %s: %w", cfg.Proto, ss.proto, syscall.EPROTO)
	}
	r, w, _ := access(st, ss.cred)
	if !r && !w {
		return nil, nil, fmt.Errorf("no r nor w on %s: %w", cfg.Name, syscall.EACCES)
	}
	canRead, canWrite := r && !ss.shutRead, w && !ss.shutWrite

	opts := ss.portOpts
	opts.NoRead, opts.NoWrite = !canRead, !canWrite
	opts.Peer = ss.cred.String()
	var ep endpoint.Endpoint
	if ss.wantFast {
		// The rings, if they can be made; else the data socket.
		fast, ferr := shm.New(cfg.MTU, cfg.Flags&engine.Lossless != 0, ss.sendOOB)
		if ferr == nil {
			if rfds, ferr = fast.DupFDs(); ferr != nil {
				fast.Close()
			}
		}
		if ferr != nil {
			ss.srv.log.Warn("no fast path, using a socket", "client", ss.cred, "err", ferr)
		} else {
			ep, ss.fast = fast, fast
		}
	}
	if ep == nil {
		pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, nil, err
		}
		f := os.NewFile(uintptr(pair[0]), "ipn-data")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			unix.Close(pair[1])
			return nil, nil, err
		}
		ss.data = c.(*net.UnixConn)
		sp := seqpacket.New(ss.data, ss.sendOOB)
		ep, rfds = sp, []int{pair[1]}
		if cfg.Flags&engine.Lossless == 0 {
			ep = seqpacket.Lossy{Endpoint: sp}
		}
	}
	port, err := n.Join(ep, opts)
	if err != nil {
		ep.Close()
		closeFDs(rfds)
		ss.data, ss.fast = nil, nil
		return nil, nil, err
	}
	ss.port = port
	ss.applyShutdown(!canRead, !canWrite)
	rep := wire.ConnectReply{
		Port: uint32(port.Num()), MTU: uint32(cfg.MTU), Proto: uint16(cfg.Proto),
		CanRead: canRead, CanWrite: canWrite,
	}
	return rep.Encode(), rfds, nil
}

// statBound returns the status of the bound network file, read again so
// that a chmod since bind takes effect.
func (ss *session) statBound() (*unix.Stat_t, error) {
	var st unix.Stat_t
	if err := unix.Fstat(ss.boundFD, &st); err != nil {
		return nil, fmt.Errorf("network file %s: %w", ss.bound.Name(), err)
	}
	return &st, nil
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
	if len(body) > ss.port.Network().Config().MTU {
		return syscall.EOVERFLOW
	}
	ss.port.SendOOB(body)
	return nil
}

// doServeVDE makes the listening socket passed, DIR/ctl, a VDE switch
// whose clients become ports of the bound network, until the session ends.
func (ss *session) doServeVDE(dir string, fds []int) error {
	if ss.bound == nil {
		return fmt.Errorf("%w: %w", errNotBound, syscall.EACCES)
	}
	fd, err := oneFD(fds)
	if err != nil {
		return err
	}
	keep, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return err
	}
	n, err := ss.srv.engine.Acquire(ss.boundID)
	if err != nil {
		unix.Close(keep)
		return err
	}
	v, err := serveVDE(n, dir, keep, ss.srv.log)
	if err != nil {
		n.Release()
		return err
	}
	ss.vde = append(ss.vde, v)
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
	id, st, err := statFD(fd)
	if err != nil {
		return nil, err
	}
	n, err := ss.srv.engine.Acquire(id)
	if err != nil {
		return nil, err
	}
	defer n.Release()
	r, _, x := access(st, ss.cred)
	if set {
		if !x {
			return nil, fmt.Errorf("managing needs x: %w", syscall.EACCES)
		}
		ss.srv.log.Info("policy option", "path", n.Name(), "name", name, "value", value, "by", ss.cred)
		return nil, n.SetPolicyOption(name, value)
	}
	if !r && !x {
		return nil, fmt.Errorf("reading needs r or x: %w", syscall.EACCES)
	}
	v, err := n.PolicyOption(name)
	return []byte(v), err
}

func (ss *session) doList(path string) ([]byte, error) {
	var list []wire.NetInfo
	for _, n := range ss.srv.engine.Networks() {
		if path != "" && n.Name() != path {
			continue
		}
		list = append(list, netInfo(n))
	}
	if path != "" && len(list) == 0 {
		return nil, fmt.Errorf("no network at %s: %w", path, syscall.ENOENT)
	}
	return json.Marshal(list)
}

func netInfo(n *engine.Network) wire.NetInfo {
	cfg := n.Config()
	info := wire.NetInfo{
		Path: cfg.Name, Proto: cfg.Proto.String(), Tag: uint16(cfg.Proto),
		MTU: cfg.MTU, NumPorts: cfg.NumPorts, PoolSize: cfg.PoolSize,
		Flags: flagNames(cfg.Flags),
	}
	var st unix.Stat_t
	if unix.Lstat(cfg.Name, &st) == nil {
		info.UID, info.GID, info.Mode = st.Uid, st.Gid, st.Mode&0o7777
	}
	info.Readers, info.Writers = n.Counts()
	for _, p := range n.Ports() {
		s := p.Stats()
		o := p.Options()
		info.PortsInfo = append(info.PortsInfo, wire.PortInfo{
			Port: p.Num(), Descr: o.Description, Peer: o.Peer,
			Read: p.CanRead(), Write: p.CanWrite(),
			MsgsIn: s.MsgsIn, BytesIn: s.BytesIn, MsgsOut: s.MsgsOut, BytesOut: s.BytesOut,
			Drops: s.Drops, Errors: s.Errors,
			Policy: n.DescribePort(p.Num()), Persist: devicePersist(p),
		})
	}
	return info
}

func flagNames(f engine.Flags) []string {
	var names []string
	for _, x := range []struct {
		f    engine.Flags
		name string
	}{{engine.Lossless, "lossless"}, {engine.Excl, "excl"}, {engine.FlexMTU, "flexmtu"}} {
		if f&x.f != 0 {
			names = append(names, x.name)
		}
	}
	return names
}
