// Package vdeplug is the client side of the VDE 2 switch protocol: it plugs
// into a running vde_switch (or any switch speaking that protocol) as a new
// port and carries Ethernet frames as an endpoint.Endpoint, the way
// libvdeplug's vde:// module does for QEMU, vde_plug and friends.
//
// A switch is a directory holding the SOCK_STREAM control socket "ctl".
// Open connects to it, binds a SOCK_DGRAM socket of its own at a fresh path
// (DIR/.PID-COUNTER, or /var/run, /var/tmp, /tmp when DIR does not take
// it), and sends one request, all integers in host byte order:
//
//	magic 0xfeedface | version 3 | type | sockaddr_un (110 bytes) | description
//
// where type is 0 for any free port, N<<8 for port N, 1 for port 0. The
// switch connects a datagram socket of its own to ours and answers with its
// address, one sockaddr_un; Open connects to it and unlinks its own path.
// From then on every frame is one datagram on the data sockets, both ways.
// The port lives as long as the control connection: Close ends it, and when
// the switch ends it (the switch died or dropped the port) Read and Write
// report ErrSwitchGone.
//
// The spec Open takes is what follows vde:// in a VDE URL:
//
//	/tmp/sw          the switch at /tmp/sw, any free port
//	/tmp/sw[3]       port 3 (also [port=3]); [0] asks for port 0
//	sw               a relative directory, made absolute
//	/tmp/sw[group=G/mode=660]
//	                 group and mode of the data socket (default 0700,
//	                 widened as libvdeplug does for a switch run by another
//	                 user)
//	/tmp/sw[portgroup=NAME]
//	                 a port group: DIR/NAME is tried before DIR/ctl (a bare
//	                 [NAME] is refused: it is a port number or nothing)
//	(empty)          the default switch, /var/run/vde.ctl or /tmp/vde.ctl
package vdeplug

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/endpoint"
	"github.com/ipn-project/ipn/internal/vdeproto"
)

// pathLen is the room for a path in a struct sockaddr_un.
const pathLen = 108

// Errors Open and the endpoint report, wrapped with the details.
var (
	// ErrNoSwitch: no switch answers at the directory.
	ErrNoSwitch = errors.New("no vde switch")
	// ErrRefused: the switch closed the control connection without
	// giving a port (the port asked for is out of range, no port is free,
	// or the request was not accepted).
	ErrRefused = errors.New("vde switch refused the port")
	// ErrBadReply: the switch's answer is not a sockaddr_un.
	ErrBadReply = errors.New("bad reply from vde switch")
	// ErrSwitchGone: the switch closed the port's control connection or
	// data socket after the port was made.
	ErrSwitchGone = errors.New("the vde switch closed the port")
)

// DefaultDirs are the switches tried for an empty spec, as libvdeplug does.
var DefaultDirs = []string{"/var/run/vde.ctl", "/tmp/vde.ctl"}

// fallbackDirs take the data socket when the switch's directory does not.
var fallbackDirs = []string{"/var/run", "/var/tmp", "/tmp"}

// HandshakeTimeout bounds the wait for the switch's answer (a shorter
// deadline of Open's context wins): vde_switch answers at once, or not at
// all when it cannot give the port asked for.
var HandshakeTimeout = 5 * time.Second

// Endpoint is a port of a VDE switch.
type Endpoint struct {
	dir  string // the switch's directory
	port int    // the port the switch gave, -1 if unknown
	data *net.UnixConn
	raw  syscall.RawConn
	ctl  *net.UnixConn

	own     string // our data socket's path, if unlinking it failed
	closed  atomic.Bool
	gone    atomic.Pointer[error]
	dropped atomic.Uint64
	once    sync.Once
	watched chan struct{}
}

var _ endpoint.Endpoint = (*Endpoint)(nil)

// spec is a parsed VDE URL.
type spec struct {
	dir       string // as given, may be empty or relative
	port      int    // 0: any; -1: port 0; N: port N
	portgroup string
	group     string
	mode      os.FileMode
}

