package udp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/ipn-project/ipn/internal/spec"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// This file holds Conn, the batched UDP socket of the far ends built on
// UDP: many datagrams per system call each way, as wireguard-go's conn
// package does.
//
// Sending, a run of datagrams to one destination whose sizes are equal
// (the last may be shorter) goes as one message with a UDP_SEGMENT
// control message (UDP GSO): the kernel cuts it into the datagrams, late
// (on a veth or the loopback not at all until a receiver needs it), and
// every message of a batch goes in one sendmmsg. A TCP stream from a tap
// reaches a cable as frames of its MSS, so that is most of its frames in
// one system call. Receiving, the socket has UDP_GRO on: the kernel
// hands several datagrams of one sender, equal in size but the last, as
// one message with their size in a UDP_GRO control message, and Conn
// splits them again; each recvmmsg reads a batch of such messages.
//
// Where the kernel lacks them (before Linux 4.18 and 5.0), Conn sends and
// receives one datagram per message, still in batches. A run the kernel
// refuses with UDP_SEGMENT goes again one datagram per message: with EIO
// (the route's device cannot finish UDP checksums, or IPsec) Conn sends
// without UDP_SEGMENT from then on; with EINVAL or EMSGSIZE (datagrams
// larger than the route's MTU, which a segmented run cannot fragment) it
// does so for datagrams of that size or more for a while (gsoRetry).
//
// The environment variable IPN_UDP_OFFLOAD turns the offloads off, for a
// comparison or a kernel that misbehaves: "off" (or "0") both, "nogso"
// sending's, "nogro" receiving's; anything else, or nothing, leaves both
// to the kernel.

const (
	// MaxDatagram is the largest datagram Conn receives whole: the largest
	// UDP payload over IPv4 (65535 less the IP and UDP headers) fits, and
	// so does a coalesced run (the kernel's GRO stops at 64 KiB).
	MaxDatagram = 1 << 16
	// maxSegments is the most datagrams in one message with UDP_SEGMENT
	// (the kernel's UDP_MAX_SEGMENTS).
	maxSegments = 64
	// maxRun is the most bytes of datagrams in one message with
	// UDP_SEGMENT: a message is one UDP payload to the kernel, 65535 less
	// the headers (IPv4's; IPv6 could take 20 more).
	maxRun = 65535 - 20 - 8
	// gsoRetry is how long datagrams of a size a route refused to segment
	// go one per message before UDP_SEGMENT is tried on them again (the
	// route's MTU may have grown).
	gsoRetry = 10 * time.Second
	// sockBuf is the size asked for the socket's buffers each way: a
	// receiver that falls behind for a moment loses nothing (the default,
	// about 200 KiB, is some 90 datagrams).
	sockBuf = 4 << 20
	// oobLen is the room for the control messages of a received message.
	oobLen = 128
	// EnvOffload names the environment variable that turns the offloads
	// off (see Conn).
	EnvOffload = spec.UDPOffloadEnv
)

// Stats counts what a Conn did. The counts only grow.
type Stats struct {
	// GSO and GRO tell whether the socket sends with UDP_SEGMENT and
	// receives with UDP_GRO now.
	GSO, GRO bool
	// SendCalls counts the batches sent, each with one sendmmsg (and with
	// one more for a socket buffer found full, after waiting for room),
	// SendMsgs the messages they sent (each a datagram or a run), SendGSO
	// those of the messages that were runs with UDP_SEGMENT, and
	// SendDatagrams the datagrams.
	SendCalls, SendMsgs, SendGSO, SendDatagrams uint64
	// SendDropped counts datagrams lost on a passing error (no route, a
	// peer not listening, a full queue), GSOFallbacks the runs the kernel
	// refused to segment, sent again one datagram per message.
	SendDropped, GSOFallbacks uint64
	// RecvCalls counts the batches read, each with one recvmmsg (and with
	// one more that found nothing, before waiting), RecvMsgs the messages
	// they read, RecvGRO those that held coalesced datagrams, and
	// RecvDatagrams the datagrams, each coalesced one counted.
	RecvCalls, RecvMsgs, RecvGRO, RecvDatagrams uint64
}

// Conn is a UDP socket that sends and receives batches of datagrams (see
// above). Write may run concurrently with Recv, each from one goroutine at
// a time; Close may be called from any.
type Conn struct {
	c      *net.UDPConn
	bc     BatchConn
	closed atomic.Bool
	once   sync.Once
	gro    bool        // UDP_GRO is on; set by NewConn
	gso    atomic.Bool // UDP_SEGMENT works; cleared for good on EIO

	// The writer's.
	wms      []ipv4.Message
	woob     []byte   // a UDP_SEGMENT control message per entry of wms
	iov      [][]byte // the buffers of wms's messages
	iovUsed  int      // how much of iov holds the caller's buffers
	first    []int    // the first datagram of each message of wms, then the end
	tooBig   int      // datagrams this large or larger go one per message (0: none)
	tooBigAt time.Time

	sendCalls, sendMsgs, sendGSO, sendDatagrams atomic.Uint64
	sendDropped, gsoFallbacks                   atomic.Uint64
	recvCalls, recvMsgs, recvGRO, recvDatagrams atomic.Uint64
}

