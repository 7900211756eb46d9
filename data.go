package ipn

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/ipn-project/ipn/internal/wire"
)

// sendCheck returns the data path if the socket may send n bytes.
func (s *Socket) sendCheck(n int) (dataPath, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.isClosed():
		return nil, net.ErrClosed
	case !s.connected:
		return nil, syscall.ENOTCONN
	case s.shutWrite || !s.canWrite:
		return nil, syscall.EPIPE
	case n > s.mtu:
		return nil, syscall.EOVERFLOW
	case n == 0:
		return nil, fmt.Errorf("empty message: %w", syscall.EINVAL)
	}
	return s.dp, nil
}

// Send sends msg as one message to the network. It fails with EOVERFLOW
// if msg is longer than the MTU, EPIPE if the socket may not send,
// ENOTCONN before Connect, and with an error wrapping ECONNRESET when the
// daemon went away. In a lossless network it blocks while the
// network's pool is full (up to the write deadline).
func (s *Socket) Send(msg []byte) error {
	dp, err := s.sendCheck(len(msg))
	if err == nil {
		one := [1][]byte{msg}
		_, err = send(dp, one[:])
		err = s.sendErr(err)
	}
	return s.opError("send", err)
}

// send and recv call dp's methods on its concrete type (the two kinds of
// data path): through the interface, their arguments (a caller's
// one-message batch) would escape to the heap, an allocation a message.
func send(dp dataPath, msgs [][]byte) (int, error) {
	switch p := dp.(type) {
	case *fastPath:
		return p.send(msgs)
	case *sockPath:
		return p.send(msgs)
	}
	panic("ipn: a data path of no known kind")
}

func recv(dp dataPath, ms []Message, deadline time.Time, gen uint64) (int, error) {
	switch p := dp.(type) {
	case *fastPath:
		return p.recv(ms, deadline, gen)
	case *sockPath:
		return p.recv(ms, deadline, gen)
	}
	panic("ipn: a data path of no known kind")
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
	dp, err := s.sendCheck(len(msgs[0]))
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
	if ok > 0 {
		sent, err = send(dp, msgs[:ok])
		err = s.sendErr(err)
	}
	if err == nil && ok < len(msgs) {
		_, err = s.sendCheck(len(msgs[ok]))
	}
	return sent, s.opError("send", err)
}

// SendOOB sends msg out of band to the nodes that handle OOB messages.
func (s *Socket) SendOOB(msg []byte) error {
	if _, err := s.sendCheck(len(msg)); err != nil {
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
		dp, connected, closed := s.dp, s.connected, s.isClosed()
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
		// An out-of-band message queued, or a deadline set, from now on
		// interrupts the wait: it is taken after gen.
		rdl, gen := s.rdl, dp.gen()
		s.oobMu.Unlock()

		// A socket that may get out-of-band messages checks each ordinary
		// one against them, so it takes one at a time.
		oob := s.mayGetOOB.Load()
		batch := ms
		if oob {
			batch = ms[:1]
		}
		got, err := recv(dp, batch, rdl, gen)
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

// SetDeadline sets the read and write deadlines.
func (s *Socket) SetDeadline(t time.Time) error {
	s.SetReadDeadline(t)
	return s.SetWriteDeadline(t)
}

// SetReadDeadline sets when Recv gives up; the zero time means never. A
// Recv waiting takes the new deadline at once.
func (s *Socket) SetReadDeadline(t time.Time) error {
	s.oobMu.Lock()
	defer s.oobMu.Unlock()
	s.rdl = t
	s.mu.Lock()
	dp := s.dp
	s.mu.Unlock()
	if dp != nil {
		dp.interrupt() // a Recv waiting looks at rdl again
	}
	return nil
}

// SetWriteDeadline sets when Send gives up; the zero time means never.
func (s *Socket) SetWriteDeadline(t time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.wdl = t
	if s.dp != nil {
		return s.dp.setWriteDeadline(t)
	}
	return nil
}
