package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/ipn-project/ipn/daemon"
)

func daemonCmd() *cobra.Command {
	var (
		foreground bool
		socket     string
		idle       time.Duration
		cpuprofile string
		noFast     bool
	)
	cmd := &cobra.Command{
		Use:   "daemon",
		Short: "Run the daemon that serves IPN networks",
		Long: `Run the daemon that serves IPN networks.

Run by root it serves every user at ` + daemon.SystemSocket + `; run by a user it
serves that user at ` + "$XDG_RUNTIME_DIR/ipn/ipn.sock (or /tmp/ipn-UID/ipn.sock)" + `.
$IPN_SOCKET overrides the place. Programs start a daemon by themselves when
none answers, so this command is for running one as a service.
SIGTERM or SIGINT stops it, closing every port.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if socket == "" {
				socket = daemon.DefaultSocket()
			}
			if !foreground {
				if err := daemon.Start(socket); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "ipn daemon serving %s\n", socket)
				return nil
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			if cpuprofile != "" {
				f, err := os.Create(cpuprofile)
				if err != nil {
					return err
				}
				defer f.Close()
				if err := pprof.StartCPUProfile(f); err != nil {
					return err
				}
				defer pprof.StopCPUProfile()
			}
			return daemon.Serve(ctx, daemon.Config{
				Socket:     socket,
				IdleExit:   idle,
				Logger:     slog.New(slog.NewTextHandler(os.Stderr, nil)),
				NoFastPath: noFast,
			})
		},
	}
	cmd.Flags().BoolVarP(&foreground, "foreground", "f", false, "serve in this process instead of starting a background daemon")
	cmd.Flags().StringVar(&socket, "socket", "", "control socket path (default $IPN_SOCKET, "+daemon.SystemSocket+" for root, else per user)")
	cmd.Flags().StringVar(&cpuprofile, "cpuprofile", "", "with --foreground, write a CPU profile (go tool pprof) here when stopped")
	cmd.Flags().BoolVar(&noFast, "no-fast-path", false, "with --foreground, give every member a socket, not shared-memory rings")
	cmd.Flags().DurationVar(&idle, "idle-exit", 0, "with --foreground, exit after this long without clients (0: never)")
	return cmd
}
