package ipn_test

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ipn-project/ipn/internal/qemutest"
)

// The tests of this file boot real QEMU guests (Debian's kernel, a busybox
// initrd) whose NIC is QEMU's own -netdev stream or dgram, with no
// libvdeplug: ipn plug's qemu-stream:// and qemu-dgram:// far ends join
// them to an ipn switch, where a tap in a namespace, or the other guest,
// answers their pings.

// qemuBoot bounds a guest's boot and ping.
const qemuBoot = 60 * time.Second

// qemuSwitch makes a switch network and a namespace with a tap on it at
// 10.77.0.1/24, and returns the network's path.
func qemuSwitch(t *testing.T, withTap bool) string {
	t.Helper()
	netnsNeed(t)
	qemutest.Need(t)
	qemutest.Initrd(t) // the kernel's download is not the guests' boot
	path, _ := devSwitch(t)
	if withTap {
		ns := netnsAdd(t, "qemu")
		tap := devName("tq")
		devPlug(t, ns, path, "tap", tap)
		netnsRun(t, ns, "addr add 10.77.0.1/24 dev "+tap, "link set "+tap+" up")
	}
	return path
}

// qemuPlug runs ipn plug path url and waits until its socket file is made.
func qemuPlug(t *testing.T, path, url, sock string) *proc {
	t.Helper()
	p := start(t, nil, nil, ipnCommand(t), "plug", path, url)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("ipn plug %s %s; stderr:\n%s", path, url, p.stderr())
		}
	})
	waitFor(t, waitProcs, url+"'s socket", func() bool {
		select {
		case <-p.done:
			t.Fatalf("ipn plug %s exited: %v\n%s", url, p.err, p.stderr())
		default:
		}
		return isSock(sock)
	})
	return p
}

// streamGuest plugs a qemu-stream:// far end into the network at path and
// boots a guest on it.
func streamGuest(t *testing.T, path, name, addr, peer string, mac byte, linger int) (*qemutest.Guest, *proc, string) {
	t.Helper()
	sock := filepath.Join(tempDir(t), name+".sock")
	p := qemuPlug(t, path, "qemu-stream://"+sock, sock)
	g := qemutest.Start(t, qemutest.Config{
		Name: name, Addr: addr, Peer: peer, MAC: fmt.Sprintf("52:54:00:77:00:%02x", mac), Linger: linger,
		Netdev: "stream,server=off,addr.type=unix,addr.path=" + sock,
	})
	return g, p, sock
}

// dgramGuest plugs a qemu-dgram:// far end into the network at path and
// boots a guest on it.
func dgramGuest(t *testing.T, path, name, addr, peer string, mac byte, linger int) (*qemutest.Guest, *proc, string) {
	t.Helper()
	dir := tempDir(t)
	sock, qsock := filepath.Join(dir, name+".ipn"), filepath.Join(dir, name+".qemu")
	p := qemuPlug(t, path, "qemu-dgram://"+sock+"?remote="+qsock, sock)
	g := qemutest.Start(t, qemutest.Config{
		Name: name, Addr: addr, Peer: peer, MAC: fmt.Sprintf("52:54:00:77:00:%02x", mac), Linger: linger,
		Netdev: "dgram,local.type=unix,local.path=" + qsock + ",remote.type=unix,remote.path=" + sock,
	})
	return g, p, sock
}

// pinged waits for the guest's ping to succeed and logs its replies.
func pinged(t *testing.T, g *qemutest.Guest) {
	t.Helper()
	g.Expect(t, qemutest.MarkUp, "", qemuBoot)
	ok := g.Expect(t, qemutest.MarkPingOK, qemutest.MarkFail, qemuBoot)
	replies := g.Lines("bytes from")
	if len(replies) == 0 {
		t.Fatalf("guest %s: %s with no reply printed", g.Name, ok)
	}
	for _, l := range append(replies, ok) {
		t.Logf("guest %s: %s", g.Name, l)
	}
}

// A guest with -netdev stream (QEMU connects to ipn plug's socket) pings
// a tap in a namespace through an ipn switch; when the guest is gone, the
// plug's socket takes the next QEMU, which pings too; the socket file goes
// when the plug exits.
func TestQEMUStreamPingsTap(t *testing.T) {
	path := qemuSwitch(t, true)
	g, p, sock := streamGuest(t, path, "stream", "10.77.0.2/24", "10.77.0.1", 2, 0)
	pinged(t, g)
	if err := g.Wait(t, qemuBoot); err != nil {
		t.Fatalf("guest did not power off cleanly: %v\n%s", err, g.Console())
	}
	// The same socket, a second QEMU (as a restarted VM).
	g2 := qemutest.Start(t, qemutest.Config{
		Name: "stream-again", Addr: "10.77.0.2/24", Peer: "10.77.0.1", MAC: "52:54:00:77:00:02",
		Netdev: "stream,server=off,addr.type=unix,addr.path=" + sock,
	})
	pinged(t, g2)
	waitFor(t, waitProcs, "the plug to see the second connection", func() bool {
		return strings.Contains(p.stderr(), "(connection 2)")
	})
	if err := stopBy(t, p, syscall.SIGTERM); err != nil {
		t.Fatalf("ipn plug on SIGTERM: %v\n%s", err, p.stderr())
	}
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Fatalf("%s after ipn plug exited: %v, want no file", sock, err)
	}
}

