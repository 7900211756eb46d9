package engine

import (
	"errors"
	"io"
	"sync"
	"sync/atomic"

	"github.com/ipn-project/ipn/endpoint"
	"github.com/ipn-project/ipn/endpoint/vnet"
	"github.com/ipn-project/ipn/policy"
)

// Port is a node connected to a network.
type Port struct {
	net  *Network
	num  int
	ep   endpoint.Endpoint
	oobw endpoint.OOBWriter         // nil if ep takes no out-of-band messages
	dw   endpoint.DirectWriter      // non-nil: ordinary messages bypass the queue
	tw   endpoint.TryDirectWriter   // non-nil: in a lossless network, tried inline
	off  endpoint.Offloader         // non-nil: ep moves virtio-net headers
	dwo  endpoint.DirectOffloader   // non-nil with off and dw: inline with headers
	dbw  endpoint.DirectBatchWriter // non-nil with dwo: a batch's inline at once
	fr   endpoint.FanOutReader      // non-nil: reads the network's fan-out
	fan  endpoint.FanOut            // the fan-out fr reads (lossy networks only)

	seg segmenter   // the writer's, for super-frames to an endpoint without offloads
	ib  inlineBatch // the reader's: its batch's messages for DirectBatchWriters
	// superLeft is how many more of its super-frames a port with
	// offloads may have alive (MaxSuperFrames at most).
	superLeft atomic.Int32
	// bigHeld is 1 while a lossy network's port holds a big message,
	// queued or being written (big.go).
	bigHeld atomic.Int32
	hdrs    []vnet.Hdr // the writer's, for an endpoint with offloads
	opts    PortOptions
	q       *queue
	class   int // buffer size class for reads

	canRead  atomic.Bool
	canWrite atomic.Bool

	mon policy.PortSet // the reader's scratch set for mirror

	msgsIn, bytesIn   atomic.Uint64 // sent by the node into the network
	msgsOut, bytesOut atomic.Uint64 // delivered to the node
	drops             atomic.Uint64 // missed by the node (lossy, full queue)
	errs              atomic.Uint64 // refused from the node (too long)
	// doneCtr, if set, counts the node's messages the engine has finished
	// with (SetDoneCounter).
	doneCtr atomic.Pointer[atomic.Uint64]

	leaveOnce sync.Once
	done      chan struct{} // closed when the port has left
	readDone  chan struct{} // closed when the reader has stopped
	wg        sync.WaitGroup
	// running counts the port's goroutines; the last to exit gives back
	// the port's reference on the network, so that the policy is never
	// closed while this port's reader may still be routing.
	running atomic.Int32

	pause pause // a hand-over's (handover.go)
}

// Num returns the port number.
func (p *Port) Num() int { return p.num }

// Network returns the network the port belongs to.
func (p *Port) Network() *Network { return p.net }

// Done is closed when the port has left the network, by Close or because
// its endpoint failed.
func (p *Port) Done() <-chan struct{} { return p.done }

// ReadDone is closed when the port's reader has stopped: the node will send
// nothing more (its endpoint reported io.EOF) or the port left.
func (p *Port) ReadDone() <-chan struct{} { return p.readDone }

// Close disconnects the port, closes its endpoint and waits for its
// goroutines. It is idempotent.
func (p *Port) Close() {
	p.leave()
	p.wg.Wait()
}

// leave takes the port out of the network; it may run on the port's own
// goroutines and does not wait for them.
func (p *Port) leave() {
	p.leaveOnce.Do(func() {
		n := p.net
		n.mu.Lock()
		n.policy.PreDeletePort(p.num)
		if p.num < len(n.ports) && n.ports[p.num] == p {
			n.ports[p.num] = nil
		}
		n.countLocked(p, -1)
		p.canRead.Store(false)
		p.canWrite.Store(false)
		n.publish()
		n.policy.DeletePort(p.num)
		n.notifyCountsLocked()
		n.mu.Unlock()
		close(p.done)
		p.ep.Close()
		p.q.flush(true)
		if p.opts.OnLeave != nil {
			p.opts.OnLeave()
		}
	})
}

// exit is deferred by each of the port's goroutines.
func (p *Port) exit() {
	if p.running.Add(-1) == 0 {
		p.net.Release()
	}
	p.wg.Done()
}

