// Package netstack runs a TCP/IP stack inside the process, on an IPN port.
//
// The stack is gVisor's user-space TCP/IP stack (gvisor.dev/gvisor/pkg/tcpip)
// attached to a connected ipn.Socket (New), or to any endpoint that moves
// Ethernet frames (Attach), as its Ethernet interface: every frame the
// network delivers enters the stack, every frame the stack sends goes to
// the network. With an Ethernet network (the switch policy,
// ipn.VDESwitch) two processes, each with a Stack on the same network, talk
// TCP and UDP to each other with no kernel interface, no privileges and no
// set-up; a tap plugged into the network reaches the host's kernel too.
//
//	sock, _ := ipn.NewSocket(ipn.Any)
//	sock.Connect("/tmp/lan")
//	st, _ := netstack.New(sock, netstack.Config{
//		Addrs: []netip.Prefix{netip.MustParsePrefix("10.55.0.2/24")},
//	})
//	defer st.Close()
//	c, _ := st.Dial("tcp", "10.55.0.1:80") // a net.Conn
//
// Dial, Listen and the typed calls return the standard net interfaces
// (net.Conn, net.Listener, net.PacketConn), so net/http, TLS and the rest of
// the standard library work over them: see DialContext for an
// http.Transport and Listen for an http.Server.
//
// Addresses are IP literals: the stack has no resolver. The interface's MTU
// is the network's MTU less the 14 bytes of the Ethernet header. Loop
// probes (which reach only links, but a far end may pass them on) and
// frames for other MAC addresses are skipped.
package netstack

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/ipn-project/ipn"
	"github.com/ipn-project/ipn/endpoint"
	"github.com/ipn-project/ipn/internal/spec"
)

const (
	nicID = 1
	// queueLen is the number of outbound packets the link endpoint holds
	// before the stack sees ErrNoBufferSpace.
	queueLen = 1024
	// ethHeader is the size of an Ethernet header without a VLAN tag.
	ethHeader = header.EthernetMinimumSize
	// readBatch bounds the frames read at once (and the buffers held).
	readBatch = 16
)

// Config configures a Stack.
type Config struct {
	// MAC is the interface's Ethernet address; a random locally
	// administered unicast one if nil.
	MAC net.HardwareAddr
	// Addrs are the interface's addresses with their prefix lengths, IPv4
	// and/or IPv6 (e.g. 10.55.0.1/24, fd00::1/64). Each one's subnet is
	// reachable directly.
	Addrs []netip.Prefix
	// Gateway, if valid, is the default router of its family (IPv4 or
	// IPv6); Gateway6 is a second one, for dual-stack configurations.
	Gateway, Gateway6 netip.Addr
	// MTU is the largest frame the endpoint carries, Ethernet header
	// included (a network's MTU). New reads it from the socket; Attach
	// needs it.
	MTU int
}

