package ipn

import (
	"errors"
	"fmt"
	"net"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/internal/netif"
	"github.com/ipn-project/ipn/internal/wire"
)

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
	// A daemon of protocol 3 reads a tap's virtio-net headers (offloads:
	// TCP moves in super-frames); an older one would take them for
	// frames.
	proto, _ := s.DaemonVersion()
	fd, actual, err := openTap(name, mtu, proto >= 3)
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
// "tap%d"). With vnetHdr it opens it with IFF_VNET_HDR, for the daemon's
// offloads.
func openTap(name string, netMTU int, vnetHdr bool) (int, string, error) {
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
	flags := uint16(unix.IFF_TAP | unix.IFF_NO_PI)
	if vnetHdr {
		flags |= unix.IFF_VNET_HDR
	}
	ifr.SetUint16(flags)
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

// tapMTU gives the tap name the MTU of the network of MTU netMTU, or fails
// if it cannot and the tap's MTU is larger (netif.MatchMTU). A network's
// MTU is its largest message, a whole Ethernet frame with its 14-byte
// header; an interface's MTU is the payload it sends, so a tap gets the
// network's MTU less 14 (netif.InterfaceMTU). VLAN tags count against the
// network's MTU, 4 bytes each: a VLAN interface on the tap needs an MTU 4
// less than the tap's, or the network an MTU 4 more.
func tapMTU(name string, netMTU int) error {
	_, err := netif.MatchMTU(name, netMTU)
	return err
}

// grabMTU fails, saying with the numbers what to do, when the interface
// ifi sends frames larger than the network of MTU netMTU takes: the
// network would lose them. The interface's MTU is left alone, since it is
// the host's (grab takes an interface in use), not the network's.
func grabMTU(ifi *net.Interface, netMTU int) error {
	most := netif.InterfaceMTU(netMTU)
	if ifi.MTU <= most {
		return nil
	}
	return fmt.Errorf("interface %s has MTU %d, more than the %d of the network (MTU %d, less %d for the Ethernet header), which would lose its larger frames; lower it (ip link set %s mtu %d) or grab it into a network of MTU %d: %w",
		ifi.Name, ifi.MTU, most, netMTU, netif.HeaderLen, ifi.Name, most, ifi.MTU+netif.HeaderLen, unix.EMSGSIZE)
}
