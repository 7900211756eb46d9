package ipn

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/internal/sockio"
	"github.com/ipn-project/ipn/internal/spec"
	"github.com/ipn-project/ipn/internal/wire"
)

// Socket is an IPN socket: a node of a network once connected.
//
// Send and Recv may be called concurrently with each other and with the
// option calls; Close unblocks them all.
type Socket struct {
	proto Protocol
	ctl   *net.UnixConn

	reqMu   sync.Mutex    // one request at a time on ctl
	replies chan ctlReply // from the control reader to the requester
	ctlDone chan struct{} // closed when the control reader exits
	ctlErr  error         // why the control reader exited; read after ctlDone
	once    sync.Once     // for Close
	closed  chan struct{} // closed by Close

	mu        sync.Mutex // guards the fields below
	path      string     // network path once bound or connected
	mode      os.FileMode
	modeSet   bool       // SetMode was called
	file      fileID     // the network file's identity, once bound or connected by path
	ended     bool       // the daemon said this socket's leaving ended the network
	vde       *vdeServer // the VDE service of ServeVDE, or nil
	bound     bool
	connected bool
	data      *net.UnixConn // the data socket once connected
	port      int
	mtu       int
	canRead   bool
	canWrite  bool
	shutRead  bool
	shutWrite bool
	wdl       time.Time // write deadline, applied at connect

	oobMu sync.Mutex // guards oobq, rdl and ctlTick; see Recv
	oobq  [][]byte
	rdl   time.Time // the user's read deadline
	armed bool      // the data socket's read deadline is rdl (not a wake-up)
	// ctlTick is closed and replaced each time the control reader has
	// taken a packet, for Recv to wait on.
	ctlTick chan struct{}
	held    [][]byte // ordinary messages read while an OOB one was due
	// mayGetOOB is set once the socket asked for out-of-band messages;
	// until then Recv need not look for them.
	mayGetOOB atomic.Bool

	fastOff bool      // guarded by mu: Connect must not ask for the fast path
	fast    *fastPath // the shared-memory rings once connected with them

	// The socket path's batches: recvmmsg and sendmmsg on the data socket.
	rbMu   sync.Mutex
	rb     *sockio.Reader // guarded by rbMu; nil until the first batch
	rbBufs [][]byte       // guarded by rbMu
	rbLens []int          // guarded by rbMu
	wbMu   sync.Mutex
	wb     *sockio.Writer // guarded by wbMu; nil until the first batch
}

type ctlReply struct {
	op   uint16
	body []byte
	fds  []int
}

// NewSocket makes a socket for protocol proto (Any to take the network's)
// on a connection DefaultDialer makes.
func NewSocket(proto Protocol) (*Socket, error) {
	return DefaultDialer.NewSocket(proto)
}

// newSocket makes a socket for proto on the control connection dial makes.
func newSocket(proto Protocol, dial func() (*net.UnixConn, error)) (*Socket, error) {
	ctl, err := dial()
	if err != nil {
		return nil, &net.OpError{Op: "socket", Net: "ipn", Err: err}
	}
	s := &Socket{
		proto:   proto,
		ctl:     ctl,
		replies: make(chan ctlReply),
		ctlDone: make(chan struct{}),
		closed:  make(chan struct{}),
		mode:    DefaultMode,
		port:    -1,
		fastOff: os.Getenv(spec.FastPathEnv) == "0",
		ctlTick: make(chan struct{}),
	}
	go s.readControl()
	hello := make([]byte, 4)
	hello[0], hello[1] = byte(wire.Version), byte(wire.Version>>8)
	hello[2], hello[3] = byte(proto), byte(proto>>8)
	if _, _, err := s.request(wire.OpHello, hello); err != nil {
		s.Close()
		return nil, &net.OpError{Op: "socket", Net: "ipn", Err: err}
	}
	return s, nil
}

// readControl reads the control connection: replies go to the requester,
// out-of-band messages to the queue Recv serves first.
func (s *Socket) readControl() {
	defer close(s.ctlDone)
	defer s.daemonGone()
	buf := make([]byte, wire.ReplyHeaderLen+65536+64)
	for {
		pkt, fds, err := wire.Recv(s.ctl, buf)
		if err != nil {
			s.ctlErr = err
			return
		}
		op, body, err := wire.Split(pkt)
		if err != nil {
			s.ctlErr = err
			return
		}
		switch op {
		case wire.OpOOB:
			s.pushOOB(append([]byte(nil), body...))
			continue
		case wire.OpEnded:
			s.mu.Lock()
			s.ended = true
			s.mu.Unlock()
			continue
		}
		s.tick()
		r := ctlReply{op: op, body: append([]byte(nil), body...), fds: fds}
		select {
		case s.replies <- r:
		case <-s.closed:
			closeFDs(r.fds)
			return
		}
	}
}

// daemonGone ends the fast path's waits when the control connection ends:
// with no daemon, no one will fill or empty the rings.
func (s *Socket) daemonGone() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fast != nil {
		s.fast.daemonGone()
	}
}

// tick tells a waiting Recv that the control reader took a packet.
func (s *Socket) tick() {
	s.oobMu.Lock()
	close(s.ctlTick)
	s.ctlTick = make(chan struct{})
	s.oobMu.Unlock()
}

// ctlAlive reports whether the control reader still runs.
func (s *Socket) ctlAlive() bool {
	select {
	case <-s.ctlDone:
		return false
	default:
		return true
	}
}

