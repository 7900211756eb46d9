package ipn_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/ipn-project/ipn"
	"github.com/ipn-project/ipn/policy"
	"github.com/ipn-project/ipn/policy/hub"
)

// testProto is a policy registered only in this test binary, to make a
// socket whose protocol differs from a hub network's.
const testProto = ipn.Protocol(200)

func init() {
	policy.MustRegister(testProto, "test-hub", hub.New)
}

func TestBindCreatesFileWithOwnerAndMode(t *testing.T) {
	old := syscall.Umask(0o027)
	path, s := bindNet(t, func(s *ipn.Socket) { s.SetMode(0o775) })
	syscall.Umask(old)
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		t.Errorf("network file mode %v is not a socket", fi.Mode())
	}
	if got := fi.Mode().Perm(); got != 0o750 {
		t.Errorf("network file perm %o, want 750 (0775 less umask 027)", got)
	}
	if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != os.Geteuid() {
		t.Errorf("owner %d, want %d", st.Uid, os.Geteuid())
	}
	if s.Path() != path {
		t.Errorf("Path() = %q, want %q", s.Path(), path)
	}
}

func TestHubMessagesKeepBoundaries(t *testing.T) {
	path, a := bindNet(t, nil)
	b := member(t, path, nil)
	c := member(t, path, nil)
	msgs := []string{"x", "a longer message", string(make([]byte, 1514))}
	for _, m := range msgs {
		if err := a.Send([]byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range []*ipn.Socket{b, c} {
		for _, m := range msgs {
			if got := recvString(t, r); got != m {
				t.Fatalf("got %d bytes, want %d", len(got), len(m))
			}
		}
	}
	expectNothing(t, a) // the sender hears nothing of its own
}

func TestErrors(t *testing.T) {
	path, a := bindNet(t, func(s *ipn.Socket) {
		s.SetMTU(100)
		s.SetNumNodes(2)
	})
	t.Run("EOVERFLOW", func(t *testing.T) {
		if err := a.Send(make([]byte, 101)); !errors.Is(err, syscall.EOVERFLOW) {
			t.Fatalf("send over MTU: %v", err)
		}
		if err := a.Send(make([]byte, 100)); err != nil {
			t.Fatalf("send at MTU: %v", err)
		}
	})
	t.Run("EADDRNOTAVAIL", func(t *testing.T) {
		member(t, path, nil)
		s, _ := ipn.NewSocket(ipn.Any)
		defer s.Close()
		if err := s.Connect(path); !errors.Is(err, syscall.EADDRNOTAVAIL) {
			t.Fatalf("connect to full network: %v", err)
		}
	})
	t.Run("EPROTO", func(t *testing.T) {
		s, _ := ipn.NewSocket(ipn.Protocol(99))
		if s != nil {
			s.Close()
			t.Fatal("socket of unknown protocol made")
		}
		// A protocol registered but not the network's: use a test policy.
		s, err := ipn.NewSocket(testProto)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if err := s.Connect(path); !errors.Is(err, syscall.EPROTO) {
			t.Fatalf("connect with other protocol: %v", err)
		}
		if err := s.Bind(path); !errors.Is(err, syscall.EPROTO) {
			t.Fatalf("bind with other protocol: %v", err)
		}
	})
	t.Run("EISCONN", func(t *testing.T) {
		if err := a.Connect(""); !errors.Is(err, syscall.EISCONN) {
			t.Fatalf("second connect: %v", err)
		}
		if err := a.SetMTU(200); !errors.Is(err, syscall.EISCONN) {
			t.Fatalf("set MTU after bind: %v", err)
		}
	})
	t.Run("ENOTCONN", func(t *testing.T) {
		s, _ := ipn.NewSocket(ipn.Any)
		defer s.Close()
		if err := s.Send([]byte("x")); !errors.Is(err, syscall.ENOTCONN) {
			t.Fatalf("send before connect: %v", err)
		}
		if _, _, err := s.Recv(make([]byte, 10)); !errors.Is(err, syscall.ENOTCONN) {
			t.Fatalf("recv before connect: %v", err)
		}
	})
	t.Run("ECONNREFUSED", func(t *testing.T) {
		dir := tempDir(t)
		plain := filepath.Join(dir, "file")
		os.WriteFile(plain, nil, 0o666)
		s, _ := ipn.NewSocket(ipn.Any)
		defer s.Close()
		if err := s.Connect(plain); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("connect to a plain file: %v", err)
		}
		if err := s.Connect(filepath.Join(dir, "missing")); !errors.Is(err, syscall.ENOENT) {
			t.Fatalf("connect to nothing: %v", err)
		}
	})
	t.Run("EEXIST", func(t *testing.T) {
		s, _ := ipn.NewSocket(ipn.Any)
		defer s.Close()
		s.SetFlags(ipn.Excl)
		if err := s.Bind(path); !errors.Is(err, syscall.EEXIST) {
			t.Fatalf("exclusive bind to existing network: %v", err)
		}
		// An exclusive network refuses other binders.
		xpath, _ := bindNet(t, func(s *ipn.Socket) { s.SetFlags(ipn.Excl) })
		o, _ := ipn.NewSocket(ipn.Any)
		defer o.Close()
		if err := o.Bind(xpath); !errors.Is(err, syscall.EEXIST) {
			t.Fatalf("bind to exclusive network: %v", err)
		}
	})
	t.Run("EADDRINUSE", func(t *testing.T) {
		member(t, path, nil)
		if err := a.ChangeNumNodes(1); !errors.Is(err, syscall.EADDRINUSE) {
			t.Fatalf("shrink over a used port: %v", err)
		}
	})
}

func TestChangeNumNodes(t *testing.T) {
	path, a := bindNet(t, func(s *ipn.Socket) { s.SetNumNodes(2) })
	member(t, path, nil)
	if n, _ := a.NumNodes(); n != 2 {
		t.Fatalf("NumNodes = %d", n)
	}
	if err := a.ChangeNumNodes(4); err != nil {
		t.Fatal(err)
	}
	c := member(t, path, func(s *ipn.Socket) { s.SetPort(3) })
	if c.Port() != 3 {
		t.Fatalf("port %d, want 3", c.Port())
	}
	if err := a.ChangeNumNodes(3); !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("shrink over port 3: %v", err)
	}
	if err := c.ChangeNumNodes(8); !errors.Is(err, syscall.EACCES) {
		t.Fatalf("change by a member that did not bind: %v", err)
	}
	c.Close()
	if err := a.ChangeNumNodes(2); err != nil {
		t.Fatalf("shrink after port 3 left: %v", err)
	}
	// The maker of an exclusive network manages it too.
	_, x := bindNet(t, func(s *ipn.Socket) { s.SetFlags(ipn.Excl) })
	if err := x.ChangeNumNodes(8); err != nil {
		t.Fatalf("resize an exclusive network by its maker: %v", err)
	}
}

