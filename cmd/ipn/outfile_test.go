package main

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCPUProfileRefusesSymlink runs ipn daemon with --cpuprofile naming a
// symbolic link, as one planted in /tmp would be: it must fail before it
// serves, leaving the link's target as it was.
func TestCPUProfileRefusesSymlink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	if err := os.WriteFile(target, []byte("precious"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "profile")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(dir, "ipn.sock")
	// Should it serve, --idle-exit ends it, and the context a hang.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "daemon", "--foreground", "--cpuprofile", link,
		"--socket", socket, "--idle-exit", "1s")
	cmd.Env = append(os.Environ(), asIPNEnv+"=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("ipn daemon: %v, want a failure\n%s", err, stderr.String())
	}
	if want := link + " is a symbolic link; refusing to write through it"; !strings.Contains(stderr.String(), want) {
		t.Fatalf("stderr %q, want %q", stderr.String(), want)
	}
	if b, err := os.ReadFile(target); err != nil || string(b) != "precious" {
		t.Fatalf("the link's target holds %q (%v), want it unchanged", b, err)
	}
	if _, err := os.Lstat(socket); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the daemon made its socket: %v", err)
	}
}
