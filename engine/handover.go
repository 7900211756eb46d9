package engine

import (
	"errors"
	"fmt"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ipn-project/ipn/endpoint"
	"github.com/ipn-project/ipn/endpoint/vnet"
	"github.com/ipn-project/ipn/policy"
)

// A hand-over moves a running engine to another process (a daemon's
// takeover) without losing or repeating a message. Freeze stops every port
// where it is: first the readers, at a batch's end (a lossless reader
// waiting for room keeps the messages it has read), then the writers
// (a writer waiting for room keeps what it has not written). Nothing is
// closed: the endpoints' descriptors, the queues and the messages in them
// stay as they are, for Thaw to resume here or for Save to describe to a
// new engine, which Restore builds, with every queued message and counter.

// pause is a port's part in a hand-over.
type pause struct {
	on     atomic.Bool   // a freeze is under way
	r, w   chan struct{} // closed to stop the reader, then the writer
	rOut   chan struct{} // closed when the reader has stopped, for any reason
	wOut   chan struct{} // closed when the writer has stopped, for any reason
	reader bool          // the reader stopped for the pause (not for good)
	writer bool          // the writer stopped for the pause
	held   [][]byte      // read from the node and not routed yet
	unsent []*msg        // taken from the queue and not written yet, in order
	// unsentOOB are the out-of-band ones taken and not written yet.
	unsentOOB []*msg
}

func (ps *pause) reset() {
	ps.on.Store(false)
	ps.r, ps.w = make(chan struct{}), make(chan struct{})
	ps.rOut, ps.wOut = make(chan struct{}), make(chan struct{})
	ps.reader, ps.writer = false, false
}

// errPausedWrite ends a writer's batch that a pause interrupted.
var errPausedWrite = errors.New("write paused")

// hold keeps copies of the messages a pausing reader read and has not
// routed, for routeHeld; hdrs, if not nil, are their headers: a
// super-frame is held as its segments.
func (p *Port) hold(bufs [][]byte, sizes []int, hdrs []vnet.Hdr) {
	for i, b := range bufs {
		if sizes[i] > len(b) {
			p.errs.Add(1)
			continue
		}
		if hdrs == nil || hdrs[i].Plain() {
			p.pause.held = append(p.pause.held, append([]byte(nil), b[:sizes[i]]...))
			continue
		}
		segs, err := segment(b[:sizes[i]], hdrs[i], nil, nil)
		if err != nil {
			p.errs.Add(1)
			continue
		}
		for _, s := range segs {
			p.pause.held = append(p.pause.held, append([]byte(nil), s...))
		}
	}
}

// routeHeld routes, before anything new, the messages the reader held when
// it paused. It reports whether a pause stopped it again (what is left
// stays held).
func (p *Port) routeHeld(dst []policy.Delivery) bool {
	n := p.net
	held := p.pause.held
	for len(held) > 0 {
		b := held[0]
		if !p.canWrite.Load() {
			held = held[1:]
			continue
		}
		m := newMsgCopy(b)
		if n.tokens != nil {
			select {
			case n.tokens <- struct{}{}:
			case <-p.done:
				m.decRef()
				p.pause.held = nil
				return false
			case <-p.pause.r:
				m.decRef()
				p.pause.held = held
				return true
			}
			m.token = n.tokens
		}
		m.done = p.doneCtr.Load()
		p.msgsIn.Add(1)
		p.bytesIn.Add(uint64(len(b)))
		p.route([][]byte{m.bytes()}, []*msg{m}, dst[:1])
		held = held[1:]
	}
	p.pause.held = nil
	return false
}

// Frozen is an engine that Freeze stopped.
type Frozen struct {
	e     *Engine
	nets  []*Network
	ports []*Port // the ports that were stopped, not those that left
}

