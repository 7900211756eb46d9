package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/ipn-project/ipn"
)

type catOptions struct {
	bind, recvOnly, sendOnly bool
	proto, mode, descr       string
	ports, mtu, pool, port   int
	lossless, excl, raw      bool
	count                    int
	notices                  bool
	vde                      string
	noRejoin                 bool
}

func catCmd() *cobra.Command {
	var o catOptions
	cmd := &cobra.Command{
		Use:   "cat PATH",
		Short: "Join a network: stdin lines become messages, messages become stdout lines",
		Long: `Join the IPN network at PATH. Each line read from stdin is sent as one
message (empty lines are skipped); each message received is printed as one
line. With --raw, both directions use binary framing instead: a
big-endian length, then the message. The length is 2 bytes on a network
whose MTU is at most 65535, 4 bytes on one whose MTU is over it (up to
64 MiB); a frame longer than the MTU is skipped, and said so.

Without --bind the network must exist (and cat starts no daemon). With --bind, cat creates it (owned
by you, with --mode less your umask) or joins it as a manager (needs x).
Permissions decide the sides: without r on the file cat only sends,
without w it only receives; --send-only without w, --recv-only without r
(or neither right) is an error.

When stdin ends, cat keeps receiving until interrupted (exit status 130
for SIGINT, 143 for SIGTERM) or --count messages arrived (status 0); with
--send-only it exits. If the daemon goes away, cat re-joins when a daemon
answers again (started anew if none runs), making the network again with
--bind, and goes on; it says so on stderr, with the number of messages it
had sent that the old daemon never delivered. With --no-rejoin the network
is lost instead: cat says so and exits with status 1.

The network's shape (--ports, --mtu, --pool, --lossless, --excl, --mode,
--vde) is set by --bind; given without it, they are refused.

Examples:
  ipn cat --bind /tmp/chat                 # a peer; run several
  ipn cat --bind --send-only /tmp/tv < feed  # one sender ...
  ipn cat --recv-only /tmp/tv              # ... receivers join any time`,
		Args: cobra.ExactArgs(1),
		RunE: interruptible(func(ctx context.Context, cmd *cobra.Command, args []string) error {
			return runCat(ctx, cmd, args[0], &o)
		}),
	}
	f := cmd.Flags()
	f.BoolVarP(&o.bind, "bind", "b", false, "create the network, or join it as a manager")
	f.StringVarP(&o.proto, "proto", "p", "any", "delivery policy: any (the network's), "+strings.Join(ipn.ProtocolNames(), ", "))
	f.BoolVarP(&o.recvOnly, "recv-only", "r", false, "only receive (shut down the send side)")
	f.BoolVarP(&o.sendOnly, "send-only", "s", false, "only send (shut down the receive side)")
	f.StringVar(&o.mode, "mode", fmt.Sprintf("%#o", ipn.DefaultMode), "with --bind, permission bits of a new network file (octal, less umask; x is managing)")
	f.IntVar(&o.ports, "ports", 0, fmt.Sprintf("with --bind, number of ports (default %d)", ipn.DefaultNumNodes))
	f.IntVar(&o.mtu, "mtu", 0, fmt.Sprintf("with --bind, largest message in bytes, up to %d (default %d)", ipn.MaxMTU, ipn.DefaultMTU))
	f.IntVar(&o.pool, "pool", 0, fmt.Sprintf("with --bind, message pool size (default %d)", ipn.DefaultPoolSize))
	f.BoolVar(&o.lossless, "lossless", false, "with --bind, senders wait instead of receivers losing messages")
	f.BoolVar(&o.excl, "excl", false, "with --bind, fail if the network exists and refuse other binders")
	f.BoolVar(&o.raw, "raw", false, "binary framing: big-endian length (2 bytes; 4 if the MTU is over 65535) + message")
	f.StringVar(&o.descr, "descr", "", "port description shown by ipn ls")
	f.IntVar(&o.port, "port", -1, "ask for this port number")
	f.IntVarP(&o.count, "count", "n", 0, "exit after receiving this many messages")
	f.BoolVar(&o.notices, "notices", false, "print notices of reader/writer counts to stderr")
	f.StringVar(&o.vde, "vde", "", "with --bind, also serve the network to VDE clients at this directory")
	f.BoolVar(&o.noRejoin, "no-rejoin", false, "exit when the daemon goes away instead of re-joining")
	return cmd
}

// bindOnly are the flags that shape a network Bind makes: they mean
// nothing to a member that only connects.
var bindOnly = []string{"ports", "mtu", "pool", "lossless", "excl", "mode", "vde"}

