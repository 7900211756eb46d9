package ipn_test

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn"
	"github.com/ipn-project/ipn/policy/vdeswitch"
)

// runHelper runs the helper process name; it prints what it did as lines
// on stdout for the test to check.
func runHelper(name string, args []string) int {
	var err error
	switch name {
	case "perm":
		err = helpPerm(args[0], args[1])
	case "recv":
		err = helpRecv(args[0])
	case "stream":
		err = helpStream(args[0])
	case "flood":
		err = helpFlood(args[0])
	case "bindwait":
		err = helpBindWait(args[0])
	case "idle":
		err = helpIdle(args[0])
	case "frames":
		err = helpFrames(args[0])
	case "tcp":
		err = helpTCP(args)
	case "legit":
		err = helpLegit(args[0])
	case "inodes":
		err = helpInodes(args[0], args[1], args[2])
	case "fakedaemon":
		err = helpFakeDaemon(args[0])
	case "limits":
		err = helpLimits(args[0])
	case "mkswitch":
		err = helpMkSwitch(args[0])
	case "garbage":
		err = helpGarbage(args[0], args[1])
	case "swapper":
		err = helpSwapper(args[0], args[1], args[2])
	case "vderaw":
		err = helpVDERaw(args[0], args[1])
	case "bindlossless":
		err = helpBindLossless(args[0])
	case "sendclose":
		err = helpSendClose(args[0])
	case "flip":
		err = helpFlip(args[0], args[1], args[2], args[3])
	case "bindloop":
		err = helpBindLoop(args[0], args[1])
	case "refusedfds":
		err = helpRefusedFDs(args[0], args[1])
	case "deputy":
		err = helpDeputy(args[0], args[1])
	case "silent":
		err = helpSilent(args[0], args[1])
	case "devswap":
		err = helpDevSwap(args[0], args[1], args[2], args[3])
	case "logattack":
		err = helpLogAttack(args[0], args[1])
	case "frags":
		err = helpFrags(args[0], args[1], args[2])
	case "conns":
		n, _ := strconv.Atoi(args[1])
		err = helpConns(args[0], n)
	default:
		err = fmt.Errorf("unknown helper %q", name)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 1
	}
	return 0
}

// join connects to path, with the sides in shut shut down first (0: none).
func join(path string, shut ipn.How) (*ipn.Socket, error) {
	s, err := ipn.NewSocket(ipn.Any)
	if err != nil {
		return nil, err
	}
	if shut != 0 {
		if err := s.Shutdown(shut); err != nil {
			s.Close()
			return nil, err
		}
	}
	if err := s.Connect(path); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// errName returns the errno name of err, or its text.
func errName(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return unix.ErrnoName(errno)
	}
	if errors.Is(err, io.EOF) {
		return "EOF"
	}
	return err.Error()
}

// helpPerm binds or connects to path and reports what it may do: it sends
// a message if it may send and waits for one if it may receive.
func helpPerm(op, path string) error {
	s, err := ipn.NewSocket(ipn.Any)
	if err != nil {
		return err
	}
	defer s.Close()
	if op == "bind" {
		if err := s.Bind(path); err != nil {
			fmt.Printf("bind err=%s\n", errName(err))
			return nil
		}
		fmt.Println("bind ok")
		return nil
	}
	if err := s.Connect(path); err != nil {
		fmt.Printf("connect err=%s\n", errName(err))
		return nil
	}
	fmt.Printf("connect ok read=%v write=%v\n", s.CanRead(), s.CanWrite())
	if err := s.Send([]byte(fmt.Sprintf("hello from uid %d", os.Getuid()))); err != nil {
		fmt.Printf("send err=%s\n", errName(err))
	} else {
		fmt.Println("send ok")
	}
	s.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 2048)
	n, _, err := s.Recv(buf)
	if err != nil {
		fmt.Printf("recv err=%s\n", errName(err))
	} else {
		fmt.Printf("got %s\n", buf[:n])
	}
	return nil
}

