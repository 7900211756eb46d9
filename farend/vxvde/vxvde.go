// Package vxvde is a cable far end that joins vdeplug4's vxvde, a
// distributed Ethernet switch with no central process: every member joins
// an IP multicast group, and the members together behave as one switch
// whose ports are the members. It interoperates with "vde_plug vxvde://..."
// (Debian's vdeplug) and with other ipn plugs.
//
// The URL is vxvde://[GROUP][:PORT][/OPTION=VALUE...], by default
// 239.0.0.1:14789 (ff05:56de::1 with the option v6). vdeplug4 writes the
// port as an option, vxvde://GROUP/port=N; both forms work.
//
// The wire, as vdeplug4 speaks it:
//   - Each frame is one UDP datagram: the 8-byte VXLAN header (flags 0x08,
//     the 24-bit VNI, 1 by default, the rest zero) then the frame.
//   - A member has two sockets: one bound to GROUP:PORT, joined to the
//     group, that receives the multicast; one bound to an ephemeral port,
//     from which it sends everything and on which it receives unicast.
//   - A member learns each source MAC as being behind the address (IP and
//     ephemeral port) that sent it, sends frames to a learnt MAC there
//     alone, and multicasts broadcast, multicast and unknown destinations.
//     Entries expire after 128 s without traffic.
//   - Multicast loopback is on, so members on one host hear each other; a
//     member ignores its own datagrams: those from its own port whose
//     source is the local address the group arrived on.
//   - A datagram holding just the header announces that its sender left;
//     the member forgets the MACs behind it. A member sends one when it
//     closes.
//
// Frames with another VNI, other flags or shorter than an Ethernet header
// are ignored. Options: vni=N, port=N, ttl=N (of multicast datagrams, 1 by
// default: the local segment), if=NAME (the interface of the group; by
// default the route to the group decides), expiretime=SECONDS,
// hashsize=N (the most MACs remembered), v4, v6, and one vdeplug4 lacks:
// allow=LIST, the sources accepted, a comma-separated list of addresses
// and CIDR prefixes, IPv4 or IPv6. The "/" of a prefix does not end the
// option: vxvde:///allow=10.0.0.0/8,192.168.5.0/24/vni=7 is two options.
//
// Like multicast itself the switch is open: without allow, any host that
// reaches the group's port or a member's unicast port is a member, whose
// frames are delivered and whose MACs are learnt. With allow, datagrams
// from other sources are dropped on both sockets before anything is
// learnt from them, leave announcements included. vxvde has no
// authentication and no encryption, and a spoofed source address passes
// allow: run it on a trusted segment or inside an encrypted tunnel
// (WireGuard, IPsec).
package vxvde

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/endpoint"
	"github.com/ipn-project/ipn/farend/udp"
	"github.com/ipn-project/ipn/farend/vxlan"
)

// Defaults of vdeplug4's vxvde.
const (
	DefaultPort   = 14789
	DefaultExpire = 128 * time.Second
	DefaultSize   = 4096
)

var (
	// DefaultGroup is the IPv4 group.
	DefaultGroup = netip.MustParseAddr("239.0.0.1")
	// DefaultGroup6 is the IPv6 group (option v6).
	DefaultGroup6 = netip.MustParseAddr("ff05:56de::1")
)

// BatchSize is the most frames one Read returns or one Write takes
// usefully: a Write of that many sends them with one system call, in runs
// of equal sizes to one member with UDP segmentation where the kernel has
// it (see udp.Conn).
const BatchSize = udp.BatchSize

// Each socket's receiver reads batches of recvBatch messages (datagrams or
// coalesced runs of them) with one system call; batches of frames, at
// most recvBatches of them per socket, wait for Read.
const (
	recvBatch   = 8
	recvBatches = 4
)

// Config is a parsed vxvde URL.
type Config struct {
	Group     netip.Addr
	Port      int
	VNI       uint32
	TTL       int
	Interface string
	Expire    time.Duration
	Size      int
	Allow     udp.Allow // the sources accepted; nil for any
}

