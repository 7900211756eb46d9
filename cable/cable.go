// Package cable joins an IPN network to another place, like a virtual
// cable: every frame the network delivers to the cable's port goes out of
// the far end, and every frame the far end yields is sent into the network.
//
// A far end is an endpoint.Endpoint, opened from a URL by the opener
// registered for its scheme: "stdio" (or "-") for the stream encapsulation
// on stdin/stdout, "ipn" for another local network, and the ones their
// packages register (vde, udp, vxlan, vxvde, ...).
package cable

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ipn-project/ipn"
	"github.com/ipn-project/ipn/endpoint"
	"github.com/ipn-project/ipn/farend/vdeplug"
)

// Opener opens the far end of a cable. spec is the URL without its
// "scheme://" prefix (for "-" and "stdio", empty).
type Opener func(ctx context.Context, spec string) (endpoint.Endpoint, error)

var openers = struct {
	sync.RWMutex
	m map[string]Opener
}{m: map[string]Opener{}}

// Register makes scheme's far ends available to Open.
func Register(scheme string, o Opener) {
	openers.Lock()
	defer openers.Unlock()
	openers.m[scheme] = o
}

// Schemes returns the registered schemes, sorted.
func Schemes() []string {
	openers.RLock()
	defer openers.RUnlock()
	var l []string
	for s := range openers.m {
		l = append(l, s)
	}
	sort.Strings(l)
	return l
}

// Open opens the far end named by url: "-" or "stdio", or SCHEME://SPEC.
func Open(ctx context.Context, url string) (endpoint.Endpoint, error) {
	scheme, spec, ok := strings.Cut(url, "://")
	if url == "-" || url == "stdio" {
		scheme, spec, ok = "stdio", "", true
	}
	if !ok {
		return nil, fmt.Errorf("cable %q: want SCHEME://... (schemes: %s) or - for stdio", url, strings.Join(Schemes(), ", "))
	}
	openers.RLock()
	o := openers.m[scheme]
	openers.RUnlock()
	if o == nil {
		return nil, fmt.Errorf("cable %q: unknown scheme %q (schemes: %s)", url, scheme, strings.Join(Schemes(), ", "))
	}
	ep, err := o(ctx, spec)
	if err != nil {
		return nil, fmt.Errorf("cable %s: %w", url, err)
	}
	return ep, nil
}

// Retryable reports whether Open failed in a way that waiting may cure:
// no one listens there yet (a refused connection, no socket, no VDE
// switch), no route or name yet, a timeout; not with a URL that is wrong,
// which no retry makes right.
func Retryable(err error) bool {
	var errno syscall.Errno
	var dns *net.DNSError
	return errors.As(err, &errno) && errno != syscall.EINVAL ||
		errors.Is(err, vdeplug.ErrNoSwitch) || errors.As(err, &dns) ||
		errors.Is(err, os.ErrDeadlineExceeded)
}

// ErrFarEnd reports that the far end of a cable went away.
var ErrFarEnd = errors.New("far end of the cable went away")

// ErrNetwork reports that the IPN side of a cable went away.
var ErrNetwork = errors.New("network side of the cable went away")

// ErrLoop reports a cable whose two ends are one network: every frame it
// carried would come back into the network, for ever. It wraps ELOOP.
var ErrLoop = fmt.Errorf("both ends of the cable are the same network, which every frame would loop back into: %w", syscall.ELOOP)

// checkSelf refuses a cable from a network to itself: two ends that are
// sockets (ipn.Endpoint) on the same network file, whatever the path (a
// symlink, a hard link), which the network's identity, its file's device
// and inode, tells.
func checkSelf(near, far endpoint.Endpoint) error {
	a, aok := near.(interface{ Socket() *ipn.Socket })
	b, bok := far.(interface{ Socket() *ipn.Socket })
	if !aok || !bok {
		return nil
	}
	np, fp := a.Socket().Path(), b.Socket().Path()
	x, xok := netID(np)
	y, yok := netID(fp)
	if !xok || !yok || x != y {
		return nil
	}
	return fmt.Errorf("cable from %s to ipn://%s (device %d, inode %d): %w", np, fp, x[0], x[1], ErrLoop)
}

// netID returns the device and inode of the network file at path, as the
// daemon reports them, or else as stat finds them.
func netID(path string) ([2]uint64, bool) {
	if nets, err := ipn.List(path); err == nil && len(nets) == 1 {
		return [2]uint64{nets[0].Dev, nets[0].Ino}, true
	}
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return [2]uint64{}, false
	}
	return [2]uint64{st.Dev, st.Ino}, true
}

