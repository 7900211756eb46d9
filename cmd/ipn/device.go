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
	commands = append(commands, deviceCmd)
}

func deviceCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "device PATH join|clear NAME",
		Short: "Take over or unpersist a persistent tap or grab port",
		Long: `Act on the device port NAME (a tap or grabbed interface attached with
ipn plug --persist) of the network at PATH; needs x on the network.

  join   take the port over: it belongs to this command, which waits until
         interrupted; it then stays if still persistent, else goes.
  clear  remove its persistence: the port goes when the process that holds
         it exits, or now if none does (a tap IPN made goes with it).`,
		Args: cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			path, op, name := args[0], args[1], args[2]
			if op != "join" && op != "clear" {
				return fmt.Errorf("device: unknown operation %q (join or clear)", op)
			}
			s, err := ipn.NewSocket(ipn.Any)
			if err != nil {
				return err
			}
			defer s.Close()
			if err := s.Bind(path); err != nil {
				return err
			}
			if op == "clear" {
				return s.ClearPersist(name)
			}
			port, err := s.JoinDevice(name)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "joined %s port %d\n", name, port)
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			<-ctx.Done()
			return nil
		},
	}
}
