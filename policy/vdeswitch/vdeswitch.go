// Package vdeswitch is the Ethernet switch policy of IPN (IPN_VDESWITCH),
// with the VLANs and loop protection of an extended switch.
//
// Learning: every frame's source MAC is learnt, with its VLAN, as being
// behind the port that sent it; a MAC seen on another port moves at once.
// Forwarding: a unicast frame to a learnt MAC goes to that port only;
// broadcast, multicast and unknown destinations are flooded to every other
// port of the VLAN. A frame never goes back to its source port; frames
// shorter than an Ethernet header are errors. Entries expire (Expire, 120 s
// by default) and a port's entries are flushed when it leaves. The table is
// a hash map (O(1) lookups) of at most HashSize entries. A full table
// first drops its expired entries, in a sweep done at most once a second
// and only if an entry may have expired; if it is still full, new MACs are
// not learnt (and frames to them are flooded) until entries expire or
// their port leaves. So a frame from an unknown MAC costs O(1) however
// full the table, and a member that forges source MACs cannot evict hosts
// that are still sending.
//
// VLANs follow vde_switch: each port has an untagged VLAN (1 by default; 0
// for none), where frames come in and go out without a tag, and a set of
// tagged VLANs (a trunk), where frames carry an 802.1Q tag. The switch
// adds or removes the tag as a frame crosses from one kind of port to the
// other, and frames never cross from one VLAN to another.
//
// Loop protection (package loop, shared with the hub): every LoopInterval
// the switch sends a probe (a 60-byte frame of ethertype 0x88b5 to
// 03:49:50:4e:00:01, carrying its random ID and the port) out of every link
// port (cables, VDE clients) and only those, and passes other switches'
// probes on to its other links. When one of its own probes, sent out of
// port a, comes back in on another port b, there is a loop through a and b:
// the switch blocks the higher numbered of the two. A blocked port forwards
// nothing either way (probes still go out and are read), and is unblocked
// when the probes have stopped coming back for three to five intervals.
// Members that are not links never receive a probe.
package vdeswitch

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/bits"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/ipn-project/ipn/policy"
	"github.com/ipn-project/ipn/policy/loop"
)

// Name is the name the switch registers under.
const Name = "switch"

func init() {
	policy.MustRegister(policy.VDESwitch, Name, New)
}

// Defaults of a new switch.
const (
	DefaultExpire       = 120 * time.Second
	DefaultHashSize     = 4096
	DefaultVLAN         = 1
	DefaultLoopInterval = loop.DefaultInterval
)

// sweepEvery is the shortest time between two sweeps of the table for
// expired entries.
const sweepEvery = time.Second

// Bounds of the settings; SetOption refuses values outside them.
const (
	// MinExpire is the shortest age of MAC entries.
	MinExpire = 100 * time.Millisecond
	// MaxExpire is the longest age of MAC entries.
	MaxExpire = 24 * time.Hour
	// MinLoopInterval is the shortest probe interval other than 0 (off): probes
	// go out of every port, so a short one would keep the daemon busy.
	MinLoopInterval = loop.MinInterval
	// MaxLoopInterval is the longest probe interval.
	MaxLoopInterval = loop.MaxInterval
	// MinHashSize is the smallest MAC table.
	MinHashSize = 1
	// MaxHashSize is the largest MAC table, in entries.
	MaxHashSize = 1 << 20
	// MaxVLAN is the largest VLAN id; VLANs are 1..MaxVLAN.
	MaxVLAN = maxVLAN
)

// Ethernet facts.
const (
	etherHeader = 14
	etherVLAN   = 0x8100
	maxVLAN     = 4095
)

type key struct {
	mac  [6]byte
	vlan uint16
}

type entry struct {
	port int
	seen time.Time
}

// vlanSet is a set of VLAN ids.
type vlanSet [(maxVLAN + 64) / 64]uint64

