package cable

import (
	"context"
	"os"
	"syscall"
	"time"

	"github.com/ipn-project/ipn"
	"github.com/ipn-project/ipn/endpoint"
	"github.com/ipn-project/ipn/farend/stream"
)

var (
	pastDeadline = time.Unix(1, 0)
	noDeadline   time.Time
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
	return s.Endpoint(), nil
}

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
