// Package l3switch is IPN's layer-3 switch policy (IPN_VDESWITCH_L3, tag
// policy.VDESwitchL3 = 3, name "l3switch"): messages are Ethernet frames,
// forwarded by their destination IP address, with ARP and IPv6 neighbor
// discovery answered by the switch itself.
//
// # Learning
//
// From every frame of at least 14 bytes a connected port sends, the switch
// learns:
//
//   - the source MAC address → the port, if that MAC is unicast and not zero;
//   - for an IPv4 frame (EtherType 0x0800, version 4, header complete), the
//     source address → (port, source MAC), unless it is 0.0.0.0, multicast
//     or 255.255.255.255;
//   - for an IPv6 frame (EtherType 0x86DD, version 6, 40-byte header), the
//     source address → (port, source MAC), unless it is :: or multicast;
//   - for an ARP frame (Ethernet/IPv4, op request or reply), the sender
//     protocol address → (port, sender hardware address), unless it is
//     0.0.0.0 (a probe), and the sender hardware address → port;
//   - for an NDP message (ICMPv6 router/neighbor solicitation and
//     advertisement, hop limit 255, correct checksum): the source-link-layer
//     option's MAC replaces the Ethernet source as the MAC of the source IP
//     and is learnt → port; a neighbor advertisement's target-link-layer
//     option teaches target → (port, that MAC).
//
// A newer sighting replaces an older one: an address that moves to another
// port follows it. Every entry ages from the last frame that confirmed it
// and expires after the "expire" option (default 120 s); expired entries
// are ignored and swept. A port's entries are flushed when it leaves.
//
// Each table (IP addresses, MACs) holds at most "hashsize" entries (4096
// by default). As in the Ethernet switch (package vdeswitch), a full table
// first drops its expired entries, in a sweep done at most once a second
// and only if an entry may have expired; if it is still full, a new
// address is not learnt (frames to it are switched as if it were unknown)
// until entries expire or their port leaves. Known addresses are still
// refreshed and moved. So a member that forges source addresses grows
// neither table past hashsize nor evicts hosts that are still sending, and
// each of its frames costs O(1).
//
// # Forwarding
//
// A frame shorter than 14 bytes is invalid (an error of the sending port).
// Otherwise, in this order:
//
//   - An ARP request (op 1) for an IPv4 address learnt on another port, and
//     not a gratuitous one (sender and target address equal), is answered
//     by the switch: it sends the asking port a 60-byte ARP reply from the
//     learnt MAC (Ethernet source and sender hardware address = the learnt
//     MAC, sender protocol address = the asked address, target = the
//     asker's hardware and protocol addresses, Ethernet destination = the
//     asker's hardware address, zero padding). The request goes nowhere.
//   - An IPv6 Neighbor Solicitation (valid as above, source not ::) for a
//     target learnt on another port is answered with a Neighbor
//     Advertisement from the learnt MAC to the soliciting address: hop
//     limit 255, solicited and override flags set (router flag clear), a
//     target-link-layer option with the learnt MAC, the ICMPv6 checksum
//     over the pseudo-header; Ethernet destination = the solicitation's
//     source-link-layer option, else its Ethernet source. The solicitation
//     goes nowhere. Duplicate address detection (source ::) is flooded, so
//     that the owner itself answers.
//   - An IPv4 or IPv6 frame whose destination address is unicast and
//     learnt goes to the port that owns the address, whatever its
//     destination MAC says, with the destination MAC rewritten to the
//     learnt MAC of the address (when it differs, the frame is delivered
//     as Delivery.Alt; otherwise unchanged). If the owner is the sender,
//     the frame goes nowhere.
//   - Any other frame (other ARP, IP to an unknown or non-unicast address,
//     other EtherTypes) is switched by destination MAC: a learnt unicast
//     MAC sends it to that port (nowhere if that is the sender); broadcast,
//     multicast and unknown MACs flood it to every member but the sender.
//
// No frame is ever delivered back to its sender. The switch does not look
// inside 802.1Q tags: a tagged frame is switched by MAC.
//
// # Loop protection
//
// As the Ethernet switch and the hub do (package loop): every
// "loop.interval" the switch sends a probe (a 60-byte frame of ethertype
// 0x88b5 to 03:49:50:4e:00:01, carrying its random ID and the port) out of
// every link port (cables, VDE clients: policy.LinkPorter) and only those,
// and passes other switches' probes on to its other links. When one of its
// own probes, sent out of port a, comes back in on another port b, there
// is a loop through a and b: the switch blocks the higher numbered of the
// two. A blocked port forwards nothing either way: its frames go nowhere
// and teach nothing, no frame goes to it, and the switch answers no ARP or
// neighbor solicitation for an address learnt on it, nor forwards to such
// an address by IP or MAC (those frames are switched as if the address
// were unknown, flooded to the ports that are not blocked). Probes still
// go out of it and are read, and it is unblocked when the probes have
// stopped coming back for three to five intervals, or when it leaves.
// Frames that look like probes (that destination and ethertype) are the
// loop protection's to handle: they never reach members that are not
// links, and the switch learns nothing from them.
//
// # Options
//
//   - "expire": the age after which entries expire, a Go duration ("30s")
//     in 100ms..24h (MinExpire..MaxExpire); SetOption changes it, Option reads
//     it.
//   - "hashsize": the most entries of each table, 1..1048576
//     (MinHashSize..MaxHashSize), 4096 by default; SetOption changes it,
//     Option reads it. Lowering it drops no entry: a table above the size
//     learns no new address until it is below it.
//   - "ips": read only, the learnt IP addresses as a JSON list of
//     {"ip", "mac", "port", "age_seconds"}, sorted by address.
//   - "macs": read only, the learnt MAC addresses as a JSON list of
//     {"mac", "port", "age_seconds"}, sorted by address.
//   - "loop.interval": the probe interval of loop protection, a Go duration
//     in 10ms..1h (MinLoopInterval..MaxLoopInterval), 2s by default
//     (DefaultLoopInterval); 0 turns loop protection off and ends every
//     block. SetOption changes it, Option reads it.
//   - "loop.blocked": read only, the ports loop protection blocked, as a
//     JSON list of port numbers.
package l3switch

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ipn-project/ipn/policy"
	"github.com/ipn-project/ipn/policy/loop"
)

