package ipn

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/internal/perm"
	"github.com/ipn-project/ipn/internal/throttle"
	"github.com/ipn-project/ipn/internal/vdeproto"
	"github.com/ipn-project/ipn/internal/wire"
)

// VDEOptions say how ServeVDEWith sets up the switch's directory.
type VDEOptions struct {
	// Mode is the permission of the control socket DIR/ctl (a VDE client
	// needs w on it); the directory gets r-x for each class that has a
	// bit of it. Zero: rw for each class (owner, group, others) that has
	// r or w on the network file, so that every VDE client with rights on
	// the network can connect (ACLs on the network file are not mirrored:
	// set Mode and Group for them).
	Mode os.FileMode
	// Group owns the directory and the control socket: a name or a
	// number; "" is the network file's group.
	Group string
	// Log receives the refusals of clients; slog.Default() if nil.
	Log *slog.Logger
}

// ServeVDE makes the bound network a VDE 2 switch at directory dir, as
// vde_switch -s dir would be, with the default VDEOptions.
func (s *Socket) ServeVDE(dir string) error { return s.ServeVDEWith(dir, VDEOptions{}) }

// ServeVDEWith makes the bound network a VDE 2 switch at directory dir:
// VDE clients (vde_plug vde://dir, QEMU's -netdev vde,sock=dir,
// slirpvde...) become ports of the network, each with the sides that both
// its user's rights and this socket's user's rights on the network file
// give. The switch runs in this process, with this process's rights: it
// makes dir (or takes one of this user's that no one else may write), its
// control socket and the ports' data sockets, and connects to the
// clients' data sockets (as each client, when run by root); the daemon
// only gets descriptors. It lasts until the socket is closed. The socket
// must be bound.
func (s *Socket) ServeVDEWith(dir string, opts VDEOptions) error {
	s.mu.Lock()
	bound, netPath, v := s.bound, s.path, s.vde
	s.mu.Unlock()
	if !bound {
		return s.opError("servevde", fmt.Errorf("serving VDE needs a bound socket (Bind the network): %w", syscall.EINVAL))
	}
	if v != nil {
		return s.opError("servevde", fmt.Errorf("this socket serves VDE at %s already: %w", v.dir, syscall.EISCONN))
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return s.opError("servevde", err)
	}
	v, err = newVDEServer(s, abs, netPath, opts)
	if err != nil {
		return &net.OpError{Op: "servevde", Net: "ipn", Addr: Addr(abs), Err: err}
	}
	s.mu.Lock()
	s.vde = v
	s.mu.Unlock()
	v.wg.Add(1)
	go v.accept()
	return nil
}

// vdeHandshakes bounds the VDE clients whose requests are awaited at once,
// vdeUserHandshakes those of one user (so that no user's silent
// connections keep the others out), vdeRequestTimeout how long one may
// take.
const (
	vdeHandshakes     = 64
	vdeUserHandshakes = 8
	vdeRequestTimeout = 5 * time.Second
)

// vdeServer is the VDE switch of a bound socket. Its directory is this
// user's and no one else may write to it, so the names it makes there
// cannot be swapped under it; it works on them through the directory's
// descriptor, never through a path that another user could redirect.
type vdeServer struct {
	s     *Socket
	dir   string
	dirfd int // the directory, opened once
	ln    *net.UnixListener
	ctl   fileID // DIR/ctl as made here
	log   *slog.Logger

	mu       sync.Mutex
	clients  map[*vdeClient]struct{} // guarded by mu
	stopped  bool                    // guarded by mu
	joining  map[uint32]int          // guarded by mu; handshakes in progress by user
	njoining int                     // guarded by mu
	wg       sync.WaitGroup
}

// vdeClient is one VDE port: its client's control stream, the port, and
// the name of the switch-side data socket in the directory.
type vdeClient struct {
	ctl   *net.UnixConn
	name  string
	id    fileID
	who   string
	descr string

	mu   sync.Mutex
	port int // guarded by mu
	// data is this process's copy of the switch's data socket, kept (when
	// the socket re-joins) to hand to a new daemon, or -1; guarded by mu.
	data int
}

