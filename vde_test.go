package ipn_test

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ipn-project/ipn"
	"github.com/ipn-project/ipn/internal/vdetest"
	"github.com/ipn-project/ipn/policy/vdeswitch"
)

// These tests join IPN networks to real VDE 2 programs: vde_switch
// (Debian vde2) and vde_plug, dpipe (Debian vdeplug).

// vdeFramed is a process whose stdin and stdout carry frames in the VDE
// stream encapsulation (2-byte big-endian length, then the frame), in its
// own process group, killed whole at the end.
type vdeFramed struct {
	t      *testing.T
	name   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	frames chan []byte
	p      *proc // for its stderr buffer
	done   chan struct{}
}

func startVDEFramed(t *testing.T, name string, args ...string) *vdeFramed {
	t.Helper()
	f := &vdeFramed{t: t, name: name, frames: make(chan []byte, 1024), done: make(chan struct{}),
		p: &proc{errb: &strings.Builder{}}}
	f.cmd = exec.Command(name, args...)
	f.cmd.Stderr = lockedWriter{&f.p.mu, f.p.errb}
	f.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	f.cmd.WaitDelay = 5 * time.Second
	var err error
	if f.stdin, err = f.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := f.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := f.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		r := bufio.NewReader(out)
		for {
			var hdr [2]byte
			if _, err := io.ReadFull(r, hdr[:]); err != nil {
				break
			}
			b := make([]byte, binary.BigEndian.Uint16(hdr[:]))
			if _, err := io.ReadFull(r, b); err != nil {
				break
			}
			if vdeswitch.IsProbe(b) {
				continue // the network's loop probes cross its cables
			}
			f.frames <- b
		}
		close(f.frames)
		f.cmd.Wait()
		close(f.done)
	}()
	t.Cleanup(func() {
		syscall.Kill(-f.cmd.Process.Pid, syscall.SIGKILL)
		<-f.done
		if t.Failed() {
			t.Logf("%s stderr:\n%s", name, f.p.stderr())
		}
	})
	return f
}

func (f *vdeFramed) send(frame []byte) {
	f.t.Helper()
	b := binary.BigEndian.AppendUint16(nil, uint16(len(frame)))
	if _, err := f.stdin.Write(append(b, frame...)); err != nil {
		f.t.Fatalf("%s: %v", f.name, err)
	}
}

// expect checks f's next frame byte for byte.
func (f *vdeFramed) expect(want []byte) {
	f.t.Helper()
	select {
	case got, ok := <-f.frames:
		if !ok {
			<-f.done
			f.t.Fatalf("%s ended (%v); stderr:\n%s", f.name, f.cmd.ProcessState, f.p.stderr())
		}
		if !bytes.Equal(got, want) {
			f.t.Fatalf("%s got\n%x, want\n%x", f.name, got, want)
		}
	case <-time.After(waitProcs):
		f.t.Fatalf("%s: no frame in %v; stderr:\n%s", f.name, waitProcs, f.p.stderr())
	}
}

// expectFrame checks s's next message byte for byte.
func expectFrame(t *testing.T, s *ipn.Socket, want []byte) {
	t.Helper()
	if got := recvString(t, s); got != string(want) {
		t.Fatalf("network member got\n%x, want\n%x", got, want)
	}
}

// crossBothWays sends frames between an IPN network member and a vde_plug
// on the switch: broadcasts first, then unicasts to the learnt MACs.
func crossBothWays(t *testing.T, m *ipn.Socket, vp *vdeFramed, tag string) {
	t.Helper()
	f := ethFrame(bcast, macOf(1), "from ipn "+tag)
	m.Send(f)
	vp.expect(f)
	f = ethFrame(bcast, macOf(2), "from vde_plug "+tag)
	vp.send(f)
	expectFrame(t, m, f)
	for i := range 3 {
		f = ethFrame(macOf(2), macOf(1), fmt.Sprintf("unicast to vde_plug %s %d %s", tag, i, strings.Repeat("x", 1000)))
		m.Send(f)
		vp.expect(f)
		f = ethFrame(macOf(1), macOf(2), fmt.Sprintf("unicast to ipn %s %d", tag, i))
		vp.send(f)
		expectFrame(t, m, f)
	}
}

// ipn plug PATH vde:///DIR joins an IPN network to a vde_switch, where
// Debian's vde_plug is another port.
func TestVDEPlugIntoVDESwitch(t *testing.T) {
	vdetest.Need(t, "vde_switch", "vde_plug")
	dir := filepath.Join(tempDir(t), "sw")
	sw := vdetest.Start(t, dir)
	path, m := bindNet(t, nil)
	plug := start(t, nil, nil, ipnCommand(t), "plug", path, "vde://"+dir)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("ipn plug stderr:\n%s", plug.stderr())
		}
	})
	waitFor(t, waitProcs, "ipn plug in the network", func() bool { r, _ := readersOf(path); return r == 2 })
	sw.WaitEndpoints(t, 1)
	if l := sw.Endpoints(t); !strings.Contains(l[0], "user=") {
		t.Errorf("switch shows the plug as %q", l[0])
	}
	vp := startVDEFramed(t, "vde_plug", "vde://"+dir)
	sw.WaitEndpoints(t, 2)
	crossBothWays(t, m, vp, "plug")

	// The port number in brackets: port 7.
	if err := stopBy(t, plug, syscall.SIGTERM); err != nil {
		t.Fatalf("ipn plug on SIGTERM: %v; stderr:\n%s", err, plug.stderr())
	}
	sw.WaitEndpoints(t, 1)
	plug7 := start(t, nil, nil, ipnCommand(t), "plug", path, fmt.Sprintf("vde://%s[7]", dir))
	sw.WaitEndpoints(t, 2)
	found := false
	for _, l := range sw.Console(t, "port/allprint") {
		found = found || strings.HasPrefix(l, "Port 0007 ")
	}
	if !found {
		t.Errorf("no port 7 in port/allprint; plug stderr: %s", plug7.stderr())
	}
	crossBothWays(t, m, vp, "port 7")
}