// Name is the name the policy registers under.
const Name = "l3switch"

// Defaults of a new switch.
const (
	// DefaultExpire is the default age after which learnt entries expire.
	DefaultExpire = 120 * time.Second
	// DefaultHashSize is the default number of entries of each table.
	DefaultHashSize = 4096
	// DefaultLoopInterval is the default probe interval of loop protection.
	DefaultLoopInterval = loop.DefaultInterval
)

// Bounds of the options; SetOption refuses values outside them.
const (
	// MinExpire is the shortest age of learnt entries.
	MinExpire = 100 * time.Millisecond
	// MaxExpire is the longest age of learnt entries.
	MaxExpire = 24 * time.Hour
	// MinHashSize is the smallest table, in entries.
	MinHashSize = 1
	// MaxHashSize is the largest table, in entries.
	MaxHashSize = 1 << 20
	// MinLoopInterval is the shortest probe interval other than 0 (off):
	// probes go out of every link port, so a short one would keep the
	// daemon busy.
	MinLoopInterval = loop.MinInterval
	// MaxLoopInterval is the longest probe interval.
	MaxLoopInterval = loop.MaxInterval
)

// sweepEvery is the shortest time between two sweeps that make room in a
// full table.
const sweepEvery = time.Second

func init() {
	policy.MustRegister(policy.VDESwitchL3, Name, New)
}

type mac [6]byte

func (m mac) String() string { return net.HardwareAddr(m[:]).String() }

// ipEntry is where an IP address was last seen.
type ipEntry struct {
	port int
	mac  mac
	seen time.Time
}

// macEntry is where a MAC address was last seen.
type macEntry struct {
	port int
	seen time.Time
}

// scratch is a source port's storage for the reply being built (Emit
// copies it). Rewritten frames are built in their Delivery's Buffer.
type scratch struct {
	reply []byte
}

