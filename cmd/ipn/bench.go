package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/ipn-project/ipn/internal/benchpeer"
	"github.com/ipn-project/ipn/internal/outfile"
	"github.com/ipn-project/ipn/internal/spec"
)

func init() {
	commands = append(commands, benchCmd, benchLimitCmd)
}

// The paths ipn bench drives, in the order it runs them.
const (
	pathLimit     = "limit"      // a bare shared-memory ring between the two peers: the machine's limit
	pathFast      = "fast"       // IPN over the shared-memory fast path
	pathSocket    = "socket"     // IPN over the socket path
	pathVDE       = "vde"        // an IPN network served to VDE clients
	pathVDESwitch = "vde_switch" // Debian's vde_switch
	pathNATS      = "nats"       // NATS core pub/sub
)

var benchPaths = []string{pathLimit, pathFast, pathSocket, pathVDE, pathVDESwitch, pathNATS}

// lightRate is the sender's pace in the light-load latency scenario.
const lightRate = 20000

// peerWave is how many peers of a row start at once.
const peerWave = 8

// benchRow is one measurement of ipn bench: one scenario on one path.
type benchRow struct {
	Scenario    string   `json:"scenario"`
	Path        string   `json:"path"`
	Delivered   float64  `json:"delivered_per_s"`    // all receivers together
	PerReceiver float64  `json:"per_receiver_per_s"` // the mean per receiver
	Loss        float64  `json:"loss_pct"`
	P50         float64  `json:"p50_us"` // one-way latency, all receivers
	P99         float64  `json:"p99_us"`
	CPU         float64  `json:"cpu_s_per_million"`        // server and peers
	ServerCPU   float64  `json:"server_cpu_s_per_million"` // server alone
	VsVDESwitch *float64 `json:"vs_vde_switch"`            // delivered/s over vde_switch's
	VsNATS      *float64 `json:"vs_nats"`                  // delivered/s over NATS's
	VsLimit     *float64 `json:"vs_limit,omitempty"`       // delivered/s over the limit row's
	P50VsVDE    *float64 `json:"p50_vs_vde_switch,omitempty"`
	P50VsNATS   *float64 `json:"p50_vs_nats,omitempty"`
	P50VsLimit  *float64 `json:"p50_vs_limit,omitempty"`
	Sent        int64    `json:"sent"`
	DeliveredN  int64    `json:"delivered"`
	Expected    int64    `json:"expected"` // deliveries the sent frames called for
	Seconds     float64  `json:"seconds"`  // the senders' sending time
	Size        int      `json:"size"`
	Senders     int      `json:"senders"`
	Receivers   int      `json:"receivers"`
	Note        string   `json:"note"`
	Gbps        float64  `json:"gbps,omitempty"`      // kernel rows (benchtcp.go): received, Gb/s
	Anchor      string   `json:"anchor,omitempty"`    // kernel rows: the path of their ratio
	VsAnchor    *float64 `json:"vs_anchor,omitempty"` // kernel rows: gbps over the anchor's
	VsCopy      *float64 `json:"vs_copy,omitempty"`   // big rows: bytes/s over one core's copy
	Error       string   `json:"error,omitempty"`
}

// benchScenario is one load: a policy, a shape, a frame size.
type benchScenario struct {
	policy   string // hub or switch
	shape    string // 1->N (N receivers) or 4<->4
	size     int
	lossless bool
	light    bool // sender paced at lightRate
}

func (s benchScenario) name() string {
	n := fmt.Sprintf("%s %s %dB", s.policy, s.shape, s.size)
	if s.lossless {
		n += " lossless"
	}
	if s.light {
		n += " light"
	}
	return n
}

// runsOn reports whether the scenario applies to path.
func (s benchScenario) runsOn(path string) bool {
	switch {
	case path == pathLimit:
		// One ring, one way: the unicast of one sender to one receiver.
		return s.policy == "hub" && s.shape == "1->1" && !s.lossless
	case s.lossless && path != pathFast && path != pathSocket:
		return false
	case path == pathNATS && s.policy != "hub":
		return false
	case s.size > 1500:
		// Messages over an Ethernet frame: IPN's own paths only.
		return path == pathFast || path == pathSocket
	}
	return true
}

