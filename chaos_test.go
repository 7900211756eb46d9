package ipn_test

import (
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ipn-project/ipn"
)

// chaosEnv sets how long TestChaos runs (a duration; 15s if unset) and
// chaosSeedEnv its seed (the time if unset): IPN_CHAOS=15m for the long run.
const (
	chaosEnv     = "IPN_CHAOS"
	chaosSeedEnv = "IPN_CHAOS_SEED"
)

// chaosRecovery bounds how long the streams may take to flow again after
// any event.
const chaosRecovery = 10 * time.Second

// chaosDaemon is the daemon the chaos test kills, stops, upgrades and
// restarts.
type chaosDaemon struct {
	t    *testing.T
	sock string
	p    *proc
}

func (d *chaosDaemon) start() {
	d.t.Helper()
	d.p = daemonAt(d.t, d.sock)
}

func (d *chaosDaemon) signal(sig syscall.Signal) {
	d.p.cmd.Process.Signal(sig)
}

// stats returns the daemon's open descriptors and resident memory (KiB).
func (d *chaosDaemon) stats() (fds, rssKiB int) {
	pid := strconv.Itoa(d.p.cmd.Process.Pid)
	ents, _ := os.ReadDir("/proc/" + pid + "/fd")
	b, _ := os.ReadFile("/proc/" + pid + "/status")
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			rssKiB, _ = strconv.Atoi(f[1])
		}
	}
	return len(ents), rssKiB
}