func parseSpec(s string) (spec, error) {
	sp := spec{mode: 0o700}
	dir, params, hasParams := strings.Cut(s, "[")
	sp.dir = dir
	if !hasParams {
		return sp, nil
	}
	params, ok := strings.CutSuffix(params, "]")
	if !ok {
		return sp, fmt.Errorf("vde %q: want DIR[PARAMS]", s)
	}
	var pg string
	explicitGroup := false // pg came as portgroup=NAME
	portGiven := false     // a port or port group was named, maybe empty
	for _, elem := range strings.Split(params, "/") {
		if elem == "" {
			continue
		}
		key, val, hasVal := strings.Cut(elem, "=")
		switch {
		case !hasVal:
			pg, explicitGroup, portGiven = key, false, true
		case key == "port" || key == "portgroup":
			pg, explicitGroup, portGiven = val, key == "portgroup", true
		case key == "group":
			sp.group = val
		case key == "mode":
			m, err := strconv.ParseUint(val, 8, 32)
			if err != nil || m > 0o777 {
				return sp, fmt.Errorf("vde %q: mode %q: want an octal permission", s, val)
			}
			sp.mode = os.FileMode(m)
		default:
			return sp, fmt.Errorf("vde %q: unknown parameter %q (want port, portgroup, group, mode)", s, key)
		}
	}
	if pg == "" {
		if portGiven {
			return sp, fmt.Errorf("vde %q: empty port: want DIR[N] or DIR[port=N] with N in 0..%d, or DIR[portgroup=NAME]", s, 1<<23-1)
		}
		return sp, nil
	}
	if pg[0] >= '0' && pg[0] <= '9' || !explicitGroup {
		n, err := strconv.Atoi(pg)
		if err != nil || n < 0 || n >= 1<<23 {
			return sp, fmt.Errorf("vde %q: port %q: want DIR[N] or DIR[port=N] with N in 0..%d, or DIR[portgroup=NAME]", s, pg, 1<<23-1)
		}
		sp.port = n
		if n == 0 {
			sp.port = -1
		}
		return sp, nil
	}
	sp.portgroup = pg
	return sp, nil
}

// counter makes our data socket paths unique within the process.
var counter atomic.Uint32

// Open plugs into the switch spec names (what follows vde:// in a URL,
// see the package documentation) as a new port. The endpoint is an
// *Endpoint.
func Open(ctx context.Context, specStr string) (endpoint.Endpoint, error) {
	e, err := Dial(ctx, specStr)
	if err != nil {
		return nil, err
	}
	return e, nil
}