// ctlPending reports whether a packet waits on the control connection.
func (s *Socket) ctlPending() bool {
	return wire.Poll(s.ctl, unix.POLLIN)&unix.POLLIN != 0
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// pushOOB queues an out-of-band message and wakes a Recv blocked on the
// data socket by moving its deadline to the past.
func (s *Socket) pushOOB(m []byte) {
	s.oobMu.Lock()
	defer s.oobMu.Unlock()
	s.oobq = append(s.oobq, m)
	close(s.ctlTick)
	s.ctlTick = make(chan struct{})
	s.mu.Lock()
	connected := s.connected
	s.mu.Unlock()
	if connected {
		s.setDataReadDeadline(time.Unix(1, 0))
		s.armed = false
	}
}

// setDataReadDeadline sets the deadline of the data socket, or makes the
// fast path's Recv look at the socket's deadline and queue again; the
// caller holds oobMu, and the socket is connected.
func (s *Socket) setDataReadDeadline(t time.Time) {
	s.mu.Lock()
	data, fast := s.data, s.fast
	s.mu.Unlock()
	if fast != nil {
		fast.interrupt()
	} else if data != nil {
		data.SetReadDeadline(t)
	}
}

// request sends op with body (and fds) and waits for the reply's body and
// descriptors, or the errno the daemon answered.
func (s *Socket) request(op uint16, body []byte, fds ...int) ([]byte, []int, error) {
	s.reqMu.Lock()
	defer s.reqMu.Unlock()
	select {
	case <-s.closed:
		return nil, nil, net.ErrClosed
	default:
	}
	if err := wire.Send(s.ctl, wire.Packet(op, body), fds...); err != nil {
		// A daemon that refused the connection said why before it
		// closed it: that reply is the answer.
		select {
		case r := <-s.replies:
			if rbody, rerr := wire.SplitReply(r.body); rerr != nil {
				closeFDs(r.fds)
				return rbody, nil, rerr
			}
			closeFDs(r.fds)
		case <-s.ctlDone:
		}
		return nil, nil, s.lostDaemon(err)
	}
	select {
	case r := <-s.replies:
		if r.op != op|wire.ReplyBit {
			closeFDs(r.fds)
			return nil, nil, fmt.Errorf("daemon answered op %#x to op %d: %w", r.op, op, syscall.EPROTO)
		}
		rbody, err := wire.SplitReply(r.body)
		if err != nil {
			closeFDs(r.fds)
			return nil, nil, err
		}
		return rbody, r.fds, nil
	case <-s.ctlDone:
		return nil, nil, s.lostDaemon(s.ctlErr)
	case <-s.closed:
		return nil, nil, net.ErrClosed
	}
}

// lostDaemon describes a control connection that broke: the daemon
// stopped or died, and every network this socket had is lost.
func (s *Socket) lostDaemon(err error) error {
	why := ""
	if err != nil && !errors.Is(err, io.EOF) {
		why = fmt.Sprintf(" (%v)", err)
	}
	return fmt.Errorf("the ipn daemon at %s went away%s: the network is lost: %w", s.ctl.RemoteAddr(), why, syscall.ECONNRESET)
}

// lostWait bounds how long a data path that ended waits for the control
// connection to end too, to tell a daemon that went from a dropped port.
const lostWait = 500 * time.Millisecond

// lost is the error of a data path the daemon ended while the socket could
// still use it: the daemon went away, or (its control connection still up)
// it dropped this socket's port.
func (s *Socket) lost() error {
	t := time.NewTimer(lostWait)
	defer t.Stop()
	select {
	case <-s.closed:
		return net.ErrClosed
	case <-s.ctlDone:
		if s.isClosed() {
			return net.ErrClosed
		}
		return s.lostDaemon(s.ctlErr)
	case <-t.C:
		return fmt.Errorf("the ipn daemon dropped this port: %w", syscall.ECONNRESET)
	}
}

// Done returns a channel that is closed when the socket's connection to the
// daemon ends: after Close, or when the daemon stopped or died.
func (s *Socket) Done() <-chan struct{} { return s.ctlDone }

// Err returns nil until Done is closed; then net.ErrClosed if the socket
// was closed, else why the daemon is gone (an error wrapping ECONNRESET).
func (s *Socket) Err() error {
	select {
	case <-s.ctlDone:
	default:
		return nil
	}
	if s.isClosed() {
		return net.ErrClosed
	}
	return s.lostDaemon(s.ctlErr)
}

func (s *Socket) opError(op string, err error) error {
	if err == nil {
		return nil
	}
	s.mu.Lock()
	path := s.path
	s.mu.Unlock()
	var addr net.Addr
	if path != "" {
		addr = Addr(path)
	}
	return &net.OpError{Op: op, Net: "ipn", Addr: addr, Err: err}
}

func (s *Socket) setOpt(opt uint32, val []byte) error {
	_, _, err := s.request(wire.OpSetOpt, append(wire.U32(opt), val...))
	return err
}

func (s *Socket) getOpt(opt uint32) ([]byte, error) {
	body, _, err := s.request(wire.OpGetOpt, wire.U32(opt))
	return body, err
}

func (s *Socket) setU32(op string, opt uint32, v int) error {
	if v < 0 {
		return s.opError(op, syscall.EINVAL)
	}
	return s.opError(op, s.setOpt(opt, wire.U32(uint32(v))))
}

func (s *Socket) getU32(op string, opt uint32) (int, error) {
	b, err := s.getOpt(opt)
	if err != nil {
		return 0, s.opError(op, err)
	}
	v, err := wire.GetU32(b)
	return int(int32(v)), s.opError(op, err)
}

// SetMTU sets the largest message of the network Bind creates.
func (s *Socket) SetMTU(mtu int) error { return s.setU32("setmtu", wire.OptMTU, mtu) }

// SetNumNodes sets the number of ports of the network Bind creates.
func (s *Socket) SetNumNodes(n int) error { return s.setU32("setnumnodes", wire.OptNumNodes, n) }

// SetMsgPoolSize sets the message pool of the network Bind creates: the
// queue of each receiver (lossy) or the messages in flight (lossless).
func (s *Socket) SetMsgPoolSize(n int) error {
	return s.setU32("setmsgpoolsize", wire.OptMsgPoolSize, n)
}

// SetFlags sets the flags of the network Bind creates.
func (s *Socket) SetFlags(f Flags) error { return s.setU32("setflags", wire.OptFlags, int(f)) }

// SetMode sets the permission bits of the network file Bind creates (the
// umask applies).
func (s *Socket) SetMode(mode os.FileMode) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.bound || s.connected {
		return s.opErrorLocked("setmode", syscall.EISCONN)
	}
	if mode&^os.ModePerm != 0 {
		return s.opErrorLocked("setmode", syscall.EINVAL)
	}
	s.mode, s.modeSet = mode, true
	return nil
}