// Shutdown closes the port's receive side (read) and/or send side (write)
// for good. Closing the receive side drops what is queued for the node.
func (p *Port) Shutdown(read, write bool) {
	n := p.net
	n.mu.Lock()
	changed := false
	if read && p.canRead.Swap(false) {
		n.readers--
		changed = true
	}
	if write && p.canWrite.Swap(false) {
		n.writers--
		changed = true
	}
	if changed {
		n.publish()
		n.notifyCountsLocked()
	}
	n.mu.Unlock()
	if read {
		p.q.flush(false)
		// A write under way may wait for room that the node, which
		// reads no more, never makes (holding lossless slots): it ends,
		// and what it had not written is dropped (writeBatch).
		if pr, ok := p.ep.(endpoint.Pauser); ok {
			pr.PauseWrite()
		}
	}
}

// SendOOB delivers b out of band to every other node that handles OOB
// messages.
func (p *Port) SendOOB(b []byte) {
	if !p.canWrite.Load() {
		return
	}
	n := p.net
	v := n.view.Load()
	var dst policy.PortSet
	for i, q := range v.ports {
		if q != nil && q != p && q.opts.HandleOOB {
			dst.Add(i)
		}
	}
	m := newMsgCopy(b)
	m.oob = true
	n.deliver(m, &dst, v, nil)
}

// PortStats are a port's counters.
type PortStats struct {
	MsgsIn, BytesIn   uint64 // sent by the node into the network
	MsgsOut, BytesOut uint64 // delivered to the node
	Drops             uint64 // messages the node missed
	Errors            uint64 // messages refused from the node
}

// writeDirect delivers m inline to a DirectWriter endpoint, counting it.
func (p *Port) writeDirect(m []byte) {
	if p.dw.WriteDirect(m) {
		p.msgsOut.Add(1)
		p.bytesOut.Add(uint64(len(m)))
	} else {
		p.drops.Add(1)
	}
}

// writeDirectOffload is writeDirect of a message with header h.
func (p *Port) writeDirectOffload(m []byte, h vnet.Hdr) {
	if p.dwo.WriteDirectOffload(m, h) {
		p.msgsOut.Add(1)
		p.bytesOut.Add(uint64(len(m)))
	} else {
		p.drops.Add(1)
	}
}

// tryWriteDirect delivers m inline if the port's endpoint has room now.
func (p *Port) tryWriteDirect(m []byte) bool {
	if !p.tw.TryWriteDirect(m) {
		return false
	}
	p.msgsOut.Add(1)
	p.bytesOut.Add(uint64(len(m)))
	return true
}

// Stats returns the port's counters.
func (p *Port) Stats() PortStats {
	st := PortStats{
		MsgsIn: p.msgsIn.Load(), BytesIn: p.bytesIn.Load(),
		MsgsOut: p.msgsOut.Load(), BytesOut: p.bytesOut.Load(),
		Drops: p.drops.Load(), Errors: p.errs.Load(),
	}
	if p.fr != nil {
		// What the fan-out lapped was counted as delivered when put.
		// The node's count of what it missed includes its own messages:
		// it missed at most what was put for it and it did not take.
		missed, taken := p.fr.FanOutMissed()
		missed = min(missed, st.MsgsOut-min(taken, st.MsgsOut))
		st.MsgsOut -= missed
		st.Drops += missed
	}
	return st
}

// SetDoneCounter makes the engine add one to c for each message the node
// sends from now on, once it has finished with it: delivered to every
// destination, or dropped (by the policy, a full lossy queue, or a
// receiver that left). Set it before the node can send (the daemon sets it
// before the client has its data path); c must stay valid until every such
// message is freed: done == Stats().MsgsIn once the reader has stopped.
func (p *Port) SetDoneCounter(c *atomic.Uint64) { p.doneCtr.Store(c) }

// Options returns the options the port joined with.
func (p *Port) Options() PortOptions { return p.opts }

// CanRead and CanWrite report which sides of the port are open.
func (p *Port) CanRead() bool { return p.canRead.Load() }

// CanWrite reports whether the node may send.
func (p *Port) CanWrite() bool { return p.canWrite.Load() }