// A guest whose -netdev stream listens (server=on) pings a tap in a
// namespace through an ipn switch, the plug connecting to QEMU's socket;
// with --reconnect the plug connects again to the next QEMU there.
func TestQEMUStreamServerPingsTap(t *testing.T) {
	path := qemuSwitch(t, true)
	sock := filepath.Join(tempDir(t), "server.sock")
	cfg := qemutest.Config{
		Name: "stream-server", Addr: "10.77.0.6/24", Peer: "10.77.0.1", MAC: "52:54:00:77:00:06",
		Netdev: "stream,server=on,addr.type=unix,addr.path=" + sock,
	}
	g := qemutest.Start(t, cfg)
	waitFor(t, waitProcs, "QEMU's socket", func() bool { return isSock(sock) })
	p := start(t, nil, nil, ipnCommand(t), "plug", "--reconnect", path, "qemu-stream+connect://"+sock)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("ipn plug; stderr:\n%s", p.stderr())
		}
	})
	pinged(t, g)
	g.Wait(t, qemuBoot)
	os.Remove(sock) // QEMU leaves it
	cfg.Name = "stream-server-again"
	g2 := qemutest.Start(t, cfg)
	pinged(t, g2)
	if n := strings.Count(p.stderr(), "connected to QEMU"); n != 2 {
		t.Fatalf("the plug connected %d times, want 2:\n%s", n, p.stderr())
	}
}

// A guest with -netdev dgram over Unix datagram sockets pings a tap in a
// namespace through an ipn switch; the plug's socket file goes when it
// exits.
func TestQEMUDgramPingsTap(t *testing.T) {
	path := qemuSwitch(t, true)
	g, p, sock := dgramGuest(t, path, "dgram", "10.77.0.3/24", "10.77.0.1", 3, 0)
	pinged(t, g)
	if err := stopBy(t, p, syscall.SIGTERM); err != nil {
		t.Fatalf("ipn plug on SIGTERM: %v\n%s", err, p.stderr())
	}
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Fatalf("%s after ipn plug exited: %v, want no file", sock, err)
	}
}

// Two guests on one ipn switch, one with -netdev stream and one with
// -netdev dgram, ping each other.
func TestQEMUStreamAndDgramGuestsPingEachOther(t *testing.T) {
	path := qemuSwitch(t, false)
	a, _, _ := streamGuest(t, path, "stream", "10.77.0.4/24", "10.77.0.5", 4, 30)
	b, _, _ := dgramGuest(t, path, "dgram", "10.77.0.5/24", "10.77.0.4", 5, 30)
	pinged(t, a)
	pinged(t, b)
}

// qemuFrame is QEMU's stream framing of f: a 4-byte big-endian length,
// then f.
func qemuFrame(f []byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(f))), f...)
}

// ipn plug with qemu-stream://, against a fake QEMU speaking its framing:
// a frame over the network's MTU is dropped and counted on the plug's
// stderr, and the next one enters the network; frames from the network
// reach QEMU framed; a QEMU that sends a length of 4 GiB loses its
// connection, not the plug, which takes the next QEMU.
func TestStreamPlugMTUAndHostileQEMU(t *testing.T) {
	path, s := bindNet(t, nil)
	sock := filepath.Join(tempDir(t), "fake.sock")
	p := qemuPlug(t, path, "qemu-stream://"+sock, sock)
	for i := 0; i < 2; i++ {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		hello := fmt.Sprintf("hello %d", i)
		c.Write(append(qemuFrame(make([]byte, 2000)), qemuFrame([]byte(hello))...))
		if got := recvString(t, s); got != hello {
			t.Fatalf("the network got %q, want %q (the frame over the MTU dropped)", got, hello)
		}
		if err := s.Send([]byte("to QEMU")); err != nil {
			t.Fatal(err)
		}
		// Loop probes of the network may come first.
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		for {
			var hdr [4]byte
			if _, err := io.ReadFull(c, hdr[:]); err != nil {
				t.Fatalf("fake QEMU reading: %v", err)
			}
			b := make([]byte, binary.BigEndian.Uint32(hdr[:]))
			if _, err := io.ReadFull(c, b); err != nil {
				t.Fatalf("fake QEMU reading: %v", err)
			}
			if string(b) == "to QEMU" {
				break
			}
		}
		c.Write([]byte{0xff, 0xff, 0xff, 0xff})
		if _, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("after a length of 4 GiB: %v, want EOF (the plug hung up)", err)
		}
	}
	for _, w := range []string{
		"a frame of 2000 bytes from QEMU, over the network's MTU of 1514 (1 dropped so far)",
		"bad framing: a length of 4294967295 bytes, over the 69632 of QEMU's largest frame; waiting for the next",
		"(connection 2)",
	} {
		waitFor(t, waitProcs, "plug's stderr to say "+w, func() bool { return strings.Contains(p.stderr(), w) })
	}
	select {
	case <-p.done:
		t.Fatalf("ipn plug exited: %v\n%s", p.err, p.stderr())
	default:
	}
}

// ipn plug refuses a bad qemu URL at once, naming it and what is allowed,
// even with --reconnect (no waiting makes it right).
func TestStreamPlugRefusesBadURL(t *testing.T) {
	path, _ := bindNet(t, nil)
	for _, tc := range []struct{ url, want string }{
		{"qemu-stream://vm.sock", "want qemu-stream:///ABSOLUTE/PATH"},
		{"qemu-dgram:///tmp/x.sock", "no remote: want qemu-dgram:///tmp/x.sock?remote=QEMUPATH"},
		{"qemu-stream:///tmp/x.sock?mode=888", `mode "888": want octal permission bits from 1 to 777`},
	} {
		p := start(t, nil, nil, ipnCommand(t), "plug", "--reconnect", path, tc.url)
		err := p.wait(waitProcs)
		if exitStatus(err) != 1 || !strings.Contains(p.stderr(), tc.url) || !strings.Contains(p.stderr(), tc.want) {
			t.Errorf("ipn plug %s: %v, stderr %q; want status 1 naming the URL and %q", tc.url, err, p.stderr(), tc.want)
		}
	}
}