func (s *Socket) opErrorLocked(op string, err error) error {
	return &net.OpError{Op: op, Net: "ipn", Err: err}
}

// MTU returns the network's MTU (the one Bind would use before binding).
func (s *Socket) MTU() (int, error) { return s.getU32("getmtu", wire.OptMTU) }

// NumNodes returns the network's number of ports.
func (s *Socket) NumNodes() (int, error) { return s.getU32("getnumnodes", wire.OptNumNodes) }

// MsgPoolSize returns the network's message pool size.
func (s *Socket) MsgPoolSize() (int, error) {
	return s.getU32("getmsgpoolsize", wire.OptMsgPoolSize)
}

// NetFlags returns the network's flags.
func (s *Socket) NetFlags() (Flags, error) {
	v, err := s.getU32("getflags", wire.OptFlags)
	return Flags(v), err
}

// SetPort asks for port number n at Connect (EADDRNOTAVAIL if taken); -1,
// the default, takes any free port.
func (s *Socket) SetPort(n int) error {
	if n < -1 {
		return s.opError("setport", fmt.Errorf("port %d: want 0 or more, or -1 for any free port: %w", n, syscall.EINVAL))
	}
	return s.opError("setport", s.setOpt(wire.OptPort, wire.U32(uint32(int32(n)))))
}

// Port returns the port number once connected.
func (s *Socket) Port() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.port
}

// SetDescription sets the port's description (at most 128 bytes), shown by
// ipn ls; before Connect.
func (s *Socket) SetDescription(d string) error {
	return s.opError("setdescr", s.setOpt(wire.OptDescr, []byte(d)))
}

// SetWantNumNodes asks, before Connect, for an out-of-band notice each time
// the number of readers or writers of the network changes.
func (s *Socket) SetWantNumNodes(on bool) error {
	err := s.setU32("setwantoob", wire.OptWantOOBNumNode, boolInt(on))
	if err == nil && on {
		s.mayGetOOB.Store(true)
	}
	return err
}

// SetHandleOOB accepts, before Connect, out-of-band messages sent by other
// nodes with SendOOB.
func (s *Socket) SetHandleOOB(on bool) error {
	err := s.setU32("sethandleoob", wire.OptHandleOOB, boolInt(on))
	if err == nil && on {
		s.mayGetOOB.Store(true)
	}
	return err
}

// SetMonitor asks, before Connect, for a monitor port: it receives a copy
// of every message the other nodes send, whatever the network's policy
// does with it (not only what the policy delivers to it), and drops what
// it has no room for even in a lossless network, so it never slows the
// senders. Connect then needs x (manage) as well as r on the network file
// (else EACCES), and the send side shut down with Shutdown(ShutWrite)
// (else EINVAL).
func (s *Socket) SetMonitor(on bool) error {
	return s.setU32("setmonitor", wire.OptMonitor, boolInt(on))
}

// SetLink marks, before Connect, the port as a link to another network
// (a cable, as ipn plug joins): the network's loop protection sends its
// probes there, and to no other member.
func (s *Socket) SetLink(on bool) error {
	return s.setU32("setlink", wire.OptLink, boolInt(on))
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// ChangeNumNodes changes the number of ports of the network; the socket must
// be bound (a manager). Shrinking over a used port fails with EADDRINUSE.
func (s *Socket) ChangeNumNodes(n int) error {
	return s.setU32("changenumnodes", wire.OptChangeNumNodes, n)
}

// Path returns the network's path once bound or connected (getsockname).
func (s *Socket) Path() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.path
}

// LocalAddr returns the network's address.
func (s *Socket) LocalAddr() net.Addr { return Addr(s.Path()) }

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
	s.mu.Lock()
	if s.bound || s.connected {
		s.mu.Unlock()
		return s.opError("bind", syscall.EINVAL)
	}
	mode := s.mode
	s.mu.Unlock()

	id, err := s.bindAt(abs, mode)
	if err != nil {
		return &net.OpError{Op: "bind", Net: "ipn", Addr: Addr(abs), Err: err}
	}
	s.mu.Lock()
	s.bound, s.path, s.file = true, abs, id
	s.mu.Unlock()
	return nil
}

