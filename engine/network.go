package engine

import (
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/ipn-project/ipn/endpoint"
	"github.com/ipn-project/ipn/internal/spec"
	"github.com/ipn-project/ipn/policy"
)

// Network is one IPN network: ports, a policy, and its delivery state.
type Network struct {
	engine *Engine
	key    any
	cfg    Config
	policy policy.Policy
	// tokens holds one slot per lossless message in flight; nil when lossy.
	tokens chan struct{}
	// big is the room for big messages (big.go); nil if the MTU has none.
	big *budget

	refs int // guarded by engine.mu

	// mu serializes membership changes and the policy's hooks.
	mu      sync.Mutex
	ports   []*Port // guarded by mu; index is the port number
	readers int     // guarded by mu
	writers int     // guarded by mu
	deleted bool    // guarded by mu

	// view is an immutable snapshot of the members, read without locks
	// on the data path and replaced under mu.
	view atomic.Pointer[view]
	// frozen is set while the engine is frozen for a hand-over: the
	// policy's own messages are dropped and no port joins.
	frozen atomic.Bool
}

type view struct {
	ports   []*Port
	readers policy.PortSet // connected ports whose receive side is open
	// members is readers without the monitors: what the policy routes
	// among. It is readers itself when no monitor receives.
	members policy.PortSet
	// monitors holds the monitor ports that receive; hasMonitors says
	// whether it has any, the data path's one check per batch.
	monitors    policy.PortSet
	hasMonitors bool
	// fan is the fan-out that the receiving ports of fanPorts read
	// (lossy networks whose members read a shared log): a message for
	// all of them but its sender is put into it once, not given to each.
	fan      endpoint.FanOut
	fanPorts policy.PortSet
	fanOne   int // the one port of fanPorts, if it has one alone; else -1
}

var _ policy.Network = (*Network)(nil)

// Config returns the parameters the network was made with, with NumPorts
// kept current.
func (n *Network) Config() Config {
	n.mu.Lock()
	defer n.mu.Unlock()
	c := n.cfg
	c.NumPorts = len(n.ports)
	return c
}

// Key returns the key the network was created under.
func (n *Network) Key() any { return n.key }

// Name returns the network's display name.
func (n *Network) Name() string { return n.cfg.Name }

// Policy returns the network's policy.
func (n *Network) Policy() policy.Policy { return n.policy }

// NumPorts implements policy.Network.NumPorts.
func (n *Network) NumPorts() int { return len(n.view.Load().ports) }

// Emit implements policy.Network.Emit. A port whose receive side is shut
// down takes nothing: the message is dropped, as a delivery would be.
func (n *Network) Emit(port int, b []byte) error {
	v := n.view.Load()
	if port < 0 || port >= len(v.ports) || v.ports[port] == nil {
		return syscall.ENOTCONN
	}
	if !v.readers.Has(port) || n.frozen.Load() {
		return nil
	}
	m := newMsgCopy(b)
	if !v.ports[port].q.push(m) {
		m.decRef()
		return syscall.ENOBUFS
	}
	return nil
}

// Release gives back a reference taken by Create or Acquire. The network is
// deleted when its last reference goes.
func (n *Network) Release() {
	e := n.engine
	e.mu.Lock()
	n.refs--
	last := n.refs == 0
	if last {
		delete(e.nets, n.key)
	}
	e.mu.Unlock()
	if !last {
		return
	}
	n.mu.Lock()
	n.deleted = true
	n.policy.Close()
	n.mu.Unlock()
	if n.cfg.OnDelete != nil {
		n.cfg.OnDelete()
	}
}

// Ports returns the connected ports.
func (n *Network) Ports() []*Port {
	var ps []*Port
	for _, p := range n.view.Load().ports {
		if p != nil {
			ps = append(ps, p)
		}
	}
	return ps
}

// Counts returns the number of nodes that receive and that send.
func (n *Network) Counts() (readers, writers int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.readers, n.writers
}

