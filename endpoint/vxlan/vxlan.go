// Package vxlan is a cable far end that speaks VXLAN (RFC 7348): each
// Ethernet frame travels in a UDP datagram behind an 8-byte header that
// names its network (the VNI, 24 bits). A Linux "ip link add ... type
// vxlan" device, vdeplug4's vxlan:// plug and VXLAN switches are its peers.
//
// The URL is vxlan://ADDR[:PORT][/vni=N][/OPTION=VALUE...], port 4789 and
// VNI 1 by default. ADDR decides the mode:
//
//   - A multicast group (224.0.0.0/4, ff00::/8): the endpoint joins the
//     group and sends there every frame whose destination it does not
//     know; like Linux it learns each source MAC's tunnel end (the sender's
//     address, at PORT) and sends frames to a learnt MAC to that end alone.
//     Every host of the group is a port of one distributed segment.
//     Multicast loopback is off: two endpoints on one host do not hear
//     each other (and cannot both bind PORT).
//   - A unicast address: a point-to-point tunnel to that peer. Every frame
//     goes to ADDR:PORT, and only datagrams from ADDR (any source port, as
//     Linux picks one per flow) are accepted.
//
// Either way the endpoint listens on PORT, the port a Linux device sends
// to, and frames with another VNI, with flags other than the I flag or
// shorter than an Ethernet header are ignored.
//
// Options: vni=N (0 to 16777215), port=N (the same as :PORT), ttl=N (of
// multicast datagrams; 1 by default, so the group stays on the local
// segment), if=NAME (the interface for the group; by default the route to
// the group decides), local=ADDR (the address to bind in unicast mode).
//
// Sending is lossy like a wire: a datagram the network refuses is dropped.
package vxlan

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
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/endpoint"
	"github.com/ipn-project/ipn/endpoint/udp"
)