func (s *vlanSet) has(v uint16) bool { return s[v/64]&(1<<(v%64)) != 0 }
func (s *vlanSet) add(v uint16)      { s[v/64] |= 1 << (v % 64) }
func (s *vlanSet) del(v uint16)      { s[v/64] &^= 1 << (v % 64) }
func (s *vlanSet) list() []uint16 {
	var l []uint16
	for i, w := range s {
		for w != 0 {
			b := bits.TrailingZeros64(w)
			l = append(l, uint16(i*64+b))
			w &^= 1 << b
		}
	}
	return l
}

// portConf is a port number's configuration; it stays with the number
// when nodes come and go, as on a physical switch.
type portConf struct {
	untagged uint16 // 0: none
	tagged   vlanSet
}

// Switch is one network's switch. Its state is guarded by mu: Route runs
// for several ports at once and learns on every frame.
type Switch struct {
	net  policy.Network
	now  func() time.Time
	loop *loop.Detector // its own lock, taken after mu

	mu       sync.Mutex
	table    map[key]entry
	hashSize int
	expire   time.Duration
	vlans    vlanSet // VLANs that exist
	ports    []portConf
	// lastSweep is when the table was last swept; no entry expires before
	// nextExpiry (give or take the frames whose time Route read before a
	// sweep: it reads the clock before it locks).
	lastSweep  time.Time
	nextExpiry time.Time
	sweeps     int // sweeps done, for tests
}

var (
	_ policy.Policy        = (*Switch)(nil)
	_ policy.PortDescriber = (*Switch)(nil)
	_ policy.LinkPorter    = (*Switch)(nil)
)

// New returns a switch for net with the defaults; it implements
// policy.Factory. Its loop prober starts with the first link port.
func New(net policy.Network) (policy.Policy, error) {
	return newSwitch(net, nil), nil
}

// newSwitch returns a switch reading the time from now; with now nil, from
// time.Now, with a loop prober (a test's clock: it calls s.loop.Probe).
func newSwitch(net policy.Network, now func() time.Time) *Switch {
	s := &Switch{
		net:      net,
		now:      now,
		table:    make(map[key]entry),
		hashSize: DefaultHashSize,
		expire:   DefaultExpire,
		loop:     loop.New(net, now),
	}
	if now == nil {
		s.now = time.Now
	}
	s.vlans.add(DefaultVLAN)
	s.resizeLocked(net.NumPorts())
	return s
}

func (s *Switch) resizeLocked(n int) {
	for len(s.ports) < n {
		s.ports = append(s.ports, portConf{untagged: DefaultVLAN})
	}
	s.ports = s.ports[:n]
}

// NewPort implements policy.Policy.NewPort.
func (s *Switch) NewPort(want int, used *policy.PortSet, numPorts int) (int, error) {
	return policy.FirstFree(want, used, numPorts)
}

// PostNewPort implements policy.Policy.PostNewPort.
func (s *Switch) PostNewPort(int) {}

// LinkPort implements policy.LinkPorter: loop probes go out of port.
func (s *Switch) LinkPort(port int) { s.loop.LinkPort(port) }

// PreDeletePort implements policy.Policy.PreDeletePort.
func (s *Switch) PreDeletePort(int) {}

// DeletePort implements policy.Policy.DeletePort: the port's MACs go, and
// its loop state with its node.
func (s *Switch) DeletePort(port int) {
	s.loop.DeletePort(port)
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, e := range s.table {
		if e.port == port {
			delete(s.table, k)
		}
	}
}

// Resize implements policy.Policy.Resize.
func (s *Switch) Resize(n int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.resizeLocked(n)
	return nil
}

// Close implements policy.Policy.Close: it stops the prober.
func (s *Switch) Close() {
	s.loop.Close()
}

