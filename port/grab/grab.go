// Package grab is a port on an existing Linux network interface, taken
// through an AF_PACKET SOCK_RAW socket bound to it (ETH_P_ALL, usually in
// promiscuous mode): frames the interface receives enter the network, and
// frames the network delivers go out of the interface. Frames the socket
// sees going out (PACKET_OUTGOING), among them the port's own, are skipped,
// so nothing is echoed back. Closing the socket drops its membership, so
// the interface's promiscuity is back as before.
package grab

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/endpoint"
	"github.com/ipn-project/ipn/endpoint/vnet"
	"github.com/ipn-project/ipn/internal/sockio"
)

// Endpoint is the IPN side of a grabbed interface.
type Endpoint struct {
	sockio.Pauser // endpoint.Pauser, by the socket's deadlines
	f             *os.File
	raw           syscall.RawConn
	once          sync.Once
	err           error

	// Every frame read or written starts with a virtio-net header
	// (PACKET_VNET_HDR): a veth's TCP super-frames, and checksums its
	// sender left to finish, come whole.
	hdr  [vnet.Len]byte // readFrame's
	hdrs []vnet.Hdr     // ReadOffload's headers, filled by readFrame
	ri   int            // the index in hdrs of the frame readFrame reads
	rbuf [2][]byte
	read func(fd int, b []byte) (int, bool, error) // e.readFrame, bound once
	wbuf [2][]byte                                 // Write's
	whdr [vnet.Len]byte
	one  *sockio.OneWriter // for WriteDirect
}

var (
	_ endpoint.Endpoint        = (*Endpoint)(nil)
	_ endpoint.DirectWriter    = (*Endpoint)(nil)
	_ endpoint.Pauser          = (*Endpoint)(nil)
	_ endpoint.Offloader       = (*Endpoint)(nil)
	_ endpoint.DirectOffloader = (*Endpoint)(nil)
)

var zeroHdr [vnet.Len]byte

// New returns an endpoint on fd, a bound AF_PACKET SOCK_RAW socket it owns
// from then on; it sets it non-blocking for Go's poller, and has it move
// virtio-net headers (endpoint.Offloader).
func New(fd int, iface string) (*Endpoint, error) {
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("grab %s: PACKET_VNET_HDR: %w", iface, err)
	}
	f, raw, err := sockio.File(fd, "grab "+iface)
	if err != nil {
		return nil, err
	}
	e := &Endpoint{Pauser: sockio.NewPauser(f), f: f, raw: raw, one: sockio.NewOneWriter(raw)}
	e.read = e.readFrame
	return e, nil
}

// Offloads implements endpoint.Offloader.
func (e *Endpoint) Offloads() bool { return true }

// Read implements endpoint.Endpoint.Read: the frames the interface
// received, at least one; a frame longer than its buffer is reported with
// its full length, and so is a super-frame or a frame whose checksum is
// not finished (the engine reads with ReadOffload). A down interface is
// waited out.
func (e *Endpoint) Read(bufs [][]byte, sizes []int) (int, error) {
	hdrs := make([]vnet.Hdr, len(bufs))
	n, err := e.ReadOffload(bufs, sizes, hdrs)
	for i := range n {
		if !hdrs[i].Plain() {
			sizes[i] = len(bufs[i]) + 1
		}
	}
	return n, err
}

// ReadOffload implements endpoint.Offloader.
func (e *Endpoint) ReadOffload(bufs [][]byte, sizes []int, hdrs []vnet.Hdr) (int, error) {
	e.hdrs, e.ri = hdrs, 0
	return sockio.ReadEach(e.raw, bufs, sizes, e.read, idle)
}

// readFrame reads one frame the interface received (not one it sent: the
// socket sees those too) into b, with its full length, and its header.
func (e *Endpoint) readFrame(fd int, b []byte) (int, bool, error) {
	e.rbuf[0], e.rbuf[1] = e.hdr[:], b
	n, _, _, from, err := unix.RecvmsgBuffers(fd, e.rbuf[:], nil, unix.MSG_DONTWAIT|unix.MSG_TRUNC)
	e.rbuf[1] = nil
	if err == unix.EINVAL {
		// A packet whose offload the header cannot say (SCTP's
		// segmentation, say): the kernel has dropped it; skip it.
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
		return 0, false, nil
	}
	if n <= vnet.Len {
		return 0, false, nil
	}
	e.hdrs[e.ri], _ = vnet.Decode(e.hdr[:])
	e.ri++
	return n - vnet.Len, true, nil
}

// idle reports whether err means nothing waits now; a down interface too.
func idle(err error) bool { return sockio.Again(err) || errors.Is(err, unix.ENETDOWN) }

func gone(err error) bool { return errors.Is(err, unix.EBADF) || errors.Is(err, unix.ENODEV) }

// Write implements endpoint.Endpoint.Write: a frame the interface refuses
// (down, too long, no buffer) is dropped; only a bad socket is an error.
func (e *Endpoint) Write(msgs [][]byte) (int, error) { return e.WriteOffload(msgs, nil) }

// WriteOffload implements endpoint.Offloader: msgs[i] with the header
// hdrs[i] (an ordinary frame's, if hdrs is nil).
func (e *Endpoint) WriteOffload(msgs [][]byte, hdrs []vnet.Hdr) (int, error) {
	sent := 0
	var werr error
	err := e.raw.Write(func(fd uintptr) bool {
		for i, m := range msgs {
			e.wbuf[0], e.wbuf[1] = zeroHdr[:], m
			if hdrs != nil && hdrs[i] != (vnet.Hdr{}) {
				hdrs[i].Encode(e.whdr[:])
				e.wbuf[0] = e.whdr[:]
			}
			_, err := unix.SendmsgBuffers(int(fd), e.wbuf[:], nil, nil, 0)
			if err == nil {
				sent++
			} else if gone(err) {
				werr = err
				break
			}
		}
		e.wbuf[1] = nil
		return true
	})
	if err == nil {
		err = werr
	}
	return sent, err
}

// WriteDirect implements endpoint.DirectWriter: one frame, or a drop.
func (e *Endpoint) WriteDirect(m []byte) bool { return e.WriteDirectOffload(m, vnet.Hdr{}) }

// WriteDirectOffload implements endpoint.DirectOffloader.
func (e *Endpoint) WriteDirectOffload(m []byte, h vnet.Hdr) bool {
	if h == (vnet.Hdr{}) {
		return e.one.WriteHdr(zeroHdr[:], m)
	}
	var b [vnet.Len]byte
	h.Encode(b[:])
	return e.one.WriteHdr(b[:], m)
}

// BatchSize implements endpoint.Endpoint.BatchSize.
func (e *Endpoint) BatchSize() int { return 32 }

// Close implements endpoint.Endpoint.Close.
func (e *Endpoint) Close() error {
	e.once.Do(func() { e.err = e.f.Close() })
	return e.err
}

// Dup returns a copy of the descriptor, to make the endpoint again with
// New in another process.
func (e *Endpoint) Dup() (int, error) { return sockio.Dup(e.raw) }
