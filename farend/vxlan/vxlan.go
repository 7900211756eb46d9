// Package vxlan is a cable far end that speaks VXLAN (RFC 7348): each
// Ethernet frame travels in a UDP datagram behind an 8-byte header that
// names its network (the VNI, 24 bits). A Linux "ip link add ... type
// vxlan" device, vdeplug4's vxlan:// plug and VXLAN switches are its peers.
//
// The URL is vxlan://ADDR[:PORT]/vni=N[/OPTION=VALUE...], port 4789 by
// default; the VNI has none: both ends must name the same. ADDR decides the
// mode:
//
//   - A multicast group (224.0.0.0/4, ff00::/8): the endpoint joins the
//     group and sends there every frame whose destination it does not
//     know; like Linux it learns each source MAC's tunnel end (the sender's
//     address, at PORT) and sends frames to a learnt MAC to that end alone.
//     Every host of the group is a port of one distributed segment, and
//     any host that reaches PORT is accepted as one, from any source port,
//     unless the option allow names the hosts that may be.
//     Multicast loopback is off: two endpoints on one host do not hear
//     each other (and cannot both bind PORT).
//   - A unicast address: a point-to-point tunnel to that peer. Every frame
//     goes to ADDR:PORT, and only datagrams from ADDR and from an allowed
//     source port are accepted: PORT alone by default, as ipn and
//     vdeplug4's vxlan plug send. A Linux device sends from a port of its
//     own per flow: give it "srcport 4789 4790" (Linux's MAX is exclusive:
//     4789 alone), or accept its range here with srcport.
//
// Either way the endpoint listens on PORT, the port a Linux device sends
// to, and frames with another VNI, with flags other than the I flag or
// shorter than an Ethernet header are ignored.
//
// Options: vni=N (0 to 16777215), port=N (the same as :PORT), ttl=N (of
// multicast datagrams; 1 by default, so the group stays on the local
// segment), if=NAME (the interface for the group; by default the route to
// the group decides), local=ADDR (the address to bind in unicast mode),
// srcport=N or srcport=MIN-MAX (unicast mode: the source ports accepted
// from the peer, MAX included, instead of PORT; e.g. srcport=32768-60999
// for a Linux device's default range), allow=LIST (multicast mode: accept
// datagrams only from these sources; LIST is a comma-separated list of
// addresses and CIDR prefixes, IPv4 or IPv6, e.g.
// allow=192.0.2.0/24,fd00::7; the "/" of a prefix does not end the option).
//
// VXLAN has no authentication and no encryption: anyone who can send UDP
// to PORT can inject frames, and in multicast mode make the endpoint learn
// MACs, unless the source checks above (the peer and srcport, allow)
// exclude them, and a spoofed source address passes those checks. Run it
// on a trusted segment or inside an encrypted tunnel (WireGuard, IPsec).
//
// Sending is lossy like a wire: a datagram the network refuses is dropped.
// Frames move in batches, with UDP segmentation and receive coalescing
// where the kernel has them (see udp.Conn). A Linux VXLAN device whose
// lower device offloads segmentation and checksums (a veth's defaults)
// leaves that work undone in what it sends through a veth: the datagrams
// of a socket's UDP GSO run, or a TCP segment of up to 64 KiB (TSO), as
// one frame, and inner TCP and UDP checksums unfinished. The endpoint
// cuts such a frame (UDP at the segment size the kernel gives, TCP into
// frames that fill a VXLAN datagram on the link to the sender: the kernel
// gives none) and finishes the checksums (see csum.go), so that Read
// returns what the device would have sent on a wire. The TCP segments may
// be longer than the connection agreed: a network whose MTU is below the
// link's frames drops them (docs/multihost.md).
package vxlan

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ipn-project/ipn/endpoint"
	"github.com/ipn-project/ipn/endpoint/vnet"
	"github.com/ipn-project/ipn/farend/udp"

	"golang.org/x/sys/unix"
)

