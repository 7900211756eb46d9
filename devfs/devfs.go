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
// go-fuse v2.12.1 answers every FUSE poll request with ENOSYS, after which
// the kernel reports the files always readable and writable. poll(2) and
// select(2) therefore do not wait for a message; blocking reads do.
// TODO: real poll, once go-fuse supports FUSE_POLL and notify_poll_wakeup.
package devfs

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
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

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

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

// FS is the file system: its root directory and the files open in it.
type FS struct {
	nets []string // absolute paths of the networks shown; nil: all
	root *dirNode

	mu      sync.Mutex
	cached  []entry
	cacheAt time.Time
	open    map[*handle]struct{}
	closed  bool
}

// New returns a file system showing the networks at paths, or every
// network the daemon serves if there are none.
func New(paths []string) (*FS, error) {
	f := &FS{open: map[*handle]struct{}{}}
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

// entry is a network shown as a file.
type entry struct {
	name, path string
}

// entries returns the networks to show, sorted by name.
func (f *FS) entries() ([]entry, syscall.Errno) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cached != nil && time.Since(f.cacheAt) < listCache {
		return f.cached, 0
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
	return es, 0
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
	ino := h.Sum64() >> 1 // never ^0 (go-fuse's poll hack)
	if ino < 2 {
		ino += 2 // never the root's
	}
	return ino
}

// dirNode is the root directory.
type dirNode struct {
	fs.Inode
	fs *FS
}

var (
	_ fs.NodeLookuper  = (*dirNode)(nil)
	_ fs.NodeReaddirer = (*dirNode)(nil)
	_ fs.NodeGetattrer = (*dirNode)(nil)
)

func (d *dirNode) Getattr(ctx context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFDIR | 0o755
	return 0
}

func (d *dirNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	es, errno := d.fs.entries()
	if errno != 0 {
		return nil, errno
	}
	for _, e := range es {
		if e.name != name {
			continue
		}
		if errno := statAttr(e.path, &out.Attr); errno != 0 {
			return nil, errno
		}
		ch := d.NewInode(ctx, &netNode{fs: d.fs, path: e.path},
			fs.StableAttr{Mode: syscall.S_IFREG, Ino: inoOf(e.path)})
		return ch, 0
	}
	return nil, syscall.ENOENT
}

func (d *dirNode) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	es, errno := d.fs.entries()
	if errno != 0 {
		return nil, errno
	}
	list := make([]fuse.DirEntry, 0, len(es))
	for _, e := range es {
		list = append(list, fuse.DirEntry{Name: e.name, Mode: syscall.S_IFREG, Ino: inoOf(e.path)})
	}
	return fs.NewListDirStream(list), 0
}

// statAttr fills attr with the owner, group, mode and times of the network
// file at path, as a regular file of size 0.
func statAttr(path string, attr *fuse.Attr) syscall.Errno {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return toErrno(err)
	}
	attr.Mode = syscall.S_IFREG | st.Mode&0o777
	attr.Uid, attr.Gid = st.Uid, st.Gid
	attr.Nlink = 1
	attr.Size = 0
	attr.Atime, attr.Atimensec = uint64(st.Atim.Sec), uint32(st.Atim.Nsec)
	attr.Mtime, attr.Mtimensec = uint64(st.Mtim.Sec), uint32(st.Mtim.Nsec)
	attr.Ctime, attr.Ctimensec = uint64(st.Ctim.Sec), uint32(st.Ctim.Nsec)
	return 0
}

// netNode is a network's file.
type netNode struct {
	fs.Inode
	fs   *FS
	path string
}

var (
	_ fs.NodeGetattrer = (*netNode)(nil)
	_ fs.NodeSetattrer = (*netNode)(nil)
	_ fs.NodeAccesser  = (*netNode)(nil)
	_ fs.NodeOpener    = (*netNode)(nil)
)

func (n *netNode) Getattr(ctx context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	return statAttr(n.path, &out.Attr)
}

// Setattr accepts truncation (of O_TRUNC: `echo hi > file`) and times, as
// a device does, and refuses to change the owner or mode.
func (n *netNode) Setattr(ctx context.Context, _ fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	_, m := in.GetMode()
	_, u := in.GetUID()
	_, g := in.GetGID()
	if m || u || g {
		return syscall.EPERM
	}
	return statAttr(n.path, &out.Attr)
}

// Access answers access(2) with the rights open checks.
func (n *netNode) Access(ctx context.Context, mask uint32) syscall.Errno {
	r, w, errno := n.rights(ctx)
	if errno != 0 {
		return errno
	}
	if mask&4 != 0 && !r || mask&2 != 0 && !w || mask&1 != 0 {
		return syscall.EACCES
	}
	return 0
}