// publish replaces the data path's view. Caller must hold n.mu (or own n
// exclusively).
func (n *Network) publish() {
	v := &view{ports: append([]*Port(nil), n.ports...), readers: policy.NewPortSet(len(n.ports))}
	for i, p := range n.ports {
		if p != nil && p.canRead.Load() {
			v.readers.Add(i)
			if p.opts.Monitor {
				v.monitors.Add(i)
				v.hasMonitors = true
			} else if p.fan != nil && (v.fan == nil || v.fan == p.fan) {
				v.fan = p.fan
				v.fanPorts.Add(i)
			}
		}
	}
	v.fanOne = -1
	if v.fanPorts.Len() == 1 {
		v.fanOne = v.fanPorts.Next(0)
	}
	v.members = v.readers
	if v.hasMonitors {
		v.members = policy.NewPortSet(len(n.ports))
		v.members.CopyFrom(v.readers)
		for i := v.monitors.Next(0); i >= 0; i = v.monitors.Next(i + 1) {
			v.members.Remove(i)
		}
	}
	n.view.Store(v)
}

// PortOptions are a joining node's per-port options.
type PortOptions struct {
	Want        int    // port number wanted, or -1 for any
	Description string // at most MaxDescription bytes
	Peer        string // who is behind the port, for listings
	NoRead      bool   // receive side shut down
	NoWrite     bool   // send side shut down
	// WantNumNodes asks for an out-of-band notice whenever the number of
	// readers or writers changes.
	WantNumNodes bool
	// HandleOOB accepts out-of-band messages sent by other nodes.
	HandleOOB bool
	// Link marks a link to another network (a cable, a VDE client), which
	// a policy may treat apart (policy.LinkPorter): loop probes go there.
	Link bool
	// Monitor makes a receive-only port (NoWrite must be set) that gets a
	// copy of every message the other nodes send, whatever the policy
	// routes it to, once and as sent (see Port.mirror); the policy does not
	// see it among the members it routes to. It is
	// always lossy: a full queue drops (counted), even in a lossless
	// network, so that a monitor never makes senders wait.
	Monitor bool
	// OnLeave, if set, runs once when the port has left the network (not
	// when Join fails); it must not block.
	OnLeave func() `json:"-"`
}

// QueueLen is how many messages a port of a network of cfg may hold
// queued, and as many out-of-band ones besides.
func QueueLen(cfg Config) int { return queueLen(cfg) }

// queueLen is the capacity of a port's queue: the pool size, or in a
// lossless network room for every message in flight in both its forms, so
// that lossless delivery never finds a queue full.
func queueLen(cfg Config) int {
	if cfg.Flags&Lossless != 0 {
		return 2 * cfg.PoolSize
	}
	return cfg.PoolSize
}

// MaxDescription is the longest port description, in bytes.
const MaxDescription = spec.MaxDescription

// CheckDescription checks the length, in bytes, of a port's description.
func CheckDescription(size int) error {
	if size > MaxDescription {
		return fmt.Errorf("description of %d bytes: want at most %d: %w", size, MaxDescription, syscall.EINVAL)
	}
	return nil
}

// CheckWant checks a wanted port number (PortOptions.Want): a port any
// network may have, or -1 for any free one. The policy decides whether the
// network has it free.
func CheckWant(want int) error {
	if want < -1 || want >= MaxPorts {
		return fmt.Errorf("port %d: want 0..%d, or -1 for any free port: %w", want, MaxPorts-1, syscall.EINVAL)
	}
	return nil
}

// Join connects ep to the network as a new port, taking a reference on the
// network, and starts the port's goroutines. The port owns ep from then on.
func (n *Network) Join(ep endpoint.Endpoint, opts PortOptions) (*Port, error) {
	p, err := n.attach(ep, opts, false)
	if err != nil {
		return nil, err
	}
	p.start(false)
	return p, nil
}

// start starts the port's goroutines: only the writer if the node sends
// no more (readDone).
func (p *Port) start(readDone bool) {
	if readDone {
		close(p.readDone)
		close(p.pause.rOut)
		p.wg.Add(1)
		p.running.Store(1)
		go p.writeLoop()
		return
	}
	p.wg.Add(2)
	p.running.Store(2)
	go p.readLoop()
	go p.writeLoop()
}