// NewConn returns a Conn on c (IPv6 if v6), which it owns from then on:
// Close closes c. It asks for large socket buffers and turns on the
// offloads the kernel has (less those EnvOffload turns off); writes send
// up to batch messages per system call.
func NewConn(c *net.UDPConn, v6 bool, batch int) *Conn {
	x := &Conn{
		c:     c,
		bc:    NewBatchConn(c, v6),
		wms:   make([]ipv4.Message, max(batch, 1)),
		woob:  make([]byte, max(batch, 1)*unix.CmsgSpace(2)),
		first: make([]int, 0, max(batch, 1)+1),
	}
	env := os.Getenv(EnvOffload)
	wantGSO := env != "off" && env != "0" && env != "nogso"
	wantGRO := env != "off" && env != "0" && env != "nogro"
	if rc, err := c.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) {
			s := int(fd)
			// Root may pass the system's limits (net.core.rmem_max); others
			// get what those allow.
			if unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, sockBuf) != nil {
				unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_RCVBUF, sockBuf)
			}
			if unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, sockBuf) != nil {
				unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_SNDBUF, sockBuf)
			}
			if wantGSO {
				_, err := unix.GetsockoptInt(s, unix.SOL_UDP, unix.UDP_SEGMENT)
				x.gso.Store(err == nil)
			}
			if wantGRO {
				x.gro = unix.SetsockoptInt(s, unix.SOL_UDP, unix.UDP_GRO, 1) == nil
			}
		})
	}
	for i := range x.wms {
		b := x.woob[i*unix.CmsgSpace(2) : (i+1)*unix.CmsgSpace(2)]
		h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
		h.Level, h.Type = unix.SOL_UDP, unix.UDP_SEGMENT
		h.SetLen(unix.CmsgLen(2))
	}
	return x
}

// UDPConn returns the socket.
func (x *Conn) UDPConn() *net.UDPConn { return x.c }

// Stats returns the counts so far.
func (x *Conn) Stats() Stats {
	return Stats{
		GSO: x.gso.Load(), GRO: x.gro,
		SendCalls: x.sendCalls.Load(), SendMsgs: x.sendMsgs.Load(),
		SendGSO: x.sendGSO.Load(), SendDatagrams: x.sendDatagrams.Load(),
		SendDropped: x.sendDropped.Load(), GSOFallbacks: x.gsoFallbacks.Load(),
		RecvCalls: x.recvCalls.Load(), RecvMsgs: x.recvMsgs.Load(),
		RecvGRO: x.recvGRO.Load(), RecvDatagrams: x.recvDatagrams.Load(),
	}
}

// Close closes the socket, which ends a Recv or Write in progress with
// net.ErrClosed. It is idempotent.
func (x *Conn) Close() error {
	var err error
	x.once.Do(func() {
		x.closed.Store(true)
		err = x.c.Close()
	})
	return err
}

// Write sends each of msgs as one datagram, hdr (which may be empty) then
// the message, to to[i], or with a nil to to the socket's peer (it must
// be connected). Datagrams lost to a passing error (Transient) are
// dropped, as a wire drops them. It returns how many datagrams it sent or
// dropped, and the first other error: net.ErrClosed once closed. It does
// not retain msgs or to.
func (x *Conn) Write(hdr []byte, msgs [][]byte, to []*net.UDPAddr) (int, error) {
	defer x.release()
	done := 0
	for done < len(msgs) {
		ms := x.pack(hdr, msgs[done:], to, done)
		for i := 0; i < len(ms); {
			n, err := x.bc.WriteBatch(ms[i:], 0)
			x.sendCalls.Add(1)
			n = max(n, 0) // -1 with an error
			x.count(i, n)
			i += n
			switch {
			case err == nil && n == 0:
				return done + x.first[i], errors.New("sendmmsg sent nothing")
			case err == nil:
				continue
			case x.closed.Load() || errors.Is(err, net.ErrClosed):
				return done + x.first[i], net.ErrClosed
			case ms[i].OOB != nil && gsoRefused(err):
				// Again from the run's first datagram, one per message.
				x.gsoFallbacks.Add(1)
				if errors.Is(err, syscall.EIO) {
					x.gso.Store(false)
				} else {
					x.tooBig, x.tooBigAt = len(ms[i].Buffers[0]), time.Now()
					if len(hdr) > 0 {
						x.tooBig += len(ms[i].Buffers[1])
					}
				}
				ms = ms[:i]
				continue
			case !Transient(err):
				return done + x.first[i], fmt.Errorf("sendmmsg: %w", err)
			}
			x.sendDropped.Add(uint64(x.first[i+1] - x.first[i]))
			i++
		}
		done += x.first[len(ms)]
	}
	return done, nil
}

