package ipn_test

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/internal/vdeproto"
	"github.com/ipn-project/ipn/internal/wire"
)

// The daemon serves VDE on no directory: the process that serves VDE
// does the path work with its own rights. Root's ipn vde refuses a
// directory another user made, or one others may write; with umask 0 the
// one it makes is not world-writable.
func TestAttackVDEDirectory(t *testing.T) {
	a, m := realUsers(t)
	c := rawClient(t)
	roundTrip(t, c, hello(wire.Version, 0))
	if e, err := roundTrip(t, c, wire.Packet(10, []byte("/tmp"))); err != nil || e != syscall.EINVAL {
		t.Fatalf("the old serve-VDE request: errno %v %v, want EINVAL (no such request)", e, err)
	}
	path, _ := bindNet(t, nil)
	for _, c := range []struct {
		name, want string
		owner      testUser
		mode       os.FileMode
	}{
		{"made by mallory", "belongs to uid", m, 0o755},
		{"writable by others", "writable by others", testUser{}, 0o777},
	} {
		dir := filepath.Join(tempDir(t), "vde")
		os.Mkdir(dir, c.mode)
		os.Chmod(dir, c.mode)
		os.Chown(dir, int(c.owner.uid), int(c.owner.gid))
		out, err := runAs(t, nil, nil, ipnCommand(t), "vde", "--proto", "any", path, dir)
		if err == nil || !strings.Contains(out, c.want) {
			t.Fatalf("root's ipn vde on a directory %s: %v %q", c.name, err, out)
		}
	}
	// umask 0: the directory root makes is still its own alone to change.
	dir := filepath.Join(tempDir(t), "fresh")
	v := start(t, nil, nil, "sh", "-c", "umask 0; exec "+ipnCommand(t)+" vde --proto any "+path+" "+dir)
	waitFor(t, waitProcs, dir+"/ctl", func() bool { _, err := os.Stat(filepath.Join(dir, "ctl")); return err == nil })
	st, _ := os.Stat(dir)
	ctl, _ := os.Stat(filepath.Join(dir, "ctl"))
	if st.Mode().Perm()&0o022 != 0 || ctl.Mode().Perm()&0o111 != 0 {
		t.Fatalf("with umask 0: %s is %v, ctl %v", dir, st.Mode(), ctl.Mode())
	}
	v.cmd.Process.Signal(syscall.SIGTERM)
	v.wait(waitProcs)

	// mallory cannot make a switch in root's directory, nor remove what
	// is there.
	rootDir := filepath.Join(tempDir(t), "rootdir")
	os.Mkdir(rootDir, 0o755)
	os.WriteFile(filepath.Join(rootDir, "ctl"), []byte("root's"), 0o644)
	own := filepath.Join(userDir(t, m, 0o755), "net")
	out, err := runAs(t, &m, nil, ipnCommand(t), "vde", own, rootDir)
	if err == nil || !strings.Contains(out, "belongs to uid 0") {
		t.Fatalf("mallory's ipn vde in root's directory: %v %q", err, out)
	}
	if b, err := os.ReadFile(filepath.Join(rootDir, "ctl")); err != nil || string(b) != "root's" {
		t.Fatalf("root's %s/ctl after mallory's try: %q %v", rootDir, b, err)
	}
	legit(t, a, "")
}