// Stack is a TCP/IP stack on an IPN port. Its methods are safe for
// concurrent use.
type Stack struct {
	ep  endpoint.Endpoint
	st  *stack.Stack
	ch  *channel.Endpoint
	mac net.HardwareAddr
	mtu int

	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// New starts a stack on sock, a connected socket of an Ethernet network
// (normally a switch). The stack owns sock from then on: Close closes it.
func New(sock *ipn.Socket, cfg Config) (*Stack, error) {
	mtu, err := sock.MTU()
	if err != nil {
		return nil, fmt.Errorf("netstack: %w", err)
	}
	cfg.MTU = mtu
	return Attach(sock.Endpoint(), cfg)
}

// Attach starts a stack on ep, an endpoint that moves the Ethernet frames
// of a network of MTU cfg.MTU (a socket's, a cable's far end, a test's
// fake). The stack owns ep from then on: Close closes it.
func Attach(ep endpoint.Endpoint, cfg Config) (*Stack, error) {
	mac := cfg.MAC
	if mac == nil {
		mac = make(net.HardwareAddr, 6)
		if _, err := rand.Read(mac); err != nil {
			return nil, err
		}
		mac[0] = mac[0]&^1 | 2 // unicast, locally administered
	}
	if len(mac) != 6 || mac[0]&1 != 0 {
		return nil, fmt.Errorf("netstack: %v is not a unicast Ethernet address", mac)
	}
	netMTU := cfg.MTU
	if netMTU == 0 {
		return nil, errors.New("netstack: Config.MTU is 0: set the network's MTU, the largest frame the endpoint carries")
	}
	if netMTU < ethHeader+68 {
		return nil, fmt.Errorf("netstack: network MTU %d is too small for IP", netMTU)
	}

	st := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6},
		HandleLocal:        true,
	})
	sack := tcpip.TCPSACKEnabled(true)
	st.SetTransportProtocolOption(tcp.ProtocolNumber, &sack)
	moderate := tcpip.TCPModerateReceiveBufferOption(true)
	st.SetTransportProtocolOption(tcp.ProtocolNumber, &moderate)
	// An IPN network drops frames when a receiver's queue is full, a few
	// frames deep by default, and in a process timers are cheap: recover
	// losses in milliseconds rather than the default 200.
	minRTO := tcpip.TCPMinRTOOption(10 * time.Millisecond)
	st.SetTransportProtocolOption(tcp.ProtocolNumber, &minRTO)

	// The channel endpoint carries whole frames (its MTU is the network's);
	// the ethernet endpoint around it adds and strips the header.
	ch := channel.New(queueLen, uint32(netMTU), tcpip.LinkAddress(mac))
	if terr := st.CreateNIC(nicID, ethernet.New(ch)); terr != nil {
		st.Close()
		return nil, fmt.Errorf("netstack: create NIC: %v", terr)
	}
	var routes []tcpip.Route
	for _, p := range cfg.Addrs {
		if !p.IsValid() {
			return nil, closeWith(st, fmt.Errorf("netstack: invalid address %v", p))
		}
		pa := tcpip.ProtocolAddress{
			Protocol: protoOf(p.Addr()),
			AddressWithPrefix: tcpip.AddressWithPrefix{
				Address:   tcpip.AddrFromSlice(p.Addr().Unmap().AsSlice()),
				PrefixLen: p.Bits(),
			},
		}
		if terr := st.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); terr != nil {
			return nil, closeWith(st, fmt.Errorf("netstack: add address %v: %v", p, terr))
		}
		routes = append(routes, tcpip.Route{Destination: pa.AddressWithPrefix.Subnet(), NIC: nicID})
	}
	for _, gw := range []netip.Addr{cfg.Gateway, cfg.Gateway6} {
		if !gw.IsValid() {
			continue
		}
		gw = gw.Unmap()
		dst := header.IPv4EmptySubnet
		if gw.Is6() {
			dst = header.IPv6EmptySubnet
		}
		routes = append(routes, tcpip.Route{Destination: dst, Gateway: tcpip.AddrFromSlice(gw.AsSlice()), NIC: nicID})
	}
	st.SetRouteTable(routes)

	ctx, cancel := context.WithCancel(context.Background())
	s := &Stack{ep: ep, st: st, ch: ch, mac: mac, mtu: netMTU, cancel: cancel}
	s.wg.Add(2)
	go s.readFrames()
	go s.writeFrames(ctx)
	return s, nil
}

func closeWith(st *stack.Stack, err error) error {
	st.Close()
	return err
}

func protoOf(a netip.Addr) tcpip.NetworkProtocolNumber {
	if a.Unmap().Is4() {
		return ipv4.ProtocolNumber
	}
	return ipv6.ProtocolNumber
}

// readFrames injects the frames of the network into the stack, a batch at
// a time, until the endpoint fails (Close closes it).
func (s *Stack) readFrames() {
	defer s.wg.Done()
	batch := max(min(s.ep.BatchSize(), readBatch), 1)
	bufs, sizes := make([][]byte, batch), make([]int, batch)
	for i := range bufs {
		bufs[i] = make([]byte, s.mtu+4) // room to spot an oversized frame
	}
	for {
		n, err := s.ep.Read(bufs, sizes)
		for i := 0; i < n; i++ {
			s.inject(bufs[i], sizes[i])
		}
		if err != nil {
			return
		}
	}
}

// inject hands the frame of n bytes in buf to the stack, if it is one for
// this interface.
func (s *Stack) inject(buf []byte, n int) {
	if n < ethHeader || n > s.mtu || n > len(buf) {
		return // a runt, or too long (truncated)
	}
	f := buf[:n]
	if spec.IsProbe(f) {
		return
	}
	// A switch floods frames for unknown addresses: take only ours,
	// broadcast and multicast.
	if f[0]&1 == 0 && string(f[:6]) != string(s.mac) {
		return
	}
	// The packet buffer takes its own copy of f.
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(f)})
	s.ch.InjectInbound(0, pkt) // the ethernet endpoint reads the type
	pkt.DecRef()
}

// writeFrames sends the stack's frames to the network until ctx ends.
func (s *Stack) writeFrames(ctx context.Context) {
	defer s.wg.Done()
	buf := make([]byte, 0, s.mtu)
	msgs := [][]byte{nil} // reused: through the interface it would escape
	for {
		pkt := s.ch.ReadContext(ctx)
		if pkt == nil {
			return
		}
		buf = buf[:0]
		for _, v := range pkt.AsSlices() {
			buf = append(buf, v...)
		}
		pkt.DecRef()
		// Errors are losses, as on a wire: TCP recovers, UDP does not care.
		msgs[0] = buf
		_, _ = s.ep.Write(msgs)
	}
}

// Close stops the stack and its goroutines and closes the socket. Open
// connections fail.
func (s *Stack) Close() error {
	var err error
	s.closeOnce.Do(func() {
		s.cancel()
		err = s.ep.Close()
		s.wg.Wait()
		s.ch.Close()
		s.st.Close()
		s.st.Wait()
	})
	return err
}

// MAC returns the interface's Ethernet address.
func (s *Stack) MAC() net.HardwareAddr { return s.mac }

