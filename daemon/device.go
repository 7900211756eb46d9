package daemon

import (
	"fmt"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/endpoint"
	"github.com/ipn-project/ipn/endpoint/grab"
	"github.com/ipn-project/ipn/endpoint/tap"
	"github.com/ipn-project/ipn/engine"
	"github.com/ipn-project/ipn/internal/wire"
)

// A device port is a tap or grabbed interface attached to a network by a
// bound session (OpAttachDevice), from a descriptor the client opened. It
// belongs to that session and goes with it, unless persistent: then it
// stays, holding its network, until a session takes it over (DevJoin) or
// its persistence is cleared (DevClearPersist).
type devKey struct {
	net  *engine.Network
	name string
}

type devPort struct {
	key     devKey
	port    *engine.Port
	persist bool     // guarded by devices
	owner   *session // guarded by devices; nil when no session holds it
}

var devices = struct {
	sync.Mutex
	byKey  map[devKey]*devPort
	byPort map[*engine.Port]*devPort
}{byKey: map[devKey]*devPort{}, byPort: map[*engine.Port]*devPort{}}

// devicePersist reports whether p is a persistent device port.
func devicePersist(p *engine.Port) bool {
	devices.Lock()
	defer devices.Unlock()
	d := devices.byPort[p]
	return d != nil && d.persist
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
	st, err := ss.statBound()
	if err != nil {
		return nil, err
	}
	if _, _, x := access(st, ss.cred); !x {
		return nil, fmt.Errorf("device ports need x on the network: %w", syscall.EACCES)
	}
	key := devKey{ss.bound, name}
	switch {
	case flags&wire.DevJoin != 0:
		if len(fds) != 0 {
			return nil, syscall.EINVAL
		}
		return ss.joinDevice(key)
	case flags&wire.DevClearPersist != 0:
		if len(fds) != 0 {
			return nil, syscall.EINVAL
		}
		return nil, ss.clearPersist(key)
	}
	fd, err := oneFD(fds)
	if err != nil {
		return nil, err
	}
	if len(name) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("device name %q: %w", name, syscall.EINVAL)
	}
	keep, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	var ep endpoint.Endpoint
	var descr string
	switch kind {
	case wire.DevTap:
		if err := checkTap(keep, name); err != nil {
			unix.Close(keep)
			return nil, err
		}
		descr = "tap " + name
		ep, err = tap.New(keep, name)
	case wire.DevGrab:
		if err := checkPacket(keep); err != nil {
			unix.Close(keep)
			return nil, err
		}
		descr = "grab " + name
		ep, err = grab.New(keep, name)
	default:
		unix.Close(keep)
		return nil, fmt.Errorf("device kind %d: %w", kind, syscall.EINVAL)
	}
	if err != nil {
		return nil, err
	}
	devices.Lock()
	if devices.byKey[key] != nil {
		devices.Unlock()
		ep.Close()
		return nil, fmt.Errorf("device %s already attached: %w", name, syscall.EADDRINUSE)
	}
	port, err := ss.bound.Join(ep, engine.PortOptions{Want: -1, Description: descr, Peer: "device " + ss.cred.String()})
	if err != nil {
		devices.Unlock()
		ep.Close()
		return nil, err
	}
	d := &devPort{key: key, port: port, persist: flags&wire.DevPersist != 0, owner: ss}
	devices.byKey[key], devices.byPort[port] = d, d
	devices.Unlock()
	go func() { // forget the port once it has left, whoever closed it
		<-port.Done()
		devices.Lock()
		if devices.byKey[key] == d {
			delete(devices.byKey, key)
		}
		delete(devices.byPort, port)
		devices.Unlock()
	}()
	ss.srv.log.Info("device port", "network", ss.bound.Name(), "port", port.Num(), "device", descr, "persist", d.persist, "by", ss.cred)
	return wire.U32(uint32(port.Num())), nil
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

// joinDevice makes the persistent device port key the session's.
func (ss *session) joinDevice(key devKey) ([]byte, error) {
	devices.Lock()
	defer devices.Unlock()
	d := devices.byKey[key]
	if d == nil {
		return nil, fmt.Errorf("no device %s on %s: %w", key.name, key.net.Name(), syscall.ENOENT)
	}
	if !d.persist && d.owner != nil && d.owner != ss {
		return nil, fmt.Errorf("device %s is not persistent: %w", key.name, syscall.EBUSY)
	}
	d.owner = ss
	return wire.U32(uint32(d.port.Num())), nil
}

// clearPersist makes the device port key go with its session, or now if
// no session holds it.
func (ss *session) clearPersist(key devKey) error {
	devices.Lock()
	d := devices.byKey[key]
	if d == nil {
		devices.Unlock()
		return fmt.Errorf("no device %s on %s: %w", key.name, key.net.Name(), syscall.ENOENT)
	}
	d.persist = false
	orphan := d.owner == nil
	devices.Unlock()
	if orphan {
		d.port.Close()
	}
	return nil
}

// releaseDevices closes the session's device ports, leaving the persistent
// ones to no one.
func (ss *session) releaseDevices() {
	var closing []*engine.Port
	devices.Lock()
	for _, d := range devices.byKey {
		if d.owner != ss {
			continue
		}
		d.owner = nil
		if !d.persist {
			closing = append(closing, d.port)
		}
	}
	devices.Unlock()
	for _, p := range closing {
		p.Close()
	}
}
