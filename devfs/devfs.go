// Package devfs shows IPN networks as device files: a FUSE file system in
// which each network is a file that processes open, read and write to
// take part in the network, as they would a character device.
//
// # Names
//
// A network's file is named by its path without the leading '/', with
// every other '/' written '_', and '_' and '%' written "%5F" and "%25":
// /tmp/chat is "tmp_chat", /tmp/a_b is "tmp_a%5Fb" and /tmp/a/b is
// "tmp_a_b". Names are unique and Path turns one back into its path.
//
// # Access
//
// A caller sees, and may open, only the networks whose file it can reach
// by its path. open(2) resolves the network's path with the caller's
// credentials (user, group, supplementary groups), as the caller's own
// open would, once, and asks the kernel, on that very file, for the rights
// the caller has (mode bits and ACLs): O_RDONLY needs r, O_WRONLY w,
// O_RDWR both; otherwise open fails with EACCES. The file system's process
// then joins the network of that file on the caller's behalf (its own
// rights bound the caller's): a read-only open is a receive-only node, a
// write-only open a send-only node, and close(2) leaves the network. A
// file's owner, group and mode are the network file's. One user may hold
// at most MaxOpenPerUser files open.
//
// Only a file system mounted by root serves other users (each with its
// own rights); one mounted by a user serves that user alone.
//
// # Reading and writing
//
// The files are streams (direct I/O; seeks succeed but offsets are
// ignored, since head -n1 seeks back over what it read past its line and
// complains on a file that cannot seek). Each read(2) returns exactly one
// message, blocking until one arrives (a signal interrupts it), and each
// write(2) sends its bytes as one message. Messages cross unchanged: a
// 4-byte message reads back as 4 bytes, and a trailing '\n' is part of
// the message it ends, so `echo hi > file` sends the 3 bytes "hi\n". A
// message longer than the read buffer is truncated, so read with a buffer
// of the network's MTU; a write longer than the MTU fails with EOVERFLOW,
// and an empty write sends nothing (the network carries no empty
// messages).
//
// # Big messages
//
// The kernel carries a read(2) or write(2) to the file system in requests
// of at most 128 KiB (FUSE's largest here). A network whose MTU is over
// SplitMTU (124 KiB, what one request carries whatever the buffer's
// alignment) has messages that need several: its files are streams
// without a file position (lseek fails with ESPIPE), so that each read(2)
// and write(2) starts at offset 0 and its later requests continue it. A
// read(2) then still returns one message, whole if its buffer holds it. A
// write(2) is still one message, sent when its last request shows it
// ended (one shorter than the most the kernel sends); when the write ends
// exactly at a request's end, which the file system cannot tell apart from
// one going on, the message is sent when the next write(2) on the file
// begins or the file is closed. A write over the MTU fails with EOVERFLOW:
// the kernel may report the bytes it had carried as a short write, and
// then the next write(2) on the file (a retry of the rest) fails with
// EOVERFLOW too, so that no part of it is sent.
//
// Each file opened for reading holds at most two message buffers of the
// MTU (one receiving, one being read), and a file of a big network opened
// for writing one more; the buffers of one user's open files are bounded
// by MaxBufferPerUser (open fails with EDQUOT beyond it).
//
// A file of a network whose MTU is over 4 MiB (up to 64 MiB, whose
// messages cross the data socket in fragments) is charged instead for the
// messages it holds, in buffers of their own size: each message received
// ahead, from when its first fragment arrives until a read(2) has taken
// it, and the message of the write(2) open, as it grows. Opening one never
// fails with EDQUOT; a message that would take the user past
// MaxBufferPerUser waits to be received until the user's other files
// give room back (read or close them), and a write(2) that would fails
// with EDQUOT, sending nothing. A message that alone is over the bound (in
// lines mode, one of 64 MiB and its newline) is dropped, and said so.
//
// With Options.Lines (ipn mount --lines) the files are for line tools
// instead: a '\n' is appended to a message that does not end with one, so
// that head -n1 and cat print one message per line (a truncated message
// loses it), and a write sends its bytes less one trailing '\n', so `echo
// hi > file` sends "hi" and a write of just "\n" sends nothing.
//
// # Poll
//
// poll(2), select(2) and epoll report a file readable only when a message
// is waiting for that open file (or the network is gone, so that a read
// returns end of file), and writable when it was opened for writing. Each
// file opened for reading has a goroutine that receives its messages
// ahead into a small queue, from which reads take them and which poll
// looks at; a poll that finds it empty is woken when a message arrives.
package devfs

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"bazil.org/fuse"
	fusefs "bazil.org/fuse/fs"
	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn"
	"github.com/ipn-project/ipn/internal/perm"
)

// ErrNoFUSE is returned by Mount when the system cannot mount FUSE file
// systems.
var ErrNoFUSE = errors.New("FUSE is not available: install fuse3 / load the fuse module")

