package shmring_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/internal/shmring"
)

// The region's layout as the package documents it: what a member sees in
// the memory it maps.
const (
	fzHeaderSize = 4096
	fzCtl        = 64  // ring 0's control block
	fzCtlLen     = 192 // ring 1's follows
	fzTail       = 0   // offsets in a control block: u64 tail,
	fzHead       = 64  // u64 head,
	fzConsWait   = 128 // u32 consumer waiting,
	fzProdWait   = 132 // u32 producer waiting
	fzClosed     = 16  // u32 in the header
)

func fzCtlOff(ring, field int) int { return fzCtl + ring*fzCtlLen + field }

// fzRegion is one region as both sides have it: the daemon's (Create), an
// honest member's (Map), and the raw bytes a hostile member writes through
// its own mapping of the memfd.
type fzRegion struct {
	layout   shmring.Layout
	daemon   *shmring.Region
	member   *shmring.Region
	mem      []byte // the member's raw mapping
	pristine []byte // mem as Create left it
}

// fzRegions are made once per process (the fuzz function runs one input
// at a time) and reset before each input.
var fzRegions = map[shmring.Layout]*fzRegion{}

// fzLayouts are small layouts, so that inputs wrap the rings often.
var fzLayouts = []shmring.Layout{{Slots: 8, SlotSize: 64}, {Slots: 16, SlotSize: 64}, {Slots: 8, SlotSize: 192}}

