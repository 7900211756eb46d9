package ipn_test

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ipn-project/ipn"
)

// The tests of this file attach real kernel interfaces, taps and grabbed
// veths in network namespaces they make, to IPN switch networks: ipn plug
// tap:// and grab:// run in the namespaces and pass their descriptors to
// the test's daemon.

// devSwitch binds a switch network for device ports (not connected).
func devSwitch(t *testing.T) (string, *ipn.Socket) {
	t.Helper()
	path := tempDir(t) + "/net"
	return path, bindAt(t, ipn.VDESwitch, path, nil, false)
}

// devName returns an interface name unique to this test process.
func devName(label string) string {
	return fmt.Sprintf("%s%d", label, os.Getpid()%10000000)
}

// devicePort returns the port described descr on path, or nil.
func devicePort(path, descr string) *ipn.PortInfo {
	nets, err := ipn.List(path)
	if err != nil || len(nets) != 1 {
		return nil
	}
	for _, p := range nets[0].PortsInfo {
		if p.Descr == descr {
			return &p
		}
	}
	return nil
}

// devPlug runs "ipn plug [flags] path scheme://name" in ns and waits for
// its device port.
func devPlug(t *testing.T, ns, path, scheme, name string, flags ...string) *proc {
	t.Helper()
	args := append([]string{"netns", "exec", ns, ipnCommand(t), "plug"}, flags...)
	p := start(t, nil, nil, "ip", append(args, path, scheme+"://"+name)...)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("ipn plug %s://%s in %s; stderr:\n%s", scheme, name, ns, p.stderr())
		}
	})
	waitFor(t, waitProcs, scheme+" "+name+" attached", func() bool {
		select {
		case <-p.done:
			t.Fatalf("ipn plug %s://%s exited: %v\n%s", scheme, name, p.err, p.stderr())
		default:
		}
		return devicePort(path, scheme+" "+name) != nil
	})
	return p
}

// nsCmd runs a command in ns and returns its combined output.
func nsCmd(ns string, args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...).CombinedOutput()
	return string(out), err
}

func nsPing(t *testing.T, ns, addr string) {
	t.Helper()
	if out, err := nsCmd(ns, "ping", "-c", "2", "-W", "2", addr); err != nil {
		t.Fatalf("ping %s from %s: %v\n%s", addr, ns, err, out)
	}
}

// transfer sends size bytes by TCP from nsFrom to addr (HOST:PORT) in
// nsTo, checks that the same bytes arrived and returns the receiver's
// throughput in MB/s.
func transfer(t *testing.T, nsFrom, nsTo, addr string, size int) float64 {
	t.Helper()
	env := []string{helperEnv + "=tcp"}
	recv := start(t, nil, env, "ip", "netns", "exec", nsTo, helperBin, "recv", addr)
	recv.expect("listening", waitProcs)
	send := start(t, nil, env, "ip", "netns", "exec", nsFrom, helperBin, "send", addr, strconv.Itoa(size))
	sent := strings.Fields(send.expect("sent ", 60*time.Second))
	got := strings.Fields(recv.expect("got ", 60*time.Second))
	if got[1] != strconv.Itoa(size) || got[2] != sent[1] {
		t.Fatalf("sent %d bytes sha256 %s, got %s bytes sha256 %s", size, sent[1], got[1], got[2])
	}
	secs, _ := strconv.ParseFloat(got[3], 64)
	return float64(size) / 1e6 / secs
}

