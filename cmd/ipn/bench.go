package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/ipn-project/ipn"
)

func init() {
	commands = append(commands, benchCmd)
}

// benchRow is one measurement of ipn bench.
type benchRow struct {
	Scenario  string  `json:"scenario"`
	Target    string  `json:"target"`
	Size      int     `json:"size"`
	Sent      int64   `json:"sent"`
	Delivered int64   `json:"delivered"`
	Seconds   float64 `json:"seconds"`
	Rate      float64 `json:"delivered_per_second"`
	Loss      float64 `json:"loss"`
	Ratio     float64 `json:"ratio_to_vde_switch,omitempty"`
}

func benchCmd() *cobra.Command {
	var (
		dur    time.Duration
		size   int
		asJSON bool
		quick  bool
	)
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure IPN side by side with vde_switch, in one run",
		Long: `Drive the same VDE clients (Debian's vde_plug: one sender, one receiver, a hub)
through vde_switch and through an IPN network served with ipn vde, one
after the other in this run, and print frames delivered per second, loss,
and the ratio of IPN to vde_switch. Needs vde_switch and vde_plug.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if quick {
				dur = 500 * time.Millisecond
			}
			rows, err := benchVDE(cmd.Context(), dur, size)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(rows)
			}
			for _, r := range rows {
				fmt.Fprintf(out, "%-28s %-11s %5d B  %10.0f frames/s delivered  loss %5.1f%%", r.Scenario, r.Target, r.Size, r.Rate, 100*r.Loss)
				if r.Ratio != 0 {
					fmt.Fprintf(out, "  = %.2fx vde_switch", r.Ratio)
				}
				fmt.Fprintln(out)
			}
			return nil
		},
	}
	cmd.Flags().DurationVar(&dur, "duration", 2*time.Second, "how long each target is driven")
	cmd.Flags().IntVar(&size, "size", 64, "frame size in bytes")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON rows")
	cmd.Flags().BoolVar(&quick, "quick", false, "a short run (for CI)")
	return cmd
}

// benchVDE measures vde_plug traffic through vde_switch, then through IPN.
func benchVDE(ctx context.Context, dur time.Duration, size int) ([]benchRow, error) {
	if size < 14 || size > 1514 {
		return nil, fmt.Errorf("--size %d: want 14..1514", size)
	}
	for _, tool := range []string{"vde_switch", "vde_plug"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s not found: install Debian's vde2 and vdeplug", tool)
		}
	}
	dir, err := os.MkdirTemp("", "ipn-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	scenario := "vde_plug hub 1->1"

	// vde_switch in hub mode; its console is a pipe this process holds.
	vdeDir := filepath.Join(dir, "vde_switch")
	sw := exec.Command("vde_switch", "-x", "-s", vdeDir)
	swIn, err := sw.StdinPipe()
	if err != nil {
		return nil, err
	}
	sw.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := sw.Start(); err != nil {
		return nil, err
	}
	defer func() {
		swIn.Close()
		syscall.Kill(-sw.Process.Pid, syscall.SIGKILL)
		sw.Wait()
	}()
	if err := waitPath(filepath.Join(vdeDir, "ctl")); err != nil {
		return nil, fmt.Errorf("vde_switch did not start: %w", err)
	}
	base, err := driveVDE(vdeDir, dur, size)
	if err != nil {
		return nil, fmt.Errorf("through vde_switch: %w", err)
	}
	base.Scenario, base.Target = scenario, "vde_switch"

	s, err := ipn.NewSocket(ipn.Hub)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	if err := s.Bind(filepath.Join(dir, "ipn")); err != nil {
		return nil, err
	}
	ipnDir := filepath.Join(dir, "ipn.vde")
	if err := s.ServeVDE(ipnDir); err != nil {
		return nil, err
	}
	row, err := driveVDE(ipnDir, dur, size)
	if err != nil {
		return nil, fmt.Errorf("through ipn: %w", err)
	}
	row.Scenario, row.Target = scenario, "ipn"
	if base.Rate > 0 {
		row.Ratio = row.Rate / base.Rate
	}
	return []benchRow{base, row}, nil
}

func waitPath(p string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(p); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not appear", p)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// driveVDE joins a receiving and a sending vde_plug to the switch at dir,
// sends broadcast frames for dur as fast as the sender takes them, and
// counts what the receiver delivers.
func driveVDE(dir string, dur time.Duration, size int) (benchRow, error) {
	url := "vde://" + dir
	recv := exec.Command("vde_plug", url)
	recv.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	rout, err := recv.StdoutPipe()
	if err != nil {
		return benchRow{}, err
	}
	rin, _ := recv.StdinPipe() // held open: vde_plug ends when its input does
	if err := recv.Start(); err != nil {
		return benchRow{}, err
	}
	defer func() {
		rin.Close()
		syscall.Kill(-recv.Process.Pid, syscall.SIGKILL)
		recv.Wait()
	}()
	var got atomic.Int64
	go func() {
		r := bufio.NewReaderSize(rout, 1<<20)
		var hdr [2]byte
		for {
			if _, err := io.ReadFull(r, hdr[:]); err != nil {
				return
			}
			n := int(binary.BigEndian.Uint16(hdr[:]))
			if _, err := r.Discard(n); err != nil {
				return
			}
			if n == size {
				got.Add(1)
			}
		}
	}()
	send := exec.Command("vde_plug", url)
	send.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	sin, err := send.StdinPipe()
	if err != nil {
		return benchRow{}, err
	}
	if err := send.Start(); err != nil {
		return benchRow{}, err
	}
	defer func() {
		syscall.Kill(-send.Process.Pid, syscall.SIGKILL)
		send.Wait()
	}()
	// A warm-up frame from the sender, until the receiver sees one: both
	// are joined.
	frame := make([]byte, 2+size)
	binary.BigEndian.PutUint16(frame, uint16(size))
	copy(frame[2:], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 1, 0x88, 0xb6})
	deadline := time.Now().Add(5 * time.Second)
	for got.Load() == 0 {
		if time.Now().After(deadline) {
			return benchRow{}, fmt.Errorf("no frame crossed in 5s")
		}
		sin.Write(frame)
		time.Sleep(20 * time.Millisecond)
	}
	batch := make([]byte, 0, 64*len(frame))
	for i := 0; i < 64; i++ {
		batch = append(batch, frame...)
	}
	got.Store(0)
	var sent int64
	start := time.Now()
	for time.Since(start) < dur {
		if _, err := sin.Write(batch); err != nil {
			return benchRow{}, err
		}
		sent += 64
	}
	// Let what is in flight arrive, briefly.
	last, quiet := got.Load(), time.Now()
	for time.Since(quiet) < 100*time.Millisecond {
		time.Sleep(10 * time.Millisecond)
		if n := got.Load(); n != last {
			last, quiet = n, time.Now()
		}
	}
	secs := time.Since(start).Seconds()
	row := benchRow{Size: size, Sent: sent, Delivered: last, Seconds: secs, Rate: float64(last) / secs}
	if sent > 0 {
		row.Loss = 1 - float64(min(last, sent))/float64(sent)
	}
	return row, nil
}
