package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/ipn-project/ipn/daemon"
	"github.com/ipn-project/ipn/internal/outfile"
)

func daemonCmd() *cobra.Command {
	var (
		foreground bool
		socket     string
		idle       time.Duration
		cpuprofile string
		noFast     bool
		limits     daemon.Limits
		shmMiB     int64
		memMiB     int64
		hello      time.Duration
		maxFiles   int
		takeover   bool
		metrics    string
		metricsAny bool
		metricsMod string
	)
	cmd := &cobra.Command{
		Use:   "daemon",
		Short: "Run the daemon that serves IPN networks",
		Long: `Run the daemon that serves IPN networks.

Run by root it serves every user at ` + daemon.SystemSocket + `; run by a user it
serves that user at ` + "$XDG_RUNTIME_DIR/ipn/ipn.sock (or /tmp/ipn-UID/ipn.sock)" + `.
$IPN_SOCKET overrides the place. Programs start a daemon by themselves when
none answers (one that exits after 30 s without clients), so this command
is for running one as a service: it serves until stopped (--idle-exit
makes it exit when idle), in the background, or in this process with
--foreground (-f), as a service manager wants. ps shows it as ipn daemon.
SIGTERM or SIGINT stops it, closing every port. It fails if a daemon
serves the socket already (--takeover replaces it).

Under systemd (dist/systemd/ipn.socket and ipn.service), ipn daemon -f
takes the control socket systemd passes it (socket activation: a
SOCK_SEQPACKET socket at the path it would serve, else it refuses) and
tells systemd when it serves (Type=notify).

--takeover replaces the daemon serving the socket (to upgrade it) without
its members noticing: the running daemon hands this one every network,
port, member and queued message, then exits; if this one fails, the old
one serves on. Only the daemon's own user (root for the system daemon) may
take over. With no daemon there, it starts as usual.

Each user but root is limited (--max-*), so that no user can exhaust the
daemon for the others; a request over a limit fails and names it.

--metrics ADDR serves Prometheus metrics at http://ADDR/metrics: per
network and per port counters of messages, bytes, drops and errors, members,
readers and writers, MAC table sizes and fast-path use (docs/metrics.md
lists every metric). They show every user's network paths and port
descriptions to whoever reaches ADDR, so ADDR must be a loopback address
(127.0.0.1:9215, [::1]:9215, localhost:9215) unless --metrics-any is given,
or the path of a Unix socket (/run/ipn/metrics.sock) of mode --metrics-mode
(0600: root alone; curl --unix-socket PATH http://ipn/metrics).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if socket == "" {
				socket = daemon.DefaultSocket()
			}
			if err := daemon.CheckSocket(socket); err != nil {
				return err
			}
			var metricsMode os.FileMode
			if metrics != "" {
				if err := daemon.CheckMetricsAddr(metrics, metricsAny); err != nil {
					return err
				}
				m, err := strconv.ParseUint(metricsMod, 8, 32)
				if err != nil || m&^0o777 != 0 {
					return fmt.Errorf("--metrics-mode %q: want an octal mode of permission bits (0600, 0660)", metricsMod)
				}
				metricsMode = os.FileMode(m)
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			if cpuprofile != "" && !foreground {
				return fmt.Errorf("--cpuprofile %s: add --foreground (-f), the profile is of this process", cpuprofile)
			}
			if cpuprofile != "" {
				f, err := outfile.Create(cpuprofile)
				if err != nil {
					return err
				}
				defer f.Close()
				if err := pprof.StartCPUProfile(f); err != nil {
					return err
				}
				defer pprof.StopCPUProfile()
			}
			limits.Shm, limits.Memory = shmMiB<<20, memMiB<<20
			for name, v := range map[string]int64{"--max-networks": int64(limits.Networks), "--max-ports": int64(limits.Ports),
				"--max-conns": int64(limits.Conns), "--max-shm": shmMiB, "--max-memory": memMiB} {
				if v < 1 {
					return fmt.Errorf("%s %d: want at least 1", name, v)
				}
			}
			if idle < 0 {
				return fmt.Errorf("--idle-exit %v: want 0 (serve until stopped) or a positive duration", idle)
			}
			if hello <= 0 {
				return fmt.Errorf("--hello-timeout %v: want a positive duration", hello)
			}
			cfg := daemon.Config{
				Socket:       socket,
				IdleExit:     idle,
				Logger:       slog.New(slog.NewTextHandler(os.Stderr, nil)),
				NoFastPath:   noFast,
				Limits:       limits,
				HelloTimeout: hello,
				MaxFiles:     maxFiles,
				Takeover:     takeover,
				Metrics:      metrics,
				MetricsAny:   metricsAny,
				MetricsMode:  metricsMode,
			}
			if !foreground { // in the background, with these options
				if err := daemon.StartService(cfg); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "ipn daemon serving %s\n", socket)
				return nil
			}
			return daemon.Serve(ctx, cfg)
		},
	}
	cmd.Flags().BoolVarP(&foreground, "foreground", "f", false, "serve in this process instead of starting a background daemon")
	cmd.Flags().BoolVar(&takeover, "takeover", false, "take over from the daemon serving the socket, which hands everything over and exits (an upgrade)")
	cmd.Flags().StringVar(&socket, "socket", "", "control socket path (default $IPN_SOCKET, "+daemon.SystemSocket+" for root, else per user)")
	cmd.Flags().StringVar(&cpuprofile, "cpuprofile", "", "with --foreground, write a CPU profile (go tool pprof) here when stopped")
	cmd.Flags().BoolVar(&noFast, "no-fast-path", false, "give every member a socket, not shared-memory rings")
	cmd.Flags().DurationVar(&idle, "idle-exit", 0, "exit after this long without clients (0: serve until stopped)")
	d := daemon.DefaultLimits
	cmd.Flags().IntVar(&limits.Networks, "max-networks", d.Networks, "most networks a user may have")
	cmd.Flags().IntVar(&limits.Ports, "max-ports", d.Ports, "most ports a user's requests may hold")
	cmd.Flags().IntVar(&limits.Conns, "max-conns", d.Conns, "most connections a user may have to the daemon")
	cmd.Flags().Int64Var(&shmMiB, "max-shm", d.Shm>>20, "MiB of fast-path rings a user's members may have (then sockets)")
	cmd.Flags().Int64Var(&memMiB, "max-memory", d.Memory>>20, "MiB of messages a user's networks may hold")
	cmd.Flags().DurationVar(&hello, "hello-timeout", daemon.DefaultHelloTimeout, "how long a new connection may stay silent")
	cmd.Flags().IntVar(&maxFiles, "max-files", 0, "the daemon's descriptor limit (0: root takes the kernel's most)")
	cmd.Flags().StringVar(&metrics, "metrics", "", "serve Prometheus metrics at http://ADDR/metrics: a loopback HOST:PORT or a Unix socket path")
	cmd.Flags().BoolVar(&metricsAny, "metrics-any", false, "allow a --metrics address that is not loopback (anyone reaching it sees every user's networks)")
	cmd.Flags().StringVar(&metricsMod, "metrics-mode", "0600", "mode of a --metrics Unix socket")
	return cmd
}
