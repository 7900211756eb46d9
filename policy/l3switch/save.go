package l3switch

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"syscall"
	"time"

	"github.com/ipn-project/ipn/policy"
)

var _ policy.Saver = (*Switch)(nil)

// saved is a layer-3 switch's state as Save writes it, entries with their
// ages (the other process's clock may read differently).
type saved struct {
	Expire       time.Duration
	HashSize     int
	LoopInterval time.Duration
	IPs          []savedIP
	MACs         []savedMAC
}

type savedIP struct {
	IP   netip.Addr
	MAC  [6]byte
	Port int
	Age  time.Duration
}

type savedMAC struct {
	MAC  [6]byte
	Port int
	Age  time.Duration
}

// Save implements policy.Saver: settings and the learnt addresses.
func (s *Switch) Save() ([]byte, error) {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	st := saved{Expire: s.expire, HashSize: s.hashSize, LoopInterval: s.loop.Interval()}
	for a, e := range s.ips {
		st.IPs = append(st.IPs, savedIP{IP: a, MAC: e.mac, Port: e.port, Age: now.Sub(e.seen)})
	}
	for m, e := range s.macs {
		st.MACs = append(st.MACs, savedMAC{MAC: m, Port: e.port, Age: now.Sub(e.seen)})
	}
	return json.Marshal(st)
}

// Restore implements policy.Saver; entries of ports that are not there
// are dropped.
func (s *Switch) Restore(b []byte) error {
	var st saved
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("l3switch state: %w", err)
	}
	if st.Expire < MinExpire || st.Expire > MaxExpire || st.HashSize < MinHashSize || st.HashSize > MaxHashSize {
		return fmt.Errorf("l3switch state: expire %v, hashsize %d: %w", st.Expire, st.HashSize, syscall.EINVAL)
	}
	if err := s.loop.SetInterval(st.LoopInterval); err != nil {
		return fmt.Errorf("l3switch state: %w", err)
	}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expire, s.hashSize = st.Expire, st.HashSize
	clear(s.ips)
	clear(s.macs)
	for _, e := range st.IPs {
		if s.connected.Has(e.Port) && len(s.ips) < s.hashSize && learnable(e.IP) {
			s.ips[e.IP] = ipEntry{port: e.Port, mac: e.MAC, seen: now.Add(-e.Age)}
		}
	}
	for _, e := range st.MACs {
		if s.connected.Has(e.Port) && len(s.macs) < s.hashSize {
			s.macs[e.MAC] = macEntry{port: e.Port, seen: now.Add(-e.Age)}
		}
	}
	s.lastSweep, s.nextExpiry = time.Time{}, time.Time{}
	return nil
}
