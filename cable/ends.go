package cable

import (
	"context"
	"os"
	"syscall"
	"time"

	"github.com/ipn-project/ipn"
	"github.com/ipn-project/ipn/endpoint"
	"github.com/ipn-project/ipn/endpoint/stream"
)

var (
	pastDeadline = time.Unix(1, 0)
	noDeadline   time.Time
	errOverflow  = syscall.EOVERFLOW
)

func init() {
	Register("stdio", func(context.Context, string) (endpoint.Endpoint, error) {
		return stream.New(pollable(0, "stdin"), pollable(1, "stdout")), nil
	})
	Register("ipn", openIPN)
}

// openIPN joins another local network as the far end, as a link.
func openIPN(_ context.Context, path string) (endpoint.Endpoint, error) {
	s, err := ipn.NewSocket(ipn.Any)
	if err != nil {
		return nil, err
	}
	if err := s.SetLink(true); err != nil {
		s.Close()
		return nil, err
	}
	if err := s.Connect(path); err != nil {
		s.Close()
		return nil, err
	}
	return &socketEnd{s: s}, nil
}

// socketEnd is an IPN socket as a far end.
type socketEnd struct{ s *ipn.Socket }

func (e *socketEnd) Read(bufs [][]byte, sizes []int) (int, error) {
	for {
		n, flags, err := e.s.Recv(bufs[0])
		if err != nil {
			return 0, err
		}
		if flags&ipn.MsgOOB == 0 {
			sizes[0] = n
			return 1, nil
		}
	}
}

func (e *socketEnd) Write(msgs [][]byte) (int, error) {
	for i, m := range msgs {
		if err := e.s.Send(m); err != nil {
			return i, err
		}
	}
	return len(msgs), nil
}

func (e *socketEnd) BatchSize() int { return 1 }
func (e *socketEnd) Close() error   { return e.s.Close() }

// pollable returns fd as a file Go's poller manages, so that Close unblocks
// a Read or Write in progress: it sets pipes and sockets non-blocking (not
// terminals, whose mode the shell shares).
func pollable(fd int, name string) *os.File {
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err == nil {
		if mode := st.Mode & syscall.S_IFMT; mode == syscall.S_IFIFO || mode == syscall.S_IFSOCK {
			syscall.SetNonblock(fd, true)
		}
	}
	return os.NewFile(uintptr(fd), name)
}
