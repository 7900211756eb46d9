// Package fanout is an IPN delivery policy for media streams, built only on
// the public policy API: members subscribe to named streams, and each frame
// of a stream goes to that stream's subscribers alone.
//
// Messages, as a member sends them:
//
//	NAME:payload   a frame of stream NAME; it goes to the ports subscribed
//	               to NAME, never back to its sender
//	+NAME          subscribe the sender to NAME; the network answers the
//	               sender with the message "subscribed NAME"
//	-NAME          unsubscribe the sender from NAME
//
// NAME is 1 to 64 bytes of [A-Za-z0-9._-]. Subscriptions and unsubscriptions
// are consumed by the policy: they reach no member. A port may subscribe to
// any number of streams, a stream may have any number of subscribers and
// sources, and a port that leaves the network loses its subscriptions.
// Anything else (an empty message, a bad name, a frame without a name) is
// invalid: it reaches nobody and counts as an error of its sender, as
// `ipn ls` shows.
//
// A program serves fanout networks by calling Register before it serves
// (see the fanout command in the parent directory), then creating a network
// with protocol Tag. Members join with ipn.Any (or Tag).
package fanout

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"syscall"

	"github.com/ipn-project/ipn/policy"
)

// Tag is the fanout policy's protocol number.
const Tag policy.Tag = 100

// Name is the name the fanout policy registers under.
const Name = "fanout"

// MaxName is the longest stream name, in bytes.
const MaxName = 64

// Register makes the fanout policy available under Tag and Name. It fails
// if either is taken (say, when called twice).
func Register() error { return policy.Register(Tag, Name, New) }

// Policy is the fanout policy of one network.
type Policy struct {
	policy.Base // FirstFree port numbers; no-op Resize

	net policy.Network

	mu      sync.RWMutex
	streams map[string]*policy.PortSet // subscribers by stream; no empty sets
	live    policy.PortSet             // connected ports (PostNewPort to DeletePort)
}

var _ policy.Policy = (*Policy)(nil)

// New returns the fanout policy of network net; it implements
// policy.Factory. Acknowledgments of subscriptions are emitted on net.
func New(net policy.Network) (policy.Policy, error) {
	return &Policy{net: net, streams: make(map[string]*policy.PortSet)}, nil
}

// ValidName reports whether name is a stream name: 1 to MaxName bytes of
// [A-Za-z0-9._-].
func ValidName(name []byte) bool {
	if len(name) == 0 || len(name) > MaxName {
		return false
	}
	for _, c := range name {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// Route implements policy.Policy.Route. A frame costs a read lock and a
// copy of its stream's subscriber set into out[i].Ports, whose storage the
// engine keeps from call to call: no allocation once warmed up.
func (p *Policy) Route(src int, msgs [][]byte, _ *policy.PortSet, out []policy.Delivery) {
	for i, m := range msgs {
		d := &out[i]
		if len(m) == 0 {
			d.Invalid = true
			continue
		}
		switch m[0] {
		case '+', '-':
			name := m[1:]
			if !ValidName(name) {
				d.Invalid = true
			} else if m[0] == '+' {
				p.subscribe(src, name)
			} else {
				p.unsubscribe(src, name)
			}
			// d.Ports stays empty: the request reaches no member.
		default:
			n := nameEnd(m)
			if n < 0 {
				d.Invalid = true
				continue
			}
			p.mu.RLock()
			// The compiler does not allocate for a []byte-to-string
			// conversion used as a map key.
			if subs := p.streams[string(m[:n])]; subs != nil {
				d.Ports.CopyFrom(*subs)
			}
			p.mu.RUnlock()
			d.Ports.Remove(src)
		}
	}
}

// nameEnd returns the length of the stream name that frame m starts with
// (the index of its ':'), or -1 if m is not a frame.
func nameEnd(m []byte) int {
	for i, c := range m {
		if c == ':' {
			if i == 0 || !ValidName(m[:i]) {
				return -1
			}
			return i
		}
		if i >= MaxName {
			return -1
		}
	}
	return -1
}

// subscribe adds port to stream name and acknowledges it to the port.
func (p *Policy) subscribe(port int, name []byte) {
	p.mu.Lock()
	// A port's last messages may still be routed while it leaves: once
	// DeletePort has run, a subscription would outlive the port and pass
	// to the next one given its number.
	if !p.live.Has(port) {
		p.mu.Unlock()
		return
	}
	subs := p.streams[string(name)]
	if subs == nil {
		subs = new(policy.PortSet)
		p.streams[string(name)] = subs
	}
	subs.Add(port)
	p.mu.Unlock()
	// Emit copies the message and never blocks; outside the lock all the
	// same. It fails only if the port is gone, when nobody is left to tell.
	var buf [len("subscribed ") + MaxName]byte
	p.net.Emit(port, append(append(buf[:0], "subscribed "...), name...))
}

// unsubscribe takes port out of stream name.
func (p *Policy) unsubscribe(port int, name []byte) {
	p.mu.Lock()
	if subs := p.streams[string(name)]; subs != nil {
		subs.Remove(port)
		if subs.Len() == 0 {
			delete(p.streams, string(name))
		}
	}
	p.mu.Unlock()
}

// PostNewPort implements policy.Policy.PostNewPort: port may subscribe.
func (p *Policy) PostNewPort(port int) {
	p.mu.Lock()
	p.live.Add(port)
	p.mu.Unlock()
}

// DeletePort implements policy.Policy.DeletePort: the port's subscriptions
// go with it.
func (p *Policy) DeletePort(port int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.live.Remove(port)
	for name, subs := range p.streams {
		subs.Remove(port)
		if subs.Len() == 0 {
			delete(p.streams, name)
		}
	}
}

// Close implements policy.Policy.Close.
func (p *Policy) Close() {
	p.mu.Lock()
	clear(p.streams)
	p.live.Clear()
	p.mu.Unlock()
}

// Option implements policy.Policy.Option. "streams" lists the streams
// that have subscribers, one "NAME COUNT" line each, sorted by name.
func (p *Policy) Option(name string) (string, error) {
	if name != "streams" {
		return "", fmt.Errorf("option %q: %w", name, syscall.ENOPROTOOPT)
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	var b strings.Builder
	for _, s := range slices.Sorted(maps.Keys(p.streams)) {
		fmt.Fprintf(&b, "%s %d\n", s, p.streams[s].Len())
	}
	return b.String(), nil
}

// Subscriptions returns the streams port is subscribed to, sorted.
func (p *Policy) Subscriptions(port int) []string {
	p.mu.RLock()
	defer p.mu.RUnlock()
	var names []string
	for name, subs := range p.streams {
		if subs.Has(port) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// DescribePort describes port for listings (ipn ls, where the daemon asks
// for it): the streams it is subscribed to.
func (p *Policy) DescribePort(port int) string {
	names := p.Subscriptions(port)
	if len(names) == 0 {
		return ""
	}
	return "streams " + strings.Join(names, ",")
}
