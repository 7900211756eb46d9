package ipn_test

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ipn-project/ipn"
)

// switchNet makes a switch network, managed by the test, with loop probes
// off unless loop is set.
func switchNet(t *testing.T, loop string) string {
	t.Helper()
	path := filepath.Join(tempDir(t), "sw")
	bindAt(t, ipn.VDESwitch, path, nil, false)
	if err := ipn.SetPolicyOption(path, "loop.interval", loop); err != nil {
		t.Fatal(err)
	}
	return path
}

// ether is a member process of a network that sends and prints frames.
type ether struct {
	*proc
	name string
	port int
	mac  []byte
}

func joinEther(t *testing.T, path, name string, mac byte) *ether {
	t.Helper()
	p := helper(t, nil, "frames", path)
	e := &ether{proc: p, name: name, mac: macOf(mac)}
	fmt.Sscanf(p.expect("ready", waitProcs), "ready port=%d", &e.port)
	return e
}

func (e *ether) sendRaw(f []byte) { fmt.Fprintf(e.stdin, "%x\n", f) }

func (e *ether) send(dst []byte, payload string) { e.sendRaw(ethFrame(dst, e.mac, payload)) }

// next returns the next frame e received; any frame counts, so a test
// that expects a marker proves nothing else came before it.
func (e *ether) next() []byte {
	e.t.Helper()
	l := e.expect("frame ", waitProcs)
	b, err := hex.DecodeString(strings.TrimPrefix(l, "frame "))
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

// expect checks that e's next frame ends with payload.
func (e *ether) expectPayload(payload string) {
	e.t.Helper()
	if f := e.next(); !bytes.HasSuffix(f, []byte(payload)) {
		e.t.Fatalf("%s got %x (%q), want a frame with %q", e.name, f, f[min(len(f), 14):], payload)
	}
}

// expectBytes checks e's next frame byte for byte.
func (e *ether) expectBytes(want []byte) {
	e.t.Helper()
	if f := e.next(); !bytes.Equal(f, want) {
		e.t.Fatalf("%s got\n%x, want\n%x", e.name, f, want)
	}
}

func TestSwitchForwarding(t *testing.T) {
	path := switchNet(t, "0")
	a, b, c := joinEther(t, path, "a", 1), joinEther(t, path, "b", 2), joinEther(t, path, "c", 3)

	a.send(bcast, "hello from a")
	b.expectPayload("hello from a")
	c.expectPayload("hello from a")

	// Unicast to a learnt MAC reaches only its port.
	b.send(a.mac, "b to a")
	a.expectPayload("b to a")
	a.send(bcast, "marker 1")
	b.expectPayload("marker 1")
	c.expectPayload("marker 1") // not "b to a"

	// Unknown unicast is flooded.
	a.send(macOf(9), "to nobody known")
	b.expectPayload("to nobody known")
	c.expectPayload("to nobody known")

	// a's MAC moves behind c's port: relearnt at once.
	c.sendRaw(ethFrame(bcast, a.mac, "a moved"))
	a.expectPayload("a moved")
	b.expectPayload("a moved")
	b.send(a.mac, "to a, now at c")
	c.expectPayload("to a, now at c")
	b.send(bcast, "marker 2")
	a.expectPayload("marker 2") // not "to a, now at c"
	c.expectPayload("marker 2")

	// The table shows it, with VLAN and age.
	table := start(t, nil, nil, ipnCommand(t), "mac", path)
	out := strings.Join(drain(table), "\n")
	if !strings.Contains(out, "02:00:00:00:00:01  1     "+fmt.Sprint(c.port)) {
		t.Errorf("ipn mac:\n%s", out)
	}

	// Entries expire.
	if err := ipn.SetPolicyOption(path, "expire", "200ms"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "MAC table empty", func() bool {
		v, _ := ipn.PolicyOption(path, "macs")
		return v == "[]"
	})
	b.send(a.mac, "after expiry")
	a.expectPayload("after expiry")
	c.expectPayload("after expiry")

	// A port's MACs are flushed when it leaves.
	ipn.SetPolicyOption(path, "expire", "120s")
	a.send(bcast, "a is here")
	b.expectPayload("a is here")
	c.expectPayload("a is here")
	a.cmd.Process.Kill()
	waitFor(t, 15*time.Second, "a's port gone", func() bool { _, p := readersOf(path); return p == 2 })
	b.send(a.mac, "to departed a")
	c.expectPayload("to departed a")

	// Short frames are errors of their sender.
	b.sendRaw([]byte{1, 2, 3})
	waitFor(t, 15*time.Second, "error counted", func() bool {
		nets, _ := ipn.List(path)
		return len(nets) == 1 && portByNum(nets[0], b.port).Errors == 1
	})
}

func TestSwitchVLANs(t *testing.T) {
	path := switchNet(t, "0")
	ipnc := ipnCommand(t)
	a, b, c, tr := joinEther(t, path, "a", 1), joinEther(t, path, "b", 2), joinEther(t, path, "c", 3), joinEther(t, path, "trunk", 4)
	for _, args := range [][]string{
		{"vlan", path, "add", "10", "20"},
		{"port", path, fmt.Sprint(a.port), "--vlan", "10"},
		{"port", path, fmt.Sprint(b.port), "--vlan", "20"},
		{"port", path, fmt.Sprint(c.port), "--vlan", "10"},
		{"port", path, fmt.Sprint(tr.port), "--vlan", "0", "--trunk", "10,20"},
	} {
		p := start(t, nil, nil, ipnc, args...)
		if err := p.wait(waitProcs); err != nil {
			t.Fatalf("ipn %v: %v: %s", args, err, p.stderr())
		}
	}
	// Access port of VLAN 10: the other access port gets the frame as sent,
	// the trunk gets it with a tag for VLAN 10; VLAN 20 gets nothing.
	a.send(bcast, "a on 10")
	c.expectBytes(ethFrame(bcast, a.mac, "a on 10"))
	tr.expectBytes(ethTagged(bcast, a.mac, 10, "a on 10"))
	// From the trunk on VLAN 20: the access port of 20 gets it untagged.
	tr.sendRaw(ethTagged(bcast, tr.mac, 20, "trunk on 20"))
	b.expectBytes(ethFrame(bcast, tr.mac, "trunk on 20")) // b's first frame: nothing of VLAN 10 leaked
	// A VLAN the trunk does not carry: dropped.
	tr.sendRaw(ethTagged(bcast, tr.mac, 30, "trunk on 30"))
	// Markers: the next frames prove nothing else crossed.
	c.send(bcast, "c marker")
	a.expectBytes(ethFrame(bcast, c.mac, "c marker"))
	tr.expectBytes(ethTagged(bcast, c.mac, 10, "c marker"))
	b.send(bcast, "b marker")
	tr.expectBytes(ethTagged(bcast, b.mac, 20, "b marker"))
	tr.sendRaw(ethTagged(bcast, tr.mac, 10, "trunk on 10"))
	a.expectBytes(ethFrame(bcast, tr.mac, "trunk on 10"))
	c.expectBytes(ethFrame(bcast, tr.mac, "trunk on 10"))

	// ipn ls and ipn vlan show the assignment.
	nets, _ := ipn.List(path)
	if d := portByNum(nets[0], tr.port).Policy; !strings.HasPrefix(d, "vlan - trunk 10 20") {
		t.Errorf("ls policy of the trunk: %q", d)
	}
	if d := portByNum(nets[0], a.port).Policy; !strings.Contains(d, "vlan 10 macs 02:00:00:00:00:01") {
		t.Errorf("ls policy of a: %q", d)
	}
	p := start(t, nil, nil, ipnc, "vlan", path)
	out := strings.Join(drain(p), "\n")
	if !strings.Contains(out, fmt.Sprintf("20    %d", b.port)) {
		t.Errorf("ipn vlan:\n%s", out)
	}
}

func TestSwitchManagementNeedsX(t *testing.T) {
	requireRoot(t)
	path := switchNet(t, "0")
	ipnc := ipnCommand(t)
	os.Chmod(path, 0o774) // others: r only
	p := start(t, asOther, nil, ipnc, "vlan", path, "add", "10")
	if err := p.wait(waitProcs); err == nil || !strings.Contains(p.stderr(), "permission denied") {
		t.Fatalf("vlan add without x: %v %q", err, p.stderr())
	}
	p = start(t, asOther, nil, ipnc, "mac", path)
	if err := p.wait(waitProcs); err != nil {
		t.Fatalf("reading the MAC table with r: %v %q", err, p.stderr())
	}
	os.Chmod(path, 0o770) // others: nothing
	p = start(t, asOther, nil, ipnc, "mac", path)
	if err := p.wait(waitProcs); err == nil {
		t.Fatal("read the MAC table with no rights")
	}
	os.Chmod(path, 0o771) // others: x
	p = start(t, asOther, nil, ipnc, "vlan", path, "add", "10")
	if err := p.wait(waitProcs); err != nil {
		t.Fatalf("vlan add with x: %v %q", err, p.stderr())
	}
	if v, _ := ipn.PolicyOption(path, "vlans"); v != "[1,10]" {
		t.Fatalf("vlans after add: %s", v)
	}
}

// cable joins two networks like a virtual cable: each frame one side
// receives is sent on the other. It stops when the test ends. Its ends
// are links, where loop protection probes.
func cable(t *testing.T, a, b string) {
	t.Helper()
	link := func(s *ipn.Socket) { s.SetLink(true) }
	sa, sb := member(t, a, link), member(t, b, link)
	var wg sync.WaitGroup
	pump := func(from, to *ipn.Socket) {
		defer wg.Done()
		buf := make([]byte, 65536)
		for {
			n, _, err := from.Recv(buf)
			if err != nil {
				return
			}
			to.Send(buf[:n])
		}
	}
	wg.Add(2)
	go pump(sa, sb)
	go pump(sb, sa)
	t.Cleanup(func() {
		sa.Close()
		sb.Close()
		wg.Wait()
	})
}

// Two switches joined by two cables make a loop. Loop protection blocks one
// port and a broadcast crosses once; without it, it circulates.
func TestSwitchLoopIsBlocked(t *testing.T) {
	t.Run("protected", func(t *testing.T) {
		swA, swB := switchNet(t, "50ms"), switchNet(t, "50ms")
		sender, receiver := member(t, swA, nil), member(t, swB, nil)
		cable(t, swA, swB)
		cable(t, swA, swB)
		waitFor(t, 15*time.Second, "a blocked port", func() bool {
			a, _ := ipn.PolicyOption(swA, "ports")
			b, _ := ipn.PolicyOption(swB, "ports")
			return strings.Contains(a+b, `"blocked":true`)
		})
		sender.Send(ethFrame(bcast, macOf(1), "once"))
		if n := copies(receiver, "once", 500*time.Millisecond); n != 1 {
			t.Fatalf("broadcast arrived %d times across the loop, want once", n)
		}
		// Both cables still carry the traffic of one: the LAN is whole.
		receiver.Send(ethFrame(bcast, macOf(2), "back"))
		if n := copies(sender, "back", 500*time.Millisecond); n != 1 {
			t.Fatalf("reply arrived %d times, want once", n)
		}
	})
	t.Run("unprotected", func(t *testing.T) {
		swA, swB := switchNet(t, "0"), switchNet(t, "0")
		sender, receiver := member(t, swA, nil), member(t, swB, nil)
		cable(t, swA, swB)
		cable(t, swA, swB)
		sender.Send(ethFrame(bcast, macOf(1), "storm"))
		if n := copies(receiver, "storm", 500*time.Millisecond); n < 10 {
			t.Fatalf("without loop protection the broadcast arrived %d times; the test cannot tell", n)
		}
	})
}

// A send-only member of a switch network with loop protection on keeps its
// port: the switch's probes are not written to a node that does not read.
func TestSwitchProbesSkipSendOnlyPorts(t *testing.T) {
	for _, fast := range []bool{true, false} {
		path := switchNet(t, "20ms")
		sender := member(t, path, func(s *ipn.Socket) {
			s.SetFastPath(fast)
			s.Shutdown(ipn.ShutRead)
		})
		rcv := member(t, path, nil)
		frame := ethFrame(bcast, macOf(1), "hello")
		for i := 0; i < 10; i++ {
			// Three probe intervals between sends: time for the probes.
			time.Sleep(60 * time.Millisecond)
			if err := sender.Send(frame); err != nil {
				t.Fatalf("fast path %v: send %d after probes: %v", fast, i, err)
			}
		}
		rcv.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 2048)
		for got := 0; got < 10; {
			n, _, err := rcv.Recv(buf)
			if err != nil {
				t.Fatalf("fast path %v: received %d of 10: %v", fast, got, err)
			}
			if bytes.Equal(buf[:n], frame) {
				got++
			}
		}
	}
}