// benchScenarios lists every scenario, in the order they run.
func benchScenarios() []benchScenario {
	var out []benchScenario
	for _, lossless := range []bool{false, true} {
		for _, policy := range []string{"hub", "switch"} {
			for _, shape := range []string{"1->1", "1->4", "4<->4"} {
				for _, size := range []int{64, 1500} {
					out = append(out, benchScenario{policy: policy, shape: shape, size: size, lossless: lossless})
				}
			}
		}
	}
	// The fan-out to many receivers.
	for _, shape := range fanOutShapes {
		out = append(out, benchScenario{policy: "hub", shape: shape, size: 64})
	}
	// Big messages to 4 receivers that touch every 4 KiB page of each.
	for _, size := range bigRows {
		out = append(out, benchScenario{policy: "hub", shape: "1->4", size: size})
	}
	return append(out, benchScenario{policy: "hub", shape: "1->1", size: 64, light: true})
}

// bigRows are the sizes of the big-message rows' messages: 64 KiB, the
// largest of the fast path's slots, then messages in chunks.
var bigRows = []int{64 << 10, 1 << 20, 4 << 20}

// fanOutShapes are the hub scenarios beyond 1->4, 64 B frames only: one
// sender, up to 63 receivers (a vde_switch of 64 ports).
var fanOutShapes = []string{"1->16", "1->32", "1->63"}

// quickFanOut is the one of fanOutShapes --quick runs (unless --scenarios
// asks for others): each takes about a second on 2 cores, most of it in
// starting the peers.
const quickFanOut = "1->63"

// receivers returns N of a 1->N shape, or 0.
func (s benchScenario) receivers() int {
	n, err := strconv.Atoi(strings.TrimPrefix(s.shape, "1->"))
	if err != nil || !strings.HasPrefix(s.shape, "1->") {
		return 0
	}
	return n
}

// benchPeerSpec is one peer of a scenario.
type benchPeerSpec struct {
	id         int
	send, recv bool
	dests      []int // unicast round robin; none: broadcast
	hello      bool
}

// peers returns the scenario's peers. In a switch every peer first says
// hello so that its MAC is learnt; 1->1 and 4<->4 then send unicast.
func (s benchScenario) peers() []benchPeerSpec {
	sw := s.policy == "switch"
	var ps []benchPeerSpec
	switch n := s.receivers(); {
	case n > 0:
		snd := benchPeerSpec{id: 0, send: true, hello: sw}
		if sw && n == 1 {
			snd.dests = []int{1}
		}
		ps = append(ps, snd)
		for i := 1; i <= n; i++ {
			ps = append(ps, benchPeerSpec{id: i, recv: true, hello: sw})
		}
	case s.shape == "4<->4":
		for i := range 4 {
			p := benchPeerSpec{id: i, send: true, recv: true, hello: sw}
			if sw {
				for j := range 4 {
					if j != i {
						p.dests = append(p.dests, j)
					}
				}
			}
			ps = append(ps, p)
		}
	}
	return ps
}

// benchLimitCmd is a peer of the limit rows: it maps the bare ring ipn
// bench passes it (see benchpeer.OpenLimit) and is driven as every peer.
func benchLimitCmd() *cobra.Command {
	return &cobra.Command{
		Use:                "bench-limit [flags]",
		Short:              "A peer of ipn bench's limit rows (internal)",
		Hidden:             true,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			var cfg benchpeer.Config
			fs := cfg.FlagSet("bench-limit")
			fs.SetOutput(cmd.ErrOrStderr())
			if err := fs.Parse(args); err != nil {
				if errors.Is(err, flag.ErrHelp) {
					return nil
				}
				return err
			}
			if err := cfg.Check(); err != nil {
				return err
			}
			if cfg.Send == cfg.Recv {
				return errors.New("a limit peer either sends or receives")
			}
			stop := benchpeer.Watchdog(cfg.Deadline, os.Exit)
			defer stop()
			conn, err := benchpeer.OpenLimit(benchpeer.LimitFDs, cfg.Send)
			if err != nil {
				return err
			}
			return benchpeer.Run(conn, cfg, cmd.InOrStdin(), cmd.OutOrStdout())
		},
	}
}

type benchOpts struct {
	dur       time.Duration
	quick     bool
	asJSON    bool
	outFile   string
	paths     string
	scenarios string
	natsBin   string
	pool      int
}

