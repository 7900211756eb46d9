// Package loop is the loop protection IPN's hub and switch policies share.
//
// A network's links to other networks (cables, VDE clients: the ports that
// joined as links) may close a loop, through which a broadcast would
// circulate for ever. Every interval the Detector sends a probe, a frame
// of ethertype 0x88b5 (local experimental) to the locally administered
// multicast address 03:49:50:4e:00:01 carrying the detector's random ID,
// the port it left by and a random nonce drawn for that port and round,
// out of every link port, and only those: members that are not links never
// see a probe. The policy hands the probes it
// routes to the Detector, which floods other detectors' probes to the
// other link ports, and blocks the higher numbered of ports a and b when
// one of its own probes, sent out of a, comes back in on b. A probe is its
// own only with the nonce it gave port a in this round or the last: a
// member that read a probe cannot forge one naming another port, to have
// a port it does not hold blocked.
//
// Two detectors on one loop would both block, cutting the networks apart;
// so a detector forwards only the probes of detectors whose ID is higher
// than its own. On each loop only the detector of highest ID sees its
// probes come back, and it alone blocks a port.
//
// A blocked port forwards nothing either way (probes still go out of it
// and are read), and is unblocked when the probes have stopped coming
// back for three to five intervals, or when it leaves. A blocked port is
// always a link port.
package loop

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ipn-project/ipn/internal/spec"
	"github.com/ipn-project/ipn/policy"
)

// Probe interval settings: SetInterval and ParseInterval refuse values
// outside MinInterval..MaxInterval, but 0, which turns probes off.
const (
	// DefaultInterval is the probe interval of a new Detector.
	DefaultInterval = 2 * time.Second
	// MinInterval is the shortest interval other than 0 (off): probes go
	// out of every link port, so a short one would keep the daemon busy.
	MinInterval = 10 * time.Millisecond
	// MaxInterval is the longest interval.
	MaxInterval = time.Hour
)

// Probe frame format (internal/spec holds the facts other packages share).
const (
	// EtherType is the probes' ethertype (IEEE local experimental).
	EtherType = spec.ProbeEtherType
	// FrameLen is a probe's length: Ethernet's minimum frame (without
	// FCS), padded with zeros after the header, magic, ID, port and nonce.
	FrameLen = spec.ProbeLen
	// contentLen is what any probe must hold: header, magic, ID, port.
	contentLen = etherHeader + 8 + 8 + 2
	// ownLen is what a probe of ours holds: the nonce after the port.
	ownLen      = contentLen + 8
	etherHeader = 14
)

// Dst is the probes' destination, a locally administered multicast MAC.
var Dst = spec.ProbeDst

// magic starts a probe's payload.
var magic = []byte("IPNLOOP1")

// IsProbe reports whether frame is a loop probe (by its destination and
// ethertype; the Detector checks the rest).
func IsProbe(frame []byte) bool { return spec.IsProbe(frame) }

// ParseInterval reads a probe interval: a duration in
// MinInterval..MaxInterval, or 0 for off. Its error wraps EINVAL.
func ParseInterval(value string) (time.Duration, error) {
	d, err := time.ParseDuration(value)
	if err != nil || (d != 0 && (d < MinInterval || d > MaxInterval)) {
		return 0, fmt.Errorf("loop.interval %q: want 0 (off) or a duration in %v..%v: %w", value, MinInterval, MaxInterval, syscall.EINVAL)
	}
	return d, nil
}

// probeTo is where one probe of a round goes, with its nonce.
type probeTo struct {
	port  int
	nonce uint64
}

// block is a blocked port's state.
type block struct {
	lastLoop time.Time     // when a probe last showed the loop
	holdFor  time.Duration // how long after lastLoop the block stays
}

// Detector is one network's loop protection. Its methods may be called
// concurrently; it calls nothing of its policy, and Network.Emit only
// outside its lock, so a policy may call it under its own lock.
type Detector struct {
	net policy.Network
	now func() time.Time
	id  [8]byte
	src [6]byte // probes' source MAC

	mu       sync.Mutex
	interval time.Duration  // 0: no probes
	links    policy.PortSet // connected link ports
	blocks   map[int]block
	started  bool // the prober runs
	manual   bool // no prober: the caller calls Probe
	closed   bool

	// blocked is a snapshot of the blocked ports, replaced under mu and
	// read without locks.
	blocked atomic.Pointer[policy.PortSet]

	// nonces[p] is the nonce of this round's probe out of port p, prev
	// the last round's (a probe may come back after the next went out);
	// 0 is none.
	nonces, prev []uint64

	probeMu sync.Mutex // serializes Probe
	frame   []byte     // guarded by probeMu
	to      []probeTo  // guarded by probeMu
	rnd     []byte     // guarded by probeMu: random bytes for the nonces

	kick chan struct{} // wakes the prober: probe now, or re-read interval
	stop chan struct{}
	wg   sync.WaitGroup
}

