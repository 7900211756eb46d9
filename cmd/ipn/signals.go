package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// runFunc is a command's body under interruptible.
type runFunc func(ctx context.Context, cmd *cobra.Command, args []string) error

// interruptible makes a long-running command end on SIGINT or SIGTERM: run
// gets a context the first signal ends (a second one kills the process),
// and the command then exits with status 128 + the signal's number (130
// for SIGINT, 143 for SIGTERM), as shells expect of an interrupted program.
func interruptible(run runFunc) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		ctx, cancel := context.WithCancel(cmd.Context())
		defer cancel()
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
		got := make(chan os.Signal, 1)
		stopped := make(chan struct{})
		watched := make(chan struct{})
		go func() {
			defer close(watched)
			select {
			case sig := <-sigs:
				signal.Stop(sigs) // the next one kills
				got <- sig
				cancel()
			case <-stopped:
			}
		}()
		err := run(ctx, cmd, args)
		signal.Stop(sigs)
		close(stopped)
		<-watched
		select {
		case sig := <-got:
			if err != nil && interruption(err) {
				err = nil
			}
			return signalExit{sig: sig.(syscall.Signal), err: err}
		default:
			return err
		}
	}
}

// interruption reports whether err is only how the signal stopped the
// command's work.
func interruption(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, net.ErrClosed)
}

// signalExit is the result of a command a signal ended: main exits with
// 128 + the signal's number, after printing err if there is one.
type signalExit struct {
	sig syscall.Signal
	err error
}

func (e signalExit) Error() string {
	if e.err != nil {
		return e.err.Error()
	}
	return fmt.Sprintf("interrupted by %v", e.sig)
}

func (e signalExit) Unwrap() error { return e.err }

// status is the exit status of a process that sig ended.
func (e signalExit) status() int { return 128 + int(e.sig) }
