// Package engine holds IPN networks: their ports, queues, permissions-free
// membership, lossy and lossless delivery, out-of-band notices and counters.
//
// The engine knows nothing of sockets or files. A port is an
// endpoint.Endpoint; the engine runs one goroutine reading from it and one
// writing to it, and asks the network's policy where each message goes.
// A message is read once into a pooled buffer and shared by reference among
// its receivers.
//
// Lock order: Engine.mu before Network.mu; queue locks are leaves.
package engine

import (
	"fmt"
	"sync"
	"syscall"

	"github.com/ipn-project/ipn/internal/spec"
	"github.com/ipn-project/ipn/policy"
)

// Flags are a network's IPN flags.
type Flags = spec.Flags

// The network flags of IPN (see spec).
const (
	Lossless = spec.Lossless
	Excl     = spec.Excl
	FlexMTU  = spec.FlexMTU
)

// Defaults of a new network.
const (
	DefaultMTU      = spec.DefaultMTU
	DefaultNumPorts = spec.DefaultPorts
	DefaultPoolSize = spec.DefaultPoolSize
)

// Config is what a network is made with.
type Config struct {
	Name     string     // shown in listings; the daemon uses the file's path
	Proto    policy.Tag // delivery policy; Any means Broadcast (the hub)
	MTU      int        // largest message, bytes
	NumPorts int        // number of ports
	PoolSize int        // lossy: queue per receiver; lossless: messages in flight
	Flags    Flags
	// OnDelete, if set, runs once after the network is deleted.
	OnDelete func() `json:"-"`
	// Data is the creator's, kept with the network (the daemon keeps the
	// network's file there); the engine does not look at it.
	Data any `json:"-"`
}

// WithDefaults returns c with zero fields set to the defaults, checked
// (CheckMTU, CheckNumPorts, CheckPoolSize, CheckFlags).
func (c Config) WithDefaults() (Config, error) {
	if c.Proto == policy.Any {
		c.Proto = policy.Broadcast
	}
	if c.MTU == 0 {
		c.MTU = DefaultMTU
	}
	if c.NumPorts == 0 {
		c.NumPorts = DefaultNumPorts
	}
	if c.PoolSize == 0 {
		c.PoolSize = DefaultPoolSize
	}
	for _, err := range []error{CheckMTU(c.MTU), CheckNumPorts(c.NumPorts), CheckPoolSize(c.PoolSize), CheckFlags(c.Flags)} {
		if err != nil {
			return c, err
		}
	}
	return c, nil
}

// The checks below are the engine's, for a network's parameters and a
// port's options: a caller that takes them one by one (the daemon, at each
// setsockopt) reports the same error as the engine would later.

// CheckMTU checks a network's MTU, in bytes.
func CheckMTU(mtu int) error {
	if mtu < 1 || mtu > MaxMTU {
		return fmt.Errorf("mtu %d: want 1..%d bytes: %w", mtu, MaxMTU, syscall.EINVAL)
	}
	return nil
}

// CheckNumPorts checks a network's number of ports.
func CheckNumPorts(num int) error {
	if num < 1 || num > MaxPorts {
		return fmt.Errorf("ports %d: want 1..%d: %w", num, MaxPorts, syscall.EINVAL)
	}
	return nil
}

// CheckPoolSize checks a network's message pool size.
func CheckPoolSize(size int) error {
	if size < 1 || size > MaxPoolSize {
		return fmt.Errorf("pool size %d: want 1..%d: %w", size, MaxPoolSize, syscall.EINVAL)
	}
	return nil
}

// CheckFlags checks a network's flags.
func CheckFlags(f Flags) error {
	if f&^spec.AllFlags != 0 {
		return fmt.Errorf("flags %#x: want lossless (%#x), excl (%#x), flexmtu (%#x) or their sum: %w",
			uint32(f), Lossless, Excl, FlexMTU, syscall.EINVAL)
	}
	return nil
}

// Limits of a network's parameters.
const (
	MaxPorts    = spec.MaxPorts
	MaxPoolSize = spec.MaxPoolSize
)

// Engine is a set of networks, each known by a key chosen by the caller.
type Engine struct {
	mu     sync.Mutex
	nets   map[any]*Network // guarded by mu
	closed bool             // guarded by mu
	frozen bool             // guarded by mu: see Freeze
}

// New returns an empty engine.
func New() *Engine {
	return &Engine{nets: make(map[any]*Network)}
}

// Create makes a network under key and returns it holding one reference,
// which the caller gives back with Release. It fails with EEXIST if a network
// has that key, EPROTONOSUPPORT if the policy is unknown.
func (e *Engine) Create(key any, cfg Config) (*Network, error) {
	cfg, err := cfg.WithDefaults()
	if err != nil {
		return nil, err
	}
	factory, _, ok := policy.Lookup(cfg.Proto)
	if !ok {
		return nil, fmt.Errorf("policy %d: %w", cfg.Proto, syscall.EPROTONOSUPPORT)
	}
	n := &Network{engine: e, key: key, cfg: cfg, refs: 1}
	n.ports = make([]*Port, cfg.NumPorts)
	n.publish()
	if cfg.Flags&Lossless != 0 {
		n.tokens = make(chan struct{}, cfg.PoolSize)
	}
	if b := BigBudget(cfg.MTU); b > 0 {
		n.big = newBudget(b)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, fmt.Errorf("engine closed: %w", syscall.ESHUTDOWN)
	}
	if e.frozen {
		return nil, fmt.Errorf("the daemon is handing over to another: %w", syscall.EAGAIN)
	}
	if _, ok := e.nets[key]; ok {
		return nil, syscall.EEXIST
	}
	// The factory runs under e.mu so that no one can see the network
	// before its policy exists; factories must not call back the engine.
	pol, err := factory(n)
	if err != nil {
		return nil, fmt.Errorf("policy %s: %w", cfg.Proto, err)
	}
	n.policy = pol
	e.nets[key] = n
	return n, nil
}

// Acquire returns the live network under key with one more reference, or
// ECONNREFUSED.
func (e *Engine) Acquire(key any) (*Network, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	n, ok := e.nets[key]
	if !ok {
		return nil, syscall.ECONNREFUSED
	}
	n.refs++
	return n, nil
}

// Live reports whether a network lives under key.
func (e *Engine) Live(key any) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	_, ok := e.nets[key]
	return ok
}

// Networks returns the live networks.
func (e *Engine) Networks() []*Network {
	e.mu.Lock()
	defer e.mu.Unlock()
	nets := make([]*Network, 0, len(e.nets))
	for _, n := range e.nets {
		nets = append(nets, n)
	}
	return nets
}

// Close refuses new networks and closes every port of every network, waiting
// for their goroutines. Networks go away as their holders release them.
func (e *Engine) Close() {
	e.mu.Lock()
	e.closed = true
	nets := make([]*Network, 0, len(e.nets))
	for _, n := range e.nets {
		nets = append(nets, n)
	}
	e.mu.Unlock()
	for _, n := range nets {
		for _, p := range n.Ports() {
			p.Close()
		}
	}
}
