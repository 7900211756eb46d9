package daemon

// The holder: a small process, started by the daemon, that keeps the
// descriptors of the daemon's persistent device ports (a tap's, a grabbed
// interface's packet socket, and a dup of the network file's O_PATH
// descriptor) so that what the kernel holds outlives a crash of the
// daemon: the tap (in whatever namespace) and the packet socket stay, and
// the next daemon on the socket gets them back (holder_daemon.go).
//
// It is this very program re-executed (/proc/self/exe, with HolderChildEnv
// set: runHolderIfChild, from RunIfChild), in a session of its own, and it
// listens on SOCKET.holder, beside the daemon's control socket: a
// SOCK_SEQPACKET socket of mode 0600, bound in a fresh 0700 directory and
// renamed into place, so that it is never reachable by another user, and
// it serves only peers of its own effective uid (SO_PEERCRED, checked on
// every connection). One daemon connection at a time: a newer one replaces
// the older, which is told so (holderReplaced). It keeps what it holds when
// its daemon goes, and exits once it holds nothing and no daemon has been
// connected for holderIdle.
//
// The protocol, one packet each way per request but list (u8 opcodes):
//
//	holder → daemon, at connect: hello  u8 version, u32 pid
//	put   u8 idlen, id, metadata; 1..holderMaxFDs descriptors → u32 errno
//	drop  u8 idlen, id                                        → u32 errno
//	list                                   → entry (u8 idlen, id, metadata; its descriptors)
//	                                         for each, then end (u32 count)
//	holder → a replaced daemon: replaced
//
// A put of an id held already replaces it. The holder bounds what it keeps
// (holderMaxEntries entries of at most holderMaxFDs descriptors and
// holderMaxMeta bytes); the metadata is the daemon's, opaque here.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/internal/ctlsock"
	"github.com/ipn-project/ipn/internal/spec"
	"github.com/ipn-project/ipn/internal/throttle"
	"github.com/ipn-project/ipn/internal/wire"
)

// The holder's opcodes.
const (
	holderHello    = 1
	holderPut      = 2
	holderDrop     = 3
	holderList     = 4
	holderEntry    = 5
	holderEnd      = 6
	holderReplaced = 7
)

// Bounds of the holder.
const (
	holderVersion    = 1
	holderMaxEntries = 4096
	holderMaxFDs     = 4
	holderMaxID      = 255
	holderMaxMeta    = 4096
	holderMaxPacket  = 2 + holderMaxID + holderMaxMeta
	// holderIdle is how long a holder that holds nothing waits for a
	// daemon before it exits.
	holderIdle = 30 * time.Second
	// holderWriteTimeout bounds each of the holder's writes to its daemon.
	holderWriteTimeout = 5 * time.Second
	// holderLockWait bounds the wait of a new holder for an old one that
	// is exiting.
	holderLockWait = 2 * time.Second
)

// holderPath returns the holder's socket for the daemon's control socket.
func holderPath(socket string) string { return socket + ".holder" }

// holderCapable reports that this program becomes the holder when
// re-executed as one (RunIfChild ran in it), so that a daemon may start
// one; a program that never calls RunIfChild (a test of this package, a
// program serving without daemon/autostart) would run its own main
// instead, and its daemon holds nothing.
var holderCapable atomic.Bool

