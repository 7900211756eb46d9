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
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/endpoint"
	"github.com/ipn-project/ipn/internal/sockio"
)

// Endpoint is the IPN side of a grabbed interface.
type Endpoint struct {
	sockio.Pauser // endpoint.Pauser, by the socket's deadlines
	f             *os.File
	raw           syscall.RawConn
	one           *sockio.OneWriter // for WriteDirect
	once          sync.Once
	err           error
}

var (
	_ endpoint.Endpoint     = (*Endpoint)(nil)
	_ endpoint.DirectWriter = (*Endpoint)(nil)
	_ endpoint.Pauser       = (*Endpoint)(nil)
)

// New returns an endpoint on fd, a bound AF_PACKET SOCK_RAW socket it owns
// from then on; it sets it non-blocking for Go's poller.
func New(fd int, iface string) (*Endpoint, error) {
	f, raw, err := sockio.File(fd, "grab "+iface)
	if err != nil {
		return nil, err
	}
	return &Endpoint{Pauser: sockio.NewPauser(f), f: f, raw: raw, one: sockio.NewOneWriter(raw)}, nil
}

// Read implements endpoint.Endpoint.Read: the frames the interface
// received, at least one; a frame longer than its buffer is reported with
// its full length. A down interface is waited out.
func (e *Endpoint) Read(bufs [][]byte, sizes []int) (int, error) {
	return sockio.ReadEach(e.raw, bufs, sizes, readFrame, idle)
}

// readFrame reads one frame the interface received (not one it sent: the
// socket sees those too) into b, with its full length.
func readFrame(fd int, b []byte) (int, bool, error) {
	n, from, err := unix.Recvfrom(fd, b, unix.MSG_DONTWAIT|unix.MSG_TRUNC)
	if err != nil {
		return 0, false, err
	}
	if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
		return 0, false, nil
	}
	return n, n > 0, nil
}

// idle reports whether err means nothing waits now; a down interface too.
func idle(err error) bool { return sockio.Again(err) || errors.Is(err, unix.ENETDOWN) }

// Write implements endpoint.Endpoint.Write: a frame the interface refuses
// (down, too long, no buffer) is dropped; only a bad socket is an error.
func (e *Endpoint) Write(msgs [][]byte) (int, error) {
	return sockio.WriteEach(e.raw, msgs, func(err error) bool {
		return errors.Is(err, unix.EBADF) || errors.Is(err, unix.ENODEV)
	})
}

// WriteDirect implements endpoint.DirectWriter: one frame, or a drop.
func (e *Endpoint) WriteDirect(m []byte) bool { return e.one.Write(m) }

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
