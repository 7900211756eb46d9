// Package tap is a port on a Linux tap interface: a file descriptor of
// /dev/net/tun attached with IFF_TAP|IFF_NO_PI, where one read is one
// Ethernet frame the kernel sends out of the interface and one write is one
// frame the interface receives. The descriptor carries the interface's
// network namespace, so it may come from a process in another namespace.
//
// A tap's MTU is its network's less HeaderLen (the network's MTU is a whole
// frame, an interface's the payload): MatchMTU gives it that, and whoever
// opens the tap calls it (ipn plug tap:// does). A frame the tap sends
// that is longer than the network's MTU would be lost.
package tap

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

// Endpoint is the IPN side of a tap interface.
type Endpoint struct {
	sockio.Pauser // endpoint.Pauser, by the file's deadlines
	f             *os.File
	raw           syscall.RawConn
	one           *sockio.OneWriter                         // for WriteDirect
	iov           [3][]byte                                 // Read's: the header, the caller's buffer, then scratch
	read          func(fd int, b []byte) (int, bool, error) // e.readFrame or e.readVnet, bound once
	scratch       []byte                                    // catches the rest of a frame longer than its buffer
	once          sync.Once
	err           error

	// vnet: the tap has IFF_VNET_HDR, and offloads: every frame read or
	// written starts with a virtio-net header.
	vnet bool
	hdr  [vnet.Len]byte // Read's
	hdrs []vnet.Hdr     // ReadOffload's headers, filled by readVnet
	ri   int            // the index in hdrs of the frame readVnet reads
	wiov [2][]byte      // Write's: the header, the frame
	bmu  sync.Mutex     // WriteDirectBatch's
	co   vnet.Coalescer // WriteDirectBatch's
	whdr [vnet.Len]byte // Write's header
}

var (
	_ endpoint.Endpoint          = (*Endpoint)(nil)
	_ endpoint.DirectWriter      = (*Endpoint)(nil)
	_ endpoint.Pauser            = (*Endpoint)(nil)
	_ endpoint.Offloader         = (*Endpoint)(nil)
	_ endpoint.DirectOffloader   = (*Endpoint)(nil)
	_ endpoint.DirectBatchWriter = (*Endpoint)(nil)
)

// Offloads the tap is asked for, with IFF_VNET_HDR (linux/if_tun.h).
const (
	tunFCsum   = 0x01
	tunFTSO4   = 0x02
	tunFTSO6   = 0x04
	tunFTSOECN = 0x08
	tunFUSO4   = 0x20
	tunFUSO6   = 0x40
)

// zeroHdr is the header of an ordinary frame.
var zeroHdr [vnet.Len]byte

// New returns an endpoint on fd, a tap descriptor it owns from then on: it
// sets it non-blocking, so that Go's poller waits on it and Close unblocks
// a Read. A tap opened with IFF_VNET_HDR is given checksum and
// segmentation offloads (TUNSETOFFLOAD): the kernel then hands it TCP
// super-frames of up to 64 KiB, which the engine moves whole to other taps
// and cuts for every other port (endpoint.Offloader).
func New(fd int, name string) (*Endpoint, error) {
	vh, err := setOffloads(fd)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tap %s: %w", name, err)
	}
	f, raw, err := sockio.File(fd, "tap "+name)
	if err != nil {
		return nil, err
	}
	e := &Endpoint{Pauser: sockio.NewPauser(f), f: f, raw: raw, one: sockio.NewOneWriter(raw), scratch: make([]byte, 65536), vnet: vh}
	e.read = e.readFrame
	if vh {
		e.read = e.readVnet
	}
	return e, nil
}

// setOffloads gives the tap fd its offloads if it has IFF_VNET_HDR, and
// reports whether it has.
func setOffloads(fd int) (bool, error) {
	ifr, err := unix.NewIfreq("")
	if err != nil {
		return false, err
	}
	if err := unix.IoctlIfreq(fd, unix.TUNGETIFF, ifr); err != nil {
		return false, fmt.Errorf("TUNGETIFF: %w", err)
	}
	if ifr.Uint16()&unix.IFF_VNET_HDR == 0 {
		return false, nil
	}
	// A persistent tap keeps the size another program set (QEMU's 12).
	if err := unix.IoctlSetPointerInt(fd, unix.TUNSETVNETHDRSZ, vnet.Len); err != nil {
		return false, fmt.Errorf("TUNSETVNETHDRSZ: %w", err)
	}
	all := tunFCsum | tunFTSO4 | tunFTSO6 | tunFTSOECN
	if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, all|tunFUSO4|tunFUSO6); err != nil {
		// Kernels before 6.2 have no UDP segmentation offload.
		if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, all); err != nil {
			return false, fmt.Errorf("TUNSETOFFLOAD: %w", err)
		}
	}
	return true, nil
}

// Offloads implements endpoint.Offloader: whether the tap was opened with
// IFF_VNET_HDR.
func (e *Endpoint) Offloads() bool { return e.vnet }

// Read implements endpoint.Endpoint.Read: the frames queued, at least one.
// A frame longer than its buffer is reported with its full length. On a
// tap with offloads, a super-frame, or a frame whose checksum is not
// finished, is reported as too long (the engine reads such a tap with
// ReadOffload).
func (e *Endpoint) Read(bufs [][]byte, sizes []int) (int, error) {
	if !e.vnet {
		return sockio.ReadEach(e.raw, bufs, sizes, e.read, sockio.Again)
	}
	if cap(e.hdrs) < len(bufs) {
		e.hdrs = make([]vnet.Hdr, len(bufs))
	}
	n, err := e.ReadOffload(bufs, sizes, e.hdrs[:len(bufs)])
	for i := range n {
		if !e.hdrs[i].Plain() {
			sizes[i] = len(bufs[i]) + 1
		}
	}
	return n, err
}

