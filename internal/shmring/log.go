package shmring

import (
	"fmt"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A log is a hub network's shared fan-out: one memfd that the daemon
// writes every message into once and that each member with r maps
// read-only (sealed against writes), reading the messages in place at its
// own pace. A reader that falls a whole log behind is lapped: it jumps to
// the newest message and counts what it missed. The daemon never reads
// the log back, and a reader trusts only what it checks.
//
// Layout (little-endian, offsets in bytes):
//
//	0     magic "IPNL", version, size of the records' area (a power of
//	      two), longest message
//	64    tail: the bytes published (a position; the area holds
//	      position&(size-1))
//	128   reserve: the writer may be writing bytes up to this position
//	      (it reserves ahead, a sixteenth of the area at a time)
//	192   the oldest record's position: where a lapped reader goes on
//	4096  the records: each 16-byte aligned, a u64 sequence number (the
//	      messages written before it), a u32 length, a u32 sender, then
//	      the message; a sender of padFrom pads to the area's end
//
// A reader keeps its place in its own region (Region.LogHead): the
// position and sequence number of the next record it reads, and the count
// of messages it missed, which the daemon reads for the member's drops.
const (
	logMagic   = 0x4c4e5049 // "IPNL"
	logVersion = 1
	recHdr     = 16
	padFrom    = ^uint32(0)
	minLog     = 64 << 10
	maxLog     = 256 << 20
	// Where a member's region keeps its place in the log.
	logHeadOff = 1024 // next position
	logSeqOff  = 1032 // sequence number of the next message
	logMissOff = 1040 // messages missed
	logTookOff = 1048 // messages of others taken
)

// LogBytes returns the size of the records' area of a log for messages of
// up to mtu bytes, a power of two: room for as many messages as a ring of
// LayoutFor(mtu) holds, at least two of the MTU; for an MTU over
// ChunkSize, over three of the MTU; at most 256 MiB.
func LogBytes(mtu int) int {
	want := 3*recLen(mtu) + 1 // big messages: three of the MTU, and the reserve
	if mtu <= ChunkSize {
		l := LayoutFor(mtu)
		want = max(l.Slots*(recHdr+mtu), 2*recLen(mtu), minLog)
	}
	size := minLog
	for size < want && size < maxLog {
		size *= 2
	}
	return size
}

func recLen(n int) int { return (recHdr + n + 15) &^ 15 }

// LogFits reports whether a log holds messages of mtu bytes: at least
// two, besides what the writer reserves ahead.
func LogFits(mtu int) bool {
	return mtu >= 1 && 2*recLen(mtu) <= LogBytes(mtu)-LogBytes(mtu)/16
}

// Log is a mapped log: the daemon's, which writes it, or a member's,
// which reads it.
type Log struct {
	mem    []byte // the header and the records
	recs   []byte
	size   uint64
	maxMsg int
	fd     int // the daemon's memfd, -1 once closed or for a member's
	rofd   int // the daemon's read-only descriptor of it, for members
	tail   *atomic.Uint64
	resv   *atomic.Uint64
	oldest *atomic.Uint64

	// The writer's, private.
	next uint64 // the tail as the writer knows it
	seq  uint64 // messages written
	// The oldest record not yet written over, and its sequence number.
	oldPos, oldSeq uint64
	reserved       uint64 // resv as the writer knows it
}

// CreateLog makes a log for messages of up to mtu bytes, mapped
// read-write, for the daemon. Members get ReadOnlyFD: a descriptor open
// for reading only, of a file only root may open for writing (mode 0400,
// sealed against resizing), so that no member can map the log writable,
// write it, or reopen it writable through /proc.
func CreateLog(mtu int) (*Log, error) {
	if !LogFits(mtu) {
		return nil, fmt.Errorf("log for messages of %d bytes: %w", mtu, syscall.EINVAL)
	}
	size := LogBytes(mtu)
	fd, err := unix.MemfdCreate("ipn-log", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	if err := unix.Fchmod(fd, 0o400); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("log memory mode: %w", err)
	}
	if err := unix.Ftruncate(fd, int64(headerSize+size)); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("size log memory: %w", err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS,
		unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("seal log memory: %w", err)
	}
	l, err := mapLogRW(fd, mtu, size)
	if err != nil {
		return nil, err
	}
	*(*uint32)(unsafe.Pointer(&l.mem[0])) = logMagic
	*(*uint32)(unsafe.Pointer(&l.mem[4])) = logVersion
	*(*uint32)(unsafe.Pointer(&l.mem[8])) = uint32(size)
	*(*uint32)(unsafe.Pointer(&l.mem[12])) = uint32(mtu)
	return l, nil
}

// mapLogRW maps the log of memfd fd writable and opens its read-only
// descriptor; it takes ownership of fd.
func mapLogRW(fd, mtu, size int) (*Log, error) {
	total := headerSize + size
	mem, err := unix.Mmap(fd, 0, total, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("map log memory: %w", err)
	}
	ro, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", fd), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		unix.Munmap(mem)
		unix.Close(fd)
		return nil, fmt.Errorf("open log memory read-only: %w", err)
	}
	l := newLog(mem, size, mtu, fd)
	l.rofd = ro
	return l, nil
}

