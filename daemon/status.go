package daemon

import (
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/engine"
	"github.com/ipn-project/ipn/internal/wire"
)

// statusPage is a member's status page (docs/protocol.md): a sealed memfd
// of wire.StatusPageSize bytes that the daemon maps read-write and the
// client read-only. Its u64 at wire.StatusDoneOffset, Done, is the count
// of the member's messages the engine has finished with, so that a client
// whose daemon died knows how many of those it sent were lost.
//
// Messages in flight point at Done (engine.Port.SetDoneCounter), so the
// page stays mapped until the last of the port's messages is freed, after
// the port left: see leave.
type statusPage struct {
	mem []byte
	fd  int // the memfd until FD hands it over, else -1
	// Done is the count the engine adds to; it lives in the mapping.
	Done *atomic.Uint64

	mu   sync.Mutex
	port *engine.Port // set by attach
	left bool         // the port left (leave ran)

	closeOnce sync.Once
}

// newStatusPage makes a status page, mapped, its count at 0.
func newStatusPage() (*statusPage, error) {
	fd, err := unix.MemfdCreate("ipn-status", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	if err := unix.Ftruncate(fd, wire.StatusPageSize); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("size status page: %w", err)
	}
	// The client may not shrink the file under the daemon's mapping.
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("seal status page: %w", err)
	}
	mem, err := unix.Mmap(fd, 0, wire.StatusPageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("map status page: %w", err)
	}
	binary.LittleEndian.PutUint64(mem, wire.StatusMagic)
	// The page is not sealed against writable mappings: a daemon that
	// takes over maps it again, writable (adoptStatusPage). A client that
	// maps its own page writable can only spoil its own count.
	unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SEAL)
	return &statusPage{
		mem:  mem,
		fd:   fd,
		Done: (*atomic.Uint64)(unsafe.Pointer(&mem[wire.StatusDoneOffset])),
	}, nil
}

// adoptStatusPage maps the status page another daemon made, from a
// descriptor of its memfd (a takeover), which it owns from then on.
func adoptStatusPage(fd int) (*statusPage, error) {
	var stt unix.Stat_t
	if err := unix.Fstat(fd, &stt); err != nil || stt.Size != wire.StatusPageSize {
		unix.Close(fd)
		return nil, fmt.Errorf("status page of %d bytes (%v): %w", stt.Size, err, unix.EINVAL)
	}
	mem, err := unix.Mmap(fd, 0, wire.StatusPageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("map status page: %w", err)
	}
	// Its contents are the member's to spoil (it may map the page
	// writable): they count for its own messages only, and are not checked.
	binary.LittleEndian.PutUint64(mem, wire.StatusMagic)
	return &statusPage{mem: mem, fd: fd, Done: (*atomic.Uint64)(unsafe.Pointer(&mem[wire.StatusDoneOffset]))}, nil
}

// FD returns a copy of the page's memfd, to pass in the connect reply or
// to a daemon taking over: the caller owns it (-1 if it cannot be made).
func (st *statusPage) FD() int {
	fd, err := unix.FcntlInt(uintptr(st.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1
	}
	return fd
}

// attach ties the page to the port that counts into it (after Join).
func (st *statusPage) attach(p *engine.Port) {
	p.SetDoneCounter(st.Done)
	st.mu.Lock()
	st.port = p
	left := st.left
	st.mu.Unlock()
	if left {
		go st.retire(p)
	}
}

// leave is run by the port's OnLeave: the page is unmapped once the
// port's reader has stopped and every message it read is freed (some may
// still wait in other members' queues). It does not block.
func (st *statusPage) leave() {
	st.mu.Lock()
	st.left = true
	p := st.port
	st.mu.Unlock()
	if p != nil {
		go st.retire(p)
	}
}

// retireLimit bounds how long a page waits for its port's last messages;
// past it, the page stays mapped (a leak of a page, never a write to
// memory unmapped).
const retireLimit = 10 * time.Minute

// retire unmaps the page once no message of p's points at it.
func (st *statusPage) retire(p *engine.Port) {
	<-p.ReadDone()
	wait := time.Millisecond
	for t0 := time.Now(); st.Done.Load() != p.Stats().MsgsIn; wait = min(2*wait, time.Second) {
		if time.Since(t0) > retireLimit {
			return
		}
		time.Sleep(wait)
	}
	st.Close()
}

// Close unmaps the page and closes its memfd, once (retire and a
// takeover's abandon may both call it); only for a page no message points
// at (its port never joined, or retire says so).
func (st *statusPage) Close() {
	st.closeOnce.Do(func() {
		if st.fd >= 0 {
			unix.Close(st.fd)
			st.fd = -1
		}
		if st.mem != nil {
			unix.Munmap(st.mem)
			st.mem, st.Done = nil, nil
		}
	})
}
