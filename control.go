package ipn

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/internal/wire"
)

// readControl reads the control connection: replies go to the requester,
// out-of-band messages to the queue Recv serves first.
func (s *Socket) readControl(cc *ctlConn) {
	defer close(cc.done)
	defer s.daemonGone(cc)
	buf := make([]byte, wire.ReplyHeaderLen+65536+64)
	for {
		pkt, fds, err := wire.Recv(cc.c, buf)
		if err != nil {
			cc.err = err
			return
		}
		op, body, err := wire.Split(pkt)
		if err != nil {
			cc.err = err
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
		case cc.replies <- r:
		case <-s.closed:
			closeFDs(r.fds)
			return
		}
	}
}

// daemonGone ends the data path's waits when the control connection cc
// ends: with no daemon, no one will fill or empty the fast path's rings. A
// socket that does not re-join is then done.
func (s *Socket) daemonGone(cc *ctlConn) {
	s.mu.Lock()
	current := s.cc == cc
	if current && s.dp != nil {
		s.dp.daemonGone()
	}
	rejoin := s.rj.on
	s.mu.Unlock()
	s.bump()
	if current && !rejoin {
		s.finish(s.lostDaemon(cc, cc.err))
	}
}

// tick tells a waiting Recv that the control reader took a packet.
func (s *Socket) tick() {
	s.oobMu.Lock()
	close(s.ctlTick)
	s.ctlTick = make(chan struct{})
	s.oobMu.Unlock()
}

// ctlAlive reports whether the control reader of cc still runs.
func ctlAlive(cc *ctlConn) bool {
	select {
	case <-cc.done:
		return false
	default:
		return true
	}
}

// ctlPending reports whether a packet waits on the control connection cc.
func ctlPending(cc *ctlConn) bool {
	return wire.Poll(cc.c, unix.POLLIN)&unix.POLLIN != 0
}

// pushOOB queues an out-of-band message and wakes a Recv waiting on the
// data path.
func (s *Socket) pushOOB(m []byte) {
	s.oobMu.Lock()
	defer s.oobMu.Unlock()
	s.oobq = append(s.oobq, m)
	close(s.ctlTick)
	s.ctlTick = make(chan struct{})
	s.mu.Lock()
	dp := s.dp
	s.mu.Unlock()
	if dp != nil {
		dp.interrupt()
	}
}

// request sends op with body (and fds) and waits for the reply's body and
// descriptors, or the errno the daemon answered. While the socket
// re-joins, it waits for it; a request the daemon's going failed is made
// again on the new connection. (Requests that change what a re-join
// replays go through stateCall.)
func (s *Socket) request(op uint16, body []byte, fds ...int) ([]byte, []int, error) {
	for {
		cc, err := s.waitConn()
		if err != nil {
			return nil, nil, err
		}
		rbody, rfds, err := s.requestOn(cc, op, body, fds...)
		if err != nil && s.rejoinAfter(cc) {
			continue
		}
		return rbody, rfds, err
	}
}

// requestOn makes a request on the control connection cc.
func (s *Socket) requestOn(cc *ctlConn, op uint16, body []byte, fds ...int) ([]byte, []int, error) {
	cc.reqMu.Lock()
	defer cc.reqMu.Unlock()
	select {
	case <-s.closed:
		return nil, nil, net.ErrClosed
	default:
	}
	if err := wire.Send(cc.c, wire.Packet(op, body), fds...); err != nil {
		// A daemon that refused the connection said why before it
		// closed it: that reply is the answer.
		select {
		case r := <-cc.replies:
			if rbody, rerr := wire.SplitReply(r.body); rerr != nil {
				closeFDs(r.fds)
				return rbody, nil, rerr
			}
			closeFDs(r.fds)
		case <-cc.done:
		}
		return nil, nil, s.lostDaemon(cc, err)
	}
	timer := time.NewTimer(s.reqTimeout)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil, nil, s.giveUp(cc, op)
	case r := <-cc.replies:
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
	case <-cc.done:
		return nil, nil, s.lostDaemon(cc, cc.err)
	case <-s.closed:
		return nil, nil, net.ErrClosed
	}
}

