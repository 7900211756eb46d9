package daemon

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/endpoint/vde"
	"github.com/ipn-project/ipn/engine"
)

// The VDE 2 join request: magic, version 3, type (port << 8), the client's
// data socket address, and a description (host byte order, packed).
const (
	vdeMagic      = 0xfeedface
	vdeVersion    = 3
	vdeAddrLen    = 110 // struct sockaddr_un
	vdeHeaderLen  = 12
	vdeMaxDescr   = 128
	vdeRequestMax = vdeHeaderLen + vdeAddrLen + vdeMaxDescr
	vdeReqTimeout = 5 * time.Second
)

// vdeServer makes the clients of a VDE control socket ports of a network.
// It belongs to the session that asked for it and stops with it.
type vdeServer struct {
	net *engine.Network // a reference, given back by stop
	dir string
	ln  *net.UnixListener
	ctl fileID // DIR/ctl, removed at stop if still the same file
	log *slog.Logger

	mu      sync.Mutex
	clients map[*vdeClient]struct{} // guarded by mu
	stopped bool                    // guarded by mu
	wg      sync.WaitGroup
}

// vdeClient is one VDE port: its control stream and engine port.
type vdeClient struct {
	ctl  *net.UnixConn
	port *engine.Port
	data string // the switch-side data socket's path
}

// serveVDE starts serving the listening socket fd, DIR/ctl, for network n;
// it takes ownership of fd and of a reference on n.
func serveVDE(n *engine.Network, dir string, fd int, log *slog.Logger) (*vdeServer, error) {
	f := os.NewFile(uintptr(fd), "vde-ctl")
	l, err := net.FileListener(f)
	f.Close()
	if err != nil {
		return nil, err
	}
	ln, ok := l.(*net.UnixListener)
	if !ok {
		l.Close()
		return nil, fmt.Errorf("vde control socket is not a unix stream socket: %w", syscall.EINVAL)
	}
	ln.SetUnlinkOnClose(false)
	v := &vdeServer{net: n, dir: dir, ln: ln, log: log, clients: make(map[*vdeClient]struct{})}
	var st unix.Stat_t
	if unix.Lstat(filepath.Join(dir, "ctl"), &st) == nil {
		v.ctl = fileID{uint64(st.Dev), st.Ino}
	}
	v.wg.Add(1)
	go v.accept()
	log.Info("vde switch", "dir", dir, "network", n.Name())
	return v, nil
}

func (v *vdeServer) accept() {
	defer v.wg.Done()
	for {
		c, err := v.ln.AcceptUnix()
		if err != nil {
			return
		}
		v.wg.Add(1)
		go func() {
			defer v.wg.Done()
			v.serveClient(c)
		}()
	}
}

// serveClient runs the handshake of one VDE client, then holds its port
// until its control stream closes.
func (v *vdeServer) serveClient(ctl *net.UnixConn) {
	defer ctl.Close()
	cl, err := v.join(ctl)
	if err != nil {
		v.log.Warn("vde client refused", "dir", v.dir, "err", err)
		return
	}
	v.mu.Lock()
	if v.stopped {
		v.mu.Unlock()
		os.Remove(cl.data)
		cl.port.Close()
		return
	}
	v.clients[cl] = struct{}{}
	v.mu.Unlock()
	// The port lives while the control stream is open.
	ctl.SetReadDeadline(time.Time{})
	buf := make([]byte, 256)
	for {
		if _, err := ctl.Read(buf); err != nil {
			break
		}
	}
	os.Remove(cl.data) // before the port goes: a listing without it means no file
	cl.port.Close()
	v.mu.Lock()
	delete(v.clients, cl)
	v.mu.Unlock()
}

