package ipn

import (
	"errors"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/internal/spec"
	"github.com/ipn-project/ipn/internal/wire"
)

// Socket is an IPN socket: a node of a network once connected.
//
// Send and Recv may be called concurrently with each other and with the
// option calls; Close unblocks them all.
//
// Lock order: gate, then oobMu, then mu.
type Socket struct {
	proto      Protocol
	dial       func() (*net.UnixConn, error) // the Dialer's, for re-joining
	reqTimeout time.Duration                 // how long a request waits for its reply
	once       sync.Once                     // for Close
	closing    chan struct{}                 // closed when Close begins
	closed     chan struct{}                 // closed by Close
	done       chan struct{}                 // Done; closed by finish
	doneOnce   sync.Once

	// gate is held shared by each Send while it uses the data path, and
	// exclusively by the re-join to retire it: sent then counts, exactly,
	// what that data path accepted.
	gate sync.RWMutex
	sent atomic.Uint64 // messages the current data path accepted

	mu        sync.Mutex // guards the fields below
	cc        *ctlConn   // the control connection to the daemon
	doneErr   error      // why the socket is finished, once done is closed
	path      string     // network path once bound or connected
	mode      os.FileMode
	modeSet   bool       // SetMode was called
	file      fileID     // the network file's identity, once bound or connected by path
	ended     bool       // the daemon said this socket's leaving ended the network
	vde       *vdeServer // the VDE service of ServeVDE, or nil
	rj        rejoinState
	bound     bool
	connected bool
	dp        dataPath // how messages move once connected: sockPath or fastPath
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
	// ctlTick is closed and replaced each time the control reader has
	// taken a packet, for Recv to wait on.
	ctlTick chan struct{}
	held    [][]byte // ordinary messages read while an OOB one was due
	// mayGetOOB is set once the socket asked for out-of-band messages;
	// until then Recv need not look for them.
	mayGetOOB atomic.Bool
	lbufMu    sync.Mutex
	lbuf      []byte // RecvInPlace's buffer where it cannot lend in place

	fastOff bool // guarded by mu: Connect must not ask for the fast path

	daemonProto int    // guarded by mu: the protocol version spoken (hello)
	daemonBuild string // guarded by mu: the daemon's build, as it said
}

// ctlConn is one control connection to a daemon and its reader.
type ctlConn struct {
	c       *net.UnixConn
	reqMu   sync.Mutex    // one request at a time on c
	replies chan ctlReply // from the control reader to the requester
	done    chan struct{} // closed when the control reader exits
	err     error         // why the control reader exited; read after done
	hung    error         // guarded by Socket.mu: why c was given up, a reply that never came
}

func newCtlConn(c *net.UnixConn) *ctlConn {
	return &ctlConn{c: c, replies: make(chan ctlReply), done: make(chan struct{})}
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
func newSocket(proto Protocol, dial func() (*net.UnixConn, error), timeout time.Duration) (*Socket, error) {
	ctl, err := dial()
	if err != nil {
		return nil, &net.OpError{Op: "socket", Net: "ipn", Err: err}
	}
	if timeout <= 0 {
		timeout = DefaultRequestTimeout
	}
	s := &Socket{
		proto:      proto,
		dial:       dial,
		cc:         newCtlConn(ctl),
		reqTimeout: timeout,
		closing:    make(chan struct{}),
		closed:     make(chan struct{}),
		done:       make(chan struct{}),
		mode:       DefaultMode,
		port:       -1,
		fastOff:    os.Getenv(spec.FastPathEnv) == "0",
		ctlTick:    make(chan struct{}),
	}
	s.rj.init()
	go s.readControl(s.cc)
	if err := s.hello(s.cc, proto); err != nil {
		s.Close()
		return nil, &net.OpError{Op: "socket", Net: "ipn", Err: err}
	}
	return s, nil
}

// hello says hello on cc for protocol proto, in this library's protocol
// version or, to a daemon of an older build that refuses it, in the
// newest the daemon speaks, and keeps the daemon's version and build.
func (s *Socket) hello(cc *ctlConn, proto Protocol) error {
	for v := wire.Version; ; v-- {
		hello := []byte{byte(v), byte(v >> 8), byte(proto), byte(proto >> 8)}
		res, _, err := s.requestOn(cc, wire.OpHello, hello)
		var we *wire.Error
		if err != nil && v > wire.MinVersion && errors.As(err, &we) && we.Errno == syscall.EPROTONOSUPPORT &&
			strings.HasPrefix(we.Text, "protocol version ") {
			continue // an older daemon: say hello as it speaks
		}
		if err != nil {
			return err
		}
		dv, build := wire.DecodeHelloReply(res)
		s.mu.Lock()
		s.daemonProto, s.daemonBuild = min(v, dv), build
		s.mu.Unlock()
		return nil
	}
}

// DaemonVersion returns the protocol version the socket speaks with its
// daemon, the daemon's or this library's (wire.Version), whichever is
// older, and the daemon's build ("" for a daemon of protocol 1). A
// version older than this library's means an older daemon: ipn daemon
// --takeover replaces it (one of protocol 1 predates takeovers: it must be
// stopped and started instead).
func (s *Socket) DaemonVersion() (protocol int, build string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.daemonProto, s.daemonBuild
}

// ProtocolVersion is the newest protocol version this library speaks.
const ProtocolVersion = wire.Version

// conn returns the current control connection.
func (s *Socket) conn() *ctlConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cc
}

