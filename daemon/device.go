package daemon

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/endpoint"
	"github.com/ipn-project/ipn/engine"
	"github.com/ipn-project/ipn/internal/wire"
	"github.com/ipn-project/ipn/port/grab"
	"github.com/ipn-project/ipn/port/tap"
)

// A device port is a tap or grabbed interface attached to a network by a
// bound session (OpAttachDevice), from a descriptor the client opened. Its
// sides are the ones its maker's rights on the network give (r: frames
// from the network go out of the interface; w: frames the interface
// receives enter the network). It belongs to that session and goes with it,
// unless persistent: then it stays, holding its network, until a session
// takes it over (DevJoin) or clears its persistence (DevClearPersist),
// which only its maker's user, the network file's owner and root may do.
type devKey struct {
	net  *engine.Network
	name string
}

type devPort struct {
	key   devKey
	port  *engine.Port // set under devices.mu once joined
	maker uint32       // the user who attached it
	// kind (wire.DevTap or wire.DevGrab) and its sides, as attached, are
	// set before the port is known, or, for a port taken over from
	// another daemon, when its holder entry is adopted (holderClient.mu).
	kind    byte
	noRead  bool
	noWrite bool
	persist bool     // guarded by devices.mu
	owner   *session // guarded by devices.mu; nil when no session holds it

	// Its entry in the holder (holder_daemon.go), while persistent.
	held bool // guarded by devices.mu; the holder has its entry
	gone bool // guarded by devices.mu; the port has left
	// hid is its entry's id in the holder; hfds the descriptors the entry
	// is put with (dups of the device's and of the network file's, kept
	// from attach to unhold, so that they cannot be closed and reused
	// under a put); meta the metadata last put. Guarded by holderClient.mu.
	hid  string
	hfds []int
	meta []byte
}

// devices are the device ports of a daemon.
type devices struct {
	mu     sync.Mutex
	byKey  map[devKey]*devPort       // guarded by mu
	byPort map[*engine.Port]*devPort // guarded by mu

	srv    atomic.Pointer[server] // the daemon's, set at start and at attach
	holder holderClient           // the holder of the persistent ones
}

func newDevices() devices {
	return devices{byKey: map[devKey]*devPort{}, byPort: map[*engine.Port]*devPort{}}
}

// describe reports whether p is a device port, whether it is persistent,
// and who is behind it now: the process whose session holds it (the plug
// that attached it, or the one that joined it since), or, when none does,
// its maker's user and no process.
func (ds *devices) describe(p *engine.Port) (dev, persist bool, peer string) {
	ds.mu.Lock()
	defer ds.mu.Unlock()
	d := ds.byPort[p]
	if d == nil {
		return false, false, ""
	}
	if d.owner != nil {
		return true, d.persist, "device " + d.owner.cred.String()
	}
	return true, d.persist, fmt.Sprintf("device uid %d, no process", d.maker)
}

// doDevice answers OpAttachDevice: attach the descriptor passed as a port
// of the bound network, or take over or unpersist a device port.
func (ss *session) doDevice(body []byte, fds []int) ([]byte, error) {
	kind, flags, name, err := wire.DecodeDevice(body)
	if err != nil {
		return nil, err
	}
	if ss.bound == nil {
		return nil, fmt.Errorf("device ports need a bound socket (a manager): %w", syscall.EACCES)
	}
	nf := netFileOf(ss.bound)
	r, err := nf.rights(ss.cred)
	if err != nil {
		return nil, err
	}
	if !r.X {
		return nil, fmt.Errorf("device ports need x on the network; you have %s: %w", r, syscall.EACCES)
	}
	key := devKey{ss.bound, name}
	ds := &ss.srv.devices
	switch {
	case flags&wire.DevJoin != 0:
		if len(fds) != 0 {
			return nil, syscall.EINVAL
		}
		return ds.join(ss, key, nf)
	case flags&wire.DevClearPersist != 0:
		if len(fds) != 0 {
			return nil, syscall.EINVAL
		}
		return nil, ds.clearPersist(ss, key, nf)
	}
	if !r.R && !r.W {
		return nil, fmt.Errorf("a device port needs r or w on the network; you have %s: %w", r, syscall.EACCES)
	}
	fd, err := oneFD(fds)
	if err != nil {
		return nil, err
	}
	if len(name) >= unix.IFNAMSIZ || printable([]byte(name)) != name || strings.ContainsAny(name, "/ ") {
		return nil, fmt.Errorf("device name %q: %w", name, syscall.EINVAL)
	}
	ds.srv.Store(ss.srv)
	persist := flags&wire.DevPersist != 0
	d := &devPort{key: key, maker: ss.cred.UID, kind: kind, noRead: !r.R, noWrite: !r.W, persist: persist, owner: ss}
	if persist {
		// The descriptors the holder gets, dups of the client's.
		if d.hfds, err = dupFDs(fd, nf.fd); err != nil {
			return nil, err
		}
	}
	keep, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		closeFDs(d.hfds)
		return nil, err
	}
	port, err := ds.attach(ss.srv, d, keep, -1)
	if err != nil {
		closeFDs(d.hfds)
		return nil, err
	}
	ss.srv.log.Info("device port", "network", ss.bound.Name(), "port", port.Num(), "device", port.Options().Description,
		"sides", r.String()[:2], "persist", persist, "by", ss.cred)
	if persist {
		ds.hold(d)
	}
	return wire.U32(uint32(port.Num())), nil
}

