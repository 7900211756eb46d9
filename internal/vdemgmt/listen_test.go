package vdemgmt

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestListenChmodNeverFollowsSwappedLink: whoever may write to the
// socket's directory (a shared lab directory, group-writable, not sticky)
// and swaps what listen makes there for a symbolic link must never make
// the console's user (root, for a root ipn vde --mgmt) give --mgmt-mode to
// another file. Here a racer watching the directory with inotify renames
// every hidden name listen makes and puts a link to target in its place.
func TestListenChmodNeverFollowsSwappedLink(t *testing.T) {
	d := t.TempDir()
	target := filepath.Join(d, "target")
	if err := os.WriteFile(target, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	netFile := filepath.Join(d, "net")
	os.WriteFile(netFile, nil, 0o700)
	n := &fakeNet{path: netFile, opts: map[string]string{}}

	in, err := unix.InotifyInit1(unix.IN_CLOEXEC)
	if err != nil {
		t.Skip(err)
	}
	if _, err := unix.InotifyAddWatch(in, d, unix.IN_CREATE); err != nil {
		unix.Close(in)
		t.Fatal(err)
	}
	var stop atomic.Bool
	done := make(chan struct{})
	defer func() {
		// Stop the racer: a file made in d wakes its read.
		stop.Store(true)
		os.WriteFile(filepath.Join(d, "wake"), nil, 0o600)
		<-done
		unix.Close(in)
	}()
	go func() {
		defer close(done)
		runtime.LockOSThread()
		buf := make([]byte, 4096)
		for !stop.Load() {
			k, err := unix.Read(in, buf)
			if err != nil || k <= 0 {
				return
			}
			for off := 0; off+unix.SizeofInotifyEvent <= k; {
				ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
				nameb := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
				off += unix.SizeofInotifyEvent + int(ev.Len)
				name := string(nameb[:clen(nameb)])
				if len(name) > 0 && name[0] == '.' && filepath.Ext(name) != ".x" {
					p := filepath.Join(d, name)
					if os.Rename(p, p+".x") == nil {
						os.Symlink(target, p)
					}
				}
			}
		}
	}()

	deadline := time.Now().Add(20 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		c, err := Listen(Config{Net: n, Path: filepath.Join(d, fmt.Sprintf("m%d", i)), Mode: 0o646, Group: -1, Log: discard()})
		if err == nil {
			c.Close()
		}
		if fi, _ := os.Stat(target); fi.Mode().Perm() != 0o600 {
			t.Fatalf("after %d consoles, %s has mode %#o: the console's chmod followed a link swapped in for its socket", i+1, target, fi.Mode().Perm())
		}
	}
	t.Log("the racer never won")
}

func clen(b []byte) int {
	for i, c := range b {
		if c == 0 {
			return i
		}
	}
	return len(b)
}