// Dial is Open returning the *Endpoint.
func Dial(ctx context.Context, specStr string) (*Endpoint, error) {
	sp, err := parseSpec(specStr)
	if err != nil {
		return nil, err
	}
	dirs := []string{sp.dir}
	if sp.dir == "" {
		dirs = DefaultDirs
	}
	var (
		ctl     *net.UnixConn
		ctlPath string
		dir     string
		viaCtl  bool
	)
	for _, d := range dirs {
		ctl, ctlPath, dir, viaCtl, err = connectCtl(ctx, d, sp)
		if err == nil {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	e, err := handshake(ctx, ctl, ctlPath, dir, viaCtl, sp)
	if err != nil {
		ctl.Close()
		return nil, err
	}
	return e, nil
}

// connectCtl connects to the switch at d: its port group socket if one is
// named (and no port number), else DIR/ctl. It returns the canonical
// directory and whether the connection is to ctl.
func connectCtl(ctx context.Context, d string, sp spec) (*net.UnixConn, string, string, bool, error) {
	abs, err := filepath.Abs(d)
	if err == nil {
		abs, err = filepath.EvalSymlinks(abs)
	}
	if err != nil {
		return nil, "", "", false, fmt.Errorf("%w at %s: %v", ErrNoSwitch, d, err)
	}
	var dialer net.Dialer
	dial := func(p string) (*net.UnixConn, error) {
		if len(p) >= pathLen {
			return nil, fmt.Errorf("%s: path longer than %d bytes", p, pathLen-1)
		}
		c, err := dialer.DialContext(ctx, "unix", p)
		if err != nil {
			return nil, err
		}
		return c.(*net.UnixConn), nil
	}
	if sp.portgroup != "" {
		if c, err := dial(filepath.Join(abs, sp.portgroup)); err == nil {
			return c, filepath.Join(abs, sp.portgroup), abs, false, nil
		}
	}
	p := filepath.Join(abs, "ctl")
	c, err := dial(p)
	if err != nil {
		why := err
		var op *net.OpError
		if errors.As(err, &op) {
			why = op.Err
			if se, ok := why.(*os.SyscallError); ok {
				why = se.Err
			}
		}
		switch {
		case errors.Is(why, syscall.ENOENT):
			why = fmt.Errorf("no control socket %s", p)
		case errors.Is(why, syscall.ECONNREFUSED):
			why = fmt.Errorf("%s refuses connections (stale: is vde_switch running?)", p)
		case errors.Is(why, syscall.ENOTDIR):
			why = fmt.Errorf("%s is not a directory (want the switch's directory)", abs)
		default:
			why = fmt.Errorf("%s: %v", p, why)
		}
		return nil, "", "", false, fmt.Errorf("%w at %s: %v", ErrNoSwitch, d, why)
	}
	return c, p, abs, true, nil
}

// dataSocket makes our datagram socket, bound at DIR/.PPPPP-NNNNN or, when
// that fails, in a fallback directory.
func dataSocket(dir string) (fd int, path string, err error) {
	fd, err = unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, "", os.NewSyscallError("socket", err)
	}
	pid := os.Getpid()
	try := func(format, d string) error {
		for range 1000 {
			p := fmt.Sprintf(format, d, pid, counter.Add(1)%100000)
			if len(p) >= pathLen {
				return syscall.ENAMETOOLONG
			}
			err := unix.Bind(fd, &unix.SockaddrUnix{Name: p})
			if err == nil {
				path = p
				return nil
			}
			if err != syscall.EADDRINUSE {
				return err
			}
		}
		return syscall.EADDRINUSE
	}
	first := try("%s/.%05d-%05d", dir)
	if first == nil {
		return fd, path, nil
	}
	for _, d := range fallbackDirs {
		if try("%s/vde.%05d-%05d", d) == nil {
			return fd, path, nil
		}
	}
	unix.Close(fd)
	return -1, "", fmt.Errorf("data socket: cannot bind in %s (%v) nor in %s", dir, first, strings.Join(fallbackDirs, ", "))
}

func defaultDescription() string {
	name := "ipn"
	if len(os.Args) > 0 {
		name = filepath.Base(os.Args[0])
	}
	who := strconv.Itoa(os.Getuid())
	if u, err := user.Current(); err == nil {
		who = u.Username
	}
	return fmt.Sprintf("%s user=%s PID=%d", name, who, os.Getpid())
}

func handshake(ctx context.Context, ctl *net.UnixConn, ctlPath, dir string, viaCtl bool, sp spec) (*Endpoint, error) {
	fd, own, err := dataSocket(dir)
	if err != nil {
		return nil, fmt.Errorf("vde switch %s: %w", dir, err)
	}
	ok := false
	defer func() {
		if !ok {
			if fd >= 0 {
				unix.Close(fd)
			}
			if own != "" {
				os.Remove(own)
			}
		}
	}()
	if err := dataMode(own, ctlPath, sp); err != nil {
		return nil, fmt.Errorf("vde switch %s: data socket %s: %w", dir, own, err)
	}

	want := vdeproto.AnyPort
	if viaCtl && sp.port > 0 {
		want = sp.port
	} else if viaCtl && sp.port < 0 {
		want = 0
	}
	req := vdeproto.Request{Port: want, Path: own, Descr: defaultDescription()}.Encode()

	// vde_switch answers at once, or never: it keeps the connection of a
	// request it cannot serve (port out of range, no free port) open
	// without a word; other refusals close it.
	began := time.Now()
	deadline := began.Add(HandshakeTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	ctl.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { ctl.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	what := "any port"
	if sp.port > 0 {
		what = fmt.Sprintf("port %d", sp.port)
	} else if sp.port < 0 {
		what = "port 0"
	}
	if _, err := ctl.Write(req); err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, fmt.Errorf("vde switch %s: sending the request: %w", dir, err)
	}
	reply := make([]byte, vdeproto.AddrLen)
	n, err := io.ReadFull(ctl, reply)
	switch {
	case err == nil:
	case errors.Is(ctx.Err(), context.Canceled):
		return nil, fmt.Errorf("vde switch %s: %w", dir, ctx.Err())
	case n == 0 && (err == io.EOF || errors.Is(err, syscall.ECONNRESET)):
		return nil, fmt.Errorf("%w: %s closed the connection without an answer (asked for %s)", ErrRefused, ctlPath, what)
	case n == 0 && errors.Is(err, os.ErrDeadlineExceeded):
		return nil, fmt.Errorf("%w: no answer from %s in %v (asked for %s: out of range, or no port free?)",
			ErrRefused, ctlPath, deadline.Sub(began).Round(time.Millisecond), what)
	case n > 0 && n < vdeproto.AddrLen:
		return nil, fmt.Errorf("%w %s: %d bytes then %v, want a %d-byte sockaddr_un", ErrBadReply, dir, n, err, vdeproto.AddrLen)
	default:
		return nil, fmt.Errorf("vde switch %s: waiting for the answer: %w", dir, err)
	}
	ctl.SetDeadline(time.Time{})
	if !stop() {
		return nil, fmt.Errorf("vde switch %s: %w", dir, ctx.Err())
	}
	path, err := vdeproto.DecodeAddr(reply)
	if err != nil {
		return nil, fmt.Errorf("%w %s: not a Unix socket address (% x)", ErrBadReply, dir, reply[:min(len(reply), 24)])
	}
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		return nil, fmt.Errorf("vde switch %s: connecting to its data socket %s: %w", dir, path, err)
	}
	if err := os.Remove(own); err == nil || os.IsNotExist(err) {
		own = ""
	}

	f := os.NewFile(uintptr(fd), "vde-data")
	c, err := net.FileConn(f)
	f.Close() // FileConn holds a duplicate
	fd = -1
	if err != nil {
		return nil, fmt.Errorf("vde switch %s: %w", dir, err)
	}
	data := c.(*net.UnixConn)
	raw, err := data.SyscallConn()
	if err != nil {
		data.Close()
		return nil, err
	}
	ok = true
	e := &Endpoint{dir: dir, port: portOf(path), data: data, raw: raw, ctl: ctl, own: own, watched: make(chan struct{})}
	go e.watch()
	return e, nil
}

// dataMode sets the group and mode of our data socket as libvdeplug does:
// the switch must be able to write to it.
func dataMode(own, ctlPath string, sp spec) error {
	mode := sp.mode
	if sp.group != "" {
		gid, err := strconv.Atoi(sp.group)
		if err != nil {
			g, gerr := user.LookupGroup(sp.group)
			if gerr != nil {
				return gerr
			}
			gid, _ = strconv.Atoi(g.Gid)
		}
		if err := os.Lchown(own, -1, gid); err != nil {
			return err
		}
	} else if mode&0o077 == 0 {
		var st unix.Stat_t
		if unix.Stat(ctlPath, &st) == nil && st.Uid != 0 && int(st.Uid) != os.Geteuid() {
			// The switch runs as another user: share with its group if
			// we can, else with everyone.
			if os.Lchown(own, -1, int(st.Gid)) == nil {
				mode |= 0o070
			} else {
				mode |= 0o077
			}
		}
	}
	return os.Chmod(own, mode)
}

// portOf reads the port number from the switch's data socket name,
// DIR/NNN.FD for vde_switch; -1 if it is not of that form.
func portOf(path string) int {
	base := filepath.Base(path)
	num, _, ok := strings.Cut(base, ".")
	if !ok {
		return -1
	}
	n, err := strconv.Atoi(num)
	if err != nil {
		return -1
	}
	return n
}

// watch waits for the end of the control connection: the switch closed
// the port. It wakes a Read in progress, which reports ErrSwitchGone.
func (e *Endpoint) watch() {
	defer close(e.watched)
	buf := make([]byte, 256)
	for {
		if _, err := e.ctl.Read(buf); err != nil {
			if !e.closed.Load() {
				e.setGone(fmt.Errorf("%s: %w (control connection ended)", e.dir, ErrSwitchGone))
			}
			return
		}
		// vde_switch sends nothing on it; ignore whatever comes.
	}
}

func (e *Endpoint) setGone(err error) {
	e.gone.CompareAndSwap(nil, &err)
	e.data.SetReadDeadline(time.Unix(1, 0))
}

func (e *Endpoint) goneErr() error {
	if p := e.gone.Load(); p != nil {
		return *p
	}
	return nil
}

// Dir returns the switch's directory.
func (e *Endpoint) Dir() string { return e.dir }

// Port returns the switch's port number, or -1 if the switch's answer did
// not tell it.
func (e *Endpoint) Port() int { return e.port }

// Dropped returns how many frames Write dropped because the switch's
// queue was full (EAGAIN) or the frame did not fit a datagram.
func (e *Endpoint) Dropped() uint64 { return e.dropped.Load() }

// Read implements endpoint.Endpoint.Read: it waits for one datagram, then
// takes the ones already queued, up to len(bufs).
func (e *Endpoint) Read(bufs [][]byte, sizes []int) (int, error) {
	if len(bufs) == 0 {
		return 0, nil
	}
	n := 0
	var rerr error
	err := e.raw.Read(func(fd uintptr) bool {
		for n < len(bufs) {
			m, errno := recvTrunc(int(fd), bufs[n])
			switch errno {
			case 0:
				sizes[n] = m
				n++
			case syscall.EINTR:
			case syscall.EAGAIN:
				return n > 0
			default:
				rerr = errno
				return true
			}
		}
		return true
	})
	if n > 0 {
		return n, nil
	}
	if err == nil {
		err = rerr
	}
	if g := e.goneErr(); g != nil && !e.closed.Load() {
		return 0, g
	}
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) {
		return 0, fmt.Errorf("%s: %w (%v)", e.dir, ErrSwitchGone, err)
	}
	if err != nil && !errors.Is(err, net.ErrClosed) {
		err = &net.OpError{Op: "read", Net: "unixgram", Err: err}
	}
	return 0, err
}

