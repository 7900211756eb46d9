package shmring

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"
)

// feed observes n waits gap apart with per messages between them.
func (p *pacer) feed(n int, gap time.Duration, per uint64) {
	for range n {
		p.start -= int64(gap) // as if the previous wait began gap ago
		p.observe(p.next + per)
	}
}

// The pacer polls while messages come close together, however long the
// waits between batches, and sleeps at once for 20,000 messages/s or
// sparser; one idle wait does not stop a stream's polling, and a stream
// polls again within a few waits.
func TestPacerChooses(t *testing.T) {
	old := Spin
	Spin = 100 * time.Microsecond
	t.Cleanup(func() { Spin = old })
	var p pacer
	if !p.polls() {
		t.Fatal("a fresh waiter does not poll")
	}
	p.observe(0)
	p.feed(20, 3*time.Microsecond, 1) // a stream, one message a wait
	if !p.polls() {
		t.Fatalf("a stream: no polling (%+v)", p)
	}
	p.feed(20, 2*time.Millisecond, 512) // long waits for big batches
	if !p.polls() {
		t.Fatalf("big batches: no polling (%+v)", p)
	}
	p.feed(1, time.Second, 1)
	if !p.polls() {
		t.Fatalf("one idle second stops polling (%+v)", p)
	}
	p.feed(20, 50*time.Microsecond, 1) // 20,000 messages/s: under Spin
	if !p.polls() {
		t.Fatalf("a message every 50µs: no polling (%+v)", p)
	}
	p.feed(20, 200*time.Microsecond, 1) // 5,000 messages/s: over Spin
	if p.polls() {
		t.Fatalf("a message every 200µs: polling (%+v)", p)
	}
	p.feed(20, time.Second, 0) // wake-ups with nothing: still one wait
	if p.polls() {
		t.Fatalf("idle: polling (%+v)", p)
	}
	p.feed(20, 800*time.Microsecond, 8) // queued up, though far apart
	if !p.polls() {
		t.Fatalf("eight messages a wait: no polling (%+v)", p)
	}
	p.feed(20, time.Second, 1)
	for i := 1; !p.polls(); i++ {
		if i > 4 {
			t.Fatalf("still not polling after %d waits of a stream (%+v)", i, p)
		}
		p.feed(1, 2*time.Microsecond, 1)
	}
	Spin = 0
	if p.polls() {
		t.Fatal("IPN_SPIN=0 still polls")
	}
}

// Polling and sleeping both deliver every message of traffic that comes
// paced, then in bursts, in order, with the producer waking the consumer
// when asked.
func TestWaitPaced(t *testing.T) {
	for _, spin := range []time.Duration{100 * time.Microsecond, 0} {
		t.Run(spin.String(), func(t *testing.T) {
			old := Spin
			Spin = spin
			t.Cleanup(func() { Spin = old })
			d, m := pair(t, 1514)
			p, cons := m.Producer(ToDaemon), d.Consumer(ToDaemon)
			w, err := NewWaker()
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			const n = 3000
			go func() {
				tick := time.NewTicker(50 * time.Microsecond)
				defer tick.Stop()
				var msg [8]byte
				for i := range n {
					if i%1000 < 200 {
						<-tick.C // paced, then a burst
					}
					binary.LittleEndian.PutUint64(msg[:], uint64(i))
					for {
						ok, err := p.Push(msg[:])
						if err != nil {
							panic(err)
						}
						if ok {
							break
						}
						<-tick.C // full
					}
					if p.ConsumerWaiting() {
						w.Wake()
					}
				}
			}()
			buf := make([]byte, 64)
			never := func() bool { return false }
			polled := false
			for i := 0; i < n; {
				polled = polled || cons.pace.polls()
				if err := cons.WaitData(w, never); err != nil {
					t.Fatal(err)
				}
				for {
					l, ok, err := cons.Pop(buf)
					if err != nil {
						t.Fatal(err)
					}
					if !ok {
						break
					}
					var want [8]byte
					binary.LittleEndian.PutUint64(want[:], uint64(i))
					if !bytes.Equal(buf[:l], want[:]) {
						t.Fatalf("message %d: % x", i, buf[:l])
					}
					i++
				}
				cons.Release()
			}
			if polled != (spin > 0) {
				t.Errorf("spin %v: polled %v", spin, polled)
			}
		})
	}
}