func newVDEServer(s *Socket, dir, netPath string, opts VDEOptions) (*vdeServer, error) {
	var netSt unix.Stat_t
	if err := unix.Stat(netPath, &netSt); err != nil {
		return nil, fmt.Errorf("network file %s: %w", netPath, err)
	}
	if len(dir)+len("/12345.1234567890") > vdeproto.PathMax {
		return nil, fmt.Errorf("directory path of %d bytes: a VDE address holds %d: %w", len(dir), vdeproto.PathMax, syscall.ENAMETOOLONG)
	}
	ctlMode := opts.Mode.Perm()
	if ctlMode == 0 {
		ctlMode = 0o600
		for _, shift := range []uint{3, 0} { // group, others
			if netSt.Mode>>shift&0o6 != 0 {
				ctlMode |= 0o6 << shift
			}
		}
	}
	dirMode := os.FileMode(0o700)
	for _, shift := range []uint{3, 0} {
		if ctlMode>>shift&0o7 != 0 {
			dirMode |= 0o5 << shift
		}
	}
	gid := int(netSt.Gid)
	if opts.Group != "" {
		g, err := lookupGroup(opts.Group)
		if err != nil {
			return nil, err
		}
		gid = g
	}
	needGroup := opts.Group != "" || ctlMode&0o060 != 0 && ctlMode&0o006 == 0

	dirfd, created, err := vdeDir(dir)
	if err != nil {
		return nil, err
	}
	v := &vdeServer{s: s, dir: dir, dirfd: dirfd, log: opts.Log,
		clients: make(map[*vdeClient]struct{}), joining: make(map[uint32]int)}
	if v.log == nil {
		v.log = slog.Default()
	}
	// Clients another user runs could fill the log: repeated messages are
	// counted, not written.
	v.log = slog.New(throttle.New(v.log.Handler(), throttle.DefaultBurst, throttle.DefaultEvery))
	fail := func(err error) (*vdeServer, error) {
		if v.ln != nil {
			v.ln.Close()
			v.unlink("ctl", v.ctl)
		}
		unix.Close(dirfd)
		if created {
			os.Remove(dir)
		}
		return nil, err
	}
	if created || opts.Mode != 0 {
		if err := unix.Fchmod(dirfd, uint32(dirMode)); err != nil {
			return fail(fmt.Errorf("chmod %s: %w", dir, err))
		}
	}
	if err := unix.Fchown(dirfd, -1, gid); err != nil && needGroup {
		return fail(fmt.Errorf("giving %s to group %d: %w (pass a group you are in, or a mode for others)", dir, gid, err))
	}
	if err := v.listen(ctlMode, gid, needGroup); err != nil {
		return fail(err)
	}
	return v, nil
}

// lookupGroup returns the id of group g, a name or a number.
func lookupGroup(g string) (int, error) {
	if n, err := strconv.Atoi(g); err == nil && n >= 0 {
		return n, nil
	}
	gr, err := user.LookupGroup(g)
	if err != nil {
		return -1, fmt.Errorf("group %q: %w", g, err)
	}
	return strconv.Atoi(gr.Gid)
}

// vdeDir makes the directory dir, or takes the existing one if it belongs
// to this user and no one else may write to it, and opens it.
func vdeDir(dir string) (fd int, created bool, err error) {
	if err := os.Mkdir(dir, 0o700); err == nil {
		created = true
	} else if !errors.Is(err, os.ErrExist) {
		return -1, false, err
	}
	fd, err = unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
		return -1, false, fmt.Errorf("%s is not a directory (a symbolic link or a file): %w", dir, syscall.ENOTDIR)
	}
	if err != nil {
		return -1, false, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, false, err
	}
	me := uint32(os.Geteuid())
	switch {
	case st.Uid != me:
		err = fmt.Errorf("%s belongs to uid %d, not to you (uid %d): a switch's directory must be its own: %w", dir, st.Uid, me, syscall.EPERM)
	case st.Mode&0o022 != 0:
		err = fmt.Errorf("%s is writable by others (mode %#o): they could replace the switch's sockets; chmod go-w it: %w", dir, st.Mode&0o7777, syscall.EPERM)
	}
	if err != nil {
		unix.Close(fd)
		return -1, false, err
	}
	return fd, created, nil
}

// at returns a path that reaches name in the directory through its
// descriptor, for bind and connect, which take no directory descriptor.
func (v *vdeServer) at(name string) string {
	return "/proc/self/fd/" + strconv.Itoa(v.dirfd) + "/" + name
}

