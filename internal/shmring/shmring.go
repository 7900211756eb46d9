// Package shmring holds the fast path's shared memory: one memfd per port
// with two single-producer, single-consumer rings of fixed-size slots, one
// each way between a member and the daemon, and eventfd wake-ups.
//
// The daemon makes the region (sealed against shrinking and growing) and
// passes its descriptor, with the eventfds, to the one member it is for. A
// member can therefore scribble only over its own rings, and the daemon
// never trusts what it reads back from them: it keeps its own indices in
// private memory, checks every index and length the member publishes, and
// treats any inconsistency as ErrCorrupt.
//
// Layout (little-endian, offsets in bytes):
//
//	0     magic "IPNR", version, slots (power of two), slot size, closed
//	64    ring 0 (member to daemon): tail (producer), at 128 head (consumer),
//	      at 192 consumer-waiting and producer-waiting flags
//	256   ring 1 (daemon to member): the same at 256, 320, 384
//	4096  ring 0's slots, then ring 1's: a u32 length, then the message
package shmring

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/internal/spec"
)

// Ring numbers in a region.
const (
	ToDaemon = 0 // the member produces, the daemon consumes
	ToMember = 1 // the daemon produces, the member consumes
)

const (
	magic      = 0x524e5049 // "IPNR"
	version    = 1
	headerSize = 4096
	ringCtl    = 64  // ring 0's control block; ring 1's is at ringCtl+ringCtlLen
	ringCtlLen = 192 // tail, head, flags: one cache line each
	maxRing    = 4 << 20
	maxSlots   = 512
	minSlots   = 8
)

// ErrCorrupt reports indices or lengths in shared memory that no correct
// peer would publish.
var ErrCorrupt = errors.New("shared ring corrupt")

// Layout is the geometry of a region's rings.
type Layout struct {
	Slots    int // per ring, a power of two
	SlotSize int // bytes per slot: a 4-byte length and the message
}

// LayoutFor returns the layout for messages of up to mtu bytes: up to 512
// slots per ring, fewer for large MTUs so that a ring stays within 4 MiB.
func LayoutFor(mtu int) Layout {
	size := (4 + mtu + 63) &^ 63
	slots := maxSlots
	for slots > minSlots && slots*size > maxRing {
		slots /= 2
	}
	return Layout{Slots: slots, SlotSize: size}
}

// MaxMsg is the longest message a slot holds.
func (l Layout) MaxMsg() int { return l.SlotSize - 4 }

// Bytes is the size of a region of this layout: its header and both rings.
func (l Layout) Bytes() int {
	return headerSize + 2*l.Slots*l.SlotSize
}

func (l Layout) valid() bool {
	return l.Slots >= minSlots && l.Slots <= maxSlots && l.Slots&(l.Slots-1) == 0 &&
		l.SlotSize >= 64 && l.SlotSize%64 == 0 && l.Slots*l.SlotSize <= maxRing
}

// Region is a mapped pair of rings.
type Region struct {
	mem    []byte
	layout Layout
	fd     int // the memfd, or -1 once closed
}

// Create makes a sealed memfd region with layout l, mapped, for the daemon.
func Create(l Layout) (*Region, error) {
	if !l.valid() {
		return nil, fmt.Errorf("ring layout %+v: %w", l, syscall.EINVAL)
	}
	fd, err := unix.MemfdCreate("ipn-ring", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	if err := unix.Ftruncate(fd, int64(l.Bytes())); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("size ring memory: %w", err)
	}
	// The member may not shrink the file under the daemon's mapping.
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS,
		unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("seal ring memory: %w", err)
	}
	mem, err := unix.Mmap(fd, 0, l.Bytes(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("map ring memory: %w", err)
	}
	r := &Region{mem: mem, layout: l, fd: fd}
	r.u32(0).Store(magic)
	r.u32(4).Store(version)
	r.u32(8).Store(uint32(l.Slots))
	r.u32(12).Store(uint32(l.SlotSize))
	return r, nil
}