// Switch is the layer-3 switch policy of one network.
type Switch struct {
	policy.Base
	net policy.Network
	// now is the clock; tests replace it before any port joins.
	now func() time.Time
	// loop is the loop protection; its own lock, taken after mu.
	loop *loop.Detector

	mu        sync.Mutex
	expire    time.Duration
	hashSize  int            // most entries of each table
	connected policy.PortSet // ports between PostNewPort and DeletePort
	ips       map[netip.Addr]ipEntry
	macs      map[mac]macEntry
	// lastSweep is when the tables were last swept; no entry expires
	// before nextExpiry.
	lastSweep  time.Time
	nextExpiry time.Time
	sweeps     int        // sweeps done, for tests
	scratch    []*scratch // by source port
	// blocked is the loop detector's snapshot of the blocked ports, as
	// the batch being routed read it (a set that does not change).
	blocked *policy.PortSet
}

var (
	_ policy.Policy        = (*Switch)(nil)
	_ policy.PortDescriber = (*Switch)(nil)
	_ policy.LinkPorter    = (*Switch)(nil)
)

// New returns a layer-3 switch for net; it implements policy.Factory. Its
// loop prober starts with the first link port.
func New(net policy.Network) (policy.Policy, error) {
	return newSwitch(net, nil), nil
}

// newSwitch returns a switch reading the time from now; with now nil, from
// time.Now, with a loop prober. With a test's clock, the switch and its
// loop detector both read it, and no prober runs: the test calls
// s.loop.Probe.
func newSwitch(net policy.Network, now func() time.Time) *Switch {
	s := &Switch{
		net:      net,
		now:      now,
		loop:     loop.New(net, now),
		expire:   DefaultExpire,
		hashSize: DefaultHashSize,
		ips:      make(map[netip.Addr]ipEntry),
		macs:     make(map[mac]macEntry),
	}
	if now == nil {
		s.now = time.Now
	}
	s.blocked = s.loop.Blocked()
	return s
}

// PostNewPort implements policy.Policy.PostNewPort: the port may teach
// addresses from now on.
func (s *Switch) PostNewPort(port int) {
	s.mu.Lock()
	s.connected.Add(port)
	s.mu.Unlock()
}

// LinkPort implements policy.LinkPorter: loop probes go out of port.
func (s *Switch) LinkPort(port int) { s.loop.LinkPort(port) }

// DeletePort implements policy.Policy.DeletePort: it flushes the port's
// entries, and its loop state goes with its node.
func (s *Switch) DeletePort(port int) {
	s.loop.DeletePort(port)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.connected.Remove(port)
	for a, e := range s.ips {
		if e.port == port {
			delete(s.ips, a)
		}
	}
	for m, e := range s.macs {
		if e.port == port {
			delete(s.macs, m)
		}
	}
}

// Close implements policy.Policy.Close: it stops the loop prober and
// drops the tables.
func (s *Switch) Close() {
	s.loop.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.ips)
	clear(s.macs)
	s.connected.Clear()
	s.scratch = nil
}

var _ policy.Tabler = (*Switch)(nil)

// Tables implements policy.Tabler: the live entries of the MAC and the IP
// tables.
func (s *Switch) Tables() []policy.Table {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	macs, ips := 0, 0
	for _, e := range s.macs {
		if now.Sub(e.seen) < s.expire {
			macs++
		}
	}
	for _, e := range s.ips {
		if now.Sub(e.seen) < s.expire {
			ips++
		}
	}
	return []policy.Table{{Name: "mac", Entries: macs, Max: s.hashSize}, {Name: "ip", Entries: ips, Max: s.hashSize}}
}

// entryBytes is what one entry of a table may take in memory, map overhead
// included.
const entryBytes = 160

var _ policy.Sizer = (*Switch)(nil)

// Size implements policy.Sizer: both tables full.
func (s *Switch) Size() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return 2 * int64(s.hashSize) * entryBytes
}

