package qemu_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/farend/qemu"
)

// listenKind makes a far end's socket of kind ("stream" or "dgram") at
// path with mode.
func listenKind(kind, path string, mode os.FileMode) (interface{ Close() error }, error) {
	if kind == "stream" {
		return qemu.Listen(path, mode, nil)
	}
	return qemu.ListenDgram(path, filepath.Join(filepath.Dir(path), "q"), mode, nil)
}

// mode=, given to a socket just bound, never reaches another file: whoever
// may write to the directory, swapping the socket for a symlink to a file
// of its choice (here, at the worst moment: after the socket was found at
// its name, before its mode is set), gets a refusal, and the file keeps its
// mode. A stream's socket is bound in a directory of its own, of mode
// 0700, which no one else may write.
func TestSocketModeNotGivenToASwappedInFile(t *testing.T) {
	for _, kind := range []string{"stream", "dgram"} {
		t.Run(kind, func(t *testing.T) {
			d := t.TempDir()
			target := filepath.Join(d, "target")
			os.WriteFile(target, []byte("secret"), 0o600)
			swapped := false
			qemu.SetBeforeChmod(t, func(dir, name string) {
				if kind == "stream" {
					if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 || dir == d {
						t.Errorf("the stream's socket is bound in %s (%v, %v): want a directory of mode 0700 of its own", dir, fi.Mode(), err)
					}
				}
				p := filepath.Join(dir, name)
				if err := os.Rename(p, p+".away"); err != nil {
					t.Errorf("swapping the socket away: %v", err)
				}
				if err := os.Symlink(target, p); err != nil {
					t.Errorf("a symlink in its place: %v", err)
				}
				swapped = true
			})
			path := filepath.Join(d, "s")
			c, err := listenKind(kind, path, 0o646)
			if err == nil {
				c.Close()
			}
			if !swapped {
				t.Fatalf("the hook did not run: %v", err)
			}
			if !errors.Is(err, syscall.EEXIST) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "no longer the socket") {
				t.Errorf("with the socket swapped for a symlink: %v, want EEXIST naming %s", err, path)
			}
			if fi, _ := os.Stat(target); fi.Mode().Perm() != 0o600 {
				t.Fatalf("%s has mode %#o: the socket's mode went to the file a symlink swapped in for it points to", target, fi.Mode().Perm())
			}
		})
	}
}

// The same, against a racer that swaps each new socket (and a stream's
// private directory) for a symlink as soon as inotify tells it of one:
// the file the symlink points to keeps its mode.
func TestSocketModeNotGivenToAFileARacerSwapsIn(t *testing.T) {
	for _, kind := range []string{"stream", "dgram"} {
		t.Run(kind, func(t *testing.T) {
			d := t.TempDir()
			target := filepath.Join(d, "target")
			os.WriteFile(target, []byte("secret"), 0o600)
			in, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
			if err != nil {
				t.Skip(err)
			}
			if _, err := unix.InotifyAddWatch(in, d, unix.IN_CREATE); err != nil {
				unix.Close(in)
				t.Skip(err)
			}
			events := os.NewFile(uintptr(in), "inotify") // its Close wakes its Read
			done := make(chan struct{})
			defer func() {
				events.Close()
				<-done
			}()
			go func() {
				defer close(done)
				buf := make([]byte, 4096)
				for {
					k, err := events.Read(buf)
					if err != nil || k <= 0 {
						return
					}
					for off := 0; off+unix.SizeofInotifyEvent <= k; {
						ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
						nb := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
						off += unix.SizeofInotifyEvent + int(ev.Len)
						name := strings.TrimRight(string(nb), "\x00")
						if strings.HasPrefix(name, "s") || strings.HasPrefix(name, ".s") {
							if strings.HasSuffix(name, ".x") {
								continue
							}
							p := filepath.Join(d, name)
							if os.Rename(p, p+".x") == nil {
								os.Symlink(target, p)
							}
						}
					}
				}
			}()
			deadline := time.Now().Add(3 * time.Second)
			for i := 0; time.Now().Before(deadline); i++ {
				c, err := listenKind(kind, filepath.Join(d, fmt.Sprintf("s%d", i)), 0o646)
				if err == nil {
					c.Close()
				}
				if fi, _ := os.Stat(target); fi.Mode().Perm() != 0o600 {
					t.Fatalf("after %d sockets, %s has mode %#o: the chmod followed a link swapped in for the socket", i+1, target, fi.Mode().Perm())
				}
			}
		})
	}
}