// Map maps the region of memfd fd, made by Create in another process, and
// checks its header. It takes ownership of fd.
func Map(fd int) (*Region, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("ring memory: %w", err)
	}
	if st.Size < headerSize || st.Size > headerSize+2*maxRing {
		unix.Close(fd)
		return nil, fmt.Errorf("ring memory of %d bytes: %w", st.Size, syscall.EPROTO)
	}
	mem, err := unix.Mmap(fd, 0, int(st.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("map ring memory: %w", err)
	}
	r := &Region{mem: mem, fd: fd}
	r.layout = Layout{Slots: int(r.u32(8).Load()), SlotSize: int(r.u32(12).Load())}
	if r.u32(0).Load() != magic || r.u32(4).Load() != version || !r.layout.valid() ||
		r.layout.Bytes() != len(mem) {
		r.Close()
		return nil, fmt.Errorf("ring memory header: %w", syscall.EPROTO)
	}
	return r, nil
}

// MapAs maps the region of memfd fd with layout l, which the caller knows
// (a daemon taking over from the one that made it), not the one the
// shared header says: it checks only the file's size. It takes ownership
// of fd.
func MapAs(fd int, l Layout) (*Region, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("ring memory: %w", err)
	}
	if !l.valid() || st.Size != int64(l.Bytes()) {
		unix.Close(fd)
		return nil, fmt.Errorf("ring memory of %d bytes, layout %+v: %w", st.Size, l, syscall.EPROTO)
	}
	mem, err := unix.Mmap(fd, 0, l.Bytes(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("map ring memory: %w", err)
	}
	return &Region{mem: mem, layout: l, fd: fd}, nil
}

// Layout returns the region's layout.
func (r *Region) Layout() Layout { return r.layout }

// FD returns the region's memfd, to pass to the member.
func (r *Region) FD() int { return r.fd }

// Close unmaps the region and closes its memfd. Nothing may use its rings
// any more.
func (r *Region) Close() error {
	if r.mem == nil {
		return nil
	}
	err := unix.Munmap(r.mem)
	r.mem = nil
	if r.fd >= 0 {
		unix.Close(r.fd)
		r.fd = -1
	}
	return err
}

// SetClosed marks the region as abandoned by the daemon: the member's port
// is gone.
func (r *Region) SetClosed() { r.u32(16).Store(1) }

// Closed reports whether the daemon marked the region closed.
func (r *Region) Closed() bool { return r.u32(16).Load() != 0 }

// ClosedFlag returns the word Closed reads (non-zero: closed), to poll it
// without the lookup; it is valid until Close.
func (r *Region) ClosedFlag() *atomic.Uint32 { return r.u32(16) }

func (r *Region) u32(off int) *atomic.Uint32 {
	return (*atomic.Uint32)(unsafe.Pointer(&r.mem[off]))
}

func (r *Region) u64(off int) *atomic.Uint64 {
	return (*atomic.Uint64)(unsafe.Pointer(&r.mem[off]))
}

// ring is what both ends of one ring share.
type ring struct {
	tail      *atomic.Uint64 // next slot the producer fills
	head      *atomic.Uint64 // next slot the consumer empties
	consWait  *atomic.Uint32 // the consumer sleeps: wake it after a push
	prodWait  *atomic.Uint32 // the producer sleeps: wake it after a pop
	slots     []byte
	mask      uint64
	n         uint64
	slotSize  int
	maxMsgLen uint32
}

func (r *Region) ring(i int) ring {
	ctl := ringCtl + i*ringCtlLen
	l := r.layout
	start := headerSize + i*l.Slots*l.SlotSize
	return ring{
		tail:      r.u64(ctl),
		head:      r.u64(ctl + 64),
		consWait:  r.u32(ctl + 128),
		prodWait:  r.u32(ctl + 132),
		slots:     r.mem[start : start+l.Slots*l.SlotSize : start+l.Slots*l.SlotSize],
		mask:      uint64(l.Slots - 1),
		n:         uint64(l.Slots),
		slotSize:  l.SlotSize,
		maxMsgLen: uint32(l.MaxMsg()),
	}
}

// Producer fills one ring. Its methods must not be called concurrently.
type Producer struct {
	ring
	next   uint64 // private: the tail as this side knows it
	freeTo uint64 // private: slots below this are known free
	pace   pacer  // private: the traffic WaitSpace has seen
}

// Producer returns the producing end of ring i.
func (r *Region) Producer(i int) *Producer { return r.ProducerAt(i, 0) }

// ProducerAt returns the producing end of ring i resumed at its private
// index next (Next of the end another process had: a daemon taking over),
// whatever the shared memory says.
func (r *Region) ProducerAt(i int, next uint64) *Producer {
	p := &Producer{ring: r.ring(i), next: next}
	p.freeTo = next // Put looks at the consumer's head first
	if next == 0 {
		p.freeTo = p.n
	}
	return p
}

