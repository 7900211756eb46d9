package vdemgmt

import (
	"math"
	"strings"
)

// The console reads its numbers as vde_switch does, with glibc's sscanf
// and atoi, so that a script gets the same answer from either: what C
// reads, in C's int (a value past its range keeps its low 32 bits, as
// glibc stores a long it saturated in an int).

// cSpace reports whether b is a blank to C's isspace in the C locale.
func cSpace(b byte) bool {
	return b == ' ' || b == '\t' || b == '\n' || b == '\v' || b == '\f' || b == '\r'
}

// scanNum reads one number at the start of s as glibc's sscanf reads a
// conversion of base 0 (%i: 0x hex, a leading 0 octal, else decimal), 10
// (%d) or 16 (%x, unsigned, an optional 0x): blanks, a sign, then the
// longest run of digits of the base; a 0 octal number stops at its first
// non-octal digit ("08" is 0, then "8"). As glibc, "0x" with no hex digit
// after it reads as 0, both characters taken. It returns the value as C's
// int, the rest of s, and whether a number was there (else rest is s).
func scanNum(s string, base int) (v int, rest string, ok bool) {
	i := 0
	for i < len(s) && cSpace(s[i]) {
		i++
	}
	unsigned := base == 16
	neg := false
	if i < len(s) && (s[i] == '-' || s[i] == '+') {
		neg = s[i] == '-'
		i++
	}
	digits := false
	if (base == 0 || base == 16) && i+1 < len(s) && s[i] == '0' && (s[i+1] == 'x' || s[i+1] == 'X') {
		base, i, digits = 16, i+2, true
	} else if base == 0 && i < len(s) && s[i] == '0' {
		base = 8
	} else if base == 0 {
		base = 10
	}
	var mag uint64
	over := false
	for ; i < len(s); i++ {
		d := digitVal(s[i])
		if d >= base {
			break
		}
		digits = true
		if mag > (math.MaxUint64-uint64(d))/uint64(base) {
			over = true
			continue
		}
		mag = mag*uint64(base) + uint64(d)
	}
	if !digits {
		return 0, s, false
	}
	var r uint64 // the long (or unsigned long) C computes, in two's complement
	switch {
	case unsigned && over:
		r = math.MaxUint64 // strtoul: ULONG_MAX, whatever the sign
	case unsigned && neg:
		r = -mag
	case unsigned:
		r = mag
	case neg && (over || mag > 1<<63):
		r = 1 << 63 // strtol: LONG_MIN
	case neg:
		r = -mag
	case over || mag > math.MaxInt64:
		r = math.MaxInt64 // strtol: LONG_MAX
	default:
		r = mag
	}
	return int(int32(uint32(r))), s[i:], true
}

// digitVal is the value of b as a digit of any base up to 36; 36 if none.
func digitVal(b byte) int {
	switch {
	case b >= '0' && b <= '9':
		return int(b - '0')
	case b >= 'a' && b <= 'z':
		return int(b-'a') + 10
	case b >= 'A' && b <= 'Z':
		return int(b-'A') + 10
	}
	return 36
}

// atoi reads a number as C's atoi, (int)strtol(s, NULL, 10): 0 if there
// is none.
func atoi(s string) int {
	v, _, _ := scanNum(s, 10)
	return v
}

// scanInts reads n numbers as C's sscanf(s, "%i %i", ...); ok only if it
// would return n.
func scanInts(s string, n int) ([]int, bool) {
	out := make([]int, n)
	for i := range n {
		v, rest, ok := scanNum(s, 0)
		if !ok {
			return nil, false
		}
		out[i], s = v, rest
	}
	return out, true
}

// scanMAC reads a MAC and a VLAN as vde_switch's hash/find: sscanf(s,
// "%x:%x:%x:%x:%x:%x %d", ...), with '.' for ':' if s has no ':'. Each
// byte is the low 8 bits of its number, as C stores an int in an unsigned
// char ("102" is 0x02). n is what sscanf would return: the conversions
// made before the first that fails (6 without a VLAN, 7 with).
func scanMAC(s string) (mac [6]byte, vlan, n int) {
	sep := "."
	if strings.Contains(s, ":") {
		sep = ":"
	}
	for n < 6 {
		v, rest, ok := scanNum(s, 16)
		if !ok {
			return mac, 0, n
		}
		mac[n], s = byte(v), rest
		n++
		if n < 6 {
			if !strings.HasPrefix(s, sep) {
				return mac, 0, n
			}
			s = s[1:]
		}
	}
	if v, _, ok := scanNum(s, 10); ok {
		return mac, v, 7
	}
	return mac, 0, 6
}
