// Package vdemgmt serves vde_switch's management console for an IPN
// network: the text protocol of vde_switch -M (what unixterm, vdeterm,
// unixcmd and scripts speak), mapped onto the network's ports, its switch
// policy's MAC table and VLANs.
//
// The console runs in a process of the network's manager (ipn vde, ipn
// mgmt), never in the daemon: that process makes the socket at a path its
// user chose. Whoever may connect to the socket may read; a command that
// changes anything needs x on the network file for the connecting user,
// asked of the kernel with that user's credentials (SO_PEERCRED), and is
// carried out with the manager's own rights, so that it never gets more
// than either. A console run by a user other than root can check only its
// own user: the others may read, never change.
//
// Framing, as vde_switch: a banner and the prompt "\nvde$ " on connect;
// per command, commands that print send "0000 DATA END WITH '.'", the
// lines, "." ; then "1000 Success" or "1NNN strerror(NNN)" (the errno of
// vde_switch's answer), then the prompt. logout answers
// "9999 END OF SESSION" and closes.
package vdemgmt

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/internal/perm"
	"github.com/ipn-project/ipn/internal/throttle"
)

// The console's bounds: what any user who may connect can make it hold.
const (
	// MaxConns is the most console sessions at once, MaxUserConns those of
	// one user (so that no user's idle sessions keep the others out); more
	// are closed.
	MaxConns     = 16
	MaxUserConns = 4
	// MaxLine is the longest command line, as vde_switch's MAXCMD.
	MaxLine = 128
	// MaxRows is the most lines a command prints (hash/print of a huge
	// table, say); the rest are left out.
	MaxRows = 100000
	// IdleTimeout is how long a session may go without a command (a
	// whole line) before the console closes it, so that idle sessions
	// cannot keep the console full (vde_switch's never time out).
	IdleTimeout = 5 * time.Minute
	// writeTimeout is how long a reply may wait for a reader that reads
	// nothing; then the session ends.
	writeTimeout = 10 * time.Second
)

// Version is the vde_switch version the banner and showinfo name: the
// console's protocol is that version's.
const Version = "2.3.2"

// Prompt is what vde_switch writes before each command.
const Prompt = "\nvde$ "

// EndOfSession is what logout and shutdown answer before the console
// closes the session.
const EndOfSession = "9999 END OF SESSION"

// Network is what the console asks of the network it serves. Methods
// return errors that wrap a syscall.Errno, which becomes the reply code.
//
// Every method acts on the network of File, the file opened once (as
// ipn.PolicyOptionFile and ipn.ListFile do, or through a socket bound to
// that network), never on what File().Name() names at the time of the
// call: the console asks a caller's rights of File, and a path someone
// can change (a directory of hers on it) could name another network by
// then.
type Network interface {
	// File is the network file, opened once (O_PATH is enough); its Name
	// is the path the banner shows. The Network owns it: Listen takes a
	// descriptor of its own.
	File() *os.File
	// Ports lists the connected ports.
	Ports() ([]Port, error)
	// NumPorts is the number of ports of the network.
	NumPorts() (int, error)
	// SetNumPorts changes the number of ports.
	SetNumPorts(n int) error
	// Option reads a setting of the network's policy.
	Option(name string) (string, error)
	// SetOption changes a setting of the network's policy.
	SetOption(name, value string) error
}

// Port is a connected port as the console prints it.
type Port struct {
	Num               int
	Descr, Peer       string
	MsgsIn, BytesIn   uint64
	MsgsOut, BytesOut uint64
}

// Config says what a Console serves and where.
type Config struct {
	// Net is the network.
	Net Network
	// Path is where the socket is made; it must not exist, or be a socket
	// that no one serves.
	Path string
	// Mode is the socket's permission bits; 0 is 0600.
	Mode os.FileMode
	// Group owns the socket if >= 0 (as vde_switch --mgroup).
	Group int
	// VDEDir and VDEMode are what ds/showinfo prints: the VDE directory
	// served beside the console ("" if none) and its control socket's mode.
	VDEDir  string
	VDEMode os.FileMode
	// Shutdown is called once by a shutdown command of a user with x, after
	// the reply, from the session's goroutine: it must not block or call
	// Close (cancelling a context is what it is for); nil refuses shutdown
	// (EPERM).
	Shutdown func()
	// Idle is how long a session may go without a command; 0 is
	// IdleTimeout.
	Idle time.Duration
	// Log receives the console's events; slog.Default() if nil. The
	// console passes at most throttle.DefaultBurst records of a message per
	// throttle.DefaultEvery to it (refused sessions and changes are what
	// any user who may connect can make it log).
	Log *slog.Logger
}

