package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// kernelNeed skips the test unless it can run the kernel rows: root, ip,
// ping and iperf3; under CI a missing tool is a failure (.ci/run installs
// them).
func kernelNeed(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
	for _, tool := range []string{"ip", "ping", "iperf3"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is missing (.ci/run installs it)", tool)
			}
			t.Skipf("needs %s", tool)
		}
	}
}

// kernelBench starts ipn bench with args, its temporary files (and through
// its environment every process it starts) in a directory of the test's.
// Its standard error may be read while it runs.
func kernelBench(t *testing.T, args ...string) (cmd *exec.Cmd, tmp string, stdout *bytes.Buffer, stderr *capBuffer) {
	t.Helper()
	tmp = t.TempDir()
	cmd = exec.Command(os.Args[0], append([]string{"bench"}, args...)...)
	cmd.Env = append(os.Environ(), asIPNEnv+"=1", "TMPDIR="+tmp)
	stdout, stderr = new(bytes.Buffer), &capBuffer{max: 1 << 20}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	return cmd, tmp, stdout, stderr
}

// kernelLinks lists the interfaces of this namespace.
func kernelLinks(t *testing.T) map[string]bool {
	t.Helper()
	ifs, err := os.ReadDir("/sys/class/net")
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]bool{}
	for _, i := range ifs {
		m[i.Name()] = true
	}
	return m
}

// kernelClean checks that the bench with pid, whose processes had
// TMPDIR=tmp, left no namespace, interface, process or file behind.
func kernelClean(t *testing.T, pid int, tmp string, before map[string]bool) {
	t.Helper()
	prefix := fmt.Sprintf("ipnb%d-", pid)
	// A namespace's interfaces go shortly after it does.
	var left []string
	for end := time.Now().Add(5 * time.Second); ; {
		left = left[:0]
		ents, _ := os.ReadDir("/run/netns")
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), prefix) {
				left = append(left, e.Name())
			}
		}
		after := kernelLinks(t)
		for name := range after {
			if !before[name] && (strings.HasPrefix(name, "tap") || strings.HasPrefix(name, "vtap") ||
				name == "br0" || name == "vx0" || name == "u0" || name == "eth0" || name == "pa" || name == "pb" || name == "g0") {
				left = append(left, "interface "+name)
			}
		}
		if len(left) == 0 || time.Now().After(end) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
	mark := []byte("TMPDIR=" + tmp + "\x00")
	procs, _ := filepath.Glob("/proc/[0-9]*/environ")
	for _, p := range procs {
		env, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(env, mark) {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join(filepath.Dir(p), "cmdline"))
		t.Errorf("process %s left running: %s", filepath.Base(filepath.Dir(p)), bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '}))
	}
	if ents, _ := os.ReadDir(tmp); len(ents) > 0 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("files left in the temporary directory: %v", names)
	}
}

// TestBenchKernelRows runs the tcp tap, udp tap loaded and tcp vxlan rows
// briefly: every row moves something, and nothing is left behind.
func TestBenchKernelRows(t *testing.T) {
	kernelNeed(t)
	before := kernelLinks(t)
	cmd, tmp, stdout, stderr := kernelBench(t, "--quick", "--json", "--scenarios", "=tcp tap,=udp tap loaded,=tcp vxlan")
	err := cmd.Run()
	kernelClean(t, cmd.Process.Pid, tmp, before)
	if err != nil {
		t.Fatalf("ipn bench: %v\n%s", err, stderr.String())
	}
	var rows []benchRow
	if err := json.Unmarshal(stdout.Bytes(), &rows); err != nil {
		t.Fatalf("the JSON rows: %v\n%s", err, stdout.String())
	}
	want := map[string]bool{}
	for _, s := range kernelScenarios {
		for _, p := range s.paths {
			want[s.name+"/"+p] = true
		}
	}
	_, noVDE := exec.LookPath("vde_switch")
	for _, r := range rows {
		key := r.Scenario + "/" + r.Path
		if !want[key] {
			t.Errorf("unexpected row %s", key)
			continue
		}
		delete(want, key)
		if r.Path == pathVDESwitch && noVDE != nil {
			if r.Note == "" {
				t.Errorf("%s: no note that vde_switch is missing", key)
			}
			continue
		}
		if r.Error != "" || r.Gbps <= 0 || r.DeliveredN <= 0 {
			t.Errorf("%s: nothing measured: gbps %v, delivered %d, error %q", key, r.Gbps, r.DeliveredN, r.Error)
		}
		if r.VsAnchor == nil || r.Anchor != kernelAnchor(r.Scenario) {
			t.Errorf("%s: no ratio to %s: %v %v", key, kernelAnchor(r.Scenario), r.Anchor, r.VsAnchor)
		}
	}
	for key := range want {
		t.Errorf("no row %s", key)
	}
	if t.Failed() {
		t.Logf("stderr:\n%s", stderr.String())
	}
}

