package vdemgmt

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"net"
	"os"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// command is one of the console's commands, as help lists it.
type command struct {
	path, syntax, help string
	// run answers the command; lines are printed inside the data framing
	// if data.
	run    func(s *session, arg string) ([]string, error)
	data   bool
	change bool // needs x on the network
}

// menu is a heading of help, as vde_switch's (no command).
func menu(path, help string) command {
	return command{path: path, syntax: "============", help: help}
}

// commands are matched in this order by prefix, as vde_switch does: the
// first whose path begins the line wins and the rest is its argument.
var commands []command

func init() {
	commands = []command{
		menu("ds", "DATA SOCKET MENU"),
		{path: "ds/showinfo", help: "show ds info", run: dsShowinfo, data: true},
		{path: "help", syntax: "[arg]", help: "Help (limited to arg when specified)", run: help, data: true},
		{path: "logout", help: "logout from this mgmt terminal"},
		{path: "shutdown", help: "shutdown of the switch", change: true},
		{path: "showinfo", help: "show switch version and info", run: showinfo, data: true},
		menu("hash", "HASH TABLE MENU"),
		{path: "hash/showinfo", help: "show hash info", run: hashShowinfo, data: true},
		{path: "hash/setexpire", syntax: "N", help: "change hash entries expire time", run: hashSetexpire, change: true},
		{path: "hash/print", help: "print the hash table", run: hashPrint, data: true},
		{path: "hash/find", syntax: "MAC [VLAN]", help: "MAC lookup", run: hashFind, data: true},
		menu("port", "PORT STATUS MENU"),
		{path: "port/showinfo", help: "show port info", run: portShowinfo, data: true},
		{path: "port/setnumports", syntax: "N", help: "set the number of ports", run: portSetnumports, change: true},
		{path: "port/setvlan", syntax: "N VLAN", help: "set port VLAN (untagged)", run: portSetvlan, change: true},
		{path: "port/resetcounter", syntax: "[N]", help: "reset the port (N) counters", run: portResetcounter, change: true},
		{path: "port/print", syntax: "[N]", help: "print the port/endpoint table", run: portPrint, data: true},
		{path: "port/allprint", syntax: "[N]", help: "print the port/endpoint table (including inactive port)", run: portPrint, data: true},
		menu("vlan", "VLAN MANAGEMENT MENU"),
		{path: "vlan/create", syntax: "N", help: "create the VLAN with tag N", run: vlanCreate, change: true},
		{path: "vlan/remove", syntax: "N", help: "remove the VLAN with tag N", run: vlanRemove, change: true},
		{path: "vlan/addport", syntax: "N PORT", help: "add port to the vlan N (tagged)", run: vlanAddport, change: true},
		{path: "vlan/delport", syntax: "N PORT", help: "delete port from the vlan N (tagged)", run: vlanDelport, change: true},
		{path: "vlan/print", syntax: "[N]", help: "print the list of defined vlan", run: vlanPrint, data: true},
		{path: "vlan/allprint", syntax: "[N]", help: "print the list of defined vlan (including inactive port)", run: vlanAllprint, data: true},
	}
}

// run answers one command line: the reply, and whether the session ends
// (logout, shutdown) after it.
func (s *session) run(line string) (string, bool) {
	line = strings.TrimLeft(line, " \t")
	if line == "" || line[0] == '#' {
		return "", false
	}
	var cmd *command
	for i := range commands {
		if c := &commands[i]; c.run != nil || c.syntax != "============" {
			if strings.HasPrefix(line, c.path) {
				cmd = c
				break
			}
		}
	}
	if cmd == nil {
		return reply(nil, errCode(syscall.ENOSYS), false), false
	}
	arg := strings.TrimLeft(line[len(cmd.path):], " \t")
	if cmd.change && !s.c.canChange(s.who) {
		s.c.cfg.Log.Info("mgmt: refused a change", "socket", s.c.cfg.Path, "command", cmd.path, "by", s.who)
		return reply(nil, errCode(syscall.EACCES), cmd.data), false
	}
	switch cmd.path {
	case "logout":
		return "", true
	case "shutdown":
		if s.c.cfg.Shutdown == nil {
			return reply(nil, errCode(syscall.EPERM), false), false
		}
		s.shutdown = true
		return "", true
	}
	lines, err := cmd.run(s, arg)
	if len(lines) > MaxRows {
		lines = lines[:MaxRows]
	}
	return reply(lines, errCode(err), cmd.data), false
}

