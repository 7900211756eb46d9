// Package policy defines how an IPN network decides where a message goes.
//
// A Policy is the Go form of an IPN protocol (the kernel module's protocol
// table): the engine calls its hooks when a network is made, resized and
// deleted, when a port joins and leaves, and for every batch of messages a
// port sends. A policy does no I/O: Route maps a source port and a batch of
// messages to one destination set per message, and the engine delivers.
//
// Built-in policies register themselves from their package's init; a program
// registers its own with Register before it serves a network.
package policy

import (
	"fmt"
	"sort"
	"sync"
	"syscall"

	"github.com/ipn-project/ipn/internal/spec"
)

// Tag identifies a delivery policy; it is the IPN protocol number.
type Tag = spec.Tag

// The protocol tags of IPN. Any means "whatever the network uses".
const (
	Any         = spec.Any
	Broadcast   = spec.Broadcast
	Hub         = spec.Hub
	VDESwitch   = spec.VDESwitch
	VDESwitchL3 = spec.VDESwitchL3
)

// Network is the engine's side of a network, as a policy sees it.
type Network interface {
	// NumPorts returns the number of ports, used or not.
	NumPorts() int
	// Emit delivers msg to port as a message from the network itself
	// (welcome and goodbye messages). It copies msg and may be called from
	// any hook. It reports an error if the port is not connected.
	Emit(port int, msg []byte) error
}

// Policy is one network's delivery policy.
//
// Membership hooks (NewPort, PostNewPort, PreDeletePort, DeletePort, Resize,
// SetOption, Option, Close) are never called concurrently with each other.
// Route may be called concurrently from several ports and with the
// membership hooks, so a policy with state guards it itself.
type Policy interface {
	// NewPort picks the port number for a joining node. want is the number
	// the node asked for, or -1; used holds the ports taken. It returns
	// EADDRNOTAVAIL (or another error) to refuse the node.
	NewPort(want int, used *PortSet, numPorts int) (int, error)
	// PostNewPort is called once the node is connected at port.
	PostNewPort(port int)
	// PreDeletePort is called while the node at port is still connected,
	// just before it leaves.
	PreDeletePort(port int)
	// DeletePort is called after the node at port left.
	DeletePort(port int)
	// Resize is called when a manager changes the number of ports; an error
	// refuses the change.
	Resize(numPorts int) error
	// Route decides where msgs[i], sent by port src, goes, in out[i]
	// (which arrives empty). members holds the connected ports that
	// receive; the engine delivers only to those. Route must not keep
	// msgs or write to them.
	Route(src int, msgs [][]byte, members *PortSet, out []Delivery)
	// SetOption sets a policy-specific option.
	SetOption(name, value string) error
	// Option reads a policy-specific option.
	Option(name string) (string, error)
	// Close is called once when the network is deleted.
	Close()
}

// Delivery is where one message goes, as Route decides.
type Delivery struct {
	// Ports get the message as it was sent.
	Ports PortSet
	// Alt, if not nil, is a second form of the message (say, with an
	// 802.1Q tag added or removed) that AltPorts get instead. The engine
	// copies it before Route returns; it may be the policy's scratch.
	Alt      []byte
	AltPorts PortSet
	// Invalid marks a message the policy refuses (too short, malformed);
	// the engine counts it as an error of the sending port.
	Invalid bool
	// scratch is storage kept with this Delivery across calls; see Buffer.
	scratch []byte
}

// Buffer returns n bytes of storage kept with d, to build Alt in. Alt must
// stay valid until Route is next called for the same source port (the
// engine copies it after Route returns); a Buffer does.
func (d *Delivery) Buffer(n int) []byte {
	if cap(d.scratch) < n {
		d.scratch = make([]byte, n)
	}
	return d.scratch[:n]
}

// PortDescriber is implemented by policies that describe a port's state
// (VLAN, learnt addresses) for listings; it is called like the membership
// hooks, never concurrently with them.
type PortDescriber interface {
	DescribePort(port int) string
}

// PortsDescriber is implemented by policies that describe many ports at
// less cost than one at a time (one pass over a table for a listing):
// DescribePorts returns the description of each of ports, in order. It is
// called as DescribePort is.
type PortsDescriber interface {
	DescribePorts(ports []int) []string
}

// LinkPorter is implemented by policies that treat links to other networks
// (cables, VDE clients) apart from other members, as loop protection does:
// LinkPort is called, like the membership hooks, right after PostNewPort
// for a port that joined as a link. It stays one until DeletePort.
type LinkPorter interface {
	LinkPort(port int)
}

// MaxListed is how many addresses a port's description lists at most; the
// others are counted.
const MaxListed = 16

// Reset empties d for reuse, keeping its storage.
func (d *Delivery) Reset() {
	d.Ports.Clear()
	d.AltPorts.Clear()
	d.Alt = nil
	d.Invalid = false
}

// Factory makes the policy of a new network.
type Factory func(net Network) (Policy, error)

type entry struct {
	tag     Tag
	name    string
	factory Factory
}

var registry struct {
	sync.RWMutex
	byTag  map[Tag]entry
	byName map[string]Tag
}