// helpRecv joins path receive-only and prints each message until EOF.
func helpRecv(path string) error {
	s, err := join(path, ipn.ShutWrite)
	if err != nil {
		return err
	}
	defer s.Close()
	fmt.Printf("ready port=%d\n", s.Port())
	buf := make([]byte, 65536)
	w := bufio.NewWriter(os.Stdout)
	for {
		n, _, err := s.Recv(buf)
		if err != nil {
			fmt.Fprintf(w, "end %s\n", errName(err))
			return w.Flush()
		}
		fmt.Fprintf(w, "msg %s\n", buf[:n])
		w.Flush()
	}
}

// helpStream joins path send-only and sends numbered messages until it is
// killed or the network goes away.
func helpStream(path string) error {
	s, err := join(path, ipn.ShutRead)
	if err != nil {
		return err
	}
	defer s.Close()
	fmt.Printf("ready port=%d\n", s.Port())
	for i := 0; ; i++ {
		if err := s.Send([]byte("stream " + strconv.Itoa(i))); err != nil {
			return err
		}
		time.Sleep(time.Millisecond) // a steady stream, not a flood
	}
}

// helpFlood sends numbered 64-byte messages to path as fast as it can,
// until it is killed.
func helpFlood(path string) error {
	s, err := join(path, 0)
	if err != nil {
		return err
	}
	defer s.Close()
	fmt.Printf("ready fast=%v port=%d\n", s.FastPath(), s.Port())
	msg := make([]byte, 64)
	for i := uint64(0); ; i++ {
		binary.BigEndian.PutUint64(msg, i)
		if err := s.Send(msg); err != nil {
			return err
		}
	}
}

// helpBindWait binds and connects path (starting the daemon if needed),
// prints "ok", and stays until stdin closes, then reports how it ended.
func helpBindWait(path string) error {
	s, err := ipn.Join(path, ipn.Hub)
	if err != nil {
		return err
	}
	defer s.Close()
	fmt.Printf("ok port=%d\n", s.Port())
	stdinDone := make(chan struct{})
	go func() {
		io.Copy(io.Discard, os.Stdin)
		close(stdinDone)
	}()
	recvDone := make(chan struct{})
	go func() {
		defer close(recvDone)
		buf := make([]byte, 2048)
		for {
			if _, _, err := s.Recv(buf); err != nil {
				fmt.Printf("end %s\n", errName(err))
				return
			}
		}
	}()
	select {
	case <-stdinDone:
	case <-recvDone:
	}
	return nil
}

// helpIdle joins path receive-only and never reads, until killed.
func helpIdle(path string) error {
	s, err := join(path, ipn.ShutWrite)
	if err != nil {
		return err
	}
	defer s.Close()
	fmt.Printf("ready port=%d fast=%v\n", s.Port(), s.FastPath())
	select {}
}

// helpFrames joins path; it sends each stdin line (hex) as a frame and
// prints each frame it receives as "frame HEX", skipping switch probes.
func helpFrames(path string) error {
	s, err := join(path, 0)
	if err != nil {
		return err
	}
	defer s.Close()
	fmt.Printf("ready port=%d\n", s.Port())
	go func() {
		in := bufio.NewScanner(os.Stdin)
		for in.Scan() {
			b, err := hex.DecodeString(in.Text())
			if err == nil {
				err = s.Send(b)
			}
			if err != nil {
				fmt.Fprintln(os.Stderr, "send:", err)
			}
		}
	}()
	buf := make([]byte, 65536)
	for {
		n, flags, err := s.Recv(buf)
		if err != nil {
			fmt.Printf("end %s\n", errName(err))
			return nil
		}
		if flags&ipn.MsgOOB != 0 || vdeswitch.IsProbe(buf[:n]) {
			continue
		}
		fmt.Printf("frame %x\n", buf[:n])
	}
}
