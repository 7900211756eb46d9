package daemon

import (
	"fmt"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/engine"
	"github.com/ipn-project/ipn/internal/perm"
	"github.com/ipn-project/ipn/internal/wire"
	"github.com/ipn-project/ipn/port/vde"
)

// The VDE service of a network runs in a process of its manager (ipn vde,
// or any program that calls ipn's ServeVDE): that process makes the
// switch's directory, accepts the clients, reads their requests and
// connects to their data sockets, all with its user's rights. For each
// client it passes the daemon two descriptors (OpVDEJoin): the client's
// control stream, whose SO_PEERCRED tells the daemon who the client is,
// and the switch's datagram socket, connected to the client's. The daemon
// touches no path: it makes a port on the datagram socket with the sides
// that both the client's and the manager's rights on the network give.
// Whatever stream a session passes (one it connected itself names the
// listener's user, not a client's), a port never gets more than the
// serving user's own rights.

// doVDEJoin answers OpVDEJoin.
func (ss *session) doVDEJoin(body []byte, fds []int) ([]byte, error) {
	want, descr, err := wire.DecodeVDEJoin(body)
	if err != nil {
		return nil, err
	}
	if ss.bound == nil {
		return nil, fmt.Errorf("serving VDE needs a bound socket (a manager): %w", syscall.EACCES)
	}
	if len(fds) != 2 {
		return nil, fmt.Errorf("want the client's control stream and the data socket, got %d descriptors: %w", len(fds), syscall.EINVAL)
	}
	ctl, data := fds[0], fds[1]
	if err := unixSocket(ctl, unix.SOCK_STREAM, "the control stream"); err != nil {
		return nil, err
	}
	if err := unixSocket(data, unix.SOCK_DGRAM, "the data socket"); err != nil {
		return nil, err
	}
	if _, err := unix.Getpeername(data); err != nil {
		return nil, fmt.Errorf("the data socket is not connected: %w", syscall.EINVAL)
	}
	client, err := fdCred(ctl)
	if err != nil {
		return nil, err
	}
	nf := netFileOf(ss.bound)
	mine, err := nf.rights(ss.cred)
	if err != nil {
		return nil, err
	}
	if !mine.X {
		return nil, fmt.Errorf("serving VDE needs x on the network; you have %s: %w", mine, syscall.EACCES)
	}
	theirs, err := nf.rights(client)
	if err != nil {
		return nil, err
	}
	r, w := mine.R && theirs.R, mine.W && theirs.W
	if !r && !w {
		return nil, fmt.Errorf("vde client %v has %s on the network and the switch %s: no side left: %w", client, theirs, mine, syscall.EACCES)
	}
	if want < -1 || want >= engine.MaxPorts {
		return nil, fmt.Errorf("port %d: %w", want, syscall.EINVAL)
	}
	keep, err := unix.FcntlInt(uintptr(data), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(keep), "vde-data")
	fc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, err
	}
	// The datagrams go out with the serving user's credentials, not root's:
	// the session chose where the socket is connected. (The daemon's own
	// are the same for root's sessions: nothing to add to each datagram.)
	var sender *unix.Ucred
	if me := perm.Self(); ss.cred.UID != me.UID || ss.cred.GID != me.GID {
		sender = &unix.Ucred{Pid: int32(os.Getpid()), Uid: ss.cred.UID, Gid: ss.cred.GID}
	}
	ep, err := vde.New(fc.(*net.UnixConn), sender)
	if err != nil {
		fc.Close()
		return nil, err
	}
	uid, acct := ss.cred.UID, ss.srv.acct
	if err := acct.take(uid, usage{ports: 1}); err != nil {
		ep.Close()
		return nil, err
	}
	port, err := ss.bound.Join(ep, engine.PortOptions{
		Want: want, Description: printable([]byte(descr)),
		// A VDE client may be a vde_plug cable to another switch: a link.
		Peer: "vde " + client.String(), NoRead: !r, NoWrite: !w, Link: true,
		OnLeave: func() { acct.give(uid, usage{ports: 1}) },
	})
	if err != nil {
		ep.Close()
		acct.give(uid, usage{ports: 1})
		return nil, err
	}
	if ss.vde == nil {
		ss.vde = make(map[int]*engine.Port)
	}
	ss.vde[port.Num()] = port
	ss.srv.log.Info("vde port", "network", ss.bound.Name(), "port", port.Num(), "client", client, "served by", ss.cred)
	return wire.U32(uint32(port.Num())), nil
}

// doVDELeave answers OpVDELeave: the client of a port this session made
// has gone.
func (ss *session) doVDELeave(body []byte) error {
	num, err := wire.GetU32(body)
	if err != nil {
		return err
	}
	p := ss.vde[int(num)]
	if p == nil {
		return fmt.Errorf("no vde port %d of this session: %w", num, syscall.ENOENT)
	}
	delete(ss.vde, int(num))
	p.Close()
	return nil
}
