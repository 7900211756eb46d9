package benchpeer

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/internal/shmring"
)

// The limit of ipn bench: two peers pass the frames through one bare
// shared-memory ring of internal/shmring, the fast path's, with its wake-up
// rule (poll, then sleep on an eventfd the other side writes only when
// asked to) and no daemon between them. What it measures is what this
// machine allows a one-way hop through shared memory, with nothing else
// to do.
//
// The process that runs the benchmark makes the ring and its two eventfds
// (NewLimitFiles) and passes them to both peers, as descriptors 3, 4 and 5
// (LimitFDs); the sender maps the ring as its producer, the receiver as
// its consumer (OpenLimit). A full ring holds the sender, as the fast
// path's ring to the daemon does.

// LimitFDs are the descriptors a limit peer finds its ring at: the memfd,
// the consumer's eventfd (data) and the producer's (space).
var LimitFDs = [3]int{3, 4, 5}

// NewLimitFiles makes a ring region for frames of up to size bytes (the
// fast path's layout for the default MTU, or larger) and its two eventfds,
// in the order of LimitFDs, for the caller to pass to both peers and
// close.
func NewLimitFiles(size int) ([]*os.File, error) {
	r, err := shmring.Create(shmring.LayoutFor(max(size, 1514)))
	if err != nil {
		return nil, err
	}
	data, err := shmring.NewWaker()
	if err != nil {
		r.Close()
		return nil, err
	}
	space, err := shmring.NewWaker()
	if err != nil {
		r.Close()
		data.Close()
		return nil, err
	}
	files := make([]*os.File, 0, 3)
	for _, fd := range []int{r.FD(), data.FD(), space.FD()} {
		f, err := dupFile(fd)
		if err != nil {
			for _, f := range files {
				f.Close()
			}
			return nil, errors.Join(err, r.Close(), data.Close(), space.Close())
		}
		files = append(files, f)
	}
	r.Close()
	data.Close()
	space.Close()
	return files, nil
}

// dupFile returns a file of its own for a duplicate of fd.
func dupFile(fd int) (*os.File, error) {
	nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("limit ring: %w", err)
	}
	return os.NewFile(uintptr(nfd), "ipn-limit"), nil
}

// Limit is a Conn over a limit ring: Send and SendBatch for the sender,
// Recv and RecvBatch for the receiver.
type Limit struct {
	region *shmring.Region
	prod   *shmring.Producer // the sender's
	cons   *shmring.Consumer // the receiver's
	data   *shmring.Waker    // the receiver sleeps on it
	space  *shmring.Waker    // the sender sleeps on it
	closed atomic.Bool
	smu    sync.Mutex // the sender's side; Close unmaps under both
	rmu    sync.Mutex // the receiver's side
	once   sync.Once
}

var _ BatchConn = (*Limit)(nil)

// OpenLimit maps the limit ring at fds (the memfd and the eventfds, in
// the order of LimitFDs) as its sender (send) or its receiver. It takes
// ownership of the descriptors.
func OpenLimit(fds [3]int, send bool) (*Limit, error) {
	region, err := shmring.Map(fds[0])
	if err != nil {
		unix.Close(fds[1])
		unix.Close(fds[2])
		return nil, fmt.Errorf("limit ring: %w", err)
	}
	data, err := shmring.WakerFromFD(fds[1])
	if err != nil {
		region.Close()
		unix.Close(fds[2])
		return nil, err
	}
	space, err := shmring.WakerFromFD(fds[2])
	if err != nil {
		region.Close()
		data.Close()
		return nil, err
	}
	l := &Limit{region: region, data: data, space: space}
	if send {
		l.prod = region.Producer(shmring.ToDaemon)
	} else {
		l.cons = region.Consumer(shmring.ToDaemon)
	}
	return l, nil
}

func (l *Limit) done() bool { return l.closed.Load() }

// Send implements Conn.Send.
func (l *Limit) Send(b []byte) error {
	one := [1][]byte{b}
	return l.SendBatch(one[:])
}

// SendBatch implements BatchConn.SendBatch: it waits for room when the ring
// is full.
func (l *Limit) SendBatch(msgs [][]byte) error {
	l.smu.Lock()
	defer l.smu.Unlock()
	if l.prod == nil {
		return errors.New("limit ring: the receiver cannot send")
	}
	for sent := 0; sent < len(msgs); {
		if l.closed.Load() {
			return net.ErrClosed
		}
		for sent < len(msgs) {
			ok, err := l.prod.Put(msgs[sent])
			if err != nil {
				return err
			}
			if !ok {
				break
			}
			sent++
		}
		l.prod.Publish()
		if l.prod.ConsumerWaiting() {
			l.data.Wake()
		}
		if sent < len(msgs) {
			if err := l.prod.WaitSpace(l.space, l.done); err != nil {
				return l.waitErr(err)
			}
		}
	}
	return nil
}

// Recv implements Conn.Recv.
func (l *Limit) Recv(b []byte) (int, error) {
	var sizes [1]int
	bufs := [1][]byte{b}
	if _, err := l.RecvBatch(bufs[:], sizes[:]); err != nil {
		return 0, err
	}
	return min(sizes[0], len(b)), nil
}

// RecvBatch implements BatchConn.RecvBatch.
func (l *Limit) RecvBatch(bufs [][]byte, sizes []int) (int, error) {
	l.rmu.Lock()
	defer l.rmu.Unlock()
	if l.cons == nil {
		return 0, errors.New("limit ring: the sender cannot receive")
	}
	for {
		if l.closed.Load() {
			return 0, net.ErrClosed
		}
		n := 0
		for n < len(bufs) {
			size, ok, err := l.cons.Pop(bufs[n])
			if err != nil {
				return n, err
			}
			if !ok {
				break
			}
			sizes[n] = size
			n++
		}
		if n > 0 {
			l.cons.Release()
			if l.cons.ProducerWaiting() {
				l.space.Wake()
			}
			return n, nil
		}
		if err := l.cons.WaitData(l.data, l.done); err != nil {
			return 0, l.waitErr(err)
		}
	}
}

func (l *Limit) waitErr(err error) error {
	if l.closed.Load() || errors.Is(err, os.ErrClosed) {
		return net.ErrClosed
	}
	return err
}

// Close implements Conn.Close: it ends a Send or Recv in progress and
// unmaps the ring once they have returned.
func (l *Limit) Close() error {
	l.once.Do(func() {
		l.closed.Store(true)
		l.data.Close()
		l.space.Close()
		l.smu.Lock()
		l.rmu.Lock()
		l.region.Close()
		l.rmu.Unlock()
		l.smu.Unlock()
	})
	return nil
}
