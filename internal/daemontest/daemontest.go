// Package daemontest serves an IPN daemon from a test process, for the
// tests of packages that need one (as net/http/httptest serves HTTP).
package daemontest

import (
	"context"
	"fmt"
	"log/slog"
	"os"

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