// Two taps in two namespaces on an IPN switch: ping, then 4 MB over TCP,
// compared with the same transfer across a Linux bridge.
func TestTapPingAndTransfer(t *testing.T) {
	netnsNeed(t, "ping")
	ns1, ns2 := netnsAdd(t, "tap1"), netnsAdd(t, "tap2")
	path, _ := devSwitch(t)
	tap1, tap2 := devName("ta"), devName("tb")
	devPlug(t, ns1, path, "tap", tap1)
	devPlug(t, ns2, path, "tap", tap2)
	netnsRun(t, ns1, "addr add 10.77.0.1/24 dev "+tap1, "link set "+tap1+" up")
	netnsRun(t, ns2, "addr add 10.77.0.2/24 dev "+tap2, "link set "+tap2+" up")
	nsPing(t, ns1, "10.77.0.2")
	const size = 4 << 20
	ipnRate := transfer(t, ns1, ns2, "10.77.0.2:5001", size)

	nsA, nsB, nsBr := netnsAdd(t, "brA"), netnsAdd(t, "brB"), netnsAdd(t, "brX")
	netnsRun(t, nsBr, "link add br0 type bridge", "link set br0 up")
	for i, ns := range []string{nsA, nsB} {
		netnsIP(t, "-n", ns, "link", "add", "veth0", "type", "veth", "peer", "name", fmt.Sprintf("p%d", i), "netns", nsBr)
		netnsRun(t, nsBr, fmt.Sprintf("link set p%d master br0", i), fmt.Sprintf("link set p%d up", i))
		netnsRun(t, ns, fmt.Sprintf("addr add 10.79.0.%d/24 dev veth0", i+1), "link set veth0 up")
	}
	nsPing(t, nsA, "10.79.0.2")
	bridgeRate := transfer(t, nsA, nsB, "10.79.0.2:5001", size)
	t.Logf("4 MB over TCP: taps on an IPN switch %.1f MB/s, veths on a Linux bridge %.1f MB/s", ipnRate, bridgeRate)
}

var promiscRE = regexp.MustCompile(`promiscuity (\d+)`)

// promiscuity returns the promiscuity count of dev in ns, and its flags
// line, from ip -d link show.
func promiscuity(t *testing.T, ns, dev string) (int, string) {
	t.Helper()
	out, err := exec.Command("ip", "-n", ns, "-d", "link", "show", dev).CombinedOutput()
	if err != nil {
		t.Fatalf("ip -d link show %s: %v\n%s", dev, err, out)
	}
	m := promiscRE.FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("no promiscuity in:\n%s", out)
	}
	n, _ := strconv.Atoi(m[1])
	flags := strings.SplitN(string(out), "\n", 2)[0]
	if i := strings.Index(flags, "<"); i >= 0 {
		flags = flags[i : strings.Index(flags, ">")+1]
	}
	return n, flags
}

// A veth grabbed into an IPN switch carries a ping from its peer to a tap
// on the switch; when the grab ends the veth is as it was.
func TestGrab(t *testing.T) {
	netnsNeed(t, "ping")
	ns1, ns2, ns3 := netnsAdd(t, "gr1"), netnsAdd(t, "gr2"), netnsAdd(t, "gr3")
	netnsIP(t, "-n", ns1, "link", "add", "veth1", "type", "veth", "peer", "name", "veth2", "netns", ns2)
	netnsRun(t, ns1, "addr add 10.78.0.1/24 dev veth1", "link set veth1 up")
	netnsRun(t, ns2, "link set veth2 up")
	before, flagsBefore := promiscuity(t, ns2, "veth2")

	path, _ := devSwitch(t)
	g := devPlug(t, ns2, path, "grab", "veth2")
	if n, _ := promiscuity(t, ns2, "veth2"); n != before+1 {
		t.Errorf("promiscuity %d while grabbed, want %d", n, before+1)
	}
	tap := devName("tg")
	devPlug(t, ns3, path, "tap", tap)
	netnsRun(t, ns3, "addr add 10.78.0.2/24 dev "+tap, "link set "+tap+" up")
	nsPing(t, ns1, "10.78.0.2")

	if err := stopBy(t, g, syscall.SIGTERM); err != nil {
		t.Fatalf("grab plug: %v\n%s", err, g.stderr())
	}
	waitFor(t, waitProcs, "grab port gone", func() bool { return devicePort(path, "grab veth2") == nil })
	waitFor(t, waitProcs, "veth2 as before", func() bool {
		n, flags := promiscuity(t, ns2, "veth2")
		return n == before && flags == flagsBefore
	})
}