// readLoop moves messages from the endpoint into the network.
//
// An io.EOF from the endpoint stops the reader only: the node sends no more
// but may still receive. Any other error makes the port leave.
func (p *Port) readLoop() {
	paused := false
	defer func() {
		p.pause.reader = paused // before rOut: Freeze reads it after
		close(p.pause.rOut)
		if paused { // kept for Thaw or a hand-over: no exit
			p.wg.Done()
			return
		}
		close(p.readDone)
		p.exit()
	}()
	n := p.net
	batch := p.ep.BatchSize()
	if batch < 1 {
		batch = 1
	}
	msgs := make([]*msg, batch)
	bufs := make([][]byte, batch)
	sizes := make([]int, batch)
	routed := make([][]byte, 0, batch)
	keep := make([]*msg, 0, batch)
	dst := make([]policy.Delivery, batch)
	var hdrs []vnet.Hdr // the endpoint's headers, if it has offloads
	if p.off != nil {
		hdrs = make([]vnet.Hdr, batch)
	}
	for i := range msgs {
		msgs[i] = getMsg(p.class)
	}
	defer func() {
		for _, m := range msgs {
			m.free()
		}
	}()
	mtu := n.cfg.MTU
	flex := n.cfg.Flags&FlexMTU != 0
	// A network with big messages reads them through the endpoint's
	// ReadBig, into buffers grow makes (big.go).
	var br endpoint.BigReader
	var grow func(i, size int) ([]byte, bool)
	if n.big != nil && hdrs == nil {
		br, _ = p.ep.(endpoint.BigReader)
		grow = func(i, size int) ([]byte, bool) { return p.growBig(msgs, i, size) }
	}
	if len(p.pause.held) > 0 && p.routeHeld(dst) {
		paused = true
		return
	}
	for {
		select {
		case <-p.pause.r:
			paused = true
			return
		default:
		}
		var count int
		var err error
		if hdrs != nil {
			for i, m := range msgs {
				bufs[i] = m.buf // the largest class: a super-frame's
			}
			count, err = p.off.ReadOffload(bufs, sizes, hdrs)
		} else {
			for i, m := range msgs {
				if m.isBig() { // grown for a message the endpoint did not keep
					m.free()
					m = getMsg(p.class)
					msgs[i] = m
				}
				bufs[i] = m.buf[:min(mtu, len(m.buf))]
			}
			if br != nil {
				count, err = br.ReadBig(bufs, sizes, grow)
				for i := range count {
					if msgs[i].isBig() { // grown: bufs[i] was the pooled one
						bufs[i] = msgs[i].buf
					}
				}
			} else {
				count, err = p.ep.Read(bufs, sizes)
			}
		}
		routed, keep = routed[:0], keep[:0]
		doneCtr := p.doneCtr.Load()
		var msgsIn, bytesIn uint64 // counted once per batch
		for i := 0; i < count; i++ {
			if sizes[i] > mtu && (hdrs == nil || !hdrs[i].GSO() || sizes[i] > vnet.MaxFrame) ||
				hdrs == nil && sizes[i] > len(msgs[i].buf) || // truncated: longer than BigMin
				hdrs != nil && !superFits(bufs[i][:min(sizes[i], len(bufs[i]))], hdrs[i], mtu) {
				p.errs.Add(1)
				continue
			}
			if !p.canWrite.Load() {
				continue
			}
			super := hdrs != nil && sizes[i] > classSizes[classFor(min(mtu, BigMin))]
			if super && !p.takeSuper() {
				p.drops.Add(1) // too many of its super-frames in the network
				continue
			}
			if n.tokens != nil {
				select {
				case n.tokens <- struct{}{}:
				default:
					// The pool is full: deliver what this batch holds
					// first, since its messages hold slots too.
					p.route(routed, keep, dst)
					routed, keep = routed[:0], keep[:0]
					select {
					case n.tokens <- struct{}{}:
					case <-p.done:
						p.msgsIn.Add(msgsIn)
						p.bytesIn.Add(bytesIn)
						return
					case <-p.pause.r:
						// Keep this message and the batch's rest for
						// whoever resumes the port.
						p.msgsIn.Add(msgsIn)
						p.bytesIn.Add(bytesIn)
						if super {
							p.superLeft.Add(1)
						}
						var hs []vnet.Hdr
						if hdrs != nil {
							hs = hdrs[i:count]
						}
						p.hold(bufs[i:count], sizes[i:count], hs)
						paused = true
						return
					}
				}
				msgs[i].token = n.tokens
			}
			m := msgs[i]
			m.n = sizes[i]
			if flex && classFor(m.n) < p.class || hdrs != nil && !super {
				// FlexMTU: keep the message in a buffer of its own size;
				// the MTU-sized one reads the next message. So too an
				// ordinary frame from an endpoint with offloads, read
				// into a super-frame's buffer.
				small := getMsg(classFor(m.n))
				small.n = copy(small.buf, m.bytes())
				small.token, m.token = m.token, nil
				m = small
			} else {
				msgs[i] = getMsg(p.class)
			}
			if hdrs != nil {
				m.vh = hdrs[i]
			}
			if super {
				m.super = &p.superLeft
			}
			m.refs.Store(1)
			m.done = doneCtr
			msgsIn++
			bytesIn += uint64(m.n)
			routed = append(routed, m.bytes())
			keep = append(keep, m)
		}
		p.msgsIn.Add(msgsIn)
		p.bytesIn.Add(bytesIn)
		p.route(routed, keep, dst)
		if err != nil {
			if p.pause.on.Load() && endpoint.Paused(err) {
				paused = true
				return
			}
			if !errors.Is(err, io.EOF) {
				p.leave()
			}
			return
		}
	}
}

