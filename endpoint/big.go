package endpoint

// BigReader is implemented by endpoints that can carry messages longer than
// the engine's pooled read buffers (64 KiB): a network whose MTU is over
// 65536 bytes reads its members through it.
type BigReader interface {
	// ReadBig is Read, except that a message longer than bufs[i] is read
	// whole into the buffer grow(i, size) returns (at least size bytes),
	// which then holds message i: sizes[i] is its length and the caller
	// knows the buffer. If grow returns nil and drop, the message is
	// consumed and dropped (sizes[i] is not set for it); nil and not
	// drop, it is left for a later Read and the batch ends before it (a
	// pause). A batch ends after a message read through grow, so that it
	// holds at most one.
	ReadBig(bufs [][]byte, sizes []int, grow func(i, size int) (buf []byte, drop bool)) (n int, err error)
}