// A persistent tap outlives its plug; another process takes it over; once
// its persistence is cleared, it goes with that process, and so does the
// interface IPN made.
func TestTapPersist(t *testing.T) {
	netnsNeed(t)
	ns := netnsAdd(t, "pers")
	path, s := devSwitch(t)
	tap := devName("tp")
	t.Cleanup(func() { s.ClearPersist(tap) })
	p := devPlug(t, ns, path, "tap", tap, "--persist")
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	p.wait(waitProcs)
	time.Sleep(200 * time.Millisecond) // the daemon sees the session end
	if pi := devicePort(path, "tap "+tap); pi == nil || !pi.Persist {
		t.Fatalf("after the plug was killed, port %+v, want a persistent one", pi)
	}
	if out, err := exec.Command("ip", "-n", ns, "link", "show", tap).CombinedOutput(); err != nil {
		t.Fatalf("tap gone with its plug: %v\n%s", err, out)
	}
	ls := start(t, nil, nil, ipnCommand(t), "ls", path)
	if table := strings.Join(drain(ls), "\n"); !strings.Contains(table, "tap "+tap+" PERSIST") {
		t.Errorf("ipn ls lacks the persistent tap:\n%s", table)
	}

	j := start(t, nil, nil, ipnCommand(t), "device", path, "join", tap)
	j.expect("joined "+tap, waitProcs)
	if err := s.ClearPersist(tap); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if pi := devicePort(path, "tap "+tap); pi == nil || pi.Persist {
		t.Fatalf("after clear, with an owner: port %+v, want a non-persistent one", pi)
	}
	syscall.Kill(-j.cmd.Process.Pid, syscall.SIGTERM)
	j.wait(waitProcs)
	waitFor(t, waitProcs, "tap port gone", func() bool { return devicePort(path, "tap "+tap) == nil })
	waitFor(t, waitProcs, "tap interface gone", func() bool {
		return exec.Command("ip", "-n", ns, "link", "show", tap).Run() != nil
	})
	if _, err := s.JoinDevice(tap); err == nil {
		t.Error("JoinDevice of a removed device succeeded")
	}
}

// Without CAP_NET_ADMIN, ipn plug tap:// fails, and says what it lacks.
func TestTapNoCapNetAdmin(t *testing.T) {
	requireRoot(t)
	path, _ := devSwitch(t)
	os.Chmod(path, 0o755)
	tap := devName("tc")
	check := func(p *proc) {
		t.Helper()
		if err := p.wait(waitProcs); err == nil {
			t.Fatal("ipn plug tap:// succeeded without CAP_NET_ADMIN")
		}
		if !strings.Contains(p.stderr(), "CAP_NET_ADMIN") {
			t.Errorf("error does not name CAP_NET_ADMIN:\n%s", p.stderr())
		}
		if devicePort(path, "tap "+tap) != nil {
			t.Error("a port was made")
		}
	}
	check(start(t, &syscall.Credential{Uid: 2102, Gid: 2300}, nil, ipnCommand(t), "plug", path, "tap://"+tap))
	// Root without the capability reaches the kernel's check (TUNSETIFF).
	if _, err := exec.LookPath("setpriv"); err == nil {
		check(start(t, nil, nil, "setpriv", "--bounding-set", "-net_admin", ipnCommand(t), "plug", path, "tap://"+tap))
	} else if os.Getenv("CI") != "" {
		t.Error("setpriv is missing")
	}
}

// devSwitchMTU binds a switch network of MTU mtu for device ports.
func devSwitchMTU(t *testing.T, mtu int) string {
	t.Helper()
	path := tempDir(t) + "/net"
	bindAt(t, ipn.VDESwitch, path, func(s *ipn.Socket) {
		if err := s.SetMTU(mtu); err != nil {
			t.Fatal(err)
		}
	}, false)
	return path
}

var mtuRE = regexp.MustCompile(` mtu (\d+) `)