// mallory serves VDE on her own network and directory and swaps
// symlinks to a file of root's over the names the switch gives its data
// sockets while root's vde_plug joins: the switch is her own process, so
// nothing of root's can change.
func TestAttackVDESymlinkSwap(t *testing.T) {
	a, m := realUsers(t)
	vdeSrvNeed(t)
	secret := filepath.Join(testDir, fmt.Sprintf("secret-%d", os.Getpid()))
	os.WriteFile(secret, []byte("root's"), 0o600)
	defer os.Remove(secret)
	mdir := userDir(t, m, 0o755)
	net, dir := filepath.Join(mdir, "net"), filepath.Join(mdir, "vde")
	srv := start(t, m.cred(), nil, ipnCommand(t), "vde", "--mode", "666", net, dir)
	waitFor(t, waitProcs, dir+"/ctl", func() bool { _, err := os.Stat(filepath.Join(dir, "ctl")); return err == nil })
	sw := helper(t, m.cred(), "swapper", dir, secret, "3s")
	var plugs []*vdeSrvPlug
	for range 8 {
		plugs = append(plugs, vdeSrvStart(t, nil, "vde://"+dir))
	}
	sw.expect("swapped ", 30*time.Second)
	for _, p := range plugs {
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	}
	var st unix.Stat_t
	if err := unix.Lstat(secret, &st); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(secret); st.Uid != 0 || st.Mode&0o777 != 0o600 || string(b) != "root's" {
		t.Fatalf("root's file is now uid %d mode %#o holding %q", st.Uid, st.Mode&0o777, b)
	}
	srv.cmd.Process.Signal(syscall.SIGTERM)
	srv.wait(waitProcs)
	legit(t, a, "")
}

// helpSwapper plants symlinks to target over the names a switch gives
// its data sockets in dir (NNN.FD), again and again, for d.
func helpSwapper(dir, target, dS string) error {
	d, _ := time.ParseDuration(dS)
	n := 0
	for end := time.Now().Add(d); time.Now().Before(end); {
		for port := range 4 {
			for fd := 3; fd < 40; fd++ {
				name := filepath.Join(dir, fmt.Sprintf("%03d.%d", port, fd))
				if os.Symlink(target, name) == nil {
					n++
				}
			}
		}
		for port := range 4 {
			for fd := 3; fd < 40; fd++ {
				name := filepath.Join(dir, fmt.Sprintf("%03d.%d", port, fd))
				if fi, err := os.Lstat(name); err == nil && fi.Mode()&os.ModeSymlink != 0 {
					os.Remove(name)
				}
			}
		}
	}
	fmt.Printf("swapped %d\n", n)
	return nil
}

// A VDE client names the data socket frames go to: the switch (root's
// here) connects only to a socket the client owns and reaches, never to
// one in a directory of root's, nor through a link.
func TestAttackVDEClientDataSocket(t *testing.T) {
	a, m := realUsers(t)
	path, dir, root := vdeSrvNet(t)
	os.Chmod(path, 0o766)
	private := filepath.Join(tempDir(t), "private")
	os.Mkdir(private, 0o700)
	privSock := filepath.Join(private, "p.sock")
	priv, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: privSock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer priv.Close()
	mdir := userDir(t, m, 0o755)
	link := filepath.Join(mdir, "link")
	os.Symlink(privSock, link)
	for _, target := range []string{privSock, link} {
		h := helper(t, m.cred(), "vderaw", filepath.Join(dir, "ctl"), target)
		if got := h.line(waitProcs); !strings.HasPrefix(got, "refused") {
			t.Fatalf("naming %s: %q", target, got)
		}
	}
	// Her own socket is fine.
	h := helper(t, m.cred(), "vderaw", filepath.Join(dir, "ctl"), filepath.Join(mdir, "own.sock"))
	if got := h.line(waitProcs); !strings.HasPrefix(got, "answer "+dir) {
		t.Fatalf("naming her own socket: %q; stderr %s", got, h.stderr())
	}
	root.Send(ethFrame(bcast, macOf(1), "to every port"))
	h.expect("frame ", waitProcs) // the frame did go out, to the legit port
	priv.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, _, err := priv.ReadFromUnix(make([]byte, 2048)); err == nil {
		t.Fatalf("root's private socket received %d bytes", n)
	}
	if _, ports := readersOf(path); ports != 2 {
		t.Fatalf("%d ports, want root's and mallory's legit one", ports)
	}
	legit(t, a, "")
}

