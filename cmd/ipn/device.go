package main

import (
	"context"
	"errors"
	"fmt"
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
         it exits, or now if none does (a tap IPN made goes with it).

A network without that device (ipn ls PATH lists its ports), or no daemon
running, is an error; device starts no daemon.`,
		Args: cobra.ExactArgs(3),
		RunE: interruptible(func(ctx context.Context, cmd *cobra.Command, args []string) error {
			path, op, name := args[0], args[1], args[2]
			if op != "join" && op != "clear" {
				return fmt.Errorf("device: unknown operation %q (join or clear)", op)
			}
			// Look first, starting no daemon: without one, or without
			// the device, there is nothing to join or clear, and a Bind
			// would make a network.
			if err := findDevice(path, name); err != nil {
				return err
			}
			s, err := ipn.NewSocket(ipn.Any)
			if err != nil {
				return err
			}
			defer s.Close()
			if err := s.Bind(path); err != nil {
				return err
			}
			var port int
			if op == "clear" {
				err = s.ClearPersist(name)
			} else {
				port, err = s.JoinDevice(name)
			}
			if errors.Is(err, syscall.ENOENT) {
				return noDevice(path, name)
			}
			if err != nil || op == "clear" {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "joined %s port %d\n", name, port)
			return holdUntil(ctx, s)
		}),
	}
}

// findDevice checks that the network at path has a device port name.
func findDevice(path, name string) error {
	nets, err := ipn.List(path)
	if err != nil {
		return readErr(err, path)
	}
	for _, n := range nets {
		for _, p := range n.PortsInfo {
			if p.Descr == "tap "+name || p.Descr == "grab "+name {
				return nil
			}
		}
	}
	return noDevice(path, name)
}

func noDevice(path, name string) error {
	return fmt.Errorf("no device %s on %s: ipn ls %s lists its ports", name, path, path)
}