// giveUp ends the control connection of a daemon that did not answer op
// within the request timeout (stopped, hung, or too loaded to serve): a
// reply that came later would answer the wrong request. The socket is
// unusable from then on, and says why.
func (s *Socket) giveUp(cc *ctlConn, op uint16) error {
	err := fmt.Errorf("the ipn daemon at %s did not answer request %d within %v (stopped or hung?): %w",
		cc.c.RemoteAddr(), op, s.reqTimeout, syscall.ETIMEDOUT)
	s.mu.Lock()
	if cc.hung == nil {
		cc.hung = err
	}
	s.mu.Unlock()
	cc.c.Close()
	return err
}

// lostDaemon describes a control connection that broke: the daemon
// stopped or died, and every network this socket had is lost.
func (s *Socket) lostDaemon(cc *ctlConn, err error) error {
	s.mu.Lock()
	hung := cc.hung
	s.mu.Unlock()
	if hung != nil {
		return hung
	}
	why := ""
	if err != nil && !errors.Is(err, io.EOF) {
		why = fmt.Sprintf(" (%v)", err)
	}
	lost := ""
	if n, known := s.Lost(); !known {
		lost = "; an unknown number of messages sent were lost"
	} else if n > 0 {
		lost = fmt.Sprintf("; %s sent before were lost", plural(n, "message"))
	}
	return fmt.Errorf("the ipn daemon at %s went away%s: the network is lost%s: %w", cc.c.RemoteAddr(), why, lost, syscall.ECONNRESET)
}

// lostWait bounds how long a data path that ended waits for the control
// connection to end too, to tell a daemon that went from a dropped port.
const lostWait = 500 * time.Millisecond

// lost is the error of a data path the daemon ended while the socket could
// still use it: the daemon went away, or (its control connection still up)
// it dropped this socket's port.
func (s *Socket) lost(cc *ctlConn) error {
	t := time.NewTimer(lostWait)
	defer t.Stop()
	select {
	case <-s.closed:
		return net.ErrClosed
	case <-cc.done:
		if s.isClosed() {
			return net.ErrClosed
		}
		return s.lostDaemon(cc, cc.err)
	case <-t.C:
		return fmt.Errorf("the ipn daemon dropped this port: %w", syscall.ECONNRESET)
	}
}

// Done returns a channel that is closed when the socket's connection to the
// daemon ends for good: after Close, or when the daemon stopped or died
// (with SetRejoin, only if it cannot re-join: see Err).
func (s *Socket) Done() <-chan struct{} { return s.done }

// Err returns nil until Done is closed; then net.ErrClosed if the socket
// was closed, else why the daemon is gone (an error wrapping ECONNRESET,
// or ETIMEDOUT for a daemon that stopped answering).
func (s *Socket) Err() error {
	select {
	case <-s.done:
	default:
		return nil
	}
	if s.isClosed() {
		return net.ErrClosed
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.doneErr
}

// newReadSocket makes a socket for a request that only reads what a
// daemon serves (a listing, a policy's table or setting): it starts no
// daemon, since a new one would serve nothing, and fails with an error
// wrapping ErrNoDaemon instead.
func newReadSocket() (*Socket, error) {
	return newSocket(Any, DefaultDialer.dialRunning, DefaultDialer.RequestTimeout)
}

// list asks the daemon for the networks the caller can see; with a path,
// for the network on that file. The listing comes in pieces of one packet
// each, whatever its size.
func (s *Socket) list(path string) ([]NetInfo, error) {
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
		return s.listFD(fd, path)
	}
	return s.listFD(-1, path)
}

// listFD asks for the network of the file fd (all the caller can see if
// fd is -1), named path in errors.
func (s *Socket) listFD(fd int, path string) ([]NetInfo, error) {
	var fds []int
	if fd >= 0 {
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
