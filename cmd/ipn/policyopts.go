package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/ipn-project/ipn/policy/hub"
	"github.com/ipn-project/ipn/policy/l3switch"
	"github.com/ipn-project/ipn/policy/loop"
	"github.com/ipn-project/ipn/policy/vdeswitch"
)

// policyOpt is an option of a built-in policy, as ipn policy shows it.
type policyOpt struct {
	name  string
	arg   string // what a value looks like; "" for a table
	what  string // meaning, range and default
	get   bool   // readable
	set   bool   // settable
	table bool   // a JSON table: too big to list with the settings
}

// policyOpts are the options of the built-in policies, by policy name; the
// ranges and defaults are the policies' own constants.
var policyOpts = []struct {
	proto string
	opts  []policyOpt
}{
	{hub.Name, []policyOpt{
		{name: "loop.interval", arg: "DURATION", get: true, set: true,
			what: fmt.Sprintf("loop probe interval, %s..%s, 0 turns loop protection off (default %s)", dur(loop.MinInterval), dur(loop.MaxInterval), dur(loop.DefaultInterval))},
		{name: "loop.blocked", get: true, table: true, what: "the ports loop protection blocked"},
	}},
	{vdeswitch.Name, []policyOpt{
		{name: "expire", arg: "DURATION", get: true, set: true,
			what: fmt.Sprintf("age of learnt MACs, %s..%s (default %s)", dur(vdeswitch.MinExpire), dur(vdeswitch.MaxExpire), dur(vdeswitch.DefaultExpire))},
		{name: "hashsize", arg: "N", get: true, set: true,
			what: fmt.Sprintf("most MAC table entries, %d..%d (default %d)", vdeswitch.MinHashSize, vdeswitch.MaxHashSize, vdeswitch.DefaultHashSize)},
		{name: "loop.interval", arg: "DURATION", get: true, set: true,
			what: fmt.Sprintf("loop probe interval, %s..%s, 0 turns loop protection off (default %s)", dur(vdeswitch.MinLoopInterval), dur(vdeswitch.MaxLoopInterval), dur(vdeswitch.DefaultLoopInterval))},
		{name: "mac.flush", arg: `""`, set: true, what: "forget every learnt MAC"},
		{name: "vlan.add", arg: "V", set: true, what: fmt.Sprintf("make VLAN V, 1..%d (ipn vlan PATH add V)", vdeswitch.MaxVLAN)},
		{name: "vlan.del", arg: "V", set: true, what: "remove VLAN V from the switch and its ports (ipn vlan PATH del V)"},
		{name: "port.vlan", arg: `"P V"`, set: true,
			what: fmt.Sprintf("untagged VLAN of port P, 1..%d or 0 for none (default %d; ipn port PATH P --vlan V)", vdeswitch.MaxVLAN, vdeswitch.DefaultVLAN)},
		{name: "port.trunk", arg: `"P V,V..."`, set: true, what: `tagged VLANs of port P, "" for none (ipn port PATH P --trunk V,V)`},
		{name: "macs", get: true, table: true, what: "the MAC table: mac, vlan, port, age_seconds (ipn mac)"},
		{name: "ports", get: true, table: true, what: "every port: port, vlan, trunk, blocked (ipn port)"},
		{name: "loop.blocked", get: true, table: true, what: "the ports loop protection blocked"},
		{name: "vlans", get: true, table: true, what: "the VLAN ids (ipn vlan)"},
	}},
	{l3switch.Name, []policyOpt{
		{name: "expire", arg: "DURATION", get: true, set: true,
			what: fmt.Sprintf("age of learnt IPs and MACs, %s..%s (default %s)", dur(l3switch.MinExpire), dur(l3switch.MaxExpire), dur(l3switch.DefaultExpire))},
		{name: "hashsize", arg: "N", get: true, set: true,
			what: fmt.Sprintf("most entries of each table, %d..%d (default %d)", l3switch.MinHashSize, l3switch.MaxHashSize, l3switch.DefaultHashSize)},
		{name: "loop.interval", arg: "DURATION", get: true, set: true,
			what: fmt.Sprintf("loop probe interval, %s..%s, 0 turns loop protection off (default %s)", dur(l3switch.MinLoopInterval), dur(l3switch.MaxLoopInterval), dur(l3switch.DefaultLoopInterval))},
		{name: "ips", get: true, table: true, what: "the learnt IP addresses: ip, mac, port, age_seconds"},
		{name: "macs", get: true, table: true, what: "the learnt MACs: mac, port, age_seconds"},
		{name: "loop.blocked", get: true, table: true, what: "the ports loop protection blocked"},
	}},
}

// optionsOf returns the options of the built-in policy proto, and whether
// proto is one.
func optionsOf(proto string) ([]policyOpt, bool) {
	for _, p := range policyOpts {
		if p.proto == proto {
			return p.opts, true
		}
	}
	return nil, false
}

// policyHelp describes every option of the built-in policies, for ipn
// policy --help.
func policyHelp() string {
	var b strings.Builder
	for _, p := range policyOpts {
		if len(p.opts) == 0 {
			fmt.Fprintf(&b, "\n%s: no options.\n", p.proto)
			continue
		}
		fmt.Fprintf(&b, "\n%s:\n", p.proto)
		for _, o := range p.opts {
			access := "read, set"
			switch {
			case o.table:
				access = "a JSON table, read only"
			case !o.get:
				access = "set only"
			}
			head := o.name
			if o.arg != "" {
				head += " " + o.arg
			}
			fmt.Fprintf(&b, "  %s (%s)\n      %s\n", head, access, o.what)
		}
	}
	return b.String()
}

// dur writes d as a person would: 24h, 2m, 100ms.
func dur(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// policyValue returns v, a value ipn policy read, as JSON: a table or a
// number as it is, anything else (a duration) as a JSON string.
func policyValue(v string) json.RawMessage {
	if json.Valid([]byte(v)) {
		return json.RawMessage(v)
	}
	b, _ := json.Marshal(v)
	return b
}