// ParseSpec parses the URL without its "vxvde://" prefix.
func ParseSpec(ctx context.Context, spec string) (Config, error) {
	addr, opts, _ := strings.Cut(spec, "/")
	host, port, err := udp.SplitHostPort(addr, DefaultPort)
	if err != nil {
		return Config{}, err
	}
	c := Config{Port: port, VNI: 1, TTL: 1, Expire: DefaultExpire, Size: DefaultSize}
	v6 := false
	for _, o := range udp.SplitOptions(opts, "v4", "v6") {
		k, v, _ := strings.Cut(o, "=")
		switch k {
		case "vni":
			n, err := strconv.ParseUint(v, 0, 32)
			if err != nil || n > vxlan.MaxVNI {
				return Config{}, fmt.Errorf("bad vni %q (0 to %d)", v, vxlan.MaxVNI)
			}
			c.VNI = uint32(n)
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
		case "expiretime":
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 {
				return Config{}, fmt.Errorf("bad expiretime %q (seconds)", v)
			}
			c.Expire = time.Duration(n) * time.Second
		case "hashsize":
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 {
				return Config{}, fmt.Errorf("bad hashsize %q", v)
			}
			c.Size = n
		case "allow":
			if c.Allow, err = udp.ParseAllow(v); err != nil {
				return Config{}, fmt.Errorf("allow=%s: %w", v, err)
			}
		case "v4":
		case "v6":
			v6 = true
		default:
			return Config{}, fmt.Errorf("unknown option %q (vni, port, ttl, if, expiretime, hashsize, allow, v4, v6)", k)
		}
	}
	switch {
	case host != "":
		if c.Group, err = udp.Resolve(ctx, host); err != nil {
			return Config{}, err
		}
	case v6:
		c.Group = DefaultGroup6
	default:
		c.Group = DefaultGroup
	}
	if !c.Group.IsMulticast() {
		return Config{}, fmt.Errorf("%v is not a multicast group", c.Group)
	}
	return c, nil
}

// Endpoint is a member of a vxvde switch. Read and Write may run
// concurrently, each from one goroutine. Two goroutines, one per socket,
// receive and filter datagrams; Close ends them before it returns.
type Endpoint struct {
	cfg     Config
	v6      bool
	multi   *udp.Conn // bound to the group, joined
	uni     *udp.Conn // sends; receives unicast
	uniPort uint16
	group   *net.UDPAddr
	fdb     *vxlan.FDB
	w       vxlan.Sender // Write's, on uni
	local   localAddrs   // IPv6 only

	in     chan *batch   // frames received, for Read
	cur    *batch        // Read's: the batch it is taking frames from
	done   chan struct{} // closed by Close
	failed chan struct{} // closed when a receiver fails; err says why
	err    error
	fail   sync.Once
	closed atomic.Bool
	once   sync.Once
	wg     sync.WaitGroup
}

var _ endpoint.Endpoint = (*Endpoint)(nil)

// batch is what one system call of a receiver read: the frames it kept,
// in rb's buffers. Read takes them, then gives the batch back to free.
type batch struct {
	rb     *udp.RecvBatch
	frames [][]byte
	next   int         // the first frame Read has not taken
	free   chan *batch // its receiver's
}

// Open opens a member of the switch spec names, the URL without
// "vxvde://" (see the package doc).
func Open(ctx context.Context, spec string) (endpoint.Endpoint, error) {
	cfg, err := ParseSpec(ctx, spec)
	if err != nil {
		return nil, fmt.Errorf("vxvde: %w", err)
	}
	e, err := New(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("vxvde: %w", err)
	}
	return e, nil
}