// Next returns the producer's private index: how many it has put.
func (p *Producer) Next() uint64 { return p.next }

// Push copies msg into the next slot and publishes it. It reports false if
// the ring is full; ErrCorrupt if the consumer published an impossible
// head. msg must fit a slot.
func (p *Producer) Push(msg []byte) (bool, error) {
	ok, err := p.Put(msg)
	if ok {
		p.Publish()
	}
	return ok, err
}

// Publish makes the messages Put so far visible to the consumer.
func (p *Producer) Publish() { p.tail.Store(p.next) }

// Put copies msg into the next slot, as Push, but leaves it unpublished
// until Publish: a batch costs one store the consumer sees.
func (p *Producer) Put(msg []byte) (bool, error) {
	if p.next == p.freeTo {
		h := p.head.Load()
		if p.next-h > p.n { // also a head beyond the tail
			return false, ErrCorrupt
		}
		p.freeTo = h + p.n
		if p.next == p.freeTo {
			return false, nil
		}
	}
	off := int(p.next&p.mask) * p.slotSize
	s := p.slots[off : off+p.slotSize]
	n := copy(s[4:], msg)
	*(*uint32)(unsafe.Pointer(&s[0])) = uint32(n)
	p.next++
	return true, nil
}

// Chunks of a message longer than a slot (a member's big message to the
// daemon): the slot's length word carries these flags above the length.
const (
	// ChunkSize is the most one chunk carries: messages longer than it
	// go in chunks, the first of which carries the message's length
	// (u32), then its start.
	ChunkSize = 65536
	ChunkMore = 1 << 31 // more chunks of this message follow
	ChunkNext = 1 << 30 // a chunk after the first
	chunkMask = ChunkMore | ChunkNext
)

// PutChunk copies one chunk of a message into the next slot, as Put, with
// flags (ChunkMore, ChunkNext) in its length word.
func (p *Producer) PutChunk(chunk []byte, flags uint32) (bool, error) {
	ok, err := p.Put(chunk)
	if ok {
		off := int((p.next-1)&p.mask) * p.slotSize
		*(*uint32)(unsafe.Pointer(&p.slots[off])) |= flags & chunkMask
	}
	return ok, err
}

// Full reports whether the ring has no free slot, as of now.
func (p *Producer) Full() (bool, error) {
	if p.next != p.freeTo {
		return false, nil
	}
	h := p.head.Load()
	if p.next-h > p.n {
		return false, ErrCorrupt
	}
	p.freeTo = h + p.n
	return p.next == p.freeTo, nil
}

// Freed returns how many slots the consumer had freed, ever, when the
// producer last looked (Put, Push or Full on a full ring).
func (p *Producer) Freed() uint64 { return p.freeTo - p.n }

// ConsumerWaiting reports, and clears, the consumer's request to be woken.
func (p *Producer) ConsumerWaiting() bool {
	return p.consWait.Load() != 0 && p.consWait.Swap(0) != 0
}

// Consumer empties one ring. Its methods must not be called concurrently.
type Consumer struct {
	ring
	next  uint64 // private: the head as this side knows it
	avail uint64 // private: slots below this are known filled
	pace  pacer  // private: the traffic WaitData has seen
}

// Consumer returns the consuming end of ring i.
func (r *Region) Consumer(i int) *Consumer { return r.ConsumerAt(i, 0) }

// ConsumerAt returns the consuming end of ring i resumed at its private
// index next, as ProducerAt.
func (r *Region) ConsumerAt(i int, next uint64) *Consumer {
	return &Consumer{ring: r.ring(i), next: next, avail: next}
}

// Next returns the consumer's private index: how many it has popped.
func (c *Consumer) Next() uint64 { return c.next }

// Pop copies the next message into b and reports its length (longer than b
// if it was truncated); ok is false if the ring is empty. The slot is
// freed for the producer only by Release.
func (c *Consumer) Pop(b []byte) (n int, ok bool, err error) {
	m, ok, err := c.Peek()
	copy(b, m)
	return len(m), ok, err
}