// SetOption implements policy.Policy.SetOption. Settings, with their
// ranges (the constants above):
//
//	expire DURATION     age of learnt entries (e.g. 120s), 100ms..24h
//	hashsize N          most entries of each table (IPs, MACs), 1..1048576
//	loop.interval DUR   probe interval, 10ms..1h (2s by default); 0 turns loop protection off
//
// A value out of range, or not a number or duration, is refused with an
// error that wraps EINVAL, as is setting a read-only option.
func (s *Switch) SetOption(name, value string) error {
	switch name {
	case "expire":
		d, err := time.ParseDuration(value)
		if err != nil || d < MinExpire || d > MaxExpire {
			return fmt.Errorf("option expire %q: want a duration in %v..%v: %w", value, MinExpire, MaxExpire, syscall.EINVAL)
		}
		s.mu.Lock()
		s.expire = d
		// Entries may have expired under the new age: sweep when next due.
		s.lastSweep, s.nextExpiry = time.Time{}, time.Time{}
		s.mu.Unlock()
		return nil
	case "hashsize":
		n, err := strconv.Atoi(value)
		if err != nil || n < MinHashSize || n > MaxHashSize {
			return fmt.Errorf("option hashsize %q: want %d..%d: %w", value, MinHashSize, MaxHashSize, syscall.EINVAL)
		}
		s.mu.Lock()
		s.hashSize = n
		s.mu.Unlock()
		return nil
	case "loop.interval":
		d, err := loop.ParseInterval(value)
		if err != nil {
			return fmt.Errorf("option %w", err)
		}
		return s.loop.SetInterval(d)
	case "ips", "macs", "loop.blocked":
		return fmt.Errorf("option %q is read only: %w", name, syscall.EINVAL)
	}
	return fmt.Errorf("option %q: want expire, hashsize or loop.interval (ips, macs and loop.blocked are read only): %w", name, syscall.ENOPROTOOPT)
}

// IPInfo is one entry of the "ips" option.
type IPInfo struct {
	IP         string  `json:"ip"`
	MAC        string  `json:"mac"`
	Port       int     `json:"port"`
	AgeSeconds float64 `json:"age_seconds"`
}

// MACInfo is one entry of the "macs" option.
type MACInfo struct {
	MAC        string  `json:"mac"`
	Port       int     `json:"port"`
	AgeSeconds float64 `json:"age_seconds"`
}

// Option implements policy.Policy.Option: "expire", "hashsize",
// "loop.interval", and the JSON tables "ips", "macs" and "loop.blocked".
func (s *Switch) Option(name string) (string, error) {
	var v any
	switch name {
	case "expire":
		s.mu.Lock()
		d := s.expire
		s.mu.Unlock()
		return d.String(), nil
	case "hashsize":
		s.mu.Lock()
		n := s.hashSize
		s.mu.Unlock()
		return strconv.Itoa(n), nil
	case "loop.interval":
		return s.loop.Interval().String(), nil
	case "loop.blocked":
		return s.loop.BlockedJSON(), nil
	case "ips":
		v = s.IPs()
	case "macs":
		v = s.MACs()
	default:
		return "", fmt.Errorf("option %q: want one of expire, hashsize, loop.interval, ips, macs, loop.blocked: %w", name, syscall.ENOPROTOOPT)
	}
	b, err := json.Marshal(v)
	return string(b), err
}

// IPs returns the live IP entries, sorted by address.
func (s *Switch) IPs() []IPInfo { return s.ipsOf(-1) }

// ipsOf returns the live IP entries of port, or of every port if port < 0,
// sorted by address. It holds s.mu only to copy them.
func (s *Switch) ipsOf(port int) []IPInfo {
	s.mu.Lock()
	now := s.now()
	type kv struct {
		a netip.Addr
		e ipEntry
	}
	var all []kv
	for a, e := range s.ips {
		if s.live(e.seen, now) && (port < 0 || e.port == port) {
			all = append(all, kv{a, e})
		}
	}
	s.mu.Unlock()
	slices.SortFunc(all, func(x, y kv) int { return x.a.Compare(y.a) })
	out := make([]IPInfo, 0, len(all))
	for _, x := range all {
		out = append(out, IPInfo{x.a.String(), x.e.mac.String(), x.e.port, now.Sub(x.e.seen).Seconds()})
	}
	return out
}