const (
	// BatchSize is the most frames one Read returns or one Write takes
	// usefully: a Write of that many sends them with one system call, in
	// runs of equal sizes with UDP segmentation where the kernel has it
	// (see udp.Conn).
	BatchSize = udp.BatchSize
	// recvBatch is how many messages (datagrams or coalesced runs of them)
	// a Read reads with one system call.
	recvBatch = 16
	// FDBSize is the most MACs a multicast endpoint remembers.
	FDBSize = 4096
	// FDBExpire is how long a learnt MAC lasts without traffic (as Linux's
	// vxlan ageing).
	FDBExpire = 300 * time.Second
)

// Config is a parsed vxlan URL.
type Config struct {
	Addr      netip.Addr // the multicast group or the unicast peer
	Port      int
	VNI       uint32
	TTL       int        // of multicast datagrams
	Interface string     // for the group; "" lets the routes decide
	Local     netip.Addr // unicast mode: the address to bind; invalid for any
	// SrcPortMin and SrcPortMax (included) are the source ports accepted
	// from the unicast peer; 0 and 0 stand for Port alone.
	SrcPortMin, SrcPortMax int
	Allow                  udp.Allow // multicast mode: the sources accepted; nil for any
}

// ParseSpec parses the URL without its "vxlan://" prefix.
func ParseSpec(ctx context.Context, spec string) (Config, error) {
	addr, opts, _ := strings.Cut(spec, "/")
	host, port, err := udp.SplitHostPort(addr, DefaultPort)
	if err != nil {
		return Config{}, err
	}
	if host == "" {
		return Config{}, fmt.Errorf("want vxlan://GROUP_OR_PEER[:PORT]/vni=N, got %q", spec)
	}
	c := Config{Port: port, TTL: 1}
	hasVNI := false
	for _, o := range udp.SplitOptions(opts) {
		k, v, _ := strings.Cut(o, "=")
		switch k {
		case "vni":
			n, err := strconv.ParseUint(v, 0, 32)
			if err != nil || n > MaxVNI {
				return Config{}, fmt.Errorf("bad vni %q (0 to %d)", v, MaxVNI)
			}
			c.VNI, hasVNI = uint32(n), true
		case "port":
			if c.Port, err = udp.ParsePort(v); err != nil {
				return Config{}, err
			}
		case "ttl":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 255 {
				return Config{}, fmt.Errorf("bad ttl %q (1 to 255)", v)
			}
			c.TTL = n
		case "if":
			c.Interface = v
		case "local":
			if c.Local, err = udp.Resolve(ctx, v); err != nil {
				return Config{}, fmt.Errorf("local: %w", err)
			}
		case "srcport":
			if c.SrcPortMin, c.SrcPortMax, err = parsePortRange(v); err != nil {
				return Config{}, err
			}
		case "allow":
			if c.Allow, err = udp.ParseAllow(v); err != nil {
				return Config{}, fmt.Errorf("allow=%s: %w", v, err)
			}
		default:
			return Config{}, fmt.Errorf("unknown option %q (vni, port, ttl, if, local, srcport, allow)", k)
		}
	}
	if !hasVNI {
		return Config{}, fmt.Errorf("no vni: want vxlan://%s/vni=N, N in 0..%d the VXLAN network both ends name (e.g. vxlan://%s/vni=42)", spec, MaxVNI, addr)
	}
	if c.Addr, err = udp.Resolve(ctx, host); err != nil {
		return Config{}, err
	}
	if err := c.checkMode(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// checkMode rejects the options of the other mode than c.Addr's.
func (c Config) checkMode() error {
	switch {
	case c.Addr.IsMulticast() && c.SrcPortMin != 0:
		return fmt.Errorf("srcport=%d-%d: a multicast group is accepted from any source port; srcport is for a unicast peer (allow= restricts a group's sources)", c.SrcPortMin, c.SrcPortMax)
	case !c.Addr.IsMulticast() && c.Allow != nil:
		return fmt.Errorf("allow=%v: a unicast tunnel accepts its peer %v alone; allow is for a multicast group", c.Allow, c.Addr)
	}
	return nil
}

// parsePortRange parses the value of srcport: N or MIN-MAX, MAX included.
func parsePortRange(v string) (lo, hi int, err error) {
	los, his, isRange := strings.Cut(v, "-")
	lo, err = udp.ParsePort(los)
	hi = lo
	if err == nil && isRange {
		hi, err = udp.ParsePort(his)
	}
	if err != nil || lo > hi {
		return 0, 0, fmt.Errorf("bad srcport %q (N or MIN-MAX, ports 1 to 65535, MIN <= MAX)", v)
	}
	return lo, hi, nil
}

// Endpoint is a VXLAN far end. Read and Write may run concurrently, each
// from one goroutine.
type Endpoint struct {
	cfg   Config
	conn  *udp.Conn
	group bool
	dst   *net.UDPAddr // the group or the peer, at Port
	srcLo uint16       // unicast mode: the peer's accepted source ports,
	srcHi uint16       // srcLo to srcHi included
	fdb   *FDB         // multicast mode only

	rb      *udp.RecvBatch // Read's, with segBuf, segs and segNext
	segBuf  []byte         // the segments of a super-frame (see cut)
	segs    [][]byte
	segNext int    // the first of segs not read
	w       Sender // Write's

	mtus  map[netip.Addr]linkMTU // Read's: the links to senders (see linkFrame)
	probe *net.UDPConn           // Read's: asks for them (see routeMTU)

	cuts, cutFrames, finished atomic.Uint64 // see OffloadStats
}

var _ endpoint.Endpoint = (*Endpoint)(nil)

// Open opens the far end of spec, the URL without "vxlan://" (see the
// package doc).
func Open(ctx context.Context, spec string) (endpoint.Endpoint, error) {
	cfg, err := ParseSpec(ctx, spec)
	if err != nil {
		return nil, fmt.Errorf("vxlan: %w", err)
	}
	e, err := New(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("vxlan: %w", err)
	}
	return e, nil
}

// New opens the endpoint cfg describes.
func New(ctx context.Context, cfg Config) (*Endpoint, error) {
	if err := cfg.checkMode(); err != nil {
		return nil, err
	}
	e := &Endpoint{
		cfg:   cfg,
		group: cfg.Addr.IsMulticast(),
		dst:   net.UDPAddrFromAddrPort(netip.AddrPortFrom(cfg.Addr, uint16(cfg.Port))),
		rb:    udp.NewRecvBatch(recvBatch),
		mtus:  map[netip.Addr]linkMTU{},
	}
	e.rb.Split = Coalesced
	e.srcLo, e.srcHi = uint16(cfg.SrcPortMin), uint16(cfg.SrcPortMax)
	if cfg.SrcPortMin == 0 {
		e.srcLo, e.srcHi = uint16(cfg.Port), uint16(cfg.Port)
	}
	PutHeader(e.w.Hdr[:], cfg.VNI)
	v6 := cfg.Addr.Is6()
	bind := netip.IPv4Unspecified()
	if v6 {
		bind = netip.IPv6Unspecified()
	}
	if !e.group && cfg.Local.IsValid() {
		bind = cfg.Local
	}
	var ifi *net.Interface
	if cfg.Interface != "" {
		var err error
		if ifi, err = net.InterfaceByName(cfg.Interface); err != nil {
			return nil, err
		}
	}
	var lc net.ListenConfig
	pc, err := lc.ListenPacket(ctx, udp.Network(cfg.Addr), netip.AddrPortFrom(bind, uint16(cfg.Port)).String())
	if err != nil {
		return nil, err
	}
	c := pc.(*net.UDPConn)
	probe, err := lc.ListenPacket(ctx, udp.Network(cfg.Addr), netip.AddrPortFrom(bind, 0).String())
	if err != nil {
		c.Close()
		return nil, err
	}
	e.probe = probe.(*net.UDPConn)
	if e.group {
		e.fdb = NewFDB(FDBSize, FDBExpire)
		if err := joinGroup(c, v6, ifi, cfg); err != nil {
			c.Close()
			e.probe.Close()
			return nil, err
		}
	}
	e.conn = udp.NewConn(c, v6, BatchSize)
	e.w.Conn = e.conn
	return e, nil
}

// joinGroup joins cfg's group on c and sets how c sends to it.
func joinGroup(c *net.UDPConn, v6 bool, ifi *net.Interface, cfg Config) error {
	if err := udp.SetMulticast(c, v6, cfg.TTL, false, ifi); err != nil {
		return err
	}
	return udp.JoinGroup(c, v6, ifi, cfg.Addr)
}

// LocalAddr returns the address the endpoint listens on.
func (e *Endpoint) LocalAddr() *net.UDPAddr { return e.conn.UDPConn().LocalAddr().(*net.UDPAddr) }

// FDB returns the learnt MACs of a multicast endpoint (nil in unicast
// mode).
func (e *Endpoint) FDB() *FDB { return e.fdb }

// Stats returns the counts of the endpoint's socket.
func (e *Endpoint) Stats() udp.Stats { return e.conn.Stats() }

// OffloadStats counts the work that Read did which a Linux VXLAN device
// left to its lower device's hardware (see csum.go). The counts only grow.
type OffloadStats struct {
	// SuperFrames counts the TCP or UDP super-packets cut, Segments the
	// frames cut from them.
	SuperFrames, Segments uint64
	// Finished counts the frames whose TCP or UDP checksum, left to
	// finish, Read finished.
	Finished uint64
}

// OffloadStats returns the counts so far.
func (e *Endpoint) OffloadStats() OffloadStats {
	return OffloadStats{SuperFrames: e.cuts.Load(), Segments: e.cutFrames.Load(), Finished: e.finished.Load()}
}

// Read implements endpoint.Endpoint.Read: it blocks until at least one
// frame of the endpoint's VNI arrives and returns those already received,
// up to len(bufs).
func (e *Endpoint) Read(bufs [][]byte, sizes []int) (int, error) {
	k := 0
	put := func(f []byte) {
		sizes[k] = len(f)
		if copy(bufs[k], f) < len(f) {
			sizes[k] = len(bufs[k]) + 1
		}
		k++
	}
	for k < len(bufs) {
		if e.segNext < len(e.segs) {
			put(e.segs[e.segNext])
			e.segNext++
			continue
		}
		d, ok := e.rb.Next()
		if !ok {
			if k > 0 {
				return k, nil
			}
			if err := e.conn.Recv(e.rb); err != nil {
				if errors.Is(err, net.ErrClosed) {
					return 0, err
				}
				return 0, fmt.Errorf("vxlan: %w", err)
			}
			continue
		}
		if vni, ok := ParseHeader(d.B); !ok || vni != e.cfg.VNI || len(d.B)-HeaderLen < EthHeaderLen {
			continue
		}
		if !d.From.IsValid() || !e.accept(d.From) {
			continue // before anything is learnt from it
		}
		frame := d.B[HeaderLen:]
		if e.group {
			// Frames to the source MAC go back to the sender's VXLAN port.
			e.fdb.Learn(frame[6:12], netip.AddrPortFrom(d.From.Addr(), uint16(e.cfg.Port)))
		}
		if !d.Trunc && e.cut(frame, d) {
			continue
		}
		if !d.Trunc && finishPartial(frame) {
			e.finished.Add(1)
		}
		put(frame)
		if d.Trunc {
			sizes[k-1] = len(bufs[k-1]) + 1
		}
	}
	return k, nil
}

// cut cuts frame, from d, if it is a TCP or UDP super-packet that a Linux
// VXLAN device sent as one datagram with its segmentation left to do (TSO
// or UDP GSO inside the tunnel; see csum.go), into frames with their
// checksums finished, for Read to take from segs. The kernel gives the
// segment size of UDP GSO (d.GSO) but not of TSO: a TCP packet longer
// than a VXLAN datagram on the link to the sender can carry (linkFrame)
// is cut into segments that fill such datagrams, as the device would have
// sent them on a wire with its MTU at Linux's default (the link's less the
// tunnel's headers). It reports false for any other frame: Read takes it
// whole.
func (e *Endpoint) cut(frame []byte, d udp.Datagram) bool {
	size := d.GSO
	if size == 0 && len(frame) <= minLinkFrame {
		return false
	}
	in, ok := parseInner(frame)
	if !ok || in.end != len(frame) {
		return false
	}
	if size == 0 {
		if in.proto != protoTCP {
			return false // an IP packet too big for a wire, but not a super-packet
		}
		limit := e.linkFrame(d.From.Addr())
		if len(frame) <= limit || limit-in.hlen < minSegment {
			return false
		}
		size = limit - in.hlen
	}
	h := vnet.Hdr{GSOType: in.gsoType(), GSOSize: uint16(min(size, 0xffff))}
	n, err := vnet.SegmentedLen(frame, h)
	if err != nil {
		return false
	}
	if len(e.segBuf) < n {
		e.segBuf = make([]byte, max(n, 2*udp.MaxDatagram))
	}
	segs, err := vnet.Segment(frame, h, e.segBuf, e.segs[:0])
	if err != nil {
		return false
	}
	e.segs, e.segNext = segs, 0
	e.cuts.Add(1)
	e.cutFrames.Add(uint64(len(segs)))
	return true
}

const (
	// minLinkFrame is the longest frame that a VXLAN datagram carries on
	// any link (IPv6's minimum MTU, 1280, less the tunnel's headers over
	// IPv6): cut looks for no link's MTU for a frame no longer.
	minLinkFrame = 1280 - 40 - 8 - HeaderLen
	// minSegment is the least TCP payload per segment cut uses (IPv4's
	// default MSS).
	minSegment = 536
	// linkMTURefresh is how long a link's MTU is taken as known.
	linkMTURefresh = 10 * time.Second
	// linkMTUs is the most senders whose links' MTUs are remembered.
	linkMTUs = 64
)

// linkMTU is a link's MTU as linkFrame found it.
type linkMTU struct {
	mtu int
	at  time.Time
}

// linkFrame returns the longest frame that a VXLAN datagram to or from
// addr carries on the link the route to addr takes: its MTU (1500 if it
// cannot be found) less the IP, UDP and VXLAN headers. It is Read's.
func (e *Endpoint) linkFrame(addr netip.Addr) int {
	now := time.Now()
	l, ok := e.mtus[addr]
	if !ok || now.Sub(l.at) > linkMTURefresh {
		if len(e.mtus) >= linkMTUs {
			clear(e.mtus)
		}
		mtu, err := routeMTU(e.probe, e.cfg.Addr.Is6(), addr)
		if err != nil {
			mtu = 1500
		}
		l = linkMTU{mtu, now}
		e.mtus[addr] = l
	}
	ipLen := 20
	if addr.Is6() {
		ipLen = 40
	}
	return l.mtu - ipLen - 8 - HeaderLen
}

// routeMTU returns the MTU of the route to addr, as probe (IPv6 if v6)
// finds it once connected to addr (IP_MTU, IPV6_MTU). probe, a UDP socket
// made with the endpoint, asks in the endpoint's network namespace,
// whatever the thread that calls.
func routeMTU(probe *net.UDPConn, v6 bool, addr netip.Addr) (int, error) {
	if !v6 && !addr.Is4() {
		return 0, fmt.Errorf("route to %v from an IPv4 socket", addr)
	}
	rc, err := probe.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("route to %v: %w", addr, err)
	}
	var mtu int
	var serr error
	err = rc.Control(func(fd uintptr) {
		s := int(fd)
		var sa unix.Sockaddr = &unix.SockaddrInet4{Port: DefaultPort, Addr: addr.As4()}
		if v6 {
			sa = &unix.SockaddrInet6{Port: DefaultPort, Addr: addr.As16()}
		}
		if serr = unix.Connect(s, sa); serr != nil {
			return
		}
		if addr.Is4() {
			mtu, serr = unix.GetsockoptInt(s, unix.IPPROTO_IP, unix.IP_MTU)
		} else {
			mtu, serr = unix.GetsockoptInt(s, unix.IPPROTO_IPV6, unix.IPV6_MTU)
		}
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return 0, fmt.Errorf("MTU of the route to %v: %w", addr, err)
	}
	return mtu, nil
}

// accept reports whether a datagram from src passes the source checks:
// the peer's address and source ports in unicast mode, the allow list in
// multicast mode.
func (e *Endpoint) accept(src netip.AddrPort) bool {
	if e.group {
		return e.cfg.Allow.Contains(src.Addr())
	}
	return src.Addr().Unmap() == e.cfg.Addr && src.Port() >= e.srcLo && src.Port() <= e.srcHi
}

// Write implements endpoint.Endpoint.Write. Frames shorter than an
// Ethernet header and datagrams the network refuses for the moment are
// dropped; Write fails once the endpoint is closed (net.ErrClosed) or on
// an error that udp.Conn does not take for a passing one.
func (e *Endpoint) Write(msgs [][]byte) (int, error) {
	n, err := e.w.Send(msgs, e.dest)
	if err != nil && !errors.Is(err, net.ErrClosed) {
		err = fmt.Errorf("vxlan: %w", err)
	}
	return n, err
}

// Sender sends frames as VXLAN datagrams, each Hdr then the frame, with
// Conn: in one system call for a batch, in runs of equal sizes to one
// destination with UDP segmentation where the kernel has it (see
// udp.Conn). Send is for one goroutine at a time.
type Sender struct {
	Conn *udp.Conn
	Hdr  [HeaderLen]byte

	frames [][]byte
	to     []*net.UDPAddr
	idx    []int // the index in msgs of each of frames
}

// Send sends the frames of msgs that are at least an Ethernet header long,
// each to dest(frame), and drops the others; datagrams the network refuses
// for the moment are lost. It returns how many of msgs it took before an
// error (net.ErrClosed once Conn is closed). It does not retain msgs.
func (s *Sender) Send(msgs [][]byte, dest func([]byte) *net.UDPAddr) (int, error) {
	s.frames, s.to, s.idx = s.frames[:0], s.to[:0], s.idx[:0]
	defer func() {
		clear(s.frames)
		clear(s.to)
	}()
	for i, f := range msgs {
		if len(f) < EthHeaderLen {
			continue
		}
		s.frames = append(s.frames, f)
		s.to = append(s.to, dest(f))
		s.idx = append(s.idx, i)
	}
	n, err := s.Conn.Write(s.Hdr[:], s.frames, s.to)
	if err != nil && n < len(s.idx) {
		return s.idx[n], err
	}
	return len(msgs), err
}

// dest returns where frame f goes: its destination's tunnel end if it was
// learnt, else the group or the peer.
func (e *Endpoint) dest(f []byte) *net.UDPAddr {
	if e.group && f[0]&1 == 0 {
		if a := e.fdb.Lookup(f[:6]); a != nil {
			return a
		}
	}
	return e.dst
}

// BatchSize implements endpoint.Endpoint.BatchSize.
func (e *Endpoint) BatchSize() int { return BatchSize }

// Close implements endpoint.Endpoint.Close: it closes the socket (leaving
// the group), which ends a Read or Write in progress with net.ErrClosed.
func (e *Endpoint) Close() error {
	e.probe.Close()
	return e.conn.Close()
}
