package main

import (
	"context"
	"fmt"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/ipn-project/ipn"
)

func init() {
	commands = append(commands, vdeCmd)
}

func vdeCmd() *cobra.Command {
	var proto string
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

Each client's rights come from the network file's mode for its user (no w:
it only receives; no r: it only sends; neither: refused), and it must be
able to read and write its own data socket, as vde_switch requires.`,
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
			if err := s.ServeVDE(args[1]); err != nil {
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
	return cmd
}