// Peek is Pop without the copy: msg is the message in its slot, which
// stays the consumer's until Release.
func (c *Consumer) Peek() (msg []byte, ok bool, err error) {
	if c.next == c.avail {
		t := c.tail.Load()
		if t-c.next > c.n {
			return nil, false, ErrCorrupt
		}
		c.avail = t
		if c.next == t {
			return nil, false, nil
		}
	}
	off := int(c.next&c.mask) * c.slotSize
	s := c.slots[off : off+c.slotSize]
	l := atomic.LoadUint32((*uint32)(unsafe.Pointer(&s[0])))
	if l > c.maxMsgLen {
		return nil, false, ErrCorrupt
	}
	c.next++
	return s[4 : 4+l], true, nil
}

// PopChunk is Pop for a ring that may hold chunks (PutChunk): it also
// returns the slot's chunk flags.
func (c *Consumer) PopChunk(b []byte) (n int, flags uint32, ok bool, err error) {
	if c.next == c.avail {
		t := c.tail.Load()
		if t-c.next > c.n {
			return 0, 0, false, ErrCorrupt
		}
		c.avail = t
		if c.next == t {
			return 0, 0, false, nil
		}
	}
	off := int(c.next&c.mask) * c.slotSize
	s := c.slots[off : off+c.slotSize]
	w := atomic.LoadUint32((*uint32)(unsafe.Pointer(&s[0])))
	l, flags := w&^chunkMask, w&chunkMask
	if l > c.maxMsgLen {
		return 0, 0, false, ErrCorrupt
	}
	copy(b, s[4:4+l])
	c.next++
	return int(l), flags, true, nil
}

// Unpop puts back the message Pop or PopChunk just took, for the next.
func (c *Consumer) Unpop() { c.next-- }

// Empty reports whether no message waits, as of now.
func (c *Consumer) Empty() (bool, error) {
	if c.next != c.avail {
		return false, nil
	}
	t := c.tail.Load()
	if t-c.next > c.n {
		return false, ErrCorrupt
	}
	c.avail = t
	return c.next == t, nil
}

// Release publishes the slots popped so far as free.
func (c *Consumer) Release() {
	c.head.Store(c.next)
}

// ProducerWaiting reports, and clears, the producer's request to be woken.
func (c *Consumer) ProducerWaiting() bool {
	return c.prodWait.Load() != 0 && c.prodWait.Swap(0) != 0
}

// Waker is one eventfd: the side that sleeps reads it, the other side
// writes it.
type Waker struct {
	f   *os.File
	raw syscall.RawConn
}

// NewWaker makes a non-blocking eventfd.
func NewWaker() (*Waker, error) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	return WakerFromFD(fd)
}

// WakerFromFD takes ownership of eventfd fd (received from the daemon).
func WakerFromFD(fd int) (*Waker, error) {
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), "ipn-wake")
	raw, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	return &Waker{f: f, raw: raw}, nil
}

// FD returns the eventfd, to pass to the other side; it stays the Waker's.
func (w *Waker) FD() int { return int(w.f.Fd()) }

var one = [8]byte{1}

// Wake makes the sleeping side's Sleep return.
func (w *Waker) Wake() {
	w.raw.Write(func(fd uintptr) bool {
		unix.Write(int(fd), one[:])
		return true
	})
}

// Sleep waits until Wake was called since the last Sleep, the deadline set
// by SetDeadline passes (os.ErrDeadlineExceeded), or Close (os.ErrClosed).
func (w *Waker) Sleep() error {
	var b [8]byte
	_, err := w.f.Read(b[:])
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			return pe.Err
		}
	}
	return err
}

// SetDeadline sets when Sleep gives up; the zero time means never.
func (w *Waker) SetDeadline(t time.Time) error { return w.f.SetReadDeadline(t) }

// Close releases the eventfd and makes a Sleep in progress return.
func (w *Waker) Close() error { return w.f.Close() }

// Spin is how long a side polls its ring at most before it sleeps:
// IPN_SPIN in the environment (a duration such as 50us, or 0 never to
// poll), else 100µs. A side polls only while its recent messages came
// close together (see pacer), and gives the processor away between polls
// (sched_yield), so that on a busy machine the processes it waits for run.
var Spin = spinFromEnv(os.Getenv(spec.SpinEnv), 100*time.Microsecond)

func spinFromEnv(v string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(v); err == nil && d >= 0 && d <= time.Second {
		return d
	}
	return def
}