// Register makes a policy available under tag and name. It fails if either
// is taken or tag is Any.
func Register(tag Tag, name string, f Factory) error {
	if tag == Any || name == "" || f == nil {
		return fmt.Errorf("register policy %d %q: %w", tag, name, syscall.EINVAL)
	}
	registry.Lock()
	defer registry.Unlock()
	if registry.byTag == nil {
		registry.byTag = make(map[Tag]entry)
		registry.byName = make(map[string]Tag)
	}
	if _, ok := registry.byTag[tag]; ok {
		return fmt.Errorf("register policy %d %q: tag in use: %w", tag, name, syscall.EEXIST)
	}
	if _, ok := registry.byName[name]; ok {
		return fmt.Errorf("register policy %d %q: name in use: %w", tag, name, syscall.EEXIST)
	}
	if err := spec.RegisterName(tag, name); err != nil {
		return fmt.Errorf("register policy: %w", err)
	}
	registry.byTag[tag] = entry{tag, name, f}
	registry.byName[name] = tag
	return nil
}

// MustRegister is Register for a package's init: it panics on error.
func MustRegister(tag Tag, name string, f Factory) {
	if err := Register(tag, name, f); err != nil {
		panic(err)
	}
}

// Lookup returns the factory and name registered for tag.
func Lookup(tag Tag) (Factory, string, bool) {
	registry.RLock()
	defer registry.RUnlock()
	e, ok := registry.byTag[tag]
	return e.factory, e.name, ok
}

// TagOf returns the tag registered under name.
func TagOf(name string) (Tag, bool) {
	registry.RLock()
	defer registry.RUnlock()
	t, ok := registry.byName[name]
	return t, ok
}

// Names returns the registered policy names, sorted.
func Names() []string {
	registry.RLock()
	defer registry.RUnlock()
	names := make([]string, 0, len(registry.byName))
	for n := range registry.byName {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// FirstFree implements the usual NewPort: want if it is free and in range,
// else the lowest free port; EADDRNOTAVAIL when there is none or want is
// taken or out of range, with a text that says which.
func FirstFree(want int, used *PortSet, numPorts int) (int, error) {
	if want >= 0 {
		switch {
		case want >= numPorts:
			return 0, fmt.Errorf("port %d: the network has ports 0..%d: %w", want, numPorts-1, syscall.EADDRNOTAVAIL)
		case used.Has(want):
			return 0, fmt.Errorf("port %d is taken: %w", want, syscall.EADDRNOTAVAIL)
		}
		return want, nil
	}
	for p := 0; p < numPorts; p++ {
		if !used.Has(p) {
			return p, nil
		}
	}
	return 0, fmt.Errorf("the network is full: all %d ports are in use: %w", numPorts, syscall.EADDRNOTAVAIL)
}

// Sizer is implemented by a policy whose state its settings bound (a MAC
// table of hashsize entries, say): Size returns the most bytes that state
// may take, which the daemon charges to the network's maker.
type Sizer interface {
	Size() int64
}

// Tabler is implemented by a policy that learns addresses into tables (a
// switch's MAC table): Tables returns each table's live entries and bound,
// for metrics. It may take the policy's lock; it must not call the network.
type Tabler interface {
	Tables() []Table
}

// Table is the size of one of a policy's tables of learnt addresses.
type Table struct {
	Name    string // "mac", "ip"
	Entries int    // entries that have not expired
	Max     int    // the most the table holds (hashsize)
}

// Base gives a policy no-op membership hooks and FirstFree port numbering;
// embed it and implement Route.
type Base struct{}

// NewPort implements Policy.NewPort with FirstFree.
func (Base) NewPort(want int, used *PortSet, numPorts int) (int, error) {
	return FirstFree(want, used, numPorts)
}

// PostNewPort implements Policy.PostNewPort; it does nothing.
func (Base) PostNewPort(int) {}

// PreDeletePort implements Policy.PreDeletePort; it does nothing.
func (Base) PreDeletePort(int) {}

// DeletePort implements Policy.DeletePort; it does nothing.
func (Base) DeletePort(int) {}

// Resize implements Policy.Resize; it accepts any size.
func (Base) Resize(int) error { return nil }

// SetOption implements Policy.SetOption; there are no options.
func (Base) SetOption(name, _ string) error {
	return fmt.Errorf("option %q: the policy has no options: %w", name, syscall.ENOPROTOOPT)
}

// Option implements Policy.Option; there are no options.
func (Base) Option(name string) (string, error) {
	return "", fmt.Errorf("option %q: the policy has no options: %w", name, syscall.ENOPROTOOPT)
}

// Close implements Policy.Close; it does nothing.
func (Base) Close() {}

// Saver is implemented by policies whose state (learnt addresses, VLANs,
// settings) can pass to another daemon in a takeover. Both methods run
// under the network's lock, with the ports already there (Restore runs
// after the restored ports have joined).
type Saver interface {
	// Save returns the policy's state.
	Save() ([]byte, error)
	// Restore sets the state Save returned, maybe in another process.
	Restore(state []byte) error
}
