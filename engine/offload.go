package engine

import (
	"sync"

	"github.com/ipn-project/ipn/endpoint"
	"github.com/ipn-project/ipn/endpoint/vnet"
	"github.com/ipn-project/ipn/policy"
)

// segmenter is a port writer's scratch for cutting super-frames.
type segmenter struct {
	buf   []byte   // the segments, back to back
	segs  [][]byte // the frames to write
	owner []int    // owner[i] is the index of the message segs[i] is of
}

// segScratch is the scratch a segmenter cuts into: a few super-frames'
// segments, so that one write carries several.
const segScratch = 4 * (vnet.MaxFrame + 4096)

// scratch holds segmenters' buffers of segScratch bytes.
var scratch = sync.Pool{New: func() any { b := make([]byte, segScratch); return &b }}

// MaxSuperFrames is how many super-frames of one port with offloads may be
// alive at once (read, queued or being written, the reader's batch of up
// to 32 among them); another is dropped at the port. It bounds the memory
// a tap or grab makes the daemon hold: OffloadPortMemory. Eight dropped
// TCP in bursts (a batch is routed, and its messages freed, only when it
// is whole).
const MaxSuperFrames = 64

// OffloadPortMemory is the most memory the super-frames of one port with
// offloads hold.
const OffloadPortMemory = MaxSuperFrames * 69632

// maxSegments is the most segments a super-frame may be cut into: a
// 64 KiB frame at TCP's smallest segment (88 bytes) is 745. More would
// make one frame thousands for every port that cuts it.
const maxSegments = 1024

// takeSuper takes one of the port's super-frames, if it has one left.
func (p *Port) takeSuper() bool {
	if p.superLeft.Add(-1) >= 0 {
		return true
	}
	p.superLeft.Add(1)
	return false
}

// superFits reports whether frame, of header h, read from a port with
// offloads, is one the network of MTU mtu may carry: an ordinary frame, or
// a super-frame whose every segment fits the MTU and that cuts into at
// most maxSegments.
func superFits(frame []byte, h vnet.Hdr, mtu int) bool {
	if !h.GSO() {
		return len(frame) <= mtu
	}
	// The kernel asks a checksum of every super-frame, and Segment checks
	// that CsumStart is the L4 header it finds, the one measured here.
	if h.Flags&vnet.FlagNeedsCsum == 0 || h.GSOSize == 0 || h.Segments(len(frame)) > maxSegments {
		return false
	}
	l4 := int(h.CsumStart)
	var hdr int
	switch h.GSOType &^ vnet.GSOECN {
	case vnet.GSOTCPv4, vnet.GSOTCPv6:
		if l4+13 > len(frame) {
			return false
		}
		hdr = int(frame[l4+12]>>4) * 4
	case vnet.GSOUDPL4:
		hdr = 8
	default:
		return false
	}
	return l4+hdr+int(h.GSOSize) <= mtu
}

// writeSegmented writes msgs, some of them super-frames or frames with a
// checksum to finish, to an endpoint without offloads, as ordinary frames.
// It returns how many messages it wrote: before an error, the messages
// some segment of which was written; with none, all of them (it counts
// the ones the endpoint dropped, or that could not be cut, itself).
func (p *Port) writeSegmented(msgs []*msg) (int, error) {
	s := &p.seg
	// The scratch is the writers' in common, for as long as one cuts:
	// the ports that receive super-frames do not hold one each.
	sb := scratch.Get().(*[]byte)
	s.buf = *sb
	defer func() {
		if len(s.buf) == segScratch {
			*sb = s.buf
		}
		s.buf = nil
		scratch.Put(sb)
	}()
	for done := 0; done < len(msgs); {
		segs, owner, used := s.segs[:0], s.owner[:0], 0
		i := done
		for ; i < len(msgs); i++ {
			m := msgs[i]
			if m.vh.Plain() {
				segs, owner = append(segs, m.bytes()), append(owner, i)
				continue
			}
			need, err := vnet.SegmentedLen(m.bytes(), m.vh)
			if err == nil && used+need > len(s.buf) {
				if i > done {
					break // write what is cut first
				}
				s.buf = make([]byte, need)
			}
			if err == nil {
				before := len(segs)
				segs, err = vnet.Segment(m.bytes(), m.vh, s.buf[used:used+need], segs)
				for range len(segs) - before {
					owner = append(owner, i)
				}
				used += need
			}
			if err != nil {
				p.errs.Add(1) // a header the frame belies
			}
		}
		s.segs, s.owner = segs, owner
		n, err := p.ep.Write(segs)
		p.countOut(segs[:n])
		if err != nil {
			if n > 0 {
				return owner[n-1] + 1, err
			}
			return done, err
		}
		if n < len(segs) { // the node had no room: the chunk's rest is dropped
			from := done
			if n > 0 {
				from = owner[n-1] + 1
			}
			p.drops.Add(uint64(i - from))
		}
		done = i
	}
	return len(msgs), nil
}

// segment cuts frame, of header h, into ordinary frames in buf (made if too
// small), appended to segs.
func segment(frame []byte, h vnet.Hdr, buf []byte, segs [][]byte) ([][]byte, error) {
	need, err := vnet.SegmentedLen(frame, h)
	if err != nil {
		return segs, err
	}
	if len(buf) < need {
		buf = make([]byte, need)
	}
	return vnet.Segment(frame, h, buf[:need], segs)
}