// bindAt makes the network file at path, as the caller, so the kernel
// checks the directory and sets owner and mode (less the umask), or takes
// the one there (EEXIST), and binds it. It works in the directory opened
// once: a file it made and that the bind refused is removed only if the
// directory still holds that very file, whatever was renamed meanwhile.
func (s *Socket) bindAt(path string, mode os.FileMode) (fileID, error) {
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
	if _, _, err := s.request(wire.OpBind, []byte(path), fd); err != nil {
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
		return s.connect(abs, -1, fileID{})
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
	return s.connect(abs, fd, fileID{uint64(st.Dev), st.Ino})
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
	if err := raw.Control(func(fd uintptr) { cerr = s.connect(f.Name(), int(fd), fileID{}) }); err != nil {
		return &net.OpError{Op: "connect", Net: "ipn", Addr: Addr(f.Name()), Err: err}
	}
	return cerr
}

// connect joins the network of the file fd (the bound one if fd is -1),
// named abs; id, if set, is the file's identity for removeEnded.
func (s *Socket) connect(abs string, fd int, id fileID) error {
	var fds []int
	if fd >= 0 {
		fds = []int{fd}
	}
	s.mu.Lock()
	wantFast := !s.fastOff
	s.mu.Unlock()
	if wantFast {
		// A daemon that does not know the option answers the socket way.
		if err := s.setOpt(wire.OptFastPath, wire.U32(1)); err != nil && !errors.Is(err, syscall.ENOPROTOOPT) {
			return &net.OpError{Op: "connect", Net: "ipn", Addr: Addr(abs), Err: err}
		}
	}
	body, rfds, err := s.request(wire.OpConnect, []byte(abs), fds...)
	if err == nil && len(rfds) != 1 && (!wantFast || len(rfds) != wire.FastPathFDs) {
		closeFDs(rfds)
		err = fmt.Errorf("daemon passed %d descriptors: %w", len(rfds), syscall.EPROTO)
	}
	var rep wire.ConnectReply
	if err == nil {
		if rep, err = wire.DecodeConnectReply(body); err != nil {
			closeFDs(rfds)
		}
	}
	var data *net.UnixConn
	var fast *fastPath
	if err == nil && len(rfds) == wire.FastPathFDs {
		fast, err = newFastPath(rfds)
	} else if err == nil {
		f := os.NewFile(uintptr(rfds[0]), "ipn-data")
		var c net.Conn
		c, err = net.FileConn(f)
		f.Close()
		if err == nil {
			data = c.(*net.UnixConn)
		}
	}
	if err != nil {
		return &net.OpError{Op: "connect", Net: "ipn", Addr: Addr(abs), Err: err}
	}
	s.oobMu.Lock()
	s.mu.Lock()
	s.connected, s.path, s.data, s.fast = true, abs, data, fast
	if fd >= 0 {
		s.file = id
	}
	s.port, s.mtu = int(rep.Port), int(rep.MTU)
	s.canRead, s.canWrite = rep.CanRead, rep.CanWrite
	wdl := s.wdl
	s.mu.Unlock()
	if fast != nil {
		fast.setWriteDeadline(wdl)
	} else {
		data.SetWriteDeadline(wdl)
	}
	s.setDataReadDeadline(s.rdl)
	s.armed = true
	if len(s.oobq) > 0 {
		s.setDataReadDeadline(time.Unix(1, 0))
		s.armed = false
	}
	s.oobMu.Unlock()
	return nil
}

// SetFastPath chooses, before Connect, whether the socket asks the daemon
// for the shared-memory fast path (the default, unless the environment sets
// IPN_FASTPATH=0); without it, or if the daemon refuses, messages go over a
// socket.
func (s *Socket) SetFastPath(on bool) {
	s.mu.Lock()
	s.fastOff = !on
	s.mu.Unlock()
}

// FastPath reports whether the connected socket moves its messages through
// shared-memory rings rather than a socket.
func (s *Socket) FastPath() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fast != nil
}

// CanRead reports whether the socket receives (connected, with r, and not
// shut down for reading).
func (s *Socket) CanRead() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.connected && s.canRead && !s.shutRead
}

// CanWrite reports whether the socket may send.
func (s *Socket) CanWrite() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.connected && s.canWrite && !s.shutWrite
}

// Shutdown closes the receive side, the send side, or both, for good. It
// may be called before Connect. Closing the receive side drops the
// messages waiting for the node.
func (s *Socket) Shutdown(how How) error {
	if how&^ShutReadWrite != 0 || how == 0 {
		return s.opError("shutdown", syscall.EINVAL)
	}
	if _, _, err := s.request(wire.OpShutdown, wire.U32(uint32(how))); err != nil {
		return s.opError("shutdown", err)
	}
	s.mu.Lock()
	s.shutRead = s.shutRead || how&ShutRead != 0
	s.shutWrite = s.shutWrite || how&ShutWrite != 0
	s.mu.Unlock()
	if how&ShutRead != 0 {
		s.oobMu.Lock()
		s.oobq, s.held = nil, nil
		s.oobMu.Unlock()
	}
	return nil
}

