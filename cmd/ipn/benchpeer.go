package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ipn-project/ipn"
	"github.com/ipn-project/ipn/farend/vdeplug"
	"github.com/ipn-project/ipn/internal/benchpeer"
)

func init() {
	commands = append(commands, benchPeerCmd, benchNetCmd)
}

// benchPeerCmd is the load generator ipn bench starts, one process per
// peer: it joins an IPN network (--kind ipn) or a VDE switch (--kind vde)
// and is driven over its standard input and output (see package
// benchpeer).
func benchPeerCmd() *cobra.Command {
	return &cobra.Command{
		Use:                "bench-peer --kind ipn|vde --target PATH [flags]",
		Short:              "A load generator peer of ipn bench (internal)",
		Hidden:             true,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			var cfg benchpeer.Config
			fs := cfg.FlagSet("bench-peer")
			kind := fs.String("kind", "ipn", "what to join: ipn (a network path) or vde (a VDE switch directory)")
			fs.SetOutput(cmd.ErrOrStderr())
			if err := fs.Parse(args); err != nil {
				if errors.Is(err, flag.ErrHelp) {
					return nil
				}
				return err
			}
			if err := cfg.Check(); err != nil {
				return err
			}
			stop := benchpeer.Watchdog(cfg.Deadline, os.Exit)
			defer stop()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var (
				conn benchpeer.Conn
				err  error
			)
			switch *kind {
			case "ipn":
				conn, err = dialBenchIPN(cfg)
			case "vde":
				conn, err = dialBenchVDE(ctx, cfg)
			default:
				err = fmt.Errorf("unknown --kind %q (want ipn or vde)", *kind)
			}
			if err != nil {
				return err
			}
			// Run writes each line with one write: nothing to flush.
			return benchpeer.Run(conn, cfg, cmd.InOrStdin(), cmd.OutOrStdout())
		},
	}
}

// benchIPN is a benchpeer.BatchConn over an IPN socket.
type benchIPN struct {
	s       *ipn.Socket
	drained chan struct{} // closed when the dropping reader of a sender returns
	ms      []ipn.Message // RecvBatch's, reused
}

func dialBenchIPN(cfg benchpeer.Config) (*benchIPN, error) {
	if cfg.Target == "" {
		return nil, errors.New("--target: the network path is missing")
	}
	s, err := ipn.NewSocket(ipn.Any)
	if err != nil {
		return nil, fmt.Errorf("bench peer %d: %w", cfg.ID, err)
	}
	if cfg.NoFast {
		s.SetFastPath(false)
	}
	if err := s.Connect(cfg.Target); err != nil {
		s.Close()
		return nil, fmt.Errorf("bench peer %d: %w", cfg.ID, err)
	}
	c := &benchIPN{s: s, drained: make(chan struct{})}
	if cfg.Recv {
		close(c.drained)
	} else {
		// A sender alone reads and drops what reaches it (hellos, the
		// switch's loop probes), so that it never holds up a lossless
		// network. (Shutdown(ShutRead) would do, but a switch network
		// then drops the port when its loop probe comes.)
		go func() {
			defer close(c.drained)
			buf := make([]byte, 65536)
			for {
				if _, _, err := s.Recv(buf); err != nil {
					return
				}
			}
		}()
	}
	return c, nil
}

func (c *benchIPN) Send(b []byte) error { return c.s.Send(b) }

func (c *benchIPN) Recv(b []byte) (int, error) {
	n, _, err := c.s.Recv(b)
	return n, err
}

func (c *benchIPN) SendBatch(msgs [][]byte) error {
	_, err := c.s.SendBatch(msgs)
	return err
}

func (c *benchIPN) RecvBatch(bufs [][]byte, sizes []int) (int, error) {
	if len(c.ms) < len(bufs) {
		c.ms = make([]ipn.Message, len(bufs))
	}
	ms := c.ms[:len(bufs)]
	for i := range ms {
		ms[i].Buf = bufs[i]
	}
	n, err := c.s.RecvBatch(ms)
	for i := range n {
		sizes[i] = ms[i].N
	}
	return n, err
}

