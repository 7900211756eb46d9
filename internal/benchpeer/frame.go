// Package benchpeer is the load generator of ipn bench: one peer process
// joins a network through some transport (an IPN socket, a VDE switch, a
// NATS subject, or the bare shared-memory ring of the limit rows: see
// Limit), sends and/or receives benchmark frames, and reports what it
// measured as one JSON line.
//
// Every transport carries the same frames, so the client's cost is the same
// whatever it talks to:
//
//	dst MAC (6) | src MAC 02:00:00:00:00:<id+1> (6) | ethertype 0x88b5 (2)
//	magic "IPNB" (4) | sender id uint32 | seq uint64 | send time int64
//	zero padding up to the frame size
//
// all integers big endian. The send time is CLOCK_MONOTONIC in nanoseconds,
// the same clock in every process of the machine, so a receiver computes
// the one-way latency as its own clock reading less the send time. Hello
// frames (ethertype 0x88b6, broadcast) let a switch learn a peer's MAC
// before the load starts; receivers ignore them.
//
// A peer is driven over its standard input and output, one line at a time
// (see Run): it prints "ready" once joined, starts sending at "go", prints
// "done" when its sending time is over, answers "count" with "count N" (the
// frames received so far), and at "stop" (or end of input) prints its
// Result as JSON and returns.
package benchpeer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	_ "unsafe" // for go:linkname
)

// Ethertypes of the benchmark frames.
const (
	EtherType = 0x88b5 // load frames
	HelloType = 0x88b6 // hello frames, ignored by receivers
)

// Frame layout.
const (
	HeaderLen = 14                 // Ethernet header
	magicOff  = HeaderLen          // "IPNB"
	idOff     = magicOff + 4       // sender id
	seqOff    = idOff + 4          // sequence number
	timeOff   = seqOff + 8         // send time
	MinSize   = timeOff + 8        // the smallest frame: header and fields
	MaxSize   = 4 << 20            // the largest frame Run accepts
	MaxPeers  = 250                // peer ids are 0..MaxPeers-1
	magic     = uint32(0x49504e42) // "IPNB"
)

// Broadcast is the Ethernet broadcast address.
var Broadcast = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// MAC returns the source MAC of peer id: 02:00:00:00:00:<id+1>.
func MAC(id int) net.HardwareAddr {
	return net.HardwareAddr{0x02, 0, 0, 0, 0, byte(id + 1)}
}

// nanotime is the runtime's CLOCK_MONOTONIC reading (through the vDSO),
// the clock unix.ClockGettime(unix.CLOCK_MONOTONIC) reads with a system
// call; the test checks they agree.
//
//go:linkname nanotime runtime.nanotime
func nanotime() int64

// Now returns CLOCK_MONOTONIC in nanoseconds: comparable across the
// processes of one machine.
func Now() int64 { return nanotime() }

// PutHeader writes the Ethernet header and the fixed fields of a load frame
// from peer id to dst into b, which must hold MinSize bytes; the rest of b
// is left as it is (zero padding in a fresh buffer).
func PutHeader(b []byte, dst net.HardwareAddr, id int) {
	copy(b[0:6], dst)
	copy(b[6:12], MAC(id))
	binary.BigEndian.PutUint16(b[12:14], EtherType)
	binary.BigEndian.PutUint32(b[magicOff:], magic)
	binary.BigEndian.PutUint32(b[idOff:], uint32(id))
}

// Stamp sets the sequence number and the send time of a load frame.
func Stamp(b []byte, seq uint64, t int64) {
	binary.BigEndian.PutUint64(b[seqOff:], seq)
	binary.BigEndian.PutUint64(b[timeOff:], uint64(t))
}

// Hello returns the hello frame of peer id, size bytes long.
func Hello(id, size int) []byte {
	b := make([]byte, max(size, MinSize))
	copy(b[0:6], Broadcast)
	copy(b[6:12], MAC(id))
	binary.BigEndian.PutUint16(b[12:14], HelloType)
	return b
}

// errNotLoad marks a frame that is not a load frame.
var errNotLoad = errors.New("not a benchmark load frame")

// Parse returns the sender id, sequence number and send time of a load
// frame.
func Parse(b []byte) (id int, seq uint64, t int64, err error) {
	if len(b) < MinSize || binary.BigEndian.Uint16(b[12:14]) != EtherType ||
		binary.BigEndian.Uint32(b[magicOff:]) != magic {
		return 0, 0, 0, errNotLoad
	}
	id = int(binary.BigEndian.Uint32(b[idOff:]))
	if id >= MaxPeers {
		return 0, 0, 0, fmt.Errorf("sender id %d: %w", id, errNotLoad)
	}
	return id, binary.BigEndian.Uint64(b[seqOff:]), int64(binary.BigEndian.Uint64(b[timeOff:])), nil
}
