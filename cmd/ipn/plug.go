package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/ipn-project/ipn"
	"github.com/ipn-project/ipn/cable"
)

func init() {
	commands = append(commands, plugCmd)
}

func plugCmd() *cobra.Command {
	var (
		reconnect bool
		descr     string
	)
	cmd := &cobra.Command{
		Use:   "plug PATH URL",
		Short: "Join a network to another place with a virtual cable",
		Long: `Join the IPN network at PATH to the place URL names, like a cable: frames
the network sends to the cable go out of the far end, frames from the far
end enter the network.

URLs:
  - or stdio                   2-byte big-endian length + frame on stdin/stdout,
                               as vde_plug speaks: ipn plug /tmp/a - = ssh host ipn plug /tmp/b -
  ipn://PATH2                  another local IPN network
  vde:///DIR[N]                a vde_switch (or any VDE 2 switch), optionally port N
  udp://LOCAL:PORT/REMOTE:PORT frames as UDP datagrams
  vxlan://GROUP_OR_PEER[:PORT]/vni=N
                               RFC 7348 VXLAN (a Linux "type vxlan" device talks to it)
  vxvde://[GROUP]              vdeplug4's multicast distributed switch

When the far end goes away, plug exits with an error (0 when stdin just
ended), or with --reconnect opens it again, waiting longer each time.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runPlug(cmd, args[0], args[1], reconnect, descr)
		},
	}
	cmd.Flags().BoolVar(&reconnect, "reconnect", false, "open the far end again when it goes away")
	cmd.Flags().StringVar(&descr, "descr", "", "port description (default: cable URL)")
	return cmd
}

func runPlug(cmd *cobra.Command, path, url string, reconnect bool, descr string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	s, err := ipn.NewSocket(ipn.Any)
	if err != nil {
		return err
	}
	defer s.Close()
	if descr == "" {
		descr = "cable " + url
		if len(descr) > 128 {
			descr = descr[:128]
		}
	}
	if err := s.SetDescription(descr); err != nil {
		return err
	}
	if err := s.Connect(path); err != nil {
		return err
	}
	stderr := cmd.ErrOrStderr()
	wait := 100 * time.Millisecond
	for {
		far, err := cable.Open(ctx, url)
		if err == nil {
			wait = 100 * time.Millisecond
			err = cable.Run(ctx, s, far)
		}
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, cable.ErrNetwork):
			return err
		case !reconnect:
			if errors.Is(err, io.EOF) && (url == "-" || url == "stdio") {
				return nil // the input ended: a normal end for a stream
			}
			return err
		}
		fmt.Fprintf(stderr, "ipn plug: %v; again in %v\n", strings.TrimPrefix(err.Error(), "cable "), wait)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		wait = min(2*wait, 10*time.Second)
	}
}