// MTU returns the interface's IP MTU: the network's less the Ethernet
// header.
func (s *Stack) MTU() int { return s.mtu - ethHeader }

// Stack returns the gVisor stack, for settings this package does not
// cover.
func (s *Stack) Stack() *stack.Stack { return s.st }

func fullAddr(ap netip.AddrPort) (tcpip.FullAddress, tcpip.NetworkProtocolNumber) {
	a := ap.Addr().Unmap()
	fa := tcpip.FullAddress{NIC: nicID, Port: ap.Port()}
	if a.IsValid() && !a.IsUnspecified() {
		fa.Addr = tcpip.AddrFromSlice(a.AsSlice())
	}
	if !a.IsValid() {
		return fa, ipv4.ProtocolNumber
	}
	return fa, protoOf(a)
}

// DialTCP opens a TCP connection to addr.
func (s *Stack) DialTCP(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
	fa, proto := fullAddr(addr)
	c, err := gonet.DialContextTCP(ctx, s.st, fa, proto)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// ListenTCP listens for TCP connections on addr; an unspecified (or
// invalid) address listens on all the stack's addresses of its family, and
// an invalid one on IPv4 and IPv6 both.
func (s *Stack) ListenTCP(addr netip.AddrPort) (net.Listener, error) {
	fa, proto := fullAddr(addr)
	if !addr.Addr().IsValid() {
		proto = ipv6.ProtocolNumber // a dual-stack endpoint
	}
	l, err := gonet.ListenTCP(s.st, fa, proto)
	if err != nil {
		return nil, err
	}
	return l, nil
}

// DialUDP returns a UDP socket connected to addr.
func (s *Stack) DialUDP(addr netip.AddrPort) (net.Conn, error) {
	fa, proto := fullAddr(addr)
	c, err := gonet.DialUDP(s.st, nil, &fa, proto)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// ListenUDP returns an unconnected UDP socket bound to addr (an
// unspecified or invalid address as for ListenTCP).
func (s *Stack) ListenUDP(addr netip.AddrPort) (net.PacketConn, error) {
	fa, proto := fullAddr(addr)
	if !addr.Addr().IsValid() {
		proto = ipv6.ProtocolNumber
	}
	c, err := gonet.DialUDP(s.st, &fa, nil, proto)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Dial connects to address on network ("tcp", "tcp4", "tcp6", "udp",
// "udp4" or "udp6"); address is IP:port with a literal IP.
func (s *Stack) Dial(network, address string) (net.Conn, error) {
	return s.DialContext(context.Background(), network, address)
}

// DialContext is Dial with a context; it fits http.Transport.DialContext.
func (s *Stack) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	ap, err := parseAddr(network, address, false)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	switch network {
	case "tcp", "tcp4", "tcp6":
		return s.DialTCP(ctx, ap)
	default:
		return s.DialUDP(ap)
	}
}

// Listen listens for TCP connections on network "tcp", "tcp4" or "tcp6" and
// address [IP]:port (":80" listens on every address).
func (s *Stack) Listen(network, address string) (net.Listener, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, &net.OpError{Op: "listen", Net: network, Err: net.UnknownNetworkError(network)}
	}
	ap, err := parseAddr(network, address, true)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
	return s.ListenTCP(ap)
}

// ListenPacket returns a UDP socket on network "udp", "udp4" or "udp6" and
// address [IP]:port.
func (s *Stack) ListenPacket(network, address string) (net.PacketConn, error) {
	switch network {
	case "udp", "udp4", "udp6":
	default:
		return nil, &net.OpError{Op: "listen", Net: network, Err: net.UnknownNetworkError(network)}
	}
	ap, err := parseAddr(network, address, true)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
	return s.ListenUDP(ap)
}

// parseAddr parses host:port; an empty host (allowed when listening)
// gives an invalid address, or the unspecified one of network's family.
func parseAddr(network, address string, listen bool) (netip.AddrPort, error) {
	switch network {
	case "tcp", "tcp4", "tcp6", "udp", "udp4", "udp6":
	default:
		return netip.AddrPort{}, net.UnknownNetworkError(network)
	}
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return netip.AddrPort{}, err
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("invalid port %q", port)
	}
	var a netip.Addr
	switch {
	case host == "" && listen:
		switch network[len(network)-1] {
		case '4':
			a = netip.IPv4Unspecified()
		case '6':
			a = netip.IPv6Unspecified()
		}
	case host == "":
		return netip.AddrPort{}, errors.New("missing address")
	default:
		if a, err = netip.ParseAddr(host); err != nil {
			return netip.AddrPort{}, fmt.Errorf("not an IP address: %q (the stack has no resolver)", host)
		}
		a = a.Unmap()
		if (network[len(network)-1] == '4' && !a.Is4()) || (network[len(network)-1] == '6' && !a.Is6()) {
			return netip.AddrPort{}, fmt.Errorf("address %v is not of network %s", a, network)
		}
	}
	return netip.AddrPortFrom(a, uint16(p)), nil
}
