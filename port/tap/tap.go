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
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/endpoint"
	"github.com/ipn-project/ipn/internal/sockio"
)

// Endpoint is the IPN side of a tap interface.
type Endpoint struct {
	sockio.Pauser // endpoint.Pauser, by the file's deadlines
	f             *os.File
	raw           syscall.RawConn
	one           *sockio.OneWriter                         // for WriteDirect
	iov           [2][]byte                                 // Read's: the caller's buffer, then scratch
	read          func(fd int, b []byte) (int, bool, error) // e.readFrame, bound once
	scratch       []byte                                    // catches the rest of a frame longer than its buffer
	once          sync.Once
	err           error
}

var (
	_ endpoint.Endpoint     = (*Endpoint)(nil)
	_ endpoint.DirectWriter = (*Endpoint)(nil)
	_ endpoint.Pauser       = (*Endpoint)(nil)
)

// New returns an endpoint on fd, a tap descriptor it owns from then on: it
// sets it non-blocking, so that Go's poller waits on it and Close unblocks
// a Read.
func New(fd int, name string) (*Endpoint, error) {
	f, raw, err := sockio.File(fd, "tap "+name)
	if err != nil {
		return nil, err
	}
	e := &Endpoint{Pauser: sockio.NewPauser(f), f: f, raw: raw, one: sockio.NewOneWriter(raw), scratch: make([]byte, 65536)}
	e.read = e.readFrame
	return e, nil
}

// Read implements endpoint.Endpoint.Read: the frames queued, at least one.
// A frame longer than its buffer is reported with its full length.
func (e *Endpoint) Read(bufs [][]byte, sizes []int) (int, error) {
	return sockio.ReadEach(e.raw, bufs, sizes, e.read, sockio.Again)
}

// readFrame reads one frame into b, the rest of a longer one into scratch
// (to learn its length).
func (e *Endpoint) readFrame(fd int, b []byte) (int, bool, error) {
	e.iov[0], e.iov[1] = b, e.scratch
	n, err := unix.Readv(fd, e.iov[:])
	e.iov[0] = nil
	return n, n > 0, err
}

// Write implements endpoint.Endpoint.Write: a frame the interface refuses
// (down, too long) is dropped; only a descriptor gone bad is an error.
func (e *Endpoint) Write(msgs [][]byte) (int, error) {
	return sockio.WriteEach(e.raw, msgs, fatal)
}

// WriteDirect implements endpoint.DirectWriter: one frame, or a drop.
func (e *Endpoint) WriteDirect(m []byte) bool { return e.one.Write(m) }

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
