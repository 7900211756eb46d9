package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/ipn-project/ipn"
)

func init() {
	commands = append(commands, vdeCmd)
}

func vdeCmd() *cobra.Command {
	var proto, mode, group string
	cmd := &cobra.Command{
		Use:   "vde PATH DIR",
		Short: "Serve a network to VDE clients (QEMU, vde_plug) at a VDE switch directory",
		Long: `Make the IPN network at PATH reachable by every VDE 2 client through the
directory DIR, as if a vde_switch ran there: the clients become ports of
the network. The network is created if it does not exist (--proto chooses
its policy; switch by default here), else joined as a manager (needs x).
It serves until interrupted; then the clients' ports go.

  ipn vde /tmp/lan /tmp/lan.vde &
  qemu-system-x86_64 ... -netdev vde,id=n0,sock=/tmp/lan.vde -device virtio-net,netdev=n0
  vde_plug vde:///tmp/lan.vde[5]        # asks for port 5

This process is the switch: it makes DIR (or takes an existing one of
yours that no one else may write), its control socket DIR/ctl and the
ports' data sockets, and connects to the clients' data sockets, with your
rights (as each client, when run by root); the daemon is handed the
sockets and touches no path. DIR/ctl gets --mode (by default rw for each
class, owner, group or others, with r or w on the network file, so that
every client with rights on the network can connect) and --group (by
default the network file's); DIR gets r-x for the same classes.

Each client's rights come from the network file's rights for its user,
ACLs included (no w: it only receives; no r: it only sends; neither:
refused), bounded by yours; its data socket must be its own.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, ok := ipn.ProtocolByName(proto)
			if !ok {
				return fmt.Errorf("unknown --proto %q", proto)
			}
			s, err := ipn.NewSocket(p)
			if err != nil {
				return err
			}
			defer s.Close()
			if err := s.Bind(args[0]); err != nil {
				return err
			}
			var opts ipn.VDEOptions
			if mode != "" {
				m, err := strconv.ParseUint(mode, 8, 32)
				if err != nil || m > 0o777 || m == 0 {
					return fmt.Errorf("--mode %q: want an octal mode from 1 to 777, such as 660", mode)
				}
				opts.Mode = os.FileMode(m)
			}
			opts.Group = group
			if err := s.ServeVDEWith(args[1], opts); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "ipn vde: %s serves VDE clients at %s\n", args[0], args[1])
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			<-ctx.Done()
			return nil
		},
	}
	cmd.Flags().StringVarP(&proto, "proto", "p", "switch", "policy of a network made here (any joins an existing one as it is)")
	cmd.Flags().StringVarP(&mode, "mode", "m", "", "octal mode of DIR/ctl, as vde_switch -m (default: what the network file's rights need)")
	cmd.Flags().StringVarP(&group, "group", "g", "", "group of DIR and DIR/ctl, name or number, as vde_switch -g (default: the network file's)")
	return cmd
}