func help(s *session, arg string) ([]string, error) {
	lines := []string{
		fmt.Sprintf("%-18s %-15s %s", "COMMAND PATH", "SYNTAX", "HELP"),
		fmt.Sprintf("%-18s %-15s %s", "------------", "--------------", "------------"),
	}
	for _, c := range commands {
		if strings.HasPrefix(c.path, arg) {
			lines = append(lines, fmt.Sprintf("%-18s %-15s %s", c.path, c.syntax, c.help))
		}
	}
	return lines, nil
}

func showinfo(s *session, _ string) ([]string, error) {
	c := s.c
	lines := strings.Split(strings.TrimSuffix(c.banner(), "\n"), "\n")
	pid := os.Getpid()
	// The switch's MAC, as vde_switch's, is local and made of its pid.
	lines = append(lines, "",
		fmt.Sprintf("pid %d MAC 02:ff:%02x:%02x:%02x:%02x uptime %d", pid, byte(pid>>24), byte(pid>>16), byte(pid>>8), byte(pid), int(time.Since(c.start).Seconds())),
		fmt.Sprintf("mgmt %s perm 0%03o", c.cfg.Path, c.cfg.Mode))
	return lines, nil
}

func dsShowinfo(s *session, _ string) ([]string, error) {
	dir := s.c.cfg.VDEDir
	if dir == "" {
		return nil, fmt.Errorf("no VDE directory is served beside this console: %w", syscall.ENXIO)
	}
	return []string{"ctl dir " + dir, fmt.Sprintf("std mode 0%03o", s.c.cfg.VDEMode.Perm())}, nil
}

// seconds reads a Go duration as whole seconds.
func seconds(v string) int {
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0
	}
	return int(d / time.Second)
}

func hashShowinfo(s *session, _ string) ([]string, error) {
	n := s.c.cfg.Net
	size, err := n.Option("hashsize")
	if err != nil {
		return nil, err
	}
	exp, err := n.Option("expire")
	if err != nil {
		return nil, err
	}
	// The switch forgets expired entries in sweeps at most a second apart,
	// and keeps none for a minimum time.
	return []string{"Hash size " + size, "GC interval 1 secs", fmt.Sprintf("GC expire %d secs", seconds(exp)), "Min persistence 0 secs"}, nil
}

func hashSetexpire(s *session, arg string) ([]string, error) {
	n := atoi(arg)
	if n < 1 || n > 86400 {
		return nil, fmt.Errorf("expire %q: want 1..86400 seconds: %w", arg, syscall.EINVAL)
	}
	return nil, s.c.cfg.Net.SetOption("expire", strconv.Itoa(n)+"s")
}

// macEntry is a row of the switch's "macs" option.
type macEntry struct {
	MAC  string  `json:"mac"`
	VLAN int     `json:"vlan"`
	Port int     `json:"port"`
	Age  float64 `json:"age_seconds"`
}

func hashPrint(s *session, _ string) ([]string, error) {
	v, err := s.c.cfg.Net.Option("macs")
	if err != nil {
		return nil, err
	}
	var macs []macEntry
	if err := json.Unmarshal([]byte(v), &macs); err != nil {
		return nil, fmt.Errorf("the switch's MAC table: %v: %w", err, syscall.EIO)
	}
	size, _ := strconv.Atoi(mustOption(s, "hashsize"))
	lines := make([]string, 0, len(macs))
	for _, m := range macs {
		h := fnv.New32a()
		fmt.Fprintf(h, "%s/%d", m.MAC, m.VLAN)
		bucket := 0
		if size > 0 {
			bucket = int(h.Sum32() % uint32(size))
		}
		lines = append(lines, fmt.Sprintf("Hash: %04d Addr: %s VLAN %04d to port: %03d  age %d secs", bucket, m.MAC, m.VLAN, m.Port, int(m.Age)))
	}
	return lines, nil
}