// MTUSetter is implemented by far ends that drop, and count, frames longer
// than the network's MTU themselves (package farend/qemu's): Run tells them
// the MTU before it pumps.
type MTUSetter interface {
	SetMTU(mtu int)
}

// Run pumps frames both ways between the connected socket s and far, as
// Pump does with s's endpoint (Socket.Endpoint) as the near end: it closes
// far, not s.
func Run(ctx context.Context, s *ipn.Socket, far endpoint.Endpoint) error {
	if m, ok := far.(MTUSetter); ok {
		if mtu, err := s.MTU(); err == nil {
			m.SetMTU(mtu)
		}
	}
	return Pump(ctx, s.Endpoint(), far)
}

// deadliner is a near end that deadlines in the past wake, so that Pump
// can stop reading and writing it without closing it (an ipn.Endpoint).
type deadliner interface {
	SetReadDeadline(t time.Time) error
	SetWriteDeadline(t time.Time) error
}

// pumpBuf is the buffer of one message in a pump: the largest message;
// pumpBatch bounds a batch, and so a cable's buffers (4 MiB each way, of
// which the pages messages never reach are never touched). A batch as
// large as a socket's (ipn.Endpoint's) lets a UDP far end send the frames
// of a TCP segment cut at the daemon, some 44 of 1514 bytes, as one run
// with UDP segmentation, in one system call. (Reading the next batch
// while one is written, in a goroutine of its own, cost more CPU per
// frame than it saved, on 2 cores.)
const (
	pumpBuf   = 65536
	pumpBatch = 64
)

// Pump moves frames both ways between near (the network side: a socket's
// endpoint) and far, in batches (each side's BatchSize), until one side
// ends or ctx is done; it closes far, and near too unless a read deadline
// can stop it (an ipn.Endpoint stays open, for another far end). It
// returns why it stopped: an error wrapping ErrFarEnd or ErrNetwork, or
// ctx's error. It refuses at once, with an error wrapping ErrLoop, two
// ends that are the same network (ipn:// to the network's own file).
// For the network's loop protection to probe the cable, connect the near
// socket as a link (Socket.SetLink), as ipn plug does; an ipn:// far end
// joins as one.
func Pump(ctx context.Context, near, far endpoint.Endpoint) error {
	if err := checkSelf(near, far); err != nil {
		far.Close()
		return err
	}
	errc := make(chan error, 2)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // network -> far end
		defer wg.Done()
		errc <- pump(far, near, ErrNetwork, ErrFarEnd)
	}()
	go func() { // far end -> network
		defer wg.Done()
		errc <- pump(near, far, ErrFarEnd, ErrNetwork)
	}()
	var err error
	select {
	case err = <-errc:
	case <-ctx.Done():
		err = ctx.Err()
	}
	// Stop both pumps: closing far ends its reader; a deadline in the past
	// wakes near's, or closing it.
	far.Close()
	// A write waiting for room in a lossless network is woken too.
	d, wake := near.(deadliner)
	if wake {
		d.SetReadDeadline(pastDeadline)
		d.SetWriteDeadline(pastDeadline)
	} else {
		near.Close()
	}
	wg.Wait()
	if wake {
		d.SetReadDeadline(noDeadline)
		d.SetWriteDeadline(noDeadline)
	}
	return err
}

// pump copies batches from src to dst until one fails; a read error is
// reported wrapping srcErr, a write error wrapping dstErr. Messages dst
// drops (Write's count short with no error) are a wire's losses; empty and
// truncated ones are not passed on.
func pump(dst, src endpoint.Endpoint, srcErr, dstErr error) error {
	batch := max(min(src.BatchSize(), dst.BatchSize(), pumpBatch), 1)
	bufs := make([][]byte, batch)
	sizes := make([]int, batch)
	arena := make([]byte, batch*pumpBuf)
	for i := range bufs {
		bufs[i] = arena[i*pumpBuf : (i+1)*pumpBuf : (i+1)*pumpBuf]
	}
	msgs := make([][]byte, 0, batch)
	for {
		n, err := src.Read(bufs, sizes)
		msgs = msgs[:0]
		for i := 0; i < n; i++ {
			if sizes[i] > 0 && sizes[i] <= len(bufs[i]) {
				msgs = append(msgs, bufs[i][:sizes[i]])
			}
		}
		if len(msgs) > 0 {
			if _, werr := dst.Write(msgs); werr != nil {
				return fmt.Errorf("%w: %v", dstErr, werr)
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				err = io.EOF
			}
			return fmt.Errorf("%w: %v", srcErr, err)
		}
	}
}