// Name returns the name of the file of the network at path.
func Name(path string) string {
	p := strings.TrimPrefix(filepath.Clean(path), "/")
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		switch c := p[i]; c {
		case '/':
			b.WriteByte('_')
		case '_', '%':
			fmt.Fprintf(&b, "%%%02X", c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// Path returns the network path a file name stands for (Name's inverse),
// or false if name is not one Name makes.
func Path(name string) (string, bool) {
	var b strings.Builder
	b.WriteByte('/')
	for i := 0; i < len(name); i++ {
		switch c := name[i]; c {
		case '_':
			b.WriteByte('/')
		case '%':
			if i+2 >= len(name) {
				return "", false
			}
			switch name[i+1 : i+3] {
			case "5F":
				b.WriteByte('_')
			case "25":
				b.WriteByte('%')
			default:
				return "", false
			}
			i += 2
		default:
			b.WriteByte(c)
		}
	}
	p := b.String()
	if Name(p) != name {
		return "", false
	}
	return p, true
}

// MaxOpenPerUser is the most files one user may hold open in a file
// system; more opens fail with EMFILE.
const MaxOpenPerUser = 256

// listCache is how long the daemon's list of networks is reused, so that
// `ls -l` (a readdir and a lookup per file) asks the daemon once.
const listCache = 100 * time.Millisecond

// attrValid is how long the kernel may cache names and attributes.
const attrValid = time.Second

// queueLen is how many received messages an open file holds ahead of its
// reads (besides the one its receiving goroutine holds).
const queueLen = 1

// maxRequest is the most bytes one FUSE read or write request carries:
// bazil.org/fuse's max_write, and the kernel's 32 pages a request.
const maxRequest = 128 << 10

// SplitMTU is the longest message one FUSE request carries whatever the
// alignment of the caller's buffer (maxRequest less a page): files of
// networks with a larger MTU are streams whose messages span requests.
const SplitMTU = maxRequest - 4096

// MaxBufferPerUser bounds the message buffers of one user's open files:
// two of the MTU for a file opened for reading, one more for a file of a
// network over SplitMTU opened for writing (opens beyond it fail with
// EDQUOT); on a network whose MTU is over HugeMTU, the messages its files
// hold.
const MaxBufferPerUser = 64 << 20

// HugeMTU is the largest MTU whose files are charged for their buffers of
// the MTU when opened; a file of a network with a larger MTU is charged
// for the messages it holds (see the package documentation).
const HugeMTU = 4 << 20

// openStream is FOPEN_STREAM: the file has no position (bazil.org/fuse
// has no name for it).
const openStream fuse.OpenResponseFlags = 1 << 4

// Options are the choices of a file system.
type Options struct {
	// Lines makes the files line-oriented (see the package documentation):
	// reads end each message with '\n', writes strip one trailing '\n'.
	Lines bool
	// Rejoin makes each open file's socket re-join its network when the
	// daemon goes away (ipn.Socket.SetRejoin), instead of failing.
	Rejoin bool
}

// FS is the file system: its root directory and the files open in it.
type FS struct {
	nets []string // absolute paths of the networks shown; nil: all
	opts Options
	root *dirNode

	mu      sync.Mutex
	cached  []entry
	cacheAt time.Time
	nodes   map[string]*netNode // by network path: one Node per file
	open    map[*handle]struct{}
	perUser map[uint32]int   // open files by user
	bufUser map[uint32]int64 // message buffer bytes of open files, by user
	room    chan struct{}    // closed when a file gives bytes of bufUser back
	closed  bool
	server  *fusefs.Server // for poll wakeups; set by Mount
}

var _ fusefs.FS = (*FS)(nil)

// New returns a file system showing the networks at paths, or every
// network the daemon serves if there are none, with the options opts.
func New(paths []string, opts Options) (*FS, error) {
	f := &FS{opts: opts, open: map[*handle]struct{}{}, nodes: map[string]*netNode{}, perUser: map[uint32]int{}, bufUser: map[uint32]int64{}}
	for _, p := range paths {
		abs, err := filepath.Abs(p)
		if err != nil {
			return nil, err
		}
		f.nets = append(f.nets, abs)
	}
	f.root = &dirNode{fs: f}
	return f, nil
}

// Root returns the root directory.
func (f *FS) Root() (fusefs.Node, error) { return f.root, nil }

// entry is a network shown as a file.
type entry struct {
	name string
	info ipn.NetInfo
}

// entries returns the networks to show, sorted by name.
func (f *FS) entries() ([]entry, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cached != nil && time.Since(f.cacheAt) < listCache {
		return f.cached, nil
	}
	list, err := ipn.List("")
	if errors.Is(err, ipn.ErrNoDaemon) {
		list, err = nil, nil // no daemon, no networks: an empty directory
	}
	if err != nil {
		return nil, toErrno(err)
	}
	es := []entry{}
	for _, n := range list {
		if f.nets != nil && !slices.Contains(f.nets, n.Path) || !strings.HasPrefix(n.Path, "/") {
			continue
		}
		name := Name(n.Path)
		if name == "" || name == "." || len(name) > 255 {
			continue // no file name can hold it
		}
		es = append(es, entry{name: name, info: n})
	}
	sort.Slice(es, func(i, j int) bool { return es[i].name < es[j].name })
	f.cached, f.cacheAt = es, time.Now()
	return es, nil
}

// lookup returns the entry named name if the caller can reach its network
// by its path.
func (f *FS) lookup(name string, c perm.Cred) (entry, error) {
	e, err := f.entry(name)
	if err != nil || !reaches(c, e.info) {
		return entry{}, syscall.ENOENT
	}
	return e, nil
}

// entry returns the listed entry named name.
func (f *FS) entry(name string) (entry, error) {
	es, err := f.entries()
	if err != nil {
		return entry{}, err
	}
	i := sort.Search(len(es), func(i int) bool { return es[i].name >= name })
	if i == len(es) || es[i].name != name {
		return entry{}, syscall.ENOENT
	}
	return es[i], nil
}

// reaches reports whether c can reach the network file of info by its
// path: the lookup, with c's credentials, finds that very file.
func reaches(c perm.Cred, info ipn.NetInfo) bool {
	st, err := perm.Stat(c, info.Path)
	return err == nil && uint64(st.Dev) == info.Dev && st.Ino == info.Ino
}

// node returns the file of the network at path, the same each time.
func (f *FS) node(e entry) *netNode {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := f.nodes[e.info.Path]
	if n == nil {
		n = &netNode{fs: f, path: e.info.Path}
		f.nodes[e.info.Path] = n
	}
	n.info = e.info
	return n
}

// CloseAll leaves the networks of every open file (their reads return
// end of file) and refuses new opens: for unmounting.
func (f *FS) CloseAll() {
	f.mu.Lock()
	f.closed = true
	hs := make([]*handle, 0, len(f.open))
	for h := range f.open {
		hs = append(hs, h)
	}
	f.mu.Unlock()
	for _, h := range hs {
		h.s.Close()
	}
}

// inoOf returns a stable inode number for the network at path.
func inoOf(path string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(path))
	ino := h.Sum64() >> 1
	if ino < 2 {
		ino += 2 // never the root's
	}
	return ino
}

// callerOf returns the credentials of the process behind a request: its
// user and group, and the supplementary groups of the process (which is
// waiting for the answer, so its pid is its own).
func callerOf(h *fuse.Header) perm.Cred {
	c := perm.Cred{UID: h.Uid, GID: h.Gid}
	if h.Uid != 0 {
		c.Groups = procGroups(h.Pid)
	}
	return c
}

// dirNode is the root directory.
type dirNode struct {
	fs *FS
}

var (
	_ fusefs.Node                = (*dirNode)(nil)
	_ fusefs.NodeRequestLookuper = (*dirNode)(nil)
	_ fusefs.NodeOpener          = (*dirNode)(nil)
)

func (d *dirNode) Attr(ctx context.Context, attr *fuse.Attr) error {
	attr.Inode = 1
	attr.Mode = os.ModeDir | 0o755
	attr.Nlink = 2
	attr.Valid = attrValid
	return nil
}

// Lookup finds a network the caller can reach. Names are not cached by the
// kernel (EntryValid 0), so that each caller's lookup is its own.
func (d *dirNode) Lookup(ctx context.Context, req *fuse.LookupRequest, resp *fuse.LookupResponse) (fusefs.Node, error) {
	e, err := d.fs.lookup(req.Name, callerOf(&req.Header))
	if err != nil {
		return nil, err
	}
	n := d.fs.node(e)
	n.attr(&resp.Attr)
	resp.EntryValid = 0
	return n, nil
}

// Open opens the directory for the caller, who will list what it can
// reach.
func (d *dirNode) Open(ctx context.Context, req *fuse.OpenRequest, resp *fuse.OpenResponse) (fusefs.Handle, error) {
	resp.Flags |= fuse.OpenDirectIO
	return &dirHandle{fs: d.fs, caller: callerOf(&req.Header)}, nil
}

// dirHandle is the directory opened by one caller.
type dirHandle struct {
	fs     *FS
	caller perm.Cred
}

var _ fusefs.HandleReadDirAller = (*dirHandle)(nil)

func (d *dirHandle) ReadDirAll(ctx context.Context) ([]fuse.Dirent, error) {
	es, err := d.fs.entries()
	if err != nil {
		return nil, err
	}
	list := make([]fuse.Dirent, 0, len(es))
	for _, e := range es {
		if reaches(d.caller, e.info) {
			list = append(list, fuse.Dirent{Name: e.name, Type: fuse.DT_File, Inode: inoOf(e.info.Path)})
		}
	}
	return list, nil
}

// netNode is a network's file.
type netNode struct {
	fs   *FS
	path string
	info ipn.NetInfo // guarded by fs.mu; as last listed
}

var (
	_ fusefs.Node          = (*netNode)(nil)
	_ fusefs.NodeSetattrer = (*netNode)(nil)
	_ fusefs.NodeAccesser  = (*netNode)(nil)
	_ fusefs.NodeOpener    = (*netNode)(nil)
)

// Attr answers the network file's owner, group and mode, as the daemon
// lists them, as a file of size 0.
func (n *netNode) Attr(ctx context.Context, attr *fuse.Attr) error {
	if e, err := n.fs.entry(Name(n.path)); err == nil {
		n.fs.node(e) // the network's owner and mode as last listed
	}
	n.attr(attr)
	return nil
}

func (n *netNode) attr(attr *fuse.Attr) {
	n.fs.mu.Lock()
	info := n.info
	n.fs.mu.Unlock()
	attr.Inode = inoOf(n.path)
	attr.Mode = os.FileMode(info.Mode & 0o777)
	attr.Uid, attr.Gid = info.UID, info.GID
	attr.Nlink = 1
	attr.Size = 0
	attr.Valid = attrValid
}

// Setattr accepts truncation (of O_TRUNC: `echo hi > file`) and times, as
// a device does, and refuses to change the owner or mode. The attributes
// answered are the network file's (Attr).
func (n *netNode) Setattr(ctx context.Context, req *fuse.SetattrRequest, resp *fuse.SetattrResponse) error {
	if req.Valid.Mode() || req.Valid.Uid() || req.Valid.Gid() {
		return syscall.EPERM
	}
	return nil
}

// Access answers access(2) with the rights open checks.
func (n *netNode) Access(ctx context.Context, req *fuse.AccessRequest) error {
	fd, r, err := n.resolve(callerOf(&req.Header))
	if err != nil {
		return err
	}
	fd.Close()
	if req.Mask&4 != 0 && !r.R || req.Mask&2 != 0 && !r.W || req.Mask&1 != 0 {
		return syscall.EACCES
	}
	return nil
}

// resolve opens the network's file as the caller would (O_PATH, with the
// caller's credentials), checks that it is still this network's, and
// returns it with the caller's rights on it.
func (n *netNode) resolve(c perm.Cred) (*os.File, perm.Rights, error) {
	n.fs.mu.Lock()
	info := n.info
	n.fs.mu.Unlock()
	fd, err := perm.Open(c, n.path, unix.O_PATH)
	if err != nil {
		return nil, perm.Rights{}, toErrno(err)
	}
	f := os.NewFile(uintptr(fd), n.path)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || uint64(st.Dev) != info.Dev || st.Ino != info.Ino {
		f.Close()
		return nil, perm.Rights{}, syscall.ENOENT // another file now: not this network
	}
	r, err := perm.Of(fd, c)
	if err != nil {
		f.Close()
		return nil, perm.Rights{}, toErrno(err)
	}
	return f, r, nil
}

// procGroups returns the supplementary groups of process pid, from the
// Groups line of /proc/PID/status (none if it cannot be read).
func procGroups(pid uint32) []uint32 {
	f, err := os.Open("/proc/" + strconv.FormatUint(uint64(pid), 10) + "/status")
	if err != nil {
		return nil
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "Groups:")
		if !ok {
			continue
		}
		var gs []uint32
		for _, fld := range strings.Fields(rest) {
			if g, err := strconv.ParseUint(fld, 10, 32); err == nil {
				gs = append(gs, uint32(g))
			}
		}
		return gs
	}
	return nil
}

func (n *netNode) Open(ctx context.Context, req *fuse.OpenRequest, resp *fuse.OpenResponse) (fusefs.Handle, error) {
	var wantR, wantW bool
	switch uint32(req.Flags) & syscall.O_ACCMODE {
	case syscall.O_RDONLY:
		wantR = true
	case syscall.O_WRONLY:
		wantW = true
	case syscall.O_RDWR:
		wantR, wantW = true, true
	default:
		return nil, syscall.EINVAL
	}
	c := callerOf(&req.Header)
	// One lookup, as the caller; the check and the join are on the file
	// it found.
	file, r, err := n.resolve(c)
	if err != nil {
		return nil, err
	}
	defer file.Close()
	if wantR && !r.R || wantW && !r.W {
		return nil, syscall.EACCES
	}
	n.fs.mu.Lock()
	if n.fs.perUser[c.UID] >= MaxOpenPerUser {
		n.fs.mu.Unlock()
		return nil, syscall.EMFILE
	}
	n.fs.perUser[c.UID]++
	n.fs.mu.Unlock()
	h := &handle{s: nil, fs: n.fs, uid: c.UID, write: wantW, lines: n.fs.opts.Lines, quit: make(chan struct{})}
	fail := func(err error) (fusefs.Handle, error) {
		if h.s != nil {
			h.s.Close()
		}
		n.fs.mu.Lock()
		n.fs.perUser[c.UID]--
		n.fs.mu.Unlock()
		return nil, toErrno(err)
	}
	s, err := ipn.NewSocket(ipn.Any)
	if err != nil {
		return fail(err)
	}
	h.s = s
	if n.fs.opts.Rejoin {
		if err := s.SetRejoin(true); err != nil {
			return fail(err)
		}
	}
	if !wantW {
		if err := s.Shutdown(ipn.ShutWrite); err != nil {
			return fail(err)
		}
	}
	if !wantR {
		if err := s.Shutdown(ipn.ShutRead); err != nil {
			return fail(err)
		}
	}
	if err := s.SetDescription("devfs"); err != nil { // who opened it is the peer's, for managers
		return fail(err)
	}
	n.fs.mu.Lock()
	listed := n.info.MTU
	n.fs.mu.Unlock()
	if wantR && listed > HugeMTU {
		// The data socket reads each message into a buffer of its own
		// size (RecvFunc); the rings would copy it out of one of the MTU.
		s.SetFastPath(false)
	}
	if err := s.ConnectFile(file); err != nil {
		return fail(err)
	}
	// The mount's own rights on the network bound the caller's.
	if wantR && !s.CanRead() || wantW && !s.CanWrite() {
		return fail(syscall.EACCES)
	}
	mtu, err := s.MTU()
	if err != nil {
		return fail(fmt.Errorf("the network's MTU: %w", err))
	}
	h.mtu, h.split, h.huge = mtu, mtu > SplitMTU, mtu > HugeMTU
	if wantR && !h.huge {
		h.bufs += 2 * int64(mtu+1)
	}
	if wantW && h.split && !h.huge {
		h.bufs += int64(mtu + 1)
	}
	n.fs.mu.Lock()
	if n.fs.closed {
		n.fs.mu.Unlock()
		return fail(syscall.ENODEV)
	}
	if n.fs.bufUser[c.UID]+h.bufs > MaxBufferPerUser {
		held := n.fs.bufUser[c.UID]
		n.fs.mu.Unlock()
		log.Printf("devfs: user %d: open %s: %d bytes of message buffers held and %d more for an MTU of %d: over %d",
			c.UID, n.path, held, h.bufs, mtu, MaxBufferPerUser)
		return fail(syscall.EDQUOT)
	}
	n.fs.bufUser[c.UID] += h.bufs
	n.fs.open[h] = struct{}{}
	n.fs.mu.Unlock()
	if wantR {
		h.msgs = make(chan []byte, queueLen)
		h.free = make(chan []byte, 2)
		h.free <- nil // two buffers, made when first needed
		h.free <- nil
		h.eof = make(chan struct{})
		go h.receive()
	}
	// Direct I/O: every read and write reaches Read and Write, whatever
	// its size. Not OpenNonSeekable: head -n1 seeks back over what it
	// read past its line and complains if it cannot; seeks and offsets are
	// accepted and ignored. A network whose messages span requests makes
	// streams, whose requests' offsets say which read or write they
	// continue (see the package documentation).
	resp.Flags |= fuse.OpenDirectIO
	if h.split {
		resp.Flags |= openStream
	}
	return h, nil
}

// handle is an open file: a node of the network.
type handle struct {
	s     *ipn.Socket
	fs    *FS
	uid   uint32 // the user who opened it
	write bool   // opened for writing
	lines bool   // Options.Lines: add and strip newlines

	mtu   int   // the network's
	split bool  // messages span requests: a stream (mtu > SplitMTU)
	huge  bool  // charged for the messages it holds (mtu > HugeMTU)
	bufs  int64 // message buffer bytes charged to the user at open
	held  int64 // guarded by fs.mu: of a huge file, the bytes its messages hold

	// Of a file opened for reading: messages received ahead (in lines
	// mode, each with its newline), each in one of the file's two
	// buffers, which go back to free once read; eof is closed when
	// receiving has ended (after the last message is queued).
	msgs chan []byte
	free chan []byte // nil: a buffer not made yet
	eof  chan struct{}
	quit chan struct{} // closed by Release

	// Of a split file: the message a read(2) is reading (cur[:curOff]
	// returned so far), and the one a write(2) is writing (pend) and the
	// overflow of the last (a retry of its rest fails too).
	rmu      sync.Mutex
	cur      []byte // guarded by rmu
	curOff   int    // guarded by rmu
	wmu      sync.Mutex
	pend     []byte // guarded by wmu: nil when no write is open
	wbuf     []byte // guarded by wmu: pend's buffer, of the MTU, made once (of a huge file: mapped for each write)
	wcharged int64  // guarded by wmu: of a huge file, the bytes of wbuf charged
	overflow error  // guarded by wmu: why the last write(2) was cut short (EOVERFLOW, EDQUOT), or nil

	mu       sync.Mutex
	wakeup   *fuse.PollWakeup // a poll to wake when a message arrives
	released bool
}

var (
	_ fusefs.HandleReader   = (*handle)(nil)
	_ fusefs.HandleWriter   = (*handle)(nil)
	_ fusefs.HandleReleaser = (*handle)(nil)
	_ fusefs.HandlePoller   = (*handle)(nil)
	_ fusefs.HandleFlusher  = (*handle)(nil)
)

// receive receives the messages of the file into h.msgs until the socket
// is closed or fails, each into a free buffer of the file.
func (h *handle) receive() {
	defer func() {
		close(h.eof)
		h.wake()
	}()
	for {
		var buf []byte
		var n int
		var flags ipn.MsgFlags
		var err error
		if h.huge {
			// A buffer of the message's size, charged from when it
			// comes (waiting for room) until a read took it.
			buf, flags, err = h.s.RecvFunc(h.alloc)
			n = len(buf)
			if err == nil && buf == nil {
				select {
				case <-h.quit:
					return
				default:
					continue // over the bound by itself: dropped
				}
			}
		} else {
			select {
			case buf = <-h.free:
			case <-h.quit:
				return
			}
			if buf == nil {
				buf = make([]byte, h.mtu+1) // +1: the newline of lines mode
			}
			n, flags, err = h.s.Recv(buf[:h.mtu])
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				h.mu.Lock()
				released := h.released
				h.mu.Unlock()
				if !released {
					log.Printf("devfs: receive: %v", err)
				}
			}
			return
		}
		if flags&ipn.MsgOOB != 0 {
			h.done(buf) // not asked for; skip
			continue
		}
		msg := buf[:n]
		if h.lines && (n == 0 || msg[n-1] != '\n') {
			msg = append(msg, '\n')
		}
		select {
		case h.msgs <- msg:
		case <-h.quit:
			return
		}
		h.wake()
	}
}

