package ipn_test

import (
	"encoding/binary"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ipn-project/ipn"
	"github.com/ipn-project/ipn/policy/vdeswitch"
)

// loopNet makes a network of proto at dir/name, managed by the test, with
// the probe interval loop.
func loopNet(t *testing.T, proto ipn.Protocol, name, loop string) string {
	t.Helper()
	path := filepath.Join(tempDir(t), name)
	bindAt(t, proto, path, nil, false)
	if err := ipn.SetPolicyOption(path, "loop.interval", loop); err != nil {
		t.Fatalf("loop.interval %s on %s: %v", loop, proto, err)
	}
	return path
}

// blocked reports whether loop protection blocked a port of one of paths.
func blocked(paths ...string) bool {
	for _, p := range paths {
		if v, err := ipn.PolicyOption(p, "loop.blocked"); err == nil && v != "[]" {
			return true
		}
	}
	return false
}

// ipn plug from a network to itself, by its path, a symlink or a hard
// link, is refused at once, naming both ends and the loop, and with
// --reconnect too.
func TestPlugRefusesSelfLoop(t *testing.T) {
	ipnc := ipnCommand(t)
	path, s := bindNet(t, nil)
	other := member(t, path, nil)
	dir := tempDir(t)
	sym, hard := filepath.Join(dir, "symlink"), filepath.Join(dir, "hardlink")
	if err := os.Symlink(path, sym); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(path, hard); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"plug", path, "ipn://" + path},
		{"plug", path, "ipn://" + sym},
		{"plug", path, "ipn://" + hard},
		{"plug", sym, "ipn://" + hard},
		{"plug", "--reconnect", path, "ipn://" + sym},
	} {
		p := start(t, nil, nil, ipnc, args...)
		err := p.wait(10 * time.Second)
		msg := p.stderr()
		if err == nil {
			t.Fatalf("ipn %s: exit 0; stderr %q", strings.Join(args, " "), msg)
		}
		far := strings.TrimPrefix(args[len(args)-1], "ipn://")
		near := args[len(args)-2]
		if !strings.Contains(msg, "same network") || !strings.Contains(msg, near) || !strings.Contains(msg, far) ||
			!strings.Contains(msg, syscall.ELOOP.Error()) {
			t.Errorf("ipn %s: stderr %q, want the loop (ELOOP) naming %s and %s", strings.Join(args, " "), msg, near, far)
		}
	}
	// No storm: a message still arrives once.
	s.Send([]byte("once, and no more"))
	if n := copies(other, "once, and no more", 200*time.Millisecond); n != 1 {
		t.Fatalf("a message arrived %d times", n)
	}
}

// Two cables (ipn plug) between two networks make a loop. Loop protection
// blocks one of the cables, and a broadcast crosses once each way; for
// hubs as for switches.
func TestCableLoopIsBlocked(t *testing.T) {
	ipnc := ipnCommand(t)
	for _, proto := range []ipn.Protocol{ipn.Hub, ipn.VDESwitch} {
		t.Run(proto.String(), func(t *testing.T) {
			a, b := loopNet(t, proto, "a", "10ms"), loopNet(t, proto, "b", "10ms")
			sender, receiver := member(t, a, nil), member(t, b, nil)
			start(t, nil, nil, ipnc, "plug", a, "ipn://"+b)
			start(t, nil, nil, ipnc, "plug", a, "ipn://"+b)
			waitFor(t, 15*time.Second, "both cables and a blocked port", func() bool {
				ra, _ := readersOf(a)
				rb, _ := readersOf(b)
				return ra == 3 && rb == 3 && blocked(a, b)
			})
			sender.Send(ethFrame(bcast, macOf(1), "one line through a loop"))
			if n := copies(receiver, "one line through a loop", 300*time.Millisecond); n != 1 {
				t.Fatalf("the line arrived %d times across the loop, want once", n)
			}
			if n := copies(sender, "one line through a loop", 50*time.Millisecond); n != 0 {
				t.Fatalf("the line came back to its sender %d times", n)
			}
			// The other cable still carries the traffic: the networks are
			// joined.
			receiver.Send(ethFrame(bcast, macOf(2), "and one back"))
			if n := copies(sender, "and one back", 300*time.Millisecond); n != 1 {
				t.Fatalf("the reply arrived %d times, want once", n)
			}
		})
	}
	// Without loop protection, the line circulates: the test can tell.
	t.Run("hub unprotected", func(t *testing.T) {
		a, b := loopNet(t, ipn.Hub, "a", "0"), loopNet(t, ipn.Hub, "b", "0")
		sender, receiver := member(t, a, nil), member(t, b, nil)
		start(t, nil, nil, ipnc, "plug", a, "ipn://"+b)
		start(t, nil, nil, ipnc, "plug", a, "ipn://"+b)
		waitFor(t, 15*time.Second, "both cables", func() bool {
			ra, _ := readersOf(a)
			rb, _ := readersOf(b)
			return ra == 3 && rb == 3
		})
		sender.Send([]byte("a storm of one line"))
		if n := copies(receiver, "a storm of one line", 300*time.Millisecond); n < 10 {
			t.Fatalf("without loop protection the line arrived %d times; the test cannot tell", n)
		}
	})
}