// shiftHdr returns h for a second form of its frame that is delta bytes
// longer or shorter in its Ethernet header (a VLAN tag added or removed).
func shiftHdr(h vnet.Hdr, delta int) vnet.Hdr {
	if h.Plain() || delta == 0 {
		return h
	}
	if cs := int(h.CsumStart) + delta; cs >= 0 {
		h.CsumStart = uint16(cs)
	}
	if hl := int(h.HdrLen) + delta; hl >= 0 {
		h.HdrLen = uint16(hl)
	}
	return h
}

// inlineBatch holds, for a port's reader, the messages of the batch it is
// routing that go inline to DirectBatchWriters, each holding a reference,
// until flush writes them: a destination gets the batch's messages for it
// in one call, which a tap merges into super-frames.
type inlineBatch struct {
	ports []*Port  // the destinations, in the order of their first message
	msgs  [][]*msg // msgs[i] are ports[i]'s, in order
	bufs  [][]byte // flush's
	hdrs  []vnet.Hdr

	// The segments of the message last cut for receivers without
	// offloads, kept for the next such receiver of the same message.
	cutOf   *msg
	cutErr  error
	cutSegs [][]byte
	cutBuf  []byte

	// The fan-out this batch put messages into, locked until flush, and
	// what it put there, to count for its readers.
	from     *Port // the sender
	fan      endpoint.FanOut
	fanView  *view
	fanMsgs  uint64
	fanBytes uint64
	one      [1][]byte
}

// fanOut puts m into the view's fan-out, if every port reading it but the
// sender is among dst, and takes them out of dst: each reads it there.
// A message the fan-out cannot take is left to dst's ports one by one.
func (b *inlineBatch) fanOut(m *msg, dst *policy.PortSet, v *view) {
	if v.fanOne == b.from.num || !dst.CoversBut(v.fanPorts, b.from.num) {
		return // the sender reads it alone: no one to put it there for
	}
	b.one[0] = m.bytes()
	segs := b.one[:]
	if !m.vh.Plain() {
		var err error
		if segs, err = b.cut(m); err != nil {
			return // each port counts it
		}
	}
	for _, seg := range segs {
		if len(seg) > v.fan.MaxMsg() {
			return // dst's ports get it one by one
		}
	}
	if b.fan != v.fan {
		if b.fan != nil {
			b.flushFan()
		}
		v.fan.Lock()
		b.fan, b.fanView = v.fan, v
	}
	for _, seg := range segs {
		b.fan.Put(seg, b.from.num)
		b.fanMsgs++
		b.fanBytes += uint64(len(seg))
	}
	b.one[0] = nil
	dst.Subtract(v.fanPorts)
}

// flushFan publishes what the batch put into its fan-out, counts it as
// delivered to the fan-out's readers, and unlocks it.
func (b *inlineBatch) flushFan() {
	b.fan.Flush(b.from.num)
	b.fan.Unlock()
	fp := &b.fanView.fanPorts
	for i := fp.Next(0); i >= 0; i = fp.Next(i + 1) {
		if q := b.fanView.ports[i]; q != nil && q != b.from {
			q.msgsOut.Add(b.fanMsgs)
			q.bytesOut.Add(b.fanBytes)
		}
	}
	b.fan, b.fanView, b.fanMsgs, b.fanBytes = nil, nil, 0, 0
}

// cut returns m cut into ordinary frames, with their checksums finished;
// they are valid until b's next cut or flush.
func (b *inlineBatch) cut(m *msg) ([][]byte, error) {
	if b.cutOf == m {
		return b.cutSegs, b.cutErr
	}
	b.cutOf, b.cutSegs, b.cutErr = m, b.cutSegs[:0], nil
	need, err := vnet.SegmentedLen(m.bytes(), m.vh)
	if err == nil {
		if len(b.cutBuf) < need {
			b.cutBuf = make([]byte, max(need, vnet.MaxFrame+4096))
		}
		b.cutSegs, err = vnet.Segment(m.bytes(), m.vh, b.cutBuf[:need], b.cutSegs)
	}
	if err != nil {
		b.cutSegs = b.cutSegs[:0]
	}
	b.cutErr = err
	return b.cutSegs, err
}

// has reports whether port has messages in b: its later ones must follow
// them, not overtake them through its queue.
func (b *inlineBatch) has(port *Port) bool {
	for _, q := range b.ports {
		if q == port {
			return true
		}
	}
	return false
}

// add appends m, with a reference taken for port, to port's messages.
func (b *inlineBatch) add(port *Port, m *msg) {
	for i, q := range b.ports {
		if q == port {
			b.msgs[i] = append(b.msgs[i], m)
			return
		}
	}
	b.ports = append(b.ports, port)
	if len(b.ports) > len(b.msgs) {
		b.msgs = append(b.msgs, nil)
	}
	i := len(b.ports) - 1
	b.msgs[i] = append(b.msgs[i][:0], m)
}

// flush writes each destination's messages, counting them, and drops
// their references.
func (b *inlineBatch) flush() {
	if b.fan != nil {
		b.flushFan()
	}
	for i, port := range b.ports {
		ms := b.msgs[i]
		b.bufs, b.hdrs = b.bufs[:0], b.hdrs[:0]
		for _, m := range ms {
			b.bufs = append(b.bufs, m.bytes())
			b.hdrs = append(b.hdrs, m.vh)
		}
		n := port.dbw.WriteDirectBatch(b.bufs, b.hdrs)
		port.countOut(b.bufs[:n])
		if n < len(ms) {
			port.drops.Add(uint64(len(ms) - n))
		}
		for j, m := range ms {
			m.decRef()
			ms[j] = nil
		}
		b.msgs[i] = ms[:0]
	}
	clear(b.ports)
	b.ports = b.ports[:0]
	clear(b.bufs)
	b.cutOf = nil // a message freed may come back from the pool
}
