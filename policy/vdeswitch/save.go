package vdeswitch

import (
	"encoding/json"
	"fmt"
	"syscall"
	"time"

	"github.com/ipn-project/ipn/policy"
)

var _ policy.Saver = (*Switch)(nil)

// saved is a switch's state as Save writes it. Entries' ages, not times,
// cross to the other process, whose clock may read differently.
type saved struct {
	Expire       time.Duration
	HashSize     int
	LoopInterval time.Duration
	VLANs        []uint16
	Ports        []savedPort
	Table        []savedEntry
}

type savedPort struct {
	Untagged uint16
	Tagged   []uint16 `json:",omitempty"`
}

type savedEntry struct {
	MAC  [6]byte
	VLAN uint16
	Port int
	Age  time.Duration
}

// Save implements policy.Saver: settings, VLANs, ports' VLANs and the MAC
// table. Loop blocks are not kept: the next probes find a loop again.
func (s *Switch) Save() ([]byte, error) {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	st := saved{Expire: s.expire, HashSize: s.hashSize, LoopInterval: s.loop.Interval(), VLANs: s.vlans.list()}
	for _, pc := range s.ports {
		st.Ports = append(st.Ports, savedPort{Untagged: pc.untagged, Tagged: pc.tagged.list()})
	}
	for k, e := range s.table {
		st.Table = append(st.Table, savedEntry{MAC: k.mac, VLAN: k.vlan, Port: e.port, Age: now.Sub(e.seen)})
	}
	return json.Marshal(st)
}

// Restore implements policy.Saver.
func (s *Switch) Restore(b []byte) error {
	var st saved
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("switch state: %w", err)
	}
	if st.Expire < MinExpire || st.Expire > MaxExpire || st.HashSize < MinHashSize || st.HashSize > MaxHashSize {
		return fmt.Errorf("switch state: expire %v, hashsize %d: %w", st.Expire, st.HashSize, syscall.EINVAL)
	}
	if err := s.loop.SetInterval(st.LoopInterval); err != nil {
		return fmt.Errorf("switch state: %w", err)
	}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expire, s.hashSize = st.Expire, st.HashSize
	s.vlans = vlanSet{}
	for _, v := range st.VLANs {
		if v > maxVLAN {
			return fmt.Errorf("switch state: vlan %d: %w", v, syscall.EINVAL)
		}
		s.vlans.add(v)
	}
	for i := range s.ports {
		if i >= len(st.Ports) {
			break
		}
		sp := st.Ports[i]
		pc := portConf{untagged: sp.Untagged}
		for _, v := range sp.Tagged {
			if v <= maxVLAN {
				pc.tagged.add(v)
			}
		}
		if pc.untagged <= maxVLAN {
			s.ports[i] = pc
		}
	}
	clear(s.table)
	for _, e := range st.Table {
		if e.Port < 0 || e.Port >= len(s.ports) || e.VLAN > maxVLAN || len(s.table) >= s.hashSize {
			continue
		}
		s.table[key{mac: e.MAC, vlan: e.VLAN}] = entry{port: e.Port, seen: now.Add(-e.Age)}
	}
	s.lastSweep, s.nextExpiry = time.Time{}, time.Time{}
	return nil
}
