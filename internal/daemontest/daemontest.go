// Package daemontest serves an IPN daemon from a test process, for the
// tests of packages that need one (as net/http/httptest serves HTTP).
package daemontest

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/ipn-project/ipn/daemon"
)

// Serve starts a daemon on the control socket sock, in this process, and
// points the library at it (IPN_SOCKET, IPN_NO_AUTOSTART=1). The daemon
// logs warnings and errors to standard error. stop ends it and returns
// what it ended with.
func Serve(sock string) (stop func() error, err error) {
	os.Setenv(daemon.SocketEnv, sock)
	os.Setenv(daemon.NoAutostartEnv, "1")
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	go func() {
		done <- daemon.Serve(ctx, daemon.Config{Socket: sock, Logger: logger, Ready: func() { close(ready) }})
	}()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		return nil, fmt.Errorf("daemon: %w", err)
	}
	return func() error {
		cancel()
		if err := <-done; err != nil {
			return fmt.Errorf("daemon: %w", err)
		}
		return nil
	}, nil
}

// Daemon is a daemon served in a test's process by Start.
type Daemon struct {
	// Socket is the daemon's control socket.
	Socket string

	once sync.Once
	stop func() error
	err  error
}

// Start serves a daemon of cfg in this process for the test t, on a
// control socket in a new temporary directory (cfg.Socket is replaced),
// and points the library at it for the test's duration (t.Setenv:
// IPN_SOCKET, IPN_NO_AUTOSTART=1; so t must not be parallel). The daemon
// logs warnings and errors to t's log unless cfg.Logger is set. It is
// stopped when t ends, and t fails if it ended with an error; Stop stops
// it sooner.
func Start(t testing.TB, cfg daemon.Config) *Daemon {
	t.Helper()
	dir, err := os.MkdirTemp("", "ipn-daemontest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// Other users may reach the socket (a root daemon serves them all).
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg.Socket = filepath.Join(dir, "ipn.sock")
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(testLog{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	t.Setenv(daemon.SocketEnv, cfg.Socket)
	t.Setenv(daemon.NoAutostartEnv, "1")
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	user := cfg.Ready
	cfg.Ready = func() {
		if user != nil {
			user()
		}
		close(ready)
	}
	go func() { done <- daemon.Serve(ctx, cfg) }()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("daemon: %v", err)
	}
	d := &Daemon{Socket: cfg.Socket, stop: func() error {
		cancel()
		return <-done
	}}
	t.Cleanup(func() {
		if err := d.Stop(); err != nil {
			t.Errorf("daemon ended with: %v", err)
		}
	})
	return d
}

// Stop stops the daemon, waits until it has ended, and returns what it
// ended with; later calls return the same.
func (d *Daemon) Stop() error {
	d.once.Do(func() { d.err = d.stop() })
	return d.err
}

// testLog writes a daemon's log lines to a test's log.
type testLog struct{ t testing.TB }

func (l testLog) Write(b []byte) (int, error) {
	l.t.Logf("daemon: %s", strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
}