// dpipe joins ipn's stream cable to Debian's vde_plug with a real pipe:
// dpipe ipn plug PATH - = vde_plug vde:///DIR.
func TestVDEStreamCableThroughDpipe(t *testing.T) {
	vdetest.Need(t, "vde_switch", "vde_plug", "dpipe")
	dir := filepath.Join(tempDir(t), "sw")
	sw := vdetest.Start(t, dir)
	path, m := bindNet(t, nil)
	startVDEFramed(t, "dpipe", ipnCommand(t), "plug", path, "-", "=", "vde_plug", "vde://"+dir)
	waitFor(t, waitProcs, "ipn plug in the network", func() bool { r, _ := readersOf(path); return r == 2 })
	sw.WaitEndpoints(t, 1)
	vp := startVDEFramed(t, "vde_plug", "vde://"+dir)
	sw.WaitEndpoints(t, 2)
	crossBothWays(t, m, vp, "dpipe")
}

// The vde_switch dies: ipn plug ends with an error, or with --reconnect
// waits for a new switch at the same place and carries frames again.
func TestVDESwitchGoesAway(t *testing.T) {
	vdetest.Need(t, "vde_switch", "vde_plug")
	t.Run("plug ends", func(t *testing.T) {
		dir := filepath.Join(tempDir(t), "sw")
		sw := vdetest.Start(t, dir)
		path, m := bindNet(t, nil)
		plug := start(t, nil, nil, ipnCommand(t), "plug", path, "vde://"+dir)
		waitFor(t, waitProcs, "ipn plug in the network", func() bool { r, _ := readersOf(path); return r == 2 })
		sw.WaitEndpoints(t, 1)
		// Frames cross: the cable is up at both ends before the switch dies.
		vp := startVDEFramed(t, "vde_plug", "vde://"+dir)
		sw.WaitEndpoints(t, 2)
		crossBothWays(t, m, vp, "before the switch dies")
		sw.Kill()
		err := plug.wait(waitProcs)
		if err == nil || exitCode(err) == 0 {
			t.Fatalf("ipn plug after the switch died: %v, want a non-zero exit; stderr:\n%s", err, plug.stderr())
		}
		msg := plug.stderr()
		for _, want := range []string{"far end", dir, "vde switch closed the port"} {
			if !strings.Contains(msg, want) {
				t.Errorf("ipn plug's stderr lacks %q:\n%s", want, msg)
			}
		}
		waitFor(t, waitProcs, "plug's port freed", func() bool { r, _ := readersOf(path); return r == 1 })
	})
	t.Run("plug reconnects", func(t *testing.T) {
		dir := filepath.Join(tempDir(t), "sw")
		sw := vdetest.Start(t, dir)
		path, m := bindNet(t, nil)
		plug := start(t, nil, nil, ipnCommand(t), "plug", "--reconnect", path, "vde://"+dir)
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("ipn plug stderr:\n%s", plug.stderr())
			}
		})
		waitFor(t, waitProcs, "ipn plug in the network", func() bool { r, _ := readersOf(path); return r == 2 })
		sw.WaitEndpoints(t, 1)
		vp := startVDEFramed(t, "vde_plug", "vde://"+dir)
		sw.WaitEndpoints(t, 2)
		crossBothWays(t, m, vp, "before")

		sw.Kill()
		waitFor(t, waitProcs, "ipn plug retrying", func() bool {
			return strings.Contains(plug.stderr(), "vde switch closed the port") && strings.Contains(plug.stderr(), "again in")
		})
		waitFor(t, waitProcs, "a failed retry", func() bool { return strings.Contains(plug.stderr(), "no vde switch") })
		select {
		case <-plug.done:
			t.Fatalf("ipn plug --reconnect exited: %v; stderr:\n%s", plug.err, plug.stderr())
		default:
		}
		if r, _ := readersOf(path); r != 2 {
			t.Fatalf("ipn plug left the network while reconnecting: %d readers", r)
		}

		sw2 := vdetest.Start(t, dir)
		sw2.WaitEndpoints(t, 1) // the plug is back
		vp2 := startVDEFramed(t, "vde_plug", "vde://"+dir)
		sw2.WaitEndpoints(t, 2)
		crossBothWays(t, m, vp2, "after")
	})
}
