package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A link planted where the daemon's lock file goes is refused, and its
// target left alone.
func TestFilesBesideTheSocketFollowNoLink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	os.WriteFile(target, []byte("keep"), 0o600)
	sock := filepath.Join(dir, "ipn.sock")
	os.Symlink(target, sock+".lock")
	if f, err := lockDaemon(sock); err == nil {
		f.Close()
		t.Fatal("lockDaemon opened a symbolic link")
	} else if !strings.Contains(err.Error(), "symbolic link") {
		t.Fatalf("lockDaemon: %v", err)
	}
	if b, _ := os.ReadFile(target); string(b) != "keep" {
		t.Fatalf("the link's target holds %q", b)
	}
}