// Route implements policy.Policy.Route.
func (s *Switch) Route(src int, msgs [][]byte, members *policy.PortSet, out []policy.Delivery) {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if src >= len(s.ports) {
		return
	}
	in := &s.ports[src]
	blocked := s.loop.Blocked()
	for i, f := range msgs {
		d := &out[i]
		if len(f) < etherHeader {
			d.Invalid = true
			continue
		}
		et := binary.BigEndian.Uint16(f[12:])
		if loop.IsProbe(f) {
			s.loop.Route(src, f, members, d)
			continue
		}
		if blocked.Has(src) {
			continue
		}
		var vlan uint16
		tagged := et == etherVLAN
		if tagged {
			if len(f) < etherHeader+4 {
				d.Invalid = true
				continue
			}
			vlan = binary.BigEndian.Uint16(f[14:]) & maxVLAN
			if !in.tagged.has(vlan) {
				continue // not a member of that VLAN: dropped
			}
		} else {
			vlan = in.untagged
			if vlan == 0 {
				continue
			}
		}
		if !s.vlans.has(vlan) {
			continue
		}
		var k key
		if copy(k.mac[:], f[6:12]); k.mac[0]&1 == 0 {
			k.vlan = vlan
			s.learnLocked(k, src, now)
		}
		copy(k.mac[:], f[:6])
		k.vlan = vlan
		if k.mac[0]&1 == 0 {
			if e, ok := s.table[k]; ok {
				if now.Sub(e.seen) < s.expire {
					if e.port != src {
						s.toPortLocked(e.port, vlan, tagged, f, members, blocked, d)
					}
					continue
				}
				delete(s.table, k)
			}
		}
		for p := members.Next(0); p >= 0; p = members.Next(p + 1) {
			if p != src {
				s.toPortLocked(p, vlan, tagged, f, members, blocked, d)
			}
		}
	}
}

// sweepDueLocked forgets expired entries if an entry may have expired
// and the last sweep is sweepEvery old; otherwise it costs O(1).
func (s *Switch) sweepDueLocked(now time.Time) {
	if now.Before(s.nextExpiry) || now.Sub(s.lastSweep) < sweepEvery {
		return
	}
	s.sweeps++
	s.lastSweep = now
	oldest := now
	for k, e := range s.table {
		if now.Sub(e.seen) >= s.expire {
			delete(s.table, k)
		} else if e.seen.Before(oldest) {
			oldest = e.seen
		}
	}
	s.nextExpiry = oldest.Add(s.expire)
}

// learnLocked records that k is behind port src. A full table first drops
// its expired entries, if a sweep is due; if it is still full, k is not
// learnt (and frames to it are flooded).
func (s *Switch) learnLocked(k key, src int, now time.Time) {
	e, ok := s.table[k]
	if !ok && len(s.table) >= s.hashSize {
		s.sweepDueLocked(now)
		if len(s.table) >= s.hashSize {
			return
		}
	}
	if ok && e.port == src && now.Sub(e.seen) < time.Second {
		return // fresh enough: spare the map write
	}
	s.table[k] = entry{port: src, seen: now}
}

// toPortLocked adds port p to the frame's delivery in the form p wants for
// vlan: untagged on its untagged VLAN, tagged on its trunk VLANs; not if
// p is blocked.
func (s *Switch) toPortLocked(p int, vlan uint16, tagged bool, f []byte, members, blocked *policy.PortSet, d *policy.Delivery) {
	if !members.Has(p) || p >= len(s.ports) {
		return
	}
	c := &s.ports[p]
	var wantTagged bool
	switch {
	case blocked.Has(p):
		return
	case c.untagged == vlan:
		wantTagged = false
	case c.tagged.has(vlan):
		wantTagged = true
	default:
		return
	}
	if wantTagged == tagged {
		d.Ports.Add(p)
		return
	}
	if d.Alt == nil {
		if tagged { // remove the tag
			alt := d.Buffer(len(f) - 4)
			copy(alt, f[:12])
			copy(alt[12:], f[16:])
			d.Alt = alt
		} else { // add it
			alt := d.Buffer(len(f) + 4)
			copy(alt, f[:12])
			binary.BigEndian.PutUint16(alt[12:], etherVLAN)
			binary.BigEndian.PutUint16(alt[14:], vlan)
			copy(alt[16:], f[12:])
			d.Alt = alt
		}
	}
	d.AltPorts.Add(p)
}

