package udp

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// This file holds what the URLs of the far ends built on UDP share: their
// options, and the list of sources a far end accepts.

// SplitOptions splits opts, the "/"-separated options of a URL, into
// "KEY=VALUE" and flag options. A segment with no "=" that is not one of
// flags continues the value of the option before it, so that a value may
// hold a "/" (a CIDR prefix: "allow=10.0.0.0/8/vni=7" is two options).
// Empty segments are dropped and end such a value.
func SplitOptions(opts string, flags ...string) []string {
	var out []string
	open := false // the last option takes a value that may go on
	for _, seg := range strings.Split(opts, "/") {
		switch {
		case seg == "":
			open = false
		case open && !strings.Contains(seg, "=") && !slices.Contains(flags, seg):
			out[len(out)-1] += "/" + seg
		default:
			out = append(out, seg)
			open = strings.Contains(seg, "=")
		}
	}
	return out
}

// Allow is a list of address prefixes, IPv4 or IPv6, that datagrams must
// come from. A nil Allow is no list: it admits every source (an empty
// one admits none).
type Allow []netip.Prefix

// ParseAllow parses a comma-separated list of addresses and CIDR prefixes
// ("192.0.2.7,10.0.0.0/8,fd00::/64"); an address stands for itself alone.
func ParseAllow(s string) (Allow, error) {
	if s == "" {
		return nil, errors.New("empty list (want ADDR or ADDR/BITS, comma-separated)")
	}
	var a Allow
	for _, item := range strings.Split(s, ",") {
		p, err := parsePrefix(item)
		if err != nil {
			return nil, err
		}
		a = append(a, p)
	}
	return a, nil
}

// parsePrefix parses one item of an allow list: its masked prefix, an
// IPv4-mapped IPv6 one as IPv4 (sources are compared unmapped).
func parsePrefix(item string) (netip.Prefix, error) {
	var p netip.Prefix
	ok := false
	if strings.Contains(item, "/") {
		var err error
		p, err = netip.ParsePrefix(item)
		ok = err == nil
	} else if a, err := netip.ParseAddr(item); err == nil && a.Zone() == "" {
		p, ok = netip.PrefixFrom(a, a.BitLen()), true
	}
	if !ok {
		return netip.Prefix{}, fmt.Errorf("bad address or prefix %q (want ADDR or ADDR/BITS, IPv4 or IPv6, no zone)", item)
	}
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p.Masked(), nil
}

// Contains reports whether a datagram from addr is admitted: a is nil or
// one of its prefixes holds addr (compared unmapped, without its zone).
func (a Allow) Contains(addr netip.Addr) bool {
	if a == nil {
		return true
	}
	addr = addr.Unmap().WithZone("")
	for _, p := range a {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// String returns the list as ParseAllow reads it.
func (a Allow) String() string {
	var b strings.Builder
	for i, p := range a {
		if i > 0 {
			b.WriteByte(',')
		}
		if p.IsSingleIP() {
			b.WriteString(p.Addr().String())
		} else {
			b.WriteString(p.String())
		}
	}
	return b.String()
}