// growBig is the reader's grow for endpoint.BigReader: it makes msgs[i] a
// big message of size bytes charged to the network's budget, waiting for
// room in a lossless network, and returns its buffer; nil and drop (the
// message is dropped, counted) if it is over the MTU, if a lossy network
// has no room, or if the port leaves meanwhile; nil and not drop (the
// message stays unread, for whoever resumes the port) if it pauses.
func (p *Port) growBig(msgs []*msg, i, size int) ([]byte, bool) {
	n := p.net
	if size > n.cfg.MTU {
		p.errs.Add(1)
		return nil, true
	}
	var ok bool
	if n.tokens != nil {
		ok = n.big.take(int64(size), p.done, p.pause.r)
	} else {
		ok = n.big.take(int64(size))
	}
	if !ok {
		select {
		case <-p.pause.r:
			return nil, false
		default:
		}
		p.drops.Add(1)
		return nil, true
	}
	msgs[i].free()
	msgs[i] = newBig(size, n.big)
	return msgs[i].buf, false
}

// route asks the policy where keep's messages go and delivers them;
// routed[i] is keep[i]'s payload.
func (p *Port) route(routed [][]byte, keep []*msg, dst []policy.Delivery) {
	if len(keep) == 0 {
		return
	}
	n := p.net
	v := n.view.Load()
	for i := range keep {
		dst[i].Reset()
	}
	n.policy.Route(p.num, routed, &v.members, dst[:len(keep)])
	ib := &p.ib
	ib.from = p
	mon := v.hasMonitors
	for i, m := range keep {
		d := &dst[i]
		if d.Invalid {
			p.errs.Add(1)
		}
		if mon && !d.Invalid {
			// The monitors get the message once, as sent, and no other form.
			d.Ports.Intersect(v.members)
			d.AltPorts.Intersect(v.members)
			p.mirror(m, v)
		}
		if d.Alt != nil && !d.Invalid {
			// The second form holds the first, and with it the first's
			// lossless slot, until it is consumed: the pool counts
			// messages sent, not their forms (a lossless port's queue
			// holds two forms per slot).
			alt := newMsgCopy(d.Alt)
			alt.vh = shiftHdr(m.vh, len(d.Alt)-m.n)
			m.refs.Add(1)
			alt.parent = m
			n.deliver(alt, &d.AltPorts, v, ib)
		}
		if d.Invalid {
			m.decRef()
			continue
		}
		n.deliver(m, &d.Ports, v, ib)
	}
	ib.flush()
	if n.tokens == nil && n.big != nil {
		// Routed: each receiver's cap bounds a lossy big message now,
		// not the budget, which is for the messages being read.
		for _, m := range keep {
			if m.isBig() {
				m.releaseBig()
			}
		}
	}
}

// mirror delivers m, as its node sent it, to the network's monitors, which
// see every message the policy routed (delivered to some ports or to none)
// but not those it refused as invalid. In a lossless network the monitors
// get a copy that holds no lossless slot, so that a monitor that lags
// drops messages (counted) instead of making senders wait.
func (p *Port) mirror(m *msg, v *view) {
	n := p.net
	p.mon.CopyFrom(v.monitors)
	if n.tokens != nil {
		var c *msg
		if m.isBig() {
			// A big copy only if there is room now: a monitor never
			// makes senders wait.
			if n.big == nil || !n.big.take(int64(m.n)) {
				for i := p.mon.Next(0); i >= 0; i = p.mon.Next(i + 1) {
					if q := v.ports[i]; q != nil {
						q.drops.Add(1)
					}
				}
				return
			}
			c = newBig(m.n, n.big)
			c.n = copy(c.buf, m.bytes())
			c.refs.Store(1)
		} else {
			c = newMsgCopy(m.bytes())
		}
		c.vh = m.vh
		n.deliver(c, &p.mon, v, nil)
		return
	}
	m.refs.Add(1)
	n.deliver(m, &p.mon, v, nil)
}