// IsProbe reports whether frame is a loop probe of a switch or a hub
// (loop.IsProbe). Only links (cables) receive them; programs that read
// frames from a link may want to skip them.
func IsProbe(frame []byte) bool { return loop.IsProbe(frame) }

// MACEntry is a row of the switch's table, as Option("macs") lists it.
type MACEntry struct {
	MAC  string  `json:"mac"`
	VLAN uint16  `json:"vlan"`
	Port int     `json:"port"`
	Age  float64 `json:"age_seconds"`
}

// PortEntry is a port's configuration, as Option("ports") lists it.
type PortEntry struct {
	Port     int      `json:"port"`
	Untagged uint16   `json:"vlan"`
	Tagged   []uint16 `json:"trunk"`
	Blocked  bool     `json:"blocked"`
}

// entryBytes is what one entry of a MAC table may take in memory, map
// overhead included.
const entryBytes = 128

var _ policy.Sizer = (*Switch)(nil)

// Size implements policy.Sizer: a full MAC table and the ports' settings.
func (s *Switch) Size() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return int64(s.hashSize)*entryBytes + int64(len(s.ports))*int64(unsafe.Sizeof(portConf{}))
}

var _ policy.Tabler = (*Switch)(nil)

// Tables implements policy.Tabler: the MAC table's live entries.
func (s *Switch) Tables() []policy.Table {
	s.mu.Lock()
	defer s.mu.Unlock()
	return []policy.Table{{Name: "mac", Entries: liveLocked(s.table, s.now(), s.expire), Max: s.hashSize}}
}

// liveLocked counts the entries of table seen less than expire before now.
func liveLocked(table map[key]entry, now time.Time, expire time.Duration) int {
	n := 0
	for _, e := range table {
		if now.Sub(e.seen) < expire {
			n++
		}
	}
	return n
}

// SetOption implements policy.Policy.SetOption. Settings, with their
// ranges (the constants above):
//
//	expire DURATION       age of MAC entries (e.g. 120s), 100ms..24h
//	hashsize N            most entries in the MAC table, 1..1048576
//	loop.interval DUR     probe interval, 10ms..1h; 0 turns loop protection off
//	vlan.add V            make VLAN V (1..4095)
//	vlan.del V            remove VLAN V (1..4095) from the switch and its ports
//	port.vlan "P V"       untagged VLAN of port P (0..ports-1): 1..4095, 0 for none
//	port.trunk "P V,V.."  tagged VLANs (1..4095) of port P (0..ports-1); empty: none
//	mac.flush ""          forget every MAC
//
// A value out of range, or not a number or duration, is refused with an
// error that wraps EINVAL; a VLAN that does not exist, with ENOENT.
func (s *Switch) SetOption(name, value string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch name {
	case "expire":
		d, err := time.ParseDuration(value)
		if err != nil || d < MinExpire || d > MaxExpire {
			return fmt.Errorf("switch option expire %q: want a duration in %v..%v: %w", value, MinExpire, MaxExpire, syscall.EINVAL)
		}
		s.expire = d
		// Entries may have expired under the new age: sweep when next due.
		s.lastSweep, s.nextExpiry = time.Time{}, time.Time{}
		return nil
	case "loop.interval":
		d, err := loop.ParseInterval(value)
		if err != nil {
			return fmt.Errorf("switch option %w", err)
		}
		return s.loop.SetInterval(d)
	case "hashsize":
		n, err := strconv.Atoi(value)
		if err != nil || n < MinHashSize || n > MaxHashSize {
			return fmt.Errorf("switch option hashsize %q: want %d..%d: %w", value, MinHashSize, MaxHashSize, syscall.EINVAL)
		}
		s.hashSize = n
		return nil
	case "mac.flush":
		clear(s.table)
		return nil
	case "vlan.add", "vlan.del":
		v, err := parseVLAN(value, false)
		if err != nil {
			return fmt.Errorf("switch option %s: %w", name, err)
		}
		if name == "vlan.add" {
			s.vlans.add(v)
			return nil
		}
		if !s.vlans.has(v) {
			return fmt.Errorf("switch option vlan.del: vlan %d does not exist (the vlans option lists them; ipn vlan NET): %w", v, syscall.ENOENT)
		}
		s.vlans.del(v)
		for i := range s.ports {
			if s.ports[i].untagged == v {
				s.ports[i].untagged = 0
			}
			s.ports[i].tagged.del(v)
		}
		for k := range s.table {
			if k.vlan == v {
				delete(s.table, k)
			}
		}
		return nil
	case "port.vlan", "port.trunk":
		ps, rest, _ := strings.Cut(strings.TrimSpace(value), " ")
		p, err := strconv.Atoi(ps)
		if err != nil || p < 0 || p >= len(s.ports) {
			return fmt.Errorf("switch option %s: port %q: want 0..%d, the network's ports: %w", name, ps, len(s.ports)-1, syscall.EINVAL)
		}
		if name == "port.vlan" {
			v, err := parseVLAN(rest, true)
			if err != nil {
				return fmt.Errorf("switch option %s: port %d: %w", name, p, err)
			}
			if v != 0 && !s.vlans.has(v) {
				return noVLAN(v)
			}
			s.ports[p].untagged = v
			return nil
		}
		var set vlanSet
		for _, f := range strings.FieldsFunc(rest, func(r rune) bool { return r == ',' || r == ' ' }) {
			v, err := parseVLAN(f, false)
			if err != nil {
				return fmt.Errorf("switch option %s: port %d: %w", name, p, err)
			}
			if !s.vlans.has(v) {
				return noVLAN(v)
			}
			set.add(v)
		}
		s.ports[p].tagged = set
		return nil
	}
	return fmt.Errorf("switch option %q: want one of %s: %w", name, setOptions, syscall.ENOPROTOOPT)
}

