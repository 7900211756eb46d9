package main

// The rows of ipn bench through kernel interfaces: iperf3 between network
// namespaces whose interfaces are ipn taps on a switch network, veths on a
// Linux bridge or vde_switch's taps; and between two namespace-hosts joined
// by a vxlan:// cable or by the kernel's VXLAN devices. Each scenario runs
// its anchor (the bridge, the kernel's VXLAN) in the same run, and each row
// gets its ratio to it. See docs/performance.md.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ipn-project/ipn/internal/spec"
)

// The scenarios of the kernel rows.
const (
	scTCPTap   = "tcp tap"        // iperf3 TCP between two namespaces
	scUDPTap   = "udp tap loaded" // iperf3 UDP at udpOffered, a CPU hog on each core
	scTCPVXLAN = "tcp vxlan"      // iperf3 TCP between two namespace-hosts' guests
)

// The paths of the kernel rows (and pathVDESwitch).
const (
	kpathIPN    = "ipn"    // ipn taps on an ipn switch network (and vxlan:// cables)
	kpathBridge = "bridge" // veths on a Linux bridge
	kpathKernel = "kernel" // kernel VXLAN devices, each bridged to a veth
)

// udpOffered is the offered load of the udp row, as iperf3 -b takes it.
const udpOffered = "1G"

// kernelScenarios lists the kernel rows' scenarios in the order they run,
// each with its paths and the path its rows' ratios are to.
var kernelScenarios = []struct {
	name, anchor string
	paths        []string
}{
	{scTCPTap, kpathBridge, []string{kpathIPN, kpathBridge, pathVDESwitch}},
	{scUDPTap, kpathBridge, []string{kpathIPN, kpathBridge, pathVDESwitch}},
	{scTCPVXLAN, kpathKernel, []string{kpathIPN, kpathKernel}},
}

// kernelAnchor returns the anchor path of a kernel scenario, or "".
func kernelAnchor(scenario string) string {
	for _, s := range kernelScenarios {
		if s.name == scenario {
			return s.anchor
		}
	}
	return ""
}

type kernelJob struct{ scenario, path string }

// kernelJobs returns the kernel rows o asks for: those whose scenario
// --scenarios names; with no --scenarios, every one unless --paths chose
// some of the other rows' paths (--paths does not apply to these rows).
func kernelJobs(o benchOpts) []kernelJob {
	if strings.TrimSpace(o.scenarios) == "" && o.paths != strings.Join(benchPaths, ",") {
		return nil
	}
	var jobs []kernelJob
	for _, s := range kernelScenarios {
		if !matchScenario(s.name, o.scenarios) {
			continue
		}
		for _, p := range s.paths {
			jobs = append(jobs, kernelJob{s.name, p})
		}
	}
	return jobs
}

// kernelMissing says why the kernel rows cannot run here, or "".
func kernelMissing() string {
	if os.Geteuid() != 0 {
		return "needs root (network namespaces)"
	}
	for _, p := range []struct{ bin, pkg string }{{"iperf3", "iperf3"}, {"ip", "iproute2"}, {"ping", "iputils-ping"}} {
		if _, err := exec.LookPath(p.bin); err != nil {
			return fmt.Sprintf("needs %s (Debian package %s)", p.bin, p.pkg)
		}
	}
	return ""
}

// kernelSeconds is the iperf3 time of a kernel row: the duration in whole
// seconds (iperf3 -t takes no fraction), 1 with --quick.
func kernelSeconds(o benchOpts) int {
	if o.quick {
		return 1
	}
	return max(1, int(math.Ceil(o.dur.Seconds())))
}

