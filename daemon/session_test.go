package daemon

import (
	"encoding/binary"
	"io"
	"log/slog"
	"testing"

	"github.com/ipn-project/ipn/internal/wire"
)

// FuzzHandle feeds arbitrary requests (without descriptors) to a session:
// the daemon must answer each with a well-formed reply and never panic.
func FuzzHandle(f *testing.F) {
	f.Add([]byte{1, 0, 1, 0, 0, 0, 2, 0, 10, 0, 0, 0, 0xdc, 5, 0, 0})
	f.Add([]byte{1, 0, 1, 0, 1, 0, 3, 0, 11, 0, 0, 0})
	f.Add([]byte{1, 0, 1, 0, 0, 0, 6, 0, 3, 0, 0, 0, 8, 0})
	f.Add([]byte{1, 0, 1, 0, 0, 0, 5, 0, 7, 0, 0, 0, 'x'})
	f.Fuzz(func(t *testing.T, stream []byte) {
		srv := newServer(Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		ss := &session{srv: srv}
		ss.portOpts.Want = -1
		defer ss.release()
		// The stream is a sequence of requests: u16 op, u16 length, body.
		for len(stream) >= 4 {
			op := binary.LittleEndian.Uint16(stream)
			n := int(binary.LittleEndian.Uint16(stream[2:]))
			stream = stream[4:]
			if n > len(stream) {
				n = len(stream)
			}
			body := stream[:n]
			stream = stream[n:]
			reply, fds := ss.handle(op, body, nil)
			if len(fds) > 0 {
				t.Fatalf("op %d: a descriptor without a connect", op)
			}
			rop, rbody, err := wire.Split(reply)
			if err != nil || rop != op|wire.ReplyBit {
				t.Fatalf("op %d: reply op %#x %v", op, rop, err)
			}
			if _, err := wire.SplitReply(rbody); err == wire.ErrMalformed {
				t.Fatalf("op %d: malformed reply", op)
			}
		}
	})
}
