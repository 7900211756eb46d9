package devfs

import (
	"context"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"bazil.org/fuse"

	"github.com/ipn-project/ipn"
	"github.com/ipn-project/ipn/daemon"
	"github.com/ipn-project/ipn/internal/daemontest"
	"github.com/ipn-project/ipn/internal/perm"
	"github.com/ipn-project/ipn/policy/loop"
)

// These tests call the file system's nodes and handles as the FUSE server
// would, without a mount, on networks of a daemon served in the test.

func socket(t *testing.T, path string, bind bool) *ipn.Socket {
	t.Helper()
	s, err := ipn.NewSocket(ipn.Any)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if bind {
		err = s.Bind(path)
	} else {
		err = s.Connect(path)
	}
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func recvMsg(t *testing.T, s *ipn.Socket) string {
	t.Helper()
	s.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 65536)
	for {
		n, flags, err := s.Recv(buf)
		if err != nil {
			t.Fatal(err)
		}
		if flags&ipn.MsgOOB == 0 && !loop.IsProbe(buf[:n]) {
			return string(buf[:n])
		}
	}
}

// open looks name up and opens it read-write as root, as the kernel would.
func open(t *testing.T, fsys *FS, name string) *handle {
	t.Helper()
	root, _ := fsys.Root()
	var lresp fuse.LookupResponse
	n, err := root.(*dirNode).Lookup(context.Background(), &fuse.LookupRequest{Name: name}, &lresp)
	if err != nil {
		t.Fatalf("lookup %s: %v", name, err)
	}
	var oresp fuse.OpenResponse
	h, err := n.(*netNode).Open(context.Background(), &fuse.OpenRequest{Flags: fuse.OpenReadWrite}, &oresp)
	if err != nil {
		t.Fatalf("open %s: %v", name, err)
	}
	t.Cleanup(func() { h.(*handle).Release(context.Background(), &fuse.ReleaseRequest{}) })
	return h.(*handle)
}

func read(t *testing.T, h *handle, size int) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for {
		var resp fuse.ReadResponse
		if err := h.Read(ctx, &fuse.ReadRequest{Size: size}, &resp); err != nil {
			t.Fatalf("read: %v", err)
		}
		if !loop.IsProbe(resp.Data) {
			return string(resp.Data)
		}
	}
}

func write(t *testing.T, h *handle, data string) {
	t.Helper()
	var resp fuse.WriteResponse
	if err := h.Write(context.Background(), &fuse.WriteRequest{Data: []byte(data)}, &resp); err != nil {
		t.Fatalf("write %q: %v", data, err)
	}
	if resp.Size != len(data) {
		t.Errorf("write of %d bytes answered %d", len(data), resp.Size)
	}
}

// A file shows only the networks it was asked for, named by Name; an
// unknown name is not found.
func TestEntries(t *testing.T) {
	daemontest.Start(t, daemon.Config{})
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a_net"), filepath.Join(dir, "b")
	socket(t, a, true)
	socket(t, b, true)
	all, _ := New(nil, Options{})
	es, err := all.entries()
	if err != nil || len(es) != 2 || es[0].name != Name(a) || es[1].name != Name(b) {
		t.Fatalf("entries %+v %v, want %s and %s", es, err, Name(a), Name(b))
	}
	only, _ := New([]string{b}, Options{})
	if es, err := only.entries(); err != nil || len(es) != 1 || es[0].info.Path != b {
		t.Fatalf("entries of %s: %+v %v", b, es, err)
	}
	if _, err := only.lookup(Name(a), rootCred); err != syscall.ENOENT {
		t.Errorf("lookup of a network not shown: %v, want ENOENT", err)
	}
	h := &dirHandle{fs: all, caller: rootCred}
	ents, err := h.ReadDirAll(context.Background())
	if err != nil || len(ents) != 2 || ents[0].Inode == ents[1].Inode {
		t.Errorf("readdir %+v %v", ents, err)
	}
}

// Messages cross a file unchanged; with Lines, reads end with a newline
// and writes lose one.
func TestReadWriteLines(t *testing.T) {
	daemontest.Start(t, daemon.Config{})
	for _, tc := range []struct {
		lines          bool
		write, sent    string
		send, readBack string
	}{
		{false, "hi\n", "hi\n", "x", "x"},
		{true, "hi\n", "hi", "x", "x\n"},
		{true, "two\n\n", "two\n", "y\n", "y\n"},
	} {
		path := filepath.Join(t.TempDir(), "net")
		socket(t, path, true)
		peer := socket(t, path, false)
		fsys, _ := New(nil, Options{Lines: tc.lines})
		h := open(t, fsys, Name(path))
		write(t, h, tc.write)
		if got := recvMsg(t, peer); got != tc.sent {
			t.Errorf("lines %v: write %q sent %q, want %q", tc.lines, tc.write, got, tc.sent)
		}
		if err := peer.Send([]byte(tc.send)); err != nil {
			t.Fatal(err)
		}
		if got := read(t, h, 100); got != tc.readBack {
			t.Errorf("lines %v: message %q reads %q, want %q", tc.lines, tc.send, got, tc.readBack)
		}
		if tc.lines {
			// A write of just a newline sends nothing: the next
			// message is the marker.
			write(t, h, "\n")
			write(t, h, "marker")
			if got := recvMsg(t, peer); got != "marker" {
				t.Errorf("after a lone newline the peer got %q", got)
			}
		}
	}
}

// A read shorter than the message truncates it; once the file system
// closes every file, reads return end of file.
func TestReadTruncatesAndCloseAll(t *testing.T) {
	daemontest.Start(t, daemon.Config{})
	path := filepath.Join(t.TempDir(), "net")
	socket(t, path, true)
	peer := socket(t, path, false)
	fsys, _ := New(nil, Options{})
	h := open(t, fsys, Name(path))
	if err := peer.Send([]byte("abcdef")); err != nil {
		t.Fatal(err)
	}
	if got := read(t, h, 3); got != "abc" {
		t.Errorf("3-byte read %q", got)
	}
	fsys.CloseAll()
	var resp fuse.ReadResponse
	if err := h.Read(context.Background(), &fuse.ReadRequest{Size: 10}, &resp); err != nil || len(resp.Data) != 0 {
		t.Errorf("after CloseAll: %q %v, want end of file", resp.Data, err)
	}
	root, _ := fsys.Root()
	n, err := root.(*dirNode).Lookup(context.Background(), &fuse.LookupRequest{Name: Name(path)}, &fuse.LookupResponse{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.(*netNode).Open(context.Background(), &fuse.OpenRequest{Flags: fuse.OpenReadOnly}, &fuse.OpenResponse{}); err != syscall.ENODEV {
		t.Errorf("open after CloseAll: %v, want ENODEV", err)
	}
}

var rootCred = perm.Cred{}