// attach makes the device fd (owned from then on) the port d of network
// d.key.net, at port want (-1: any), charging its maker a port.
func (ds *devices) attach(srv *server, d *devPort, fd int, want int) (*engine.Port, error) {
	ep, descr, err := deviceEndpoint(d.kind, fd, d.key.name)
	if err != nil {
		return nil, err
	}
	uid, acct := d.maker, srv.acct
	charge := usage{ports: 1}
	if o, ok := ep.(endpoint.Offloader); ok && o.Offloads() {
		charge.memory = engine.OffloadPortMemory // its super-frames
	}
	if err := acct.take(uid, charge); err != nil {
		ep.Close()
		return nil, err
	}
	ds.mu.Lock()
	if ds.byKey[d.key] != nil {
		ds.mu.Unlock()
		ep.Close()
		acct.give(uid, charge)
		return nil, fmt.Errorf("device %s already attached: %w", d.key.name, syscall.EADDRINUSE)
	}
	port, err := d.key.net.Join(ep, engine.PortOptions{
		Want: want, Description: descr, Peer: fmt.Sprintf("device uid %d", uid), // listings ask describe
		NoRead: d.noRead, NoWrite: d.noWrite,
		// A tap or a grabbed interface leads to the kernel's networks,
		// where a bridge may close a loop: a link, which loop probes test.
		Link: true,
		OnLeave: func() { // forget the port once it has left, whoever closed it
			acct.give(uid, charge)
			ds.forget(d)
		},
	})
	if err != nil {
		ds.mu.Unlock()
		ep.Close()
		acct.give(uid, charge)
		return nil, err
	}
	// The port's leaving waits for mu, so it sees d complete.
	d.port = port
	ds.byKey[d.key], ds.byPort[port] = d, d
	ds.mu.Unlock()
	return port, nil
}

// deviceEndpoint returns a port's endpoint on fd, a device of kind named
// name, which owns fd from then on, and the port's description. It closes
// fd if it is not such a device.
func deviceEndpoint(kind byte, fd int, name string) (endpoint.Endpoint, string, error) {
	switch kind {
	case wire.DevTap:
		if err := checkTap(fd, name); err != nil {
			unix.Close(fd)
			return nil, "", err
		}
		ep, err := tap.New(fd, name)
		return ep, "tap " + name, err
	case wire.DevGrab:
		if err := checkPacket(fd); err != nil {
			unix.Close(fd)
			return nil, "", err
		}
		ep, err := grab.New(fd, name)
		return ep, "grab " + name, err
	}
	unix.Close(fd)
	return nil, "", fmt.Errorf("device kind %d: %w", kind, syscall.EINVAL)
}

// dupFDs returns dups of fds, or none.
func dupFDs(fds ...int) ([]int, error) {
	var out []int
	for _, fd := range fds {
		d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			closeFDs(out)
			return nil, fmt.Errorf("dup: %w", err)
		}
		out = append(out, d)
	}
	return out, nil
}

