package engine_test

import (
	"slices"
	"sync"
	"testing"

	"github.com/ipn-project/ipn/engine"
	"github.com/ipn-project/ipn/policy"
)

// linkRecorder is a hub that records the ports the engine says are links.
type linkRecorder struct {
	policy.Base
	mu    sync.Mutex
	links []int
}

func (l *linkRecorder) LinkPort(p int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.links = append(l.links, p)
}

func (*linkRecorder) Route(src int, msgs [][]byte, members *policy.PortSet, out []policy.Delivery) {
	for i := range msgs {
		out[i].Ports.CopyFrom(*members)
		out[i].Ports.Remove(src)
	}
}

const linkTag policy.Tag = 203

func init() {
	policy.MustRegister(linkTag, "test-link", func(policy.Network) (policy.Policy, error) { return &linkRecorder{}, nil })
}

// A port that joins as a link is named to the policy at join, after
// PostNewPort; other ports are not.
func TestLinkPortsReachPolicy(t *testing.T) {
	_, n := create(t, engine.Config{Proto: linkTag})
	join(t, n, engine.PortOptions{})
	link := join(t, n, engine.PortOptions{Link: true})
	join(t, n, engine.PortOptions{})
	if !link.port.Options().Link {
		t.Fatal("port options lost Link")
	}
	l := n.Policy().(*linkRecorder)
	l.mu.Lock()
	defer l.mu.Unlock()
	if want := []int{link.port.Num()}; !slices.Equal(l.links, want) {
		t.Fatalf("links %v, want %v", l.links, want)
	}
}