// kernelRows runs the kernel rows and sets their ratios to their anchors.
// Without root, ip, ping or iperf3 it runs none and says why on stderr.
// When ctx ends it returns the rows done so far.
func (b *bencher) kernelRows(ctx context.Context, jobs []kernelJob) []benchRow {
	if len(jobs) == 0 {
		return nil
	}
	if why := kernelMissing(); why != "" {
		var names []string
		for _, j := range jobs {
			if !containsStr(names, j.scenario) {
				names = append(names, j.scenario)
			}
		}
		fmt.Fprintf(b.stderr, "%s: skipped: %s\n", strings.Join(names, ", "), why)
		return nil
	}
	secs := kernelSeconds(b.opts)
	var rows []benchRow
	for i, j := range jobs {
		if ctx.Err() != nil {
			break
		}
		fmt.Fprintf(b.stderr, "[kernel %d/%d] %s %s ...", i+1, len(jobs), j.scenario, j.path)
		r := b.kernelRow(ctx, i, j, secs)
		switch {
		case r.Error != "":
			fmt.Fprintf(b.stderr, " error: %s\n", r.Error)
		case r.Note != "" && r.Gbps == 0:
			fmt.Fprintf(b.stderr, " %s\n", r.Note)
		case j.scenario == scUDPTap:
			fmt.Fprintf(b.stderr, " %.2f Gb/s, %.2f%% loss\n", r.Gbps, r.Loss)
		default:
			fmt.Fprintf(b.stderr, " %.2f Gb/s\n", r.Gbps)
		}
		rows = append(rows, r)
	}
	kernelRatios(rows)
	return rows
}

// kernelRatios sets each kernel row's ratio to its scenario's anchor, and
// on the loaded UDP rows notes the anchor's loss.
func kernelRatios(rows []benchRow) {
	ref := map[string]*benchRow{}
	for i := range rows {
		r := &rows[i]
		if r.Path == kernelAnchor(r.Scenario) && r.Error == "" && r.Gbps > 0 {
			ref[r.Scenario] = r
		}
	}
	for i := range rows {
		r := &rows[i]
		a := ref[r.Scenario]
		if a == nil || r.Error != "" || r.Gbps <= 0 {
			continue
		}
		v := r.Gbps / a.Gbps
		r.Anchor, r.VsAnchor = a.Path, &v
		if r.Scenario == scUDPTap && r != a {
			r.Note = joinNote(fmt.Sprintf("%s loss %.2f%%", a.Path, a.Loss), r.Note)
		}
	}
}

func joinNote(a, b string) string {
	if a == "" || b == "" {
		return a + b
	}
	return a + "; " + b
}

// kernelCells returns the table cells of a kernel row under the columns
// head names (note is the row's note or error), or nil for another row.
// DELIVERED/s holds the throughput the receiver got; LOSS% is the UDP
// row's; the NOTE starts with the ratio to the anchor.
func kernelCells(head []string, r benchRow, note string) []string {
	if kernelAnchor(r.Scenario) == "" {
		return nil
	}
	ratio := func(v *float64) string {
		if v == nil {
			return "-"
		}
		return fmt.Sprintf("%.2fx", *v)
	}
	if r.Gbps > 0 && r.VsAnchor != nil {
		note = strings.TrimSuffix(strings.TrimSpace(fmt.Sprintf("%s %s; %s", ratio(r.VsAnchor), r.Anchor, note)), ";")
	}
	c := make([]string, len(head))
	for i, h := range head {
		switch {
		case h == "SCENARIO":
			c[i] = r.Scenario
		case h == "PATH":
			c[i] = r.Path
		case h == "NOTE":
			c[i] = note
		case r.Gbps <= 0:
			c[i] = "-"
		case h == "DELIVERED/s":
			c[i] = fmt.Sprintf("%.2f Gb/s", r.Gbps)
		case h == "LOSS%" && r.Scenario == scUDPTap:
			c[i] = fmt.Sprintf("%.2f", r.Loss)
		case h == "vs VDE_SW":
			c[i] = ratio(r.VsVDESwitch)
		default:
			c[i] = "-"
		}
	}
	return c
}

// kernelSeq makes the names of a process's labs unique.
var kernelSeq atomic.Int32