func fzDup(t *testing.T, fd int) int {
	t.Helper()
	d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func fzGetRegion(t *testing.T, l shmring.Layout) *fzRegion {
	if r := fzRegions[l]; r != nil {
		copy(r.mem, r.pristine)
		return r
	}
	d, err := shmring.Create(l)
	if err != nil {
		t.Fatal(err)
	}
	m, err := shmring.Map(fzDup(t, d.FD()))
	if err != nil {
		t.Fatal(err)
	}
	raw := fzDup(t, d.FD())
	defer unix.Close(raw)
	var st unix.Stat_t
	if err := unix.Fstat(raw, &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != int64(fzHeaderSize+2*l.Slots*l.SlotSize) {
		t.Fatalf("region of %d bytes for %+v", st.Size, l)
	}
	mem, err := unix.Mmap(raw, 0, int(st.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	r := &fzRegion{layout: l, daemon: d, member: m, mem: mem, pristine: bytes.Clone(mem)}
	fzRegions[l] = r
	return r
}

// fzScript hands out an input's bytes; past its end, zeros.
type fzScript struct{ b []byte }

func (s *fzScript) more() bool { return len(s.b) > 0 }

func (s *fzScript) byte() byte {
	if len(s.b) == 0 {
		return 0
	}
	c := s.b[0]
	s.b = s.b[1:]
	return c
}

func (s *fzScript) bytes(n int) []byte {
	out := make([]byte, n)
	for i := range out {
		out[i] = s.byte()
	}
	return out
}

func (s *fzScript) u16() int { return int(s.byte())<<8 | int(s.byte()) }

// Ops of a script. The member's: it scribbles, or plays by the rules.
const (
	opRawWrite          = iota // u16 offset, n, n bytes: anywhere in the region
	opSetWord                  // word, mode, value: a control or header word
	opSetLen                   // ring, slot, mode, value: a slot's length
	opMemberPut                // u16 length: a message into its ring
	opMemberPub                // publish what it put
	opMemberPop                // take a message from the daemon's ring
	opMemberRel                // release what it took
	opDaemonPop                // the daemon's side: u16 buffer size
	opDaemonEmpty              //
	opDaemonRel                //
	opDaemonProdWaiting        //
	opDaemonWaitData           // with done true: it must not sleep
	opDaemonPut                // u16 length
	opDaemonPush               // u16 length
	opDaemonPub                //
	opDaemonFull               //
	opDaemonConsWaiting        //
	opDaemonWaitSpace          //
	opDaemonFreed              //
	opDaemonClosed             //
	opCount
)

// fzMsg is message number seq of length n: bytes no other message of a
// short run has at the same place.
func fzMsg(seq, n int) []byte {
	m := make([]byte, n)
	for i := range m {
		m[i] = byte(seq*7 + i)
	}
	return m
}

// fzChecker runs one script against one region.
type fzChecker struct {
	t      *testing.T
	r      *fzRegion
	l      shmring.Layout
	n      uint64 // slots
	maxMsg int
	before []byte // the region before a daemon op

	dc *shmring.Consumer // the daemon's: ring 0
	dp *shmring.Producer // the daemon's: ring 1
	mp *shmring.Producer // the honest member's: ring 0
	mc *shmring.Consumer // the honest member's: ring 1

	// What happened, as the test counts it. While the member has not
	// scribbled (honest), the rings must behave exactly as a queue.
	honest    bool
	corrupt   bool     // the daemon reported ErrCorrupt
	mPut      [][]byte // messages the member put, in order
	mPub      int      // how many of them it published
	dPop      int      // how many the daemon popped
	dRel      int      // the head the daemon last published
	dPut      [][]byte // messages the daemon put
	dPub      int
	mPop      int
	mRel      int
	lastFreed uint64
}

// slot returns the bounds of ring i's slot for message index seq.
func (c *fzChecker) slot(ring int, seq int) (lo, hi int) {
	lo = fzHeaderSize + ring*c.l.Slots*c.l.SlotSize + (seq%c.l.Slots)*c.l.SlotSize
	return lo, lo + c.l.SlotSize
}

// snap records the region before a daemon op.
func (c *fzChecker) snap() { copy(c.before, c.r.mem) }

// changedOnly fails unless the daemon op changed nothing outside ranges.
func (c *fzChecker) changedOnly(op string, ranges ...[2]int) {
	c.t.Helper()
	if bytes.Equal(c.r.mem, c.before) {
		return
	}
	for i := range c.r.mem {
		if c.r.mem[i] == c.before[i] {
			continue
		}
		ok := false
		for _, rg := range ranges {
			if i >= rg[0] && i < rg[1] {
				ok = true
				break
			}
		}
		if !ok {
			c.t.Fatalf("%s wrote byte %d of the region (%#x to %#x), outside %v", op, i, c.before[i], c.r.mem[i], ranges)
		}
	}
}

// checkErr fails unless err is nil or ErrCorrupt, and counts a corruption.
func (c *fzChecker) checkErr(op string, err error) {
	c.t.Helper()
	if err == nil {
		return
	}
	if !errors.Is(err, shmring.ErrCorrupt) {
		c.t.Fatalf("%s: error %v is not ErrCorrupt", op, err)
	}
	if c.honest {
		c.t.Fatalf("%s: %v from a member that followed the protocol", op, err)
	}
	c.corrupt = true
}

func (c *fzChecker) u64(off int) uint64 { return binary.LittleEndian.Uint64(c.r.mem[off:]) }
func (c *fzChecker) u32(off int) uint32 { return binary.LittleEndian.Uint32(c.r.mem[off:]) }

func (c *fzChecker) run(s *fzScript) {
	t := c.t
	guard := make([]byte, c.maxMsg+16) // Pop's buffer and what follows it
	for s.more() {
		switch op := s.byte() % opCount; op {
		case opRawWrite:
			off := s.u16() % len(c.r.mem)
			n := int(s.byte()%32) + 1
			copy(c.r.mem[off:], s.bytes(n))
			c.honest = false
		case opSetWord:
			// Words 0-7: ring 0's and ring 1's tail, head, flags; 8-12:
			// the header's magic, version, slots, slot size, closed.
			w := int(s.byte() % 13)
			mode := s.byte()
			if w < 8 {
				ring, field := w/4, []int{fzTail, fzHead, fzConsWait, fzProdWait}[w%4]
				off := fzCtlOff(ring, field)
				if field == fzTail || field == fzHead {
					var v uint64
					if mode&1 != 0 {
						v = binary.LittleEndian.Uint64(s.bytes(8))
					} else {
						v = c.u64(off) + uint64(int64(int8(s.byte())))
					}
					binary.LittleEndian.PutUint64(c.r.mem[off:], v)
				} else {
					binary.LittleEndian.PutUint32(c.r.mem[off:], uint32(mode))
				}
			} else {
				binary.LittleEndian.PutUint32(c.r.mem[(w-8)*4:], binary.LittleEndian.Uint32(s.bytes(4)))
			}
			c.honest = false
		case opSetLen:
			ring := int(s.byte() & 1)
			lo, _ := c.slot(ring, int(s.byte()))
			mode := s.byte()
			var v uint32
			if mode&1 != 0 {
				v = binary.LittleEndian.Uint32(s.bytes(4))
			} else {
				v = uint32(c.maxMsg + int(int8(s.byte())))
			}
			binary.LittleEndian.PutUint32(c.r.mem[lo:], v)
			c.honest = false

		case opMemberPut:
			msg := fzMsg(len(c.mPut), s.u16()%(c.maxMsg+1))
			ok, err := c.mp.Put(msg)
			if c.honest {
				if err != nil || ok != (len(c.mPut)-c.dRel < int(c.n)) {
					t.Fatalf("member put %d with %d released: %v, %v", len(c.mPut), c.dRel, ok, err)
				}
			}
			if ok {
				c.mPut = append(c.mPut, msg)
			}
		case opMemberPub:
			c.mp.Publish()
			c.mPub = len(c.mPut)
		case opMemberPop:
			b := make([]byte, c.maxMsg)
			n, ok, err := c.mc.Pop(b)
			if c.honest {
				if err != nil || ok != (c.mPop < c.dPub) {
					t.Fatalf("member pop %d of %d published: %v, %v", c.mPop, c.dPub, ok, err)
				}
				if ok && !bytes.Equal(b[:n], c.dPut[c.mPop]) {
					t.Fatalf("member popped %x, the daemon put %x", b[:n], c.dPut[c.mPop])
				}
			}
			if ok {
				c.mPop++
			}
		case opMemberRel:
			c.mc.Release()
			c.mRel = c.mPop

		case opDaemonPop:
			size := s.u16() % (c.maxMsg + 8)
			for i := range guard {
				guard[i] = 0xa5
			}
			lo, hi := c.slot(shmring.ToDaemon, c.dPop)
			c.snap()
			n, ok, err := c.dc.Pop(guard[:size])
			c.changedOnly("Pop")
			c.checkErr("Pop", err)
			if !ok {
				if n != 0 {
					t.Fatalf("Pop: no message, yet length %d", n)
				}
				if c.honest && c.dPop < c.mPub {
					t.Fatalf("Pop: empty with %d popped of %d published", c.dPop, c.mPub)
				}
			} else {
				slotLen := int(binary.LittleEndian.Uint32(c.before[lo:]))
				if n < 0 || n > c.maxMsg || n != slotLen {
					t.Fatalf("Pop: length %d; the slot says %d, a slot holds %d", n, slotLen, c.maxMsg)
				}
				k := min(n, size)
				if !bytes.Equal(guard[:k], c.before[lo+4:lo+4+k]) {
					t.Fatalf("Pop: copied %x, the slot holds %x", guard[:k], c.before[lo+4:min(lo+4+k, hi)])
				}
				for i := k; i < len(guard); i++ {
					if guard[i] != 0xa5 {
						t.Fatalf("Pop of a %d-byte message into %d bytes wrote byte %d", n, size, i)
					}
				}
				if c.honest {
					if c.dPop >= c.mPub {
						t.Fatalf("Pop: message %d, only %d published", c.dPop, c.mPub)
					}
					if !bytes.Equal(guard[:k], c.mPut[c.dPop][:k]) || n != len(c.mPut[c.dPop]) {
						t.Fatalf("Pop: message %d is %x (%d bytes), the member put %x", c.dPop, guard[:k], n, c.mPut[c.dPop])
					}
				}
				c.dPop++
			}
		case opDaemonEmpty:
			c.snap()
			empty, err := c.dc.Empty()
			c.changedOnly("Empty")
			c.checkErr("Empty", err)
			if err != nil && empty {
				t.Fatal("Empty: true with an error")
			}
			if c.honest && empty != (c.dPop == c.mPub) {
				t.Fatalf("Empty: %v with %d popped of %d published", empty, c.dPop, c.mPub)
			}
		case opDaemonRel:
			c.snap()
			c.dc.Release()
			off := fzCtlOff(shmring.ToDaemon, fzHead)
			c.changedOnly("Release", [2]int{off, off + 8})
			if h := c.u64(off); h != uint64(c.dPop) {
				t.Fatalf("Release: head %d, %d popped", h, c.dPop)
			}
			c.dRel = c.dPop
		case opDaemonProdWaiting:
			off := fzCtlOff(shmring.ToDaemon, fzProdWait)
			was := c.u32(off)
			c.snap()
			got := c.dc.ProducerWaiting()
			c.changedOnly("ProducerWaiting", [2]int{off, off + 4})
			if got != (was != 0) || (got && c.u32(off) != 0) || (!got && c.u32(off) != was) {
				t.Fatalf("ProducerWaiting: %v with flag %d, now %d", got, was, c.u32(off))
			}
		case opDaemonWaitData:
			c.snap()
			err := c.dc.WaitData(nil, func() bool { return true })
			c.changedOnly("WaitData")
			c.checkErr("WaitData", err)

		case opDaemonPut, opDaemonPush:
			msg := fzMsg(1000+len(c.dPut), s.u16()%(c.maxMsg+1))
			lo, hi := c.slot(shmring.ToMember, len(c.dPut))
			tail := fzCtlOff(shmring.ToMember, fzTail)
			c.snap()
			var ok bool
			var err error
			name := "Put"
			if op == opDaemonPush {
				name = "Push"
				ok, err = c.dp.Push(msg)
			} else {
				ok, err = c.dp.Put(msg)
			}
			c.checkErr(name, err)
			if err != nil && ok {
				t.Fatalf("%s: ok with an error", name)
			}
			if !ok {
				c.changedOnly(name + " refused")
				if c.honest && len(c.dPut)-c.mRel < int(c.n) {
					t.Fatalf("%s refused with %d put, %d released", name, len(c.dPut), c.mRel)
				}
				break
			}
			if op == opDaemonPush {
				c.changedOnly(name, [2]int{lo, hi}, [2]int{tail, tail + 8})
			} else {
				c.changedOnly(name, [2]int{lo, hi})
			}
			if l := binary.LittleEndian.Uint32(c.r.mem[lo:]); int(l) != len(msg) || !bytes.Equal(c.r.mem[lo+4:lo+4+len(msg)], msg) {
				t.Fatalf("%s: slot holds %d bytes %x, want %x", name, l, c.r.mem[lo+4:lo+4+min(int(l), c.maxMsg)], msg)
			}
			if c.honest && len(c.dPut)-c.mRel >= int(c.n) {
				t.Fatalf("%s: accepted with %d put, %d released", name, len(c.dPut), c.mRel)
			}
			c.dPut = append(c.dPut, msg)
			if op == opDaemonPush {
				c.dPub = len(c.dPut)
				if v := c.u64(tail); v != uint64(c.dPub) {
					t.Fatalf("Push: tail %d, %d put", v, c.dPub)
				}
			}
		case opDaemonPub:
			tail := fzCtlOff(shmring.ToMember, fzTail)
			c.snap()
			c.dp.Publish()
			c.changedOnly("Publish", [2]int{tail, tail + 8})
			c.dPub = len(c.dPut)
			if v := c.u64(tail); v != uint64(c.dPub) {
				t.Fatalf("Publish: tail %d, %d put", v, c.dPub)
			}
		case opDaemonFull:
			c.snap()
			full, err := c.dp.Full()
			c.changedOnly("Full")
			c.checkErr("Full", err)
			if err != nil && full {
				t.Fatal("Full: true with an error")
			}
			if c.honest && full != (len(c.dPut)-c.mRel == int(c.n)) {
				t.Fatalf("Full: %v with %d put, %d released", full, len(c.dPut), c.mRel)
			}
		case opDaemonConsWaiting:
			off := fzCtlOff(shmring.ToMember, fzConsWait)
			was := c.u32(off)
			c.snap()
			got := c.dp.ConsumerWaiting()
			c.changedOnly("ConsumerWaiting", [2]int{off, off + 4})
			if got != (was != 0) || (got && c.u32(off) != 0) || (!got && c.u32(off) != was) {
				t.Fatalf("ConsumerWaiting: %v with flag %d, now %d", got, was, c.u32(off))
			}
		case opDaemonWaitSpace:
			c.snap()
			err := c.dp.WaitSpace(nil, func() bool { return true })
			c.changedOnly("WaitSpace")
			c.checkErr("WaitSpace", err)
		case opDaemonFreed:
			c.snap()
			fr := c.dp.Freed()
			c.changedOnly("Freed")
			if c.honest && (fr < c.lastFreed || fr > uint64(c.mRel)) {
				t.Fatalf("Freed: %d, was %d, %d released", fr, c.lastFreed, c.mRel)
			}
			c.lastFreed = fr
		case opDaemonClosed:
			c.snap()
			closed := c.r.daemon.Closed()
			flag := c.r.daemon.ClosedFlag().Load()
			c.changedOnly("Closed")
			if closed != (c.u32(fzClosed) != 0) || flag != c.u32(fzClosed) {
				t.Fatalf("Closed: %v, flag %d, the word is %d", closed, flag, c.u32(fzClosed))
			}
		}
	}
}

// fzSeed builds a script from ops and their arguments.
func fzSeed(parts ...int) []byte {
	b := make([]byte, len(parts))
	for i, p := range parts {
		b[i] = byte(p)
	}
	return b
}

// FuzzDaemonSide plays a member against the daemon's ends of its rings:
// the daemon consumes ring 0 (Pop, Empty, Release, ProducerWaiting,
// WaitData) and produces into ring 1 (Put, Push, Publish, Full,
// ConsumerWaiting, WaitSpace, Freed), while the member either follows the
// protocol with its own Producer and Consumer or writes anything anywhere
// in the region (indices, flags, slot lengths, the header, the closed
// word). Whatever it writes:
//   - the daemon's calls return nil or ErrCorrupt, nothing else, and never
//     panic or touch memory outside the mapping;
//   - a popped message is the slot's own bytes, at most a slot's message
//     long, copied into the caller's buffer and no further;
//   - the daemon writes nothing in the region but the slot it fills, the
//     index it publishes and the wake-up flag it clears;
//   - while the member follows the protocol the rings are exact queues:
//     no ErrCorrupt, every message once and in order, full and empty when
//     and only when the counts say so.
func FuzzDaemonSide(f *testing.F) {
	// An honest exchange both ways.
	f.Add(uint8(0), fzSeed(opMemberPut, 0, 10, opMemberPut, 0, 60, opMemberPub,
		opDaemonEmpty, opDaemonPop, 0, 64, opDaemonPop, 0, 30, opDaemonPop, 0, 64, opDaemonRel,
		opDaemonPut, 0, 5, opDaemonPush, 0, 60, opDaemonConsWaiting, opMemberPop, opMemberPop, opMemberRel,
		opDaemonFull, opDaemonFreed))
	// Fill the daemon's ring until it refuses, then drain and go around.
	var fill []int
	for i := 0; i < 20; i++ {
		fill = append(fill, opDaemonPush, 0, i)
	}
	fill = append(fill, opDaemonFull, opMemberPop, opMemberPop, opMemberRel, opDaemonFull, opDaemonFreed)
	for i := 0; i < 12; i++ {
		fill = append(fill, opDaemonPush, 0, i, opMemberPop, opMemberRel)
	}
	f.Add(uint8(1), fzSeed(fill...))
	// A tail far ahead, a tail just one ring ahead, a tail behind.
	f.Add(uint8(0), fzSeed(opSetWord, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, opDaemonEmpty, opDaemonPop, 0, 64))
	f.Add(uint8(0), fzSeed(opSetWord, 0, 0, 8, opDaemonPop, 0, 64, opDaemonPop, 0, 64, opDaemonWaitData))
	f.Add(uint8(0), fzSeed(opSetWord, 0, 0, 9, opDaemonPop, 0, 64))
	f.Add(uint8(2), fzSeed(opMemberPut, 0, 9, opMemberPub, opDaemonPop, 0, 9, opSetWord, 0, 0, 0xff, opDaemonEmpty))
	// A slot length one past and far past what a slot holds.
	f.Add(uint8(0), fzSeed(opMemberPut, 0, 4, opMemberPub, opSetLen, 0, 0, 0, 1, opDaemonPop, 1, 0))
	f.Add(uint8(2), fzSeed(opMemberPut, 0, 4, opMemberPub, opSetLen, 0, 0, 1, 0, 0, 0x10, 0, opDaemonPop, 0, 64))
	f.Add(uint8(0), fzSeed(opMemberPut, 0, 4, opMemberPub, opSetLen, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, opDaemonPop, 0, 64))
	// A head beyond the tail, a head a ring behind: the daemon's Put.
	f.Add(uint8(0), fzSeed(opDaemonPush, 0, 1, opSetWord, 5, 0, 5, opDaemonPut, 0, 3, opDaemonFull, opDaemonWaitSpace))
	f.Add(uint8(1), fzSeed(opSetWord, 5, 1, 0, 0, 0, 0, 0, 0, 0, 0x80, opDaemonPut, 0, 3, opDaemonFull))
	// Flags, the header and the closed word.
	f.Add(uint8(0), fzSeed(opSetWord, 3, 7, opDaemonProdWaiting, opDaemonProdWaiting, opSetWord, 6, 1, opDaemonConsWaiting,
		opSetWord, 12, 0, 1, 0, 0, 0, opDaemonClosed, opSetWord, 10, 0, 0xff, 0xff, 0xff, 0xff, opDaemonPop, 0, 64))
	// Raw bytes over ring 0's control block and first slot.
	f.Add(uint8(1), fzSeed(opRawWrite, 0, fzCtl, 15, 3, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
		opDaemonPop, 0, 64, opDaemonPop, 0, 64, opDaemonRel, opRawWrite, 0x10, 0x80, 3, 0xff, 0xff, 0, 0, opDaemonPop, 0, 64))

	f.Fuzz(func(t *testing.T, layout uint8, script []byte) {
		l := fzLayouts[int(layout)%len(fzLayouts)]
		r := fzGetRegion(t, l)
		c := &fzChecker{
			t: t, r: r, l: l, n: uint64(l.Slots), maxMsg: l.MaxMsg(),
			before: make([]byte, len(r.mem)),
			dc:     r.daemon.Consumer(shmring.ToDaemon),
			dp:     r.daemon.Producer(shmring.ToMember),
			mp:     r.member.Producer(shmring.ToDaemon),
			mc:     r.member.Consumer(shmring.ToMember),
			honest: true,
		}
		c.run(&fzScript{b: script[:min(len(script), 4096)]})
	})
}