// forget drops the device port d once its port has left, and its entry
// in the holder unless the daemon is stopping (the next daemon brings it
// back then).
func (ds *devices) forget(d *devPort) {
	ds.mu.Lock()
	if ds.byKey[d.key] == d {
		delete(ds.byKey, d.key)
	}
	delete(ds.byPort, d.port)
	d.gone = true
	holding := d.held || d.persist // it may have descriptors for the holder
	ds.mu.Unlock()
	if holding {
		srv := ds.srv.Load()
		go ds.unhold(d, srv != nil && !stopping(srv)) // OnLeave must not block
	}
}

// stopping reports whether the daemon srv is stopping.
func stopping(srv *server) bool {
	select {
	case <-srv.stop:
		return true
	default:
		return false
	}
}

// mayTake reports whether ss may take over or clear d: its maker's user,
// the network file's owner and root may.
func mayTake(ss *session, d *devPort, nf *netFile) error {
	if ss.cred.UID == 0 || ss.cred.UID == d.maker {
		return nil
	}
	if st, err := nf.stat(); err == nil && st.Uid == ss.cred.UID {
		return nil
	}
	return fmt.Errorf("device %s belongs to uid %d (its maker), the network's owner and root: %w", d.key.name, d.maker, syscall.EPERM)
}

// checkTap checks that fd is a tap descriptor attached to name.
func checkTap(fd int, name string) error {
	ifr, err := unix.NewIfreq("")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.TUNGETIFF, ifr); err != nil {
		return fmt.Errorf("not a tap descriptor: %w", syscall.EINVAL)
	}
	if ifr.Uint16()&unix.IFF_TAP == 0 || ifr.Uint16()&unix.IFF_NO_PI == 0 {
		return fmt.Errorf("%s is not a tap with IFF_NO_PI: %w", ifr.Name(), syscall.EINVAL)
	}
	if ifr.Name() != name {
		return fmt.Errorf("descriptor of tap %s, not %s: %w", ifr.Name(), name, syscall.EINVAL)
	}
	return nil
}

// checkPacket checks that fd is an AF_PACKET SOCK_RAW socket.
func checkPacket(fd int) error {
	dom, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil || dom != unix.AF_PACKET {
		return fmt.Errorf("not an AF_PACKET socket: %w", syscall.EINVAL)
	}
	if typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil || typ != unix.SOCK_RAW {
		return fmt.Errorf("not a SOCK_RAW packet socket: %w", syscall.EINVAL)
	}
	return nil
}

// join makes the persistent device port key the session's.
func (ds *devices) join(ss *session, key devKey, nf *netFile) ([]byte, error) {
	ds.mu.Lock()
	defer ds.mu.Unlock()
	d := ds.byKey[key]
	if d == nil {
		return nil, fmt.Errorf("no device %s on %s: %w", key.name, key.net.Name(), syscall.ENOENT)
	}
	if err := mayTake(ss, d, nf); err != nil {
		return nil, err
	}
	if !d.persist && d.owner != nil && d.owner != ss {
		return nil, fmt.Errorf("device %s is not persistent: %w", key.name, syscall.EBUSY)
	}
	d.owner = ss
	return wire.U32(uint32(d.port.Num())), nil
}

// clearPersist makes the device port key go with its session, or now if
// no session holds it.
func (ds *devices) clearPersist(ss *session, key devKey, nf *netFile) error {
	ds.mu.Lock()
	d := ds.byKey[key]
	if d == nil {
		ds.mu.Unlock()
		return fmt.Errorf("no device %s on %s: %w", key.name, key.net.Name(), syscall.ENOENT)
	}
	if err := mayTake(ss, d, nf); err != nil {
		ds.mu.Unlock()
		return err
	}
	d.persist = false
	orphan := d.owner == nil
	ds.mu.Unlock()
	ds.unhold(d, true)
	if orphan {
		d.port.Close()
	}
	return nil
}

// release closes the session's device ports, leaving the persistent ones
// to no one.
func (ds *devices) release(ss *session) {
	var closing []*engine.Port
	ds.mu.Lock()
	for _, d := range ds.byKey {
		if d.owner != ss {
			continue
		}
		d.owner = nil
		if !d.persist {
			closing = append(closing, d.port)
		}
	}
	ds.mu.Unlock()
	for _, p := range closing {
		p.Close()
	}
}
