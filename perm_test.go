package ipn_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ipn-project/ipn"
)

// Users the permission tests run helpers as. They need not exist in
// /etc/passwd: the kernel's credentials are what the daemon checks.
const (
	ownerUID  = 2101
	otherUID  = 2102
	netGID    = 2200
	otherGID  = 2300
	waitProcs = 15 * time.Second
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI runs as root; this test must not skip there")
		}
		t.Skip("needs root to run helpers as other users")
	}
}

// permNet makes a network (as root) whose file belongs to ownerUID:netGID
// with mode, and a root member that sends one message whenever asked.
func permNet(t *testing.T, mode os.FileMode) (string, *ipn.Socket) {
	t.Helper()
	path, s := bindNet(t, nil)
	if err := os.Chown(path, ownerUID, netGID); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	return path, s
}

var (
	asOwner      = &syscall.Credential{Uid: ownerUID, Gid: ownerUID}
	asOther      = &syscall.Credential{Uid: otherUID, Gid: otherGID}
	asGroupMate  = &syscall.Credential{Uid: otherUID, Gid: otherGID, Groups: []uint32{netGID}}
	asOtherNoGrp = &syscall.Credential{Uid: otherUID, Gid: otherGID, Groups: []uint32{}}
)

func TestPermissionMatrix(t *testing.T) {
	requireRoot(t)
	cases := []struct {
		name      string
		mode      os.FileMode
		cred      *syscall.Credential
		connect   string // the helper's connect line
		send, got string // prefixes of its send and recv lines
	}{
		{"owner rwx", 0o700, asOwner, "connect ok read=true write=true", "send ok", "got from root"},
		{"other r only", 0o704, asOther, "connect ok read=true write=false", "send err=EPIPE", "got from root"},
		{"other w only", 0o702, asOther, "connect ok read=false write=true", "send ok", "recv err=EPIPE"},
		{"other none", 0o770, asOther, "connect err=EACCES", "", ""},
		{"supplementary group r", 0o740, asGroupMate, "connect ok read=true write=false", "send err=EPIPE", "got from root"},
		{"not in group", 0o740, asOtherNoGrp, "connect err=EACCES", "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path, root := permNet(t, c.mode)
			h := helper(t, c.cred, "perm", "connect", path)
			if got := h.line(waitProcs); got != c.connect {
				t.Fatalf("helper: %q, want %q; stderr: %s", got, c.connect, h.stderr())
			}
			if c.send == "" {
				return
			}
			if got := h.line(waitProcs); !strings.HasPrefix(got, c.send) {
				t.Fatalf("helper send: %q, want %q", got, c.send)
			}
			if c.send == "send ok" {
				if got := recvString(t, root); got != "hello from uid "+strconv.Itoa(int(c.cred.Uid)) {
					t.Fatalf("root got %q", got)
				}
			}
			if strings.HasPrefix(c.got, "got") {
				// Wait until the helper's port receives, then send.
				root.Send([]byte("from root"))
			}
			if got := h.line(waitProcs); !strings.HasPrefix(got, c.got) {
				t.Fatalf("helper recv: %q, want %q", got, c.got)
			}
		})
	}
}

func TestBindExistingNeedsX(t *testing.T) {
	requireRoot(t)
	path, _ := permNet(t, 0o776)
	h := helper(t, asOther, "perm", "bind", path)
	if got := h.line(waitProcs); got != "bind err=EACCES" {
		t.Fatalf("bind without x: %q", got)
	}
	os.Chmod(path, 0o771)
	h = helper(t, asOther, "perm", "bind", path)
	if got := h.line(waitProcs); got != "bind ok" {
		t.Fatalf("bind with x: %q (%s)", got, h.stderr())
	}
}

func TestChmodTakesEffect(t *testing.T) {
	requireRoot(t)
	path, _ := permNet(t, 0o706)
	h := helper(t, asOther, "perm", "connect", path)
	if got := h.line(waitProcs); got != "connect ok read=true write=true" {
		t.Fatalf("before chmod: %q", got)
	}
	if err := os.Chmod(path, 0o700); err != nil {
		t.Fatal(err)
	}
	h = helper(t, asOther, "perm", "connect", path)
	if got := h.line(waitProcs); got != "connect err=EACCES" {
		t.Fatalf("after chmod 0700: %q", got)
	}
}

func TestBindNeedsDirectoryWrite(t *testing.T) {
	requireRoot(t)
	dir := tempDir(t)
	os.Chmod(dir, 0o755) // root's: others may not create files here
	h := helper(t, asOther, "perm", "bind", filepath.Join(dir, "net"))
	if got := h.line(waitProcs); got != "bind err=EACCES" {
		t.Fatalf("bind in a directory without w: %q", got)
	}
}