// done gives a message's buffer back to the receiver, or, of a huge file,
// its bytes back to the user's bound.
func (h *handle) done(msg []byte) {
	if h.huge {
		h.give(int64(cap(msg)))
		return
	}
	h.free <- msg[:0]
}

// alloc is a huge file's RecvFunc: a buffer of size bytes (one more for
// lines mode's newline), charged to the user once there is room; nil if
// the file is released meanwhile, or if the message alone is over the
// bound.
func (h *handle) alloc(size int) []byte {
	n := size
	if h.lines {
		n++
	}
	if int64(n) > MaxBufferPerUser {
		log.Printf("devfs: user %d: a message of %d bytes is over the bound on message buffers, %d: dropped", h.uid, size, MaxBufferPerUser)
		return nil
	}
	if !h.take(int64(n), true) {
		return nil
	}
	return make([]byte, size, n)
}

// take charges n bytes to the user, waiting for room if wait (until the
// file is released), and reports whether it did.
func (h *handle) take(n int64, wait bool) bool {
	fs := h.fs
	for {
		fs.mu.Lock()
		if fs.bufUser[h.uid]+n <= MaxBufferPerUser {
			fs.bufUser[h.uid] += n
			h.held += n
			fs.mu.Unlock()
			return true
		}
		if fs.room == nil {
			fs.room = make(chan struct{})
		}
		room := fs.room
		fs.mu.Unlock()
		if !wait {
			return false
		}
		select {
		case <-room:
		case <-h.quit:
			return false
		}
	}
}

