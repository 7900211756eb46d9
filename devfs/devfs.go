// Package devfs shows IPN networks as device files: a FUSE file system in
// which each network is a file that processes open, read and write to
// take part in the network, as they would a character device.
//
// # Names
//
// A network's file is named by its path without the leading '/' and with
// every other '/' replaced by '_': /tmp/chat is "tmp_chat". When two paths
// give the same name (/tmp/a_b and /tmp/a/b), the one first in sorted order
// wins and the other is not shown.
//
// # Access
//
// A file's owner, group and mode are the network file's. open(2) is checked
// against them with the caller's user, group and supplementary groups, as
// the daemon checks a process that joins: the owner's bits, else the
// group's bits if the caller's group or one of its supplementary groups is
// the file's, else the others' bits; root may read and write anything.
// O_RDONLY needs r, O_WRONLY w, O_RDWR both; otherwise open fails with
// EACCES. The file system's process then joins the network on the
// caller's behalf: a read-only open is a receive-only node, a write-only
// open a send-only node, and close(2) leaves the network.
//
// # Reading and writing
//
// The files are streams (direct I/O; seeks succeed but offsets are
// ignored, since head -n1 seeks back over what it read past its line and
// complains on a file that cannot seek). Each read(2) returns
// exactly one message, blocking until one arrives (a signal interrupts
// it). A '\n' is appended to a message that does not end with one, so that
// line tools (head -n1, cat) print one message per line; a message longer
// than the read buffer is truncated (and the added newline lost). Each
// write(2) sends one message, less one trailing '\n' if it has one (as ipn
// cat strips a line's), so `echo hi > file` sends "hi"; a write of just
// "\n" sends nothing. A message longer than the network's MTU fails with
// EOVERFLOW.
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

	"github.com/ipn-project/ipn"
	"github.com/ipn-project/ipn/internal/perm"
)

// ErrNoFUSE is returned by Mount when the system cannot mount FUSE file
// systems.
var ErrNoFUSE = errors.New("FUSE is not available: install fuse3 / load the fuse module")

// Name returns the name of the file of the network at path.
func Name(path string) string {
	return strings.ReplaceAll(strings.TrimPrefix(filepath.Clean(path), "/"), "/", "_")
}

// listCache is how long the daemon's list of networks is reused, so that
// `ls -l` (a readdir and a lookup per file) asks the daemon once.
const listCache = 100 * time.Millisecond

// attrValid is how long the kernel may cache names and attributes.
const attrValid = time.Second

// queueLen is how many received messages an open file holds ahead of its
// reads (besides the one its receiving goroutine holds).
const queueLen = 1

// FS is the file system: its root directory and the files open in it.
type FS struct {
	nets []string // absolute paths of the networks shown; nil: all
	root *dirNode

	mu      sync.Mutex
	cached  []entry
	cacheAt time.Time
	nodes   map[string]*netNode // by network path: one Node per file
	open    map[*handle]struct{}
	closed  bool
	server  *fusefs.Server // for poll wakeups; set by Mount
}

var _ fusefs.FS = (*FS)(nil)

// New returns a file system showing the networks at paths, or every
// network the daemon serves if there are none.
func New(paths []string) (*FS, error) {
	f := &FS{open: map[*handle]struct{}{}, nodes: map[string]*netNode{}}
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
	name, path string
}

// entries returns the networks to show, sorted by name.
func (f *FS) entries() ([]entry, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cached != nil && time.Since(f.cacheAt) < listCache {
		return f.cached, nil
	}
	list, err := ipn.List("")
	if err != nil {
		return nil, toErrno(err)
	}
	paths := make([]string, 0, len(list))
	for _, n := range list {
		if f.nets == nil || slices.Contains(f.nets, n.Path) {
			paths = append(paths, n.Path)
		}
	}
	sort.Strings(paths)
	seen := map[string]bool{}
	es := []entry{}
	for _, p := range paths {
		name := Name(p)
		if name == "" || name == "." || seen[name] {
			continue
		}
		seen[name] = true
		es = append(es, entry{name: name, path: p})
	}
	sort.Slice(es, func(i, j int) bool { return es[i].name < es[j].name })
	f.cached, f.cacheAt = es, time.Now()
	return es, nil
}

