package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/devfs"
)

func init() { commands = append(commands, mountCmd) }

func mountCmd() *cobra.Command {
	var nets []string
	var debug, lines, noRejoin bool
	cmd := &cobra.Command{
		Use:   "mount DIR",
		Short: "Show networks as device files in DIR (FUSE)",
		Long: `Mount a FUSE file system at DIR in which networks are files: every network
the daemon serves (kept up to date), or only those given with --net. A
network's file is named by its path without the leading '/', with the
other '/' replaced by '_' and '_' and '%' by %5F and %25 (/tmp/chat is
DIR/tmp_chat, /tmp/a_b is DIR/tmp_a%5Fb); it has the network file's owner,
group and mode.

Opening a file joins the network with the rights of the process that
opens it, checked against that mode: read-only opens receive, write-only
opens send. Each read returns one message, each write sends one, byte for
byte: a message without a newline reads back without one, and a trailing
'\n' written is sent (echo hi sends "hi\n"). Read with a buffer of the
network's MTU: a longer message is truncated. With --lines the files are
for line tools instead: each read ends its message with '\n' (added if it
has none), each write strips one trailing '\n' (echo hi sends "hi").
A network whose MTU is over 124 KiB (to 64 MiB) has files that are
streams (no seeking): the kernel cuts a read or write in 128 KiB
requests, but a read still returns one message and a write sends one, at
once unless it ends exactly at a request's end (a page-aligned buffer of
a multiple of 128 KiB), which goes when the next write begins or the file
is closed. One user's open files hold at most 64 MiB of message buffers
(two of the MTU per file opened for reading); more opens fail (EDQUOT).
Over an MTU of 4 MiB, files hold the messages they have instead: a
message waits to be received while the user's files hold too much, and
a write that would hold too much fails (EDQUOT).
poll/select/epoll work: a file is readable when a message is waiting for
it, writable when it was opened for writing.

The file system is mounted with fusermount3 (package fuse3). As root (or
with user_allow_other in /etc/fuse.conf) it is open to all users,
otherwise only to the caller. SIGINT or SIGTERM unmounts.

Examples:
  ipn mount --lines /dev/ipn &
  echo hello > /dev/ipn/tmp_chat       # send one message, "hello"
  head -n1 /dev/ipn/tmp_chat           # receive one, as a line`,
		Args: cobra.ExactArgs(1),
		RunE: interruptible(func(ctx context.Context, cmd *cobra.Command, args []string) error {
			return runMount(ctx, args[0], nets, devfs.Options{Lines: lines, Rejoin: !noRejoin}, debug)
		}),
	}
	cmd.Flags().StringArrayVar(&nets, "net", nil, "show only the network at this path (repeatable)")
	cmd.Flags().BoolVar(&lines, "lines", false, "line mode: reads add a missing trailing newline, writes strip one")
	cmd.Flags().BoolVar(&debug, "debug", false, "log FUSE requests")
	cmd.Flags().BoolVar(&noRejoin, "no-rejoin", false, "an open file fails when the daemon goes away, instead of re-joining")
	return cmd
}

func runMount(ctx context.Context, dir string, nets []string, opts devfs.Options, debug bool) error {
	fsys, err := devfs.New(nets, opts)
	if err != nil {
		return err
	}
	srv, err := devfs.Mount(dir, fsys, debug)
	if err != nil {
		return mountError(dir, err)
	}
	fmt.Fprintf(os.Stderr, "ipn: networks mounted at %s\n", dir)
	done := make(chan struct{})
	go func() {
		srv.Wait() // unmounted from outside (umount, fusermount3 -u)
		close(done)
	}()
	select {
	case <-ctx.Done():
		return srv.Stop()
	case <-done:
		return nil
	}
}

// mountError says why mounting at dir failed with err: a "FUSE is not
// available" may stand for a missing mount point or a /dev/fuse the user
// may not open, which it names instead.
func mountError(dir string, err error) error {
	if !errors.Is(err, devfs.ErrNoFUSE) {
		return fmt.Errorf("mount %s: %w", dir, err)
	}
	if _, serr := os.Stat(dir); serr != nil {
		return fmt.Errorf("mount %s: the mount point is missing (make it: mkdir -p %s): %w", dir, dir, serr)
	}
	if fi, serr := os.Stat("/dev/fuse"); serr == nil {
		if aerr := unix.Faccessat(unix.AT_FDCWD, "/dev/fuse", unix.R_OK|unix.W_OK, unix.AT_EACCESS); aerr != nil {
			return fmt.Errorf("mount %s: /dev/fuse (mode %v) is not open to you: as root, chmod 666 /dev/fuse (its usual mode), or mount as root: %w",
				dir, fi.Mode().Perm(), aerr)
		}
	}
	return fmt.Errorf("mount %s: %w", dir, err)
}