// MACs returns the live MAC entries, sorted by address.
func (s *Switch) MACs() []MACInfo {
	s.mu.Lock()
	now := s.now()
	type kv struct {
		m mac
		e macEntry
	}
	var all []kv
	for m, e := range s.macs {
		if s.live(e.seen, now) {
			all = append(all, kv{m, e})
		}
	}
	s.mu.Unlock()
	slices.SortFunc(all, func(x, y kv) int { return strings.Compare(string(x.m[:]), string(y.m[:])) })
	out := make([]MACInfo, 0, len(all))
	for _, x := range all {
		out = append(out, MACInfo{x.m.String(), x.e.port, now.Sub(x.e.seen).Seconds()})
	}
	return out
}

// DescribePort implements policy.PortDescriber: BLOCKED(loop) if loop
// protection blocked port, and the IP addresses learnt on it, sorted.
func (s *Switch) DescribePort(port int) string { return s.DescribePorts([]int{port})[0] }

var _ policy.PortsDescriber = (*Switch)(nil)

// DescribePorts implements policy.PortsDescriber: each port's block and
// addresses (policy.MaxListed at most, the others counted), in one pass
// over the table.
func (s *Switch) DescribePorts(ports []int) []string {
	want := make(map[int]int, len(ports))
	for i, p := range ports {
		want[p] = i
	}
	addrs := make([][]netip.Addr, len(ports))
	counts := make([]int, len(ports))
	s.mu.Lock()
	now := s.now()
	for a, e := range s.ips {
		i, ok := want[e.port]
		if !ok || !s.live(e.seen, now) {
			continue
		}
		if counts[i]++; len(addrs[i]) < policy.MaxListed {
			addrs[i] = append(addrs[i], a)
		}
	}
	s.mu.Unlock()
	blocked := s.loop.Blocked()
	out := make([]string, len(ports))
	for i, p := range ports {
		slices.SortFunc(addrs[i], func(x, y netip.Addr) int { return x.Compare(y) })
		var b strings.Builder
		if blocked.Has(p) {
			b.WriteString("BLOCKED(loop)")
		}
		for _, a := range addrs[i] {
			if b.Len() > 0 {
				b.WriteByte(' ')
			}
			b.WriteString(a.String())
		}
		if more := counts[i] - len(addrs[i]); more > 0 {
			fmt.Fprintf(&b, " (+%d more)", more)
		}
		out[i] = b.String()
	}
	return out
}

// live reports whether an entry seen at seen is still valid at now.
// Caller holds s.mu.
func (s *Switch) live(seen, now time.Time) bool { return now.Sub(seen) < s.expire }

// sweep drops expired entries, at most once per expiry period.
// Caller holds s.mu.
func (s *Switch) sweep(now time.Time) {
	if now.Sub(s.lastSweep) < s.expire {
		return
	}
	s.sweepNow(now)
}

// makeRoom drops expired entries to make room in a full table, if an entry
// may have expired and the last sweep is sweepEvery old; otherwise it costs
// O(1). Caller holds s.mu.
func (s *Switch) makeRoom(now time.Time) {
	if now.Sub(s.lastSweep) < sweepEvery {
		return
	}
	s.sweepNow(now)
}

// sweepNow drops expired entries if one may have expired, and notes when
// the oldest of the others expires. Caller holds s.mu.
func (s *Switch) sweepNow(now time.Time) {
	if now.Before(s.nextExpiry) {
		return
	}
	s.sweeps++
	s.lastSweep = now
	oldest := now
	for a, e := range s.ips {
		if !s.live(e.seen, now) {
			delete(s.ips, a)
		} else if e.seen.Before(oldest) {
			oldest = e.seen
		}
	}
	for m, e := range s.macs {
		if !s.live(e.seen, now) {
			delete(s.macs, m)
		} else if e.seen.Before(oldest) {
			oldest = e.seen
		}
	}
	s.nextExpiry = oldest.Add(s.expire)
}

// lookupIP returns the live entry of a; an entry on a blocked port is
// kept but not returned: nothing is forwarded to it. Caller holds s.mu.
func (s *Switch) lookupIP(a netip.Addr, now time.Time) (ipEntry, bool) {
	e, ok := s.ips[a]
	if ok && !s.live(e.seen, now) {
		delete(s.ips, a)
		return e, false
	}
	return e, ok && !s.blocked.Has(e.port)
}