// ReadOffload implements endpoint.Offloader.
func (e *Endpoint) ReadOffload(bufs [][]byte, sizes []int, hdrs []vnet.Hdr) (int, error) {
	if !e.vnet {
		clear(hdrs[:len(bufs)])
		return sockio.ReadEach(e.raw, bufs, sizes, e.read, sockio.Again)
	}
	e.hdrs, e.ri = hdrs, 0
	return sockio.ReadEach(e.raw, bufs, sizes, e.read, sockio.Again)
}

// readFrame reads one frame into b, the rest of a longer one into scratch
// (to learn its length).
func (e *Endpoint) readFrame(fd int, b []byte) (int, bool, error) {
	e.iov[0], e.iov[1] = b, e.scratch
	n, err := unix.Readv(fd, e.iov[:2])
	e.iov[0] = nil
	return n, n > 0, err
}

// readVnet reads one frame after its header, the header into
// e.hdrs[e.ri].
func (e *Endpoint) readVnet(fd int, b []byte) (int, bool, error) {
	e.iov[0], e.iov[1], e.iov[2] = e.hdr[:], b, e.scratch
	n, err := unix.Readv(fd, e.iov[:])
	e.iov[1] = nil
	if err != nil || n <= vnet.Len {
		return 0, false, err
	}
	h, _ := vnet.Decode(e.hdr[:])
	e.hdrs[e.ri] = h
	e.ri++
	return n - vnet.Len, true, nil
}

// Write implements endpoint.Endpoint.Write: a frame the interface refuses
// (down, too long) is dropped; only a descriptor gone bad is an error.
func (e *Endpoint) Write(msgs [][]byte) (int, error) {
	if !e.vnet {
		return sockio.WriteEach(e.raw, msgs, fatal)
	}
	return e.WriteOffload(msgs, nil)
}

// WriteOffload implements endpoint.Offloader: msgs[i] with the header
// hdrs[i] (an ordinary frame's, if hdrs is nil).
func (e *Endpoint) WriteOffload(msgs [][]byte, hdrs []vnet.Hdr) (int, error) {
	if !e.vnet {
		return sockio.WriteEach(e.raw, msgs, fatal)
	}
	sent := 0
	var werr error
	err := e.raw.Write(func(fd uintptr) bool {
		for i, m := range msgs {
			e.wiov[0], e.wiov[1] = zeroHdr[:], m
			if hdrs != nil && hdrs[i] != (vnet.Hdr{}) {
				hdrs[i].Encode(e.whdr[:])
				e.wiov[0] = e.whdr[:]
			}
			_, err := unix.Writev(int(fd), e.wiov[:])
			if err == nil {
				sent++
			} else if fatal(err) {
				werr = err
				break
			}
		}
		e.wiov[1] = nil
		return true
	})
	if err == nil {
		err = werr
	}
	return sent, err
}

// WriteDirect implements endpoint.DirectWriter: one frame, or a drop.
func (e *Endpoint) WriteDirect(m []byte) bool {
	if !e.vnet {
		return e.one.Write(m)
	}
	return e.WriteDirectOffload(m, vnet.Hdr{})
}

// WriteDirectOffload implements endpoint.DirectOffloader.
func (e *Endpoint) WriteDirectOffload(m []byte, h vnet.Hdr) bool {
	if !e.vnet {
		return false // the engine offers it only to a tap with offloads
	}
	if h == (vnet.Hdr{}) {
		return e.one.WriteHdr(zeroHdr[:], m)
	}
	var b [vnet.Len]byte
	h.Encode(b[:])
	return e.one.WriteHdr(b[:], m)
}

// WriteDirectBatch implements endpoint.DirectBatchWriter: runs of
// ordinary TCP segments of one flow are merged into super-frames
// (vnet.Coalescer), so that the kernel takes in one packet where it would
// have taken dozens.
func (e *Endpoint) WriteDirectBatch(msgs [][]byte, hdrs []vnet.Hdr) int {
	if !e.vnet {
		return 0 // the engine offers it only to a tap with offloads
	}
	e.bmu.Lock()
	defer e.bmu.Unlock()
	sent := 0
	for i := 0; i < len(msgs); {
		if hdrs[i] != (vnet.Hdr{}) {
			if e.WriteDirectOffload(msgs[i], hdrs[i]) {
				sent++
			}
			i++
			continue
		}
		j := i + 1
		for j < len(msgs) && hdrs[j] == (vnet.Hdr{}) {
			j++
		}
		if j-i == 1 {
			if e.WriteDirectOffload(msgs[i], vnet.Hdr{}) {
				sent++
			}
			i = j
			continue
		}
		lost := 0
		for _, f := range e.co.Coalesce(msgs[i:j]) {
			if !e.WriteDirectOffload(f.Data, f.Hdr) {
				lost += f.Hdr.Segments(len(f.Data))
			}
		}
		sent += max(j-i-lost, 0)
		i = j
	}
	return sent
}

func fatal(err error) bool {
	return errors.Is(err, unix.EBADF) || errors.Is(err, unix.EBADFD) || errors.Is(err, unix.ENODEV)
}

// BatchSize implements endpoint.Endpoint.BatchSize.
func (e *Endpoint) BatchSize() int { return 32 }

// Close implements endpoint.Endpoint.Close. When it closes the last
// descriptor of a tap that is not persistent (TUNSETPERSIST), the kernel
// removes the interface.
func (e *Endpoint) Close() error {
	e.once.Do(func() { e.err = e.f.Close() })
	return e.err
}

// Dup returns a copy of the descriptor, to make the endpoint again with
// New in another process.
func (e *Endpoint) Dup() (int, error) { return sockio.Dup(e.raw) }