// listen makes the control socket DIR/ctl with mode and group gid: under
// another name first, renamed to ctl once its mode and group are set, so
// that ctl never has the umask's mode.
func (v *vdeServer) listen(mode os.FileMode, gid int, needGroup bool) error {
	if c, err := net.Dial("unix", v.at("ctl")); err == nil {
		c.Close()
		return fmt.Errorf("%s/ctl: a switch already serves it: %w", v.dir, syscall.EADDRINUSE)
	}
	var st unix.Stat_t
	if unix.Fstatat(v.dirfd, "ctl", &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return fmt.Errorf("%s/ctl is there and is not a socket: %w", v.dir, syscall.EEXIST)
	}
	tmp := fmt.Sprintf(".ctl-%d", os.Getpid())
	v.unlinkStale(tmp)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: v.at(tmp), Net: "unix"})
	if err != nil {
		return fmt.Errorf("listen %s/ctl: %w", v.dir, err)
	}
	ln.SetUnlinkOnClose(false)
	v.ln = ln
	if err := unix.Fstatat(v.dirfd, tmp, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return err
	}
	v.ctl = fileID{uint64(st.Dev), st.Ino}
	if err := unix.Fchmodat(v.dirfd, tmp, uint32(mode), 0); err != nil {
		v.unlink(tmp, v.ctl)
		return fmt.Errorf("chmod %s/ctl: %w", v.dir, err)
	}
	if err := unix.Fchownat(v.dirfd, tmp, -1, gid, unix.AT_SYMLINK_NOFOLLOW); err != nil && needGroup {
		v.unlink(tmp, v.ctl)
		return fmt.Errorf("giving %s/ctl to group %d: %w", v.dir, gid, err)
	}
	// Over a stale ctl of a switch that died, if there is one.
	if err := unix.Renameat(v.dirfd, tmp, v.dirfd, "ctl"); err != nil {
		v.unlink(tmp, v.ctl)
		return fmt.Errorf("%s/ctl: %w", v.dir, err)
	}
	return nil
}

// unlink removes name from the directory if it is still the file id.
func (v *vdeServer) unlink(name string, id fileID) {
	var st unix.Stat_t
	if unix.Fstatat(v.dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && (fileID{uint64(st.Dev), st.Ino}) == id {
		unix.Unlinkat(v.dirfd, name, 0)
	}
}

// accept takes the clients until the listener closes; other errors (no
// descriptors left, say) are waited out, never the end of the loop.
func (v *vdeServer) accept() {
	defer v.wg.Done()
	var pause time.Duration
	for {
		c, err := v.ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			pause = min(max(2*pause, 5*time.Millisecond), time.Second)
			v.log.Warn("vde: accept failed; retrying", "dir", v.dir, "err", err, "pause", pause)
			time.Sleep(pause)
			continue
		}
		pause = 0
		peer, perr := peerOf(c)
		uid := peer.cred.UID
		v.mu.Lock()
		stopped, busy := v.stopped, perr != nil || v.njoining >= vdeHandshakes || v.joining[uid] >= vdeUserHandshakes
		if !stopped && !busy {
			v.joining[uid]++
			v.njoining++
			v.wg.Add(1)
		}
		v.mu.Unlock()
		switch {
		case stopped:
			c.Close()
			return
		case busy:
			v.log.Warn("vde: too many clients joining at once; refusing one", "dir", v.dir, "uid", uid)
			c.Close()
			continue
		}
		go func() {
			defer v.wg.Done()
			v.serve(c, peer)
		}()
	}
}

// vdePeer is a VDE client as the kernel saw it connect.
type vdePeer struct {
	pid  int32
	cred perm.Cred
}

// peerOf returns who connected c.
func peerOf(c *net.UnixConn) (vdePeer, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return vdePeer{}, err
	}
	var p vdePeer
	var perr error
	if err := raw.Control(func(fd uintptr) { p.pid, p.cred, perr = perm.Peer(int(fd)) }); err != nil {
		return vdePeer{}, err
	}
	return p, perr
}

// serve runs one client's handshake, then holds its port until its
// control stream closes.
func (v *vdeServer) serve(ctl *net.UnixConn, peer vdePeer) {
	defer ctl.Close()
	cl, err := v.join(ctl, peer)
	uid := peer.cred.UID
	v.mu.Lock()
	if v.joining[uid]--; v.joining[uid] == 0 {
		delete(v.joining, uid)
	}
	v.njoining--
	v.mu.Unlock()
	if err != nil {
		v.log.Warn("vde: client refused", "dir", v.dir, "err", err)
		return
	}
	v.mu.Lock()
	if v.stopped {
		v.mu.Unlock()
		v.leave(cl)
		return
	}
	v.clients[cl] = struct{}{}
	v.mu.Unlock()
	// The port lives while the control stream is open.
	ctl.SetReadDeadline(time.Time{})
	io.Copy(io.Discard, ctl)
	v.mu.Lock()
	delete(v.clients, cl)
	v.mu.Unlock()
	v.leave(cl)
}