func benchCmd() *cobra.Command {
	var o benchOpts
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure IPN side by side with vde_switch and NATS, in one run",
		Long: `Drive the same load generator through IPN (fast path, socket path, served
to VDE clients), Debian's vde_switch and NATS core pub/sub, one after the
other on this machine, and print per scenario and path the messages
delivered per second, loss, one-way latency, CPU per million deliveries
and the ratios to vde_switch and NATS. See docs/performance.md.

Paths: fast, socket, vde, vde_switch, nats. The IPN daemon, vde_switch and
the NATS server each run in a process of their own, started here, as does
every peer. vde_switch comes from Debian's vde2; the NATS peer is built
from bench/peers/nats (ipn-bench-nats, next to this program or in $PATH,
or --nats). A missing one is noted in its rows, not an error.`,
		Args: cobra.NoArgs,
		RunE: interruptible(func(ctx context.Context, cmd *cobra.Command, _ []string) error {
			return runBench(ctx, cmd, o)
		}),
	}
	f := cmd.Flags()
	f.DurationVar(&o.dur, "duration", 2*time.Second, "how long the senders send, per row")
	f.BoolVar(&o.quick, "quick", false, "every row, briefly, and of the fan-out rows 1->63 only (for CI; overrides --duration)")
	f.BoolVar(&o.asJSON, "json", false, "print the rows as JSON instead of a table")
	f.StringVarP(&o.outFile, "output", "o", "", "also write the rows as JSON to this file")
	f.StringVar(&o.paths, "paths", strings.Join(benchPaths, ","), "the paths to run, comma-separated")
	f.StringVar(&o.scenarios, "scenarios", "", `only the scenarios whose name contains one of these comma-separated strings ("=NAME": exactly NAME)`)
	f.StringVar(&o.natsBin, "nats", "", "the NATS peer program (default: ipn-bench-nats next to ipn, else in $PATH)")
	f.IntVar(&o.pool, "pool", 0, "message pool size of the IPN networks (0: the default)")
	return cmd
}

func runBench(ctx context.Context, cmd *cobra.Command, o benchOpts) error {
	if o.quick {
		o.dur = 150 * time.Millisecond
	}
	if o.dur <= 0 {
		return fmt.Errorf("--duration %v: want > 0", o.dur)
	}
	if o.pool < 0 || o.pool > spec.MaxPoolSize {
		return fmt.Errorf("--pool %d: want 1..%d, or 0 for the default (%d)", o.pool, spec.MaxPoolSize, spec.DefaultPoolSize)
	}
	paths := map[string]bool{}
	for _, p := range strings.Split(o.paths, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		if !containsStr(benchPaths, p) {
			return fmt.Errorf("--paths: unknown path %q (want %s)", p, strings.Join(benchPaths, ","))
		}
		paths[p] = true
	}
	var jobs []benchJob
	for _, sc := range benchScenarios() {
		if !matchScenario(sc.name(), o.scenarios) {
			continue
		}
		if o.quick && strings.TrimSpace(o.scenarios) == "" && sc.receivers() > 4 && sc.shape != quickFanOut {
			continue // the largest fan-out stands for the others
		}
		for _, p := range benchPaths {
			if paths[p] && sc.runsOn(p) {
				jobs = append(jobs, benchJob{sc, p})
			}
		}
	}
	kernel := kernelJobs(o) // benchtcp.go
	if len(jobs) == 0 && len(kernel) == 0 {
		return errors.New("no scenario and path left to run")
	}
	ipnBin, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding the ipn program: %w", err)
	}
	b := &bencher{opts: o, ipnBin: ipnBin, stderr: cmd.ErrOrStderr()}
	if _, err := exec.LookPath("vde_switch"); err != nil {
		b.noVDESwitch = "vde_switch not installed (Debian package vde2)"
	}
	b.natsBin, b.noNATS = findNATSPeer(o.natsBin, ipnBin)
	b.tmp, err = os.MkdirTemp("", "ipn-bench-")
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	defer os.RemoveAll(b.tmp)

	start := time.Now()
	var rows []benchRow
	for i, j := range jobs {
		if ctx.Err() != nil {
			return errors.New("interrupted")
		}
		fmt.Fprintf(b.stderr, "[%d/%d] %s %s ...", i+1, len(jobs), j.sc.name(), j.path)
		r := b.run(ctx, i, j)
		switch {
		case r.Error != "":
			fmt.Fprintf(b.stderr, " error: %s\n", r.Error)
		case r.Note != "" && r.DeliveredN == 0:
			fmt.Fprintf(b.stderr, " %s\n", r.Note)
		default:
			fmt.Fprintf(b.stderr, " %.0f/s\n", r.Delivered)
		}
		rows = append(rows, r)
	}
	if rows = append(rows, b.kernelRows(ctx, kernel)...); ctx.Err() != nil {
		return errors.New("interrupted")
	}
	fmt.Fprintf(b.stderr, "%d rows in %.1fs\n", len(rows), time.Since(start).Seconds())
	benchRatios(rows)
	copyRatios(rows, b.stderr)

	if o.outFile != "" {
		data, err := json.MarshalIndent(rows, "", "  ")
		if err != nil {
			return err
		}
		if err := outfile.WriteFile(o.outFile, append(data, '\n')); err != nil {
			return fmt.Errorf("writing the results: %w", err)
		}
	}
	out := cmd.OutOrStdout()
	if o.asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rows); err != nil {
			return err
		}
	} else {
		benchTable(out, rows)
	}
	failed := 0
	for _, r := range rows {
		if r.Error != "" {
			failed++
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d rows failed", failed, len(rows))
	}
	return nil
}