// New opens a member of the switch cfg describes.
func New(ctx context.Context, cfg Config) (*Endpoint, error) {
	e := &Endpoint{
		cfg:    cfg,
		v6:     cfg.Group.Is6(),
		group:  net.UDPAddrFromAddrPort(netip.AddrPortFrom(cfg.Group, uint16(cfg.Port))),
		fdb:    vxlan.NewFDB(cfg.Size, cfg.Expire),
		in:     make(chan *batch, 2*recvBatches),
		done:   make(chan struct{}),
		failed: make(chan struct{}),
	}
	vxlan.PutHeader(e.w.Hdr[:], cfg.VNI)
	var ifi *net.Interface
	if cfg.Interface != "" {
		var err error
		if ifi, err = net.InterfaceByName(cfg.Interface); err != nil {
			return nil, err
		}
	}
	network := udp.Network(cfg.Group)
	reuse := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
			if serr == nil && !e.v6 {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}}
	pc, err := reuse.ListenPacket(ctx, network, e.group.String())
	if err != nil {
		return nil, err
	}
	multi := pc.(*net.UDPConn)
	var lc net.ListenConfig
	if pc, err = lc.ListenPacket(ctx, network, ":0"); err != nil {
		multi.Close()
		return nil, err
	}
	uni := pc.(*net.UDPConn)
	e.uniPort = uni.LocalAddr().(*net.UDPAddr).AddrPort().Port()
	if err := e.setup(multi, uni, ifi); err != nil {
		multi.Close()
		uni.Close()
		return nil, err
	}
	e.multi = udp.NewConn(multi, e.v6, 1)
	e.uni = udp.NewConn(uni, e.v6, BatchSize)
	e.w.Conn = e.uni
	e.wg.Add(2)
	go e.receive(e.multi, true)
	go e.receive(e.uni, false)
	return e, nil
}

// setup sets how the unicast socket sends to the group and joins the group
// on the multicast socket.
func (e *Endpoint) setup(multi, uni *net.UDPConn, ifi *net.Interface) error {
	if err := udp.SetMulticast(uni, e.v6, e.cfg.TTL, true, ifi); err != nil {
		return err
	}
	return udp.JoinGroup(multi, e.v6, ifi, e.cfg.Group)
}

// UnicastAddr returns the address of the socket the member sends from and
// receives unicast frames on.
func (e *Endpoint) UnicastAddr() *net.UDPAddr { return e.uni.UDPConn().LocalAddr().(*net.UDPAddr) }

// FDB returns the MACs the member learnt.
func (e *Endpoint) FDB() *vxlan.FDB { return e.fdb }

// Stats returns the counts of the member's sockets: the unicast one's, from
// which it sends, and the multicast one's.
func (e *Endpoint) Stats() (uni, multi udp.Stats) { return e.uni.Stats(), e.multi.Stats() }

// receive reads datagrams from c (the multicast socket if multi) and
// queues the frames for Read until the endpoint closes.
func (e *Endpoint) receive(c *udp.Conn, multi bool) {
	defer e.wg.Done()
	free := make(chan *batch, recvBatches)
	for range recvBatches {
		b := &batch{rb: udp.NewRecvBatch(recvBatch), free: free}
		b.rb.Split = vxlan.Coalesced
		free <- b
	}
	for {
		var b *batch
		select {
		case b = <-free:
		case <-e.done:
			return
		}
		if err := c.Recv(b.rb); err != nil {
			if e.closed.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			e.fail.Do(func() {
				e.err = fmt.Errorf("vxvde: %w", err)
				close(e.failed)
			})
			return
		}
		b.frames, b.next = b.frames[:0], 0
		for {
			d, ok := b.rb.Next()
			if !ok {
				break
			}
			if e.accept(d.B, d.OOB, d.From, multi) {
				b.frames = append(b.frames, d.B[vxlan.HeaderLen:])
			}
		}
		if len(b.frames) == 0 {
			free <- b
			continue
		}
		select {
		case e.in <- b:
		case <-e.done:
			return
		}
	}
}

// accept filters datagram b from src and learns from the frames it keeps.
func (e *Endpoint) accept(b, oob []byte, src netip.AddrPort, multi bool) bool {
	src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	if !e.cfg.Allow.Contains(src.Addr()) {
		return false // before a leave or a frame is heeded
	}
	if vni, ok := vxlan.ParseHeader(b); !ok || vni != e.cfg.VNI {
		return false
	}
	if len(b) == vxlan.HeaderLen { // the sender left
		if !(multi && e.self(src, oob)) {
			e.fdb.Forget(src)
		}
		return false
	}
	if len(b)-vxlan.HeaderLen < vxlan.EthHeaderLen {
		return false
	}
	if multi && e.self(src, oob) {
		return false
	}
	e.fdb.Learn(b[vxlan.HeaderLen+6:vxlan.HeaderLen+12], src)
	return true
}