// gsoRefused reports whether err, sending a run with UDP_SEGMENT, is the
// kernel refusing to segment it (see Conn).
func gsoRefused(err error) bool {
	return errors.Is(err, syscall.EIO) || errors.Is(err, syscall.EINVAL) ||
		errors.Is(err, syscall.EMSGSIZE) || errors.Is(err, syscall.ENOPROTOOPT) ||
		errors.Is(err, syscall.EOPNOTSUPP)
}

// count adds messages i to i+n of wms, sent, to the counts.
func (x *Conn) count(i, n int) {
	if n == 0 {
		return
	}
	gso := 0
	for _, m := range x.wms[i : i+n] {
		if m.OOB != nil {
			gso++
		}
	}
	x.sendMsgs.Add(uint64(n))
	x.sendGSO.Add(uint64(gso))
	x.sendDatagrams.Add(uint64(x.first[i+n] - x.first[i]))
}

// pack fills wms with the messages that send msgs, to[base+i] being
// msgs[i]'s destination (to may be nil), as many as wms holds: runs with
// UDP_SEGMENT where it can, else one datagram per message. x.first holds
// the first datagram of each message (relative to msgs), then the end.
func (x *Conn) pack(hdr []byte, msgs [][]byte, to []*net.UDPAddr, base int) []ipv4.Message {
	gso := x.gso.Load()
	if x.tooBig != 0 && time.Since(x.tooBigAt) > gsoRetry {
		x.tooBig = 0
	}
	iov := x.iov[:0]
	x.first = x.first[:0]
	ms := x.wms[:0]
	j := 0
	for j < len(msgs) && len(ms) < len(x.wms) {
		seg := len(hdr) + len(msgs[j])
		start := len(iov)
		iov = appendDatagram(iov, hdr, msgs[j])
		k := j + 1
		if gso && seg > 0 && (x.tooBig == 0 || seg < x.tooBig) {
			for total := seg; k < len(msgs) && k-j < maxSegments; k++ {
				l := len(hdr) + len(msgs[k])
				if l > seg || l == 0 || total+l > maxRun || !sameDest(to, base+j, base+k) {
					break
				}
				iov = appendDatagram(iov, hdr, msgs[k])
				total += l
				if l < seg {
					k++
					break
				}
			}
		}
		m := &x.wms[len(ms)]
		ms = ms[:len(ms)+1]
		m.Buffers = iov[start:len(iov):len(iov)]
		m.Addr, m.OOB = nil, nil
		if to != nil {
			m.Addr = to[base+j]
		}
		if k-j > 1 {
			i := len(ms) - 1
			b := x.woob[i*unix.CmsgSpace(2) : (i+1)*unix.CmsgSpace(2)]
			binary.NativeEndian.PutUint16(b[unix.CmsgLen(0):], uint16(seg))
			m.OOB = b
		}
		x.first = append(x.first, j)
		j = k
	}
	x.first = append(x.first, j)
	x.iov = iov
	x.iovUsed = max(x.iovUsed, len(iov))
	return ms
}

// release drops the references to the caller's messages and addresses.
func (x *Conn) release() {
	clear(x.iov[:x.iovUsed])
	x.iovUsed = 0
	for i := range x.wms {
		x.wms[i].Buffers, x.wms[i].Addr = nil, nil
	}
}

// appendDatagram appends the buffers of the datagram hdr+m.
func appendDatagram(iov [][]byte, hdr, m []byte) [][]byte {
	if len(hdr) > 0 {
		iov = append(iov, hdr)
	}
	return append(iov, m)
}

// sameDest reports whether datagrams i and j go to the same place.
func sameDest(to []*net.UDPAddr, i, j int) bool {
	if to == nil {
		return true
	}
	a, b := to[i], to[j]
	return a == b || a != nil && b != nil && a.Port == b.Port && a.IP.Equal(b.IP) && a.Zone == b.Zone
}

// RecvBatch holds what one Recv reads: up to its size of messages, each a
// datagram or a coalesced run of them, that Next hands out one datagram at
// a time. It is not safe for concurrent use.
type RecvBatch struct {
	// Split, if set, reports whether a message of n bytes that the kernel
	// says holds datagrams of the size of first (its first) does; if not,
	// Next returns it whole. The kernel says so of a datagram it was handed
	// with segmentation left to do inside (a frame a Linux VXLAN device
	// sent with TSO or UDP GSO), the inner segment size for the size.
	Split func(first []byte, n int) bool

	ms   []ipv4.Message
	segs []int            // per message: its datagrams' size if coalesced, else 0
	gso  []int            // per message: the segment size Split refused, else 0
	from []netip.AddrPort // per message: its sender
	n    int              // messages read
	msg  int              // the message of the next datagram
	off  int              // where in it
}