func newLog(mem []byte, size, mtu, fd int) *Log {
	l := &Log{mem: mem, recs: mem[headerSize:], size: uint64(size), maxMsg: mtu, fd: fd, rofd: -1}
	l.tail = (*atomic.Uint64)(unsafe.Pointer(&mem[64]))
	l.resv = (*atomic.Uint64)(unsafe.Pointer(&mem[128]))
	l.oldest = (*atomic.Uint64)(unsafe.Pointer(&mem[192]))
	return l
}

// AdoptLog maps, read-write, the log of memfd fd (FD, not ReadOnlyFD)
// that another daemon made with CreateLog for messages of up to mtu
// bytes and passed on (a takeover), resumed at that daemon's position
// and sequence number (Pos) and oldest record (Oldest), whatever the
// shared header says. It takes ownership of fd.
func AdoptLog(fd int, mtu int, pos, seq, oldPos, oldSeq uint64) (*Log, error) {
	if oldPos > pos || oldSeq > seq || pos-oldPos > uint64(LogBytes(max(mtu, 1))) {
		unix.Close(fd)
		return nil, fmt.Errorf("log position %d, oldest %d: %w", pos, oldPos, syscall.EINVAL)
	}
	if !LogFits(mtu) {
		unix.Close(fd)
		return nil, fmt.Errorf("log for messages of %d bytes: %w", mtu, syscall.EINVAL)
	}
	size := LogBytes(mtu)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("log memory: %w", err)
	}
	if st.Size != int64(headerSize+size) {
		unix.Close(fd)
		return nil, fmt.Errorf("log memory of %d bytes for an MTU of %d: %w", st.Size, mtu, syscall.EPROTO)
	}
	l, err := mapLogRW(fd, mtu, size)
	if err != nil {
		return nil, err
	}
	l.next, l.seq, l.oldPos, l.oldSeq = pos, seq, oldPos, oldSeq
	l.reserved = l.resv.Load() // at least what the last daemon reserved
	if l.reserved < pos || l.reserved > pos+l.size {
		l.reserved = pos
	}
	l.resv.Store(l.reserved)
	l.oldest.Store(oldPos)
	l.tail.Store(pos)
	return l, nil
}

// MapLog maps, read-only, the log of memfd fd that the daemon passed to a
// member, and checks its header. It takes ownership of fd.
func MapLog(fd int) (*Log, error) {
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("log memory: %w", err)
	}
	if st.Size < headerSize+minLog || st.Size > headerSize+maxLog {
		return nil, fmt.Errorf("log memory of %d bytes: %w", st.Size, syscall.EPROTO)
	}
	mem, err := unix.Mmap(fd, 0, int(st.Size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map log memory: %w", err)
	}
	size := int(*(*uint32)(unsafe.Pointer(&mem[8])))
	mtu := int(*(*uint32)(unsafe.Pointer(&mem[12])))
	if *(*uint32)(unsafe.Pointer(&mem[0])) != logMagic || *(*uint32)(unsafe.Pointer(&mem[4])) != logVersion ||
		size < minLog || size&(size-1) != 0 || headerSize+size != len(mem) || mtu < 1 || 2*recLen(mtu) > size-size/16 {
		unix.Munmap(mem)
		return nil, fmt.Errorf("log memory header: %w", syscall.EPROTO)
	}
	return newLog(mem, size, mtu, -1), nil
}

// FD returns the daemon's log memfd, open for writing: for a takeover.
func (l *Log) FD() int { return l.fd }

// ReadOnlyFD returns the daemon's read-only descriptor of the log, to
// pass to members.
func (l *Log) ReadOnlyFD() int { return l.rofd }

// MaxMsg is the longest message the log holds.
func (l *Log) MaxMsg() int { return l.maxMsg }

// Bytes is the memory the log holds: its header and records.
func (l *Log) Bytes() int { return len(l.mem) }

// Close unmaps the log and closes its memfd.
func (l *Log) Close() error {
	if l.mem == nil {
		return nil
	}
	err := unix.Munmap(l.mem)
	l.mem, l.recs = nil, nil
	for _, fd := range []*int{&l.fd, &l.rofd} {
		if *fd >= 0 {
			unix.Close(*fd)
			*fd = -1
		}
	}
	return err
}