// leave ends a client's port and removes its data socket's name.
func (v *vdeServer) leave(cl *vdeClient) {
	v.unlink(cl.name, cl.id) // before the port goes: a listing without it means no file
	cl.mu.Lock()
	port := cl.port
	if cl.data >= 0 {
		unix.Close(cl.data)
		cl.data = -1
	}
	cl.mu.Unlock()
	v.s.request(wire.OpVDELeave, wire.U32(uint32(port)))
}

// rejoin makes the clients ports of the network again, after the socket
// re-joined a new daemon: each with its control stream and the data
// socket this process kept, asking for the port it had. A client that
// cannot be (its data socket was not kept, or the daemon refuses) is
// told, its control stream closed, and named in the log.
func (v *vdeServer) rejoin() {
	v.mu.Lock()
	clients := make([]*vdeClient, 0, len(v.clients))
	for cl := range v.clients {
		clients = append(clients, cl)
	}
	v.mu.Unlock()
	for _, cl := range clients {
		if err := v.rejoinClient(cl); err != nil {
			v.log.Warn("vde: client lost when the daemon went away", "dir", v.dir, "client", cl.who, "err", err)
			cl.ctl.Close() // serve then removes it
			continue
		}
		v.log.Info("vde: client joined again after the daemon went away", "dir", v.dir, "client", cl.who, "port", cl.port)
	}
}

func (v *vdeServer) rejoinClient(cl *vdeClient) error {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.data < 0 {
		return fmt.Errorf("its data socket was not kept: %w", syscall.ENOTCONN)
	}
	raw, err := cl.ctl.SyscallConn()
	if err != nil {
		return err
	}
	stream := -1
	var derr error
	if err := raw.Control(func(fd uintptr) { stream, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return err
	}
	if derr != nil {
		return derr
	}
	defer unix.Close(stream)
	body, _, err := v.s.request(wire.OpVDEJoin, wire.EncodeVDEJoin(cl.port, cl.descr), stream, cl.data)
	var p uint32
	if err == nil {
		p, err = wire.GetU32(body)
	}
	if err != nil {
		return err
	}
	cl.port = int(p)
	return nil
}

// readRequest reads a client's request: one write of at most
// RequestMax bytes, perhaps in pieces.
func readRequest(ctl *net.UnixConn) ([]byte, error) {
	ctl.SetReadDeadline(time.Now().Add(vdeRequestTimeout))
	req := make([]byte, vdeproto.RequestMax)
	n := 0
	for n < vdeproto.HeaderLen+vdeproto.AddrLen {
		m, err := ctl.Read(req[n:])
		n += m
		if err != nil {
			return nil, fmt.Errorf("reading the request: %w", err)
		}
	}
	// The description may follow in the same write, or at once.
	ctl.SetReadDeadline(time.Now().Add(5 * time.Millisecond))
	for n < len(req) {
		m, err := ctl.Read(req[n:])
		n += m
		if err != nil {
			break
		}
	}
	return req[:n], nil
}

// join reads a client's request, connects to its data socket as the
// client could, has the daemon make its port, and answers it.
func (v *vdeServer) join(ctl *net.UnixConn, peer vdePeer) (*vdeClient, error) {
	raw, err := ctl.SyscallConn()
	if err != nil {
		return nil, err
	}
	cc := peer.cred
	who := fmt.Sprintf("client pid %d uid %d", peer.pid, cc.UID)
	b, err := readRequest(ctl)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", who, err)
	}
	req, err := vdeproto.DecodeRequest(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", who, err)
	}
	data, err := dialClient(cc, req.Path)
	if err != nil {
		return nil, fmt.Errorf("%s: data socket %s: %w", who, req.Path, err)
	}
	// The daemon has its own once the port is made; a socket that
	// re-joins keeps this one for the next daemon.
	keep := v.s.rejoinOn()
	defer func() {
		if !keep {
			unix.Close(data)
		}
	}()
	// The daemon reads who the client is from the control stream itself.
	var stream int
	var derr error
	raw.Control(func(fd uintptr) { stream, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) })
	if derr != nil {
		return nil, fmt.Errorf("%s: %w", who, derr)
	}
	body, _, err := v.s.request(wire.OpVDEJoin, wire.EncodeVDEJoin(req.Port, req.Descr), stream, data)
	unix.Close(stream)
	var p uint32
	if err == nil {
		p, err = wire.GetU32(body)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", who, err)
	}
	port := int(p)
	cl := &vdeClient{ctl: ctl, port: port, name: fmt.Sprintf("%03d.%d", port, data), who: who, descr: req.Descr, data: -1}
	if err := v.bindData(cl, data, cc); err != nil {
		keep = false
		v.s.request(wire.OpVDELeave, wire.U32(uint32(port)))
		return nil, fmt.Errorf("%s: %w", who, err)
	}
	if keep {
		cl.data = data
	}
	if _, err := ctl.Write(vdeproto.EncodeAddr(filepath.Join(v.dir, cl.name))); err != nil {
		v.leave(cl)
		return nil, fmt.Errorf("%s: answering: %w", who, err)
	}
	return cl, nil
}