// For minutes (IPN_CHAOS), the daemon is killed, stopped and continued,
// upgraded, and stopped and restarted at random, and a member process is
// killed and started again, while a lossless hub carries two streams (one
// on the fast path, one on a socket) to two receivers, every member with
// re-join on. After every event both streams flow again within
// chaosRecovery; no message ever arrives twice or out of order; messages
// are lost only by crashes; the members' goroutines and descriptors, and
// the daemon's descriptors, stay flat. It reports the figures.
func TestChaos(t *testing.T) {
	requireRoot(t)
	dur := 15 * time.Second
	if v := os.Getenv(chaosEnv); v != "" {
		var err error
		if dur, err = time.ParseDuration(v); err != nil {
			t.Fatalf("%s=%q: %v", chaosEnv, v, err)
		}
	}
	seed := time.Now().UnixNano()
	if v := os.Getenv(chaosSeedEnv); v != "" {
		seed, _ = strconv.ParseInt(v, 10, 64)
	}
	rng := rand.New(rand.NewSource(seed))
	t.Logf("chaos for %v, seed %d (%s=%d repeats it)", dur, seed, chaosSeedEnv, seed)

	d := &chaosDaemon{t: t, sock: filepath.Join(tempDir(t), "daemon", "ipn.sock")}
	d.start()
	dial := &ipn.Dialer{Socket: d.sock}
	dir := tempDir(t)
	hub := filepath.Join(dir, "hub")
	newSocket := func() *ipn.Socket {
		s, err := dial.NewSocket(ipn.Any)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		if err := s.SetRejoin(true); err != nil {
			t.Fatal(err)
		}
		return s
	}
	mgr := newSocket()
	mgr.SetFlags(ipn.Lossless)
	if err := mgr.Bind(hub); err != nil {
		t.Fatal(err)
	}
	join := func(fast bool, how ipn.How) *ipn.Socket {
		s := newSocket()
		s.SetFastPath(fast)
		if err := s.Connect(hub); err != nil {
			t.Fatal(err)
		}
		if err := s.Shutdown(how); err != nil {
			t.Fatal(err)
		}
		return s
	}
	receivers := []*checker{check(join(true, ipn.ShutWrite)), check(join(false, ipn.ShutWrite))}
	stop := make(chan struct{})
	senders := []*streamer{stream(join(true, ipn.ShutRead), 1, stop), stream(join(false, ipn.ShutRead), 2, stop)}
	defer func() {
		close(stop)
		for _, s := range senders {
			<-s.done
		}
	}()
	// A member process, killed and started again at random: an ipn cat
	// receiver whose output goes nowhere (re-join is on by default).
	var catP *exec.Cmd
	var catErr strings.Builder
	startCat := func() {
		catP = exec.Command(ipnCommand(t), "cat", "--recv-only", hub)
		catErr.Reset()
		catP.Stderr = &catErr
		catP.Env = append(os.Environ(), "IPN_SOCKET="+d.sock)
		catP.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := catP.Start(); err != nil {
			t.Fatal(err)
		}
	}
	startCat()
	t.Cleanup(func() {
		catP.Process.Kill()
		catP.Wait()
	})

	flowing := func(what string) time.Duration {
		t.Helper()
		t0 := time.Now()
		var before [2][2]uint64
		for i, r := range receivers {
			before[i] = [2]uint64{r.got(1), r.got(2)}
		}
		for {
			ok := true
			for i, r := range receivers {
				if r.got(1) < before[i][0]+100 || r.got(2) < before[i][1]+100 {
					ok = false
				}
			}
			if ok {
				return time.Since(t0)
			}
			if time.Since(t0) > chaosRecovery {
				ls := exec.Command(ipnCommand(t), "ls", "--json", hub)
				ls.Env = append(os.Environ(), "IPN_SOCKET="+d.sock)
				out, _ := ls.CombinedOutput()
				if os.Getenv("CHAOSDEBUG") != "" {
					sbuf := make([]byte, 1<<22)
					os.WriteFile("/tmp/chaos-test0.txt", sbuf[:runtime.Stack(sbuf, true)], 0o644)
					catP.Process.Signal(syscall.SIGQUIT)
					d.signal(syscall.SIGQUIT)
					d.p.wait(waitProcs)
					catP.Wait()
					os.WriteFile("/tmp/chaos-cat.txt", []byte(catErr.String()), 0o644)
					os.WriteFile("/tmp/chaos-daemon.txt", []byte(d.p.stderr()), 0o644)
					buf := make([]byte, 1<<22)
					os.WriteFile("/tmp/chaos-test.txt", buf[:runtime.Stack(buf, true)], 0o644)
				}
				t.Fatalf("the streams did not flow again within %v after %s: received %d, %d and %d, %d (%d, %d before); sent %d (%v), %d (%v)\n%s\ndaemon's log:\n%s",
					chaosRecovery, what, receivers[0].got(1), receivers[0].got(2), receivers[1].got(1), receivers[1].got(2),
					before[0][0], before[0][1], senders[0].sent.Load(), senders[0].err, senders[1].sent.Load(), senders[1].err, out, d.p.stderr())
			}
			time.Sleep(time.Millisecond)
		}
	}
	flowing("the start")
	env := []string{"IPN_SOCKET=" + d.sock}
	waitFor(t, waitProcs, "every member", func() bool { return portsVia(env, ipnCommand(t), hub) == 5 })
	fds0, rss0 := d.stats()
	self0, gor0 := selfFDs(), runtime.NumGoroutine()

	counts := map[string]int{}
	var recov []time.Duration
	crashes := 0
	var gapsBefore uint64
	end := time.Now().Add(dur)
	for time.Now().Before(end) {
		event := []string{"crash", "stop-continue", "takeover", "restart", "member"}[rng.Intn(5)]
		counts[event]++
		switch event {
		case "crash":
			crashes++
			d.signal(syscall.SIGKILL)
			d.p.wait(waitProcs)
			d.start()
		case "stop-continue":
			d.signal(syscall.SIGSTOP)
			time.Sleep(time.Duration(50+rng.Intn(450)) * time.Millisecond) // the stop itself is the event
			d.signal(syscall.SIGCONT)
		case "takeover":
			d.p = takeoverDaemon(t, d.sock, d.p)
		case "restart":
			crashes++ // a stop ends the networks: what was queued goes
			d.signal(syscall.SIGTERM)
			d.p.wait(waitProcs)
			d.start()
		case "member":
			catP.Process.Kill()
			catP.Wait()
			startCat()
		}
		recov = append(recov, flowing(event))
		// Only a crash or a stop may lose messages: the streams have
		// flowed past this event's gap, if it made one.
		var gapsNow uint64
		for _, r := range receivers {
			r.mu.Lock()
			gapsNow += r.gaps
			r.mu.Unlock()
		}
		if gapsNow != gapsBefore && event != "crash" && event != "restart" {
			t.Fatalf("%d messages lost across a %s (events so far %v)", gapsNow-gapsBefore, event, counts)
		}
		gapsBefore = gapsNow
		for _, r := range receivers {
			if err := r.err(); err != nil {
				t.Fatalf("after %v: %v", counts, err)
			}
		}
		time.Sleep(time.Duration(rng.Intn(300)) * time.Millisecond)
	}
	// Quiet: everything re-joined, the daemon as it was at the start.
	flowing("the end")
	for _, s := range senders {
		if s.err != nil {
			t.Fatalf("sender %d: %v", s.id, s.err)
		}
	}
	var gaps uint64
	for _, r := range receivers {
		r.mu.Lock()
		gaps += r.gaps
		r.mu.Unlock()
	}
	var fds1, rss1 int
	var self1 int
	for t0 := time.Now(); ; time.Sleep(10 * time.Millisecond) {
		if self1 = selfFDs(); runtime.NumGoroutine() <= gor0+10 && self1 <= self0+10 {
			break
		}
		if time.Since(t0) > waitProcs {
			buf := make([]byte, 1<<20)
			t.Fatalf("the members have %d descriptors (%v) and %d goroutines, %d and %d at the start:\n%s",
				self1, fdKinds("self"), runtime.NumGoroutine(), self0, gor0, buf[:runtime.Stack(buf, true)])
		}
	}
	for t0 := time.Now(); ; time.Sleep(10 * time.Millisecond) {
		if fds1, rss1 = d.stats(); fds1 <= fds0+10 {
			break
		}
		if time.Since(t0) > waitProcs {
			out, _ := exec.Command(ipnCommand(t), "ls", "--json", hub).CombinedOutput()
			t.Fatalf("the daemon has %d descriptors, %d at the start: %v\n%s\n%s",
				fds1, fds0, fdKinds(strconv.Itoa(d.p.cmd.Process.Pid)), out, d.p.stderr())
		}
	}
	slices.Sort(recov)
	t.Logf("events %v in %v; recovery median %v, max %v (bound %v)", counts, dur,
		recov[len(recov)/2].Round(time.Millisecond), recov[len(recov)-1].Round(time.Millisecond), chaosRecovery)
	t.Logf("delivered %d + %d messages to each receiver; %d lost across %d crashes and restarts",
		receivers[0].got(1), receivers[0].got(2), gaps, crashes)
	t.Logf("daemon: %d descriptors, %d KiB resident at the start; %d, %d KiB at the end (another process by then); members: %d descriptors, %d goroutines; then %d, %d",
		fds0, rss0, fds1, rss1, self0, gor0, self1, runtime.NumGoroutine())
}

// fdKinds counts the descriptors of process pid ("self": this one) by
// what they are: a file's path, or socket, pipe, anon_inode...
func fdKinds(pid string) map[string]int {
	ents, _ := os.ReadDir("/proc/" + pid + "/fd")
	kinds := map[string]int{}
	for _, e := range ents {
		l, _ := os.Readlink("/proc/" + pid + "/fd/" + e.Name())
		if i := strings.IndexAny(l, ":["); i > 0 {
			l = l[:i]
		}
		kinds[l]++
	}
	return kinds
}

// selfFDs returns the number of descriptors this process has open.
func selfFDs() int {
	ents, _ := os.ReadDir("/proc/self/fd")
	return len(ents)
}