// Put appends msg, sent by port from, and reports false if it is longer
// than MaxMsg. It is visible to readers after Publish. Put and Publish
// must not be called concurrently.
func (l *Log) Put(msg []byte, from int) bool {
	if len(msg) > l.maxMsg {
		return false
	}
	rl := uint64(recLen(len(msg)))
	off := l.next & (l.size - 1)
	end := l.next + rl
	if off+rl > l.size {
		end += l.size - off
	}
	if end > l.reserved {
		// Reserve a sixteenth of the log at a time: readers look at
		// the reserve after each record, and a line that rarely
		// changes stays in their caches.
		l.reserved = end + l.size/16
		l.forget(l.reserved)
		// A swap, not a store: the writes over the reserved bytes that
		// follow may not be seen before it, on any processor.
		l.resv.Swap(l.reserved)
	}
	if off+rl > l.size {
		// Pad to the area's end: a record is never cut in two.
		l.putHdr(off, l.seq, 0, padFrom)
		l.next += l.size - off
		off = 0
	}
	l.putHdr(off, l.seq, uint32(len(msg)), uint32(from))
	copy(l.recs[off+recHdr:], msg)
	l.next += rl
	l.seq++
	return true
}

// forget moves the oldest record past those that writing up to position
// end writes over. The records are the writer's own: it trusts them.
func (l *Log) forget(end uint64) {
	if end <= l.size || l.oldPos >= end-l.size {
		return
	}
	defer func() { l.oldest.Store(l.oldPos) }()
	for l.oldPos < end-l.size {
		off := l.oldPos & (l.size - 1)
		h := l.recs[off : off+recHdr]
		if *(*uint32)(unsafe.Pointer(&h[12])) == padFrom {
			l.oldPos += l.size - off
			continue
		}
		l.oldPos += uint64(recLen(int(*(*uint32)(unsafe.Pointer(&h[8])))))
		l.oldSeq = *(*uint64)(unsafe.Pointer(&h[0])) + 1
	}
}

// Behind returns how many messages a reader whose place is head and seq
// (its region's, the member's word) has lost to the writer but not yet
// noticed: those written over before it read them.
func (l *Log) Behind(head, seq uint64) uint64 {
	if head < l.oldPos && seq < l.oldSeq && l.oldSeq <= l.seq {
		return l.oldSeq - seq
	}
	return 0
}

func (l *Log) putHdr(off, seq uint64, n, from uint32) {
	h := l.recs[off : off+recHdr]
	*(*uint64)(unsafe.Pointer(&h[0])) = seq
	*(*uint32)(unsafe.Pointer(&h[8])) = n
	*(*uint32)(unsafe.Pointer(&h[12])) = from
}

// Publish makes the messages Put so far visible to readers.
func (l *Log) Publish() { l.tail.Store(l.next) }

// Pos returns the writer's position and sequence number: where a reader
// joining now starts (Region.StartLog).
func (l *Log) Pos() (pos, seq uint64) { return l.next, l.seq }

// Oldest returns the position and sequence number of the oldest record
// not yet written over: with Pos, what a takeover passes on.
func (l *Log) Oldest() (pos, seq uint64) { return l.oldPos, l.oldSeq }

// StartLog sets the member's place in the log to pos and seq (Log.Pos),
// before the member maps its region.
func (r *Region) StartLog(pos, seq uint64) {
	r.u64(logHeadOff).Store(pos)
	r.u64(logSeqOff).Store(seq)
	r.u64(logMissOff).Store(0)
	r.u64(logTookOff).Store(0)
}

// LogPlace returns the member's place in the log, the count of messages
// it says it missed because the log lapped it (its own among them), and
// the count of other members' messages it says it took: the member's own
// word, for its counters.
func (r *Region) LogPlace() (head, seq, missed, taken uint64) {
	return r.u64(logHeadOff).Load(), r.u64(logSeqOff).Load(), r.u64(logMissOff).Load(), r.u64(logTookOff).Load()
}

// LogReader is a member's end of a log. Its methods must not be called
// concurrently.
type LogReader struct {
	log  *Log
	self uint32 // the member's port: its own messages are skipped
	// The reader's place, kept in its region so that the daemon sees
	// what it missed; the copies here are the reader's own.
	head, seq, missed, taken  uint64
	headP, seqP, missP, takeP *atomic.Uint64
	avail                     uint64 // positions below this are published
	laps                      int    // laps in a row, in one Pop
	fence                     atomic.Uint32
}

// Reader returns the reading end of log l for the member of region r at
// port self, starting where the daemon placed it (StartLog).
func (l *Log) Reader(r *Region, self int) *LogReader {
	lr := &LogReader{log: l, self: uint32(self),
		headP: r.u64(logHeadOff), seqP: r.u64(logSeqOff), missP: r.u64(logMissOff), takeP: r.u64(logTookOff)}
	lr.head, lr.seq, lr.missed, lr.taken = lr.headP.Load(), lr.seqP.Load(), lr.missP.Load(), lr.takeP.Load()
	lr.avail = lr.head
	return lr
}