// linkMTU returns the MTU of dev in ns.
func linkMTU(t *testing.T, ns, dev string) int {
	t.Helper()
	out, err := exec.Command("ip", "-n", ns, "link", "show", dev).CombinedOutput()
	if err != nil {
		t.Fatalf("ip link show %s: %v\n%s", dev, err, out)
	}
	m := mtuRE.FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("no mtu in:\n%s", out)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// stopPlug ends a plug and waits until its device port is gone.
func stopPlug(t *testing.T, p *proc, path, descr string) {
	t.Helper()
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	p.wait(waitProcs)
	waitFor(t, waitProcs, descr+" gone", func() bool { return devicePort(path, descr) == nil })
}

// TestTapMTU: ipn plug tap:// gives a tap its network's MTU less the
// Ethernet header, a new tap and an existing persistent one of MTU 9000
// alike, on networks of MTU 1514 and 1000.
func TestTapMTU(t *testing.T) {
	netnsNeed(t)
	ns := netnsAdd(t, "mtu")
	old := devName("tm")
	netnsRun(t, ns, "tuntap add dev "+old+" mode tap")
	for _, c := range []struct{ netMTU, want int }{{1514, 1500}, {1000, 986}} {
		path := devSwitchMTU(t, c.netMTU)

		netnsRun(t, ns, "link set "+old+" mtu 9000")
		p := devPlug(t, ns, path, "tap", old)
		if got := linkMTU(t, ns, old); got != c.want {
			t.Errorf("network MTU %d: the persistent tap of MTU 9000 has MTU %d once plugged, want %d", c.netMTU, got, c.want)
		}
		stopPlug(t, p, path, "tap "+old)

		tap := devName("tn")
		p = devPlug(t, ns, path, "tap", tap)
		if got := linkMTU(t, ns, tap); got != c.want {
			t.Errorf("network MTU %d: a new tap has MTU %d, want %d", c.netMTU, got, c.want)
		}
		stopPlug(t, p, path, "tap "+tap)
		waitFor(t, waitProcs, "tap "+tap+" removed", func() bool {
			return exec.Command("ip", "-n", ns, "link", "show", tap).Run() != nil
		})
	}
}

// TestTapMTURefused: without CAP_NET_ADMIN, ipn plug tap:// of a tap of
// MTU 9000 cannot set its MTU, and refuses it, naming both MTUs.
func TestTapMTURefused(t *testing.T) {
	netnsNeed(t, "setpriv")
	ns := netnsAdd(t, "mtur")
	tap := devName("tr")
	netnsRun(t, ns, "tuntap add dev "+tap+" mode tap", "link set "+tap+" mtu 9000")
	path := devSwitchMTU(t, 1514)
	// Root without the capability may attach a tap with no owner, but not
	// set its MTU.
	p := start(t, nil, nil, "ip", "netns", "exec", ns, "setpriv", "--bounding-set", "-net_admin", ipnCommand(t), "plug", path, "tap://"+tap)
	if err := p.wait(waitProcs); err == nil {
		t.Fatal("ipn plug of a tap of MTU 9000 into a network of MTU 1514 succeeded without setting its MTU")
	}
	msg := p.stderr()
	for _, want := range []string{"9000", "1500", "1514", "ip link set " + tap + " mtu 1500"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
	if devicePort(path, "tap "+tap) != nil {
		t.Error("a port was made")
	}
	if got := linkMTU(t, ns, tap); got != 9000 {
		t.Errorf("tap MTU %d, want 9000 still", got)
	}
}

// TestGrabMTU: ipn plug grab:// refuses an interface of MTU 9000 for a
// network of MTU 1514, naming both MTUs and the fix, and leaves its MTU
// alone; at 1500 it is grabbed.
func TestGrabMTU(t *testing.T) {
	netnsNeed(t)
	ns := netnsAdd(t, "gmtu")
	netnsIP(t, "-n", ns, "link", "add", "veth1", "type", "veth", "peer", "name", "veth2")
	netnsRun(t, ns, "link set veth1 mtu 9000", "link set veth2 mtu 9000", "link set veth1 up", "link set veth2 up")
	path := devSwitchMTU(t, 1514)
	p := start(t, nil, nil, "ip", "netns", "exec", ns, ipnCommand(t), "plug", path, "grab://veth2")
	if err := p.wait(waitProcs); err == nil {
		t.Fatal("ipn plug grab:// of an interface of MTU 9000 into a network of MTU 1514 succeeded")
	}
	msg := p.stderr()
	for _, want := range []string{"veth2", "9000", "1514", "ip link set veth2 mtu 1500", "9014"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
	if devicePort(path, "grab veth2") != nil {
		t.Error("a port was made")
	}
	if got := linkMTU(t, ns, "veth2"); got != 9000 {
		t.Errorf("veth2 MTU %d after the refusal, want 9000", got)
	}
	netnsRun(t, ns, "link set veth2 mtu 1500")
	devPlug(t, ns, path, "grab", "veth2")
}

// TCP from a veth's peer, through the grabbed veth and an IPN switch, to a
// tap, both ways, with the veth's offloads as they come (on: its TCP
// segments reach the grab as super-frames with their checksums unfinished,
// which the grab's virtio-net header says) and off.
func TestGrabTCP(t *testing.T) {
	for _, offloads := range []string{"on", "off"} {
		t.Run("offloads "+offloads, func(t *testing.T) { testGrabTCP(t, offloads) })
	}
}

func testGrabTCP(t *testing.T, offloads string) {
	netnsNeed(t, "ping", "ethtool")
	ns1, ns2, ns3 := netnsAdd(t, "gt1"), netnsAdd(t, "gt2"), netnsAdd(t, "gt3")
	netnsIP(t, "-n", ns1, "link", "add", "veth1", "type", "veth", "peer", "name", "veth2", "netns", ns2)
	netnsRun(t, ns1, "addr add 10.78.1.1/24 dev veth1", "link set veth1 up")
	netnsRun(t, ns2, "link set veth2 up")
	if offloads == "off" {
		if out, err := nsCmd(ns1, "ethtool", "-K", "veth1", "tx", "off"); err != nil {
			t.Fatalf("ethtool -K veth1 tx off: %v\n%s", err, out)
		}
	}
	path, _ := devSwitch(t)
	devPlug(t, ns2, path, "grab", "veth2")
	tap := devName("tt")
	devPlug(t, ns3, path, "tap", tap)
	netnsRun(t, ns3, "addr add 10.78.1.2/24 dev "+tap, "link set "+tap+" up")
	nsPing(t, ns1, "10.78.1.2")
	const size = 1 << 20
	transfer(t, ns1, ns3, "10.78.1.2:5001", size)
	transfer(t, ns3, ns1, "10.78.1.1:5002", size)
}

// Taps have offloads (IFF_VNET_HDR, TSO): TCP leaves a tap in super-frames
// of up to 64 KiB. Across an ipn:// cable, whose members take ordinary
// frames, the daemon cuts them into segments with finished checksums, and
// merges them again into the far tap: a transfer both ways arrives intact,
// and the far network's tap port saw fewer, larger messages than the cable
// carried (the merge).
func TestTapOffloadsAcrossCable(t *testing.T) {
	netnsNeed(t, "ping")
	ns1, ns2, nsc := netnsAdd(t, "toc1"), netnsAdd(t, "toc2"), netnsAdd(t, "tocc")
	path1, _ := devSwitch(t)
	path2, _ := devSwitch(t)
	tap1, tap2 := devName("oa"), devName("ob")
	devPlug(t, ns1, path1, "tap", tap1)
	devPlug(t, ns2, path2, "tap", tap2)
	netnsPlug(t, nsc, path1, "ipn://"+path2)
	netnsRun(t, ns1, "addr add 10.76.0.1/24 dev "+tap1, "link set "+tap1+" up")
	netnsRun(t, ns2, "addr add 10.76.0.2/24 dev "+tap2, "link set "+tap2+" up")
	if out, err := nsCmd(ns1, "ethtool", "-k", tap1); err == nil && !strings.Contains(out, "tcp-segmentation-offload: on") {
		t.Fatalf("tap %s has no TSO:\n%s", tap1, out)
	}
	nsPing(t, ns1, "10.76.0.2")
	const size = 8 << 20
	transfer(t, ns1, ns2, "10.76.0.2:5001", size)
	transfer(t, ns2, ns1, "10.76.0.1:5002", size)
	in := devicePort(path1, "tap "+tap1)
	if in == nil {
		t.Fatal("the tap port is gone")
	}
	// In path1 the tap sent super-frames (far fewer messages than 8 MB
	// of 1514-byte frames); in ns2 the tap's kernel took in merged ones
	// (it counts a super-frame as one packet).
	if in.BytesIn < size || in.MsgsIn > size/1448/4 {
		t.Errorf("tap %s sent %d messages, %d bytes: not super-frames", tap1, in.MsgsIn, in.BytesIn)
	}
	rx, err := nsCmd(ns2, "cat", "/sys/class/net/"+tap2+"/statistics/rx_packets", "/sys/class/net/"+tap2+"/statistics/rx_bytes")
	if err != nil {
		t.Fatalf("tap %s statistics: %v\n%s", tap2, err, rx)
	}
	var packets, bytes int
	fmt.Sscan(rx, &packets, &bytes)
	if bytes < size || packets > size/1448/2 {
		t.Errorf("tap %s took in %d packets, %d bytes: not merged", tap2, packets, bytes)
	}
	t.Logf("tap %s sent %d messages for %d bytes; tap %s took in %d packets for %d", tap1, in.MsgsIn, in.BytesIn, tap2, packets, bytes)
}
