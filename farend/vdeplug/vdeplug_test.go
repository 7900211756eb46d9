package vdeplug

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ipn-project/ipn/internal/vdetest"
)

func frame(dst []byte, src byte, payload string) []byte {
	f := append(append([]byte{}, dst...), 0x02, 0, 0, 0, 0, src, 0x08, 0x00)
	return append(f, payload...)
}

var bcast = []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

func mac(b byte) []byte { return []byte{0x02, 0, 0, 0, 0, b} }

type readResult struct {
	frames [][]byte
	err    error
}

// read waits up to d for e's next batch of frames; on time out it closes e
// and fails.
func read(t *testing.T, e *Endpoint, d time.Duration) ([][]byte, error) {
	t.Helper()
	ch := make(chan readResult, 1)
	go func() {
		bufs := make([][]byte, e.BatchSize())
		sizes := make([]int, len(bufs))
		for i := range bufs {
			bufs[i] = make([]byte, 2048)
		}
		n, err := e.Read(bufs, sizes)
		var r readResult
		for i := 0; i < n; i++ {
			r.frames = append(r.frames, bufs[i][:min(sizes[i], len(bufs[i]))])
		}
		r.err = err
		ch <- r
	}()
	select {
	case r := <-ch:
		return r.frames, r.err
	case <-time.After(d):
		e.Close()
		<-ch
		t.Fatalf("nothing read from the port of %s in %v", e.Dir(), d)
	}
	return nil, nil
}

// expectFrames reads until want came, in order, exactly, and nothing else.
func expectFrames(t *testing.T, e *Endpoint, want ...[]byte) {
	t.Helper()
	var got [][]byte
	for len(got) < len(want) {
		fs, err := read(t, e, 15*time.Second)
		if err != nil {
			t.Fatalf("read after %d frames: %v", len(got), err)
		}
		got = append(got, fs...)
	}
	if len(got) != len(want) {
		t.Fatalf("got %d frames, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("frame %d: got\n%x, want\n%x", i, got[i], want[i])
		}
	}
}

func send(t *testing.T, e *Endpoint, frames ...[]byte) {
	t.Helper()
	if n, err := e.Write(frames); err != nil || n != len(frames) {
		t.Fatalf("write: %d of %d, %v", n, len(frames), err)
	}
}

func dial(t *testing.T, spec string) *Endpoint {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	e, err := Dial(ctx, spec)
	if err != nil {
		t.Fatalf("open %s: %v", spec, err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// clientSockets lists the data sockets clients left in dir.
func clientSockets(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var l []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			l = append(l, e.Name())
		}
	}
	return l
}

func TestFramesCrossASwitch(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "sw")
	sw := vdetest.Start(t, dir)
	a := dial(t, dir)
	b := dial(t, dir+"[5]")
	if b.Port() != 5 {
		t.Errorf("asked for port 5, got %d", b.Port())
	}
	if a.Port() < 1 || a.Port() == 5 {
		t.Errorf("any port: got %d", a.Port())
	}
	if l := clientSockets(t, dir); len(l) != 0 {
		t.Errorf("client sockets left in the switch's directory: %v", l)
	}
	// The switch read the whole request: it shows our description.
	ports := strings.Join(sw.Console(t, "port/allprint"), "\n")
	if want := fmt.Sprintf("PID=%d", os.Getpid()); strings.Count(ports, want) != 2 {
		t.Errorf("port/allprint shows %q %d times, want 2:\n%s", want, strings.Count(ports, want), ports)
	}
	t.Logf("port/allprint:\n%s", ports)

	fa := frame(bcast, 1, "from a, broadcast")
	send(t, a, fa)
	expectFrames(t, b, fa)
	fb := frame(bcast, 2, "from b, broadcast")
	send(t, b, fb)
	expectFrames(t, a, fb)
	// The switch learnt both MACs: unicast both ways, in batches.
	var toB, toA [][]byte
	for i := range 10 {
		toB = append(toB, frame(mac(2), 1, fmt.Sprintf("a to b %d", i)))
		toA = append(toA, frame(mac(1), 2, fmt.Sprintf("b to a %d %s", i, strings.Repeat("x", 1400))))
	}
	send(t, a, toB...)
	send(t, b, toA...)
	expectFrames(t, b, toB...)
	expectFrames(t, a, toA...)
	if a.Dropped()+b.Dropped() != 0 {
		t.Errorf("dropped %d, %d", a.Dropped(), b.Dropped())
	}

	// A frame longer than the buffer is reported so, truncated.
	big := frame(mac(2), 1, strings.Repeat("y", 1000))
	send(t, a, big)
	bufs, sizes := [][]byte{make([]byte, 100)}, []int{0}
	if n, err := b.Read(bufs, sizes); err != nil || n != 1 || sizes[0] != len(big) || !bytes.Equal(bufs[0], big[:100]) {
		t.Errorf("long frame: n=%d size=%d err=%v, want 1, %d", n, sizes[0], err, len(big))
	}

	// Leaving frees the port: another client gets port 5.
	b.Close()
	waitPortFree(t, dir, 5)
	c := dial(t, dir+"[port=5]")
	if c.Port() != 5 {
		t.Errorf("port 5 again: got %d", c.Port())
	}
	send(t, a, fa)
	expectFrames(t, c, fa)
}