// TestBenchKernelInterrupt interrupts the bench in the middle of a row:
// it exits at once, and leaves nothing behind.
func TestBenchKernelInterrupt(t *testing.T) {
	kernelNeed(t)
	before := kernelLinks(t)
	cmd, tmp, _, stderr := kernelBench(t, "--scenarios", "=tcp tap", "--duration", "30s")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	// Until the first row's iperf3 client runs.
	prefix := fmt.Sprintf("ipnb%d-", cmd.Process.Pid)
	deadline := time.Now().Add(30 * time.Second)
	for !kernelIperfClient(prefix) {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			<-done
			t.Fatalf("no iperf3 client in 30s; stderr:\n%s", stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGINT)
	select {
	case err := <-done:
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 130 {
			t.Errorf("ipn bench interrupted: %v, want exit status 130\n%s", err, stderr.String())
		}
	case <-time.After(15 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("ipn bench still running 15s after SIGINT; stderr:\n%s", stderr.String())
	}
	kernelClean(t, cmd.Process.Pid, tmp, before)
}

// kernelIperfClient reports whether an iperf3 client runs in a namespace
// whose name starts with prefix.
func kernelIperfClient(prefix string) bool {
	ents, _ := os.ReadDir("/run/netns")
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), prefix) {
			continue
		}
		out, _ := exec.Command("ip", "netns", "pids", e.Name()).Output()
		for _, pid := range strings.Fields(string(out)) {
			cmdline, _ := os.ReadFile("/proc/" + pid + "/cmdline")
			if bytes.HasPrefix(cmdline, []byte("iperf3\x00-c\x00")) {
				return true
			}
		}
	}
	return false
}

// TestKernelJobs checks which kernel rows the flags choose, and how their
// ratios and cells come out, without running them.
func TestKernelJobs(t *testing.T) {
	all := strings.Join(benchPaths, ",")
	count := func(o benchOpts) int { return len(kernelJobs(o)) }
	for _, c := range []struct {
		o    benchOpts
		want int
	}{
		{benchOpts{paths: all}, 8},
		{benchOpts{paths: "fast"}, 0},                         // other rows' paths chosen
		{benchOpts{paths: "fast", scenarios: "tcp"}, 5},       // named: --paths does not apply
		{benchOpts{paths: all, scenarios: "tap"}, 6},          // tcp tap, udp tap loaded
		{benchOpts{paths: all, scenarios: "=tcp vxlan"}, 2},   // ipn, kernel
		{benchOpts{paths: all, scenarios: "hub 1->1 64B"}, 0}, // the other rows only
	} {
		if got := count(c.o); got != c.want {
			t.Errorf("paths %q scenarios %q: %d kernel rows, want %d", c.o.paths, c.o.scenarios, got, c.want)
		}
	}
	rows := []benchRow{
		{Scenario: scUDPTap, Path: kpathIPN, Gbps: 0.5, Loss: 20},
		{Scenario: scUDPTap, Path: kpathBridge, Gbps: 1, Loss: 2},
		{Scenario: scTCPVXLAN, Path: kpathIPN, Gbps: 2},
		{Scenario: scTCPVXLAN, Path: kpathKernel, Error: "boom"},
	}
	kernelRatios(rows)
	if v := rows[0].VsAnchor; v == nil || *v != 0.5 || rows[0].Anchor != kpathBridge || !strings.Contains(rows[0].Note, "bridge loss 2.00%") {
		t.Errorf("udp ipn row: %+v", rows[0])
	}
	if rows[2].VsAnchor != nil {
		t.Errorf("a ratio to a failed anchor: %+v", rows[2])
	}
	head := []string{"SCENARIO", "PATH", "DELIVERED/s", "LOSS%", "vs VDE_SW", "NOTE"}
	got := strings.Join(kernelCells(head, rows[0], rows[0].Note), "|")
	if want := "udp tap loaded|ipn|0.50 Gb/s|20.00|-|0.50x bridge; bridge loss 2.00%"; got != want {
		t.Errorf("cells %q, want %q", got, want)
	}
	if c := kernelCells(head, benchRow{Scenario: "hub 1->1 64B"}, ""); c != nil {
		t.Errorf("cells of another row: %q", c)
	}
}