// runHolderIfChild turns the process into the holder, and exits, if a
// daemon re-executed it to be one; otherwise it notes that this program
// can be one.
func runHolderIfChild() {
	if os.Getenv(spec.HolderChildEnv) != "1" {
		holderCapable.Store(true)
		return
	}
	os.Unsetenv(spec.HolderChildEnv)
	// The log is what the daemon opened as stderr (SOCKET.holder.log);
	// a local user can make its peer refusals repeat, hence the throttle.
	log := slog.New(throttle.New(slog.NewTextHandler(os.Stderr, nil).WithAttrs([]slog.Attr{slog.Int("holder", os.Getpid())}),
		throttle.DefaultBurst, throttle.DefaultEvery))
	signal.Ignore(syscall.SIGHUP, syscall.SIGINT, syscall.SIGPIPE)
	os.Chdir("/") // pin no file system
	ready := os.NewFile(3, "ready")
	err := runHolder(holderPath(os.Getenv(spec.SocketEnv)), log, holderIdle, func() {
		ready.Write([]byte{1})
		ready.Close()
	})
	if err != nil {
		log.Error("holder", "err", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// runHolder serves as the holder at path until it has held nothing, with
// no daemon connected, for idle; ready is called once it accepts.
func runHolder(path string, log *slog.Logger, idle time.Duration, ready func()) error {
	if filepath.Base(path) == ".holder" {
		return fmt.Errorf("holder: no daemon socket: %w", syscall.EINVAL)
	}
	lock, err := lockHolder(path)
	if err != nil {
		return err
	}
	defer lock.Close()
	ln, id, err := listenPrivate(path)
	if err != nil {
		return err
	}
	h := &holder{log: log, ln: ln, euid: uint32(os.Geteuid()), idle: idle, done: make(chan struct{}), entries: map[string]*heldEntry{}}
	log.Info("holder serving", "socket", path, "uid", h.euid)
	if ready != nil {
		ready()
	}
	h.serve()
	// Unlink the socket while the lock is held, so that it is ours.
	var st unix.Stat_t
	if unix.Lstat(path, &st) == nil && idOf(&st) == id {
		os.Remove(path)
	}
	log.Info("holder exiting: it holds nothing and no daemon came", "after", idle)
	return nil
}

// lockHolder takes the lock that one holder per socket holds while it
// runs, waiting a little for one that is exiting.
func lockHolder(path string) (*os.File, error) {
	f, err := ctlsock.OpenBeside(path+".lock", os.O_RDWR)
	if err != nil {
		return nil, fmt.Errorf("holder lock: %w", err)
	}
	deadline := time.Now().Add(holderLockWait)
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) || time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("holder lock %s (another holder runs?): %w", path+".lock", err)
		}
		time.Sleep(20 * time.Millisecond) // an exiting holder lets go at once
	}
}

// listenPrivate listens on a SOCK_SEQPACKET socket at path of mode 0600,
// never reachable by another user: it is bound in a fresh directory of
// mode 0700, made 0600 there, and renamed to path (replacing a stale one).
// It returns the listener and the identity of the socket's file.
func listenPrivate(path string) (*net.UnixListener, fileID, error) {
	dir := filepath.Dir(path)
	if err := ctlsock.CheckDir(dir, false); err != nil {
		return nil, fileID{}, err
	}
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err == nil && st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return nil, fileID{}, fmt.Errorf("%s is %s, not a socket: refusing to replace it: %w", path, ctlsock.FileKind(st.Mode), syscall.ENOTSOCK)
	}
	tmp, err := os.MkdirTemp(dir, ".holder-") // mode 0700
	if err != nil {
		return nil, fileID{}, fmt.Errorf("holder socket: %w", err)
	}
	defer os.RemoveAll(tmp)
	p := filepath.Join(tmp, "s")
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: p, Net: "unixpacket"})
	if err != nil {
		return nil, fileID{}, fmt.Errorf("holder socket: %w", err)
	}
	ln.SetUnlinkOnClose(false)
	if err := os.Chmod(p, 0o600); err != nil {
		ln.Close()
		return nil, fileID{}, fmt.Errorf("holder socket: %w", err)
	}
	if err := unix.Lstat(p, &st); err != nil {
		ln.Close()
		return nil, fileID{}, fmt.Errorf("holder socket: %w", err)
	}
	if err := os.Rename(p, path); err != nil {
		ln.Close()
		return nil, fileID{}, fmt.Errorf("holder socket: %w", err)
	}
	return ln, idOf(&st), nil
}

