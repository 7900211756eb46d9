package ipn_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ipn-project/ipn"
)

// rawFrame is msg framed as `ipn cat --raw` frames it with a length of
// width bytes.
func rawFrame(width int, msg []byte) []byte {
	f := make([]byte, width, width+len(msg))
	if width == 4 {
		binary.BigEndian.PutUint32(f, uint32(len(msg)))
	} else {
		binary.BigEndian.PutUint16(f, uint16(len(msg)))
	}
	return append(f, msg...)
}

// rawCat is an `ipn cat --raw` a test started, its output gathered
// whole (the harness's line reader would cut binary output).
type rawCat struct {
	cmd    *exec.Cmd
	stdout bytes.Buffer // read after done
	mu     sync.Mutex
	errb   strings.Builder // guarded by mu
	done   chan struct{}
	err    error // set before done closes
}

// catRaw starts `ipn cat --raw args... path` with stdin (none if nil).
func catRaw(t *testing.T, stdin []byte, path string, args ...string) *rawCat {
	t.Helper()
	c := &rawCat{done: make(chan struct{})}
	c.cmd = exec.Command(ipnCommand(t), append(append([]string{"cat", "--raw"}, args...), path)...)
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	c.cmd.Stdout, c.cmd.Stderr = &c.stdout, lockedWriter{&c.mu, &c.errb}
	if stdin != nil {
		c.cmd.Stdin = bytes.NewReader(stdin)
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { c.err = c.cmd.Wait(); close(c.done) }()
	t.Cleanup(func() {
		syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
		<-c.done
	})
	return c
}

// stderr returns what the command wrote to stderr so far.
func (c *rawCat) stderr() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.errb.String()
}

// wait waits up to d for the command to exit and returns its exit status.
func (c *rawCat) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-c.done:
	case <-time.After(d):
		t.Fatalf("%v still running after %v; stderr: %s", c.cmd.Args, d, c.stderr())
	}
	return c.cmd.ProcessState.ExitCode()
}

// `ipn cat --raw` frames messages with a 4-byte length on a network whose
// MTU is over 65535 and a 2-byte one otherwise: a message of the MTU goes
// through it both ways intact, and so does one of 32 MiB on a network of
// MTU 64 MiB (its data sockets carry fragments); on a 4 MiB network a
// frame over the MTU is skipped (said so, exit status 1) without stopping
// the next.
func TestCatRawLengthWidth(t *testing.T) {
	for _, tc := range []struct {
		mtu, size, width int
	}{{65535, 65535, 2}, {packetMTU, packetMTU, 4}, {ipn.MaxMTU, 32 << 20, 4}} {
		t.Run(fmt.Sprintf("%d-byte/%d", tc.width, tc.mtu), func(t *testing.T) {
			path, a := bindNet(t, func(s *ipn.Socket) {
				if err := s.SetMTU(tc.mtu); err != nil {
					t.Fatal(err)
				}
			})
			b := member(t, path, func(s *ipn.Socket) { s.Shutdown(ipn.ShutWrite) })
			r := rand.New(rand.NewPCG(uint64(tc.mtu), 5))
			msg := bigPayload(r, tc.size, 1)

			// Network to cat's stdout.
			recv := catRaw(t, nil, path, "--recv-only", "--count", "1")
			waitFor(t, 15*time.Second, "cat's port", func() bool { n, _ := readersOf(path); return n == 3 }) // a, b and cat
			start := time.Now()
			if err := a.Send(msg); err != nil {
				t.Fatal(err)
			}
			if got := recvBig(t, b, make([]byte, tc.mtu)); !bytes.Equal(got, msg) {
				t.Fatalf("member got %d bytes, not the message", len(got))
			}
			code := recv.wait(t, 30*time.Second)
			took := time.Since(start)
			if code != 0 {
				t.Fatalf("ipn cat --recv-only: %v: %s", recv.err, recv.stderr())
			}
			if out, want := &recv.stdout, rawFrame(tc.width, msg); !bytes.Equal(out.Bytes(), want) {
				t.Fatalf("cat wrote %d bytes (first %x), want %d (first %x)",
					out.Len(), out.Bytes()[:min(8, out.Len())], len(want), want[:8])
			}
			t.Logf("network to cat --raw, %d bytes: %v", tc.size, took)

			// cat's stdin to the network: with a frame over the MTU
			// first on the 4-byte network.
			var in []byte
			over := tc.mtu == packetMTU
			if over {
				in = rawFrame(4, make([]byte, tc.mtu+1))
			}
			in = append(in, rawFrame(tc.width, msg)...)
			start = time.Now()
			send := catRaw(t, in, path, "--send-only")
			if got := recvBig(t, b, make([]byte, tc.mtu)); !bytes.Equal(got, msg) {
				t.Fatalf("member got %d bytes from cat, not the message", len(got))
			}
			t.Logf("cat --raw to the network, %d bytes: %v", tc.size, time.Since(start))
			code = send.wait(t, 30*time.Second)
			if over {
				if code != 1 || !strings.Contains(send.stderr(), "message 1: 4194305 bytes is over the network's MTU") {
					t.Fatalf("ipn cat --send-only: %v, stderr %q: want status 1 saying message 1 is over the MTU", send.err, send.stderr())
				}
			} else if code != 0 {
				t.Fatalf("ipn cat --send-only: %v: %s", send.err, send.stderr())
			}
			expectNothing(t, b)
		})
	}
}