// RecvView implements benchpeer.Viewer with RecvInPlace.
func (c *benchIPN) RecvView(fn func(b []byte)) error {
	err := c.s.RecvInPlace(func(m []byte, _ ipn.MsgFlags) { fn(m) })
	if errors.Is(err, ipn.ErrOverwritten) {
		return benchpeer.ErrTorn
	}
	return err
}

func (c *benchIPN) Close() error {
	err := c.s.Close()
	<-c.drained
	return err
}

// Report implements benchpeer.Reporter: whether the fast path was used,
// when the socket tells.
func (c *benchIPN) Report(r *benchpeer.Result) {
	fp := c.s.FastPath()
	r.FastPath = &fp
}

// benchVDE is a benchpeer.BatchConn over a VDE 2 switch port.
type benchVDE struct {
	e   *vdeplug.Endpoint
	one [1][]byte
	sz  [1]int
}

func dialBenchVDE(ctx context.Context, cfg benchpeer.Config) (*benchVDE, error) {
	if cfg.Target == "" {
		return nil, errors.New("--target: the VDE switch directory is missing")
	}
	e, err := vdeplug.Dial(ctx, cfg.Target)
	if err != nil {
		return nil, fmt.Errorf("bench peer %d: vde switch %s: %w", cfg.ID, cfg.Target, err)
	}
	return &benchVDE{e: e}, nil
}

func (c *benchVDE) Send(b []byte) error {
	c.one[0] = b
	_, err := c.e.Write(c.one[:])
	return err
}

func (c *benchVDE) Recv(b []byte) (int, error) {
	c.one[0] = b
	if _, err := c.e.Read(c.one[:], c.sz[:]); err != nil {
		return 0, err
	}
	return min(c.sz[0], len(b)), nil
}

func (c *benchVDE) SendBatch(msgs [][]byte) error {
	_, err := c.e.Write(msgs)
	return err
}

func (c *benchVDE) RecvBatch(bufs [][]byte, sizes []int) (int, error) {
	return c.e.Read(bufs, sizes)
}

func (c *benchVDE) Close() error { return c.e.Close() }

// benchNetCmd makes the network of one ipn bench row and holds it: it
// binds the network with the row's policy and flags, serves it to VDE
// clients if asked, prints "ready" and holds it until its input ends.
func benchNetCmd() *cobra.Command {
	var (
		target, proto, vde string
		lossless           bool
		pool, mtu          int
	)
	cmd := &cobra.Command{
		Use:    "bench-net --target PATH",
		Short:  "Make and hold the network of an ipn bench row (internal)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, ok := ipn.ProtocolByName(proto)
			if !ok || p == ipn.Any {
				return fmt.Errorf("unknown --proto %q", proto)
			}
			s, err := ipn.NewSocket(p)
			if err != nil {
				return err
			}
			defer s.Close()
			if pool > 0 {
				if err := s.SetMsgPoolSize(pool); err != nil {
					return fmt.Errorf("pool size %d: %w", pool, err)
				}
			}
			if lossless {
				if err := s.SetFlags(ipn.Lossless); err != nil {
					return fmt.Errorf("lossless: %w", err)
				}
			}
			if mtu > 0 {
				if err := s.SetMTU(mtu); err != nil {
					return fmt.Errorf("mtu %d: %w", mtu, err)
				}
			}
			if err := s.Bind(target); err != nil {
				return err
			}
			if vde != "" {
				if err := s.ServeVDE(vde); err != nil {
					return err
				}
			}
			fmt.Fprintln(cmd.OutOrStdout(), "ready")
			// Hold the network until told to stop or the input ends.
			in := bufio.NewScanner(cmd.InOrStdin())
			for in.Scan() {
				if strings.TrimSpace(in.Text()) == "stop" {
					break
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&target, "target", "", "network path")
	cmd.Flags().StringVar(&proto, "proto", "hub", "policy")
	cmd.Flags().StringVar(&vde, "vde", "", "also serve the network to VDE clients at this directory")
	cmd.Flags().BoolVar(&lossless, "lossless", false, "a lossless network")
	cmd.Flags().IntVar(&pool, "pool", 0, "message pool size (0: the default)")
	cmd.Flags().IntVar(&mtu, "mtu", 0, "the network's MTU in bytes (0: the default)")
	return cmd
}
