package main

import (
	"context"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn"
	"github.com/ipn-project/ipn/internal/vdemgmt"
)

func init() {
	commands = append(commands, mgmtCmd)
}

// mgmtFlags are the flags of a management console: --mgmt, --mgmt-mode,
// --mgmt-group.
type mgmtFlags struct {
	path, mode, group string
}

func (f *mgmtFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVarP(&f.path, "mgmt", "M", "", "serve vde_switch's management console at this socket path, as vde_switch -M (it must not exist, or be a dead socket)")
	cmd.Flags().StringVar(&f.mode, "mgmt-mode", "600", "octal mode of the --mgmt socket, as vde_switch --mgmtmode (whoever may connect may read; changes need x on the network)")
	cmd.Flags().StringVar(&f.group, "mgmt-group", "", "group of the --mgmt socket, name or number, as vde_switch --mgmtgroup (default: yours)")
}

// serve starts the console of the network s is bound to, if --mgmt asks
// for one; shutdown is what its shutdown command does. The network file
// is opened here, once: every command acts on that file's network.
func (f *mgmtFlags) serve(s *ipn.Socket, netPath, vdeDir string, vdeMode os.FileMode, shutdown func()) (*console, error) {
	if f.path == "" {
		return nil, nil
	}
	m, err := strconv.ParseUint(f.mode, 8, 32)
	if err != nil || m > 0o777 || m == 0 {
		return nil, fmt.Errorf("--mgmt-mode %q: want an octal mode from 1 to 777, such as 600 or 660", f.mode)
	}
	gid := -1
	if f.group != "" {
		if gid, err = groupID(f.group); err != nil {
			return nil, fmt.Errorf("--mgmt-group %q: %w", f.group, err)
		}
	}
	abs, err := filepath.Abs(netPath)
	if err != nil {
		return nil, fmt.Errorf("network %q: %w", netPath, err)
	}
	fd, err := unix.Open(abs, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("network file %s: %w", abs, err)
	}
	file := os.NewFile(uintptr(fd), abs)
	con, err := vdemgmt.Listen(vdemgmt.Config{
		Net:  &consoleNet{s: s, file: file},
		Path: f.path, Mode: os.FileMode(m), Group: gid,
		VDEDir: vdeDir, VDEMode: vdeMode, Shutdown: shutdown,
	})
	if err != nil {
		file.Close()
		return nil, err
	}
	return &console{Console: con, file: file}, nil
}

// console is a console being served and the network file it acts on;
// Close stops the one and closes the other.
type console struct {
	*vdemgmt.Console
	file *os.File
}

func (c *console) Close() error {
	c.Console.Close()
	return c.file.Close()
}

// consoleNet is the network a console serves, through the bound socket
// of its manager and the daemon's answers about the network file opened
// at start (never its path again).
type consoleNet struct {
	s    *ipn.Socket
	file *os.File
}

// File implements vdemgmt.Network.File.
func (n *consoleNet) File() *os.File { return n.file }

func (n *consoleNet) info() (ipn.NetInfo, error) {
	nets, err := ipn.ListFile(n.file)
	if err != nil {
		return ipn.NetInfo{}, err
	}
	if len(nets) != 1 {
		return ipn.NetInfo{}, fmt.Errorf("network %s: the daemon lists %d networks there: %w", n.file.Name(), len(nets), syscall.ENOENT)
	}
	return nets[0], nil
}

func (n *consoleNet) Ports() ([]vdemgmt.Port, error) {
	ni, err := n.info()
	if err != nil {
		return nil, err
	}
	ports := make([]vdemgmt.Port, 0, len(ni.PortsInfo))
	for _, p := range ni.PortsInfo {
		ports = append(ports, vdemgmt.Port{Num: p.Port, Descr: p.Descr, Peer: p.Peer,
			MsgsIn: p.MsgsIn, BytesIn: p.BytesIn, MsgsOut: p.MsgsOut, BytesOut: p.BytesOut})
	}
	return ports, nil
}

func (n *consoleNet) NumPorts() (int, error)             { return n.s.NumNodes() }
func (n *consoleNet) SetNumPorts(v int) error            { return n.s.ChangeNumNodes(v) }
func (n *consoleNet) Option(name string) (string, error) { return ipn.PolicyOptionFile(n.file, name) }
func (n *consoleNet) SetOption(name, value string) error {
	return ipn.SetPolicyOptionFile(n.file, name, value)
}

func mgmtCmd() *cobra.Command {
	var f mgmtFlags
	var rejoin bool
	cmd := &cobra.Command{
		Use:   "mgmt PATH --mgmt SOCK",
		Short: "Serve vde_switch's management console for the network at PATH",
		Long: `Bind the IPN network at PATH as a manager (making it, a switch, if it does
not exist) and serve vde_switch's management console at the socket SOCK
(--mgmt), so that unixterm, vdeterm, unixcmd and scripts written for
vde_switch -M drive it:

  ipn mgmt /tmp/lan --mgmt /tmp/lan.mgmt &
  unixterm /tmp/lan.mgmt
  unixcmd -f /etc/vde2/vdecmd -s /tmp/lan.mgmt port/print

Whoever may connect to SOCK (--mgmt-mode, 600 by default) may read; a
command that changes anything needs x on the network file for the user
who sends it (this program asks the kernel with that user's credentials
when it runs as root; run by another user it lets only that user change).
The console's shutdown ends this program: the network goes with it if no
one else is bound or connected to it. ipn vde --mgmt serves the same
console beside a VDE switch directory.`,
		Args: cobra.ExactArgs(1),
		RunE: interruptible(func(ctx context.Context, cmd *cobra.Command, args []string) error {
			if f.path == "" {
				return fmt.Errorf("--mgmt SOCK: want the path of the console's socket")
			}
			s, err := bindVDE(args[0], ipn.VDESwitch, false, rejoin, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			defer s.Close()
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			con, err := f.serve(s, args[0], "", 0, cancel)
			if err != nil {
				return err
			}
			defer con.Close()
			fmt.Fprintf(cmd.ErrOrStderr(), "ipn mgmt: %s has vde_switch's console at %s\n", args[0], f.path)
			select {
			case <-ctx.Done():
				return nil
			case <-s.Done():
				return fmt.Errorf("%s: no longer bound: %w", args[0], s.Err())
			}
		}),
	}
	f.add(cmd)
	cmd.Flags().BoolVar(&rejoin, "rejoin", true, "bind the network again when the daemon goes away")
	return cmd
}

// groupID returns the id of group g, a name or a number.
func groupID(g string) (int, error) {
	if n, err := strconv.Atoi(g); err == nil && n >= 0 {
		return n, nil
	}
	gr, err := user.LookupGroup(strings.TrimSpace(g))
	if err != nil {
		return -1, err
	}
	return strconv.Atoi(gr.Gid)
}