// setup makes the socket, sets its options and binds/connects it; changed
// reports whether the user gave a flag.
func (o *catOptions) setup(path string, changed func(string) bool, stderr io.Writer) (*ipn.Socket, error) {
	if o.recvOnly && o.sendOnly {
		return nil, errors.New("--recv-only and --send-only exclude each other")
	}
	if !o.bind {
		for _, name := range bindOnly {
			if changed(name) {
				return nil, fmt.Errorf("--%s shapes the network --bind makes: add --bind, or drop --%s to join the network as it is", name, name)
			}
		}
	}
	if o.count < 0 {
		return nil, fmt.Errorf("--count %d: want 0 (no limit) or more", o.count)
	}
	if !o.bind {
		if err := daemonRuns(path); err != nil {
			return nil, err
		}
	}
	proto, ok := ipn.ProtocolByName(o.proto)
	if !ok {
		return nil, fmt.Errorf("--proto %q: want any or one of %s", o.proto, strings.Join(ipn.ProtocolNames(), ", "))
	}
	if o.bind && proto == ipn.Any {
		proto = ipn.Hub
	}
	mode, err := strconv.ParseUint(o.mode, 8, 32)
	if err != nil || mode > 0o777 {
		return nil, fmt.Errorf("--mode %q: want octal permission bits like 0750", o.mode)
	}
	s, err := ipn.NewSocket(proto)
	if err != nil {
		return nil, err
	}
	var flags ipn.Flags
	if o.lossless {
		flags |= ipn.Lossless
	}
	if o.excl {
		flags |= ipn.Excl
	}
	// A flag given is passed on as given, 0 included: the daemon refuses
	// what is out of range, saying what is allowed.
	steps := []func() error{
		func() error { return setRejoin(s, !o.noRejoin, "ipn cat", path, stderr) },
		func() error { return s.SetMode(os.FileMode(mode)) },
		func() error { return setIf(changed("ports"), s.SetNumNodes, o.ports) },
		func() error { return setIf(changed("mtu"), s.SetMTU, o.mtu) },
		func() error { return setIf(changed("pool"), s.SetMsgPoolSize, o.pool) },
		func() error {
			return setIf(flags != 0, func(v int) error { return s.SetFlags(ipn.Flags(v)) }, int(flags))
		},
		func() error { return setIf(changed("port"), s.SetPort, o.port) },
		func() error {
			if o.descr == "" {
				return nil
			}
			return s.SetDescription(o.descr)
		},
		func() error { return setIf(o.notices, func(int) error { return s.SetWantNumNodes(true) }, 0) },
		func() error { return setIf(o.recvOnly, func(int) error { return s.Shutdown(ipn.ShutWrite) }, 0) },
		func() error { return setIf(o.sendOnly, func(int) error { return s.Shutdown(ipn.ShutRead) }, 0) },
	}
	if o.bind {
		steps = append(steps, func() error { return s.Bind(path) })
		if o.vde != "" {
			steps = append(steps, func() error { return s.ServeVDE(o.vde) })
		}
		steps = append(steps, func() error { return s.Connect("") })
	} else {
		steps = append(steps, func() error {
			err := s.Connect(path)
			if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) && isSocketFile(path) {
				return fmt.Errorf("%w (no network there: create it with --bind)", err)
			}
			return err
		})
	}
	steps = append(steps, func() error { return o.checkSides(s, path) })
	for _, step := range steps {
		if err := step(); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

// checkSides refuses a connected socket that cannot do what was asked of
// it: a side the network file's rights do not give is an error when it is
// the only side wanted (or the only one left), never a silent idle port.
func (o *catOptions) checkSides(s *ipn.Socket, path string) error {
	r, w := s.CanRead(), s.CanWrite()
	switch {
	case o.sendOnly && !w:
		return fmt.Errorf("%s: --send-only, but no w permission on the network file: cannot send: %w", path, syscall.EACCES)
	case o.recvOnly && !r:
		return fmt.Errorf("%s: --recv-only, but no r permission on the network file: cannot receive: %w", path, syscall.EACCES)
	case !r && !w:
		return fmt.Errorf("%s: neither r nor w permission on the network file: cannot send or receive: %w", path, syscall.EACCES)
	}
	return nil
}

func setIf(cond bool, set func(int) error, v int) error {
	if !cond {
		return nil
	}
	return set(v)
}

func runCat(ctx context.Context, cmd *cobra.Command, path string, o *catOptions) error {
	s, err := o.setup(path, cmd.Flags().Changed, cmd.ErrOrStderr())
	if err != nil {
		return err
	}
	defer s.Close()
	stderr := cmd.ErrOrStderr()
	canRead, canWrite := s.CanRead() && !o.sendOnly, s.CanWrite() && !o.recvOnly
	if !canWrite && !o.recvOnly {
		fmt.Fprintf(stderr, "ipn cat: %s: no w permission, receiving only\n", path)
	}
	if !canRead && !o.sendOnly {
		fmt.Fprintf(stderr, "ipn cat: %s: no r permission, sending only\n", path)
	}

	sendDone := make(chan error, 1)
	recvDone := make(chan error, 1)
	if canWrite {
		go func() { sendDone <- catSend(s, cmd.InOrStdin(), o.raw, stderr) }()
	}
	if canRead {
		go func() { recvDone <- catRecv(s, cmd.OutOrStdout(), o, stderr) }()
	}
	var sendErr error
	lost := s.Done()
	for {
		select {
		case <-ctx.Done():
			return sendErr
		case <-lost:
			// The daemon went away: a receiver reports it itself,
			// after what it had.
			if !canRead {
				return s.Err()
			}
			lost = nil
		case err := <-recvDone:
			if sendErr == nil {
				sendErr = err
			}
			return sendErr
		case sendErr = <-sendDone:
			if !canRead {
				return sendErr
			}
			sendDone = nil // keep receiving
		}
	}
}

// catSend sends each stdin line (or raw frame) as a message. Messages that
// cannot be sent (too long) are reported and skipped; the error returned
// says so at the end.
func catSend(s *ipn.Socket, in io.Reader, raw bool, stderr io.Writer) error {
	fr, err := newFramer(s, raw)
	if err != nil {
		return err
	}
	r := bufio.NewReaderSize(in, 1<<16)
	skipped := 0
	for n := 1; ; n++ {
		msg, err := fr.read(r)
		var over *errOverMTU
		if errors.As(err, &over) {
			fmt.Fprintf(stderr, "ipn cat: message %d: %d bytes is over the network's MTU, skipped\n", n, over.n)
			skipped++
			continue
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("stdin: %w", err)
		}
		if len(msg) == 0 {
			continue
		}
		if err := s.Send(msg); err != nil {
			if errors.Is(err, syscall.EOVERFLOW) {
				fmt.Fprintf(stderr, "ipn cat: message %d: %d bytes is over the network's MTU, skipped\n", n, len(msg))
				skipped++
				continue
			}
			return err
		}
	}
	if skipped > 0 {
		return fmt.Errorf("%d messages over the MTU were not sent: %w", skipped, exitError(1))
	}
	return nil
}

// framer reads and writes cat's messages: lines, or with --raw frames of
// a big-endian length (width bytes: 2, or 4 on a network whose MTU is over
// 65535) and the message. Its buffer is reused: a message read is valid
// until the next read.
type framer struct {
	raw   bool
	width int // 2 or 4
	mtu   int
	buf   []byte
}

// newFramer returns the framing for s's network, whose MTU decides the
// length's width once: a re-joined network keeps the stream's framing.
func newFramer(s *ipn.Socket, raw bool) (*framer, error) {
	mtu, err := s.MTU()
	if err != nil {
		return nil, fmt.Errorf("the network's MTU: %w", err)
	}
	return &framer{raw: raw, width: rawLenWidth(mtu), mtu: mtu}, nil
}

// rawLenWidth is the width of --raw's length on a network of that MTU.
func rawLenWidth(mtu int) int {
	if mtu > 0xffff {
		return 4
	}
	return 2
}

// errOverMTU is a raw frame longer than the MTU, skipped unread.
type errOverMTU struct{ n int }

// Error says the frame's length.
func (e *errOverMTU) Error() string {
	return fmt.Sprintf("frame of %d bytes is over the network's MTU: %v", e.n, syscall.EOVERFLOW)
}

// Unwrap returns EOVERFLOW.
func (e *errOverMTU) Unwrap() error { return syscall.EOVERFLOW }

// read reads one line (without its newline) or one raw frame; a raw frame
// over the MTU is consumed and reported as *errOverMTU, never held.
func (f *framer) read(r *bufio.Reader) ([]byte, error) {
	if !f.raw {
		return readLine(r)
	}
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:f.width]); err != nil {
		if err == io.ErrUnexpectedEOF {
			return nil, errors.New("truncated frame length")
		}
		return nil, err
	}
	var n int
	if f.width == 4 {
		n = int(binary.BigEndian.Uint32(hdr[:]))
	} else {
		n = int(binary.BigEndian.Uint16(hdr[:]))
	}
	if n > f.mtu {
		// Skipped unread: a 4-byte length could ask for 4 GiB.
		if _, err := io.CopyN(io.Discard, r, int64(n)); err != nil {
			return nil, fmt.Errorf("truncated frame: %w", noEOF(err))
		}
		return nil, &errOverMTU{n}
	}
	if cap(f.buf) < n {
		f.buf = make([]byte, n)
	}
	msg := f.buf[:n]
	if _, err := io.ReadFull(r, msg); err != nil {
		return nil, fmt.Errorf("truncated frame: %w", noEOF(err))
	}
	return msg, nil
}