func hashFind(s *session, arg string) ([]string, error) {
	b, vlan, n := scanMAC(arg)
	if n < 6 {
		return nil, fmt.Errorf("MAC %q: want six hex bytes, as 02:00:00:00:00:01 (read %d): %w", arg, n, syscall.EINVAL)
	}
	if n == 6 {
		vlan = 1 // the switch's default VLAN (vde_switch's is 0)
	}
	all, err := hashPrint(s, "")
	if err != nil {
		return nil, err
	}
	key := fmt.Sprintf(" Addr: %s VLAN %04d ", net.HardwareAddr(b[:]), vlan)
	for _, l := range all {
		if strings.Contains(l, key) {
			return []string{l}, nil
		}
	}
	return nil, fmt.Errorf("MAC %s on vlan %d: not in the table: %w", net.HardwareAddr(b[:]), vlan, syscall.ENODEV)
}

func portShowinfo(s *session, _ string) ([]string, error) {
	num, err := s.c.cfg.Net.NumPorts()
	if err != nil {
		return nil, err
	}
	_, err = s.c.cfg.Net.Option("macs")
	hub := err != nil // no MAC table: every frame goes everywhere
	// vde_switch's N ports are 1..N beside its port 0.
	return []string{fmt.Sprintf("Numports=%d", num-1), fmt.Sprintf("HUB=%t", hub), "counters=true"}, nil
}

func mustOption(s *session, name string) string {
	v, _ := s.c.cfg.Net.Option(name)
	return v
}

// portEntry is a row of the switch's "ports" option.
type portEntry struct {
	Port     int   `json:"port"`
	Untagged int   `json:"vlan"`
	Tagged   []int `json:"trunk"`
	Blocked  bool  `json:"blocked"`
}

// portConfs returns the switch's port settings by port; nil for a policy
// without VLANs.
func portConfs(s *session) map[int]portEntry {
	v, err := s.c.cfg.Net.Option("ports")
	if err != nil {
		return nil
	}
	var ps []portEntry
	if json.Unmarshal([]byte(v), &ps) != nil {
		return nil
	}
	m := make(map[int]portEntry, len(ps))
	for _, p := range ps {
		m[p.Port] = p
	}
	return m
}

// userOf names the user of a port's peer ("vde uid 1000 gid 1000", say),
// or NONE.
func userOf(peer string) string {
	_, rest, ok := strings.Cut(peer, "uid ")
	if !ok {
		return "NONE"
	}
	id := strings.Fields(rest)
	if len(id) == 0 {
		return "NONE"
	}
	if u, err := user.LookupId(id[0]); err == nil {
		return u.Username
	}
	return id[0]
}

// portsArg returns the network's ports and the one arg names (-1 for
// none: all), checked against the number of ports as vde_switch does.
func portsArg(s *session, arg string) ([]Port, int, error) {
	n := s.c.cfg.Net
	ports, err := n.Ports()
	if err != nil {
		return nil, 0, err
	}
	num, err := n.NumPorts()
	if err != nil {
		return nil, 0, err
	}
	want := -1
	if arg != "" {
		if want = atoi(arg); want < 0 || want >= num {
			return nil, 0, fmt.Errorf("port %q: want 0..%d: %w", arg, num-1, syscall.EINVAL)
		}
	}
	return ports, want, nil
}

func portPrint(s *session, arg string) ([]string, error) {
	ports, want, err := portsArg(s, arg)
	if err != nil {
		return nil, err
	}
	confs := portConfs(s)
	s.c.mu.Lock()
	base := make(map[int]Port, len(s.c.base))
	for k, v := range s.c.base {
		base[k] = v
	}
	s.c.mu.Unlock()
	var lines []string
	found := false
	for _, p := range ports {
		if want >= 0 && p.Num != want {
			continue
		}
		found = true
		b := base[p.Num]
		if b.Peer != p.Peer || b.MsgsIn > p.MsgsIn || b.MsgsOut > p.MsgsOut {
			b = Port{} // another client since the reset
		}
		descr := p.Descr
		if descr == "" {
			descr = "no endpoint description"
		}
		lines = append(lines,
			fmt.Sprintf("Port %04d untagged_vlan=%04d ACTIVE - Unnamed Allocatable", p.Num, confs[p.Num].Untagged),
			fmt.Sprintf(" Current User: %s Access Control: (User: NONE - Group: NONE)", userOf(p.Peer)),
			fmt.Sprintf(" IN:  pkts %10d          bytes %20d", p.MsgsIn-b.MsgsIn, p.BytesIn-b.BytesIn),
			fmt.Sprintf(" OUT: pkts %10d          bytes %20d", p.MsgsOut-b.MsgsOut, p.BytesOut-b.BytesOut),
			fmt.Sprintf("  -- endpoint ID %04d module %-12s: %s", p.Num, "ipn", descr))
	}
	if want >= 0 && !found {
		return nil, fmt.Errorf("port %d: not connected: %w", want, syscall.ENXIO)
	}
	return lines, nil
}