func TestShutdownSides(t *testing.T) {
	path, a := bindNet(t, nil)
	r := member(t, path, func(s *ipn.Socket) { s.Shutdown(ipn.ShutWrite) })
	w := member(t, path, func(s *ipn.Socket) { s.Shutdown(ipn.ShutRead) })
	if err := r.Send([]byte("x")); !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("send on receive-only: %v", err)
	}
	if _, _, err := w.Recv(make([]byte, 10)); !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("recv on send-only: %v", err)
	}
	if err := w.Send([]byte("from w")); err != nil {
		t.Fatal(err)
	}
	if got := recvString(t, r); got != "from w" {
		t.Fatalf("got %q", got)
	}
	if got := recvString(t, a); got != "from w" {
		t.Fatalf("got %q", got)
	}
	if err := r.Shutdown(ipn.ShutRead); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.Recv(make([]byte, 10)); err != io.EOF {
		t.Fatalf("recv when fully shut down: %v, want EOF", err)
	}
}

func TestNumNodesNoticesComeFirst(t *testing.T) {
	path, a := bindNet(t, nil)
	watcher := member(t, path, func(s *ipn.Socket) { s.SetWantNumNodes(true) })
	buf := make([]byte, 64)
	next := func() (ipn.NumNodesNotice, bool, string) {
		t.Helper()
		watcher.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, flags, err := watcher.Recv(buf)
		if err != nil {
			t.Fatal(err)
		}
		if flags&ipn.MsgOOB == 0 {
			return ipn.NumNodesNotice{}, false, string(buf[:n])
		}
		nn, err := ipn.ParseNumNodesNotice(buf[:n])
		if err != nil {
			t.Fatal(err)
		}
		return nn, true, ""
	}
	if nn, oob, _ := next(); !oob || nn.Readers != 2 || nn.Writers != 2 {
		t.Fatalf("first notice %+v (oob %v), want readers 2 writers 2", nn, oob)
	}
	// A notice is never overtaken by a message sent after it.
	r := member(t, path, func(s *ipn.Socket) { s.Shutdown(ipn.ShutWrite) })
	a.Send([]byte("ordinary"))
	if nn, oob, _ := next(); !oob || nn.Readers != 3 || nn.Writers != 2 {
		t.Fatalf("notice %+v (oob %v), want readers 3 writers 2", nn, oob)
	}
	if _, oob, m := next(); oob || m != "ordinary" {
		t.Fatalf("after the notice: oob %v %q", oob, m)
	}
	r.Close()
	if nn, oob, _ := next(); !oob || nn.Readers != 2 || nn.Writers != 2 {
		t.Fatalf("notice after leave %+v", nn)
	}
}