// noEOF turns an end of input inside a frame into io.ErrUnexpectedEOF.
func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// write writes msg to w as a line or a raw frame.
func (f *framer) write(w *bufio.Writer, msg []byte) {
	if !f.raw {
		w.Write(msg)
		w.WriteByte('\n')
		return
	}
	var hdr [4]byte
	if f.width == 4 {
		binary.BigEndian.PutUint32(hdr[:], uint32(len(msg)))
	} else {
		binary.BigEndian.PutUint16(hdr[:], uint16(len(msg)))
	}
	w.Write(hdr[:f.width])
	w.Write(msg)
}

// readLine reads one line, without its newline.
func readLine(r *bufio.Reader) ([]byte, error) {
	line, err := r.ReadBytes('\n')
	if err == io.EOF && len(line) > 0 {
		err = nil
	}
	return trimNewline(line), err
}

func trimNewline(b []byte) []byte {
	if n := len(b); n > 0 && b[n-1] == '\n' {
		b = b[:n-1]
	}
	return b
}

// catRecv prints every message until EOF or o.count messages.
func catRecv(s *ipn.Socket, out io.Writer, o *catOptions, stderr io.Writer) error {
	fr, err := newFramer(s, o.raw)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(out, 1<<16)
	// On a network of big messages (over 4 MiB, to 64 MiB) the buffer
	// grows to the longest message received, not the MTU.
	huge := fr.mtu > 4<<20
	buf := make([]byte, 65536)
	if !huge {
		buf = make([]byte, max(fr.mtu, 65536))
	}
	alloc := func(size int) []byte {
		if size > cap(buf) {
			buf = make([]byte, size)
		}
		return buf[:cap(buf)]
	}
	for got := 0; o.count == 0 || got < o.count; {
		var n int
		var flags ipn.MsgFlags
		var err error
		if huge {
			var msg []byte
			msg, flags, err = s.RecvFunc(alloc)
			n = len(msg)
		} else {
			n, flags, err = s.Recv(buf)
		}
		if err == io.EOF {
			return w.Flush()
		}
		if err != nil {
			w.Flush()
			return err
		}
		if flags&ipn.MsgOOB != 0 {
			if nn, err := ipn.ParseNumNodesNotice(buf[:n]); err == nil {
				fmt.Fprintf(stderr, "ipn cat: readers %d writers %d\n", nn.Readers, nn.Writers)
			}
			continue
		}
		fr.write(w, buf[:n])
		if err := w.Flush(); err != nil {
			return fmt.Errorf("stdout: %w", err)
		}
		got++
	}
	return nil
}

