package ipn

import (
	"fmt"
	"net"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/internal/netif"
)

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