func portResetcounter(s *session, arg string) ([]string, error) {
	ports, want, err := portsArg(s, arg)
	if err != nil {
		return nil, err
	}
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	for _, p := range ports {
		if want < 0 || p.Num == want {
			s.c.base[p.Num] = p
		}
	}
	return nil, nil
}

func portSetnumports(s *session, arg string) ([]string, error) {
	v := atoi(arg)
	if v <= 0 {
		return nil, fmt.Errorf("number of ports %q: want 1 or more: %w", arg, syscall.EINVAL)
	}
	// vde_switch's N ports are 1..N beside its port 0: N+1 ports here.
	return nil, s.c.cfg.Net.SetNumPorts(v + 1)
}

// vlans returns the VLANs that exist; an error wrapping ENOSYS for a
// policy without VLANs.
func vlans(s *session) ([]int, error) {
	v, err := s.c.cfg.Net.Option("vlans")
	if err != nil {
		return nil, err
	}
	var vs []int
	if err := json.Unmarshal([]byte(v), &vs); err != nil {
		return nil, fmt.Errorf("the switch's VLANs: %v: %w", err, syscall.EIO)
	}
	return vs, nil
}

// vlanNumPort reads "N PORT" (vlan/addport, vlan/delport) and checks them
// as vde_switch does: EINVAL out of range, ENXIO for a VLAN that is not
// there; it returns the port's settings too.
func vlanNumPort(s *session, arg string) (int, portEntry, error) {
	v, ok := scanInts(arg, 2)
	if !ok {
		return 0, portEntry{}, fmt.Errorf("%q: want a VLAN and a port: %w", arg, syscall.EINVAL)
	}
	vs, err := vlans(s)
	if err != nil {
		return 0, portEntry{}, err
	}
	num, err := s.c.cfg.Net.NumPorts()
	if err != nil {
		return 0, portEntry{}, err
	}
	vlan, port := v[0], v[1]
	if vlan < 1 || vlan > 4094 || port < 0 || port >= num {
		return 0, portEntry{}, fmt.Errorf("%q: want a VLAN 1..4094 and a port 0..%d: %w", arg, num-1, syscall.EINVAL)
	}
	if !slices.Contains(vs, vlan) {
		return 0, portEntry{}, fmt.Errorf("vlan %d does not exist: %w", vlan, syscall.ENXIO)
	}
	conf, ok := portConfs(s)[port]
	if !ok {
		return 0, portEntry{}, fmt.Errorf("port %d: %w", port, syscall.ENXIO)
	}
	return vlan, conf, nil
}

// trunk is the value of the switch's port.trunk option.
func trunk(p int, tagged []int) string {
	f := make([]string, len(tagged))
	for i, v := range tagged {
		f[i] = strconv.Itoa(v)
	}
	return strconv.Itoa(p) + " " + strings.Join(f, ",")
}

func vlanAddport(s *session, arg string) ([]string, error) {
	vlan, conf, err := vlanNumPort(s, arg)
	if err != nil || conf.Untagged == vlan || slices.Contains(conf.Tagged, vlan) {
		return nil, err
	}
	return nil, s.c.cfg.Net.SetOption("port.trunk", trunk(conf.Port, append(conf.Tagged, vlan)))
}

func vlanDelport(s *session, arg string) ([]string, error) {
	vlan, conf, err := vlanNumPort(s, arg)
	if err != nil {
		return nil, err
	}
	if conf.Untagged == vlan {
		return nil, fmt.Errorf("vlan %d is port %d's untagged VLAN (port/setvlan changes it): %w", vlan, conf.Port, syscall.EADDRINUSE)
	}
	i := slices.Index(conf.Tagged, vlan)
	if i < 0 {
		return nil, nil
	}
	return nil, s.c.cfg.Net.SetOption("port.trunk", trunk(conf.Port, slices.Delete(conf.Tagged, i, i+1)))
}