// sendCheck returns the data socket or the fast path if the socket may
// send n bytes.
func (s *Socket) sendCheck(n int) (*net.UnixConn, *fastPath, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.isClosed():
		return nil, nil, net.ErrClosed
	case !s.connected:
		return nil, nil, syscall.ENOTCONN
	case s.shutWrite || !s.canWrite:
		return nil, nil, syscall.EPIPE
	case n > s.mtu:
		return nil, nil, syscall.EOVERFLOW
	case n == 0:
		return nil, nil, fmt.Errorf("empty message: %w", syscall.EINVAL)
	}
	return s.data, s.fast, nil
}

func (s *Socket) isClosed() bool {
	select {
	case <-s.closed:
		return true
	default:
		return false
	}
}

// Send sends msg as one message to the network. It fails with EOVERFLOW
// if msg is longer than the MTU, EPIPE if the socket may not send,
// ENOTCONN before Connect, and with an error wrapping ECONNRESET when the
// daemon went away. In a lossless network it blocks while the
// network's pool is full (up to the write deadline).
func (s *Socket) Send(msg []byte) error {
	data, fast, err := s.sendCheck(len(msg))
	switch {
	case err != nil:
	case fast != nil:
		_, err = fast.send([][]byte{msg})
		err = s.sendErr(err)
	default:
		_, err = data.Write(msg)
		err = s.sendErr(unwrapNet(err))
	}
	return s.opError("send", err)
}

// sendErr maps the error of a send that sendCheck allowed: a data path the
// daemon closed means the network is lost.
func (s *Socket) sendErr(err error) error {
	if errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) {
		return s.lost()
	}
	return err
}

// SendBatch sends msgs in order, each as one message, and returns how many
// it sent; it stops at the first that Send would refuse, with Send's error.
// On the fast path a batch costs the daemon one wake-up at most.
func (s *Socket) SendBatch(msgs [][]byte) (int, error) {
	if len(msgs) == 0 {
		return 0, nil
	}
	data, fast, err := s.sendCheck(len(msgs[0]))
	if err != nil {
		return 0, s.opError("send", err)
	}
	s.mu.Lock()
	mtu := s.mtu
	s.mu.Unlock()
	ok := len(msgs)
	for i, m := range msgs {
		if len(m) == 0 || len(m) > mtu {
			ok = i
			break
		}
	}
	sent := 0
	if fast != nil {
		sent, err = fast.send(msgs[:ok])
	} else {
		sent, err = s.writeBatch(data, msgs[:ok])
	}
	err = s.sendErr(err)
	if err == nil && ok < len(msgs) {
		_, _, err = s.sendCheck(len(msgs[ok]))
	}
	return sent, s.opError("send", err)
}

// SendOOB sends msg out of band to the nodes that handle OOB messages.
func (s *Socket) SendOOB(msg []byte) error {
	if _, _, err := s.sendCheck(len(msg)); err != nil {
		return s.opError("sendoob", err)
	}
	_, _, err := s.request(wire.OpSendOOB, msg)
	return s.opError("sendoob", err)
}

// Write sends b as one message; it implements io.Writer.
func (s *Socket) Write(b []byte) (int, error) {
	if err := s.Send(b); err != nil {
		return 0, err
	}
	return len(b), nil
}

// Read receives one message into b; it implements io.Reader. A message
// longer than b is truncated. Out-of-band messages come first, unmarked:
// use Recv to tell them apart.
func (s *Socket) Read(b []byte) (int, error) {
	n, _, err := s.Recv(b)
	return n, err
}

// Recv receives one message into b: the out-of-band ones first, marked
// MsgOOB. It returns io.EOF when the socket can neither send nor receive
// any more, an error wrapping ECONNRESET when the daemon went away (the
// network is lost; Err says the same), EPIPE if only the receive side is
// shut down, ENOTCONN before Connect, and os.ErrDeadlineExceeded (wrapped)
// when the read deadline passes.
func (s *Socket) Recv(b []byte) (int, MsgFlags, error) {
	ms := [1]Message{{Buf: b}}
	if _, err := s.recv(ms[:]); err != nil {
		return 0, 0, err
	}
	return ms[0].N, ms[0].Flags, nil
}

// Message is one message of a batch: RecvBatch fills Buf[:N] and Flags.
type Message struct {
	Buf   []byte
	N     int
	Flags MsgFlags
}

// RecvBatch receives into ms the messages waiting, at least one, as Recv
// would, and returns how many. On the fast path, a socket that never asked
// for out-of-band messages takes a whole batch with no system call while
// messages keep coming; otherwise it receives one at a time.
func (s *Socket) RecvBatch(ms []Message) (int, error) {
	if len(ms) == 0 {
		return 0, nil
	}
	return s.recv(ms)
}

