package benchpeer

import "math/bits"

// subBits is log2 of the buckets per power of two: 16 buckets, so a
// reported value is within about 3% of the true one.
const subBits = 4

// histBuckets covers every int64 value.
const histBuckets = (64 - subBits + 1) << subBits

// Hist is a histogram of non-negative durations in nanoseconds with
// logarithmic buckets: recording allocates nothing and takes a few
// instructions. The zero value is empty and ready.
type Hist struct {
	n      int64
	counts [histBuckets]int64
}

// bucket returns the bucket of v (negative values count as 0).
func bucket(v int64) int {
	if v < 1<<subBits {
		return int(max(v, 0))
	}
	e := bits.Len64(uint64(v)) - subBits // >= 1
	return e<<subBits | int(uint64(v)>>(e-1))&(1<<subBits-1)
}

// low returns the smallest value of bucket i.
func low(i int) int64 {
	if i < 1<<subBits {
		return int64(i)
	}
	e := i >> subBits
	return int64(1<<subBits|i&(1<<subBits-1)) << (e - 1)
}

// Record adds one value.
func (h *Hist) Record(v int64) {
	h.counts[bucket(v)]++
	h.n++
}

// Count returns how many values were recorded.
func (h *Hist) Count() int64 { return h.n }

// Merge adds the values of o.
func (h *Hist) Merge(o *Hist) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
}

// Quantile returns the value below which a fraction q of the recorded
// values lie (the middle of its bucket), or 0 when the histogram is empty.
func (h *Hist) Quantile(q float64) int64 {
	if h.n == 0 {
		return 0
	}
	rank := int64(q * float64(h.n))
	rank = min(max(rank, 0), h.n-1)
	var seen int64
	for i, c := range h.counts {
		seen += c
		if seen > rank {
			if i+1 < histBuckets {
				return (low(i) + low(i+1)) / 2
			}
			return low(i)
		}
	}
	return 0
}

// Buckets returns the non-empty buckets, by index, for another process to
// Merge them with AddBuckets.
func (h *Hist) Buckets() map[int]int64 {
	m := make(map[int]int64)
	for i, c := range h.counts {
		if c != 0 {
			m[i] = c
		}
	}
	return m
}

// AddBuckets adds buckets returned by Buckets; it ignores indexes out of
// range.
func (h *Hist) AddBuckets(m map[int]int64) {
	for i, c := range m {
		if i >= 0 && i < histBuckets && c > 0 {
			h.counts[i] += c
			h.n += c
		}
	}
}