// Seq returns the sequence number of the next message: a count of the
// messages the reader has passed, its own included.
func (lr *LogReader) Seq() uint64 { return lr.seq }

// Empty reports whether no message waits, as of now.
func (lr *LogReader) Empty() bool {
	if lr.head != lr.avail {
		return false
	}
	lr.avail = lr.log.tail.Load()
	return lr.head == lr.avail
}

// Pop copies the next message from another member into b and reports its
// length (longer than b if it was truncated); ok is false if none waits.
// A message missed because the writer lapped the reader is counted
// (Missed), not reported.
func (lr *LogReader) Pop(b []byte) (int, bool) {
	n, ok, _ := lr.read(b, nil)
	return n, ok
}

// View calls fn with the next message from another member, in place in
// the log's memory (read-only in a member), and reports its length; ok is
// false if none waits. torn reports that the writer lapped the reader
// while fn ran: what fn saw is not the message, which counts as missed.
func (lr *LogReader) View(fn func(msg []byte)) (n int, ok, torn bool) {
	return lr.read(nil, fn)
}

// read implements Pop (fn nil: the message is copied into b) and View.
func (lr *LogReader) read(b []byte, fn func([]byte)) (int, bool, bool) {
	l := lr.log
	lr.laps = 0
	lent := false
	for {
		if lr.head == lr.avail {
			lr.avail = l.tail.Load()
			if lr.head == lr.avail {
				return 0, false, false
			}
		}
		if lr.avail-lr.head > l.size {
			lr.lapped()
			continue
		}
		off := lr.head & (l.size - 1)
		h := l.recs[off : off+recHdr]
		seq := *(*uint64)(unsafe.Pointer(&h[0]))
		ln := *(*uint32)(unsafe.Pointer(&h[8]))
		from := *(*uint32)(unsafe.Pointer(&h[12]))
		var next uint64
		switch {
		case from == padFrom:
			next = lr.head + l.size - off
		case int(ln) <= l.maxMsg && off+uint64(recLen(int(ln))) <= l.size:
			next = lr.head + uint64(recLen(int(ln)))
			if from != lr.self {
				m := l.recs[off+recHdr : off+recHdr+uint64(ln)]
				if fn == nil {
					copy(b, m)
				} else if next <= lr.avail && l.resv.Load() <= lr.head+l.size {
					// Lent only while whole as of now; checked again
					// after.
					fn(m)
					lent = true
				}
			}
		}
		// What was read is whole only if the writer has not begun to
		// write over it since. The read-modify-write orders the copy's
		// loads before the reserve's (a plain load may pass an acquire
		// load on weakly ordered processors).
		lr.fence.Add(0)
		if next == 0 || l.resv.Load() > lr.head+l.size || next > lr.avail {
			lr.lapped()
			if lent {
				return int(ln), true, true
			}
			continue
		}
		lr.head = next
		if from == padFrom {
			continue
		}
		if seq != lr.seq {
			// Sequence numbers go up by one a message; a gap is what a
			// lap skipped.
			if seq > lr.seq {
				lr.missed += seq - lr.seq
			}
			lr.seq = seq
		}
		lr.seq++
		if from == lr.self {
			continue
		}
		lr.taken++
		return int(ln), true, false
	}
}

// lapped moves a reader that the writer lapped to the oldest message not
// yet written over, or, lapped again and again as it gets there (the
// writer goes on), past all to the newest. The sequence number of the
// next record it reads counts what it missed: seq stays, and Pop counts
// the gap.
func (lr *LogReader) lapped() {
	l := lr.log
	lr.laps++
	lr.avail = l.tail.Load()
	lr.head = l.oldest.Load()
	if lr.laps > 3 || lr.head > lr.avail || lr.avail-lr.head > l.size {
		lr.head = lr.avail
	}
}

// Release publishes the reader's place and what it missed, for the daemon.
func (lr *LogReader) Release() {
	lr.headP.Store(lr.head)
	lr.seqP.Store(lr.seq)
	lr.missP.Store(lr.missed)
	lr.takeP.Store(lr.taken)
}

// Missed returns the count of messages the reader missed, lapped.
func (lr *LogReader) Missed() uint64 { return lr.missed }

// Close unmaps a member's log.
func (lr *LogReader) Close() error { return lr.log.Close() }

// WaitDataOr waits, as WaitData, until c or lr has a message; lr may be
// nil.
func (c *Consumer) WaitDataOr(w *Waker, done func() bool, lr *LogReader) error {
	if lr == nil {
		return c.WaitData(w, done)
	}
	c.pace.observe(c.next + lr.seq)
	return wait(func() (bool, error) {
		if !lr.Empty() {
			return false, nil
		}
		return c.Empty()
	}, c.consWait, w, done, &c.pace)
}
