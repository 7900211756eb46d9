package vnet

import (
	"encoding/binary"
	"math/bits"
)

// The Internet checksum (RFC 1071): the ones'-complement sum of 16-bit
// big-endian words. It is accumulated in 64-bit words: 2^16 is 1 modulo
// 2^16-1, so a sum of 64-bit words folds to the sum of their 16-bit words.

// sum adds b to the running sum acc; an odd last byte counts as a word
// with a zero low byte.
func sum(b []byte, acc uint64) uint64 {
	var c uint64
	for len(b) >= 32 {
		acc, c = bits.Add64(acc, binary.BigEndian.Uint64(b), c)
		acc, c = bits.Add64(acc, binary.BigEndian.Uint64(b[8:]), c)
		acc, c = bits.Add64(acc, binary.BigEndian.Uint64(b[16:]), c)
		acc, c = bits.Add64(acc, binary.BigEndian.Uint64(b[24:]), c)
		b = b[32:]
	}
	for len(b) >= 8 {
		acc, c = bits.Add64(acc, binary.BigEndian.Uint64(b), c)
		b = b[8:]
	}
	if len(b) > 0 {
		var tail [8]byte
		copy(tail[:], b)
		acc, c = bits.Add64(acc, binary.BigEndian.Uint64(tail[:]), c)
	}
	acc, c = bits.Add64(acc, c, 0)
	return acc + c
}

// add adds the value v (at most 32 bits) to the running sum acc.
func add(acc uint64, v uint32) uint64 {
	s, c := bits.Add64(acc, uint64(v), 0)
	return s + c
}

// fold reduces a running sum to 16 bits, without complementing it.
func fold(acc uint64) uint16 {
	acc = acc>>32 + acc&0xffffffff
	acc = acc>>32 + acc&0xffffffff
	acc = acc>>16 + acc&0xffff
	acc = acc>>16 + acc&0xffff
	return uint16(acc>>16 + acc&0xffff)
}

// pseudo returns the sum of the pseudo-header of an L4 packet of l4len
// bytes and protocol proto, over the IP header ip (version 4 or 6).
func pseudo(ip []byte, v6 bool, proto uint8, l4len int) uint64 {
	var acc uint64
	if v6 {
		acc = sum(ip[8:40], 0)
	} else {
		acc = sum(ip[12:20], 0)
	}
	return add(add(acc, uint32(proto)), uint32(l4len))
}