// attach makes ep a port of the network, with no goroutines yet; quiet
// sends no numnodes notice (a restore's ports were there all along).
func (n *Network) attach(ep endpoint.Endpoint, opts PortOptions, quiet bool) (*Port, error) {
	if err := CheckDescription(len(opts.Description)); err != nil {
		return nil, err
	}
	if opts.Monitor && !opts.NoWrite {
		return nil, fmt.Errorf("a monitor port is receive-only: shut its send side: %w", syscall.EINVAL)
	}
	e := n.engine
	e.mu.Lock()
	if n.refs == 0 {
		e.mu.Unlock()
		return nil, syscall.ECONNREFUSED
	}
	n.refs++
	e.mu.Unlock()

	p := &Port{
		net:      n,
		ep:       ep,
		opts:     opts,
		q:        newQueue(queueLen(n.cfg)),
		done:     make(chan struct{}),
		readDone: make(chan struct{}),
		class:    classFor(min(n.cfg.MTU, BigMin)),
	}
	p.oobw, _ = ep.(endpoint.OOBWriter)
	p.dw, _ = ep.(endpoint.DirectWriter)
	p.tw, _ = ep.(endpoint.TryDirectWriter)
	if fr, ok := ep.(endpoint.FanOutReader); ok && fr.FanOut() != nil {
		p.fr, p.fan = fr, fr.FanOut()
	}
	if o, ok := ep.(endpoint.Offloader); ok && o.Offloads() {
		p.off = o
		p.class = len(classSizes) - 1 // a super-frame's (vnet.MaxFrame)
		p.superLeft.Store(MaxSuperFrames)
		if p.dw != nil {
			p.dwo, _ = ep.(endpoint.DirectOffloader)
		}
		if p.dwo != nil {
			p.dbw, _ = ep.(endpoint.DirectBatchWriter)
		}
	}
	p.canRead.Store(!opts.NoRead)
	p.canWrite.Store(!opts.NoWrite)
	p.pause.reset()

	n.mu.Lock()
	if n.frozen.Load() { // under mu: Freeze takes the ports under it
		n.mu.Unlock()
		n.Release()
		return nil, fmt.Errorf("the daemon is handing over to another: %w", syscall.EAGAIN)
	}
	used := policy.NewPortSet(len(n.ports))
	for i, q := range n.ports {
		if q != nil {
			used.Add(i)
		}
	}
	num, err := n.policy.NewPort(opts.Want, &used, len(n.ports))
	if err == nil && (num < 0 || num >= len(n.ports) || n.ports[num] != nil) {
		err = fmt.Errorf("policy chose port %d: %w", num, syscall.EADDRNOTAVAIL)
	}
	if err != nil {
		n.mu.Unlock()
		n.Release()
		return nil, err
	}
	p.num = num
	n.ports[num] = p
	n.countLocked(p, 1)
	n.publish()
	n.policy.PostNewPort(num)
	if lp, ok := n.policy.(policy.LinkPorter); ok && opts.Link {
		lp.LinkPort(num)
	}
	if !quiet {
		n.notifyCountsLocked()
	}
	n.mu.Unlock()
	return p, nil
}

// countLocked adds sign to the reader and writer counts for p's open sides.
// Caller must hold n.mu.
func (n *Network) countLocked(p *Port, sign int) {
	if p.canRead.Load() {
		n.readers += sign
	}
	if p.canWrite.Load() {
		n.writers += sign
	}
}

// NumNodesNotice is the length of an out-of-band numnodes notice: level,
// tag, readers, writers, each a little-endian int32.
const NumNodesNotice = 16

// notifyCountsLocked sends the numnodes notice to every port that asked.
// Caller must hold n.mu.
func (n *Network) notifyCountsLocked() {
	var b [NumNodesNotice]byte
	binary.LittleEndian.PutUint32(b[8:], uint32(n.readers))
	binary.LittleEndian.PutUint32(b[12:], uint32(n.writers))
	for _, p := range n.ports {
		if p != nil && p.opts.WantNumNodes && p.canRead.Load() {
			m := newMsgCopy(b[:])
			m.oob = true
			if !p.q.pushOOB(m) {
				m.decRef()
				p.drops.Add(1)
			}
		}
	}
}

// SetPolicyOption sets an option of the network's policy, serialized with
// the policy's membership hooks.
func (n *Network) SetPolicyOption(name, value string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.policy.SetOption(name, value)
}

// PolicyOption reads an option of the network's policy.
func (n *Network) PolicyOption(name string) (string, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.policy.Option(name)
}

