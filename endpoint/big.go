package endpoint

// BigReader is implemented by endpoints that can carry messages longer than
// the engine's pooled read buffers (64 KiB): a network whose MTU is over
// 65536 bytes reads its members through it.
type BigReader interface {
	// ReadBig is Read, except that a message longer than bufs[i] is read
	// whole into the buffer grow(i, size) returns (at least size bytes),
	// which then holds message i: sizes[i] is its length and the caller
	// knows the buffer. If grow returns nil the message is consumed and
	// dropped, and sizes[i] is not set for it. A batch ends after a
	// message read through grow, so that it holds at most one.
	ReadBig(bufs [][]byte, sizes []int, grow func(i, size int) []byte) (n int, err error)
}