func containsStr(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// matchScenario applies the --scenarios filter.
func matchScenario(name, filter string) bool {
	if strings.TrimSpace(filter) == "" {
		return true
	}
	for _, f := range strings.Split(filter, ",") {
		f = strings.TrimSpace(f)
		if exact, ok := strings.CutPrefix(f, "="); ok {
			if name == exact {
				return true
			}
		} else if f != "" && strings.Contains(name, f) {
			return true
		}
	}
	return false
}

// findNATSPeer returns the NATS peer program, or why there is none.
func findNATSPeer(flagPath, ipnBin string) (string, string) {
	if flagPath != "" {
		if st, err := os.Stat(flagPath); err != nil || st.IsDir() {
			return "", fmt.Sprintf("no NATS peer at %s (build bench/peers/nats)", flagPath)
		}
		return flagPath, ""
	}
	next := filepath.Join(filepath.Dir(ipnBin), "ipn-bench-nats")
	if st, err := os.Stat(next); err == nil && !st.IsDir() {
		return next, ""
	}
	if p, err := exec.LookPath("ipn-bench-nats"); err == nil {
		return p, ""
	}
	return "", "ipn-bench-nats not found (build bench/peers/nats, or --nats)"
}

type benchJob struct {
	sc   benchScenario
	path string
}

// bencher runs the rows.
type bencher struct {
	opts        benchOpts
	ipnBin      string
	natsBin     string
	noNATS      string // why NATS rows cannot run
	noVDESwitch string // why vde_switch rows cannot run
	tmp         string
	stderr      io.Writer
}

// run measures one row; failures go into the row, never panic out.
func (b *bencher) run(ctx context.Context, idx int, j benchJob) benchRow {
	sc := j.sc
	peers := sc.peers()
	row := benchRow{Scenario: sc.name(), Path: j.path, Size: sc.size}
	for _, p := range peers {
		if p.send {
			row.Senders++
		}
		if p.recv {
			row.Receivers++
		}
	}
	switch {
	case j.path == pathVDESwitch && b.noVDESwitch != "":
		row.Note = b.noVDESwitch
		return row
	case j.path == pathNATS && b.noNATS != "":
		row.Note = b.noNATS
		return row
	}
	dir, err := os.MkdirTemp(b.tmp, fmt.Sprintf("row%d-", idx))
	if err != nil {
		row.Error = err.Error()
		return row
	}
	defer os.RemoveAll(dir)
	var procs benchProcs
	defer procs.stopAll()
	if err := b.measure(ctx, &row, &procs, dir, idx, sc, j.path, peers); err != nil {
		row.Error = err.Error()
	}
	return row
}

// measure starts the row's server and peers, runs the load and fills row.
func (b *bencher) measure(ctx context.Context, row *benchRow, procs *benchProcs, dir string, idx int,
	sc benchScenario, path string, peers []benchPeerSpec) error {
	deadline := b.opts.dur + 30*time.Second
	env := os.Environ()
	var (
		servers []*benchProc // whose CPU counts as the server's
		target  string       // what peers join
		argv    []string     // the peer program and its leading arguments
		url     string
		files   []*os.File // passed to every peer (the limit ring)
	)
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	switch path {
	case pathLimit:
		var err error
		if files, err = benchpeer.NewLimitFiles(sc.size); err != nil {
			return err
		}
		target = "ring"
		argv = []string{b.ipnBin, "bench-limit"}
	case pathFast, pathSocket, pathVDE:
		sock := filepath.Join(dir, "ipn.sock")
		env = append(env, spec.SocketEnv+"="+sock, spec.NoAutostartEnv+"=1")
		if path == pathSocket {
			env = append(env, spec.FastPathEnv+"=0")
		}
		d, err := procs.start("daemon", []string{b.ipnBin, "daemon", "-f", "--socket", sock}, env, false)
		if err != nil {
			return err
		}
		if err := waitDial("unixpacket", sock, d, 10*time.Second); err != nil {
			return fmt.Errorf("ipn daemon: %w", err)
		}
		netPath := filepath.Join(dir, "net")
		hold := []string{b.ipnBin, "bench-net", "--target", netPath, "--proto", sc.policy}
		if sc.lossless {
			hold = append(hold, "--lossless")
		}
		if b.opts.pool > 0 {
			hold = append(hold, "--pool", strconv.Itoa(b.opts.pool))
		}
		if sc.size > 1514 {
			hold = append(hold, "--mtu", strconv.Itoa(sc.size))
		}
		target = netPath
		kind := "ipn"
		if path == pathVDE {
			target = filepath.Join(dir, "vde")
			hold = append(hold, "--vde", target)
			kind = "vde"
		}
		h, err := procs.start("bench-net", hold, env, true)
		if err != nil {
			return err
		}
		if _, err := h.expect("ready", 10*time.Second); err != nil {
			return fmt.Errorf("making the network: %w", err)
		}
		servers = []*benchProc{d, h}
		argv = []string{b.ipnBin, "bench-peer", "--kind", kind}
		if path == pathSocket {
			argv = append(argv, "--no-fast")
		}
	case pathVDESwitch:
		target = filepath.Join(dir, "vde_switch")
		// Ports for every peer, and the 32 of its default at least.
		sw := []string{"vde_switch", "-n", strconv.Itoa(max(32, len(peers)+1)), "-s", target}
		if sc.policy == "hub" {
			sw = append(sw, "-x")
		}
		// Its console reads standard input, held open by procs.
		s, err := procs.start("vde_switch", sw, env, true)
		if err != nil {
			return err
		}
		if err := waitDial("unix", filepath.Join(target, "ctl"), s, 10*time.Second); err != nil {
			return fmt.Errorf("vde_switch: %w", err)
		}
		servers = []*benchProc{s}
		argv = []string{b.ipnBin, "bench-peer", "--kind", "vde"}
	case pathNATS:
		s, err := procs.start("nats server", []string{b.natsBin, "server"}, env, true)
		if err != nil {
			return err
		}
		if url, err = s.expect("nats://", 10*time.Second); err != nil {
			return fmt.Errorf("nats server: %w", err)
		}
		servers = []*benchProc{s}
		target = fmt.Sprintf("ipnbench.%d", idx)
		argv = []string{b.natsBin, "peer", "--url", url}
	}

	// The peers: all join, then the receivers get "go" first.
	pp := make([]*benchProc, len(peers))
	for i, p := range peers {
		args := append(append([]string(nil), argv...),
			"--id", strconv.Itoa(p.id), "--size", strconv.Itoa(sc.size),
			"--target", target, "--duration", b.opts.dur.String(), "--deadline", deadline.String())
		if p.send {
			args = append(args, "--send")
		}
		if p.recv {
			args = append(args, "--recv")
		}
		if p.hello {
			args = append(args, "--hello")
		}
		if len(p.dests) > 0 {
			ds := make([]string, len(p.dests))
			for k, d := range p.dests {
				ds[k] = strconv.Itoa(d)
			}
			args = append(args, "--dests", strings.Join(ds, ","))
		}
		if sc.light {
			args = append(args, "--rate", strconv.Itoa(lightRate))
		}
		proc, err := procs.startWith(fmt.Sprintf("peer %d", p.id), args, env, true, files)
		if err != nil {
			return err
		}
		pp[i] = proc
		// In waves: a server may refuse many joining at once (IPN's VDE
		// endpoint takes 8 handshakes of one user at a time).
		if (i+1)%peerWave == 0 || i == len(peers)-1 {
			for k := i + 1 - (i % peerWave); k <= i; k++ {
				if _, err := pp[k].expect("ready", 15*time.Second); err != nil {
					return fmt.Errorf("peer %d: %w", peers[k].id, err)
				}
			}
		}
	}
	for _, f := range files {
		f.Close() // the peers have theirs
	}
	files = nil
	if ctx.Err() != nil {
		return ctx.Err()
	}
	time.Sleep(20 * time.Millisecond) // the hellos reach the switch
	cpu0 := serverCPU(servers)
	for _, first := range []bool{true, false} {
		for i, p := range peers {
			if (p.recv && !p.send) == first {
				if err := pp[i].say("go"); err != nil {
					return err
				}
			}
		}
	}
	for i, p := range peers {
		if p.send {
			if _, err := pp[i].expect("done", b.opts.dur+15*time.Second); err != nil {
				return fmt.Errorf("peer %d sending: %w", p.id, err)
			}
		}
	}
	// Drain: until the receivers' counts stop moving (at most a second).
	var last int64 = -1
	for end := time.Now().Add(time.Second); time.Now().Before(end); {
		time.Sleep(40 * time.Millisecond)
		var total int64
		for i, p := range peers {
			if !p.recv {
				continue
			}
			if err := pp[i].say("count"); err != nil {
				return err
			}
			l, err := pp[i].expect("count ", 5*time.Second)
			if err != nil {
				return fmt.Errorf("peer %d: %w", p.id, err)
			}
			n, _ := strconv.ParseInt(strings.TrimPrefix(l, "count "), 10, 64)
			total += n
		}
		if total == last {
			break
		}
		last = total
	}
	cpu1 := serverCPU(servers)
	for _, proc := range pp {
		if err := proc.say("stop"); err != nil {
			return err
		}
	}
	results := make([]benchpeer.Result, len(peers))
	for i, proc := range pp {
		l, err := proc.expect("{", 10*time.Second)
		if err != nil {
			return fmt.Errorf("peer %d result: %w", peers[i].id, err)
		}
		if err := json.Unmarshal([]byte(l), &results[i]); err != nil {
			return fmt.Errorf("peer %d result %q: %w", peers[i].id, l, err)
		}
	}
	benchFill(row, peers, results, cpu1-cpu0)
	switch {
	case path == pathFast && !allFast(results, true), path == pathFast && results[0].FastPath == nil:
		row.Note = "fast path not negotiated"
	case path == pathSocket && !allFast(results, false):
		row.Note = "fast path in use despite IPN_FASTPATH=0"
	}
	for i, r := range results {
		if r.Error != "" && row.Error == "" {
			row.Error = fmt.Sprintf("peer %d: %s", peers[i].id, r.Error)
		}
	}
	return nil
}

// allFast reports whether every peer that told reported fast path on.
func allFast(rs []benchpeer.Result, on bool) bool {
	for _, r := range rs {
		if r.FastPath != nil && *r.FastPath != on {
			return false
		}
	}
	return true
}

// benchFill computes a row's figures from the peers' results.
func benchFill(row *benchRow, peers []benchPeerSpec, rs []benchpeer.Result, serverCPU float64) {
	var hist benchpeer.Hist
	cpu := serverCPU
	for i, p := range peers {
		r := rs[i]
		cpu += r.CPU
		if p.send {
			row.Sent += r.Sent
			row.Seconds = max(row.Seconds, r.SendSeconds)
		}
		if p.recv {
			row.DeliveredN += r.Received
			hist.AddBuckets(r.Latency)
		}
	}
	// What the sent frames call for: every other receiver for a
	// broadcast, the destination's share of the round robin for unicast.
	for i, s := range peers {
		if !s.send {
			continue
		}
		sent := rs[i].Sent
		for _, r := range peers {
			if !r.recv || r.id == s.id {
				continue
			}
			if len(s.dests) == 0 {
				row.Expected += sent
				continue
			}
			for k, d := range s.dests {
				if d == r.id {
					n := sent / int64(len(s.dests))
					if int64(k) < sent%int64(len(s.dests)) {
						n++
					}
					row.Expected += n
				}
			}
		}
	}
	if row.Expected > 0 {
		row.Loss = max(0, 100*(1-float64(row.DeliveredN)/float64(row.Expected)))
	}
	if row.Seconds > 0 {
		row.Delivered = float64(row.DeliveredN) / row.Seconds
		if row.Receivers > 0 {
			row.PerReceiver = row.Delivered / float64(row.Receivers)
		}
	}
	row.P50 = float64(hist.Quantile(0.50)) / 1e3
	row.P99 = float64(hist.Quantile(0.99)) / 1e3
	if row.DeliveredN > 0 {
		m := float64(row.DeliveredN) / 1e6
		row.CPU = cpu / m
		row.ServerCPU = serverCPU / m
	}
}

// benchRatios sets the rows' ratios to vde_switch, NATS and the limit on
// the same scenario.
func benchRatios(rows []benchRow) {
	ref := map[string]*benchRow{}
	for i := range rows {
		r := &rows[i]
		if (r.Path == pathVDESwitch || r.Path == pathNATS || r.Path == pathLimit) && r.Error == "" && r.Delivered > 0 {
			ref[r.Scenario+"\x00"+r.Path] = r
		}
	}
	ratio := func(a, b float64) *float64 {
		if a <= 0 || b <= 0 {
			return nil
		}
		v := a / b
		return &v
	}
	for i := range rows {
		r := &rows[i]
		if r.Error != "" || r.Delivered <= 0 {
			continue
		}
		light := strings.HasSuffix(r.Scenario, " light")
		if v := ref[r.Scenario+"\x00"+pathVDESwitch]; v != nil {
			r.VsVDESwitch = ratio(r.Delivered, v.Delivered)
			if light {
				r.P50VsVDE = ratio(r.P50, v.P50)
			}
		}
		if n := ref[r.Scenario+"\x00"+pathNATS]; n != nil {
			r.VsNATS = ratio(r.Delivered, n.Delivered)
			if light {
				r.P50VsNATS = ratio(r.P50, n.P50)
			}
		}
		if l := ref[r.Scenario+"\x00"+pathLimit]; l != nil {
			r.VsLimit = ratio(r.Delivered, l.Delivered)
			if light {
				r.P50VsLimit = ratio(r.P50, l.P50)
			}
		}
	}
}

// copyRatios sets the big rows' bytes delivered a second against one
// core's copy of their messages, measured now, noting it.
func copyRatios(rows []benchRow, stderr io.Writer) {
	bps := map[int]float64{}
	for i := range rows {
		r := &rows[i]
		if r.Size <= 65536 || r.Delivered <= 0 || r.Gbps > 0 {
			continue
		}
		if bps[r.Size] == 0 {
			bps[r.Size] = copyRate(r.Size, 300*time.Millisecond)
			fmt.Fprintf(stderr, "one core copies %d-byte messages at %.1f GB/s\n", r.Size, bps[r.Size]/1e9)
		}
		v := r.Delivered * float64(r.Size) / bps[r.Size]
		r.VsCopy = &v
		r.Note = strings.TrimPrefix(r.Note+fmt.Sprintf("; %.2fx one core's copy (%.1f GB/s)", v, bps[r.Size]/1e9), "; ")
	}
}

// copyRate measures one core's copy of size-byte messages, in bytes a
// second: the bandwidth of memory a receiver of such messages that copied
// them would have, between two buffers of 16 MiB or more (past the caches,
// as messages in flight are).
func copyRate(size int, d time.Duration) float64 {
	n := max(16<<20/size, 2)
	src, dst := make([]byte, n*size), make([]byte, n*size)
	for i := range src {
		src[i] = byte(i)
	}
	copy(dst, src) // fault both in
	var bytes int64
	start := time.Now()
	for i := 0; time.Since(start) < d; i++ {
		off := (i % n) * size
		copy(dst[off:off+size], src[off:off+size])
		bytes += int64(size)
	}
	return float64(bytes) / time.Since(start).Seconds()
}

// benchTable prints the rows as aligned columns.
func benchTable(w io.Writer, rows []benchRow) {
	head := []string{"SCENARIO", "PATH", "DELIVERED/s", "PER RCV/s", "LOSS%", "P50us", "P99us", "CPUs/M", "SRVs/M", "vs VDE_SW", "vs NATS", "vs LIMIT", "NOTE"}
	cells := [][]string{head}
	ratio := func(v *float64) string {
		if v == nil {
			return "-"
		}
		return fmt.Sprintf("%.2fx", *v)
	}
	for _, r := range rows {
		note := r.Note
		if r.Error != "" {
			note = "error: " + r.Error
		}
		if r.P50VsVDE != nil || r.P50VsNATS != nil || r.P50VsLimit != nil {
			note = strings.TrimSpace(fmt.Sprintf("p50 %s vde_switch, %s nats, %s limit; %s",
				ratio(r.P50VsVDE), ratio(r.P50VsNATS), ratio(r.P50VsLimit), note))
			note = strings.TrimSuffix(note, ";")
		}
		if c := kernelCells(head, r, note); c != nil {
			cells = append(cells, c)
			continue
		}
		if r.DeliveredN == 0 && r.Error == "" && r.Sent == 0 {
			cells = append(cells, []string{r.Scenario, r.Path, "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", note})
			continue
		}
		cells = append(cells, []string{
			r.Scenario, r.Path,
			fmt.Sprintf("%.0f", r.Delivered), fmt.Sprintf("%.0f", r.PerReceiver),
			fmt.Sprintf("%.2f", r.Loss), fmt.Sprintf("%.1f", r.P50), fmt.Sprintf("%.1f", r.P99),
			fmt.Sprintf("%.2f", r.CPU), fmt.Sprintf("%.2f", r.ServerCPU),
			ratio(r.VsVDESwitch), ratio(r.VsNATS), ratio(r.VsLimit), note,
		})
	}
	width := make([]int, len(head))
	for _, c := range cells {
		for i, s := range c {
			width[i] = max(width[i], len(s))
		}
	}
	for _, c := range cells {
		var line strings.Builder
		for i, s := range c {
			switch {
			case i == len(c)-1:
				line.WriteString(s)
			case i < 2:
				fmt.Fprintf(&line, "%-*s  ", width[i], s)
			default:
				fmt.Fprintf(&line, "%*s  ", width[i], s)
			}
		}
		fmt.Fprintln(w, strings.TrimRight(line.String(), " "))
	}
}

// serverCPU returns the CPU seconds (user and system) the processes used
// so far.
func serverCPU(ps []*benchProc) float64 {
	var t float64
	for _, p := range ps {
		t += procCPU(p.cmd.Process.Pid)
	}
	return t
}

// procCPU reads utime and stime of a process from /proc/PID/stat, in
// seconds (the kernel counts in USER_HZ, 100 per second), or 0.
func procCPU(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name, in parentheses, may hold spaces: fields are
	// counted after its closing parenthesis, from field 3 (state).
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseFloat(f[11], 64) // field 14
	st, _ := strconv.ParseFloat(f[12], 64) // field 15
	return (ut + st) / 100
}

// waitDial waits until a socket at path accepts a connection, or p exits.
func waitDial(network, path string, p *benchProc, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.Dial(network, path)
		if err == nil {
			c.Close()
			return nil
		}
		if p.exited() {
			return fmt.Errorf("exited: %s", p.stderrText())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not answer in %v: %w", path, timeout, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// benchProc is a child process of ipn bench, in a process group of its
// own, with its output read line by line.
type benchProc struct {
	name   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string   // standard output, line by line
	quit   chan struct{} // closed by stop: the reader gives up
	read   chan struct{} // closed when the reader returns
	waited chan struct{} // closed when the process was waited for
	stderr *capBuffer
}

// benchProcs owns the processes of a row.
type benchProcs struct{ ps []*benchProc }

// start starts argv with env. Its standard input is a pipe held until
// stop when hold is set, else /dev/null.
func (bp *benchProcs) start(name string, argv, env []string, hold bool) (*benchProc, error) {
	return bp.startWith(name, argv, env, hold, nil)
}

// startWith is start, passing files as descriptors 3 and up.
func (bp *benchProcs) startWith(name string, argv, env []string, hold bool, files []*os.File) (*benchProc, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.ExtraFiles = files
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	p := &benchProc{
		name: name, cmd: cmd,
		lines: make(chan string, 16), quit: make(chan struct{}),
		read: make(chan struct{}), waited: make(chan struct{}),
		stderr: &capBuffer{max: 4096},
	}
	cmd.Stderr = p.stderr
	var err error
	if hold {
		if p.stdin, err = cmd.StdinPipe(); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	bp.ps = append(bp.ps, p)
	go func() {
		defer close(p.read)
		defer close(p.lines)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			select {
			case p.lines <- sc.Text():
			case <-p.quit:
				return
			}
		}
	}()
	go func() {
		<-p.read
		cmd.Wait()
		close(p.waited)
	}()
	return p, nil
}

// stopAll stops every process, the last started first.
func (bp *benchProcs) stopAll() {
	for i := len(bp.ps) - 1; i >= 0; i-- {
		bp.ps[i].stop()
	}
	bp.ps = nil
}

// say writes a line to the process.
func (p *benchProc) say(line string) error {
	if p.stdin == nil {
		return fmt.Errorf("%s takes no input", p.name)
	}
	if _, err := io.WriteString(p.stdin, line+"\n"); err != nil {
		return fmt.Errorf("%s: %w (%s)", p.name, err, p.stderrText())
	}
	return nil
}

// expect reads lines until one starts with prefix, and returns it.
func (p *benchProc) expect(prefix string, timeout time.Duration) (string, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				return "", fmt.Errorf("%s ended before %q: %s", p.name, prefix, p.stderrText())
			}
			if strings.HasPrefix(l, prefix) {
				return l, nil
			}
		case <-t.C:
			return "", fmt.Errorf("%s: no %q in %v", p.name, prefix, timeout)
		}
	}
}