// recv implements Recv and RecvBatch.
func (s *Socket) recv(ms []Message) (int, error) {
	for {
		s.oobMu.Lock()
		if len(s.oobq) > 0 {
			m := s.oobq[0]
			s.oobq[0] = nil
			s.oobq = s.oobq[1:]
			s.oobMu.Unlock()
			return copyMsg(&ms[0], m, MsgOOB)
		}
		if len(s.held) > 0 {
			m := s.held[0]
			s.held[0] = nil
			s.held = s.held[1:]
			s.oobMu.Unlock()
			return copyMsg(&ms[0], m, 0)
		}
		s.mu.Lock()
		data, fast, connected, closed := s.data, s.fast, s.connected, s.isClosed()
		canRead, canWrite := s.canRead && !s.shutRead, s.canWrite && !s.shutWrite
		s.mu.Unlock()
		var err error
		switch {
		case closed:
			err = net.ErrClosed
		case !connected:
			err = syscall.ENOTCONN
		case !canRead && !canWrite:
			err = io.EOF
		case !canRead:
			err = syscall.EPIPE
		}
		if err != nil {
			s.oobMu.Unlock()
			if err == io.EOF {
				return 0, io.EOF
			}
			return 0, s.opError("recv", err)
		}
		rdl := s.rdl
		if !s.armed { // only when a deadline or a wake-up moved it
			s.setDataReadDeadline(rdl)
			s.armed = true
		}
		var gen uint64
		if fast != nil {
			gen = fast.gen.Load()
		}
		s.oobMu.Unlock()

		// A socket that may get out-of-band messages checks each ordinary
		// one against them, so it takes one at a time.
		oob := s.mayGetOOB.Load()
		batch := ms
		if oob {
			batch = ms[:1]
		}
		var got int
		switch {
		case fast != nil:
			got, err = fast.recv(batch, rdl, gen)
		case len(batch) > 1:
			got, err = s.readBatch(data, batch)
		default:
			got, err = readOne(data, &ms[0])
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && (rdl.IsZero() || time.Now().Before(rdl)) {
				continue // woken for an out-of-band message
			}
			if errors.Is(err, io.EOF) {
				// Only the daemon ends the data path of a socket that
				// may still receive: the network is lost.
				return 0, s.opError("recv", s.lost())
			}
			return 0, s.opError("recv", unwrapNet(err))
		}
		// The daemon writes a port's out-of-band messages before the
		// ordinary ones that follow them, so one written before this
		// message is on the control connection or queued: it goes first,
		// and this message waits (flags are lost only for a truncated
		// one, which is not held).
		if oob && ms[0].Flags == 0 && s.oobBefore() {
			s.hold(ms[0].Buf[:ms[0].N])
			continue
		}
		return got, nil
	}
}

// readOne reads one message from the data socket into m; io.EOF when the
// daemon closed it.
func readOne(data *net.UnixConn, m *Message) (int, error) {
	n, _, rflags, _, err := data.ReadMsgUnix(m.Buf, nil)
	if err != nil {
		return 0, err
	}
	if n == 0 {
		return 0, io.EOF
	}
	m.N, m.Flags = n, 0
	if rflags&unix.MSG_TRUNC != 0 {
		m.Flags = MsgTrunc
	}
	return 1, nil
}

// writeBatch sends msgs on the data socket with sendmmsg, waiting for room
// up to the write deadline.
func (s *Socket) writeBatch(data *net.UnixConn, msgs [][]byte) (int, error) {
	s.wbMu.Lock()
	defer s.wbMu.Unlock()
	if s.wb == nil {
		raw, err := data.SyscallConn()
		if err != nil {
			return 0, err
		}
		s.wb = sockio.NewWriter(raw)
	}
	return s.wb.Write(msgs)
}

// readBatch receives into ms what waits on the data socket, at least one
// message, with recvmmsg.
func (s *Socket) readBatch(data *net.UnixConn, ms []Message) (int, error) {
	s.rbMu.Lock()
	defer s.rbMu.Unlock()
	if s.rb == nil {
		raw, err := data.SyscallConn()
		if err != nil {
			return 0, err
		}
		s.rb = sockio.NewReader(raw, false)
	}
	if len(s.rbBufs) < len(ms) {
		s.rbBufs, s.rbLens = make([][]byte, len(ms)), make([]int, len(ms))
	}
	bufs, lens := s.rbBufs[:len(ms)], s.rbLens[:len(ms)]
	for i := range ms {
		bufs[i] = ms[i].Buf
	}
	n, err := s.rb.Read(bufs, lens)
	clear(bufs)
	for i := range n {
		ms[i].N, ms[i].Flags = min(lens[i], len(ms[i].Buf)), 0
		if lens[i] > len(ms[i].Buf) {
			ms[i].Flags = MsgTrunc
		}
	}
	return n, err
}

// hold keeps a copy of an ordinary message for after the out-of-band ones
// due before it.
func (s *Socket) hold(m []byte) {
	s.oobMu.Lock()
	s.held = append(s.held, append([]byte(nil), m...))
	s.oobMu.Unlock()
}

// copyMsg copies m into dst, marking a truncation, as a batch of one.
func copyMsg(dst *Message, m []byte, flags MsgFlags) (int, error) {
	dst.N = copy(dst.Buf, m)
	if dst.N < len(m) {
		flags |= MsgTrunc
	}
	dst.Flags = flags
	return 1, nil
}

// oobBefore reports whether an out-of-band message is queued or waits on
// the control connection, letting the control reader take a waiting one.
func (s *Socket) oobBefore() bool {
	for {
		s.oobMu.Lock()
		queued, tick := len(s.oobq) > 0, s.ctlTick
		s.oobMu.Unlock()
		if queued {
			return true
		}
		if !s.ctlAlive() || !s.ctlPending() {
			return false
		}
		t := time.NewTimer(ctlWait)
		select {
		case <-tick:
		case <-s.ctlDone:
		case <-t.C:
			t.Stop()
			return false
		}
		t.Stop()
	}
}

// unwrapNet strips the *net.OpError of the data socket, which names a
// socketpair, keeping its cause.
func unwrapNet(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) {
		if se, ok := oe.Err.(*os.SyscallError); ok {
			return se.Err
		}
		return oe.Err
	}
	return err
}