// node returns the file of the network at path, the same each time.
func (f *FS) node(path string) *netNode {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := f.nodes[path]
	if n == nil {
		n = &netNode{fs: f, path: path}
		f.nodes[path] = n
	}
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

// dirNode is the root directory.
type dirNode struct {
	fs *FS
}

var (
	_ fusefs.Node                = (*dirNode)(nil)
	_ fusefs.NodeRequestLookuper = (*dirNode)(nil)
	_ fusefs.HandleReadDirAller  = (*dirNode)(nil)
)

func (d *dirNode) Attr(ctx context.Context, attr *fuse.Attr) error {
	attr.Inode = 1
	attr.Mode = os.ModeDir | 0o755
	attr.Nlink = 2
	attr.Valid = attrValid
	return nil
}

func (d *dirNode) Lookup(ctx context.Context, req *fuse.LookupRequest, resp *fuse.LookupResponse) (fusefs.Node, error) {
	es, err := d.fs.entries()
	if err != nil {
		return nil, err
	}
	for _, e := range es {
		if e.name != req.Name {
			continue
		}
		if err := statAttr(e.path, &resp.Attr); err != nil {
			return nil, err
		}
		resp.EntryValid = attrValid
		return d.fs.node(e.path), nil
	}
	return nil, syscall.ENOENT
}

func (d *dirNode) ReadDirAll(ctx context.Context) ([]fuse.Dirent, error) {
	es, err := d.fs.entries()
	if err != nil {
		return nil, err
	}
	list := make([]fuse.Dirent, 0, len(es))
	for _, e := range es {
		list = append(list, fuse.Dirent{Name: e.name, Type: fuse.DT_File, Inode: inoOf(e.path)})
	}
	return list, nil
}

// statAttr fills attr with the owner, group, mode and times of the network
// file at path, as a regular file of size 0.
func statAttr(path string, attr *fuse.Attr) error {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return toErrno(err)
	}
	attr.Inode = inoOf(path)
	attr.Mode = os.FileMode(st.Mode & 0o777)
	attr.Uid, attr.Gid = st.Uid, st.Gid
	attr.Nlink = 1
	attr.Size = 0
	attr.Atime = time.Unix(st.Atim.Sec, st.Atim.Nsec)
	attr.Mtime = time.Unix(st.Mtim.Sec, st.Mtim.Nsec)
	attr.Ctime = time.Unix(st.Ctim.Sec, st.Ctim.Nsec)
	attr.Valid = attrValid
	return nil
}

// netNode is a network's file.
type netNode struct {
	fs   *FS
	path string
}

var (
	_ fusefs.Node          = (*netNode)(nil)
	_ fusefs.NodeSetattrer = (*netNode)(nil)
	_ fusefs.NodeAccesser  = (*netNode)(nil)
	_ fusefs.NodeOpener    = (*netNode)(nil)
)

func (n *netNode) Attr(ctx context.Context, attr *fuse.Attr) error {
	return statAttr(n.path, attr)
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
	r, w, err := n.rights(&req.Header)
	if err != nil {
		return err
	}
	if req.Mask&4 != 0 && !r || req.Mask&2 != 0 && !w || req.Mask&1 != 0 {
		return syscall.EACCES
	}
	return nil
}

// rights returns whether the caller of the request may read and write the
// network.
func (n *netNode) rights(caller *fuse.Header) (r, w bool, err error) {
	var st syscall.Stat_t
	if err := syscall.Stat(n.path, &st); err != nil {
		return false, false, toErrno(err)
	}
	var groups []uint32
	if caller.Uid != 0 && caller.Uid != st.Uid && caller.Gid != st.Gid {
		groups = procGroups(caller.Pid)
	}
	r, w = access(st.Uid, st.Gid, st.Mode, caller.Uid, caller.Gid, groups)
	return r, w, nil
}