// WaitData waits until c has a message: it polls for up to Spin if
// messages came close together lately, then asks the producer to wake it
// and sleeps on w (see pacer). done is checked while polling and before
// sleeping; when it reports true WaitData returns nil.
func (c *Consumer) WaitData(w *Waker, done func() bool) error {
	c.pace.observe(c.next)
	return wait(c.Empty, c.consWait, w, done, &c.pace)
}

// WaitSpace waits until p has a free slot, as WaitData waits for data.
func (p *Producer) WaitSpace(w *Waker, done func() bool) error {
	p.pace.observe(p.next)
	return wait(p.Full, p.prodWait, w, done, &p.pace)
}

// pacer is one waiter's running estimates of its traffic: the gap between
// its messages (a consumer's messages popped, a producer's put), that is
// at each wait the time since its previous wait over the messages since,
// each such sample counted as at most twice the polling threshold; and
// the messages per wait. Both are exponentially weighted means of weight
// 1/4.
//
// Polling through a wait costs the whole wait in processor time when the
// processor would otherwise idle (a poll that yields to a busy processor
// costs little); a sleep costs the eventfd write (by the other side), two
// context switches and, on a virtual machine, the exit from an idle
// processor: some tens of µs, and as much latency. So a waiter polls, for
// up to Spin, while its messages came less than Spin apart,
// or while they queue up behind it (queuedUp a wait): the other side
// is then the faster, and sleeping would make it pay a wake-up per batch
// (a daemon that fans out to 32 sleeping receivers does 32 eventfd writes
// a message). It sleeps at once otherwise: 5,000 messages/s, one a wait
// 200 µs apart, sleep; 20,000 (50 µs apart) poll. One long idle wait does not stop a stream's polling;
// a stream polls again within a few waits after an idle time.
type pacer struct {
	gap   int64  // ns
	batch int64  // messages a wait, in 16ths
	start int64  // when the previous wait began, on the monotonic clock (since epoch); 0: none yet
	next  uint64 // the waiter's index (Next) then
}

const (
	spinShare = 1 // a waiter polls while its gap is under this share of Spin,
	queuedUp  = 4 // or while it finds this many messages a wait
)

// epoch is the origin of the pacers' clock.
var epoch = time.Now()

// observe folds the messages since the previous wait into the estimates,
// as a wait begins with the waiter's index at next. A wait after none (a
// wake-up that found nothing, a deadline) continues the previous one.
func (p *pacer) observe(next uint64) {
	if p.start != 0 && next == p.next {
		return
	}
	now := int64(time.Since(epoch))
	if p.start != 0 {
		n := next - p.next
		v := min((now-p.start)/int64(min(n, 1<<20)), 2*int64(Spin)/spinShare)
		p.gap += (v - p.gap) / 4
		p.batch += (int64(min(n, 64))*16 - p.batch) / 4
	}
	p.start, p.next = now, next
}

// polls reports whether the wait should poll first.
func (p *pacer) polls() bool {
	return Spin > 0 && (p.gap < int64(Spin)/spinShare || p.batch >= queuedUp*16)
}

// wait waits while blocked reports true: it polls if pc says so, then sets
// asleep (for the other side to wake it through w), looks once more, and
// sleeps.
func wait(blocked func() (bool, error), asleep *atomic.Uint32, w *Waker, done func() bool, pc *pacer) error {
	polled := !pc.polls()
	for {
		if b, err := blocked(); err != nil || !b {
			return err
		}
		if done() {
			return nil
		}
		if !polled {
			polled = true
			if spin(func() bool { b, err := blocked(); return err != nil || !b || done() }) {
				continue
			}
		}
		asleep.Store(1)
		if b, err := blocked(); err != nil || !b || done() {
			asleep.Store(0)
			return err
		}
		if err := w.Sleep(); err != nil {
			asleep.Store(0)
			return err
		}
	}
}

// spin polls ready for up to Spin, yielding the processor every few
// hundred polls, and reports whether it became true.
func spin(ready func() bool) bool {
	if Spin <= 0 {
		return false
	}
	start := time.Now()
	for i := 0; ; i++ {
		if ready() {
			return true
		}
		if i%256 == 255 {
			if time.Since(start) > Spin {
				return false
			}
			// Other processes first (the peer this side waits for may
			// share its processor), then this one's other goroutines.
			unix.Syscall(unix.SYS_SCHED_YIELD, 0, 0, 0)
			runtime.Gosched()
		}
	}
}
