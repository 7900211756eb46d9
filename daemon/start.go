package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"github.com/ipn-project/ipn/internal/ctlsock"
	"github.com/ipn-project/ipn/internal/spec"
	"golang.org/x/sys/unix"
)

// NoAutostartEnv names the environment variable that, set to 1, stops the
// library from starting a daemon when none is running.
const NoAutostartEnv = spec.NoAutostartEnv

// childEnv marks the process the library re-executes as a daemon.
const childEnv = spec.DaemonChildEnv

// AutoIdleExit is how long a daemon started by the library lives without
// clients.
const AutoIdleExit = 30 * time.Second

// startTimeout bounds the wait for a daemon being started.
const startTimeout = 10 * time.Second

// Start starts a daemon in the background on socket (DefaultSocket() if
// empty), as the library does when none answers, and returns once it
// serves. It does nothing if one already answers there. Such a daemon
// exits once it has had no clients for AutoIdleExit, and tells systemd
// nothing: it is a program's, not a service's.
func Start(socket string) error {
	if socket == "" {
		socket = DefaultSocket()
	}
	return start(socket, nil)
}

// StartService starts a daemon of cfg (its socket DefaultSocket() if
// empty) in the background, as ipn daemon does, and returns once it
// serves. Of cfg it keeps Takeover, the limits, IdleExit (zero: it serves
// until stopped), NoFastPath, HelloTimeout, MaxFiles and the metrics'
// address and mode. Unless it takes
// over (cfg.Takeover), it fails with ErrRunning if a daemon answers there
// already. The daemon inherits NOTIFY_SOCKET: it tells systemd when it
// serves, as the service's main process.
func StartService(cfg Config) error {
	if cfg.Socket == "" {
		cfg.Socket = DefaultSocket()
	}
	return start(cfg.Socket, &childConfig{cfg.Takeover, cfg.IdleExit, cfg.NoFastPath, cfg.Limits, cfg.HelloTimeout, cfg.MaxFiles,
		cfg.Metrics, cfg.MetricsAny, cfg.MetricsMode})
}

// StartTakeover is StartService with cfg.Takeover set: a daemon that takes
// over from the one serving there, if one does (see Config.Takeover).
func StartTakeover(cfg Config) error {
	cfg.Takeover = true
	return StartService(cfg)
}

// configEnv hands the re-executed daemon of StartService its
// configuration (childConfig, JSON); without it, the daemon is the
// library's (Start).
const configEnv = "IPN_DAEMON_CONFIG"

// childConfig is what a re-executed daemon of StartService serves with.
type childConfig struct {
	Takeover     bool
	IdleExit     time.Duration
	NoFastPath   bool
	Limits       Limits
	HelloTimeout time.Duration
	MaxFiles     int
	Metrics      string
	MetricsAny   bool
	MetricsMode  os.FileMode
}

// config returns the Config c describes.
func (c *childConfig) config() Config {
	return Config{Takeover: c.Takeover, IdleExit: c.IdleExit, NoFastPath: c.NoFastPath, Limits: c.Limits,
		HelloTimeout: c.HelloTimeout, MaxFiles: c.MaxFiles, Metrics: c.Metrics, MetricsAny: c.MetricsAny, MetricsMode: c.MetricsMode}
}

// ProcessName is the name a daemon this package starts takes, as ps and
// /proc/PID/comm show it, whatever program started it.
const ProcessName = "ipn"

// daemonArgs returns the argument vector, for ps to show, of a daemon
// re-executed to serve socket with child (nil: the library's): what ipn
// daemon would be given to serve that way. The daemon reads its
// configuration from its environment, not from these.
func daemonArgs(socket string, child *childConfig) []string {
	args := []string{ProcessName, "daemon", "--socket", socket}
	idle := AutoIdleExit
	if child != nil {
		idle = child.IdleExit
		if child.Takeover {
			args = append(args, "--takeover")
		}
	}
	if idle > 0 {
		args = append(args, "--idle-exit", idle.String())
	}
	return args
}

