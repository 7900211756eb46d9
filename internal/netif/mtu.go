// Package netif handles the kernel network interfaces a client attaches
// to a network (taps, grabbed interfaces): their MTU against the network's.
package netif

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// HeaderLen is what an Ethernet frame carries besides its payload, which
// an interface's MTU measures: destination and source MAC and EtherType.
// A network's MTU is its largest message, a whole frame, so a tap on a
// network of MTU m gets the MTU m - HeaderLen (1514: 1500). A VLAN tag is
// not counted: it is 4 more bytes of the frame, so a VLAN interface on the
// tap needs an MTU 4 less than the tap's (or the network 4 more).
const HeaderLen = 14

// MinMTU is the smallest MTU the kernel gives an Ethernet interface
// (ETH_MIN_MTU; IPv4 needs 68).
const MinMTU = 68

// InterfaceMTU returns the MTU of an interface whose largest frame is
// netMTU bytes: netMTU less HeaderLen.
func InterfaceMTU(netMTU int) int { return netMTU - HeaderLen }

// MTU returns the MTU of the interface name in the caller's network
// namespace.
func MTU(name string) (int, error) {
	return ifreqMTU(name, unix.SIOCGIFMTU, 0)
}

// SetMTU sets the MTU of the interface name in the caller's network
// namespace; it needs CAP_NET_ADMIN there.
func SetMTU(name string, mtu int) error {
	_, err := ifreqMTU(name, unix.SIOCSIFMTU, mtu)
	return err
}

func ifreqMTU(name string, req uint, mtu int) (int, error) {
	sock, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("MTU of %s: %w", name, err)
	}
	defer unix.Close(sock)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return 0, fmt.Errorf("MTU of %s: %w", name, err)
	}
	ifr.SetUint32(uint32(mtu))
	if err := unix.IoctlIfreq(sock, req, ifr); err != nil {
		return 0, fmt.Errorf("MTU of %s: %w", name, err)
	}
	return int(ifr.Uint32()), nil
}

// MatchMTU gives the tap name the MTU of a network of MTU netMTU
// (InterfaceMTU), unless it has it already. If it cannot, it fails when
// the tap's MTU is larger, saying with the numbers what to do, since the
// network would lose the tap's larger frames; a smaller MTU it cannot
// raise is kept, since every frame the tap sends fits. It returns the
// tap's MTU.
func MatchMTU(name string, netMTU int) (int, error) {
	want := InterfaceMTU(netMTU)
	cur, err := MTU(name)
	if err != nil {
		return 0, err
	}
	if cur == want {
		return cur, nil
	}
	if want < MinMTU {
		return 0, fmt.Errorf("tap %s: the network's MTU %d leaves a tap an MTU of %d (%d less for the Ethernet header), under the least an interface may have, %d; make a network of MTU %d or more: %w",
			name, netMTU, want, HeaderLen, MinMTU, MinMTU+HeaderLen, unix.EINVAL)
	}
	serr := SetMTU(name, want)
	if serr == nil {
		return want, nil
	}
	if cur < want {
		return cur, nil
	}
	hint := ""
	if errors.Is(serr, unix.EPERM) || errors.Is(serr, unix.EACCES) {
		hint = " (needs CAP_NET_ADMIN)"
	}
	return 0, fmt.Errorf("tap %s has MTU %d, more than the %d of the network (MTU %d, less %d for the Ethernet header), which would lose its larger frames, and setting it to %d failed%s; run ip link set %s mtu %d, or plug it into a network of MTU %d: %w",
		name, cur, want, netMTU, HeaderLen, want, hint, name, want, cur+HeaderLen, serr)
}