// writeLoop moves queued messages to the endpoint, out-of-band ones first.
func (p *Port) writeLoop() {
	paused := false
	defer func() {
		p.pause.writer = paused
		close(p.pause.wOut)
		if paused {
			p.wg.Done()
			return
		}
		p.exit()
	}()
	batch := p.ep.BatchSize()
	if batch < 1 {
		batch = 1
	}
	msgs := make([]*msg, 0, batch)
	oob := make([]*msg, 0, 4)
	bufs := make([][]byte, 0, batch)
	for {
		select {
		case <-p.q.wake:
		case <-p.done:
			p.q.flush(true)
			return
		case <-p.pause.w:
			paused = true
			return
		}
		for {
			select {
			case <-p.pause.w:
				paused = true
				return
			default:
			}
			msgs, oob = p.q.pop(msgs, oob)
			if len(msgs) == 0 && len(oob) == 0 {
				break
			}
			err := p.writeBatch(msgs, oob, bufs)
			clear(msgs)
			clear(oob)
			if err == errPausedWrite {
				paused = true
				return
			}
			if err != nil {
				p.leave()
				p.q.flush(true)
				return
			}
		}
	}
}

// writeBatch writes oob then msgs and drops the queue's references on all.
func (p *Port) writeBatch(msgs, oob []*msg, bufs [][]byte) error {
	// The last kept of msgs and keptOOB of oob stay for a resume, their
	// references held (a pause).
	kept, keptOOB := 0, 0
	defer func() {
		for _, m := range oob[:len(oob)-keptOOB] {
			m.decRef()
		}
		for _, m := range msgs[:len(msgs)-kept] {
			if m.isBig() {
				p.bigHeld.Store(0)
			}
			m.decRef()
		}
		p.q.done(len(oob) + len(msgs))
	}()
	for i, m := range oob {
		if p.oobw == nil {
			continue
		}
		if err := p.oobw.WriteOOB(m.bytes()); err != nil {
			if p.pause.on.Load() && endpoint.Paused(err) {
				keptOOB, kept = len(oob)-i, len(msgs)
				p.pause.unsentOOB = append(p.pause.unsentOOB, oob[i:]...)
				p.pause.unsent = append(p.pause.unsent, msgs...)
				return errPausedWrite
			}
			return err
		}
	}
	if len(msgs) == 0 {
		return nil
	}
	written, err := p.write(msgs, bufs)
	if err != nil && p.pause.on.Load() && endpoint.Paused(err) {
		kept = len(msgs) - written
		p.pause.unsent = append(p.pause.unsent, msgs[written:]...)
		return errPausedWrite
	}
	if err != nil && !p.canRead.Load() {
		// The receive side was shut down while this batch was being
		// written (the daemon shuts the node's socket's direction too):
		// the rest is dropped, as Shutdown drops what is queued, and
		// the port stays for what the node sends.
		err = nil
	}
	if err == nil && written < len(msgs) {
		p.drops.Add(uint64(len(msgs) - written)) // the endpoint had no room
	}
	return err
}

// write writes msgs to the endpoint, counting what it wrote, and returns
// how many it wrote: all but those the endpoint dropped, or those before
// an error. It gives an endpoint with offloads each message's header, and
// cuts super-frames and finishes checksums for one without.
func (p *Port) write(msgs []*msg, bufs [][]byte) (int, error) {
	bufs = bufs[:0]
	work := false
	for _, m := range msgs {
		bufs = append(bufs, m.bytes())
		work = work || !m.vh.Plain()
	}
	var n int
	var err error
	switch {
	case p.off != nil:
		p.hdrs = p.hdrs[:0]
		for _, m := range msgs {
			p.hdrs = append(p.hdrs, m.vh)
		}
		n, err = p.off.WriteOffload(bufs, p.hdrs)
	case work:
		return p.writeSegmented(msgs)
	default:
		n, err = p.ep.Write(bufs)
	}
	p.countOut(bufs[:n])
	return n, err
}

// countOut counts bufs as delivered to the node.
func (p *Port) countOut(bufs [][]byte) {
	var bytes uint64
	for _, b := range bufs {
		bytes += uint64(len(b))
	}
	p.msgsOut.Add(uint64(len(bufs)))
	p.bytesOut.Add(bytes)
}