// give gives back n bytes that take charged (no more than the file holds),
// waking those that wait for room.
func (h *handle) give(n int64) {
	fs := h.fs
	fs.mu.Lock()
	defer fs.mu.Unlock()
	n = min(n, h.held)
	if n <= 0 {
		return
	}
	h.held -= n
	if fs.bufUser[h.uid] -= n; fs.bufUser[h.uid] <= 0 {
		delete(fs.bufUser, h.uid)
	}
	if fs.room != nil {
		close(fs.room)
		fs.room = nil
	}
}

// wake wakes the poll waiting for the file, if any.
func (h *handle) wake() {
	h.mu.Lock()
	w := h.wakeup
	h.wakeup = nil
	if h.released {
		w = nil
	}
	h.mu.Unlock()
	if w == nil {
		return
	}
	h.fs.mu.Lock()
	srv := h.fs.server
	h.fs.mu.Unlock()
	if srv != nil {
		srv.NotifyPollWakeup(*w)
	}
}

// Read returns one message, blocking until one arrives or the request is
// interrupted. In a split file, a request at offset 0 begins a read(2)
// and takes a message; one further on continues the read(2) it follows.
func (h *handle) Read(ctx context.Context, req *fuse.ReadRequest, resp *fuse.ReadResponse) error {
	if h.msgs == nil {
		return syscall.EBADF
	}
	if h.split {
		h.rmu.Lock()
		defer h.rmu.Unlock()
		if req.Offset > 0 {
			// The rest of the message this read(2) reads; none ends it.
			if h.cur != nil && req.Offset == int64(h.curOff) {
				part := h.cur[h.curOff:min(len(h.cur), h.curOff+req.Size)]
				resp.Data = append(resp.Data[:0], part...)
				h.curOff += len(part)
				if len(part) < req.Size {
					h.done(h.cur)
					h.cur = nil
				}
			}
			return nil
		}
		if h.cur != nil { // the rest of the last message: truncated
			h.done(h.cur)
			h.cur = nil
		}
	}
	var msg []byte
	select {
	case msg = <-h.msgs:
	case <-h.eof:
		select {
		case msg = <-h.msgs:
		default:
			return nil // end of file
		}
	case <-ctx.Done():
		return syscall.EINTR
	}
	// A message longer than the read is truncated (in a split file, when
	// the next read(2) begins).
	n := min(len(msg), req.Size)
	resp.Data = append(resp.Data[:0], msg[:n]...)
	if h.split && n == req.Size {
		h.cur, h.curOff = msg, n // the read(2) may go on
	} else {
		h.done(msg)
	}
	return nil
}

