package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/ipn-project/ipn"
)

func demoCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "demo",
		Short: "Show IPN at work: peers on a bus, then one sender and receivers joining",
		Long: `Run the two examples of the original IPN README with real processes (ipn cat),
on networks in a temporary directory, printing what happens, then list the
networks as ipn ls does. The daemon starts by itself if none is running.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDemo(cmd.OutOrStdout())
		},
	}
}

// member is an ipn cat process of the demo.
type member struct {
	name  string
	cmd   *exec.Cmd
	in    io.WriteCloser
	lines chan string
}

func startMember(name string, args ...string) (*member, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, append([]string{"cat", "--descr", name}, args...)...)
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	m := &member{name: name, cmd: cmd, in: in, lines: make(chan string, 64)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			m.lines <- sc.Text()
		}
		close(m.lines)
	}()
	return m, nil
}

// next returns the member's next printed line.
func (m *member) next() (string, error) {
	select {
	case l, ok := <-m.lines:
		if !ok {
			return "", fmt.Errorf("%s exited", m.name)
		}
		return l, nil
	case <-time.After(10 * time.Second):
		return "", fmt.Errorf("%s received nothing in 10s", m.name)
	}
}

func (m *member) stop() {
	m.cmd.Process.Signal(syscall.SIGTERM)
	m.cmd.Wait()
}

// waitNet waits until the network at path exists and has n readers.
func waitNet(path string, n int) error {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if nets, err := ipn.List(path); err == nil && len(nets) == 1 && nets[0].Readers == n {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("%s: no network with %d readers after 10s", path, n)
}

func runDemo(out io.Writer) error {
	dir, err := os.MkdirTemp("", "ipn-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var all []*member
	defer func() {
		for _, m := range all {
			m.stop()
		}
	}()
	spawn := func(name string, args ...string) (*member, error) {
		m, err := startMember(name, args...)
		if err == nil {
			all = append(all, m)
		}
		return m, err
	}

	chat := filepath.Join(dir, "chat")
	fmt.Fprintf(out, "1. Peer to peer: three processes bind and connect %s (a hub).\n", chat)
	var peers []*member
	for i := 0; i < 3; i++ {
		p, err := spawn(fmt.Sprintf("peer%d", i), "--bind", chat)
		if err != nil {
			return err
		}
		peers = append(peers, p)
	}
	if err := waitNet(chat, 3); err != nil {
		return err
	}
	for i, p := range peers {
		fmt.Fprintf(p.in, "hello from peer%d\n", i)
	}
	for _, p := range peers {
		for j := 0; j < 2; j++ {
			l, err := p.next()
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "   %s received %q\n", p.name, l)
		}
	}
	fmt.Fprintln(out, "   Each peer got the others' messages, never its own.")

	tv := filepath.Join(dir, "tv")
	fmt.Fprintf(out, "\n2. One sender, receivers joining at run time, on %s.\n", tv)
	sender, err := spawn("sender", "--bind", "--send-only", "--lossless", tv)
	if err != nil {
		return err
	}
	if err := waitNet(tv, 0); err != nil {
		return err
	}
	frame := 0
	send := func(n int) {
		for i := 0; i < n; i++ {
			fmt.Fprintf(sender.in, "frame %d\n", frame)
			frame++
		}
	}
	r1, err := spawn("viewer1", "--recv-only", tv)
	if err != nil {
		return err
	}
	if err := waitNet(tv, 1); err != nil {
		return err
	}
	send(2)
	r2, err := spawn("viewer2", "--recv-only", tv)
	if err != nil {
		return err
	}
	if err := waitNet(tv, 2); err != nil {
		return err
	}
	send(2)
	for _, r := range []*member{r1, r1, r1, r1, r2, r2} {
		l, err := r.next()
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "   %s received %q\n", r.name, l)
	}
	fmt.Fprintln(out, "   viewer2 joined late and got the stream from frames 2 on.")

	fmt.Fprintln(out, "\n3. What ipn ls shows now:")
	nets, err := ipn.List("")
	if err != nil {
		return err
	}
	var mine []ipn.NetInfo
	for _, n := range nets {
		if filepath.Dir(n.Path) == dir {
			mine = append(mine, n)
		}
	}
	printNets(out, mine)
	return nil
}