// Console is a management socket being served. Close stops it.
type Console struct {
	cfg    Config
	netfd  int // O_PATH of the network file, for the rights of callers
	dirfd  int // the socket's directory
	name   string
	id     [2]uint64 // device and inode of the socket made here
	ln     *net.UnixListener
	start  time.Time
	self   perm.Cred
	shut   sync.Once
	closed sync.Once
	wg     sync.WaitGroup

	mu    sync.Mutex
	conns map[*net.UnixConn]struct{} // guarded by mu
	users map[uint32]int             // guarded by mu; sessions by user
	base  map[int]Port               // guarded by mu; counters at the last reset
}

// Listen makes the socket and serves the console on it until Close.
func Listen(cfg Config) (*Console, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	cfg.Log = slog.New(throttle.New(cfg.Log.Handler(), throttle.DefaultBurst, throttle.DefaultEvery))
	if cfg.Idle < 0 {
		return nil, fmt.Errorf("mgmt idle timeout %v: want 0 (the default, %v) or more: %w", cfg.Idle, IdleTimeout, syscall.EINVAL)
	}
	if cfg.Idle == 0 {
		cfg.Idle = IdleTimeout
	}
	if cfg.Mode == 0 {
		cfg.Mode = 0o600
	}
	if cfg.Mode&^0o777 != 0 {
		return nil, fmt.Errorf("mgmt mode %#o: want permission bits only (0..0777): %w", cfg.Mode, syscall.EINVAL)
	}
	abs, err := filepath.Abs(cfg.Path)
	if err != nil {
		return nil, fmt.Errorf("mgmt socket %q: %w", cfg.Path, err)
	}
	cfg.Path = abs
	netfd, err := dupFile(cfg.Net.File())
	if err != nil {
		return nil, fmt.Errorf("network file %s: %w", cfg.Net.File().Name(), err)
	}
	c := &Console{cfg: cfg, netfd: netfd, dirfd: -1, start: time.Now(),
		conns: make(map[*net.UnixConn]struct{}), users: make(map[uint32]int), base: make(map[int]Port),
		self: perm.Cred{UID: uint32(os.Geteuid()), GID: uint32(os.Getegid())}}
	if err := c.listen(); err != nil {
		unix.Close(netfd)
		if c.dirfd >= 0 {
			unix.Close(c.dirfd)
		}
		return nil, err
	}
	c.wg.Add(1)
	go c.accept()
	return c, nil
}

// listen makes the socket: bound in a fresh directory of mode 0700 made
// beside its path (so on the same file system), given its mode and group
// there, where no one else can reach or replace it, then renamed to its
// name without replacing anything, so that the name never has the umask's
// mode and no symbolic link is followed.
func (c *Console) listen() error {
	dir, name := filepath.Dir(c.cfg.Path), filepath.Base(c.cfg.Path)
	if len(c.cfg.Path) > 100 {
		return fmt.Errorf("mgmt socket %s: %d bytes; a socket address holds 107 (with room for the hidden name, 100): %w", c.cfg.Path, len(c.cfg.Path), syscall.ENAMETOOLONG)
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("mgmt socket directory %s: %w", dir, err)
	}
	c.dirfd, c.name = fd, name
	var st unix.Stat_t
	if unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil {
		if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
			return fmt.Errorf("mgmt socket %s: there is a file there that is not a socket: %w", c.cfg.Path, syscall.EEXIST)
		}
		if conn, err := net.Dial("unix", c.at(name)); err == nil {
			conn.Close()
			return fmt.Errorf("mgmt socket %s: a console already serves it: %w", c.cfg.Path, syscall.EADDRINUSE)
		}
		unix.Unlinkat(fd, name, 0) // a stale socket of a console that died
	}
	tmp, err := os.MkdirTemp(c.at(""), ".mgmt-")
	if err != nil {
		return fmt.Errorf("mgmt socket %s: a directory to bind it in: %w", c.cfg.Path, err)
	}
	tmpName := filepath.Base(tmp)
	defer unix.Unlinkat(fd, tmpName, unix.AT_REMOVEDIR)
	tfd, err := unix.Open(tmp, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("mgmt socket %s: directory %s: %w", c.cfg.Path, tmpName, err)
	}
	defer unix.Close(tfd)
	// Another user who may write to dir could have put a directory of hers
	// in the place of the fresh one: it must be ours and 0700.
	if err := unix.Fstat(tfd, &st); err != nil {
		return fmt.Errorf("mgmt socket %s: directory %s: %w", c.cfg.Path, tmpName, err)
	}
	if st.Uid != c.self.UID || st.Mode&0o077 != 0 {
		return fmt.Errorf("mgmt socket %s: directory %s made to bind it in is now uid %d mode %#o: %w", c.cfg.Path, tmpName, st.Uid, st.Mode&0o7777, syscall.EPERM)
	}
	const sock = "s"
	at := "/proc/self/fd/" + strconv.Itoa(tfd) + "/" + sock
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: at, Net: "unix"})
	if err != nil {
		return fmt.Errorf("listen on mgmt socket %s: %w", c.cfg.Path, err)
	}
	ln.SetUnlinkOnClose(false)
	fail := func(err error) error {
		ln.Close()
		unix.Unlinkat(tfd, sock, 0)
		return err
	}
	if err := unix.Fstatat(tfd, sock, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fail(fmt.Errorf("mgmt socket %s: %w", c.cfg.Path, err))
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return fail(fmt.Errorf("mgmt socket %s: bound, it is a file of type %#o: %w", c.cfg.Path, st.Mode&unix.S_IFMT, syscall.EPROTO))
	}
	c.id = [2]uint64{st.Dev, st.Ino}
	if err := unix.Fchmodat(tfd, sock, uint32(c.cfg.Mode), 0); err != nil {
		return fail(fmt.Errorf("chmod mgmt socket %s to %#o: %w", c.cfg.Path, c.cfg.Mode, err))
	}
	if c.cfg.Group >= 0 {
		if err := unix.Fchownat(tfd, sock, -1, c.cfg.Group, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fail(fmt.Errorf("giving mgmt socket %s to group %d: %w", c.cfg.Path, c.cfg.Group, err))
		}
	}
	if err := unix.Renameat2(tfd, sock, fd, name, unix.RENAME_NOREPLACE); err != nil {
		return fail(fmt.Errorf("mgmt socket %s: %w", c.cfg.Path, err))
	}
	c.ln = ln
	return nil
}