// Write sends data as one message, as it is (in lines mode, less one
// trailing newline). In a split file, a request at offset 0 begins a
// write(2) (sending the last one's message if it was left open); one
// further on continues it; a request shorter than the kernel's largest
// ends it.
func (h *handle) Write(ctx context.Context, req *fuse.WriteRequest, resp *fuse.WriteResponse) error {
	if !h.split {
		if err := h.send(req.Data); err != nil {
			return err
		}
		resp.Size = len(req.Data)
		return nil
	}
	h.wmu.Lock()
	defer h.wmu.Unlock()
	limit := h.mtu
	if h.lines {
		limit++ // the newline stripped
	}
	// A request the kernel cut at its largest may be followed by more:
	// at offset 0 that is maxRequest less up to a page (the buffer's
	// alignment), further on maxRequest.
	last := req.Offset > 0 && len(req.Data) < maxRequest || req.Offset == 0 && len(req.Data) <= SplitMTU
	if req.Offset == 0 {
		err := h.sendPending()
		if err := h.overflow; err != nil {
			// The rest of a write over the MTU (or the bound), written
			// again: refused.
			h.overflow = nil
			return err
		}
		if err != nil {
			return err
		}
		if last { // a whole write in one request: no copy
			if len(req.Data) > limit {
				return syscall.EOVERFLOW
			}
			if err := h.send(req.Data); err != nil {
				return err
			}
			resp.Size = len(req.Data)
			return nil
		}
		if h.huge {
			if err := h.mapWbuf(limit); err != nil {
				return err
			}
		} else if h.wbuf == nil {
			h.wbuf = make([]byte, 0, limit)
		}
		h.pend = h.wbuf[:0]
	} else if h.pend == nil || req.Offset != int64(len(h.pend)) {
		return syscall.EINVAL // not the rest of the write open
	}
	if len(h.pend)+len(req.Data) > limit {
		h.pend, h.overflow = nil, syscall.EOVERFLOW
		h.dropWbuf()
		return syscall.EOVERFLOW
	}
	if need := int64(len(h.pend) + len(req.Data)); h.huge && need > h.wcharged {
		// The write's pages are charged as it fills them, a MiB at a
		// time: past the user's bound, it fails and sends nothing.
		step := min(int64(limit), (need+wcharge-1)/wcharge*wcharge)
		if !h.take(step-h.wcharged, false) {
			log.Printf("devfs: user %d: a write of over %d bytes: the user's message buffers would pass %d", h.uid, len(h.pend), MaxBufferPerUser)
			h.pend, h.overflow = nil, syscall.EDQUOT
			h.dropWbuf()
			return syscall.EDQUOT
		}
		h.wcharged = step
	}
	h.pend = append(h.pend, req.Data...)
	resp.Size = len(req.Data)
	if last {
		return h.sendPending()
	}
	return nil
}