// dialClient connects a new datagram socket to the client's data socket
// at path, which must be a socket the client owns: the lookup and the
// connect are the client's (run with its credentials when this process is
// root), and the socket is opened once, without following a final link,
// so that nothing can be swapped between the check and the connect.
func dialClient(cc perm.Cred, path string) (int, error) {
	var fd int
	var err error
	if perm.Privileged() {
		fd, err = perm.Open(cc, path, unix.O_PATH|unix.O_NOFOLLOW)
	} else {
		fd, err = unix.Open(path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return -1, err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return -1, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return -1, fmt.Errorf("not a socket: %w", syscall.EINVAL)
	}
	if cc.UID != 0 && st.Uid != cc.UID {
		return -1, fmt.Errorf("belongs to uid %d, not to the client: %w", st.Uid, syscall.EACCES)
	}
	sock, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return -1, err
	}
	connect := func() error {
		return unix.Connect(sock, &unix.SockaddrUnix{Name: "/proc/self/fd/" + strconv.Itoa(fd)})
	}
	if perm.Privileged() {
		err = perm.As(cc, connect)
	} else {
		err = connect()
	}
	if err != nil {
		unix.Close(sock)
		return -1, fmt.Errorf("connect: %w", err)
	}
	return sock, nil
}

// bindData names the switch's end of a port's data path in the directory,
// as vde_switch names it. The socket is connected to the client's, so it
// takes datagrams from no other socket whatever its mode; root gives it
// to the client, as vde_switch does.
func (v *vdeServer) bindData(cl *vdeClient, fd int, cc perm.Cred) error {
	err := unix.Bind(fd, &unix.SockaddrUnix{Name: v.at(cl.name)})
	if errors.Is(err, unix.EADDRINUSE) {
		v.unlinkStale(cl.name)
		err = unix.Bind(fd, &unix.SockaddrUnix{Name: v.at(cl.name)})
	}
	if err != nil {
		return fmt.Errorf("bind %s/%s: %w", v.dir, cl.name, err)
	}
	var st unix.Stat_t
	if err := unix.Fstatat(v.dirfd, cl.name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return err
	}
	cl.id = fileID{uint64(st.Dev), st.Ino}
	mode := uint32(0o666)
	if os.Geteuid() == 0 {
		if err := unix.Fchownat(v.dirfd, cl.name, int(cc.UID), int(cc.GID), unix.AT_SYMLINK_NOFOLLOW); err == nil {
			mode = 0o600
		}
	}
	return unix.Fchmodat(v.dirfd, cl.name, mode, 0)
}

// unlinkStale removes a socket left at name by a switch that died.
func (v *vdeServer) unlinkStale(name string) {
	var st unix.Stat_t
	if unix.Fstatat(v.dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFSOCK {
		unix.Unlinkat(v.dirfd, name, 0)
	}
}

// stop ends the switch: no new clients, every port gone, the control
// socket removed.
func (v *vdeServer) stop() {
	v.mu.Lock()
	v.stopped = true
	clients := make([]*vdeClient, 0, len(v.clients))
	for cl := range v.clients {
		clients = append(clients, cl)
	}
	v.mu.Unlock()
	v.ln.Close()
	for _, cl := range clients {
		cl.ctl.Close()
	}
	v.wg.Wait()
	v.unlink("ctl", v.ctl)
	unix.Close(v.dirfd)
}