// lookupMAC returns the live entry of m; an entry on a blocked port is
// kept but not returned: nothing is forwarded to it. Caller holds s.mu.
func (s *Switch) lookupMAC(m mac, now time.Time) (macEntry, bool) {
	e, ok := s.macs[m]
	if ok && !s.live(e.seen, now) {
		delete(s.macs, m)
		return e, false
	}
	return e, ok && !s.blocked.Has(e.port)
}

// learnMAC records that m is behind port, unless m is new and the table
// full. Caller holds s.mu.
func (s *Switch) learnMAC(m mac, port int, now time.Time) {
	if !unicastMAC(m) {
		return
	}
	if len(s.macs) >= s.hashSize {
		if _, ok := s.macs[m]; !ok {
			if s.makeRoom(now); len(s.macs) >= s.hashSize {
				return
			}
		}
	}
	s.macs[m] = macEntry{port, now}
}

// learnIP records that a is behind port with MAC m, unless a is new and
// the table full. Caller holds s.mu.
func (s *Switch) learnIP(a netip.Addr, m mac, port int, now time.Time) {
	if !unicastMAC(m) || !learnable(a) {
		return
	}
	if len(s.ips) >= s.hashSize {
		if _, ok := s.ips[a]; !ok {
			if s.makeRoom(now); len(s.ips) >= s.hashSize {
				return
			}
		}
	}
	s.ips[a] = ipEntry{port, m, now}
}

func unicastMAC(m mac) bool { return m[0]&1 == 0 && m != (mac{}) }

// learnable reports whether a can be a host's own address.
func learnable(a netip.Addr) bool {
	return a.IsValid() && !a.IsUnspecified() && !a.IsMulticast() && a != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

// unicastIP reports whether frames to a are forwarded by address.
func unicastIP(a netip.Addr) bool { return learnable(a) }

// scratchFor returns src's scratch. Caller holds s.mu.
func (s *Switch) scratchFor(src int) *scratch {
	for len(s.scratch) <= src {
		s.scratch = append(s.scratch, nil)
	}
	if s.scratch[src] == nil {
		s.scratch[src] = &scratch{}
	}
	return s.scratch[src]
}

// Ethernet and protocol constants.
const (
	ethHeader  = 14
	typeIPv4   = 0x0800
	typeARP    = 0x0806
	typeIPv6   = 0x86DD
	arpLen     = 28
	ipv6Header = 40
	protoICMP6 = 58

	icmpRS = 133
	icmpRA = 134
	icmpNS = 135
	icmpNA = 136

	optSourceLL = 1
	optTargetLL = 2

	// ARPReplyLen is the length of the ARP replies the switch sends: an
	// Ethernet header, the ARP packet and padding to the Ethernet minimum.
	ARPReplyLen = 60
	// NAReplyLen is the length of the neighbor advertisements the switch
	// sends: Ethernet, IPv6, a 24-byte NA and an 8-byte target-link-layer
	// option.
	NAReplyLen = ethHeader + ipv6Header + 32
)

// Route implements policy.Policy.Route.
func (s *Switch) Route(src int, msgs [][]byte, members *policy.PortSet, out []policy.Delivery) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	s.sweep(now)
	s.blocked = s.loop.Blocked()
	learn := s.connected.Has(src)
	sc := s.scratchFor(src)
	for i, f := range msgs {
		s.route(src, i, f, members, &out[i], sc, learn, now)
	}
}

