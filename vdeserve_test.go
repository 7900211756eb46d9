package ipn_test

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"os"
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

// vdeSrvPlug is a Debian vde_plug process joined to a VDE switch; frames
// travel on its stdin and stdout in the stream encapsulation.
type vdeSrvPlug struct {
	t      *testing.T
	cmd    *exec.Cmd
	in     io.WriteCloser
	frames chan []byte
	stderr bytes.Buffer
	done   chan struct{}
}

func vdeSrvNeed(t *testing.T) string {
	t.Helper()
	vdetest.Need(t, "vde_plug")
	p, _ := exec.LookPath("vde_plug")
	return p
}

func vdeSrvStart(t *testing.T, cred *syscall.Credential, url string) *vdeSrvPlug {
	t.Helper()
	cmd := exec.Command(vdeSrvNeed(t), url)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: cred}
	p := &vdeSrvPlug{t: t, cmd: cmd, frames: make(chan []byte, 64), done: make(chan struct{})}
	cmd.Stderr = &p.stderr
	var err error
	if p.in, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(p.done)
		r := bufio.NewReader(out)
		for {
			var hdr [2]byte
			if _, err := io.ReadFull(r, hdr[:]); err != nil {
				close(p.frames)
				cmd.Wait()
				return
			}
			f := make([]byte, binary.BigEndian.Uint16(hdr[:]))
			if _, err := io.ReadFull(r, f); err != nil {
				close(p.frames)
				cmd.Wait()
				return
			}
			if !vdeswitch.IsProbe(f) {
				p.frames <- f
			}
		}
	}()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	})
	return p
}

func (p *vdeSrvPlug) send(f []byte) {
	p.in.Write(binary.BigEndian.AppendUint16(nil, uint16(len(f))))
	p.in.Write(f)
}

func (p *vdeSrvPlug) next() []byte {
	p.t.Helper()
	select {
	case f, ok := <-p.frames:
		if !ok {
			p.t.Fatalf("vde_plug ended: %s", p.stderr.String())
		}
		return f
	case <-time.After(waitProcs):
		p.t.Fatalf("vde_plug received nothing; stderr: %s", p.stderr.String())
	}
	return nil
}

// vdeSrvNet makes a hub network served to VDE clients at a directory.
func vdeSrvNet(t *testing.T) (path, dir string, s *ipn.Socket) {
	t.Helper()
	path, s = bindNet(t, nil)
	dir = filepath.Join(filepath.Dir(path), "vde")
	if err := s.ServeVDE(dir); err != nil {
		t.Fatal(err)
	}
	return path, dir, s
}

func TestVDEClientsJoin(t *testing.T) {
	path, dir, s := vdeSrvNet(t)
	a := vdeSrvStart(t, nil, "vde://"+dir)
	b := vdeSrvStart(t, nil, "vde://"+dir+"[7]")
	waitFor(t, 15*time.Second, "two VDE ports", func() bool { _, p := readersOf(path); return p == 3 })
	nets, _ := ipn.List(path)
	if p := portByNum(nets[0], 7); p.Port != 7 || !strings.Contains(p.Descr, "vdeplug") {
		t.Fatalf("port 7 asked by vde_plug: %+v", p)
	}
	// VDE client -> native member and the other client, bytes intact.
	fa := ethFrame(bcast, macOf(1), "from vde_plug a")
	a.send(fa)
	if got := recvString(t, s); got != string(fa) {
		t.Fatalf("native member got %x", got)
	}
	if got := b.next(); !bytes.Equal(got, fa) {
		t.Fatalf("client b got %x", got)
	}
	// Native member -> both clients.
	fs := ethFrame(bcast, macOf(9), "from the native member")
	s.Send(fs)
	for _, p := range []*vdeSrvPlug{a, b} {
		if got := p.next(); !bytes.Equal(got, fs) {
			t.Fatalf("a client got %x", got)
		}
	}
	// A client that dies: its port goes, the others keep working.
	syscall.Kill(-a.cmd.Process.Pid, syscall.SIGKILL)
	waitFor(t, 15*time.Second, "dead client's port gone", func() bool { _, p := readersOf(path); return p == 2 })
	b.send(ethFrame(bcast, macOf(2), "b still here"))
	if got := recvString(t, s); !strings.HasSuffix(got, "b still here") {
		t.Fatalf("got %q", got)
	}
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if len(names) != 2 { // ctl and b's data socket
		t.Errorf("switch directory holds %v", names)
	}
}

// rawCtl connects to the VDE control socket and sends b.
func rawCtl(t *testing.T, dir string, b []byte) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", filepath.Join(dir, "ctl"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.Write(b)
	return c
}

// closedWithoutReply checks the switch closes c without answering.
func closedWithoutReply(t *testing.T, c net.Conn, what string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := c.Read(make([]byte, 200))
	if err != io.EOF {
		t.Fatalf("%s: read %d bytes, %v; want the switch to close", what, n, err)
	}
}

func TestVDEBadClients(t *testing.T) {
	path, dir, s := vdeSrvNet(t)
	good := vdeSrvStart(t, nil, "vde://"+dir)
	waitFor(t, 15*time.Second, "a VDE port", func() bool { _, p := readersOf(path); return p == 2 })

	closedWithoutReply(t, rawCtl(t, dir, []byte("GET / HTTP/1.0\r\n\r\n garbage garbage")), "garbage")
	v1 := make([]byte, 4+4+6+110)
	binary.NativeEndian.PutUint32(v1, 0xfeedface)
	binary.NativeEndian.PutUint32(v1[4:], 0) // v1: a type, not a version
	closedWithoutReply(t, rawCtl(t, dir, v1), "v1 request")
	v3 := make([]byte, 12+110)
	binary.NativeEndian.PutUint32(v3, 0xfeedface)
	binary.NativeEndian.PutUint32(v3[4:], 3)
	binary.NativeEndian.PutUint16(v3[12:], syscall.AF_UNIX)
	copy(v3[14:], "/nonexistent/socket")
	closedWithoutReply(t, rawCtl(t, dir, v3), "a data socket that does not exist")
	// A client that connects and says nothing is dropped after a while;
	// meanwhile others are served.
	rawCtl(t, dir, nil)
	s.Send(ethFrame(bcast, macOf(9), "still served"))
	if got := good.next(); !bytes.HasSuffix(got, []byte("still served")) {
		t.Fatalf("got %x", got)
	}
	if _, p := readersOf(path); p != 2 {
		t.Fatalf("%d ports after the bad clients, want 2", p)
	}
}

func TestVDERefusesWithoutRights(t *testing.T) {
	requireRoot(t)
	path, dir, _ := vdeSrvNet(t)
	os.Chmod(dir, 0o777) // vde_plug makes its data socket here
	os.Chmod(path, 0o700)
	p := vdeSrvStart(t, asOther, "vde://"+dir)
	select {
	case <-p.done:
	case <-time.After(waitProcs):
		t.Fatal("vde_plug of a user without rights was not refused")
	}
	if _, n := readersOf(path); n != 1 {
		t.Fatalf("%d ports, want 1", n)
	}
}
