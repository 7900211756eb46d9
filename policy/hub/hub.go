// Package hub is IPN's built-in broadcast policy (IPN_BROADCAST, also called
// hub): every message goes to every connected receiver but its sender.
//
// Loop protection: a hub joined to other networks by more than one link
// (cables, VDE clients) may close a loop. It probes for loops as the
// switch does (package loop): every loop.interval a probe goes out of each
// link port, and only those; when one comes back in on another link port,
// the higher numbered of the two is blocked until the loop is gone.
// Messages that look like probes (ethertype 0x88b5 to 03:49:50:4e:00:01)
// are the hub's to handle and reach no ordinary member.
package hub

import (
	"fmt"
	"syscall"
	"time"

	"github.com/ipn-project/ipn/policy"
	"github.com/ipn-project/ipn/policy/loop"
)

// Name is the name the hub policy registers under.
const Name = "hub"

func init() {
	policy.MustRegister(policy.Broadcast, Name, New)
}

// Hub is the broadcast policy. Its only state is its loop protection.
type Hub struct {
	policy.Base
	loop *loop.Detector
}

var (
	_ policy.Policy        = (*Hub)(nil)
	_ policy.LinkPorter    = (*Hub)(nil)
	_ policy.PortDescriber = (*Hub)(nil)
)

// New returns a hub policy; it implements policy.Factory.
func New(net policy.Network) (policy.Policy, error) { return newHub(net, nil), nil }

func newHub(net policy.Network, now func() time.Time) *Hub {
	return &Hub{loop: loop.New(net, now)}
}

// Route implements policy.Policy.Route: all members but the sender, and
// none of the blocked ports; nothing from a blocked port.
func (h *Hub) Route(src int, msgs [][]byte, members *policy.PortSet, out []policy.Delivery) {
	blocked := h.loop.Blocked()
	for i, m := range msgs {
		if loop.IsProbe(m) {
			h.loop.Route(src, m, members, &out[i])
			continue
		}
		if blocked.Has(src) {
			continue
		}
		out[i].Ports.CopyFrom(*members)
		out[i].Ports.Remove(src)
		for p := blocked.Next(0); p >= 0; p = blocked.Next(p + 1) {
			out[i].Ports.Remove(p)
		}
	}
}

// LinkPort implements policy.LinkPorter: probes go out of port.
func (h *Hub) LinkPort(port int) { h.loop.LinkPort(port) }

// DeletePort implements policy.Policy.DeletePort: the port's block goes.
func (h *Hub) DeletePort(port int) { h.loop.DeletePort(port) }

// Close implements policy.Policy.Close: it stops the prober.
func (h *Hub) Close() { h.loop.Close() }

// DescribePort implements policy.PortDescriber: a blocked port says so.
func (h *Hub) DescribePort(port int) string {
	if h.loop.Blocked().Has(port) {
		return "BLOCKED(loop)"
	}
	return ""
}

// SetOption implements policy.Policy.SetOption. The hub's one setting:
//
//	loop.interval DUR     probe interval, 10ms..1h (2s by default); 0 turns loop protection off
//
// A value out of range, or not a duration, is refused with an error that
// wraps EINVAL.
func (h *Hub) SetOption(name, value string) error {
	switch name {
	case "loop.blocked":
		return fmt.Errorf("hub option %q is read only: %w", name, syscall.EINVAL)
	case "loop.interval":
	default:
		return fmt.Errorf("hub option %q: want loop.interval: %w", name, syscall.ENOPROTOOPT)
	}
	d, err := loop.ParseInterval(value)
	if err != nil {
		return fmt.Errorf("hub option %w", err)
	}
	return h.loop.SetInterval(d)
}

// Option implements policy.Policy.Option: "loop.interval", and
// "loop.blocked", the blocked ports as a JSON list.
func (h *Hub) Option(name string) (string, error) {
	switch name {
	case "loop.interval":
		return h.loop.Interval().String(), nil
	case "loop.blocked":
		return h.loop.BlockedJSON(), nil
	}
	return "", fmt.Errorf("hub option %q: want one of loop.interval, loop.blocked: %w", name, syscall.ENOPROTOOPT)
}