// route decides where frame f, the i-th of a batch from src, goes.
// Caller holds s.mu.
func (s *Switch) route(src, i int, f []byte, members *policy.PortSet, d *policy.Delivery, sc *scratch, learn bool, now time.Time) {
	if len(f) < ethHeader {
		d.Invalid = true
		return
	}
	if loop.IsProbe(f) {
		s.loop.Route(src, f, members, d)
		return
	}
	if s.blocked.Has(src) {
		return // a blocked port forwards nothing, and teaches nothing
	}
	dstMAC, srcMAC := mac(f[0:6]), mac(f[6:12])
	if learn {
		s.learnMAC(srcMAC, src, now)
	}
	switch binary.BigEndian.Uint16(f[12:14]) {
	case typeIPv4:
		if len(f) < ethHeader+20 || f[14]>>4 != 4 || f[14]&0xf < 5 || len(f) < ethHeader+int(f[14]&0xf)*4 {
			break
		}
		if learn {
			s.learnIP(netip.AddrFrom4([4]byte(f[26:30])), srcMAC, src, now)
		}
		if s.forwardIP(src, i, f, netip.AddrFrom4([4]byte(f[30:34])), d, sc, now) {
			return
		}
	case typeIPv6:
		if len(f) < ethHeader+ipv6Header || f[14]>>4 != 6 {
			break
		}
		srcIP := netip.AddrFrom16([16]byte(f[22:38]))
		if learn {
			s.learnIP(srcIP, srcMAC, src, now)
		}
		if f[20] == protoICMP6 && s.ndp(src, f, srcIP, members, sc, learn, now) {
			return
		}
		if s.forwardIP(src, i, f, netip.AddrFrom16([16]byte(f[38:54])), d, sc, now) {
			return
		}
	case typeARP:
		if s.arp(src, f, members, sc, learn, now) {
			return
		}
	}
	// Switch by destination MAC.
	if unicastMAC(dstMAC) {
		if e, ok := s.lookupMAC(dstMAC, now); ok {
			if e.port != src {
				d.Ports.Add(e.port)
			}
			return
		}
	}
	d.Ports.CopyFrom(*members)
	d.Ports.Remove(src)
	for p := s.blocked.Next(0); p >= 0; p = s.blocked.Next(p + 1) {
		d.Ports.Remove(p)
	}
}

// forwardIP sends f to the owner of dst if it is learnt, rewriting the
// destination MAC, and reports whether it did (or dropped f because the
// owner is the sender). Caller holds s.mu.
func (s *Switch) forwardIP(src, i int, f []byte, dst netip.Addr, d *policy.Delivery, sc *scratch, now time.Time) bool {
	if !unicastIP(dst) {
		return false
	}
	e, ok := s.lookupIP(dst, now)
	if !ok {
		return false
	}
	if e.port == src {
		return true
	}
	if mac(f[0:6]) == e.mac {
		d.Ports.Add(e.port)
		return true
	}
	alt := d.Buffer(len(f))
	copy(alt, f)
	copy(alt[0:6], e.mac[:])
	d.Alt = alt
	d.AltPorts.Add(e.port)
	return true
}

// arp learns from an ARP frame and answers a request for a learnt address;
// it reports whether the frame is done with (answered). Caller holds s.mu.
func (s *Switch) arp(src int, f []byte, members *policy.PortSet, sc *scratch, learn bool, now time.Time) bool {
	if len(f) < ethHeader+arpLen {
		return false
	}
	a := f[ethHeader:]
	if binary.BigEndian.Uint16(a[0:2]) != 1 || binary.BigEndian.Uint16(a[2:4]) != typeIPv4 || a[4] != 6 || a[5] != 4 {
		return false
	}
	op := binary.BigEndian.Uint16(a[6:8])
	sha, spa := mac(a[8:14]), netip.AddrFrom4([4]byte(a[14:18]))
	tpa := netip.AddrFrom4([4]byte(a[24:28]))
	if op != 1 && op != 2 {
		return false
	}
	if learn {
		s.learnMAC(sha, src, now)
		s.learnIP(spa, sha, src, now)
	}
	if op != 1 || spa == tpa || !unicastMAC(sha) {
		return false
	}
	e, ok := s.lookupIP(tpa, now)
	if !ok || e.port == src {
		return false
	}
	if members.Has(src) {
		r := sc.replyBuf(ARPReplyLen)
		copy(r[0:6], sha[:])
		copy(r[6:12], e.mac[:])
		binary.BigEndian.PutUint16(r[12:14], typeARP)
		p := r[ethHeader:]
		binary.BigEndian.PutUint16(p[0:2], 1)
		binary.BigEndian.PutUint16(p[2:4], typeIPv4)
		p[4], p[5] = 6, 4
		binary.BigEndian.PutUint16(p[6:8], 2)
		copy(p[8:14], e.mac[:])
		copy(p[14:18], a[24:28]) // the asked address
		copy(p[18:24], sha[:])
		copy(p[24:28], a[14:18])
		s.net.Emit(src, r) // a full queue loses the reply, as it would a frame
	}
	return true
}