// heldEntry is what the holder keeps for one id.
type heldEntry struct {
	id   string
	meta []byte
	fds  []int
}

// holder is a running holder.
type holder struct {
	log  *slog.Logger
	ln   *net.UnixListener
	euid uint32
	idle time.Duration
	done chan struct{} // closed when the holder is to exit

	mu      sync.Mutex
	entries map[string]*heldEntry // guarded by mu
	conn    *net.UnixConn         // guarded by mu; the daemon's, or nil
	timer   *time.Timer           // guarded by mu; the idle exit, when armed
	closing bool                  // guarded by mu
}

// serve accepts daemons until the holder is idle.
func (h *holder) serve() {
	h.mu.Lock()
	h.armIdleLocked()
	h.mu.Unlock()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		h.acceptLoop()
	}()
	<-h.done
	h.ln.Close()
	wg.Wait()
	h.mu.Lock()
	if h.conn != nil {
		h.conn.Close()
	}
	h.mu.Unlock()
}

// acceptLoop takes connections, serving those of the holder's own user
// and dropping the others unread.
func (h *holder) acceptLoop() {
	var pause time.Duration
	for {
		c, err := h.ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			pause = min(max(2*pause, 5*time.Millisecond), time.Second)
			h.log.Warn("accept failed; retrying", "err", err, "pause", pause)
			select {
			case <-time.After(pause):
			case <-h.done:
				return
			}
			continue
		}
		pause = 0
		cr, err := peerCred(c)
		if err != nil || cr.UID != h.euid {
			h.log.Warn("refusing a peer that is not the daemon's user", "peer", cr, "err", err)
			c.Close()
			continue
		}
		h.adopt(c, cr)
	}
}

// adopt makes c the daemon connection, replacing the older one.
func (h *holder) adopt(c *net.UnixConn, cr cred) {
	h.mu.Lock()
	if h.closing {
		h.mu.Unlock()
		c.Close()
		return
	}
	old := h.conn
	h.conn = c
	h.stopIdleLocked()
	h.mu.Unlock()
	if old != nil {
		old.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		wire.Send(old, []byte{holderReplaced})
		old.Close()
	}
	h.log.Info("daemon connected", "daemon", cr)
	hello := binary.LittleEndian.AppendUint32([]byte{holderHello, holderVersion}, uint32(os.Getpid()))
	c.SetWriteDeadline(time.Now().Add(holderWriteTimeout))
	if err := wire.Send(c, hello); err != nil {
		h.log.Warn("daemon gone at hello", "err", err)
	}
	go h.serveConn(c)
}

// serveConn answers the daemon on c until it goes; what the holder holds
// stays.
func (h *holder) serveConn(c *net.UnixConn) {
	buf := make([]byte, holderMaxPacket+1)
	for {
		pkt, fds, err := wire.Recv(c, buf)
		if err != nil {
			if !wire.IsEOF(err) && !errors.Is(err, net.ErrClosed) {
				h.log.Warn("daemon connection", "err", err)
			}
			break
		}
		if !h.answer(c, pkt, fds) {
			break
		}
	}
	c.Close()
	h.mu.Lock()
	if h.conn == c {
		h.conn = nil
		h.armIdleLocked()
	}
	n := len(h.entries)
	h.mu.Unlock()
	h.log.Info("daemon gone; keeping what it put", "entries", n)
}

// answer answers one request on c and reports whether to read on; it owns
// fds.
func (h *holder) answer(c *net.UnixConn, pkt []byte, fds []int) bool {
	op := pkt[0]
	if op == holderList {
		closeFDs(fds)
		return h.list(c) == nil
	}
	var err error
	switch op {
	case holderPut:
		err = h.put(pkt[1:], fds)
	case holderDrop:
		closeFDs(fds)
		err = h.drop(pkt[1:])
	default:
		closeFDs(fds)
		err = fmt.Errorf("holder op %d: %w", op, syscall.EINVAL)
	}
	c.SetWriteDeadline(time.Now().Add(holderWriteTimeout))
	return wire.Send(c, holderReply(op, err)) == nil
}