func (p *benchProc) exited() bool {
	select {
	case <-p.read:
		return true
	default:
		return false
	}
}

// stop ends the process: its input closes, and its process group is
// killed if it has not exited shortly after (SIGTERM first).
func (p *benchProc) stop() {
	if p.stdin != nil {
		p.stdin.Close()
	}
	pid := p.cmd.Process.Pid
	grace := 300 * time.Millisecond
	if p.stdin == nil {
		grace = 0 // a daemon: it stops at SIGTERM
	}
	select {
	case <-p.waited:
	case <-time.After(grace):
		syscall.Kill(-pid, syscall.SIGTERM)
		select {
		case <-p.waited:
		case <-time.After(time.Second):
		}
	}
	syscall.Kill(-pid, syscall.SIGKILL) // whatever of the group is left
	close(p.quit)
	<-p.waited
}

func (p *benchProc) stderrText() string {
	return strings.TrimSpace(p.stderr.String())
}

// capBuffer keeps the first max bytes written to it.
type capBuffer struct {
	mu  sync.Mutex
	max int
	buf bytes.Buffer
}

func (c *capBuffer) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if room := c.max - c.buf.Len(); room > 0 {
		c.buf.Write(b[:min(len(b), room)])
	}
	return len(b), nil
}

func (c *capBuffer) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}
