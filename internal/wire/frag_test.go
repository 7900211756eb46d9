package wire_test

import (
	"errors"
	"syscall"
	"testing"

	"github.com/ipn-project/ipn/internal/wire"
)

// cut returns the fragments (offset, length) a sender makes of a message
// of total bytes, size bytes each.
func cut(total, size int) [][2]int {
	var f [][2]int
	for off := 0; off < total; off += size {
		f = append(f, [2]int{off, min(size, total-off)})
	}
	return f
}

// A message cut as a sender cuts it joins: every fragment but the last
// continues it, the last ends it.
func TestJoinerJoins(t *testing.T) {
	j := wire.Joiner{MTU: 64 << 20}
	for _, total := range []int{1, 65536, wire.MaxFragment, wire.MaxFragment + 1, 32<<20 + 3, 64 << 20} {
		for _, size := range []int{wire.MinFragment, wire.MaxFragment, 300000} {
			frags := cut(total, size)
			for i, f := range frags {
				kind, err := j.Check(total, f[0], f[1])
				want := wire.FragNext
				if i == 0 {
					want = wire.FragFirst
				}
				if err != nil || kind != want {
					t.Fatalf("total %d size %d fragment %d: %v %v, want %v", total, size, i, kind, err, want)
				}
				if done := j.Take(total, f[0], f[1]); done != (i == len(frags)-1) {
					t.Fatalf("total %d size %d fragment %d: done %v", total, size, i, done)
				}
			}
			if busy, _, _ := j.Busy(); busy {
				t.Fatalf("total %d: still busy after the last fragment", total)
			}
		}
	}
}

// What breaks the rules is FragBad, with an error that says why.
func TestJoinerRefuses(t *testing.T) {
	const mtu = 8 << 20
	j := wire.Joiner{MTU: mtu}
	for _, tc := range []struct {
		name             string
		total, off, n    int
		errno            syscall.Errno
		underWay, gotten int // a message under way first: its total and bytes
	}{
		{"total over the MTU", mtu + 1, 0, 10, syscall.EMSGSIZE, 0, 0},
		{"total 0", 0, 0, 1, syscall.EMSGSIZE, 0, 0},
		{"no bytes", 10, 0, 0, syscall.EPROTO, 0, 0},
		{"over MaxFragment", 4 << 20, 0, wire.MaxFragment + 1, syscall.EPROTO, 0, 0},
		{"past the end", 10, 5, 6, syscall.EPROTO, 0, 0},
		{"short, not the last", 4 << 20, 0, wire.MinFragment - 1, syscall.EPROTO, 0, 0},
		{"nothing under way", 4 << 20, wire.MinFragment, wire.MinFragment, syscall.EPROTO, 0, 0},
		{"a gap", 4 << 20, 2 << 20, wire.MinFragment, syscall.EPROTO, 4 << 20, 1 << 20},
		{"going back", 4 << 20, wire.MinFragment, wire.MinFragment, syscall.EPROTO, 4 << 20, 1 << 20},
		{"another total", 4<<20 + 1, 1 << 20, wire.MinFragment, syscall.EPROTO, 4 << 20, 1 << 20},
	} {
		j.Reset()
		if tc.underWay > 0 {
			j.Take(tc.underWay, 0, tc.gotten)
		}
		kind, err := j.Check(tc.total, tc.off, tc.n)
		if kind != wire.FragBad || !errors.Is(err, tc.errno) {
			t.Errorf("%s: %v, %v; want FragBad, %v", tc.name, kind, err, tc.errno)
		}
	}
	// A first fragment while a message is under way starts a new one.
	j.Reset()
	j.Take(4<<20, 0, 1<<20)
	if kind, err := j.Check(100, 0, 100); kind != wire.FragFirst || err != nil {
		t.Errorf("a new message while one is under way: %v %v, want FragFirst", kind, err)
	}
}

// FuzzJoiner feeds a Joiner any packets: it never panics, a message it
// ends has received exactly its total, each fragment continuing where the
// last ended, and none is over the MTU.
func FuzzJoiner(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 0, 0, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		const mtu = 1 << 24
		j := wire.Joiner{MTU: mtu}
		got, total := 0, 0
		for len(b) >= 10 {
			tot, off := wire.FragHeader(b)
			tot, off = tot%(mtu+2), off%(mtu+2)
			n := (int(b[8])<<8 | int(b[9])) << 6
			b = b[10:]
			kind, err := j.Check(tot, off, n)
			if (kind == wire.FragBad) != (err != nil) {
				t.Fatalf("kind %v with error %v", kind, err)
			}
			if kind == wire.FragBad {
				continue
			}
			if tot > mtu || off+n > tot || n < 1 {
				t.Fatalf("accepted total %d off %d n %d", tot, off, n)
			}
			if kind == wire.FragFirst {
				got, total = 0, tot
			}
			if off != got || tot != total {
				t.Fatalf("accepted %d at %d of %d after %d of %d", n, off, tot, got, total)
			}
			got += n
			if j.Take(tot, off, n) != (got == total) {
				t.Fatalf("done at %d of %d", got, total)
			}
		}
	})
}
