package wire

import (
	"encoding/binary"
	"fmt"
	"syscall"
)

// Fragments. One SOCK_SEQPACKET packet carries at most about 4 MiB (the
// kernel's largest linear allocation and its page fragments), so a network
// whose MTU is over FragMTU (Fragmented) carries its messages in
// fragments: every packet of its data sockets, both ways, starts with a
// header of FragHeaderLen bytes, the message's total length (u32) then
// this fragment's offset in it (u32), little-endian, followed by the
// fragment's bytes, at least 1 and at most MaxFragment. A message's
// fragments are consecutive packets, at offsets 0, then each where the one
// before ended, until the total; each but the last carries at least
// MinFragment bytes. A message of one packet has offset 0 and carries its
// total. A packet at offset 0 while a message is under way starts a new
// message: the one under way is lost (a daemon that handed a port over
// sends the message it was writing again, whole). A receiver checks each
// packet with a Joiner and drops what does not follow these rules.

// FragVersion is the first protocol version with fragments: a client of an
// older one cannot join a network whose MTU is over FragMTU.
const FragVersion = 4

// FragMTU is the largest MTU whose messages go in one packet each; the
// data sockets of a network with a larger MTU carry fragments.
const FragMTU = 4 << 20

// FragHeaderLen is the length of a fragment's header.
const FragHeaderLen = 8

// MaxFragment and MinFragment bound the bytes of a message one fragment
// carries: at most MaxFragment, and at least MinFragment unless it is the
// message's last.
const (
	MaxFragment = 1 << 20
	MinFragment = 64 << 10
)

// Fragmented reports whether the data sockets of a network of that MTU
// carry fragments.
func Fragmented(mtu int) bool { return mtu > FragMTU }

// PutFragHeader writes the header of a fragment at offset off of a message
// of total bytes into b, which has at least FragHeaderLen bytes.
func PutFragHeader(b []byte, total, off int) {
	binary.LittleEndian.PutUint32(b, uint32(total))
	binary.LittleEndian.PutUint32(b[4:], uint32(off))
}

// FragHeader returns the total and offset of the fragment header at the
// start of b, which has at least FragHeaderLen bytes.
func FragHeader(b []byte) (total, off int) {
	return int(binary.LittleEndian.Uint32(b)), int(binary.LittleEndian.Uint32(b[4:]))
}

// FragSize returns the bytes of a message a sender puts in one fragment
// when its socket takes packets of up to limit bytes (sockio.SizeFor):
// MaxFragment, less if the packet would not fit, never under MinFragment.
func FragSize(limit int) int {
	return min(MaxFragment, max(MinFragment, limit-FragHeaderLen))
}

// A FragKind says what a fragment is to the message under way.
type FragKind int

// The kinds of fragment Joiner.Check finds.
const (
	// FragBad breaks the rules: drop the packet.
	FragBad FragKind = iota
	// FragFirst starts a message: the one under way, if any, is lost.
	FragFirst
	// FragNext continues the message under way.
	FragNext
)

// Joiner checks the fragments one side of a data socket receives, one
// packet after another, and follows the message under way. Its zero value
// has no MTU: set MTU before use.
type Joiner struct {
	// MTU bounds a message's total.
	MTU   int
	total int // of the message under way, 0 if none
	got   int // its bytes received so far
}

// Busy reports whether a message is under way, with its total and the
// bytes received so far.
func (j *Joiner) Busy() (busy bool, total, got int) { return j.total > 0, j.total, j.got }

// Check says what a packet whose header says total and off, with n bytes
// after its header, is to the message under way; it changes nothing. A
// FragBad comes with an error that says why: EMSGSIZE for a total over the
// MTU, EPROTO for the rest.
func (j *Joiner) Check(total, off, n int) (FragKind, error) {
	switch {
	case total < 1 || total > j.MTU:
		return FragBad, fmt.Errorf("fragment of a message of %d bytes: the MTU is %d: %w", total, j.MTU, syscall.EMSGSIZE)
	case n < 1 || n > MaxFragment:
		return FragBad, fmt.Errorf("fragment of %d bytes at %d of %d: want 1..%d: %w", n, off, total, MaxFragment, syscall.EPROTO)
	case off > total-n:
		return FragBad, fmt.Errorf("fragment of %d bytes at %d: past the message's end, %d: %w", n, off, total, syscall.EPROTO)
	case off+n < total && n < MinFragment:
		return FragBad, fmt.Errorf("fragment of %d bytes at %d of %d: one but the last carries at least %d: %w", n, off, total, MinFragment, syscall.EPROTO)
	case off == 0:
		return FragFirst, nil
	case j.total == 0:
		return FragBad, fmt.Errorf("fragment at %d of %d with no message under way: %w", off, total, syscall.EPROTO)
	case total != j.total || off != j.got:
		return FragBad, fmt.Errorf("fragment at %d of %d: the message under way has %d of %d bytes: %w", off, total, j.got, j.total, syscall.EPROTO)
	}
	return FragNext, nil
}

// Take records a packet that Check found FragFirst or FragNext, of n
// bytes, and reports whether it ends its message (then none is under way).
func (j *Joiner) Take(total, off, n int) (done bool) {
	if off == 0 {
		j.total, j.got = total, 0
	}
	j.got += n
	if j.got >= j.total {
		j.total, j.got = 0, 0
		return true
	}
	return false
}

// Reset forgets the message under way, if any.
func (j *Joiner) Reset() { j.total, j.got = 0, 0 }