// plugStdio runs ipn plug path - and returns the frames its stdout
// carries (2-byte big-endian length, frame), until the test ends.
func plugStdio(t *testing.T, path string) <-chan []byte {
	t.Helper()
	cmd := exec.Command(ipnCommand(t), "plug", path, "-")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	in, err := cmd.StdinPipe() // held open: the cable stays
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	frames := make(chan []byte, 1024)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(frames)
		var n [2]byte
		for {
			if _, err := io.ReadFull(out, n[:]); err != nil {
				return
			}
			f := make([]byte, binary.BigEndian.Uint16(n[:]))
			if _, err := io.ReadFull(out, f); err != nil {
				return
			}
			select {
			case frames <- f:
			default: // the test stopped reading
			}
		}
	}()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		in.Close()
		<-done
		cmd.Wait()
	})
	return frames
}

// On a switch with loop protection, the probes go out of a cable (ipn
// plug) as well-formed Ethernet frames, at least 60 bytes long, and never
// reach its other members: a plain ipn cat and a library member get none
// over many probe intervals.
func TestProbesOnlyReachLinks(t *testing.T) {
	ipnc := ipnCommand(t)
	sw := loopNet(t, ipn.VDESwitch, "sw", "10ms")
	cat := start(t, nil, nil, ipnc, "cat", "--recv-only", sw)
	plain := member(t, sw, nil)
	waitFor(t, 15*time.Second, "ipn cat connected", func() bool { r, _ := readersOf(sw); return r == 2 })
	frames := plugStdio(t, sw)
	deadline := time.After(15 * time.Second)
	for probes := 0; probes < 10; {
		select {
		case f, ok := <-frames:
			if !ok {
				t.Fatal("ipn plug - ended")
			}
			if !vdeswitch.IsProbe(f) {
				continue
			}
			if len(f) < 60 {
				t.Fatalf("a probe of %d bytes on the cable, shorter than an Ethernet frame: %x", len(f), f)
			}
			probes++
		case <-deadline:
			t.Fatal("no probes on the cable in 15s")
		}
	}
	// Ten probes, ten intervals: then a marker, which must be the first
	// thing the members got.
	marker := ethFrame(bcast, macOf(9), "marker after the probes")
	member(t, sw, nil).Send(marker)
	if l := cat.line(waitProcs); !strings.HasSuffix(l, "marker after the probes") {
		t.Fatalf("ipn cat printed %q before the marker", l)
	}
	if got := recvString(t, plain); got != string(marker) {
		t.Fatalf("a member that is not a link got %x before the marker", got)
	}
}

// Two taps of one network bridged by the host's kernel close a loop
// through it: taps are links, so the probes find the loop and one tap is
// blocked; a broadcast then reaches a member once. For hubs as for
// switches.
func TestTapLoopThroughBridgeIsBlocked(t *testing.T) {
	requireRoot(t)
	netnsNeed(t, "ip")
	for _, proto := range []ipn.Protocol{ipn.Hub, ipn.VDESwitch} {
		t.Run(proto.String(), func(t *testing.T) {
			path := loopNet(t, proto, "net", "10ms")
			sender, receiver := member(t, path, nil), member(t, path, nil)
			ns := netnsAdd(t, "br")
			t1, t2 := devName("lpa"), devName("lpb")
			devPlug(t, ns, path, "tap", t1)
			devPlug(t, ns, path, "tap", t2)
			netnsRun(t, ns, "link add br0 type bridge", "link set "+t1+" master br0",
				"link set "+t2+" master br0", "link set br0 up")
			waitFor(t, 15*time.Second, "a blocked tap", func() bool { return blocked(path) })
			sender.Send(ethFrame(bcast, macOf(1), "one line through the host"))
			if n := copies(receiver, "one line through the host", 300*time.Millisecond); n != 1 {
				t.Fatalf("the line arrived %d times through the bridged taps, want once", n)
			}
		})
	}
}