// DescribePort returns the policy's description of port (its VLAN, learnt
// addresses...), or "" if the policy has none.
func (n *Network) DescribePort(port int) string {
	d, ok := n.policy.(policy.PortDescriber)
	if !ok {
		return ""
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return d.DescribePort(port)
}

// DescribePorts returns the policy's description of each of ports, in one
// call when the policy can (policy.PortsDescriber).
func (n *Network) DescribePorts(ports []int) []string {
	out := make([]string, len(ports))
	switch d := n.policy.(type) {
	case policy.PortsDescriber:
		n.mu.Lock()
		defer n.mu.Unlock()
		copy(out, d.DescribePorts(ports))
	case policy.PortDescriber:
		n.mu.Lock()
		defer n.mu.Unlock()
		for i, p := range ports {
			out[i] = d.DescribePort(p)
		}
	}
	return out
}

// ChangeNumPorts sets the number of ports. Shrinking fails with EADDRINUSE
// if a port that would go is in use.
func (n *Network) ChangeNumPorts(num int) error {
	if err := CheckNumPorts(num); err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	for i := num; i < len(n.ports); i++ {
		if n.ports[i] != nil {
			return fmt.Errorf("port %d in use: %w", i, syscall.EADDRINUSE)
		}
	}
	if err := n.policy.Resize(num); err != nil {
		return err
	}
	if num <= len(n.ports) {
		n.ports = n.ports[:num:num]
	} else {
		n.ports = append(n.ports, make([]*Port, num-len(n.ports))...)
	}
	n.publish()
	return nil
}

// deliver hands m to every port in dst that still receives, taking one
// reference per receiver, and drops the caller's reference. Receivers whose
// queue is full miss the message (lossy) and count a drop. If ib is not
// nil, DirectBatchWriters get m in ib, for the sender to write when its
// batch is routed.
func (n *Network) deliver(m *msg, dst *policy.PortSet, v *view, ib *inlineBatch) {
	dst.Intersect(v.readers)
	if v.fan != nil && ib != nil && !m.oob {
		ib.fanOut(m, dst, v)
	}
	count := dst.Len()
	if count == 0 {
		m.decRef()
		return
	}
	m.refs.Add(int32(count))
	for p := dst.Next(0); p >= 0; p = dst.Next(p + 1) {
		port := v.ports[p]
		var ok bool
		switch {
		case m.oob:
			ok = port.q.pushOOB(m)
			if !ok {
				port.drops.Add(1)
			}
		case m.isBig() && (ib == nil || !ib.has(port)):
			// A big message goes to the port's writer, which may wait
			// for room: never inline; in a lossy network, one at a time
			// a port (big.go).
			if n.tokens == nil && !port.bigHeld.CompareAndSwap(0, 1) {
				port.drops.Add(1)
			} else if ok = port.q.push(m); !ok {
				port.drops.Add(1)
				if n.tokens == nil {
					port.bigHeld.Store(0)
				}
			}
		case ib != nil && port.dbw != nil && !m.oob && (port.q.idle() || ib.has(port)):
			ib.add(port, m) // keeps the reference until flush
			ok = true
		case port.dwo != nil && port.q.idle():
			// Inline with its header, as for port.dw below.
			port.writeDirectOffload(m.bytes(), m.vh)
			ok = false
		case ib != nil && !m.vh.Plain() && !m.vh.GSO() && port.dwo == nil && port.dw != nil &&
			(n.tokens == nil || port.tw == nil) && port.q.idle():
			// A checksum to finish: inline, finished once for every
			// such receiver (lossless ones wait for room in their
			// writer). A super-frame goes to the port's writer, which
			// writes its segments in one batch.
			segs, err := ib.cut(m)
			if err != nil {
				port.errs.Add(1)
			}
			for _, seg := range segs {
				port.writeDirect(seg)
			}
			ok = false
		case !m.vh.Plain():
			// A super-frame, or a checksum to finish: the port's writer
			// cuts it (writeSegmented), or gives it its header.
			if ok = port.q.push(m); !ok {
				port.drops.Add(1)
			}
		case n.tokens != nil && port.tw != nil:
			// Lossless, to a writer that would wait for room: inline if
			// there is room now; else the port's writer waits for it,
			// not the sender, which may leave meanwhile.
			if port.q.idle() && port.tryWriteDirect(m.bytes()) {
				ok = false // delivered: no reference kept
			} else if ok = port.q.push(m); !ok {
				port.drops.Add(1)
			}
		case port.dw != nil && port.q.idle():
			// Inline, unless messages queued before (out-of-band
			// notices, emitted ones) must reach the node first.
			port.writeDirect(m.bytes())
			ok = false // delivered or dropped, and counted: no reference kept
		default:
			ok = port.q.push(m)
			if !ok {
				port.drops.Add(1)
			}
		}
		if !ok {
			m.decRef()
		}
	}
	if ib != nil && ib.cutOf == m {
		ib.cutOf = nil // m may be freed now, and its buffer reused
	}
	m.decRef()
}