// access returns the read and write rights of user uid (group gid,
// supplementary groups) on a file with owner fuid, group fgid and mode, as
// the daemon grants them.
func access(fuid, fgid, mode, uid, gid uint32, groups []uint32) (r, w bool) {
	r, w, _ = perm.Rights(fuid, fgid, mode, uid, gid, groups)
	return r, w
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
	r, w, err := n.rights(&req.Header)
	if err != nil {
		return nil, err
	}
	if wantR && !r || wantW && !w {
		return nil, syscall.EACCES
	}
	s, err := ipn.NewSocket(ipn.Any)
	if err != nil {
		return nil, toErrno(err)
	}
	fail := func(err error) (fusefs.Handle, error) {
		s.Close()
		return nil, toErrno(err)
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
	if err := s.SetDescription("devfs"); err != nil {
		return fail(err)
	}
	if err := s.Connect(n.path); err != nil {
		return fail(err)
	}
	// The mount's own rights on the network bound the caller's.
	if wantR && !s.CanRead() || wantW && !s.CanWrite() {
		return fail(syscall.EACCES)
	}
	mtu, err := s.MTU()
	if err != nil || mtu < 1 {
		mtu = 65536
	}
	h := &handle{s: s, fs: n.fs, write: wantW, quit: make(chan struct{})}
	n.fs.mu.Lock()
	if n.fs.closed {
		n.fs.mu.Unlock()
		return fail(syscall.ENODEV)
	}
	n.fs.open[h] = struct{}{}
	n.fs.mu.Unlock()
	if wantR {
		h.msgs = make(chan []byte, queueLen)
		h.eof = make(chan struct{})
		go h.receive(mtu)
	}
	// Direct I/O: every read and write reaches Read and Write, whatever
	// its size. Not OpenNonSeekable: head -n1 seeks back over what it
	// read past its line and complains if it cannot; seeks and offsets are
	// accepted and ignored.
	resp.Flags |= fuse.OpenDirectIO
	return h, nil
}

// handle is an open file: a node of the network.
type handle struct {
	s     *ipn.Socket
	fs    *FS
	write bool // opened for writing

	// Of a file opened for reading: messages received ahead, each with
	// its newline; eof is closed when receiving has ended (after the last
	// message is queued).
	msgs chan []byte
	eof  chan struct{}
	quit chan struct{} // closed by Release

	mu       sync.Mutex
	wakeup   *fuse.PollWakeup // a poll to wake when a message arrives
	released bool
}

var (
	_ fusefs.HandleReader   = (*handle)(nil)
	_ fusefs.HandleWriter   = (*handle)(nil)
	_ fusefs.HandleReleaser = (*handle)(nil)
	_ fusefs.HandlePoller   = (*handle)(nil)
)

// receive receives the messages of the file into h.msgs until the socket
// is closed or fails.
func (h *handle) receive(mtu int) {
	defer func() {
		close(h.eof)
		h.wake()
	}()
	buf := make([]byte, mtu+1)
	for {
		n, flags, err := h.s.Recv(buf)
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
			continue // not asked for; skip
		}
		msg := make([]byte, n, n+1)
		copy(msg, buf[:n])
		if n == 0 || msg[n-1] != '\n' {
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
// interrupted.
func (h *handle) Read(ctx context.Context, req *fuse.ReadRequest, resp *fuse.ReadResponse) error {
	if h.msgs == nil {
		return syscall.EBADF
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
	// A message longer than the read is truncated.
	resp.Data = append(resp.Data[:0], msg[:min(len(msg), req.Size)]...)
	return nil
}

// Write sends data as one message, less one trailing newline.
func (h *handle) Write(ctx context.Context, req *fuse.WriteRequest, resp *fuse.WriteResponse) error {
	msg := req.Data
	if len(msg) > 0 && msg[len(msg)-1] == '\n' {
		msg = msg[:len(msg)-1]
	}
	if len(msg) > 0 {
		if err := h.s.Send(msg); err != nil {
			return toErrno(err)
		}
	}
	resp.Size = len(req.Data)
	return nil
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

// Release leaves the network.
func (h *handle) Release(ctx context.Context, req *fuse.ReleaseRequest) error {
	h.fs.mu.Lock()
	delete(h.fs.open, h)
	h.fs.mu.Unlock()
	h.mu.Lock()
	h.released = true
	h.wakeup = nil
	h.mu.Unlock()
	close(h.quit)
	h.s.Close()
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

// allowOther reports whether a user other than root may mount with
// allow_other: /etc/fuse.conf has user_allow_other.
func allowOther() bool {
	b, err := os.ReadFile("/etc/fuse.conf")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.TrimSpace(l) == "user_allow_other" {
			return true
		}
	}
	return false
}

// Mount mounts fsys at dir through fusermount3 (Debian's fuse3). As root,
// or when /etc/fuse.conf has user_allow_other, it lets every user in
// (each open is checked as described in the package documentation);
// otherwise only the caller gets in. It fails with ErrNoFUSE (wrapped)
// when FUSE or fusermount3 is missing.
func Mount(dir string, fsys *FS, debug bool) (*Server, error) {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return nil, fmt.Errorf("%w (%v)", ErrNoFUSE, err)
	}
	if _, err := exec.LookPath("fusermount3"); err != nil {
		return nil, fmt.Errorf("%w (%v)", ErrNoFUSE, err)
	}
	opts := []fuse.MountOption{fuse.FSName("ipn"), fuse.Subtype("ipn")}
	if os.Geteuid() == 0 || allowOther() {
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
