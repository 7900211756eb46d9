package shmring

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// pair maps one region twice, as the daemon and a member do.
func pair(t *testing.T, mtu int) (daemon, member *Region) {
	t.Helper()
	d, err := Create(LayoutFor(mtu))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	fd, err := unix.FcntlInt(uintptr(d.FD()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	m, err := Map(fd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return d, m
}

func TestLayouts(t *testing.T) {
	for _, c := range []struct{ mtu, slots, size int }{
		{1514, 512, 1536}, {60, 512, 64}, {9000, 256, 9024}, {65535, 32, 65600},
	} {
		l := LayoutFor(c.mtu)
		if l.Slots != c.slots || l.SlotSize != c.size || l.MaxMsg() < c.mtu || !l.valid() {
			t.Errorf("mtu %d: %+v", c.mtu, l)
		}
	}
}

// Messages keep order, length and bytes around the ring many times; a full
// ring refuses, an empty one reports empty.
func TestPushPop(t *testing.T) {
	d, m := pair(t, 1514)
	p, c := m.Producer(ToDaemon), d.Consumer(ToDaemon)
	buf := make([]byte, 2048)
	next := 0
	for round := 0; round < 5; round++ {
		for i := 0; ; i++ {
			msg := []byte(fmt.Sprintf("%d:%s", next+i, bytes.Repeat([]byte("x"), (next+i)%1400)))
			ok, err := p.Push(msg)
			if err != nil {
				t.Fatal(err)
			}
			if !ok {
				if i != 512 {
					t.Fatalf("round %d: full after %d", round, i)
				}
				break
			}
		}
		for i := 0; i < 512; i++ {
			n, ok, err := c.Pop(buf)
			want := fmt.Sprintf("%d:%s", next, bytes.Repeat([]byte("x"), next%1400))
			if !ok || err != nil || string(buf[:n]) != want {
				t.Fatalf("message %d: %q, %v, %v", next, buf[:min(n, 20)], ok, err)
			}
			next++
		}
		if empty, err := c.Empty(); !empty || err != nil {
			t.Fatalf("round %d: not empty after all: %v", round, err)
		}
		if full, _ := p.Full(); !full {
			t.Fatal("producer saw room before the consumer released it")
		}
		c.Release()
	}
	// Truncation: the full length is reported.
	p.Push(bytes.Repeat([]byte("y"), 1000))
	if n, ok, err := c.Pop(buf[:10]); n != 1000 || !ok || err != nil || string(buf[:10]) != "yyyyyyyyyy" {
		t.Fatalf("truncated pop: %d %v %v", n, ok, err)
	}
}

// Impossible indices and lengths are ErrCorrupt, never a crash.
func TestCorruption(t *testing.T) {
	d, m := pair(t, 1514)
	c := d.Consumer(ToDaemon)
	m.Producer(ToDaemon).Push([]byte("fine"))
	binary.LittleEndian.PutUint32(m.mem[headerSize:], 1<<20) // the slot's length
	if _, _, err := c.Pop(make([]byte, 2048)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("length past the slot: %v", err)
	}
	c2 := d.Consumer(ToMember)
	m.u64(ringCtl + ringCtlLen).Store(1 << 40) // ring 1's tail
	if _, err := c2.Empty(); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("tail far ahead: %v", err)
	}
	p := d.Producer(ToMember)
	for i := 0; i < 512; i++ {
		p.Push([]byte("m"))
	}
	m.u64(ringCtl + ringCtlLen + 64).Store(1 << 41) // ring 1's head past its tail
	if _, err := p.Push([]byte("m")); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("head past the tail: %v", err)
	}
}

// A consumer that sleeps is woken by the producer's next message; Close
// and deadlines end a sleep.
func TestWaitWakes(t *testing.T) {
	old := Spin
	Spin = 0 // sleep at once: the wake-up is what is tested
	t.Cleanup(func() { Spin = old })
	d, m := pair(t, 1514)
	p, c := m.Producer(ToDaemon), d.Consumer(ToDaemon)
	w, err := NewWaker()
	if err != nil {
		t.Fatal(err)
	}
	never := func() bool { return false }
	got := make(chan error, 1)
	go func() { got <- c.WaitData(w, never) }()
	sleeping(t, c)
	p.Push([]byte("wake up"))
	if p.ConsumerWaiting() {
		w.Wake()
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the consumer was not woken")
	}
	c.Pop(make([]byte, 100))
	w.SetDeadline(time.Now().Add(20 * time.Millisecond))
	if err := c.WaitData(w, never); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("deadline: %v", err)
	}
	w.SetDeadline(time.Time{})
	go func() { got <- c.WaitData(w, never) }()
	sleeping(t, c)
	w.Close()
	if err := <-got; !errors.Is(err, os.ErrClosed) {
		t.Fatalf("close: %v", err)
	}
}

// sleeping waits until c has said it sleeps.
func sleeping(t *testing.T, c *Consumer) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for c.consWait.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the consumer never slept")
		}
		time.Sleep(time.Millisecond)
	}
}
