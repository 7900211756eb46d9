// Command ipn-bench-nats is the NATS side of ipn bench: NATS core pub/sub
// driven by the same load generator (package internal/benchpeer) as the
// IPN and VDE paths, with one subject per network.
//
//	ipn-bench-nats server
//	    runs an embedded nats-server on 127.0.0.1 (a free port), prints
//	    its URL and serves until its standard input ends.
//	ipn-bench-nats peer --url URL --target SUBJECT [bench-peer flags]
//	    a peer: publishes its load frames to SUBJECT and/or subscribes to
//	    it, driven over standard input and output as ipn bench-peer is.
//
// It is a Go module of its own so that the ipn module does not depend on
// NATS.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/ipn-project/ipn/internal/benchpeer"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: ipn-bench-nats server | peer --url URL --target SUBJECT [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "server":
		err = serve(os.Stdin, os.Stdout)
	case "peer":
		err = peer(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q (want server or peer)", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ipn-bench-nats:", err)
		os.Exit(1)
	}
}

// serve runs a NATS server on loopback until in ends.
func serve(in io.Reader, out io.Writer) error {
	opts := &server.Options{
		Host:                  "127.0.0.1",
		Port:                  server.RANDOM_PORT,
		NoLog:                 true,
		NoSigs:                true,
		MaxPayload:            1 << 20,
		MaxPending:            64 << 20,
		WriteDeadline:         10 * time.Second,
		DisableShortFirstPing: true,
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return fmt.Errorf("nats server: %w", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return errors.New("nats server: not ready in 10s")
	}
	fmt.Fprintln(out, s.ClientURL())
	io.Copy(io.Discard, in)
	s.Shutdown()
	s.WaitForShutdown()
	return nil
}

// peer runs one load generator peer on a NATS connection.
func peer(args []string) error {
	var cfg benchpeer.Config
	fs := cfg.FlagSet("peer")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if err := cfg.Check(); err != nil {
		return err
	}
	if cfg.URL == "" || cfg.Target == "" {
		return errors.New("--url and --target (the subject) are needed")
	}
	stop := benchpeer.Watchdog(cfg.Deadline, os.Exit)
	defer stop()
	c, err := dial(cfg)
	if err != nil {
		return err
	}
	// Run writes each line with one write: nothing to flush.
	return benchpeer.Run(c, cfg, os.Stdin, os.Stdout)
}

// conn is a benchpeer.Conn over a NATS subject. NoEcho keeps a peer's own
// messages from coming back to it, as a hub does.
type conn struct {
	nc      *nats.Conn
	subject string
	sub     *nats.Subscription
}

func dial(cfg benchpeer.Config) (*conn, error) {
	nc, err := nats.Connect(cfg.URL, nats.NoEcho(), nats.Name(fmt.Sprintf("ipn-bench peer %d", cfg.ID)),
		nats.ReconnectBufSize(-1), nats.NoReconnect())
	if err != nil {
		return nil, fmt.Errorf("nats %s: %w", cfg.URL, err)
	}
	c := &conn{nc: nc, subject: cfg.Target}
	if cfg.Recv {
		if c.sub, err = nc.SubscribeSync(cfg.Target); err != nil {
			nc.Close()
			return nil, fmt.Errorf("nats subscribe %s: %w", cfg.Target, err)
		}
		// The subscription is known to the server once a round trip
		// has made it: only then is the peer ready.
		if err := nc.Flush(); err != nil {
			nc.Close()
			return nil, fmt.Errorf("nats flush: %w", err)
		}
	}
	return c, nil
}

// Send publishes b; the client buffers, so frames leave in batches.
func (c *conn) Send(b []byte) error { return c.nc.Publish(c.subject, b) }

// Recv takes the next message of the subscription.
func (c *conn) Recv(b []byte) (int, error) {
	if c.sub == nil {
		return 0, errors.New("not subscribed")
	}
	for {
		m, err := c.sub.NextMsg(time.Hour)
		if errors.Is(err, nats.ErrSlowConsumer) {
			continue // the client dropped messages: counted as lost
		}
		if errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, nats.ErrBadSubscription) {
			return 0, io.EOF
		}
		if err != nil {
			return 0, err
		}
		return copy(b, m.Data), nil
	}
}

// Flush waits until the server has what was published (benchpeer calls it
// when the sender is done).
func (c *conn) Flush() error { return c.nc.FlushTimeout(5 * time.Second) }

// Close closes the connection.
func (c *conn) Close() error {
	c.nc.Close()
	return nil
}
