package ipn_test

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ipn-project/ipn"
)

// --raw carries any bytes, newlines included, with 2-byte length framing.
func TestCatRawFraming(t *testing.T) {
	ipnc := ipnCommand(t)
	path := filepath.Join(tempDir(t), "raw")
	recv := start(t, nil, nil, ipnc, "cat", "--bind", "--recv-only", "--raw", "--count", "2", path)
	waitFor(t, 15*time.Second, "receiver", func() bool { r, _ := readersOf(path); return r == 1 })
	msgs := [][]byte{[]byte("two\nlines"), {0, 1, 2, 0xff, '\n'}}
	var in bytes.Buffer
	for _, m := range msgs {
		binary.Write(&in, binary.BigEndian, uint16(len(m)))
		in.Write(m)
	}
	send := start(t, nil, nil, ipnc, "cat", "--send-only", "--raw", path)
	send.stdin.Write(in.Bytes())
	send.stdin.Close()
	if err := send.wait(15 * time.Second); err != nil {
		t.Fatalf("sender: %v: %s", err, send.stderr())
	}
	if err := recv.wait(15 * time.Second); err != nil {
		t.Fatalf("receiver: %v: %s", err, recv.stderr())
	}
	// The receiver's stdout, framed the same way, was split into "lines"
	// by the harness; join them back.
	out := []byte(strings.Join(drain(recv), "\n") + "\n")
	if !bytes.Equal(out, in.Bytes()) {
		t.Fatalf("receiver wrote %q, want %q", out, in.Bytes())
	}
}

// A line over the MTU is reported and skipped; the others go through, and
// the exit status says something was not sent.
func TestCatOverMTU(t *testing.T) {
	ipnc := ipnCommand(t)
	path, member := bindNet(t, func(s *ipn.Socket) { s.SetMTU(10) })
	send := start(t, nil, nil, ipnc, "cat", "--send-only", path)
	send.stdin.Write([]byte("short\n" + strings.Repeat("x", 11) + "\nok\n"))
	send.stdin.Close()
	err := send.wait(15 * time.Second)
	if err == nil || !strings.Contains(send.stderr(), "over the network's MTU") {
		t.Fatalf("exit %v, stderr %q", err, send.stderr())
	}
	for _, want := range []string{"short", "ok"} {
		if got := recvString(t, member); got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	}
}

func TestCatWithoutNetworkSaysHow(t *testing.T) {
	p := start(t, nil, nil, ipnCommand(t), "cat", filepath.Join(tempDir(t), "none"))
	if err := p.wait(15 * time.Second); err == nil || !strings.Contains(p.stderr(), "create it with --bind") {
		t.Fatalf("exit %v, stderr %q", err, p.stderr())
	}
}

func TestLsShowsPortsAndCounters(t *testing.T) {
	path, a := bindNet(t, nil)
	b := member(t, path, func(s *ipn.Socket) { s.SetDescription("the receiver"); s.Shutdown(ipn.ShutWrite) })
	a.Send([]byte("12345"))
	recvString(t, b)
	p := start(t, nil, nil, ipnCommand(t), "ls", "--json", path)
	out := strings.Join(drain(p), "\n")
	if err := p.wait(15 * time.Second); err != nil {
		t.Fatalf("ipn ls: %v: %s", err, p.stderr())
	}
	nets, err := decodeLs(out)
	if err != nil || len(nets) != 1 {
		t.Fatalf("ipn ls --json: %v\n%s", err, out)
	}
	n := nets[0]
	if n.Proto != "hub" || n.Readers != 2 || n.Writers != 1 || n.NumPorts != 64 || int(n.UID) != os.Geteuid() {
		t.Fatalf("network: %+v", n)
	}
	r := portByNum(n, b.Port())
	if r.Descr != "the receiver" || !r.Read || r.Write || r.MsgsOut != 1 || r.BytesOut != 5 {
		t.Fatalf("receiver port: %+v", r)
	}
	if s := portByNum(n, a.Port()); s.MsgsIn != 1 || s.BytesIn != 5 {
		t.Fatalf("sender port: %+v", s)
	}
	p = start(t, nil, nil, ipnCommand(t), "ls", path)
	table := strings.Join(drain(p), "\n")
	for _, want := range []string{path, "hub", "2/64", "the receiver", "srwxr--r--"} {
		if !strings.Contains(table, want) {
			t.Errorf("ipn ls lacks %q:\n%s", want, table)
		}
	}
}

// A daemon run by a user serves that user; other users cannot reach it.
func TestUserDaemon(t *testing.T) {
	requireRoot(t)
	home, env, d := userDaemon(t, asOwner)
	dir := filepath.Dir(home)
	net := filepath.Join(home, "net")
	h := start(t, asOwner, append(env, helperEnv+"=perm"), helperBin, "bind", net)
	if got := h.line(waitProcs); got != "bind ok" {
		t.Fatalf("the user's own bind: %q (%s)", got, h.stderr())
	}
	o := start(t, asOther, append(env, helperEnv+"=perm"), helperBin, "bind", filepath.Join(dir, "other"))
	if err := o.wait(waitProcs); err == nil || !strings.Contains(o.stderr(), "permission denied") {
		t.Fatalf("another user reached a user's daemon: %v %q", err, o.stderr())
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	if err := d.wait(15 * time.Second); err != nil {
		t.Fatalf("user daemon on SIGTERM: %v: %s", err, d.stderr())
	}
}