// New returns a Detector for net with DefaultInterval. With now nil, it
// reads the time from time.Now and its prober starts with the first link
// port (Close stops it); with a clock of the caller's (a test's), no
// prober runs: the caller calls Probe.
func New(net policy.Network, now func() time.Time) *Detector {
	manual := now != nil
	if now == nil {
		now = time.Now
	}
	d := &Detector{
		manual:   manual,
		net:      net,
		now:      now,
		interval: DefaultInterval,
		blocks:   make(map[int]block),
		frame:    make([]byte, FrameLen),
		kick:     make(chan struct{}, 1),
		stop:     make(chan struct{}),
	}
	rand.Read(d.id[:])
	d.src = [6]byte{0x02, d.id[0], d.id[1], d.id[2], d.id[3], d.id[4]}
	copy(d.frame, Dst[:])
	copy(d.frame[6:], d.src[:])
	binary.BigEndian.PutUint16(d.frame[12:], EtherType)
	copy(d.frame[etherHeader:], magic)
	copy(d.frame[etherHeader+8:], d.id[:])
	d.blocked.Store(&policy.PortSet{})
	return d
}

// LinkPort makes port a link port: probes go out of it from now on (the
// first at once). It is for policy.LinkPorter.
func (d *Detector) LinkPort(port int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return
	}
	d.links.Add(port)
	if !d.started && !d.manual {
		d.started = true
		d.wg.Add(1)
		go d.prober()
	}
	d.wakeLocked()
}

// DeletePort forgets port, which left: it is no longer a link, nor blocked.
func (d *Detector) DeletePort(port int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.links.Remove(port)
	if _, ok := d.blocks[port]; ok {
		delete(d.blocks, port)
		d.publishLocked()
	}
}

// Blocked returns the blocked ports. The set is read-only and does not
// change: a new one replaces it when a block starts or ends.
func (d *Detector) Blocked() *policy.PortSet { return d.blocked.Load() }

// BlockedList returns the blocked ports, in order.
func (d *Detector) BlockedList() []int {
	b := d.Blocked()
	l := []int{}
	for p := b.Next(0); p >= 0; p = b.Next(p + 1) {
		l = append(l, p)
	}
	return l
}

// BlockedJSON returns the blocked ports as a JSON list.
func (d *Detector) BlockedJSON() string {
	b, _ := json.Marshal(d.BlockedList())
	return string(b)
}

// Interval returns the probe interval (0: off).
func (d *Detector) Interval() time.Duration {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.interval
}