// at is a path that reaches name through the directory's descriptor.
func (c *Console) at(name string) string {
	return "/proc/self/fd/" + strconv.Itoa(c.dirfd) + "/" + name
}

// unlink removes name if it is still the socket made here.
func (c *Console) unlink(name string) {
	var st unix.Stat_t
	if unix.Fstatat(c.dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && [2]uint64{st.Dev, st.Ino} == c.id {
		unix.Unlinkat(c.dirfd, name, 0)
	}
}

// Close stops the console: no new sessions, the open ones closed, the
// socket removed; it returns once every goroutine of the console is gone.
func (c *Console) Close() error {
	c.closed.Do(func() {
		c.ln.Close()
		c.mu.Lock()
		for conn := range c.conns {
			conn.Close()
		}
		c.mu.Unlock()
		c.wg.Wait()
		c.unlink(c.name)
		unix.Close(c.dirfd)
		unix.Close(c.netfd)
	})
	return nil
}

// accept takes sessions until the listener closes.
func (c *Console) accept() {
	defer c.wg.Done()
	var pause time.Duration
	for {
		conn, err := c.ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			pause = min(max(2*pause, 5*time.Millisecond), time.Second)
			c.cfg.Log.Warn("mgmt: accept failed; retrying", "socket", c.cfg.Path, "err", err)
			time.Sleep(pause)
			continue
		}
		pause = 0
		who, err := peer(conn)
		if err != nil {
			c.cfg.Log.Warn("mgmt: no peer credentials", "socket", c.cfg.Path, "err", err)
			conn.Close()
			continue
		}
		c.mu.Lock()
		full := len(c.conns) >= MaxConns || c.users[who.UID] >= MaxUserConns
		if !full {
			c.conns[conn] = struct{}{}
			c.users[who.UID]++
			c.wg.Add(1)
		}
		c.mu.Unlock()
		if full {
			c.cfg.Log.Warn("mgmt: too many sessions; closing one", "socket", c.cfg.Path, "uid", who.UID, "max", MaxConns, "max of a user", MaxUserConns)
			conn.Close()
			continue
		}
		go c.session(conn, who)
	}
}

