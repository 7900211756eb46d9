package ipn

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/ipn-project/ipn/internal/spec"
	"github.com/ipn-project/ipn/internal/wire"
)

// sendCheck returns the data path, its control connection and the MTU if
// the socket may send n bytes; errRejoining while it re-joins.
func (s *Socket) sendCheck(n int) (dataPath, *ctlConn, int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.isClosed():
		return nil, nil, 0, net.ErrClosed
	case !s.connected:
		return nil, nil, 0, syscall.ENOTCONN
	case s.dp == nil:
		return nil, s.cc, 0, errRejoining
	case s.shutWrite || !s.canWrite:
		return nil, nil, 0, syscall.EPIPE
	case n > s.mtu:
		return nil, nil, 0, tooLong(n, s.mtu, "the network's MTU")
	case n == 0:
		return nil, nil, 0, fmt.Errorf("empty message: %w", syscall.EINVAL)
	}
	return s.dp, s.cc, s.mtu, nil
}

// Send sends msg as one message to the network. It fails with EOVERFLOW
// (errors.Is matches EMSGSIZE too) if msg is longer than the MTU, EPIPE if the socket may not send,
// ENOTCONN before Connect, and with an error wrapping ECONNRESET when the
// daemon went away. In a lossless network it blocks while the
// network's pool is full (up to the write deadline).
//
// With SetRejoin, a Send while the socket re-joins waits for it (up to the
// write deadline) instead of failing.
func (s *Socket) Send(msg []byte) error {
	one := [1][]byte{msg}
	_, err := s.sendAll(one[:])
	return s.opError("send", err)
}

// sendAll sends msgs in order, up to the first that Send would refuse,
// and returns how many it sent. Each message a data path accepted counts
// in sent; while the socket re-joins, it waits.
func (s *Socket) sendAll(msgs [][]byte) (int, error) {
	done := 0
	for {
		s.gate.RLock()
		dp, cc, mtu, err := s.sendCheck(len(msgs[done]))
		if err != nil {
			s.gate.RUnlock()
			if err == errRejoining {
				if err = s.waitRejoin(cc, true); err == nil {
					continue
				}
			}
			return done, err
		}
		ok := done + 1
		for ok < len(msgs) && len(msgs[ok]) > 0 && len(msgs[ok]) <= mtu {
			ok++
		}
		n, err := send(dp, msgs[done:ok], mtu)
		s.sent.Add(uint64(n))
		s.gate.RUnlock()
		done += n
		if err != nil {
			if !errors.Is(err, syscall.EPIPE) && !errors.Is(err, syscall.ECONNRESET) {
				return done, err
			}
			// A data path the daemon closed: the network is lost, or
			// with SetRejoin, the socket re-joins and sends the rest.
			if err = s.afterLost(cc, true); err != nil {
				return done, err
			}
			continue
		}
		if done == len(msgs) {
			return done, nil
		}
	}
}

// errTooLong is a message refused for its length: EOVERFLOW, as IPN has
// it, which errors.Is matches with EMSGSIZE too, the errno of a socket's
// too-long datagram.
type errTooLong struct {
	n, max int
	what   string
}

func tooLong(n, max int, what string) error { return &errTooLong{n, max, what} }

func (e *errTooLong) Error() string {
	return fmt.Sprintf("message of %d bytes is over %s, %d bytes: %v", e.n, e.what, e.max, syscall.EOVERFLOW)
}

// Unwrap returns EOVERFLOW.
func (e *errTooLong) Unwrap() error { return syscall.EOVERFLOW }

// Is matches EMSGSIZE as well.
func (e *errTooLong) Is(target error) bool { return target == syscall.EMSGSIZE }

// send and recv call dp's methods on its concrete type (the two kinds of
// data path): through the interface, their arguments (a caller's
// one-message batch) would escape to the heap, an allocation a message.
// mtu is the network's, which tells the data socket whether it carries
// fragments.
func send(dp dataPath, msgs [][]byte, mtu int) (int, error) {
	switch p := dp.(type) {
	case *fastPath:
		return p.send(msgs)
	case *sockPath:
		p.useMTU(mtu)
		return p.send(msgs)
	}
	panic("ipn: a data path of no known kind")
}