// waitPortFree waits until vde_switch removed port's data socket.
func waitPortFree(t *testing.T, dir string, port int) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		l, _ := filepath.Glob(filepath.Join(dir, fmt.Sprintf("%03d.*", port)))
		if len(l) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("port %d still in use after 15s: %v", port, l)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Write never waits for the switch: a flood nobody reads ends at once,
// what the switch could not take dropped, and the port still works.
func TestFloodDoesNotBlock(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "sw")
	vdetest.Start(t, dir)
	a, b := dial(t, dir), dial(t, dir)
	batch := make([][]byte, 64)
	for i := range batch {
		batch[i] = frame(bcast, 1, strings.Repeat("f", 1000))
	}
	done := make(chan error, 1)
	go func() {
		for range 1000 {
			if _, err := a.Write(batch); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("writing 64000 frames took over 60s")
	}
	t.Logf("dropped %d of 64000 frames", a.Dropped())
	// b's queue is full of the flood; after it, a marker still arrives.
	marker := frame(bcast, 1, "after the flood")
	deadline := time.Now().Add(30 * time.Second)
	for {
		send(t, a, marker)
		fs, err := read(t, b, 15*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range fs {
			if bytes.Equal(f, marker) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("no marker after the flood in 30s")
		}
	}
}

func TestRelativeDirAndPort0(t *testing.T) {
	parent := t.TempDir()
	vdetest.Start(t, filepath.Join(parent, "sw"))
	t.Chdir(parent)
	a := dial(t, "sw")
	b := dial(t, "sw[0]")
	if b.Port() != 0 {
		t.Errorf("asked for port 0, got %d", b.Port())
	}
	f := frame(bcast, 7, "relative")
	send(t, a, f)
	expectFrames(t, b, f)
}

// The switch's directory is too long to hold our data socket's name: it
// goes to a fallback directory and is removed all the same.
func TestDataSocketFallsBack(t *testing.T) {
	base := t.TempDir()
	// DIR/ctl and vde_switch's DIR/NNN.FD fit in sun_path (108 bytes);
	// DIR/.PPPPP-NNNNN does not.
	dir := filepath.Join(base, strings.Repeat("d", 95-len(base)))
	if len(dir) != 96 {
		t.Fatalf("dir of %d bytes", len(dir))
	}
	vdetest.Start(t, dir)
	a, b := dial(t, dir), dial(t, dir)
	f := frame(bcast, 3, "fallback")
	send(t, a, f)
	expectFrames(t, b, f)
	for _, d := range fallbackDirs {
		l, _ := filepath.Glob(filepath.Join(d, fmt.Sprintf("vde.%05d-*", os.Getpid())))
		if len(l) != 0 {
			t.Errorf("data sockets left in %s: %v", d, l)
		}
	}
}

func TestOpenErrors(t *testing.T) {
	vdetest.Need(t, "vde_switch")
	ctx := context.Background()
	base := t.TempDir()
	if _, err := Open(ctx, filepath.Join(base, "nothing")); !errors.Is(err, ErrNoSwitch) {
		t.Errorf("no directory: %v, want ErrNoSwitch", err)
	}
	if _, err := Open(ctx, base); !errors.Is(err, ErrNoSwitch) || !strings.Contains(err.Error(), "ctl") {
		t.Errorf("directory without a switch: %v, want ErrNoSwitch", err)
	}
	if _, err := Open(ctx, base+"[port=x=y"); err == nil {
		t.Errorf("unterminated parameters: no error")
	}
	dir := filepath.Join(base, "sw")
	sw := vdetest.Start(t, dir, "-n", "8")
	// vde_switch neither answers nor closes: Open gives up at the
	// context's deadline.
	tctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err := Open(tctx, dir+"[9]")
	if !errors.Is(err, ErrRefused) {
		t.Errorf("port 9 of 8: %v, want ErrRefused", err)
	}
	t.Logf("port out of range: %v", err)
	if l := clientSockets(t, dir); len(l) != 0 {
		t.Errorf("client sockets left after a refusal: %v", l)
	}
	// A switch that died leaves its ctl behind: no switch there.
	sw.Kill()
	_, err = Open(ctx, dir)
	if !errors.Is(err, ErrNoSwitch) {
		t.Errorf("dead switch: %v, want ErrNoSwitch", err)
	}
	t.Logf("dead switch: %v", err)
	// A cancelled context stops Open.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	vdetest.Start(t, dir)
	if _, err := Open(cctx, dir); err == nil {
		t.Errorf("cancelled context: no error")
	}
}

func TestCloseUnblocks(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "sw")
	vdetest.Start(t, dir)
	a := dial(t, dir)
	errc := make(chan error, 1)
	go func() {
		_, err := a.Read([][]byte{make([]byte, 100)}, []int{0})
		errc <- err
	}()
	time.Sleep(20 * time.Millisecond) // let Read block (it must work either way)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Read after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not unblock Read")
	}
	if err := a.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := a.Write([][]byte{frame(bcast, 1, "x")}); err == nil {
		t.Errorf("Write after Close: no error")
	}
	waitPortFree(t, dir, 1)
}