// kernelRow measures one kernel row; failures go into the row.
func (b *bencher) kernelRow(ctx context.Context, idx int, j kernelJob, secs int) benchRow {
	row := benchRow{Scenario: j.scenario, Path: j.path, Senders: 1, Receivers: 1}
	if j.path == pathVDESwitch && b.noVDESwitch != "" {
		row.Note = b.noVDESwitch
		return row
	}
	dir, err := os.MkdirTemp(b.tmp, fmt.Sprintf("kernel%d-", idx))
	if err != nil {
		row.Error = err.Error()
		return row
	}
	defer os.RemoveAll(dir)
	lab := &kernelLab{
		prefix: fmt.Sprintf("ipnb%d-%d", os.Getpid(), kernelSeq.Add(1)),
		dir:    dir, ipnBin: b.ipnBin, b: b,
	}
	defer lab.close()
	if err := lab.measure(ctx, &row, j, secs); err != nil {
		row.Error = err.Error()
	}
	return row
}

// kernelLab holds what one kernel row made: namespaces (named with a
// prefix unique to this process and row, so that runs do not collide;
// every interface lives in one of them) and processes.
type kernelLab struct {
	prefix string
	dir    string
	ipnBin string
	b      *bencher
	nss    []string
	procs  benchProcs   // stopped before the namespaces go
	watch  []*benchProc // whose exit fails the row
	sock   string       // the ipn daemon's control socket, once started
}

// close stops the processes, then deletes the namespaces, and with them
// their interfaces.
func (l *kernelLab) close() {
	l.procs.stopAll()
	for i := len(l.nss) - 1; i >= 0; i-- {
		if out, err := exec.Command("ip", "netns", "del", l.nss[i]).CombinedOutput(); err != nil {
			fmt.Fprintf(l.b.stderr, "\nipn bench: ip netns del %s: %v: %s\n", l.nss[i], err, strings.TrimSpace(string(out)))
		}
	}
	l.nss = nil
}

// env is the environment of the lab's processes.
func (l *kernelLab) env() []string {
	env := os.Environ()
	if l.sock != "" {
		env = append(env, spec.SocketEnv+"="+l.sock, spec.NoAutostartEnv+"=1")
	}
	return env
}

