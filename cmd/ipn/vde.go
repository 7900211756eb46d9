package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/ipn-project/ipn"
)

func init() {
	commands = append(commands, vdeCmd)
}

func vdeCmd() *cobra.Command {
	var proto, mode, group string
	var noRejoin bool
	var mf mgmtFlags
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
refused), bounded by yours; its data socket must be its own.

When the daemon goes away, ipn vde binds the network again once a daemon
answers (making it again, with its shape), keeps serving new clients, and
hands the clients it served to the new daemon with the data sockets it
kept; a client it cannot hand over is named in its log and its control
stream closed. With --no-rejoin it exits with status 1 instead.

With --mgmt SOCK it also serves vde_switch's management console at SOCK
(as vde_switch -M; see ipn mgmt --help): unixterm SOCK, port/print,
hash/print, vlan/create... Its shutdown command ends ipn vde.`,
		Args: cobra.ExactArgs(2),
		RunE: interruptible(func(ctx context.Context, cmd *cobra.Command, args []string) error {
			p, ok := ipn.ProtocolByName(proto)
			if !ok {
				return fmt.Errorf("--proto %q: want any or one of %s", proto, strings.Join(ipn.ProtocolNames(), ", "))
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
			s, err := bindVDE(args[0], p, cmd.Flags().Changed("proto"), !noRejoin, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			defer s.Close()
			if err := s.ServeVDEWith(args[1], opts); err != nil {
				return err
			}
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			ctlMode := opts.Mode
			if st, err := os.Stat(filepath.Join(args[1], "ctl")); err == nil {
				ctlMode = st.Mode().Perm()
			}
			con, err := mf.serve(s, args[0], args[1], ctlMode, cancel)
			if err != nil {
				return err
			}
			if con != nil {
				defer con.Close()
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "ipn vde: %s serves VDE clients at %s\n", args[0], args[1])
			select {
			case <-ctx.Done():
				return nil
			case <-s.Done():
				return fmt.Errorf("%s: no longer serving VDE clients at %s: %w", args[0], args[1], s.Err())
			}
		}),
	}
	cmd.Flags().StringVarP(&proto, "proto", "p", "switch", "policy of a network made here; an existing network is served as it is unless --proto names a policy, which must then be its own")
	cmd.Flags().StringVarP(&mode, "mode", "m", "", "octal mode of DIR/ctl, as vde_switch -m (default: what the network file's rights need)")
	cmd.Flags().BoolVar(&noRejoin, "no-rejoin", false, "exit when the daemon goes away instead of re-joining")
	mf.add(cmd)
	cmd.Flags().StringVarP(&group, "group", "g", "", "group of DIR and DIR/ctl, name or number, as vde_switch -g (default: the network file's)")
	return cmd
}

// bindVDE binds the network at path to serve it: a network made here gets
// proto; an existing one is taken as it is, unless the user asked for
// proto, which must then be the network's.
func bindVDE(path string, proto ipn.Protocol, asked, rejoin bool, stderr io.Writer) (*ipn.Socket, error) {
	for {
		s, err := ipn.NewSocket(proto)
		if err != nil {
			return nil, err
		}
		if err = setRejoin(s, rejoin, "ipn vde", path, stderr); err == nil {
			err = s.Bind(path)
		}
		if err == nil {
			return s, nil
		}
		s.Close()
		switch {
		case !errors.Is(err, syscall.EPROTO) || proto == ipn.Any:
			return nil, err
		case asked:
			return nil, fmt.Errorf("%w (--proto %s asked for another policy: drop --proto to serve the network as it is)", err, proto)
		}
		proto = ipn.Any // it exists with another policy: take it as it is
	}
}