// self reports whether a datagram that came from the group was sent by
// this member: from its unicast port and from the local address the group
// arrived on (IPv4: the packet's ipi_spec_dst) or, for IPv6, from any
// local address.
func (e *Endpoint) self(src netip.AddrPort, oob []byte) bool {
	if src.Port() != e.uniPort {
		return false
	}
	if e.v6 {
		return e.local.has(src.Addr())
	}
	if d := udp.CmsgData(oob, unix.IPPROTO_IP, unix.IP_PKTINFO); len(d) >= unix.SizeofInet4Pktinfo {
		pi := (*unix.Inet4Pktinfo)(unsafe.Pointer(&d[0]))
		return netip.AddrFrom4(pi.Spec_dst) == src.Addr()
	}
	return false
}

// Read implements endpoint.Endpoint.Read: it blocks for one frame and
// returns those already received, up to len(bufs).
func (e *Endpoint) Read(bufs [][]byte, sizes []int) (int, error) {
	n := 0
	for n < len(bufs) {
		if e.cur == nil {
			if n > 0 {
				select {
				case e.cur = <-e.in:
				default:
					return n, nil
				}
			} else {
				select {
				case e.cur = <-e.in:
				case <-e.done:
					return 0, net.ErrClosed
				case <-e.failed:
					return 0, e.err
				}
			}
		}
		b := e.cur
		for ; n < len(bufs) && b.next < len(b.frames); n++ {
			f := b.frames[b.next]
			b.next++
			sizes[n] = len(f)
			if copy(bufs[n], f) < len(f) {
				sizes[n] = len(bufs[n]) + 1
			}
		}
		if b.next == len(b.frames) {
			clear(b.frames)
			b.free <- b // never full: it holds its receiver's batches alone
			e.cur = nil
		}
	}
	return n, nil
}

// Write implements endpoint.Endpoint.Write: frames to a learnt MAC go to
// its member, the others to the group. Frames shorter than an Ethernet
// header and datagrams the network refuses are dropped; Write fails only
// once the endpoint is closed.
func (e *Endpoint) Write(msgs [][]byte) (int, error) {
	n, err := e.w.Send(msgs, e.dest)
	if err != nil && !errors.Is(err, net.ErrClosed) {
		err = fmt.Errorf("vxvde: %w", err)
	}
	return n, err
}

// dest returns where frame f goes: the member that has its destination
// MAC, if learnt, else the group.
func (e *Endpoint) dest(f []byte) *net.UDPAddr {
	if f[0]&1 == 0 {
		if a := e.fdb.Lookup(f[:6]); a != nil {
			return a
		}
	}
	return e.group
}

// BatchSize implements endpoint.Endpoint.BatchSize.
func (e *Endpoint) BatchSize() int { return BatchSize }

// Close implements endpoint.Endpoint.Close: it tells the other members
// that this one left, closes the sockets, ends a Read or Write in progress
// with net.ErrClosed and waits for the receiving goroutines.
func (e *Endpoint) Close() error {
	e.once.Do(func() {
		e.closed.Store(true)
		e.uni.UDPConn().WriteToUDP(e.w.Hdr[:], e.group) // best effort, as vdeplug4
		close(e.done)
		e.multi.Close()
		e.uni.Close()
		e.wg.Wait()
	})
	return nil
}

// localAddrs answers whether an address is one of this host's, from a
// list of the interfaces' addresses read again at most once a second when
// an address is not in it.
type localAddrs struct {
	mu   sync.Mutex
	set  map[netip.Addr]bool // guarded by mu
	read time.Time           // guarded by mu
}

func (l *localAddrs) has(a netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.set[a] {
		return true
	}
	if time.Since(l.read) < time.Second {
		return false
	}
	l.read = time.Now()
	l.set = map[netip.Addr]bool{}
	addrs, _ := net.InterfaceAddrs()
	for _, ad := range addrs {
		if n, ok := ad.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				l.set[ip.Unmap()] = true
			}
		}
	}
	return l.set[a]
}