// holderReply is the answer to op: its errno, 0 for none.
func holderReply(op byte, err error) []byte {
	var errno uint32
	if err != nil {
		errno = uint32(wire.Errno(err))
		if errno == 0 {
			errno = uint32(syscall.EINVAL)
		}
	}
	return binary.LittleEndian.AppendUint32([]byte{op}, errno)
}

// splitID splits a request's body into its id and the rest.
func splitID(b []byte) (string, []byte, error) {
	if len(b) < 1 || int(b[0]) > len(b)-1 || b[0] == 0 {
		return "", nil, fmt.Errorf("holder request: bad id: %w", syscall.EINVAL)
	}
	return string(b[1 : 1+b[0]]), b[1+b[0]:], nil
}

// put keeps fds and the metadata under the id of body, replacing what the
// id held; it owns fds, closing them if it refuses them.
func (h *holder) put(body []byte, fds []int) error {
	id, meta, err := splitID(body)
	switch {
	case err != nil:
	case len(fds) == 0 || len(fds) > holderMaxFDs:
		err = fmt.Errorf("holder put %s: %d descriptors, want 1..%d: %w", id, len(fds), holderMaxFDs, syscall.EINVAL)
	case len(meta) > holderMaxMeta:
		err = fmt.Errorf("holder put %s: %d bytes of metadata, want at most %d: %w", id, len(meta), holderMaxMeta, syscall.EMSGSIZE)
	}
	if err != nil {
		closeFDs(fds)
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	old := h.entries[id]
	if old == nil && len(h.entries) >= holderMaxEntries {
		closeFDs(fds)
		return fmt.Errorf("holder put %s: it holds %d entries, the most: %w", id, len(h.entries), syscall.ENOSPC)
	}
	if old != nil {
		closeFDs(old.fds)
	}
	h.entries[id] = &heldEntry{id: id, meta: append([]byte(nil), meta...), fds: fds}
	h.stopIdleLocked()
	return nil
}

// drop closes what the id of body holds and forgets it.
func (h *holder) drop(body []byte) error {
	id, _, err := splitID(body)
	if err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	e := h.entries[id]
	if e == nil {
		return fmt.Errorf("holder drop %s: %w", id, syscall.ENOENT)
	}
	closeFDs(e.fds)
	delete(h.entries, id)
	h.armIdleLocked()
	return nil
}

// list sends every entry with its descriptors, in the order of their ids,
// then the end.
func (h *holder) list(c *net.UnixConn) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	ids := make([]string, 0, len(h.entries))
	for id := range h.entries {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	c.SetWriteDeadline(time.Now().Add(holderWriteTimeout))
	for _, id := range ids {
		e := h.entries[id]
		pkt := append(append([]byte{holderEntry, byte(len(id))}, id...), e.meta...)
		if err := wire.Send(c, pkt, e.fds...); err != nil {
			return err
		}
	}
	return wire.Send(c, binary.LittleEndian.AppendUint32([]byte{holderEnd}, uint32(len(ids))))
}

// armIdleLocked starts the idle exit if the holder holds nothing and no
// daemon is connected. Caller must hold h.mu.
func (h *holder) armIdleLocked() {
	if h.conn != nil || len(h.entries) != 0 || h.timer != nil || h.closing {
		return
	}
	h.timer = time.AfterFunc(h.idle, h.idleExit)
}

// stopIdleLocked stops the idle exit. Caller must hold h.mu.
func (h *holder) stopIdleLocked() {
	if h.timer != nil {
		h.timer.Stop()
		h.timer = nil
	}
}

// idleExit ends the holder if it is still idle.
func (h *holder) idleExit() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.conn != nil || len(h.entries) != 0 || h.closing {
		return
	}
	h.closing = true
	close(h.done)
}
