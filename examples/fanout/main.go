// Command fanout serves IPN networks with the fanout policy (package
// fanout): media streams that members subscribe to by name.
//
//	fanout [--socket S] PATH...
//
// It runs an IPN daemon in this process on control socket S (by default
// the one the ipn library uses: $IPN_SOCKET, else the user's or the
// system's), creates a fanout network at each PATH, prints "serving PATH"
// for each and serves until SIGINT or SIGTERM. Members join with the
// library or `ipn cat`, pointed at S by $IPN_SOCKET; see README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/ipn-project/ipn"
	"github.com/ipn-project/ipn/daemon"
	"github.com/ipn-project/ipn/examples/fanout/fanout"
)

func main() {
	flags := flag.NewFlagSet("fanout", flag.ContinueOnError)
	socket := flags.String("socket", "", "the daemon's control socket (default: $IPN_SOCKET, else the user's or the system's)")
	flags.Usage = func() {
		fmt.Fprintf(flags.Output(), "usage: fanout [--socket S] PATH...\n\nServe a fanout network at each PATH. Flags:\n")
		flags.PrintDefaults()
	}
	if err := flags.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		os.Exit(2)
	}
	if flags.NArg() == 0 {
		flags.Usage()
		os.Exit(2)
	}
	if err := run(*socket, flags.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "fanout:", err)
		os.Exit(1)
	}
}

func run(socket string, paths []string) error {
	if socket == "" {
		socket = daemon.DefaultSocket()
	}
	if err := fanout.Register(); err != nil {
		return err
	}
	// The ipn library of this process talks to the daemon it serves, and
	// never starts another.
	os.Setenv(daemon.SocketEnv, socket)
	os.Setenv(daemon.NoAutostartEnv, "1")

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ready := make(chan struct{})
	served := make(chan error, 1)
	go func() {
		served <- daemon.Serve(ctx, daemon.Config{
			Socket: socket,
			Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
			Ready:  func() { close(ready) },
		})
	}()
	select {
	case <-ready:
	case err := <-served:
		if err == nil {
			err = errors.New("the daemon stopped before serving")
		}
		return err
	}

	// A bound socket keeps its network alive; it takes no port.
	var nets []*ipn.Socket
	closeAll := func() {
		for _, s := range nets {
			s.Close()
		}
	}
	for _, path := range paths {
		s, err := ipn.NewSocket(fanout.Tag)
		if err == nil {
			if err = s.Bind(path); err != nil {
				s.Close()
			}
		}
		if err != nil {
			closeAll()
			stop()
			<-served
			return err
		}
		nets = append(nets, s)
		fmt.Printf("serving %s\n", path)
	}

	select {
	case <-ctx.Done():
		closeAll() // the networks go, and their files with them
		return <-served
	case err := <-served:
		closeAll()
		if err == nil {
			err = errors.New("the daemon stopped")
		}
		return err
	}
}