// start runs a daemon on socket and waits until it serves: the library's
// if child is nil, else one of that configuration. A lock makes racing
// starters take turns; the later ones find the daemon running.
func start(socket string, child *childConfig) error {
	if err := CheckSocket(socket); err != nil {
		return fmt.Errorf("start ipn daemon: %w", err)
	}
	if err := ctlsock.MakeDir(filepath.Dir(socket)); err != nil {
		return fmt.Errorf("start ipn daemon: %w", err)
	}
	lock, err := ctlsock.OpenBeside(socket+".start", os.O_RDWR)
	if err != nil {
		return fmt.Errorf("start ipn daemon: %w", err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("start ipn daemon: lock: %w", err)
	}
	if c, err := ctlsock.Dial(socket); err == nil {
		c.Close()
		switch {
		case child == nil:
			return nil
		case !child.Takeover:
			return fmt.Errorf("%s: %w; ipn daemon --takeover replaces it (a daemon a program started for itself exits after %v without clients)",
				socket, ErrRunning, AutoIdleExit)
		}
	} else if errors.Is(err, ctlsock.ErrNotDaemon) {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("start ipn daemon: %w", err)
	}
	logPath := socket + ".log"
	logf, err := ctlsock.OpenBeside(logPath, os.O_WRONLY|os.O_APPEND)
	if err != nil {
		return fmt.Errorf("start ipn daemon: %w", err)
	}
	defer logf.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("start ipn daemon: %w", err)
	}
	defer r.Close()
	// The child starts the daemon as its own child and exits, so the
	// daemon is adopted by init and this process leaves no zombie.
	cmd := exec.Command(exe)
	cmd.Args = daemonArgs(socket, child)
	cmd.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, configEnv+"=") })
	cmd.Env = append(cmd.Env, childEnv+"=1", SocketEnv+"="+socket)
	if child != nil {
		b, err := json.Marshal(child)
		if err != nil {
			return fmt.Errorf("start ipn daemon: %w", err)
		}
		cmd.Env = append(cmd.Env, configEnv+"="+string(b))
	} else {
		// A daemon a program starts for itself is no service's: only
		// ipn daemon's (a service's start or reload) tells systemd.
		cmd.Env = slices.DeleteFunc(cmd.Env, func(kv string) bool { return strings.HasPrefix(kv, "NOTIFY_SOCKET=") })
	}
	cmd.Stderr = logf
	cmd.ExtraFiles = []*os.File{w}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Run()
	w.Close()
	if err != nil {
		return fmt.Errorf("start ipn daemon: %w", err)
	}
	wait := startTimeout
	if child != nil && child.Takeover {
		wait += takeoverTimeout + freezeTimeout // a hand-over may take that long
	}
	r.SetReadDeadline(time.Now().Add(wait))
	var b [1]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return fmt.Errorf("start ipn daemon: it did not come up (%v); see %s%s", err, logPath, lastLine(logPath))
	}
	return nil
}

// lastLine returns ": " and the last line of the file at path, or "".
func lastLine(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if l := lines[len(lines)-1]; l != "" {
		return ": " + l
	}
	return ""
}

// RunIfChild turns the process into a daemon if Start re-executed it to be
// one, and then exits; otherwise it returns at once. Package
// daemon/autostart calls it from its init.
func RunIfChild() {
	runHolderIfChild() // the holder of device ports (holder.go), if that is what this process is
	switch os.Getenv(childEnv) {
	case "1":
		// Stage one: start the daemon itself, detached, and go.
		setProcessName()
		exe, err := os.Executable()
		if err == nil {
			cmd := exec.Command(exe)
			cmd.Args = os.Args // daemonArgs, for ps
			cmd.Env = append(os.Environ(), childEnv+"=2")
			cmd.Stderr = os.Stderr
			cmd.ExtraFiles = []*os.File{os.NewFile(3, "ready")}
			err = cmd.Start()
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "ipn daemon:", err)
			os.Exit(1)
		}
		os.Exit(0)
	case "2":
		setProcessName()
		os.Unsetenv(childEnv)
		cfg := Config{IdleExit: AutoIdleExit}
		if cc := os.Getenv(configEnv); cc != "" {
			var c childConfig
			if err := json.Unmarshal([]byte(cc), &c); err != nil {
				fmt.Fprintf(os.Stderr, "ipn daemon: $%s %q: %v\n", configEnv, cc, err)
				os.Exit(1)
			}
			cfg = c.config()
		}
		os.Unsetenv(configEnv)
		ready := os.NewFile(3, "ready")
		log := slog.New(slog.NewTextHandler(os.Stderr, nil))
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		cfg.Logger = log
		cfg.Ready = func() {
			ready.Write([]byte{1})
			ready.Close()
		}
		err := Serve(ctx, cfg)
		stop()
		if err != nil && !errors.Is(err, ErrRunning) {
			log.Error("daemon", "err", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
}

// setProcessName names this process ProcessName (its comm, which ps and
// top show), whatever the program's file is called. It runs from an
// init, on the main thread, whose name is the process's.
func setProcessName() {
	unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(&[]byte(ProcessName + "\x00")[0])), 0, 0, 0)
}

// ErrNotDaemon reports a control socket served by a process that is
// neither root nor the caller's user. Deprecated: the client's checks are
// in ipn.Dialer; this is ipn.ErrNotDaemon.
var ErrNotDaemon = ctlsock.ErrNotDaemon

// ErrNoDaemon reports that no daemon answers at the control socket.
// Deprecated: use ipn.ErrNoDaemon.
var ErrNoDaemon = ctlsock.ErrNoDaemon

// Dial connects to the daemon that serves this process, starting one (this
// program, re-executed) if none answers. Deprecated: use ipn.Dialer, and
// import daemon/autostart to start a daemon.
func Dial() (*net.UnixConn, error) { return ctlsock.Connect("", Start) }

// CheckSocket refuses a control socket path that holds something other
// than a socket (a regular file, a directory...): a daemon must not
// replace it, and none can serve there. A missing path or a socket, live
// or stale, passes.
func CheckSocket(path string) error { return ctlsock.CheckSocket(path) }