// recv receives at least one message from dp into ms, waiting until
// deadline (zero: none) or an interruption after gen, both reported as
// os.ErrDeadlineExceeded; io.EOF once the daemon closed the path and every
// message before is read. With alloc (ms of one message), the message goes
// in the buffer alloc makes for its length (see RecvFunc); with lend too,
// the fast path lends it in place instead (RecvInPlace).
func recv(dp dataPath, ms []Message, deadline time.Time, gen uint64, mtu int, alloc func(int) []byte, lend func([]byte, MsgFlags)) (int, error) {
	switch p := dp.(type) {
	case *fastPath:
		if alloc != nil && lend == nil {
			// The rings tell a message's length only as they copy it
			// out: alloc is asked for the MTU.
			ms[0].Buf = alloc(mtu)
		}
		return p.recv(ms, deadline, gen, lend)
	case *sockPath:
		p.useMTU(mtu)
		return p.recvAlloc(ms, deadline, gen, alloc)
	}
	panic("ipn: a data path of no known kind")
}

// SendBatch sends msgs in order, each as one message, and returns how many
// it sent; it stops at the first that Send would refuse, with Send's error.
// On the fast path a batch costs the daemon one wake-up at most.
func (s *Socket) SendBatch(msgs [][]byte) (int, error) {
	if len(msgs) == 0 {
		return 0, nil
	}
	sent, err := s.sendAll(msgs)
	return sent, s.opError("send", err)
}