const (
	// BatchSize is the number of datagrams one Read or Write moves with one
	// system call.
	BatchSize = 16
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
	c := Config{Port: port, VNI: 1, TTL: 1}
	for _, o := range strings.Split(opts, "/") {
		if o == "" {
			continue
		}
		k, v, _ := strings.Cut(o, "=")
		switch k {
		case "vni":
			n, err := strconv.ParseUint(v, 0, 32)
			if err != nil || n > MaxVNI {
				return Config{}, fmt.Errorf("bad vni %q (0 to %d)", v, MaxVNI)
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
		case "local":
			if c.Local, err = udp.Resolve(ctx, v); err != nil {
				return Config{}, fmt.Errorf("local: %w", err)
			}
		default:
			return Config{}, fmt.Errorf("unknown option %q (vni, port, ttl, if, local)", k)
		}
	}
	if c.Addr, err = udp.Resolve(ctx, host); err != nil {
		return Config{}, err
	}
	return c, nil
}

// Endpoint is a VXLAN far end. Read and Write may run concurrently, each
// from one goroutine.
type Endpoint struct {
	cfg    Config
	conn   *net.UDPConn
	bc     udp.BatchConn
	group  bool
	dst    *net.UDPAddr // the group or the peer, at Port
	fdb    *FDB         // multicast mode only
	hdr    [HeaderLen]byte
	closed atomic.Bool
	once   sync.Once

	rms   []ipv4.Message // Read's
	rhdrs [][HeaderLen]byte
	wms   []ipv4.Message // Write's
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
	e := &Endpoint{
		cfg:   cfg,
		group: cfg.Addr.IsMulticast(),
		dst:   net.UDPAddrFromAddrPort(netip.AddrPortFrom(cfg.Addr, uint16(cfg.Port))),
		rms:   make([]ipv4.Message, BatchSize),
		rhdrs: make([][HeaderLen]byte, BatchSize),
		wms:   make([]ipv4.Message, BatchSize),
	}
	PutHeader(e.hdr[:], cfg.VNI)
	for i := range e.rms {
		e.rms[i].Buffers = [][]byte{e.rhdrs[i][:], nil}
		e.wms[i].Buffers = [][]byte{e.hdr[:], nil}
	}
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
	e.conn = pc.(*net.UDPConn)
	e.bc = udp.NewBatchConn(e.conn, v6)
	if e.group {
		e.fdb = NewFDB(FDBSize, FDBExpire)
		if err := joinGroup(e.conn, v6, ifi, cfg); err != nil {
			e.conn.Close()
			return nil, err
		}
	}
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
func (e *Endpoint) LocalAddr() *net.UDPAddr { return e.conn.LocalAddr().(*net.UDPAddr) }

// FDB returns the learnt MACs of a multicast endpoint (nil in unicast
// mode).
func (e *Endpoint) FDB() *FDB { return e.fdb }

// Read implements endpoint.Endpoint.Read: it blocks until at least one
// frame of the endpoint's VNI arrives and returns those already queued.
func (e *Endpoint) Read(bufs [][]byte, sizes []int) (int, error) {
	ms := e.rms[:min(len(bufs), len(e.rms))]
	for i := range ms {
		ms[i].Buffers[1] = bufs[i]
	}
	defer func() {
		for i := range ms {
			ms[i].Buffers[1], ms[i].Addr = nil, nil
		}
	}()
	for {
		n, err := udp.ReadBatch(e.bc, ms, &e.closed)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return 0, err
			}
			return 0, fmt.Errorf("vxlan: %w", err)
		}
		k := 0
		for i := 0; i < n; i++ {
			m := &ms[i]
			size := m.N - HeaderLen
			if vni, ok := ParseHeader(e.rhdrs[i][:]); !ok || vni != e.cfg.VNI || size < EthHeaderLen {
				continue
			}
			src, _ := m.Addr.(*net.UDPAddr)
			if src == nil {
				continue
			}
			from := src.AddrPort().Addr().Unmap()
			if !e.group && from != e.cfg.Addr {
				continue
			}
			frame := bufs[i][:min(size, len(bufs[i]))]
			if e.group && len(frame) >= 12 {
				// Frames to the source MAC go back to the sender's VXLAN port.
				e.fdb.Learn(frame[6:12], netip.AddrPortFrom(from, uint16(e.cfg.Port)))
			}
			if k != i {
				copy(bufs[k], frame)
			}
			sizes[k] = size
			if m.Flags&unix.MSG_TRUNC != 0 || size > len(bufs[k]) {
				sizes[k] = len(bufs[k]) + 1
			}
			k++
		}
		if k > 0 {
			return k, nil
		}
	}
}

// Write implements endpoint.Endpoint.Write. Frames shorter than an
// Ethernet header and datagrams the network refuses are dropped; Write
// fails only once the endpoint is closed.
func (e *Endpoint) Write(msgs [][]byte) (int, error) {
	n, err := WriteFrames(e.bc, e.wms, msgs, e.dest)
	if err != nil {
		if e.closed.Load() || errors.Is(err, net.ErrClosed) {
			return n, net.ErrClosed
		}
		return n, fmt.Errorf("vxlan: %w", err)
	}
	return n, nil
}

// WriteFrames sends msgs in batches of len(wms), each as a datagram of
// the VXLAN header its message in wms already holds in Buffers[0] and the
// frame, to dest(frame). Frames shorter than an Ethernet header are
// dropped. It returns how many frames it took before an error.
func WriteFrames(bc udp.BatchConn, wms []ipv4.Message, msgs [][]byte, dest func([]byte) *net.UDPAddr) (int, error) {
	defer func() {
		for i := range wms {
			wms[i].Buffers[1], wms[i].Addr = nil, nil
		}
	}()
	done := 0
	for done < len(msgs) {
		chunk := msgs[done:min(len(msgs), done+len(wms))]
		ms := wms[:0]
		for _, f := range chunk {
			if len(f) < EthHeaderLen {
				continue
			}
			ms = ms[:len(ms)+1]
			ms[len(ms)-1].Buffers[1] = f
			ms[len(ms)-1].Addr = dest(f)
		}
		if _, err := udp.WriteAll(bc, ms); err != nil {
			return done, err
		}
		done += len(chunk)
	}
	return done, nil
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
	var err error
	e.once.Do(func() {
		e.closed.Store(true)
		err = e.conn.Close()
	})
	return err
}