// finish closes Done, once; err says why (nil: Close).
func (s *Socket) finish(err error) {
	s.doneOnce.Do(func() {
		s.mu.Lock()
		s.doneErr = err
		s.mu.Unlock()
		close(s.done)
	})
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
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

// Path returns the network's path once bound or connected (getsockname).
func (s *Socket) Path() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.path
}

// LocalAddr returns the network's address.
func (s *Socket) LocalAddr() net.Addr { return Addr(s.Path()) }

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
	err := s.stateCall(func(cc *ctlConn) error {
		if _, _, err := s.requestOn(cc, wire.OpShutdown, wire.U32(uint32(how))); err != nil {
			return err
		}
		s.mu.Lock()
		s.shutRead = s.shutRead || how&ShutRead != 0
		s.shutWrite = s.shutWrite || how&ShutWrite != 0
		s.mu.Unlock()
		return nil
	})
	if err != nil {
		return s.opError("shutdown", err)
	}
	if how&ShutRead != 0 {
		s.oobMu.Lock()
		s.oobq, s.held = nil, nil
		s.oobMu.Unlock()
	}
	return nil
}

func (s *Socket) isClosed() bool {
	select {
	case <-s.closed:
		return true
	default:
		return false
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

// ctlWait bounds how long Recv waits for the control reader to take a
// pending packet.
const ctlWait = 100 * time.Millisecond

// closeTimeout bounds how long Close waits for the daemon.
const closeTimeout = 5 * time.Second

// Close leaves the network and releases the socket, stopping its re-join
// if one runs. It is idempotent.
func (s *Socket) Close() error {
	s.once.Do(func() {
		close(s.closing) // a re-join stops, and requests stop waiting for one
		s.mu.Lock()
		v := s.vde
		s.mu.Unlock()
		if v != nil {
			v.stop() // its clients' requests need the control connection
		}
		close(s.closed)
		s.rj.wg.Wait() // the re-join has stopped: cc and dp stay as they are
		// Data first: the daemon takes what was sent up to the data
		// socket's end before it drops the port, when ctl closes.
		s.mu.Lock()
		cc, dp, drain := s.cc, s.dp, s.rj.drain
		s.rj.drain = nil
		s.mu.Unlock()
		if dp != nil {
			dp.close()
		}
		for _, d := range drain {
			d.close()
		}
		// Then wait, briefly, for the daemon to release the port: a
		// port is free again once Close returns.
		cc.c.CloseWrite()
		t := time.NewTimer(closeTimeout)
		select {
		case <-cc.done:
		case <-t.C:
		}
		t.Stop()
		cc.c.Close()
		<-cc.done
		s.rj.release()
		s.removeEnded()
		s.finish(nil)
	})
	return nil
}