// SetDeadline sets the read and write deadlines.
func (s *Socket) SetDeadline(t time.Time) error {
	s.SetReadDeadline(t)
	return s.SetWriteDeadline(t)
}

// SetReadDeadline sets when Recv gives up; the zero time means never.
func (s *Socket) SetReadDeadline(t time.Time) error {
	s.oobMu.Lock()
	defer s.oobMu.Unlock()
	s.rdl = t
	s.mu.Lock()
	connected := s.connected
	s.mu.Unlock()
	if connected {
		if len(s.oobq) > 0 {
			s.armed = false
			return nil // Recv will serve the queue first anyway
		}
		s.armed = true
		s.setDataReadDeadline(t)
	}
	return nil
}

// SetWriteDeadline sets when Send gives up; the zero time means never.
func (s *Socket) SetWriteDeadline(t time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.wdl = t
	if s.fast != nil {
		s.fast.setWriteDeadline(t)
	} else if s.data != nil {
		return s.data.SetWriteDeadline(t)
	}
	return nil
}

// ctlWait bounds how long Recv waits for the control reader to take a
// pending packet.
const ctlWait = 100 * time.Millisecond

// closeTimeout bounds how long Close waits for the daemon.
const closeTimeout = 5 * time.Second

// Close leaves the network and releases the socket. It is idempotent.
func (s *Socket) Close() error {
	s.once.Do(func() {
		s.mu.Lock()
		v := s.vde
		s.mu.Unlock()
		if v != nil {
			v.stop() // its clients' requests need the control connection
		}
		close(s.closed)
		// Data first: the daemon takes what was sent up to the data
		// socket's end before it drops the port, when ctl closes.
		s.mu.Lock()
		if s.data != nil {
			s.data.Close()
		}
		if s.fast != nil {
			s.fast.close()
		}
		s.mu.Unlock()
		// Then wait, briefly, for the daemon to release the port: a
		// port is free again once Close returns.
		s.ctl.CloseWrite()
		t := time.NewTimer(closeTimeout)
		select {
		case <-s.ctlDone:
		case <-t.C:
		}
		t.Stop()
		s.ctl.Close()
		<-s.ctlDone
		s.removeEnded()
	})
	return nil
}

// newReadSocket makes a socket for a request that only reads what a
// daemon serves (a listing, a policy's table or setting): it starts no
// daemon, since a new one would serve nothing, and fails with an error
// wrapping ErrNoDaemon instead.
func newReadSocket() (*Socket, error) {
	return newSocket(Any, DefaultDialer.dialRunning)
}

// list asks the daemon for the networks the caller can see; with a path,
// for the network on that file. The listing comes in pieces of one packet
// each, whatever its size.
func (s *Socket) list(path string) ([]NetInfo, error) {
	var fds []int
	if path != "" {
		abs, err := filepath.Abs(path)
		if err != nil {
			return nil, err
		}
		path = abs
		fd, err := unix.Open(abs, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, &net.OpError{Op: "list", Net: "ipn", Addr: Addr(path), Err: err}
		}
		defer unix.Close(fd)
		fds = []int{fd}
	}
	all, err := s.paged(func(off uint32) ([]byte, error) {
		body, rfds, err := s.request(wire.OpList, wire.U32(off), fds...)
		closeFDs(rfds)
		fds = nil
		return body, err
	})
	if err != nil {
		return nil, &net.OpError{Op: "list", Net: "ipn", Addr: Addr(path), Err: err}
	}
	var list []NetInfo
	if err := json.Unmarshal(all, &list); err != nil {
		return nil, fmt.Errorf("list: %w", err)
	}
	return list, nil
}

// paged reads an answer the daemon gives in pieces: ask(off) returns the
// answer's total length (u32) and its bytes from off.
func (s *Socket) paged(ask func(off uint32) ([]byte, error)) ([]byte, error) {
	var all []byte
	for {
		body, err := ask(uint32(len(all)))
		if err == nil && len(body) < 4 {
			err = fmt.Errorf("%w: a paged answer of %d bytes", wire.ErrMalformed, len(body))
		}
		if err != nil {
			return nil, err
		}
		total := int(binary.LittleEndian.Uint32(body))
		all = append(all, body[4:]...)
		if len(all) >= total || len(body) == 4 {
			return all, nil
		}
	}
}

// AttachTap makes the Linux tap interface name a port of the bound network
// and returns the port's number. The caller opens /dev/net/tun and creates
// the tap (or attaches to an existing one it may use), which needs
// CAP_NET_ADMIN for a new tap, and sets the interface up (addresses are
// left to the user); the daemon then holds the descriptor, so this works
// from any network namespace. The tap's MTU is set to the network's less
// the 14-byte Ethernet header (1500 on a network of 1514; a VLAN tag, 4
// bytes, counts against the network's MTU); where it cannot be (no
// CAP_NET_ADMIN), a larger MTU is refused, with the numbers, and a smaller
// one kept. The port goes when the socket closes, and a tap made here goes
// with it; with persist the port (and tap) stay until ClearPersist. The
// socket must be bound and needs x on the network.
func (s *Socket) AttachTap(name string, persist bool) (int, error) {
	mtu, err := s.MTU()
	if err != nil {
		return -1, s.opError("attachtap", err)
	}
	fd, actual, err := openTap(name, mtu)
	if err != nil {
		return -1, s.opError("attachtap", err)
	}
	defer unix.Close(fd)
	return s.attachDevice("attachtap", wire.DevTap, actual, persist, fd)
}

