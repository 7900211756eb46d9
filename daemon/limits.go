package daemon

import (
	"fmt"
	"sync"
	"syscall"

	"github.com/ipn-project/ipn/engine"
	"github.com/ipn-project/ipn/internal/wire"
	"github.com/ipn-project/ipn/policy"
)

// Limits bound what one user may hold in the daemon, so that no user can
// exhaust it for the others. Root is not limited. A request over a limit
// fails with EDQUOT (networks, memory) or EAGAIN (connections, ports) and
// says which limit; over the shared-memory limit a member gets a socket
// instead of rings.
type Limits struct {
	Networks int   // networks the user made and that live
	Ports    int   // ports the user's requests made: members, VDE clients, devices
	Conns    int   // control connections open
	Shm      int64 // bytes of fast-path rings of the user's members
	// Memory bounds the memory the user's networks may hold (see
	// memoryOf): their messages in flight and queued, out-of-band ones
	// included, their ports and their policies' tables.
	Memory int64
}

// DefaultLimits are the limits of a daemon whose Config sets none.
var DefaultLimits = Limits{
	Networks: 128,
	Ports:    1024,
	Conns:    512,
	Shm:      256 << 20,
	Memory:   1 << 30,
}

// withDefaults returns l with zero fields from DefaultLimits.
func (l Limits) withDefaults() Limits {
	d := DefaultLimits
	if l.Networks != 0 {
		d.Networks = l.Networks
	}
	if l.Ports != 0 {
		d.Ports = l.Ports
	}
	if l.Conns != 0 {
		d.Conns = l.Conns
	}
	if l.Shm != 0 {
		d.Shm = l.Shm
	}
	if l.Memory != 0 {
		d.Memory = l.Memory
	}
	return d
}

// usage is what one user holds, or a change of it.
type usage struct {
	networks, ports, conns int
	shm, memory            int64
}

// accounts tracks every user's usage against the limits.
type accounts struct {
	lim Limits
	mu  sync.Mutex
	by  map[uint32]*usage // guarded by mu; users holding something
}

func newAccounts(l Limits) *accounts {
	return &accounts{lim: l.withDefaults(), by: make(map[uint32]*usage)}
}

// take adds d to uid's usage, or fails, adding nothing, if that would pass
// a limit.
func (a *accounts) take(uid uint32, d usage) error {
	if uid == 0 {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	u := a.by[uid]
	if u == nil {
		u = &usage{}
	}
	l := a.lim
	switch {
	case d.networks > 0 && u.networks+d.networks > l.Networks:
		return fmt.Errorf("uid %d has %d networks, the most a user may have (ipn daemon --max-networks): %w", uid, u.networks, syscall.EDQUOT)
	case d.ports > 0 && u.ports+d.ports > l.Ports:
		return fmt.Errorf("uid %d holds %d ports, the most a user may hold (ipn daemon --max-ports): %w", uid, u.ports, syscall.EAGAIN)
	case d.conns > 0 && u.conns+d.conns > l.Conns:
		return fmt.Errorf("uid %d has %d connections to the daemon, the most a user may have (ipn daemon --max-conns): %w", uid, u.conns, syscall.EAGAIN)
	case d.shm > 0 && u.shm+d.shm > l.Shm:
		return fmt.Errorf("uid %d has %d MiB of fast-path rings, the limit is %d MiB (ipn daemon --max-shm): %w", uid, u.shm>>20, l.Shm>>20, syscall.EDQUOT)
	case d.memory > 0 && u.memory+d.memory > l.Memory:
		return fmt.Errorf("a network that may hold %d MiB of messages; uid %d has %d MiB of %d MiB (ipn daemon --max-memory; a smaller MTU, pool or number of ports needs less): %w",
			d.memory>>20, uid, u.memory>>20, l.Memory>>20, syscall.EDQUOT)
	}
	u.networks += d.networks
	u.ports += d.ports
	u.conns += d.conns
	u.shm += d.shm
	u.memory += d.memory
	a.by[uid] = u
	return nil
}

// give takes d back from uid's usage.
func (a *accounts) give(uid uint32, d usage) {
	if uid == 0 {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	u := a.by[uid]
	if u == nil {
		return
	}
	u.networks -= d.networks
	u.ports -= d.ports
	u.conns -= d.conns
	u.shm -= d.shm
	u.memory -= d.memory
	if *u == (usage{}) {
		delete(a.by, uid)
	}
}

// netMemory is the memory a network of cfg may hold, its policy aside: each
// port may hold a queue of messages and as many out-of-band ones, each in
// a buffer of the MTU's size class (64 KiB at most), and 1 KiB; big
// messages (over 64 KiB) are bounded by engine.BigBudget, and the data
// sockets that carry them by twice the MTU a port, or twice 4 MiB
// (wire.FragMTU) on a network of fragments; a lossless network holds the
// messages in flight too, at most the pool (its queues hold those, or
// copies outside the pool: a monitor's, the policy's probes).
//
// A message that comes in fragments is read into one buffer of its total,
// charged to the budget when its first fragment comes; a member that sends
// no more of it holds that share for seqpacket.FragTimeout at most. A
// network of MTU 64 MiB thus holds 128 MiB of big messages, 8 MiB of
// socket buffers a port, and, if lossy, 64 MiB a port more.
func netMemory(cfg engine.Config) int64 {
	msg, q, ports := int64(engine.MsgBytes(cfg.MTU)), int64(engine.QueueLen(cfg)), int64(cfg.NumPorts)
	perPort := 1024 + 16*q + q*msg // the slots, and the out-of-band messages
	held := ports * q * msg        // the ordinary messages queued
	if cfg.Flags&engine.Lossless != 0 {
		held += int64(cfg.PoolSize) * msg
	}
	// Messages over 64 KiB are not in the pool's buffers: the network
	// holds at most its budget of them at once, whatever their number.
	// The kernel holds more for it: each member's data socket is sized
	// to take a message of the MTU each way, or 4 MiB of fragments (a
	// member that never reads pins its receive side full).
	// In a lossy network each port may hold one big message besides.
	var socks, lossy int64
	if big := engine.BigBudget(cfg.MTU); big > 0 {
		socks = ports * 2 * int64(min(cfg.MTU, wire.FragMTU))
		if cfg.Flags&engine.Lossless == 0 {
			lossy = ports * int64(cfg.MTU)
		}
	}
	return held + ports*perPort + engine.BigBudget(cfg.MTU) + socks + lossy
}

// memoryOf is what network n may hold now: netMemory and its policy's
// tables.
func memoryOf(n *engine.Network) int64 {
	m := netMemory(n.Config())
	if s, ok := n.Policy().(policy.Sizer); ok {
		m += s.Size()
	}
	return m
}

// recharge runs change on network n, then charges its maker for what n
// may hold now; if that is over the maker's limit, it runs undo (if not
// nil) and fails with the limit's error.
func (s *server) recharge(n *engine.Network, change func() error, undo func()) error {
	nf := netFileOf(n)
	nf.mu.Lock()
	defer nf.mu.Unlock()
	if err := change(); err != nil {
		return err
	}
	cost := memoryOf(n)
	switch {
	case cost > nf.memory:
		if err := s.acct.take(nf.creator, usage{memory: cost - nf.memory}); err != nil {
			if undo != nil {
				undo()
			}
			return err
		}
	case cost < nf.memory:
		s.acct.give(nf.creator, usage{memory: nf.memory - cost})
	}
	nf.memory = cost
	return nil
}
