package vxlan

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// FDB is a forwarding database: for each learnt source MAC, the UDP address
// of the tunnel end it came from, so that frames to that MAC go there
// alone instead of to the multicast group. Entries expire when not
// refreshed; the table holds a bounded number of them, and when it is full
// of live entries new MACs are not learnt (their frames are multicast, which
// still reaches them). An FDB is safe for concurrent use.
type FDB struct {
	max    int
	expire time.Duration
	now    func() time.Time // the clock; tests replace it

	mu sync.Mutex
	m  map[[6]byte]fdbEntry // guarded by mu
}

type fdbEntry struct {
	ap   netip.AddrPort
	addr *net.UDPAddr // ap, allocated once per change, never modified
	seen time.Time
}

// NewFDB returns an empty table of at most max entries that expire after
// expire without traffic.
func NewFDB(max int, expire time.Duration) *FDB {
	return &FDB{max: max, expire: expire, now: time.Now, m: make(map[[6]byte]fdbEntry)}
}

// Learn records that frames from mac (6 bytes) come from ap. Group MACs
// (multicast or broadcast as a source) are never learnt.
func (f *FDB) Learn(mac []byte, ap netip.AddrPort) {
	if len(mac) < 6 || mac[0]&1 != 0 {
		return
	}
	key := [6]byte(mac[:6])
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	now := f.now()
	f.mu.Lock()
	defer f.mu.Unlock()
	if e, ok := f.m[key]; ok && e.ap == ap {
		e.seen = now
		f.m[key] = e
		return
	}
	if _, ok := f.m[key]; !ok && len(f.m) >= f.max {
		f.sweepLocked(now)
		if len(f.m) >= f.max {
			return
		}
	}
	f.m[key] = fdbEntry{ap: ap, addr: net.UDPAddrFromAddrPort(ap), seen: now}
}

// Lookup returns the address mac was learnt behind, or nil if it is
// unknown or its entry expired. The caller must not modify the address.
func (f *FDB) Lookup(mac []byte) *net.UDPAddr {
	if len(mac) < 6 {
		return nil
	}
	now := f.now()
	f.mu.Lock()
	defer f.mu.Unlock()
	e, ok := f.m[[6]byte(mac[:6])]
	if !ok || now.Sub(e.seen) > f.expire {
		return nil
	}
	return e.addr
}

// Forget removes every MAC learnt behind ap (a tunnel end that left).
func (f *FDB) Forget(ap netip.AddrPort) {
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	f.mu.Lock()
	defer f.mu.Unlock()
	for k, e := range f.m {
		if e.ap == ap {
			delete(f.m, k)
		}
	}
}

// Len returns the number of entries, expired ones included until swept.
func (f *FDB) Len() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.m)
}

// sweepLocked removes expired entries; the caller holds f.mu.
func (f *FDB) sweepLocked(now time.Time) {
	for k, e := range f.m {
		if now.Sub(e.seen) > f.expire {
			delete(f.m, k)
		}
	}
}