// recvTrunc receives one datagram into b and returns its whole length,
// which is more than len(b) when it was truncated.
func recvTrunc(fd int, b []byte) (int, syscall.Errno) {
	var p unsafe.Pointer
	var dummy byte
	if len(b) > 0 {
		p = unsafe.Pointer(&b[0])
	} else {
		p = unsafe.Pointer(&dummy)
	}
	r, _, errno := unix.Syscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(p), uintptr(len(b)),
		unix.MSG_TRUNC|unix.MSG_DONTWAIT, 0, 0)
	return int(r), errno
}

// Write implements endpoint.Endpoint.Write: each frame is one datagram. A
// frame the switch cannot take at once is dropped, as VDE does.
func (e *Endpoint) Write(msgs [][]byte) (int, error) {
	for i, m := range msgs {
		if g := e.goneErr(); g != nil {
			return i, g
		}
		var werr error
		err := e.raw.Write(func(fd uintptr) bool {
			for {
				_, err := unix.Write(int(fd), m)
				if err == syscall.EINTR {
					continue
				}
				werr = err
				return true
			}
		})
		if err == nil {
			err = werr
		}
		switch {
		case err == nil:
		case errors.Is(err, syscall.EAGAIN), errors.Is(err, syscall.ENOBUFS), errors.Is(err, syscall.EMSGSIZE):
			e.dropped.Add(1)
		case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.ENOTCONN):
			if g := e.goneErr(); g != nil {
				return i, g
			}
			return i, fmt.Errorf("%s: %w (%v)", e.dir, ErrSwitchGone, err)
		default:
			if errors.Is(err, net.ErrClosed) {
				return i, err
			}
			return i, &net.OpError{Op: "write", Net: "unixgram", Err: err}
		}
	}
	return len(msgs), nil
}

// BatchSize implements endpoint.Endpoint.BatchSize.
func (e *Endpoint) BatchSize() int { return 32 }

// Close implements endpoint.Endpoint.Close: it leaves the switch, which
// frees the port.
func (e *Endpoint) Close() error {
	var err error
	e.once.Do(func() {
		e.closed.Store(true)
		err = e.ctl.Close()
		if derr := e.data.Close(); err == nil {
			err = derr
		}
		<-e.watched
		if e.own != "" {
			os.Remove(e.own)
		}
	})
	return err
}