// join reads a client's request, checks it, and makes its port.
func (v *vdeServer) join(ctl *net.UnixConn) (*vdeClient, error) {
	c, err := peerCred(ctl)
	if err != nil {
		return nil, err
	}
	ctl.SetReadDeadline(time.Now().Add(vdeReqTimeout))
	req := make([]byte, vdeRequestMax)
	n, err := ctl.Read(req)
	if err != nil {
		return nil, fmt.Errorf("%v: reading the request: %w", c, err)
	}
	req = req[:n]
	if n < 8 || binary.NativeEndian.Uint32(req) != vdeMagic {
		return nil, fmt.Errorf("%v: not a VDE request", c)
	}
	if ver := binary.NativeEndian.Uint32(req[4:]); ver != vdeVersion {
		return nil, fmt.Errorf("%v: VDE request version %d, only %d is served", c, ver, vdeVersion)
	}
	if n < vdeHeaderLen+vdeAddrLen {
		return nil, fmt.Errorf("%v: short VDE request (%d bytes)", c, n)
	}
	typ := binary.NativeEndian.Uint32(req[8:])
	addr := req[vdeHeaderLen : vdeHeaderLen+vdeAddrLen]
	if binary.NativeEndian.Uint16(addr) != unix.AF_UNIX {
		return nil, fmt.Errorf("%v: data socket is not AF_UNIX", c)
	}
	path := string(addr[2:])
	if i := bytes.IndexByte(addr[2:], 0); i >= 0 {
		path = string(addr[2 : 2+i])
	}
	descr := req[vdeHeaderLen+vdeAddrLen:]
	if i := bytes.IndexByte(descr, 0); i >= 0 {
		descr = descr[:i]
	}
	// As vde_switch does: the client must be able to read and write the
	// socket it asks frames to be sent to.
	var dst unix.Stat_t
	if err := unix.Stat(path, &dst); err != nil {
		return nil, fmt.Errorf("%v: data socket %s: %w", c, path, err)
	}
	if dst.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return nil, fmt.Errorf("%v: %s is not a socket", c, path)
	}
	if r, w, _ := access(&dst, c); !r || !w {
		return nil, fmt.Errorf("%v: may not use data socket %s: %w", c, path, syscall.EACCES)
	}
	// And IPN's rule: the network file's r and w decide the port's sides.
	st, err := statNet(v.net.Name())
	if err != nil {
		return nil, err
	}
	r, w, _ := access(st, c)
	if !r && !w {
		return nil, fmt.Errorf("%v: no r nor w on %s: %w", c, v.net.Name(), syscall.EACCES)
	}

	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("%v: connect to data socket %s: %w", c, path, err)
	}
	f := os.NewFile(uintptr(fd), "vde-data")
	fc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, err
	}
	data := fc.(*net.UnixConn)
	ep, err := vde.New(data)
	if err != nil {
		data.Close()
		return nil, err
	}
	want := -1
	if p := int(typ >> 8); p > 0 {
		want = p
	}
	port, err := v.net.Join(ep, engine.PortOptions{
		Want: want, Description: string(descr[:min(len(descr), engine.MaxDescription)]),
		Peer: "vde " + c.String(), NoRead: !r, NoWrite: !w,
	})
	if err != nil {
		ep.Close()
		return nil, fmt.Errorf("%v: %w", c, err)
	}
	// The switch's end of the data path, named as vde_switch names it.
	local := filepath.Join(v.dir, fmt.Sprintf("%03d.%d", port.Num(), fd))
	os.Remove(local)
	var berr error
	raw, _ := data.SyscallConn()
	raw.Control(func(sfd uintptr) {
		if berr = unix.Bind(int(sfd), &unix.SockaddrUnix{Name: local}); berr == nil {
			unix.Chown(local, int(c.uid), int(c.gid))
			unix.Chmod(local, 0o600)
		}
	})
	if berr != nil {
		port.Close()
		return nil, fmt.Errorf("bind %s: %w", local, berr)
	}
	reply := make([]byte, vdeAddrLen)
	binary.NativeEndian.PutUint16(reply, unix.AF_UNIX)
	copy(reply[2:], local)
	if _, err := ctl.Write(reply); err != nil {
		port.Close()
		os.Remove(local)
		return nil, err
	}
	v.log.Info("vde port", "dir", v.dir, "port", port.Num(), "client", c, "descr", string(descr))
	return &vdeClient{ctl: ctl, port: port, data: local}, nil
}

// statNet returns the status of the network file at path.
func statNet(path string) (*unix.Stat_t, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nil, fmt.Errorf("network file %s: %w", path, err)
	}
	return &st, nil
}

// stop closes the control socket and every port, waits for the server's
// goroutines and gives back the network reference.
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
	if v.ctl != (fileID{}) {
		unlinkIf(filepath.Join(v.dir, "ctl"), v.ctl)
	}
	v.net.Release()
}

var errNotBound = errors.New("serving VDE needs a bound socket (a manager)")
