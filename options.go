package ipn

import (
	"fmt"
	"net"
	"os"
	"syscall"

	"github.com/ipn-project/ipn/internal/wire"
)

// setOpt sets an option, recording it for a re-join to replay.
func (s *Socket) setOpt(opt uint32, val []byte) error {
	return s.stateCall(func(cc *ctlConn) error {
		if _, _, err := s.requestOn(cc, wire.OpSetOpt, append(wire.U32(opt), val...)); err != nil {
			return err
		}
		s.recordOpt(opt, val)
		return nil
	})
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
	_, fast := s.dp.(*fastPath)
	return fast
}
