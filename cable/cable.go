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

	"github.com/ipn-project/ipn"
	"github.com/ipn-project/ipn/endpoint"
	"github.com/ipn-project/ipn/endpoint/vdeplug"
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

// checkSelf refuses a cable from the network of s to itself: an ipn://
// far end on the same network file, whatever the path (a symlink, a hard
// link), which the network's identity, its file's device and inode, tells.
func checkSelf(s *ipn.Socket, far endpoint.Endpoint) error {
	e, ok := far.(*socketEnd)
	if !ok {
		return nil
	}
	near, other := s.Path(), e.s.Path()
	a, aok := netID(near)
	b, bok := netID(other)
	if !aok || !bok || a != b {
		return nil
	}
	return fmt.Errorf("cable from %s to ipn://%s (device %d, inode %d): %w", near, other, a[0], a[1], ErrLoop)
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

// Run pumps frames both ways between the connected socket s and far until
// one side ends or ctx is done; it closes far, not s, and returns why it
// stopped: an error wrapping ErrFarEnd or ErrNetwork, or ctx's error. It
// refuses at once, with an error wrapping ErrLoop, a far end that is the
// network of s itself (ipn:// to the same network file).
// For the network's loop protection to probe the cable, connect s as a
// link (Socket.SetLink), as ipn plug does; an ipn:// far end joins as one.
func Run(ctx context.Context, s *ipn.Socket, far endpoint.Endpoint) error {
	if err := checkSelf(s, far); err != nil {
		far.Close()
		return err
	}
	errc := make(chan error, 2)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // network -> far end
		defer wg.Done()
		buf := make([]byte, 65536)
		msgs := [][]byte{nil}
		for {
			n, flags, err := s.Recv(buf)
			if err != nil {
				errc <- fmt.Errorf("%w: %v", ErrNetwork, err)
				return
			}
			if flags&ipn.MsgOOB != 0 {
				continue
			}
			msgs[0] = buf[:n]
			if _, err := far.Write(msgs); err != nil {
				errc <- fmt.Errorf("%w: %v", ErrFarEnd, err)
				return
			}
		}
	}()
	go func() { // far end -> network
		defer wg.Done()
		batch := max(far.BatchSize(), 1)
		bufs := make([][]byte, batch)
		sizes := make([]int, batch)
		for i := range bufs {
			bufs[i] = make([]byte, 65536)
		}
		for {
			n, err := far.Read(bufs, sizes)
			for i := 0; i < n; i++ {
				if sizes[i] > len(bufs[i]) || sizes[i] == 0 {
					continue
				}
				if err := s.Send(bufs[i][:sizes[i]]); err != nil && !errors.Is(err, errOverflow) {
					errc <- fmt.Errorf("%w: %v", ErrNetwork, err)
					return
				}
			}
			if err != nil {
				if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
					err = io.EOF
				}
				errc <- fmt.Errorf("%w: %v", ErrFarEnd, err)
				return
			}
		}
	}()
	var err error
	select {
	case err = <-errc:
	case <-ctx.Done():
		err = ctx.Err()
	}
	// Stop both pumps: closing far ends the reader; a deadline in the past
	// wakes the socket's.
	far.Close()
	s.SetReadDeadline(pastDeadline)
	wg.Wait()
	s.SetReadDeadline(noDeadline)
	return err
}