// SetInterval sets the probe interval: 0 turns probes off and ends every
// block; otherwise it must be in MinInterval..MaxInterval (EINVAL).
func (d *Detector) SetInterval(iv time.Duration) error {
	if iv != 0 && (iv < MinInterval || iv > MaxInterval) {
		return fmt.Errorf("loop.interval %v: want 0 (off) or a duration in %v..%v: %w", iv, MinInterval, MaxInterval, syscall.EINVAL)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.interval = iv
	if iv == 0 && len(d.blocks) > 0 {
		clear(d.blocks)
		d.publishLocked()
	}
	d.wakeLocked()
	return nil
}

// Route handles a frame for which IsProbe holds, sent into the network by
// port src, in out: another detector's probe from a link goes to the other
// link ports among members that are not blocked, if its ID is higher than
// ours; one of ours that left by another link port blocks one of the two.
// A probe too short or without the magic is Invalid; others go nowhere.
func (d *Detector) Route(src int, f []byte, members *policy.PortSet, out *policy.Delivery) {
	if len(f) < contentLen || !bytes.Equal(f[etherHeader:etherHeader+8], magic) {
		out.Invalid = true
		return
	}
	now := d.now()
	id := f[etherHeader+8 : etherHeader+16]
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.links.Has(src) {
		return // not from a link: no probe of anyone's
	}
	blocked := d.blocked.Load()
	if !bytes.Equal(id, d.id[:]) {
		if blocked.Has(src) || (d.interval > 0 && bytes.Compare(id, d.id[:]) < 0) {
			return
		}
		for p := d.links.Next(0); p >= 0; p = d.links.Next(p + 1) {
			if p != src && members.Has(p) && !blocked.Has(p) {
				out.Ports.Add(p)
			}
		}
		return
	}
	sent := int(binary.BigEndian.Uint16(f[etherHeader+16:]))
	if sent == src || !d.links.Has(sent) || d.interval == 0 {
		return // reflected on the port it left by: no loop of ours
	}
	if !d.sentLocked(sent, f) {
		return // not a probe we sent out of that port: forged or stale
	}
	p := max(sent, src)
	b, ok := d.blocks[p]
	if !ok {
		// Jitter the hold so that blocks on one loop do not end together.
		var r [1]byte
		rand.Read(r[:])
		b.holdFor = 3*d.interval + time.Duration(r[0])*2*d.interval/255
	}
	b.lastLoop = now
	d.blocks[p] = b
	if !ok {
		d.publishLocked()
	}
}

// sentLocked reports whether f carries the nonce of a probe sent out of
// port in this round or the last. Caller must hold d.mu.
func (d *Detector) sentLocked(port int, f []byte) bool {
	if len(f) < ownLen {
		return false
	}
	n := binary.BigEndian.Uint64(f[contentLen:])
	return n != 0 && (port < len(d.nonces) && d.nonces[port] == n || port < len(d.prev) && d.prev[port] == n)
}

// Probe ends the blocks that outlived their loop and sends a probe out of
// every link port, each with a new nonce; the prober calls it every
// interval.
func (d *Detector) Probe() {
	now := d.now()
	d.probeMu.Lock()
	defer d.probeMu.Unlock()
	d.mu.Lock()
	changed := false
	for p, b := range d.blocks {
		if now.Sub(b.lastLoop) > b.holdFor {
			delete(d.blocks, p)
			changed = true
		}
	}
	if changed {
		d.publishLocked()
	}
	d.to = d.to[:0]
	if d.interval > 0 {
		for p := d.links.Next(0); p >= 0; p = d.links.Next(p + 1) {
			d.to = append(d.to, probeTo{port: p})
		}
	}
	if len(d.to) > 0 {
		// A new round: this round's nonces become the last's.
		d.prev, d.nonces = d.nonces, d.prev
		clear(d.nonces)
		if need := d.to[len(d.to)-1].port + 1; len(d.nonces) < need {
			d.nonces = append(d.nonces, make([]uint64, need-len(d.nonces))...)
		}
		if need := 8 * len(d.to); len(d.rnd) < need {
			d.rnd = make([]byte, need)
		}
		rand.Read(d.rnd)
		for i := range d.to {
			n := binary.BigEndian.Uint64(d.rnd[8*i:]) | 1 // never 0, which is none
			d.to[i].nonce = n
			d.nonces[d.to[i].port] = n
		}
	}
	d.mu.Unlock()
	for _, t := range d.to {
		binary.BigEndian.PutUint16(d.frame[etherHeader+16:], uint16(t.port))
		binary.BigEndian.PutUint64(d.frame[contentLen:], t.nonce)
		d.net.Emit(t.port, d.frame)
	}
}

// Close stops the prober and waits for it. It is idempotent.
func (d *Detector) Close() {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return
	}
	d.closed = true
	close(d.stop)
	d.mu.Unlock()
	d.wg.Wait()
}

// publishLocked replaces the blocked snapshot. Caller must hold d.mu.
func (d *Detector) publishLocked() {
	s := &policy.PortSet{}
	for p := range d.blocks {
		s.Add(p)
	}
	d.blocked.Store(s)
}

// wakeLocked wakes the prober, if it runs. Caller must hold d.mu.
func (d *Detector) wakeLocked() {
	if !d.started {
		return
	}
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

// prober probes every interval, and at once when woken (a link joined,
// the interval changed).
func (d *Detector) prober() {
	defer d.wg.Done()
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		iv := d.Interval()
		var tick <-chan time.Time
		if iv > 0 {
			t.Reset(iv)
			tick = t.C
		} else {
			t.Stop()
		}
		select {
		case <-d.stop:
			return
		case <-d.kick:
		case <-tick:
		}
		d.Probe()
	}
}