// sendPending sends the message of the write(2) open, if any (Send copies
// it: its buffer is free again); the caller holds wmu.
func (h *handle) sendPending() error {
	msg := h.pend
	h.pend = nil
	if msg == nil {
		return nil
	}
	err := h.send(msg)
	h.dropWbuf()
	return err
}

// wcharge is the step by which a huge file's write buffer is charged.
const wcharge = 1 << 20

// mapWbuf gives a huge file a write buffer of size bytes, if it has none:
// a private anonymous mapping, whose pages the kernel gives as the write
// fills them, so that it holds what the write has, not the MTU; the caller
// holds wmu.
func (h *handle) mapWbuf(size int) error {
	if h.wbuf != nil {
		return nil
	}
	b, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		log.Printf("devfs: a write buffer of %d bytes: %v", size, err)
		return syscall.ENOMEM
	}
	h.wbuf = b[:0]
	return nil
}

// dropWbuf unmaps a huge file's write buffer, made for each write(2), and
// gives back its charge; the caller holds wmu, and nothing refers to the
// buffer any more.
func (h *handle) dropWbuf() {
	if !h.huge || h.wbuf == nil {
		return
	}
	h.give(h.wcharged)
	h.wcharged = 0
	unix.Munmap(h.wbuf[:cap(h.wbuf)])
	h.wbuf = nil
}

