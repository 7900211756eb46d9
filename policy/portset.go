package policy

import "math/bits"

// PortSet is a set of port numbers, one bit per port.
// The zero value is an empty set that grows as ports are added.
type PortSet struct {
	words []uint64
}

// NewPortSet returns an empty set sized for ports 0..n-1.
func NewPortSet(n int) PortSet {
	return PortSet{words: make([]uint64, (n+63)/64)}
}

// Add puts port p in the set.
func (s *PortSet) Add(p int) {
	w := p / 64
	for w >= len(s.words) {
		s.words = append(s.words, 0)
	}
	s.words[w] |= 1 << (uint(p) % 64)
}

// Remove takes port p out of the set.
func (s *PortSet) Remove(p int) {
	if w := p / 64; w < len(s.words) {
		s.words[w] &^= 1 << (uint(p) % 64)
	}
}

// Has reports whether port p is in the set.
func (s *PortSet) Has(p int) bool {
	w := p / 64
	return p >= 0 && w < len(s.words) && s.words[w]&(1<<(uint(p)%64)) != 0
}

// Clear empties the set, keeping its storage.
func (s *PortSet) Clear() {
	clear(s.words)
}

// CopyFrom makes s equal to o, reusing s's storage when it can.
func (s *PortSet) CopyFrom(o PortSet) {
	if cap(s.words) < len(o.words) {
		s.words = make([]uint64, len(o.words))
	}
	s.words = s.words[:len(o.words)]
	copy(s.words, o.words)
}

// Intersect removes from s every port not in o.
func (s *PortSet) Intersect(o PortSet) {
	for i := range s.words {
		if i < len(o.words) {
			s.words[i] &= o.words[i]
		} else {
			s.words[i] = 0
		}
	}
}

// Len returns the number of ports in the set.
func (s *PortSet) Len() int {
	n := 0
	for _, w := range s.words {
		n += bits.OnesCount64(w)
	}
	return n
}

// Next returns the smallest port in the set that is >= p, or -1 if there is none.
// Iterate with: for p := s.Next(0); p >= 0; p = s.Next(p + 1).
func (s *PortSet) Next(p int) int {
	if p < 0 {
		p = 0
	}
	w := p / 64
	if w >= len(s.words) {
		return -1
	}
	cur := s.words[w] >> (uint(p) % 64)
	if cur != 0 {
		return p + bits.TrailingZeros64(cur)
	}
	for w++; w < len(s.words); w++ {
		if s.words[w] != 0 {
			return w*64 + bits.TrailingZeros64(s.words[w])
		}
	}
	return -1
}

// CoversBut reports whether s holds every port of o but except.
func (s *PortSet) CoversBut(o PortSet, except int) bool {
	for i, w := range o.words {
		if except >= 0 && except/64 == i {
			w &^= 1 << (uint(except) % 64)
		}
		var have uint64
		if i < len(s.words) {
			have = s.words[i]
		}
		if w&^have != 0 {
			return false
		}
	}
	return true
}

// Subtract removes from s every port in o.
func (s *PortSet) Subtract(o PortSet) {
	for i := range s.words {
		if i < len(o.words) {
			s.words[i] &^= o.words[i]
		}
	}
}
