package engine

import (
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/ipn-project/ipn/endpoint/vnet"
	"github.com/ipn-project/ipn/internal/spec"
)

// msg is one message in flight: a pooled buffer shared by reference among
// all its receivers. Whoever holds a reference calls decRef exactly once.
type msg struct {
	buf  []byte // full pooled buffer; the message is buf[:n]
	n    int
	refs atomic.Int32
	oob  bool
	// vh is the virtio-net header of a message read from an endpoint
	// with offloads (a super-frame to cut, a checksum to finish); zero
	// for an ordinary message.
	vh vnet.Hdr
	// token, if non-nil, is the lossless network's in-flight semaphore; a
	// slot is taken for the message and given back when it is freed.
	token chan struct{}
	class int
	// parent, if set, is the message this one is a second form of; this
	// one holds a reference on it, so a lossless slot lasts until every
	// form of the message is consumed.
	parent *msg
	// done, if set, is the source port's count of messages the engine has
	// finished with (see Port.SetDoneCounter): free adds one.
	done *atomic.Uint64
	// super, if set, is the count of super-frames its port may still
	// have alive (Port.superLeft): free gives one back.
	super *atomic.Int32
	// big, if set, is the network's budget a big message is charged to;
	// whoever swaps it out gives the bytes back (free, or a lossy
	// network once the message is delivered: big.go).
	big atomic.Pointer[budget]
	// home, if set, is the budget that made a big message's buffer, which
	// free gives it back to; charge is the room the message holds in it
	// (the buffer's capacity, or its length if fresh).
	home   *budget
	charge int64
}

// bytes returns the message's payload.
func (m *msg) bytes() []byte { return m.buf[:m.n] }

// decRef drops one reference and frees the message with the last one.
func (m *msg) decRef() {
	if m.refs.Add(-1) == 0 {
		m.free()
	}
}

// free returns the message to its pool, giving back its lossless slot.
func (m *msg) free() {
	if m.token != nil {
		<-m.token
		m.token = nil
	}
	if p := m.parent; p != nil {
		m.parent = nil
		p.decRef()
	}
	if d := m.done; d != nil {
		m.done = nil
		d.Add(1)
	}
	if s := m.super; s != nil {
		m.super = nil
		s.Add(1)
	}
	m.oob = false
	m.vh = vnet.Hdr{}
	m.n = 0
	if m.isBig() {
		m.releaseBig()
		if b := m.home; b != nil {
			// m.buf stays: a lossy network's route may still read the
			// message's fields (releaseBig), never its bytes.
			m.home = nil
			b.recycle(m.buf)
		}
		return // not pooled: the collector takes the message
	}
	pools[m.class].Put(m)
}

// Buffer size classes. A message is read into a buffer of the smallest class
// that holds the network's MTU; an endpoint with offloads reads into the
// last, which holds a super-frame (vnet.MaxFrame).
var classSizes = [...]int{2048, 9216, 65536, 69632}

// MaxMTU is the largest MTU a network may have.
const MaxMTU = spec.MaxMTU

var pools [len(classSizes)]sync.Pool

func init() {
	for i := range pools {
		size, class := classSizes[i], i
		pools[i].New = func() any { return &msg{buf: make([]byte, size), class: class} }
	}
}

// MsgBytes is the most memory one pooled message of a network of that MTU
// holds: its buffer and its bookkeeping. Big messages (over BigMin) are
// bounded apart, by BigBudget.
func MsgBytes(mtu int) int {
	return classSizes[classFor(min(mtu, BigMin))] + int(unsafe.Sizeof(msg{}))
}

// classFor returns the size class whose buffers hold n bytes.
func classFor(n int) int {
	for i, s := range classSizes {
		if n <= s {
			return i
		}
	}
	return len(classSizes) - 1
}

// getMsg returns an empty message from the pool of class c.
func getMsg(c int) *msg {
	return pools[c].Get().(*msg)
}

// newMsgCopy returns a message holding a copy of b, with one reference; a
// copy of a big message is big, charged to no budget (the callers bound
// them otherwise: a hand-over's held messages, a policy's second form).
func newMsgCopy(b []byte) *msg {
	var m *msg
	if len(b) > classSizes[len(classSizes)-1] {
		m = newBig(len(b), nil)
	} else {
		m = getMsg(classFor(len(b)))
	}
	m.n = copy(m.buf, b)
	m.refs.Store(1)
	return m
}