// send sends msg as one message (in lines mode, less one trailing
// newline); an empty one is not sent.
func (h *handle) send(msg []byte) error {
	if h.lines && len(msg) > 0 && msg[len(msg)-1] == '\n' {
		msg = msg[:len(msg)-1]
	}
	if len(msg) == 0 {
		return nil
	}
	if err := h.s.Send(msg); err != nil {
		return toErrno(err)
	}
	return nil
}

// Flush sends the message of a write(2) left open: close(2) ends it.
func (h *handle) Flush(ctx context.Context, req *fuse.FlushRequest) error {
	if !h.split {
		return nil
	}
	h.wmu.Lock()
	defer h.wmu.Unlock()
	return h.sendPending()
}

// Poll reports the file readable when a message is queued for it (or it
// is at end of file) and writable when it was opened for writing; if it
// is not readable, the poll is woken when a message arrives.
func (h *handle) Poll(ctx context.Context, req *fuse.PollRequest, resp *fuse.PollResponse) error {
	if h.write {
		resp.REvents |= fuse.PollOut | fuse.PollWriteNormal
	}
	if h.msgs == nil {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	ready := len(h.msgs) > 0
	if !ready {
		select {
		case <-h.eof:
			ready = true
		default:
		}
	}
	if ready {
		resp.REvents |= fuse.PollIn | fuse.PollReadNormal
	} else if w, ok := req.Wakeup(); ok {
		h.wakeup = &w
	}
	return nil
}

// Release leaves the network; a second Release does nothing.
func (h *handle) Release(ctx context.Context, req *fuse.ReleaseRequest) error {
	h.mu.Lock()
	if h.released {
		h.mu.Unlock()
		return nil
	}
	h.released = true
	h.wakeup = nil
	h.mu.Unlock()
	h.fs.mu.Lock()
	delete(h.fs.open, h)
	if h.fs.perUser[h.uid]--; h.fs.perUser[h.uid] <= 0 {
		delete(h.fs.perUser, h.uid)
	}
	if h.fs.bufUser[h.uid] -= h.bufs; h.fs.bufUser[h.uid] <= 0 {
		delete(h.fs.bufUser, h.uid)
	}
	h.fs.mu.Unlock()
	h.Flush(ctx, nil) // a write left open, if the file was not flushed
	close(h.quit)
	h.s.Close()
	if h.huge {
		// What the file held: the messages received ahead, unread.
		if h.eof != nil {
			<-h.eof
		}
		h.fs.mu.Lock()
		held := h.held
		h.fs.mu.Unlock()
		h.give(held)
	}
	return nil
}

// toErrno returns the errno err carries, EIO if none.
func toErrno(err error) syscall.Errno {
	var e syscall.Errno
	switch {
	case err == nil:
		return 0
	case errors.As(err, &e):
		return e
	case errors.Is(err, os.ErrNotExist):
		return syscall.ENOENT
	case errors.Is(err, net.ErrClosed):
		return syscall.EBADF
	}
	return syscall.EIO
}

// Server is a mounted file system.
type Server struct {
	FS  *FS
	Dir string

	conn *fuse.Conn
	done chan struct{} // closed when serving ends
	err  error         // of serving, once done is closed
}

// Mount mounts fsys at dir through fusermount3 (Debian's fuse3). As root
// it lets every user in (each lookup and open is the user's own, as the
// package documentation says); otherwise only the caller gets in. It fails
// with ErrNoFUSE (wrapped) when FUSE or fusermount3 is missing.
func Mount(dir string, fsys *FS, debug bool) (*Server, error) {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return nil, fmt.Errorf("%w (%v)", ErrNoFUSE, err)
	}
	if _, err := exec.LookPath("fusermount3"); err != nil {
		return nil, fmt.Errorf("%w (%v)", ErrNoFUSE, err)
	}
	opts := []fuse.MountOption{fuse.FSName("ipn"), fuse.Subtype("ipn")}
	if os.Geteuid() == 0 {
		opts = append(opts, fuse.AllowOther())
	}
	conn, err := fuse.Mount(dir, opts...)
	if err != nil {
		msg := err.Error()
		if strings.Contains(msg, "/dev/fuse") || strings.Contains(msg, "fusermount") ||
			errors.Is(err, syscall.ENODEV) {
			return nil, fmt.Errorf("%w (%v)", ErrNoFUSE, err)
		}
		return nil, err
	}
	cfg := &fusefs.Config{Debug: func(any) {}}
	if debug {
		cfg.Debug = func(msg any) { log.Print(msg) }
	}
	srv := fusefs.New(conn, cfg)
	fsys.mu.Lock()
	fsys.server = srv
	fsys.mu.Unlock()
	s := &Server{FS: fsys, Dir: dir, conn: conn, done: make(chan struct{})}
	go func() {
		s.err = srv.Serve(fsys)
		conn.Close()
		close(s.done)
	}()
	return s, nil
}

// Wait waits until the file system is unmounted (and no longer served)
// and returns the error serving it ended with, if any.
func (s *Server) Wait() error {
	<-s.done
	return s.err
}

// Unmount unmounts the file system; it fails if it is busy.
func (s *Server) Unmount() error {
	return fuse.Unmount(s.Dir)
}

// Stop leaves the networks of the open files and unmounts, lazily (the
// mount goes once its files are closed) if it is still busy after a few
// tries.
func (s *Server) Stop() error {
	s.FS.CloseAll()
	var err error
	for range 20 {
		if err = s.Unmount(); err == nil {
			s.Wait()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	if os.Geteuid() == 0 {
		if lerr := syscall.Unmount(s.Dir, syscall.MNT_DETACH); lerr == nil {
			return nil
		}
	} else if out, lerr := exec.Command("fusermount3", "-u", "-z", s.Dir).CombinedOutput(); lerr == nil {
		return nil
	} else {
		err = fmt.Errorf("%v; fusermount3 -u -z: %v %s", err, lerr, out)
	}
	return fmt.Errorf("unmount %s: %w", s.Dir, err)
}
