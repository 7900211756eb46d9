package outfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// opens are the two ways in: Create, and the descriptor check alone, as
// when the path changes between Create's first look and its open.
var opens = []struct {
	name string
	open func(string) (*os.File, error)
}{
	{"Create", Create},
	{"openChecked", openChecked},
}

// expectRefused checks that err is a RefusedError for path with errno and
// a reason that contains want.
func expectRefused(t *testing.T, err error, path string, errno syscall.Errno, want string) {
	t.Helper()
	var re *RefusedError
	if !errors.As(err, &re) {
		t.Fatalf("error %v (%T), want a RefusedError", err, err)
	}
	if re.Path != path || !errors.Is(err, errno) || !strings.Contains(err.Error(), want) ||
		!strings.HasPrefix(err.Error(), path+" ") {
		t.Fatalf("error %q (errno %v), want %s %q (errno %v)", err, re.Errno, path, want, errno)
	}
}

// writeFile makes a file holding content and returns its path.
func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func expectContent(t *testing.T, path, want string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != want {
		t.Fatalf("%s holds %q, want %q", path, b, want)
	}
}

func TestSymlinkRefused(t *testing.T) {
	for _, o := range opens {
		t.Run(o.name, func(t *testing.T) {
			dir := t.TempDir()
			target := writeFile(t, dir, "target", "precious")
			link := filepath.Join(dir, "link")
			if err := os.Symlink(target, link); err != nil {
				t.Fatal(err)
			}
			f, err := o.open(link)
			if err == nil {
				f.Close()
			}
			expectRefused(t, err, link, syscall.ELOOP, "is a symbolic link; refusing to write through it")
			expectContent(t, target, "precious")

			// A dangling link does not make its target either.
			missing := filepath.Join(dir, "missing")
			dangling := filepath.Join(dir, "dangling")
			if err := os.Symlink(missing, dangling); err != nil {
				t.Fatal(err)
			}
			f, err = o.open(dangling)
			if err == nil {
				f.Close()
			}
			expectRefused(t, err, dangling, syscall.ELOOP, "is a symbolic link")
			if _, err := os.Lstat(missing); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("target of the dangling link: %v", err)
			}
		})
	}
}

func TestHardLinkRefused(t *testing.T) {
	for _, o := range opens {
		t.Run(o.name, func(t *testing.T) {
			dir := t.TempDir()
			target := writeFile(t, dir, "target", "precious")
			link := filepath.Join(dir, "link")
			if err := os.Link(target, link); err != nil {
				t.Fatal(err)
			}
			f, err := o.open(link)
			if err == nil {
				f.Close()
			}
			expectRefused(t, err, link, syscall.EMLINK, "has 2 hard links")
			expectContent(t, target, "precious")
		})
	}
}

func TestFIFORefused(t *testing.T) {
	for _, o := range opens {
		t.Run(o.name, func(t *testing.T) {
			fifo := filepath.Join(t.TempDir(), "fifo")
			if err := unix.Mkfifo(fifo, 0o644); err != nil {
				t.Fatal(err)
			}
			// Without a reader, an open for writing would block.
			f, err := o.open(fifo)
			if err == nil {
				f.Close()
			}
			expectRefused(t, err, fifo, syscall.EPERM, "is a named pipe, not a regular file")

			// With one, the open succeeds and the check refuses.
			r, err := os.OpenFile(fifo, os.O_RDONLY|syscall.O_NONBLOCK, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			f, err = o.open(fifo)
			if err == nil {
				f.Close()
			}
			expectRefused(t, err, fifo, syscall.EPERM, "is a named pipe")
		})
	}
}

func TestDirectoryRefused(t *testing.T) {
	dir := t.TempDir()
	f, err := Create(dir)
	if err == nil {
		f.Close()
	}
	expectRefused(t, err, dir, syscall.EPERM, "is a directory")
}

// TestOtherUsersFileRefused makes a file of another user and opens it as
// root, who could write it.
func TestOtherUsersFileRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give a file to another user")
	}
	const uid = 2101
	for _, o := range opens {
		t.Run(o.name, func(t *testing.T) {
			p := writeFile(t, t.TempDir(), "theirs", "theirs")
			if err := os.Chown(p, uid, uid); err != nil {
				t.Fatal(err)
			}
			f, err := o.open(p)
			if err == nil {
				f.Close()
			}
			expectRefused(t, err, p, syscall.EPERM, "is owned by uid 2101, not by this user (uid 0)")
			expectContent(t, p, "theirs")
		})
	}
}

func TestOwnFileTruncated(t *testing.T) {
	p := writeFile(t, t.TempDir(), "mine", "an old and longer content")
	f, err := Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("new"); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	expectContent(t, p, "new")

	if err := WriteFile(p, []byte("again")); err != nil {
		t.Fatal(err)
	}
	expectContent(t, p, "again")
}

func TestNewFileMade(t *testing.T) {
	old := unix.Umask(0o027)
	defer unix.Umask(old)
	p := filepath.Join(t.TempDir(), "new")
	f, err := Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("fresh"); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	expectContent(t, p, "fresh")
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := st.Mode(), fs.FileMode(Mode&^0o027); got != want {
		t.Fatalf("mode %v, want %v", got, want)
	}
}

func TestMissingDirectory(t *testing.T) {
	p := filepath.Join(t.TempDir(), "no", "such")
	_, err := Create(p)
	var pe *fs.PathError
	if !errors.As(err, &pe) || pe.Path != p || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("error %v, want a PathError of %s for a missing directory", err, p)
	}
}
