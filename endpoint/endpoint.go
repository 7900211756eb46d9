// Package endpoint defines how a port's messages move in and out of an IPN
// network: the seam between the engine and sockets, devices and cables.
//
// An Endpoint is one port's attachment. The engine owns the goroutines that
// call it: one reads (messages the attached node sends into the network),
// one writes (messages the network delivers to the node). The daemon's
// ports are under port/ (a member's data socket, the fast path's rings, a
// VDE client, a tap, a grabbed interface), the far ends of cables under
// farend/, an in-process fake in endpoint/endpointtest; a client's
// connected socket is one too (ipn.Endpoint).
package endpoint

import (
	"github.com/ipn-project/ipn/endpoint/vnet"
	"github.com/ipn-project/ipn/internal/yield"
)

// Endpoint moves batches of messages for one port. Read and Write may be
// called concurrently with each other, each from a single goroutine.
type Endpoint interface {
	// Read blocks until at least one message is available and reads up to
	// len(bufs) messages, message i into bufs[i] with its length in
	// sizes[i]. A message longer than its buffer is reported with
	// sizes[i] > len(bufs[i]) and its bytes are truncated. Read returns an
	// error when no more messages will come (io.EOF, or net.ErrClosed after
	// Close); messages before the error are counted in n.
	Read(bufs [][]byte, sizes []int) (n int, err error)
	// Write delivers msgs to the node in order and returns how many it
	// delivered. With a nil error, the ones not delivered were dropped
	// (the node had no room); an error means the node is gone. Write does
	// not retain msgs after it returns.
	Write(msgs [][]byte) (n int, err error)
	// BatchSize is the largest batch Read fills and Write accepts usefully;
	// it never changes.
	BatchSize() int
	// Close releases the endpoint and unblocks Read and Write. It is
	// idempotent.
	Close() error
}

// OOBWriter is implemented by endpoints that deliver out-of-band messages
// (notices of the network, messages sent as OOB) apart from ordinary ones.
// An endpoint without it does not receive out-of-band messages.
type OOBWriter interface {
	// WriteOOB delivers one out-of-band message.
	WriteOOB(msg []byte) error
}

// Offloader is implemented by endpoints that can move frames with a
// virtio-net header (a tap with IFF_VNET_HDR): super-frames of up to
// vnet.MaxFrame bytes, to be cut into segments by whoever cannot take them,
// and frames whose checksum is left to finish. When Offloads reports true,
// the engine calls ReadOffload and WriteOffload instead of Read and Write,
// and cuts super-frames and finishes checksums for the network's other
// ports.
type Offloader interface {
	// Offloads reports whether the endpoint moves headers; it never
	// changes.
	Offloads() bool
	// ReadOffload is Read, with each message's header in hdrs[i].
	ReadOffload(bufs [][]byte, sizes []int, hdrs []vnet.Hdr) (n int, err error)
	// WriteOffload is Write, with msgs[i]'s header in hdrs[i].
	WriteOffload(msgs [][]byte, hdrs []vnet.Hdr) (n int, err error)
}

// DirectOffloader is implemented by DirectWriters with offloads: the
// engine delivers them super-frames and frames with a checksum to finish
// inline too.
type DirectOffloader interface {
	// WriteDirectOffload is WriteDirect, with msg's header h.
	WriteDirectOffload(msg []byte, h vnet.Hdr) bool
}

// DirectBatchWriter is implemented by DirectOffloaders that take, inline,
// the messages one batch of a sender has for them at once, so that they
// can merge them (a tap merges TCP segments into super-frames: the
// receive offload a NIC does).
type DirectBatchWriter interface {
	// WriteDirectBatch is WriteDirectOffload of each of msgs, with its
	// header hdrs[i], in order; it returns how many were delivered.
	WriteDirectBatch(msgs [][]byte, hdrs []vnet.Hdr) int
}

// FanOut is a network's shared fan-out (a hub's log, package port/shm): a
// message put into it once reaches every port that reads it but its
// sender, each reading at its own pace; one that falls behind misses
// messages (lossy only). Put and Flush are called by one sender at a time.
type FanOut interface {
	// Put appends msg, sent by port from; false if it is longer than
	// MaxMsg.
	Put(msg []byte, from int) bool
	// MaxMsg is the longest message Put takes.
	MaxMsg() int
	// Flush makes what Put appended visible and wakes the readers but
	// port from, the batch's sender.
	Flush(from int)
	// Lock and Unlock take the fan-out for one sender's batch.
	Lock()
	Unlock()
}

// FanOutReader is implemented by endpoints that read a network's ordinary
// messages from a FanOut, rather than be given them one by one. Its node
// reads every message put there: give one only to a port that may get
// every message but its own, of a lossy network (not a monitor, which the
// engine gives copies, nor a link, which a policy may block).
type FanOutReader interface {
	// FanOut returns the fan-out the endpoint reads, or nil.
	FanOut() FanOut
	// FanOutMissed returns how many messages the node missed on it, and
	// how many of the others' it took, by the node's own count.
	FanOutMissed() (missed, taken uint64)
}

// DirectWriter is implemented by endpoints whose writes never block (a
// full node drops the message, as a VDE port does). The engine delivers to
// them inline, from the sending port's goroutine, with no queue between:
// their own buffer is the node's queue.
type DirectWriter interface {
	// WriteDirect delivers msg now or drops it, and reports which. It may
	// be called from several goroutines at once. It does not retain msg.
	WriteDirect(msg []byte) bool
}

// TryDirectWriter is implemented by DirectWriters that wait for room in a
// lossless network (the fast path's rings). The engine tries them inline,
// and queues for the port's own writer what does not fit now: a sender
// never waits inline for a receiver, so it can always leave.
type TryDirectWriter interface {
	// TryWriteDirect delivers msg now if there is room, and reports
	// whether it did. It may be called from several goroutines at once.
	// It does not retain msg.
	TryWriteDirect(msg []byte) bool
}

// Yielder is the processor courtesy of a writer that drops messages for a
// full reader. Deprecated: it is internal/yield's, used by the ports.
type Yielder = yield.Yielder

// StuckDrops is how many drops in a row make a Yielder stop yielding.
// Deprecated: see Yielder.
const StuckDrops = yield.StuckDrops