// setRejoin makes s re-join (if on) when its daemon goes away, telling
// stderr each time as prog: "ipn cat: NET: the daemon at SOCK restarted;
// rejoined as port 3; 12 messages sent before were lost".
func setRejoin(s *ipn.Socket, on bool, prog, path string, stderr io.Writer) error {
	noticeOldDaemon(s, stderr)
	if !on {
		return nil
	}
	s.OnRejoin(func(r ipn.Rejoin) {
		if !r.Rejoined {
			fmt.Fprintf(stderr, "%s: %s: the daemon at %s went away; re-joining\n", prog, path, r.Daemon)
			return
		}
		as := "joined again"
		if r.Port >= 0 {
			as = fmt.Sprintf("rejoined as port %d", r.Port)
		}
		fmt.Fprintf(stderr, "%s: %s: the daemon at %s restarted; %s; %s\n", prog, path, r.Daemon, as, lostText(r.Lost, r.LostKnown))
	})
	return s.SetRejoin(true)
}

// lostText says how many messages sent before a daemon went away were lost.
func lostText(n uint64, known bool) string {
	switch {
	case !known:
		return "an unknown number of messages sent before were lost (the daemon kept no count)"
	case n == 0:
		return "no message sent before was lost"
	case n == 1:
		return "1 message sent before was lost"
	}
	return fmt.Sprintf("%d messages sent before were lost", n)
}

// daemonRuns fails, starting no daemon, when none runs: then there is no
// network at path to join (only --bind makes one, and starts a daemon).
func daemonRuns(path string) error {
	if _, err := ipn.List(path); errors.Is(err, ipn.ErrNoDaemon) {
		return fmt.Errorf("%w: no network at %s (create it with --bind)", err, path)
	}
	return nil
}

// isSocketFile reports whether path is a socket file, which a network is
// (or was): only there can --bind make one.
func isSocketFile(path string) bool {
	st, err := os.Lstat(path)
	return err == nil && st.Mode()&os.ModeSocket != 0
}