// NewRecvBatch returns a RecvBatch of n messages (n*MaxDatagram bytes).
func NewRecvBatch(n int) *RecvBatch {
	n = max(n, 1)
	b := &RecvBatch{
		ms:   make([]ipv4.Message, n),
		segs: make([]int, n),
		gso:  make([]int, n),
		from: make([]netip.AddrPort, n),
	}
	bufs := make([]byte, n*MaxDatagram)
	oob := make([]byte, n*oobLen)
	for i := range b.ms {
		b.ms[i].Buffers = [][]byte{bufs[i*MaxDatagram : (i+1)*MaxDatagram : (i+1)*MaxDatagram]}
		b.ms[i].OOB = oob[i*oobLen : (i+1)*oobLen : (i+1)*oobLen]
	}
	return b
}

// Datagram is a datagram received: its bytes and control messages (valid
// until the next Recv into its batch) and its sender. Trunc reports one
// cut short (longer than MaxDatagram). GSO is the segment size the kernel
// gave for a message that RecvBatch.Split refused to cut, a datagram that
// holds a packet whose segmentation was left to do: GSO bytes of its
// payload per segment; else 0.
type Datagram struct {
	B     []byte
	OOB   []byte
	From  netip.AddrPort
	Trunc bool
	GSO   int
}

// Recv reads into b, with one system call, the messages already queued,
// at least one (it blocks for it), past Transient errors; b's datagrams
// not taken by Next are lost. Once the Conn is closed it returns
// net.ErrClosed.
func (x *Conn) Recv(b *RecvBatch) error {
	b.n, b.msg, b.off = 0, 0, 0
	for i := range b.ms {
		b.ms[i].OOB = b.ms[i].OOB[:oobLen]
	}
	for {
		n, err := x.bc.ReadBatch(b.ms, 0)
		x.recvCalls.Add(1)
		switch {
		case err == nil:
		case x.closed.Load() || errors.Is(err, net.ErrClosed):
			return net.ErrClosed
		case Transient(err):
			continue
		default:
			return fmt.Errorf("recvmmsg: %w", err)
		}
		dgrams, gro := 0, 0
		for i := 0; i < n; i++ {
			m := &b.ms[i]
			b.segs[i], b.gso[i] = 0, 0
			if d := CmsgData(m.OOB[:m.NN], unix.SOL_UDP, unix.UDP_GRO); len(d) >= 4 {
				if s := int(int32(binary.NativeEndian.Uint32(d))); s > 0 && s < m.N {
					if b.Split == nil || b.Split(m.Buffers[0][:s], m.N) {
						b.segs[i] = s
					} else {
						b.gso[i] = s
					}
				}
			}
			if s := b.segs[i]; s > 0 {
				dgrams += (m.N + s - 1) / s
				gro++
			} else {
				dgrams++
			}
			b.from[i] = netip.AddrPort{}
			if a, ok := m.Addr.(*net.UDPAddr); ok {
				ap := a.AddrPort()
				b.from[i] = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
			}
			m.Addr = nil
		}
		x.recvMsgs.Add(uint64(n))
		x.recvGRO.Add(uint64(gro))
		x.recvDatagrams.Add(uint64(dgrams))
		b.n = n
		if n > 0 {
			return nil
		}
	}
}

// Next returns the next datagram of the batch, or false when none is
// left.
func (b *RecvBatch) Next() (Datagram, bool) {
	if b.msg >= b.n {
		return Datagram{}, false
	}
	m := &b.ms[b.msg]
	d := Datagram{B: m.Buffers[0][:m.N], OOB: m.OOB[:m.NN], From: b.from[b.msg]}
	if s := b.segs[b.msg]; s > 0 {
		d.B = d.B[b.off:min(b.off+s, m.N)]
		if b.off += s; b.off < m.N {
			return d, true
		}
	}
	d.Trunc = m.Flags&unix.MSG_TRUNC != 0
	d.GSO = b.gso[b.msg]
	b.msg, b.off = b.msg+1, 0
	return d, true
}

// CmsgData returns the data of the first control message of level and
// type in oob, or nil.
func CmsgData(oob []byte, level, typ int32) []byte {
	for len(oob) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < unix.SizeofCmsghdr || l > len(oob) {
			return nil
		}
		if h.Level == level && h.Type == typ {
			return oob[unix.CmsgLen(0):l]
		}
		oob = oob[min(unix.CmsgSpace(l-unix.CmsgLen(0)), len(oob)):]
	}
	return nil
}