// Freeze stops every port of every network, in at most timeout, keeping
// every message (see the package's hand-over): no port reads or writes,
// policies' own messages (Emit) are dropped, and no network or port may be
// made, until Thaw. First it marks every port as pausing, so that a
// write that fails as paused (endpoint.Paused) keeps its messages; then it
// calls before, if not nil (the daemon stops its sessions there, whose
// connections carry ports' out-of-band messages), and stops the readers,
// then the writers. If before fails or the ports do not all stop in time,
// Freeze stops them all, calls undo (if not nil: what before did that the
// restarted ports must not meet), thaws them and fails.
func (e *Engine) Freeze(timeout time.Duration, before func() error, undo func()) (*Frozen, error) {
	e.mu.Lock()
	if e.frozen {
		e.mu.Unlock()
		return nil, fmt.Errorf("engine frozen already: %w", syscall.EALREADY)
	}
	e.frozen = true
	f := &Frozen{e: e}
	for _, n := range e.nets {
		f.nets = append(f.nets, n)
	}
	e.mu.Unlock()
	for _, n := range f.nets {
		n.frozen.Store(true)
		n.mu.Lock()
		for _, p := range n.ports {
			if p != nil {
				f.ports = append(f.ports, p)
				p.pause.on.Store(true)
			}
		}
		n.mu.Unlock()
	}
	stopReaders := func() {
		for _, p := range f.ports {
			closeOnce(p.pause.r)
			if pr, ok := p.ep.(endpoint.Pauser); ok {
				pr.PauseRead()
			}
		}
	}
	stopWriters := func() {
		for _, p := range f.ports {
			closeOnce(p.pause.w)
			if pr, ok := p.ep.(endpoint.Pauser); ok {
				pr.PauseWrite()
			}
		}
	}
	fail := func(err error) (*Frozen, error) {
		// Every loop stops (each wait a pause interrupts), then restarts.
		stopReaders()
		stopWriters()
		for _, p := range f.ports {
			<-p.pause.rOut
			<-p.pause.wOut
		}
		if undo != nil {
			undo()
		}
		f.Thaw()
		return nil, err
	}
	if before != nil {
		if err := before(); err != nil {
			return fail(err)
		}
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	wait := func(out func(p *Port) chan struct{}) error {
		for _, p := range f.ports {
			select {
			case <-out(p):
			case <-deadline.C:
				return fmt.Errorf("freeze: port %d of %s did not stop in %v: %w", p.num, p.net.Name(), timeout, syscall.ETIMEDOUT)
			}
		}
		return nil
	}
	stopReaders()
	if err := wait(func(p *Port) chan struct{} { return p.pause.rOut }); err != nil {
		return fail(err)
	}
	stopWriters()
	if err := wait(func(p *Port) chan struct{} { return p.pause.wOut }); err != nil {
		return fail(err)
	}
	return f, nil
}

// closeOnce closes ch unless it is closed already; one goroutine calls it.
func closeOnce(ch chan struct{}) {
	select {
	case <-ch:
	default:
		close(ch)
	}
}

// live reports whether p was stopped by the freeze, not by leaving.
func (p *Port) live() bool {
	select {
	case <-p.done:
		return false
	default:
		return p.pause.reader || p.pause.writer
	}
}

// Thaw resumes a frozen engine where it stopped.
func (f *Frozen) Thaw() {
	for _, p := range f.ports {
		reader, writer := p.pause.reader, p.pause.writer
		unsent, unsentOOB := p.pause.unsent, p.pause.unsentOOB
		held := p.pause.held
		p.pause.reset()
		p.pause.unsent, p.pause.unsentOOB = nil, nil
		p.pause.held = held
		p.q.unpop(unsent)
		p.q.unpopOOB(unsentOOB)
		if pr, ok := p.ep.(endpoint.Pauser); ok {
			pr.Resume()
		}
		if !reader {
			close(p.pause.rOut)
		} else {
			p.wg.Add(1)
			go p.readLoop()
		}
		if !writer {
			close(p.pause.wOut)
		} else {
			p.wg.Add(1)
			go p.writeLoop()
			p.q.signal()
		}
	}
	for _, n := range f.nets {
		n.frozen.Store(false)
	}
	f.e.mu.Lock()
	f.e.frozen = false
	f.e.mu.Unlock()
}

// NetworkState is a frozen network as Save describes it, and as Restore
// makes it again: what JSON carries of it, and the ports' endpoints.
type NetworkState struct {
	Key    any    `json:"-"` // the network's key (the daemon's file identity)
	Config Config // OnDelete and Data are the restorer's to set
	Policy []byte `json:",omitempty"` // the policy's state (policy.Saver), or none
	Ports  []PortState
	// Msgs are the messages queued for the ports; a message queued for
	// several ports is here once.
	Msgs []MsgState `json:",omitempty"`
}

// PortState is a frozen port.
type PortState struct {
	Num               int
	Options           PortOptions // OnLeave is the restorer's to set
	CanRead, CanWrite bool
	Stats             PortStats
	ReadDone          bool              `json:",omitempty"` // the node sends no more (its reader ended)
	Held              [][]byte          `json:",omitempty"` // read from the node, not routed yet
	Queue             []int             `json:",omitempty"` // indexes into Msgs, in order
	OOB               []int             `json:",omitempty"` // out-of-band ones, in order
	Port              *Port             `json:"-"`          // Save's: the port in the frozen engine
	Endpoint          endpoint.Endpoint `json:"-"`          // Restore's: the port's endpoint
	// Done is Restore's: the port's count of finished messages
	// (SetDoneCounter), or nil.
	Done *atomic.Uint64 `json:"-"`
}

// MsgState is a queued message.
type MsgState struct {
	Data []byte
	OOB  bool `json:",omitempty"`
	// Slot says that the message held a lossless slot: restored, it
	// takes one again while slots last.
	Slot bool `json:",omitempty"`
	// Src is the number of the port that sent it, whose count of
	// finished messages it adds to when freed (SetDoneCounter); -1: none.
	Src int
	// Vnet is its virtio-net header, if it came from an endpoint with
	// offloads.
	Vnet vnet.Hdr `json:",omitzero"`
}

// Save describes the frozen networks and the ports they still have.
func (f *Frozen) Save() ([]NetworkState, error) {
	var out []NetworkState
	for _, n := range f.nets {
		st := NetworkState{Key: n.key, Config: n.Config()}
		st.Config.OnDelete, st.Config.Data = nil, nil
		if s, ok := n.policy.(policy.Saver); ok {
			n.mu.Lock()
			b, err := s.Save()
			n.mu.Unlock()
			if err != nil {
				return nil, fmt.Errorf("save policy of %s: %w", n.Name(), err)
			}
			st.Policy = b
		}
		src := map[*atomic.Uint64]int{}
		for _, p := range f.ports {
			if c := p.doneCtr.Load(); p.net == n && c != nil {
				src[c] = p.num
			}
		}
		index := map[*msg]int{}
		var forms []*msg // the message of each of st.Msgs
		ref := func(m *msg) int {
			if i, ok := index[m]; ok {
				return i
			}
			slot := m.token != nil || (m.parent != nil && m.parent.token != nil)
			from := -1
			if num, ok := src[m.done]; ok && m.done != nil {
				from = num
			}
			forms = append(forms, m)
			index[m] = len(st.Msgs)
			st.Msgs = append(st.Msgs, MsgState{Data: append([]byte(nil), m.bytes()...), OOB: m.oob, Slot: slot, Src: from, Vnet: m.vh})
			return index[m]
		}
		for _, p := range f.ports {
			if p.net != n || !p.live() {
				continue
			}
			ps := PortState{
				Num: p.num, Options: p.opts, CanRead: p.canRead.Load(), CanWrite: p.canWrite.Load(),
				Stats: p.Stats(), Held: p.pause.held, Port: p,
			}
			ps.Options.OnLeave = nil
			select {
			case <-p.readDone:
				ps.ReadDone = true
			default:
			}
			for _, m := range p.pause.unsent {
				ps.Queue = append(ps.Queue, ref(m))
			}
			queued, oob := p.q.peek()
			for _, m := range queued {
				ps.Queue = append(ps.Queue, ref(m))
			}
			for _, m := range append(append([]*msg(nil), p.pause.unsentOOB...), oob...) {
				ps.OOB = append(ps.OOB, ref(m))
			}
			st.Ports = append(st.Ports, ps)
		}
		// A second form whose first is not queued anywhere counts, when
		// freed, for the first (which it holds, and which counts then).
		for i, m := range forms {
			if p := m.parent; p != nil && p.done != nil {
				if num, ok := src[p.done]; ok {
					if _, queued := index[p]; !queued {
						st.Msgs[i].Src = num
					}
				}
			}
		}
		out = append(out, st)
	}
	return out, nil
}

// Restore makes a network saved by Frozen.Save (in another process) under
// key st.Key, with its ports on the endpoints st.Ports name, their numbers,
// options, counters and queued messages, and its policy's state. Its ports
// start when start is called; until then Discard undoes it all, leaving
// the endpoints alone. The network is returned holding one reference, as
// Create's.
func (e *Engine) Restore(st *NetworkState) (n *Network, start func(), err error) {
	n, err = e.Create(st.Key, st.Config)
	if err != nil {
		return nil, nil, err
	}
	ports := make([]*Port, 0, len(st.Ports))
	// A failed restore leaves the endpoints as they are, unclosed (the
	// caller closes its descriptors): closing one may tell its node the
	// port has gone, and the old daemon may yet resume it.
	fail := func(err error) (*Network, func(), error) {
		n.Discard()
		return nil, nil, err
	}
	for i := range st.Ports {
		ps := &st.Ports[i]
		if ps.Endpoint == nil {
			return fail(fmt.Errorf("restore %s: port %d has no endpoint: %w", n.Name(), ps.Num, syscall.EINVAL))
		}
		opts := ps.Options
		opts.Want = ps.Num
		opts.NoRead, opts.NoWrite = !ps.CanRead, !ps.CanWrite
		p, err := n.attach(ps.Endpoint, opts, true)
		if err != nil {
			return fail(fmt.Errorf("restore %s: port %d: %w", n.Name(), ps.Num, err))
		}
		p.msgsIn.Store(ps.Stats.MsgsIn)
		p.bytesIn.Store(ps.Stats.BytesIn)
		p.msgsOut.Store(ps.Stats.MsgsOut)
		p.bytesOut.Store(ps.Stats.BytesOut)
		p.drops.Store(ps.Stats.Drops)
		p.errs.Store(ps.Stats.Errors)
		p.pause.held = ps.Held
		if ps.Done != nil {
			p.SetDoneCounter(ps.Done)
		}
		ports = append(ports, p)
	}
	if s, ok := n.policy.(policy.Saver); ok && len(st.Policy) > 0 {
		n.mu.Lock()
		err := s.Restore(st.Policy)
		n.mu.Unlock()
		if err != nil {
			return fail(fmt.Errorf("restore policy of %s: %w", n.Name(), err))
		}
	}
	msgs := make([]*msg, len(st.Msgs))
	for i, ms := range st.Msgs {
		if len(ms.Data) > n.cfg.MTU && (!ms.Vnet.GSO() || len(ms.Data) > vnet.MaxFrame) {
			return fail(fmt.Errorf("restore %s: a queued message of %d bytes: %w", n.Name(), len(ms.Data), syscall.EMSGSIZE))
		}
		m := newMsgCopy(ms.Data)
		m.oob, m.vh = ms.OOB, ms.Vnet
		for _, p := range ports {
			if p.num == ms.Src {
				m.done = p.doneCtr.Load()
			}
		}
		if ms.Slot && n.tokens != nil {
			select {
			case n.tokens <- struct{}{}:
				m.token = n.tokens
			default: // slots are short: the pool holds one more for a while
			}
		}
		msgs[i] = m
	}
	for i, p := range ports {
		ps := &st.Ports[i]
		for _, list := range [][]int{ps.Queue, ps.OOB} {
			for _, j := range list {
				if j < 0 || j >= len(msgs) {
					return fail(fmt.Errorf("restore %s: message %d of %d: %w", n.Name(), j, len(msgs), syscall.EINVAL))
				}
			}
		}
		for _, j := range ps.Queue {
			msgs[j].refs.Add(1)
			if !p.q.push(msgs[j]) {
				msgs[j].decRef()
				p.drops.Add(1)
			}
		}
		for _, j := range ps.OOB {
			msgs[j].refs.Add(1)
			if !p.q.pushOOB(msgs[j]) {
				msgs[j].decRef()
				p.drops.Add(1)
			}
		}
	}
	for _, m := range msgs {
		if m.refs.Load() == 1 {
			// Queued only for a port that is not here: it counts for
			// no one, since the daemon it came from may resume it.
			m.done = nil
		}
		m.decRef() // the table's reference
	}
	readDone := make([]bool, len(ports))
	for i := range ports {
		readDone[i] = st.Ports[i].ReadDone
	}
	return n, func() {
		for i, p := range ports {
			p.start(readDone[i])
		}
	}, nil
}

// Discard undoes a Restore whose ports have not started: the ports go,
// their endpoints untouched, and Restore's reference with them.
func (n *Network) Discard() {
	n.mu.Lock()
	var ports []*Port
	for _, p := range n.ports {
		if p != nil {
			ports = append(ports, p)
		}
	}
	n.mu.Unlock()
	for _, p := range ports {
		// The messages restored count for no one: the daemon they came
		// from still holds them, and counts them.
		queued, oob := p.q.peek()
		for _, m := range append(queued, oob...) {
			m.done = nil
		}
		p.q.flush(true)
		p.discard()
	}
	n.Release()
}

// Endpoint returns the port's endpoint.
func (p *Port) Endpoint() endpoint.Endpoint { return p.ep }

// discard takes a port that attach made, and that never started, out of
// its network, leaving its endpoint alone.
func (p *Port) discard() {
	n := p.net
	n.mu.Lock()
	n.policy.PreDeletePort(p.num)
	if n.ports[p.num] == p {
		n.ports[p.num] = nil
	}
	n.countLocked(p, -1)
	n.publish()
	n.policy.DeletePort(p.num)
	n.mu.Unlock()
	n.Release()
}

// peek returns the queued messages, ordinary and out-of-band, in order,
// leaving them queued.
func (q *queue) peek() (msgs, oob []*msg) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for i := range q.count {
		msgs = append(msgs, q.ring[(q.head+i)%len(q.ring)])
	}
	return msgs, append(oob, q.oob...)
}

// unpopOOB puts out-of-band msgs, taken by pop and not written, back
// before the others waiting.
func (q *queue) unpopOOB(msgs []*msg) {
	if len(msgs) == 0 {
		return
	}
	q.mu.Lock()
	q.oob = append(append([]*msg(nil), msgs...), q.oob...)
	q.pending.Add(int32(len(msgs)))
	q.mu.Unlock()
	q.signal()
}

// unpop puts msgs, taken by pop and not written, back at the queue's head,
// in order; with no room for one (never after a pause, which stops every
// sender first), it is dropped.
func (q *queue) unpop(msgs []*msg) {
	if len(msgs) == 0 {
		return
	}
	q.mu.Lock()
	var drop []*msg
	for i := len(msgs) - 1; i >= 0; i-- {
		if q.count == len(q.ring) {
			drop = append(drop, msgs[i])
			continue
		}
		q.head = (q.head - 1 + len(q.ring)) % len(q.ring)
		q.ring[q.head] = msgs[i]
		q.count++
		q.pending.Add(1)
	}
	q.mu.Unlock()
	for _, m := range drop {
		m.decRef()
	}
	q.signal()
}