func portSetvlan(s *session, arg string) ([]string, error) {
	v, ok := scanInts(arg, 2)
	if !ok {
		return nil, fmt.Errorf("%q: want a port and a VLAN: %w", arg, syscall.EINVAL)
	}
	num, err := s.c.cfg.Net.NumPorts()
	if err != nil {
		return nil, err
	}
	port, vlan := v[0], v[1]
	if vlan < 0 || vlan > 4095 || port < 0 || port >= num {
		return nil, fmt.Errorf("%q: want a port 0..%d and a VLAN 0..4095: %w", arg, num-1, syscall.EINVAL)
	}
	if vlan == 4095 {
		vlan = 0 // vde_switch's "no untagged VLAN" is 4095; the switch's, 0
	}
	vs, err := vlans(s)
	if err != nil {
		return nil, err
	}
	if vlan != 0 && !slices.Contains(vs, vlan) {
		return nil, fmt.Errorf("vlan %d does not exist: %w", vlan, syscall.ENXIO)
	}
	return nil, s.c.cfg.Net.SetOption("port.vlan", fmt.Sprintf("%d %d", port, vlan))
}

func vlanCreate(s *session, arg string) ([]string, error) {
	v := atoi(arg)
	if v < 1 || v > 4094 {
		return nil, fmt.Errorf("vlan %q: want 1..4094: %w", arg, syscall.EINVAL)
	}
	vs, err := vlans(s)
	if err != nil {
		return nil, err
	}
	if slices.Contains(vs, v) {
		return nil, fmt.Errorf("vlan %d: %w", v, syscall.EEXIST)
	}
	return nil, s.c.cfg.Net.SetOption("vlan.add", strconv.Itoa(v))
}

func vlanRemove(s *session, arg string) ([]string, error) {
	v := atoi(arg)
	if v < 0 || v > 4095 {
		return nil, fmt.Errorf("vlan %q: want 1..4094: %w", arg, syscall.EINVAL)
	}
	vs, err := vlans(s)
	if err != nil {
		return nil, err
	}
	if !slices.Contains(vs, v) {
		return nil, fmt.Errorf("vlan %d does not exist: %w", v, syscall.ENXIO)
	}
	for _, p := range portConfs(s) {
		if p.Untagged == v || slices.Contains(p.Tagged, v) {
			return nil, fmt.Errorf("vlan %d has port %d: %w", v, p.Port, syscall.EADDRINUSE)
		}
	}
	return nil, s.c.cfg.Net.SetOption("vlan.del", strconv.Itoa(v))
}

// vlanAllprint is vlanPrint: an IPN network has no inactive ports (vde_switch's
// port/create without a client). As vde_switch's, it refuses VLAN 0.
func vlanAllprint(s *session, arg string) ([]string, error) {
	if arg != "" && atoi(arg) <= 0 {
		return nil, fmt.Errorf("vlan %q: want 1..4094: %w", arg, syscall.EINVAL)
	}
	return vlanPrint(s, arg)
}

// vlanPrint prints the VLANs (or VLAN arg) and their connected ports.
func vlanPrint(s *session, arg string) ([]string, error) {
	vs, err := vlans(s)
	if err != nil {
		return nil, err
	}
	if arg != "" {
		v := atoi(arg)
		if v < 0 || v > 4094 {
			return nil, fmt.Errorf("vlan %q: want 1..4094: %w", arg, syscall.EINVAL)
		}
		if !slices.Contains(vs, v) {
			return nil, fmt.Errorf("vlan %d does not exist: %w", v, syscall.ENXIO)
		}
		vs = []int{v}
	}
	ports, err := s.c.cfg.Net.Ports()
	if err != nil {
		return nil, err
	}
	confs := portConfs(s)
	var lines []string
	for _, v := range vs {
		lines = append(lines, fmt.Sprintf("VLAN %04d", v))
		for _, p := range ports {
			c := confs[p.Num]
			if c.Untagged != v && !slices.Contains(c.Tagged, v) {
				continue
			}
			tagged, status := 0, "Forwarding"
			if c.Untagged != v {
				tagged = 1
			}
			if c.Blocked {
				status = "Discarding"
			}
			lines = append(lines, fmt.Sprintf(" -- Port %04d tagged=%d active=1 status=%s", p.Num, tagged, status))
		}
	}
	return lines, nil
}