// AttachGrab makes the existing interface iface (in the caller's network
// namespace) a port of the bound network: frames it receives enter the
// network and frames for the port go out of it. The caller opens an
// AF_PACKET socket on it in promiscuous mode, which needs CAP_NET_RAW;
// when the port goes, the interface's promiscuity is back as before. An
// interface whose MTU is larger than the network's less the 14-byte
// Ethernet header is refused (its larger frames would be lost), with the
// numbers and the fix; its MTU is the host's, and is not changed. The
// socket must be bound and needs x on the network; persist as for
// AttachTap.
func (s *Socket) AttachGrab(iface string, persist bool) (int, error) {
	mtu, err := s.MTU()
	if err != nil {
		return -1, s.opError("attachgrab", err)
	}
	fd, err := openGrab(iface, mtu)
	if err != nil {
		return -1, s.opError("attachgrab", err)
	}
	defer unix.Close(fd)
	return s.attachDevice("attachgrab", wire.DevGrab, iface, persist, fd)
}

// JoinDevice takes over the persistent device port name (a tap or grabbed
// interface) of the bound network: it then belongs to this socket, and
// goes when it closes unless still persistent. It returns the port number.
func (s *Socket) JoinDevice(name string) (int, error) {
	return s.attachDevice("joindevice", 0, name, false, -1)
}

// ClearPersist makes the device port name of the bound network
// non-persistent: it goes when the socket that owns it closes, or at once
// if none does.
func (s *Socket) ClearPersist(name string) error {
	_, err := s.attachDevice("clearpersist", 0, name, false, -1)
	return err
}

func (s *Socket) attachDevice(op string, kind byte, name string, persist bool, fd int) (int, error) {
	var flags byte
	var fds []int
	switch {
	case op == "joindevice":
		flags = wire.DevJoin
	case op == "clearpersist":
		flags = wire.DevClearPersist
	default:
		fds = []int{fd}
		if persist {
			flags = wire.DevPersist
		}
	}
	if name == "" {
		return -1, s.opError(op, fmt.Errorf("no device name: %w", syscall.EINVAL))
	}
	s.mu.Lock()
	bound := s.bound
	s.mu.Unlock()
	if !bound {
		return -1, s.opError(op, fmt.Errorf("device ports need a bound socket (Bind the network): %w", syscall.EINVAL))
	}
	body, rfds, err := s.request(wire.OpAttachDevice, wire.EncodeDevice(kind, flags, name), fds...)
	closeFDs(rfds)
	if err != nil {
		return -1, s.opError(op, err)
	}
	if flags == wire.DevClearPersist {
		return -1, nil
	}
	port, err := wire.GetU32(body)
	if err != nil {
		return -1, s.opError(op, err)
	}
	return int(port), nil
}

// openTap creates or attaches the tap name, gives it the MTU of a network
// of MTU netMTU (tapMTU) and sets it up; it returns the descriptor and the
// interface's name (the kernel's choice for "" or a pattern such as
// "tap%d").
func openTap(name string, netMTU int) (int, string, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) {
			return -1, "", fmt.Errorf("/dev/net/tun: a tap needs access to it and CAP_NET_ADMIN: %w", err)
		}
		return -1, "", fmt.Errorf("/dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return -1, "", fmt.Errorf("tap %q: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.EPERM) {
			return -1, "", fmt.Errorf("creating tap %s needs CAP_NET_ADMIN (run as root, or make the tap beforehand with ip tuntap add %s mode tap user USER): %w", name, name, err)
		}
		return -1, "", fmt.Errorf("tap %s: %w", name, err)
	}
	actual := ifr.Name()
	if err := tapMTU(actual, netMTU); err != nil {
		unix.Close(fd) // a tap made here goes with it
		return -1, "", err
	}
	setUp(actual) // without CAP_NET_ADMIN (a tap the user owns) it stays as it was
	return fd, actual, nil
}

// setUp sets the interface name up.
func setUp(name string) error {
	sock, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(sock)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(sock, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	if ifr.Uint16()&unix.IFF_UP != 0 {
		return nil
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(sock, unix.SIOCSIFFLAGS, ifr)
}

// openGrab opens an AF_PACKET socket on iface that receives every frame
// (promiscuous), if its frames fit a network of MTU netMTU (grabMTU).
func openGrab(iface string, netMTU int) (int, error) {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return -1, fmt.Errorf("interface %s: %w", iface, errors.Unwrap(err))
	}
	if err := grabMTU(ifi, netMTU); err != nil {
		return -1, err
	}
	// Protocol 0: no frame arrives before bind narrows it to iface.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.EPERM) {
			return -1, fmt.Errorf("grabbing %s needs CAP_NET_RAW: %w", iface, err)
		}
		return -1, err
	}
	all := uint16(unix.ETH_P_ALL)<<8 | uint16(unix.ETH_P_ALL)>>8 // htons
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: all, Ifindex: ifi.Index}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind to %s: %w", iface, err)
	}
	mreq := unix.PacketMreq{Ifindex: int32(ifi.Index), Type: unix.PACKET_MR_PROMISC}
	if err := unix.SetsockoptPacketMreq(fd, unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, &mreq); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("promiscuous mode on %s: %w", iface, err)
	}
	return fd, nil
}