// ip runs ip with args.
func (l *kernelLab) ip(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// in runs each command as "ip -n ns COMMAND".
func (l *kernelLab) in(ctx context.Context, ns string, cmds ...string) error {
	for _, c := range cmds {
		if err := l.ip(ctx, append([]string{"-n", ns}, strings.Fields(c)...)...); err != nil {
			return err
		}
	}
	return nil
}

// netns makes a namespace with its loopback up.
func (l *kernelLab) netns(ctx context.Context, label string) (string, error) {
	ns := l.prefix + "-" + label
	if err := l.ip(ctx, "netns", "add", ns); err != nil {
		return "", err
	}
	l.nss = append(l.nss, ns)
	return ns, l.in(ctx, ns, "link set lo up")
}

// start starts argv in namespace ns ("" for this one).
func (l *kernelLab) start(name, ns string, argv []string, hold, watch bool) (*benchProc, error) {
	if ns != "" {
		argv = append([]string{"ip", "netns", "exec", ns}, argv...)
	}
	p, err := l.procs.start(name, argv, l.env(), hold)
	if err == nil && watch {
		l.watch = append(l.watch, p)
	}
	return p, err
}

// exited returns an error if a watched process exited.
func (l *kernelLab) exited() error {
	for _, p := range l.watch {
		if p.exited() {
			return fmt.Errorf("%s exited: %s", p.name, p.stderrText())
		}
	}
	return nil
}

// waitUntil polls ok until it holds, a watched process exits, ctx ends or
// timeout passes.
func (l *kernelLab) waitUntil(ctx context.Context, what string, timeout time.Duration, ok func() bool) error {
	deadline := time.Now().Add(timeout)
	for !ok() {
		if err := l.exited(); err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no %s in %v", what, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// ipnNetwork starts the lab's ipn daemon if it has none, and makes and
// holds a switch network; it returns the network's path.
func (l *kernelLab) ipnNetwork(ctx context.Context, name string) (string, error) {
	if l.sock == "" {
		l.sock = filepath.Join(l.dir, "ipn.sock")
		d, err := l.start("ipn daemon", "", []string{l.ipnBin, "daemon", "-f", "--socket", l.sock}, false, true)
		if err != nil {
			return "", err
		}
		if err := waitDial("unixpacket", l.sock, d, 10*time.Second); err != nil {
			return "", fmt.Errorf("ipn daemon: %w", err)
		}
	}
	path := filepath.Join(l.dir, name)
	h, err := l.start("bench-net", "", []string{l.ipnBin, "bench-net", "--target", path, "--proto", "switch"}, true, true)
	if err != nil {
		return "", err
	}
	if _, err := h.expect("ready", 10*time.Second); err != nil {
		return "", fmt.Errorf("making the network: %w", err)
	}
	return path, ctx.Err()
}

// plug runs ipn plug net url in ns.
func (l *kernelLab) plug(ns, net, url string) error {
	_, err := l.start("ipn plug "+url, ns, []string{l.ipnBin, "plug", net, url}, false, true)
	return err
}

// plugTap plugs a tap named dev in ns into net and waits for it.
func (l *kernelLab) plugTap(ctx context.Context, ns, net, dev string) error {
	if err := l.plug(ns, net, "tap://"+dev); err != nil {
		return err
	}
	return l.waitLink(ctx, ns, dev)
}

// waitLink waits until interface dev exists in ns.
func (l *kernelLab) waitLink(ctx context.Context, ns, dev string) error {
	return l.waitUntil(ctx, dev+" in "+ns, 10*time.Second, func() bool {
		return exec.CommandContext(ctx, "ip", "-n", ns, "link", "show", "dev", dev).Run() == nil
	})
}

// The addresses of the iperf3 ends.
const (
	kernelAddrA   = "10.77.0.1" // the server
	kernelAddrB   = "10.77.0.2" // the client
	kernelUnderA  = "10.78.0.1" // the vxlan underlay, host 1
	kernelUnderB  = "10.78.0.2"
	kernelVNI     = "42"
	kernelUnderMT = "1550" // room for a 1514-byte frame in VXLAN
)

// tapPair makes two namespaces joined by path, and returns them and their
// interfaces.
func (l *kernelLab) tapPair(ctx context.Context, path string) (a, b, devA, devB string, err error) {
	if a, err = l.netns(ctx, "a"); err != nil {
		return
	}
	if b, err = l.netns(ctx, "b"); err != nil {
		return
	}
	switch path {
	case kpathIPN:
		// Distinct names: the daemon refuses a second device of a name on
		// a network, even from another namespace.
		devA, devB = "tapa", "tapb"
		var net string
		if net, err = l.ipnNetwork(ctx, "net"); err != nil {
			return
		}
		if err = l.plugTap(ctx, a, net, devA); err != nil {
			return
		}
		err = l.plugTap(ctx, b, net, devB)
	case kpathBridge:
		devA, devB = "eth0", "eth0"
		var s string
		if s, err = l.netns(ctx, "s"); err != nil {
			return
		}
		err = l.in(ctx, s,
			"link add br0 type bridge", "link set br0 up",
			"link add pa type veth peer name eth0 netns "+a, "link set pa master br0", "link set pa up",
			"link add pb type veth peer name eth0 netns "+b, "link set pb master br0", "link set pb up")
	case pathVDESwitch:
		// vde_switch makes its taps in its namespace; they move to
		// theirs, its descriptors with them.
		devA, devB = "vtapa", "vtapb"
		var s string
		if s, err = l.netns(ctx, "s"); err != nil {
			return
		}
		dir := filepath.Join(l.dir, "vde")
		var sw *benchProc
		// Its console reads standard input, held open by procs.
		if sw, err = l.start("vde_switch", s, []string{"vde_switch", "-s", dir, "-t", devA, "-t", devB}, true, true); err != nil {
			return
		}
		if err = waitDial("unix", filepath.Join(dir, "ctl"), sw, 10*time.Second); err != nil {
			err = fmt.Errorf("vde_switch: %w", err)
			return
		}
		for _, d := range []string{devA, devB} {
			if err = l.waitLink(ctx, s, d); err != nil {
				return
			}
		}
		err = l.in(ctx, s, "link set "+devA+" netns "+a, "link set "+devB+" netns "+b)
	default:
		err = fmt.Errorf("no path %q", path)
	}
	return
}

// vxlanPair makes two namespace-hosts joined by a veth underlay, each with
// a namespace-guest joined to the other host's by path: ipn taps in the
// guests on an ipn network per host, joined by a vxlan:// cable plugged in
// each host; or kernel VXLAN devices in the hosts, each on a bridge with a
// veth into its guest. It returns the guests and their interfaces.
func (l *kernelLab) vxlanPair(ctx context.Context, path string) (g1, g2, dev1, dev2 string, err error) {
	var h1, h2 string
	for _, p := range []struct {
		ns    *string
		label string
	}{{&h1, "h1"}, {&h2, "h2"}, {&g1, "g1"}, {&g2, "g2"}} {
		if *p.ns, err = l.netns(ctx, p.label); err != nil {
			return
		}
	}
	if err = l.in(ctx, h1, "link add u0 type veth peer name u0 netns "+h2,
		"link set u0 mtu "+kernelUnderMT, "addr add "+kernelUnderA+"/24 dev u0", "link set u0 up"); err != nil {
		return
	}
	if err = l.in(ctx, h2, "link set u0 mtu "+kernelUnderMT, "addr add "+kernelUnderB+"/24 dev u0", "link set u0 up"); err != nil {
		return
	}
	hosts := []struct{ h, g, remote, net string }{{h1, g1, kernelUnderB, "net1"}, {h2, g2, kernelUnderA, "net2"}}
	switch path {
	case kpathIPN:
		dev1, dev2 = "tapa", "tapb"
		for i, h := range hosts {
			var net string
			if net, err = l.ipnNetwork(ctx, h.net); err != nil {
				return
			}
			if err = l.plugTap(ctx, h.g, net, []string{dev1, dev2}[i]); err != nil {
				return
			}
			if err = l.plug(h.h, net, "vxlan://"+h.remote+"/vni="+kernelVNI); err != nil {
				return
			}
		}
	case kpathKernel:
		dev1, dev2 = "eth0", "eth0"
		for _, h := range hosts {
			if err = l.in(ctx, h.h,
				"link add vx0 type vxlan id "+kernelVNI+" remote "+h.remote+" dstport 4789 dev u0",
				"link add br0 type bridge", "link set br0 up",
				"link set vx0 master br0", "link set vx0 up",
				"link add g0 type veth peer name eth0 netns "+h.g, "link set g0 master br0", "link set g0 up"); err != nil {
				return
			}
		}
	default:
		err = fmt.Errorf("no path %q", path)
	}
	return
}

// iperfJSON is what kernelRow reads of iperf3 -J's output.
type iperfJSON struct {
	End struct {
		Sum         iperfSum `json:"sum"` // UDP: the receiver's counts
		SumSent     iperfSum `json:"sum_sent"`
		SumReceived iperfSum `json:"sum_received"`
	} `json:"end"`
	Error string `json:"error"`
}

type iperfSum struct {
	Seconds       float64 `json:"seconds"`
	Bytes         int64   `json:"bytes"`
	BitsPerSecond float64 `json:"bits_per_second"`
	Retransmits   int64   `json:"retransmits"`
	Packets       int64   `json:"packets"`
	LostPackets   int64   `json:"lost_packets"`
	LostPercent   float64 `json:"lost_percent"`
}

// measure builds the row's layout, runs iperf3 across it and fills row.
func (l *kernelLab) measure(ctx context.Context, row *benchRow, j kernelJob, secs int) error {
	var (
		srvNS, cliNS, devA, devB string
		err                      error
	)
	if j.scenario == scTCPVXLAN {
		srvNS, cliNS, devA, devB, err = l.vxlanPair(ctx, j.path)
	} else {
		srvNS, cliNS, devA, devB, err = l.tapPair(ctx, j.path)
	}
	if err != nil {
		return err
	}
	if err := l.in(ctx, srvNS, "addr add "+kernelAddrA+"/24 dev "+devA, "link set "+devA+" up"); err != nil {
		return err
	}
	if err := l.in(ctx, cliNS, "addr add "+kernelAddrB+"/24 dev "+devB, "link set "+devB+" up"); err != nil {
		return err
	}
	srv, err := l.start("iperf3 server", srvNS, []string{"iperf3", "-s", "-1", "--forceflush"}, false, false)
	if err != nil {
		return err
	}
	if _, err := srv.expect("Server listening", 10*time.Second); err != nil {
		return err
	}
	// The first pings may be lost while a plug opens its far end, or
	// interfaces come up.
	if err := l.waitUntil(ctx, "ping from "+kernelAddrB+" to "+kernelAddrA, 15*time.Second, func() bool {
		return exec.CommandContext(ctx, "ip", "netns", "exec", cliNS, "ping", "-c", "1", "-W", "1", kernelAddrA).Run() == nil
	}); err != nil {
		return err
	}
	args := []string{"iperf3", "-c", kernelAddrA, "-t", strconv.Itoa(secs), "-J"}
	udp := j.scenario == scUDPTap
	var hogs benchProcs
	defer hogs.stopAll()
	if udp {
		args = append(args, "-u", "-b", udpOffered)
		// A busy loop per core, spinning before the load starts.
		for range runtime.NumCPU() {
			if _, err := hogs.start("cpu hog", []string{"sh", "-c", "while :; do :; done"}, os.Environ(), false); err != nil {
				return err
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	out, err := l.run(ctx, time.Duration(secs)*time.Second+30*time.Second, append([]string{"ip", "netns", "exec", cliNS}, args...))
	hogs.stopAll()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var res iperfJSON
	if jerr := json.Unmarshal(out, &res); jerr != nil {
		if err == nil {
			err = jerr
		}
		return fmt.Errorf("iperf3: %w: %s", err, strings.TrimSpace(string(out)))
	}
	if res.Error != "" {
		return fmt.Errorf("iperf3: %s", res.Error)
	}
	if err != nil {
		return fmt.Errorf("iperf3: %w", err)
	}
	if err := l.exited(); err != nil {
		return err
	}
	e := res.End
	if udp {
		row.Sent, row.Expected = e.Sum.Packets, e.Sum.Packets
		row.DeliveredN = max(0, e.Sum.Packets-e.Sum.LostPackets)
		row.Loss = max(0, e.Sum.LostPercent)
		row.Seconds = e.Sum.Seconds
		if e.Sum.Packets > 0 {
			row.Size = int(e.Sum.Bytes / e.Sum.Packets)
		}
		row.Gbps = e.SumReceived.BitsPerSecond / 1e9
		if row.Gbps <= 0 {
			row.Gbps = e.Sum.BitsPerSecond * (1 - row.Loss/100) / 1e9
		}
		row.Note = fmt.Sprintf("offered %sb/s, %d busy loops", udpOffered, runtime.NumCPU())
	} else {
		// TCP: the counts are bytes.
		row.Sent, row.Expected = e.SumSent.Bytes, e.SumSent.Bytes
		row.DeliveredN = e.SumReceived.Bytes
		row.Seconds = e.SumReceived.Seconds
		row.Gbps = e.SumReceived.BitsPerSecond / 1e9
		row.Note = fmt.Sprintf("%d retransmits", e.SumSent.Retransmits)
	}
	if row.Seconds > 0 {
		row.Delivered = float64(row.DeliveredN) / row.Seconds
		row.PerReceiver = row.Delivered
	}
	if row.Gbps <= 0 {
		return errors.New("iperf3 moved nothing")
	}
	return nil
}

// run runs argv in a process group of its own, killed when ctx ends or
// timeout passes, and returns its standard output.
func (l *kernelLab) run(ctx context.Context, timeout time.Duration, argv []string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = l.env()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	var stderr capBuffer
	stderr.max = 4096
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		if s := strings.TrimSpace(stderr.String()); s != "" {
			err = fmt.Errorf("%w: %s", err, s)
		}
	}
	return out, err
}