// The names of the switch's options, as its unknown-option errors list them.
const (
	setOptions = "expire, hashsize, loop.interval, mac.flush, vlan.add, vlan.del, port.vlan, port.trunk"
	getOptions = "expire, hashsize, loop.interval, loop.blocked, macs, ports, vlans"
)

// noVLAN is the error of a port setting that names VLAN v, which does not
// exist: it says how to make it.
func noVLAN(v uint16) error {
	return fmt.Errorf("vlan %d does not exist: make it first (option vlan.add %d; ipn vlan NET add %d): %w", v, v, v, syscall.ENOENT)
}

// parseVLAN reads a VLAN id, 1..MaxVLAN, or 0 too if zeroOK.
func parseVLAN(s string, zeroOK bool) (uint16, error) {
	v, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || v < 0 || v > MaxVLAN || (v == 0 && !zeroOK) {
		if zeroOK {
			return 0, fmt.Errorf("vlan %q: want 1..%d, or 0 for none: %w", s, MaxVLAN, syscall.EINVAL)
		}
		return 0, fmt.Errorf("vlan %q: want 1..%d: %w", s, MaxVLAN, syscall.EINVAL)
	}
	return uint16(v), nil
}

// Option implements policy.Policy.Option: "macs", "ports", "vlans" and
// "loop.blocked" (the blocked ports) are JSON tables; "expire", "hashsize"
// and "loop.interval" the settings.
func (s *Switch) Option(name string) (string, error) {
	if name == "macs" {
		s.mu.Lock()
		rows := s.macRowsLocked(-1)
		s.mu.Unlock()
		b, err := json.Marshal(macEntries(rows))
		return string(b), err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var v any
	switch name {
	case "expire":
		return s.expire.String(), nil
	case "hashsize":
		return strconv.Itoa(s.hashSize), nil
	case "loop.interval":
		return s.loop.Interval().String(), nil
	case "loop.blocked":
		return s.loop.BlockedJSON(), nil
	case "ports":
		ports := []PortEntry{}
		blocked := s.loop.Blocked()
		for p := range s.ports {
			c := &s.ports[p]
			ports = append(ports, PortEntry{Port: p, Untagged: c.untagged, Tagged: c.tagged.list(), Blocked: blocked.Has(p)})
		}
		v = ports
	case "vlans":
		v = s.vlans.list()
	default:
		return "", fmt.Errorf("switch option %q: want one of %s: %w", name, getOptions, syscall.ENOPROTOOPT)
	}
	b, err := json.Marshal(v)
	return string(b), err
}

// macRow is a live entry of the table, as listings copy it.
type macRow struct {
	key  key
	port int
	age  time.Duration
}

// macRowsLocked returns the live entries, of port p only if p >= 0; the
// listings format them once they let go of s.mu.
func (s *Switch) macRowsLocked(p int) []macRow {
	now := s.now()
	var rows []macRow
	for k, e := range s.table {
		if age := now.Sub(e.seen); age < s.expire && (p < 0 || e.port == p) {
			rows = append(rows, macRow{k, e.port, age})
		}
	}
	return rows
}

// macEntries returns rows as MACEntry, sorted by port and MAC.
func macEntries(rows []macRow) []MACEntry {
	macs := make([]MACEntry, 0, len(rows))
	for _, r := range rows {
		macs = append(macs, MACEntry{MAC: net.HardwareAddr(r.key.mac[:]).String(), VLAN: r.key.vlan, Port: r.port, Age: r.age.Seconds()})
	}
	sort.Slice(macs, func(i, j int) bool {
		if macs[i].Port != macs[j].Port {
			return macs[i].Port < macs[j].Port
		}
		return macs[i].MAC < macs[j].MAC
	})
	return macs
}

// DescribePort implements policy.PortDescriber: VLANs, block, MACs.
func (s *Switch) DescribePort(p int) string { return s.DescribePorts([]int{p})[0] }

var _ policy.PortsDescriber = (*Switch)(nil)

// DescribePorts implements policy.PortsDescriber: one pass over the MAC
// table for all of ports.
func (s *Switch) DescribePorts(ports []int) []string {
	want := make(map[int]int, len(ports)) // port: index in ports
	for i, p := range ports {
		want[p] = i
	}
	rows := make([][]macRow, len(ports))
	counts := make([]int, len(ports))
	confs := make([]portConf, len(ports))
	valid := make([]bool, len(ports))
	s.mu.Lock()
	now := s.now()
	for k, e := range s.table {
		i, ok := want[e.port]
		if !ok || now.Sub(e.seen) >= s.expire {
			continue
		}
		if counts[i]++; len(rows[i]) < policy.MaxListed {
			rows[i] = append(rows[i], macRow{k, e.port, now.Sub(e.seen)})
		}
	}
	for i, p := range ports {
		if p >= 0 && p < len(s.ports) {
			confs[i], valid[i] = s.ports[p], true
		}
	}
	s.mu.Unlock()
	blocked := s.loop.Blocked()
	out := make([]string, len(ports))
	for i := range ports {
		if !valid[i] {
			continue
		}
		c := confs[i]
		var b strings.Builder
		if c.untagged != 0 {
			fmt.Fprintf(&b, "vlan %d", c.untagged)
		} else {
			b.WriteString("vlan -")
		}
		if t := c.tagged.list(); len(t) > 0 {
			fmt.Fprintf(&b, " trunk %s", strings.Trim(fmt.Sprint(t), "[]"))
		}
		if blocked.Has(ports[i]) {
			b.WriteString(" BLOCKED(loop)")
		}
		for j, m := range macEntries(rows[i]) {
			if j == 0 {
				b.WriteString(" macs")
			}
			fmt.Fprintf(&b, " %s", m.MAC)
			if m.VLAN != c.untagged {
				fmt.Fprintf(&b, "@%d", m.VLAN)
			}
		}
		if more := counts[i] - len(rows[i]); more > 0 {
			fmt.Fprintf(&b, " (+%d more)", more)
		}
		out[i] = b.String()
	}
	return out
}