// helpVDERaw sends a VDE request to the switch at ctl naming data as the
// data socket ("own.sock" names: made here first), and prints the answer
// ("answer PATH", then each frame received) or "refused".
func helpVDERaw(ctl, data string) error {
	var own *net.UnixConn
	if filepath.Base(data) == "own.sock" {
		c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: data, Net: "unixgram"})
		if err != nil {
			return err
		}
		os.Chmod(data, 0o600)
		own = c
	}
	c, err := net.Dial("unix", ctl)
	if err != nil {
		return err
	}
	defer c.Close()
	c.Write(vdeproto.Request{Port: vdeproto.AnyPort, Path: data, Descr: "raw"}.Encode())
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	reply := make([]byte, vdeproto.AddrLen)
	if _, err := c.Read(reply); err != nil {
		fmt.Printf("refused %v\n", err)
		return nil
	}
	addr, err := vdeproto.DecodeAddr(reply)
	if err != nil {
		return err
	}
	fmt.Printf("answer %s\n", addr)
	if own == nil {
		return nil
	}
	buf := make([]byte, 2048)
	for {
		n, err := own.Read(buf)
		if err != nil {
			return err
		}
		if bytes.Contains(buf[:n], []byte("to every port")) {
			fmt.Printf("frame %d\n", n)
		}
	}
}

// alice's network with the default mode gives others r and w: every VDE
// client with rights on it can reach alice's switch (the control socket
// was made with the umask); one of a private network's cannot.
func TestAttackVDEClientsOfOtherUsers(t *testing.T) {
	a, m := realUsers(t)
	vdeSrvNeed(t)
	for _, c := range []struct {
		name string
		mode string
		join bool
	}{
		{"others may read", "0766", true},
		{"private", "0700", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			adir := userDir(t, a, 0o755)
			net, dir := filepath.Join(adir, "net"), filepath.Join(adir, "vde")
			cat := start(t, a.cred(), nil, ipnCommand(t), "cat", "--bind", "--proto", "hub", "--mode", c.mode, "--vde", dir, net)
			waitFor(t, waitProcs, dir+"/ctl", func() bool {
				select {
				case <-cat.done:
					t.Fatalf("alice's ipn cat: %v: %s", cat.err, cat.stderr())
				default:
				}
				_, err := os.Stat(filepath.Join(dir, "ctl"))
				return err == nil
			})
			p := vdeSrvStart(t, m.cred(), "vde://"+dir)
			if !c.join {
				select {
				case <-p.done:
				case <-time.After(waitProcs):
					t.Fatal("mallory's vde_plug joined a private network")
				}
				return
			}
			waitFor(t, waitProcs, "mallory's port", func() bool { _, ports := readersOf(net); return ports == 2 })
			cat.stdin.Write([]byte("a line from alice\n"))
			if got := p.next(); !bytes.Contains(got, []byte("a line from alice")) {
				t.Fatalf("mallory's vde_plug got %q", got)
			}
		})
	}
}

// mallory opens more connections to a switch's control socket than it
// serves joins at once, and says nothing: each user's joins in progress
// are bounded, so a client of another user still gets in (without the
// bound, hers would hold every slot and its connection be refused).
func TestAttackVDESilentClients(t *testing.T) {
	_, m := realUsers(t)
	path, dir, _ := vdeSrvNet(t)
	h := helper(t, m.cred(), "silent", filepath.Join(dir, "ctl"), "80")
	h.expect("held ", waitProcs)
	p := vdeSrvStart(t, nil, "vde://"+dir)
	waitFor(t, waitProcs, "vde_plug to join beside mallory's silent connections", func() bool {
		select {
		case <-p.done:
			t.Fatalf("vde_plug was refused: %s", p.stderr.String())
		default:
		}
		_, ports := readersOf(path)
		return ports == 2
	})
}

// helpSilent connects n times to the stream socket at path, says nothing,
// and holds the connections until stdin closes.
func helpSilent(path, nS string) error {
	n, _ := strconv.Atoi(nS)
	var held []net.Conn
	for range n {
		c, err := net.Dial("unix", path)
		if err != nil {
			break
		}
		held = append(held, c)
	}
	fmt.Printf("held %d\n", len(held))
	waitStdin()
	for _, c := range held {
		c.Close()
	}
	return nil
}