// replyBuf returns n zeroed bytes to build a reply in.
func (s *scratch) replyBuf(n int) []byte {
	if cap(s.reply) < n {
		s.reply = make([]byte, n, max(n, 128))
	}
	r := s.reply[:n]
	clear(r)
	return r
}

// ndp learns from an NDP message in the IPv6 frame f and answers a neighbor
// solicitation for a learnt address; it reports whether f is done with
// (answered). Caller holds s.mu.
func (s *Switch) ndp(src int, f []byte, srcIP netip.Addr, members *policy.PortSet, sc *scratch, learn bool, now time.Time) bool {
	plen := int(binary.BigEndian.Uint16(f[18:20]))
	if f[21] != 255 || len(f) < ethHeader+ipv6Header+plen || plen < 8 {
		return false
	}
	icmp := f[ethHeader+ipv6Header : ethHeader+ipv6Header+plen]
	var body int // offset of the options
	switch icmp[0] {
	case icmpRS:
		body = 8
	case icmpRA:
		body = 16
	case icmpNS, icmpNA:
		body = 24
	default:
		return false
	}
	if icmp[1] != 0 || plen < body || checksum6(f[22:38], f[38:54], icmp) != 0 {
		return false
	}
	var sll, tll mac
	var hasSLL, hasTLL bool
	for o := icmp[body:]; len(o) >= 2; {
		n := int(o[1]) * 8
		if n == 0 || n > len(o) {
			return false // malformed options: RFC 4861 says discard
		}
		switch {
		case o[0] == optSourceLL && n >= 8:
			sll, hasSLL = mac(o[2:8]), true
		case o[0] == optTargetLL && n >= 8:
			tll, hasTLL = mac(o[2:8]), true
		}
		o = o[n:]
	}
	if learn {
		if hasSLL && !srcIP.IsUnspecified() {
			s.learnMAC(sll, src, now)
			s.learnIP(srcIP, sll, src, now)
		}
		if icmp[0] == icmpNA && hasTLL {
			s.learnMAC(tll, src, now)
			s.learnIP(netip.AddrFrom16([16]byte(icmp[8:24])), tll, src, now)
		}
	}
	if icmp[0] != icmpNS || srcIP.IsUnspecified() {
		return false
	}
	target := netip.AddrFrom16([16]byte(icmp[8:24]))
	if !unicastIP(target) {
		return false
	}
	e, ok := s.lookupIP(target, now)
	if !ok || e.port == src {
		return false
	}
	if members.Has(src) {
		to := mac(f[6:12])
		if hasSLL {
			to = sll
		}
		r := sc.replyBuf(NAReplyLen)
		copy(r[0:6], to[:])
		copy(r[6:12], e.mac[:])
		binary.BigEndian.PutUint16(r[12:14], typeIPv6)
		ip := r[ethHeader:]
		ip[0] = 6 << 4
		binary.BigEndian.PutUint16(ip[4:6], 32)
		ip[6], ip[7] = protoICMP6, 255
		copy(ip[8:24], icmp[8:24]) // from the target
		copy(ip[24:40], f[22:38])  // to the solicitor
		na := ip[ipv6Header:]
		na[0] = icmpNA
		na[4] = 0x60 // solicited, override
		copy(na[8:24], icmp[8:24])
		na[24], na[25] = optTargetLL, 1
		copy(na[26:32], e.mac[:])
		binary.BigEndian.PutUint16(na[2:4], checksum6(ip[8:24], ip[24:40], na))
		s.net.Emit(src, r)
	}
	return true
}

// checksum6 returns the ICMPv6 checksum of msg between src and dst: over
// the IPv6 pseudo-header and msg. Over a message that holds its checksum
// it returns 0 if the checksum is right.
func checksum6(src, dst, msg []byte) uint16 {
	var sum uint32
	add := func(b []byte) {
		for len(b) >= 2 {
			sum += uint32(b[0])<<8 | uint32(b[1])
			b = b[2:]
		}
		if len(b) == 1 {
			sum += uint32(b[0]) << 8
		}
	}
	add(src)
	add(dst)
	sum += uint32(len(msg)>>16) + uint32(len(msg)&0xffff)
	sum += protoICMP6
	add(msg)
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