// rights returns whether the caller of the request may read and write the
// network.
func (n *netNode) rights(ctx context.Context) (r, w bool, errno syscall.Errno) {
	caller, ok := fuse.FromContext(ctx)
	if !ok {
		return false, false, syscall.EACCES
	}
	var st syscall.Stat_t
	if err := syscall.Stat(n.path, &st); err != nil {
		return false, false, toErrno(err)
	}
	var groups []uint32
	if caller.Uid != 0 && caller.Uid != st.Uid && caller.Gid != st.Gid {
		groups = procGroups(caller.Pid)
	}
	r, w = access(st.Uid, st.Gid, st.Mode, caller.Uid, caller.Gid, groups)
	return r, w, 0
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

func (n *netNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	var wantR, wantW bool
	switch flags & syscall.O_ACCMODE {
	case syscall.O_RDONLY:
		wantR = true
	case syscall.O_WRONLY:
		wantW = true
	case syscall.O_RDWR:
		wantR, wantW = true, true
	default:
		return nil, 0, syscall.EINVAL
	}
	r, w, errno := n.rights(ctx)
	if errno != 0 {
		return nil, 0, errno
	}
	if wantR && !r || wantW && !w {
		return nil, 0, syscall.EACCES
	}
	s, err := ipn.NewSocket(ipn.Any)
	if err != nil {
		return nil, 0, toErrno(err)
	}
	fail := func(err error) (fs.FileHandle, uint32, syscall.Errno) {
		s.Close()
		return nil, 0, toErrno(err)
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
	h := &handle{s: s, fs: n.fs, buf: make([]byte, mtu+1), sem: make(chan struct{}, 1)}
	n.fs.mu.Lock()
	if n.fs.closed {
		n.fs.mu.Unlock()
		return fail(syscall.ENODEV)
	}
	n.fs.open[h] = struct{}{}
	n.fs.mu.Unlock()
	// Direct I/O: every read and write reaches Read and Write, whatever
	// its size. Not FOPEN_NONSEEKABLE: head -n1 seeks back over what it
	// read past its line and complains if it cannot; seeks and offsets are
	// accepted and ignored.
	return h, fuse.FOPEN_DIRECT_IO, 0
}

// handle is an open file: a node of the network.
type handle struct {
	s   *ipn.Socket
	fs  *FS
	sem chan struct{} // one read at a time; guards buf
	buf []byte

	mu      sync.Mutex // guards reading
	reading bool       // a Recv is under way (for interrupts)
}

var (
	_ fs.FileReader   = (*handle)(nil)
	_ fs.FileWriter   = (*handle)(nil)
	_ fs.FileReleaser = (*handle)(nil)
)

// Read returns one message, blocking until one arrives or the request is
// interrupted.
func (h *handle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	select {
	case h.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, syscall.EINTR
	}
	defer func() { <-h.sem }()
	for {
		h.mu.Lock()
		h.reading = true
		h.mu.Unlock()
		// An interrupt moves the read deadline to the past, waking Recv.
		stop := context.AfterFunc(ctx, func() {
			h.mu.Lock()
			defer h.mu.Unlock()
			if h.reading {
				h.s.SetReadDeadline(time.Unix(1, 0))
			}
		})
		n, flags, err := h.s.Recv(h.buf)
		h.mu.Lock()
		h.reading = false
		h.mu.Unlock()
		if !stop() {
			h.s.SetReadDeadline(time.Time{})
		}
		switch {
		case err == nil:
		case ctx.Err() != nil && errors.Is(err, os.ErrDeadlineExceeded):
			return nil, syscall.EINTR
		case errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed):
			return fuse.ReadResultData(nil), 0 // end of file
		default:
			return nil, toErrno(err)
		}
		if flags&ipn.MsgOOB != 0 {
			continue // not asked for; skip
		}
		msg := h.buf[:n]
		if n == 0 || msg[n-1] != '\n' {
			msg = append(msg, '\n') // buf has room: it is one longer than the MTU
		}
		// Copied out: buf is reused once this read returns.
		return fuse.ReadResultData(dest[:copy(dest, msg)]), 0
	}
}

// Write sends data as one message, less one trailing newline.
func (h *handle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	msg := data
	if len(msg) > 0 && msg[len(msg)-1] == '\n' {
		msg = msg[:len(msg)-1]
	}
	if len(msg) == 0 {
		return uint32(len(data)), 0
	}
	if err := h.s.Send(msg); err != nil {
		return 0, toErrno(err)
	}
	return uint32(len(data)), 0
}

// Release leaves the network.
func (h *handle) Release(ctx context.Context) syscall.Errno {
	h.fs.mu.Lock()
	delete(h.fs.open, h)
	h.fs.mu.Unlock()
	h.s.Close()
	return 0
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
	*fuse.Server
	FS  *FS
	Dir string
}

// Mount mounts fsys at dir. As root it mounts directly and lets every user
// in (each open is checked as described in the package documentation);
// otherwise it needs fusermount3 (Debian's fuse3) and only the caller gets
// in. It fails with ErrNoFUSE (wrapped) when FUSE is missing.
func Mount(dir string, fsys *FS, debug bool) (*Server, error) {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return nil, fmt.Errorf("%w (%v)", ErrNoFUSE, err)
	}
	root := os.Geteuid() == 0
	if !root {
		if _, err := exec.LookPath("fusermount3"); err != nil {
			if _, err2 := exec.LookPath("fusermount"); err2 != nil {
				return nil, fmt.Errorf("%w (%v)", ErrNoFUSE, err)
			}
		}
	}
	sec, zero := time.Second, time.Duration(0)
	opts := &fs.Options{
		EntryTimeout:    &sec,
		AttrTimeout:     &sec,
		NegativeTimeout: &zero,
		MountOptions: fuse.MountOptions{
			FsName:      "ipn",
			Name:        "ipn",
			DirectMount: root,
			AllowOther:  root,
			Debug:       debug,
		},
	}
	srv, err := fs.Mount(dir, fsys.root, opts)
	if err != nil {
		msg := err.Error()
		if strings.Contains(msg, "/dev/fuse") || strings.Contains(msg, "fusermount") ||
			errors.Is(err, syscall.ENODEV) {
			return nil, fmt.Errorf("%w (%v)", ErrNoFUSE, err)
		}
		return nil, err
	}
	return &Server{Server: srv, FS: fsys, Dir: dir}, nil
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