// mallory connects a datagram socket of her own to a socket of root's
// that trusts the credentials datagrams carry (SO_PASSCRED), and has the
// daemon make it a VDE port of her network: the daemon's datagrams then
// carry her credentials, not root's, as if she had sent them herself.
func TestAttackVDEDeputy(t *testing.T) {
	_, m := realUsers(t)
	victim := filepath.Join(shortDir(t), "trusts-root.sock")
	v, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: victim, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	os.Chmod(victim, 0o666)
	raw, _ := v.SyscallConn()
	raw.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1) })
	h := helper(t, m.cred(), "deputy", userDir(t, m, 0o755), victim)
	if got := h.line(waitProcs); got != "sent" {
		t.Fatalf("mallory: %q; stderr %s", got, h.stderr())
	}
	v.SetReadDeadline(time.Now().Add(waitProcs))
	buf, oob := make([]byte, 2048), make([]byte, unix.CmsgSpace(unix.SizeofUcred))
	for {
		n, oobn, _, _, err := v.ReadMsgUnix(buf, oob)
		if err != nil {
			t.Fatalf("the victim socket got nothing: %v", err)
		}
		msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
		if len(msgs) != 1 {
			t.Fatalf("no credentials with %q", buf[:n])
		}
		uc, err := unix.ParseUnixCredentials(&msgs[0])
		if err != nil {
			t.Fatal(err)
		}
		if uc.Uid != m.uid {
			t.Fatalf("a datagram from the daemon carries uid %d (pid %d), not mallory's %d: %q", uc.Uid, uc.Pid, m.uid, buf[:n])
		}
		if bytes.Contains(buf[:n], []byte("through the daemon")) {
			return
		}
	}
}

// helpDeputy speaks the protocol by hand: it binds a network in dir, makes
// a VDE port of a datagram socket connected to target with a socket pair
// for the client's stream, connects, and sends a message into the network.
func helpDeputy(dir, target string) error {
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: os.Getenv("IPN_SOCKET"), Net: "unixpacket"})
	if err != nil {
		return err
	}
	defer c.Close()
	ask := func(op uint16, body []byte, fds ...int) ([]byte, []int, error) {
		if err := wire.Send(c, wire.Packet(op, body), fds...); err != nil {
			return nil, nil, err
		}
		pkt, rfds, err := wire.Recv(c, make([]byte, 70000))
		if err != nil {
			return nil, nil, err
		}
		_, b, err := wire.Split(pkt)
		if err != nil {
			return nil, nil, err
		}
		b, err = wire.SplitReply(b)
		return b, rfds, err
	}
	if _, _, err := ask(wire.OpHello, []byte{byte(wire.Version), 0, 0, 0}); err != nil {
		return err
	}
	path := filepath.Join(dir, "net")
	if err := unix.Mknod(path, unix.S_IFSOCK|0o700, 0); err != nil {
		return err
	}
	fd, err := unix.Open(path, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	if _, _, err := ask(wire.OpBind, []byte(path), fd); err != nil {
		return fmt.Errorf("bind: %w", err)
	}
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	d, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	if err := unix.Connect(d, &unix.SockaddrUnix{Name: target}); err != nil {
		return err
	}
	if _, _, err := ask(wire.OpVDEJoin, wire.EncodeVDEJoin(-1, "deputy"), pair[0], d); err != nil {
		return fmt.Errorf("vde join: %w", err)
	}
	_, rfds, err := ask(wire.OpConnect, []byte(path))
	if err != nil || len(rfds) < 1 {
		return fmt.Errorf("connect: %v, %d fds", err, len(rfds))
	}
	if _, err := unix.Write(rfds[0], []byte("hello, through the daemon")); err != nil {
		return err
	}
	fmt.Println("sent")
	waitStdin()
	return nil
}