func TestSwitchGoes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "sw")
	sw := vdetest.Start(t, dir)
	a := dial(t, dir)
	errc := make(chan error, 1)
	go func() {
		_, err := a.Read([][]byte{make([]byte, 100)}, []int{0})
		errc <- err
	}()
	sw.Kill()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrSwitchGone) {
			t.Errorf("Read when the switch died: %v, want ErrSwitchGone", err)
		}
		t.Logf("switch gone: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("Read still blocked after the switch died")
	}
	if _, err := a.Write([][]byte{frame(bcast, 1, "x")}); !errors.Is(err, ErrSwitchGone) {
		t.Errorf("Write when the switch died: %v, want ErrSwitchGone", err)
	}
}

func TestParseSpec(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want spec
		bad  bool
	}{
		{in: "/tmp/sw", want: spec{dir: "/tmp/sw", mode: 0o700}},
		{in: "/tmp/sw[3]", want: spec{dir: "/tmp/sw", port: 3, mode: 0o700}},
		{in: "/tmp/sw[port=12]", want: spec{dir: "/tmp/sw", port: 12, mode: 0o700}},
		{in: "/tmp/sw[0]", want: spec{dir: "/tmp/sw", port: -1, mode: 0o700}},
		{in: "sw[portgroup=lan]", want: spec{dir: "sw", portgroup: "lan", mode: 0o700}},
		{in: "sw[lan]", bad: true},
		{in: "sw[port=lan]", bad: true},
		{in: "sw[port=]", bad: true},
		{in: "sw[-3]", bad: true},
		{in: "sw[group=portusers]", want: spec{dir: "sw", group: "portusers", mode: 0o700}},
		{in: "/tmp/sw[4/mode=660/group=kvm]", want: spec{dir: "/tmp/sw", port: 4, group: "kvm", mode: 0o660}},
		{in: "", want: spec{mode: 0o700}},
		{in: "/tmp/sw[3", bad: true},
		{in: "/tmp/sw[mode=9]", bad: true},
		{in: "/tmp/sw[vni=3]", bad: true},
		{in: "/tmp/sw[3x]", bad: true},
	} {
		got, err := parseSpec(tc.in)
		if tc.bad {
			if err == nil {
				t.Errorf("%q: no error, got %+v", tc.in, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q: got %+v, %v, want %+v", tc.in, got, err, tc.want)
		}
	}
}