// SendOOB sends msg out of band to the nodes that handle OOB messages.
func (s *Socket) SendOOB(msg []byte) error {
	if _, _, _, err := s.sendCheck(len(msg)); err != nil && err != errRejoining {
		return s.opError("sendoob", err)
	}
	if len(msg) > spec.MaxOOB {
		return s.opError("sendoob", tooLong(len(msg), spec.MaxOOB, "the longest out-of-band message"))
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
// when the read deadline passes. With SetRejoin, a Recv while the socket
// re-joins returns what the old daemon had delivered, then waits.
func (s *Socket) Recv(b []byte) (int, MsgFlags, error) {
	ms := [1]Message{{Buf: b}}
	if _, err := s.recv(ms[:], nil, nil); err != nil {
		return 0, 0, err
	}
	return ms[0].N, ms[0].Flags, nil
}

// RecvFunc receives one message as Recv does, into a buffer made for it:
// alloc(size) is called with the message's length before it is read, and
// returns the buffer, which RecvFunc returns holding the message (a
// buffer shorter than size truncates it, marked MsgTrunc; nil drops it,
// returned empty and marked MsgTrunc). It serves a receiver that bounds
// its memory by the messages it holds rather than by the MTU, on a
// network of big messages. alloc may block: the read deadline bounds the
// wait for a message, not alloc. On the fast path alloc is asked for the
// MTU (the rings tell a message's length only as they copy it out), again
// if the wait ends with no message. On a socket that asked for
// out-of-band messages, a message that must wait for one is kept by the
// socket, and alloc is called again for it: the first buffer is dropped.
func (s *Socket) RecvFunc(alloc func(size int) []byte) ([]byte, MsgFlags, error) {
	ms := [1]Message{}
	if _, err := s.recv(ms[:], alloc, nil); err != nil {
		return nil, 0, err
	}
	return ms[0].Buf[:ms[0].N], ms[0].Flags, nil
}

// RecvInPlace receives one message as Recv does and calls fn with it. On
// the fast path it is lent in place, with no copy: from the ring the
// daemon fills for this member or, on a lossy hub, from the network's
// shared log, where every member reads the same bytes. msg is valid only
// until fn returns, and fn must not write to it (the log is mapped
// read-only: a write faults). A receiver that takes longer than the log
// lasts on a lossy hub may be lapped while fn reads: RecvInPlace then
// returns an error wrapping ErrOverwritten, and what fn saw must be
// discarded (the message counts as a drop). Elsewhere the message is
// copied into a buffer of the Socket's first. fn may Close the socket (the
// memory stays mapped until fn returns), but must not receive from it: a
// receive in fn waits for fn's own return.
func (s *Socket) RecvInPlace(fn func(msg []byte, flags MsgFlags)) error {
	ms := [1]Message{}
	var buf []byte
	alloc := func(size int) []byte {
		if cap(buf) < size {
			buf = s.lendBuf(size)
		}
		return buf[:size]
	}
	_, err := s.recv(ms[:], alloc, fn)
	if err == nil && ms[0].Flags&msgLent == 0 {
		fn(ms[0].Buf[:ms[0].N], ms[0].Flags)
	}
	if buf != nil {
		s.lbufMu.Lock()
		s.lbuf = buf[:0]
		s.lbufMu.Unlock()
	}
	return err
}

// lendBuf returns a buffer of size bytes for RecvInPlace: the Socket's,
// unless another RecvInPlace holds it.
func (s *Socket) lendBuf(size int) []byte {
	s.lbufMu.Lock()
	b := s.lbuf
	s.lbuf = nil
	s.lbufMu.Unlock()
	if cap(b) < size {
		b = make([]byte, size)
	}
	return b[:size]
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
	return s.recv(ms, nil, nil)
}

// recv implements Recv, RecvFunc (alloc not nil: ms holds one message,
// whose buffer alloc makes), RecvInPlace (lend too: the fast path may lend
// the message to lend in place, marking it msgLent) and RecvBatch.
func (s *Socket) recv(ms []Message, alloc func(int) []byte, lend func([]byte, MsgFlags)) (int, error) {
	for {
		s.oobMu.Lock()
		if len(s.oobq) > 0 {
			m := s.oobq[0]
			s.oobq[0] = nil
			s.oobq = s.oobq[1:]
			s.oobMu.Unlock()
			if alloc != nil {
				ms[0].Buf = alloc(len(m))
			}
			return copyMsg(&ms[0], m, MsgOOB)
		}
		if len(s.held) > 0 {
			m := s.held[0]
			s.held[0] = nil
			s.held = s.held[1:]
			s.oobMu.Unlock()
			if alloc != nil {
				ms[0].Buf = alloc(len(m))
			}
			return copyMsg(&ms[0], m, 0)
		}
		s.mu.Lock()
		dp, cc, connected, closed, mtu := s.dp, s.cc, s.connected, s.isClosed(), s.mtu
		canRead, canWrite := s.canRead && !s.shutRead, s.canWrite && !s.shutWrite
		var old dataPath // a daemon's that went: read it to its end first
		if len(s.rj.drain) > 0 {
			old = s.rj.drain[0]
		}
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
		if old != nil {
			s.oobMu.Unlock()
			got, err := recv(old, ms[:1], time.Time{}, old.gen(), mtu, alloc, nil)
			if err != nil {
				s.drained(old)
				continue
			}
			return got, nil
		}
		if dp == nil { // re-joining
			s.oobMu.Unlock()
			if err := s.waitRejoin(cc, false); err != nil {
				return 0, s.opError("recv", err)
			}
			continue
		}
		// An out-of-band message queued, or a deadline set, from now on
		// interrupts the wait: it is taken after gen.
		rdl, gen := s.rdl, dp.gen()
		s.oobMu.Unlock()

		// A socket that may get out-of-band messages checks each ordinary
		// one against them, so it takes one at a time.
		oob := s.mayGetOOB.Load()
		batch, lendTo := ms, lend
		if oob {
			batch, lendTo = ms[:1], nil
		}
		got, err := recv(dp, batch, rdl, gen, mtu, alloc, lendTo)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && (rdl.IsZero() || time.Now().Before(rdl)) {
				continue // woken for an out-of-band message
			}
			if errors.Is(err, io.EOF) {
				// Only the daemon ends the data path of a socket that
				// may still receive: the network is lost, or with
				// SetRejoin, the socket re-joins.
				if err := s.afterLost(cc, false); err != nil {
					return 0, s.opError("recv", err)
				}
				continue
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
		cc := s.conn()
		if !ctlAlive(cc) || !ctlPending(cc) {
			return false
		}
		t := time.NewTimer(ctlWait)
		select {
		case <-tick:
		case <-cc.done:
		case <-t.C:
			t.Stop()
			return false
		}
		t.Stop()
	}
}

// SetDeadline sets the read and write deadlines.
func (s *Socket) SetDeadline(t time.Time) error {
	s.SetReadDeadline(t)
	return s.SetWriteDeadline(t)
}

// SetReadDeadline sets when Recv gives up; the zero time means never. A
// Recv waiting takes the new deadline at once.
func (s *Socket) SetReadDeadline(t time.Time) error {
	s.oobMu.Lock()
	s.rdl = t
	s.mu.Lock()
	dp := s.dp
	s.mu.Unlock()
	if dp != nil {
		dp.interrupt() // a Recv waiting looks at rdl again
	}
	s.oobMu.Unlock()
	s.bump() // and one waiting for a re-join
	return nil
}

// SetWriteDeadline sets when Send gives up; the zero time means never.
func (s *Socket) SetWriteDeadline(t time.Time) error {
	s.mu.Lock()
	s.wdl = t
	var err error
	if s.dp != nil {
		err = s.dp.setWriteDeadline(t)
	}
	s.mu.Unlock()
	s.bump() // a Send waiting for a re-join looks at it again
	return err
}