// session serves one connection until logout, EOF or an error.
func (c *Console) session(conn *net.UnixConn, who perm.Cred) {
	defer c.wg.Done()
	defer func() {
		c.mu.Lock()
		delete(c.conns, conn)
		if c.users[who.UID]--; c.users[who.UID] == 0 {
			delete(c.users, who.UID)
		}
		c.mu.Unlock()
		conn.Close()
	}()
	s := &session{c: c, conn: conn, who: who}
	if !s.write(c.banner() + Prompt) {
		return
	}
	r := bufio.NewReaderSize(conn, MaxLine+1)
	for {
		conn.SetReadDeadline(time.Now().Add(c.cfg.Idle))
		line, err := readLine(r)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			c.cfg.Log.Info("mgmt: closed an idle session", "socket", c.cfg.Path, "by", who, "idle", c.cfg.Idle)
			return
		}
		if err != nil && !errors.Is(err, errLong) {
			return
		}
		var out string
		var end bool
		if errors.Is(err, errLong) {
			out = reply(nil, errCode(syscall.EINVAL), false)
		} else {
			out, end = s.run(line)
		}
		if end {
			s.write(out + EndOfSession)
			if s.shutdown {
				c.shut.Do(func() {
					c.cfg.Log.Warn("mgmt: shutdown", "socket", c.cfg.Path, "by", who)
					c.cfg.Shutdown()
				})
			}
			return
		}
		if !s.write(out + Prompt) {
			return
		}
	}
}

var errLong = errors.New("command line too long")

// readLine reads one line of at most MaxLine bytes, without its newline;
// a longer one is read to its end and refused with errLong.
func readLine(r *bufio.Reader) (string, error) {
	b, err := r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		for errors.Is(err, bufio.ErrBufferFull) {
			_, err = r.ReadSlice('\n')
		}
		if err != nil {
			return "", err
		}
		return "", errLong
	}
	if err != nil {
		if err == io.EOF && len(b) > 0 {
			return string(b), nil
		}
		return "", err
	}
	b = b[:len(b)-1]
	if len(b) > 0 && b[len(b)-1] == '\r' {
		b = b[:len(b)-1]
	}
	if len(b) > MaxLine {
		return "", errLong
	}
	return string(b), nil
}

// peer returns the credentials of the process at the other end of conn.
func peer(conn *net.UnixConn) (perm.Cred, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return perm.Cred{}, err
	}
	var cred perm.Cred
	var perr error
	if err := raw.Control(func(fd uintptr) { _, cred, perr = perm.Peer(int(fd)) }); err != nil {
		return perm.Cred{}, err
	}
	return cred, perr
}

// canChange reports whether who may change the network: x on its file,
// as the kernel decides for who. A console that is not root cannot take
// another user's credentials to ask: only its own user may change.
func (c *Console) canChange(who perm.Cred) bool {
	if os.Geteuid() != 0 && who.UID != c.self.UID {
		return false
	}
	r, err := perm.Of(c.netfd, who)
	return err == nil && r.X
}

// banner is what a session gets first: vde_switch's two lines, the second
// naming the network this console serves.
func (c *Console) banner() string {
	return fmt.Sprintf("VDE switch V.%s\nipn console for %s\n", Version, c.cfg.Net.File().Name())
}

// dupFile returns a descriptor of f's file of its own (close-on-exec).
func dupFile(f *os.File) (int, error) {
	raw, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
	nfd := -1
	var derr error
	if err := raw.Control(func(fd uintptr) { nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, fmt.Errorf("dup: %w", derr)
	}
	return nfd, nil
}

// reply frames a command's answer as vde_switch does: the data lines
// between "0000 DATA END WITH '.'" and "." if the command prints, then
// the code line.
func reply(lines []string, code string, data bool) string {
	var b []byte
	if data {
		b = append(b, "0000 DATA END WITH '.'\n"...)
		for _, l := range lines {
			b = append(b, l...)
			b = append(b, '\n')
		}
		b = append(b, ".\n"...)
	}
	return string(append(b, code+"\n"...))
}

// errCode is the code line of an error: 1000 Success for nil, else 1 and
// the errno in three digits and its text, as vde_switch's strerror.
func errCode(err error) string {
	if err == nil {
		return "1000 Success"
	}
	var e syscall.Errno
	if !errors.As(err, &e) {
		e = syscall.EINVAL
	}
	if e == syscall.ENOPROTOOPT {
		e = syscall.ENOSYS // the policy has no such setting: not implemented here
	}
	return fmt.Sprintf("1%03d %s", int(e), strerrorC(e))
}

// strerrorC is glibc's text of e (Go's texts are lower-cased).
func strerrorC(e syscall.Errno) string {
	s := e.Error()
	if s == "" {
		return s
	}
	if s[0] >= 'a' && s[0] <= 'z' {
		s = string(s[0]-'a'+'A') + s[1:]
	}
	return s
}

// session is one connection's state.
type session struct {
	c        *Console
	conn     *net.UnixConn
	who      perm.Cred
	shutdown bool
}

// write sends s, giving a reader that reads nothing writeTimeout.
func (s *session) write(out string) bool {
	s.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
	_, err := io.WriteString(s.conn, out)
	return err == nil
}