func TestSendOOB(t *testing.T) {
	path, a := bindNet(t, nil)
	h := member(t, path, func(s *ipn.Socket) { s.SetHandleOOB(true) })
	plain := member(t, path, nil)
	if err := a.SendOOB([]byte("urgent")); err != nil {
		t.Fatal(err)
	}
	h.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	n, flags, err := h.Recv(buf)
	if err != nil || flags&ipn.MsgOOB == 0 || string(buf[:n]) != "urgent" {
		t.Fatalf("got %q flags %v err %v", buf[:n], flags, err)
	}
	expectNothing(t, plain)
}

func portByNum(n ipn.NetInfo, port int) ipn.PortInfo {
	for _, p := range n.PortsInfo {
		if p.Port == port {
			return p
		}
	}
	return ipn.PortInfo{Port: -1}
}

func TestNetworkLifetime(t *testing.T) {
	path, a := bindNet(t, nil)
	b := member(t, path, nil)
	a.Close() // the creator leaves; the member keeps the network
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("network file gone while a member is connected: %v", err)
	}
	c := member(t, path, nil)
	b.Send([]byte("still here"))
	if got := recvString(t, c); got != "still here" {
		t.Fatalf("got %q", got)
	}
	b.Close()
	c.Close()
	waitFor(t, 5*time.Second, "network file removed", func() bool {
		_, err := os.Lstat(path)
		return os.IsNotExist(err)
	})
	s, _ := ipn.NewSocket(ipn.Any)
	defer s.Close()
	if err := s.Connect(path); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("connect after the network ended: %v", err)
	}
	// A later bind on the same path makes a new network.
	d, err := ipn.Join(path, ipn.Hub)
	if err != nil {
		t.Fatalf("bind again: %v", err)
	}
	defer d.Close()
	if nets, err := ipn.List(path); err != nil || len(nets[0].PortsInfo) != 1 {
		t.Fatalf("new network: %+v %v", nets, err)
	}
}

func TestStaleFileIsReplacedByOwner(t *testing.T) {
	path := filepath.Join(tempDir(t), "stale")
	// A socket file left behind, as by a daemon that died.
	if err := syscall.Mknod(path, syscall.S_IFSOCK|0o755, 0); err != nil {
		t.Fatal(err)
	}
	s, err := ipn.Join(path, ipn.Hub)
	if err != nil {
		t.Fatalf("join over a stale file: %v", err)
	}
	s.Close()
}

func TestDeadlines(t *testing.T) {
	_, a := bindNet(t, nil)
	a.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	_, _, err := a.Recv(make([]byte, 10))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("recv past deadline: %v", err)
	}
	a.Close()
	if err := a.Send([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("send after close: %v", err)
	}
}

func TestJoinHelperMakesPeers(t *testing.T) {
	path := filepath.Join(tempDir(t), "peers")
	var peers []*ipn.Socket
	for i := 0; i < 3; i++ {
		s, err := ipn.Join(path, ipn.Hub)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		peers = append(peers, s)
	}
	for i, p := range peers {
		p.Send([]byte(fmt.Sprint("peer ", i)))
	}
	for i, p := range peers {
		seen := map[string]bool{}
		for range len(peers) - 1 {
			seen[recvString(t, p)] = true
		}
		if seen[fmt.Sprint("peer ", i)] || len(seen) != len(peers)-1 {
			t.Fatalf("peer %d got %v", i, seen)
		}
	}
}
