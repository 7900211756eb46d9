// Package hub is IPN's built-in broadcast policy (IPN_BROADCAST, also called
// hub): every message goes to every connected receiver but its sender.
package hub

import "github.com/ipn-project/ipn/policy"

// Name is the name the hub policy registers under.
const Name = "hub"

func init() {
	policy.MustRegister(policy.Broadcast, Name, New)
}

// Hub is the broadcast policy. It keeps no state.
type Hub struct {
	policy.Base
}

var _ policy.Policy = (*Hub)(nil)

// New returns a hub policy; it implements policy.Factory.
func New(policy.Network) (policy.Policy, error) { return &Hub{}, nil }

// Route implements policy.Policy.Route: all members but the sender.
func (*Hub) Route(src int, msgs [][]byte, members *policy.PortSet, out []policy.Delivery) {
	for i := range msgs {
		out[i].Ports.CopyFrom(*members)
		out[i].Ports.Remove(src)
	}
}
