package throttle

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/slogtest"
	"time"
)

// fakeClock is a clock tests move by hand.
type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

// out collects a JSON handler's lines; Write is called under the
// handler's lock, Lines takes the same one of its own.
type out struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (o *out) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.Write(p)
}

// take returns the records written since the last take.
func (o *out) take(t *testing.T) []map[string]any {
	t.Helper()
	o.mu.Lock()
	defer o.mu.Unlock()
	var recs []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(o.buf.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		recs = append(recs, m)
	}
	o.buf.Reset()
	return recs
}

// rig is a throttled JSON logger on a fake clock.
type rig struct {
	out *out
	clk *fakeClock
	h   *handler
	log *slog.Logger
}

func newRig(burst int, every time.Duration) *rig {
	r := &rig{out: &out{}, clk: &fakeClock{}}
	r.clk.ns.Store(time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	inner := slog.NewJSONHandler(r.out, &slog.HandlerOptions{Level: slog.LevelDebug})
	r.h = newHandler(inner, burst, every, r.clk.now)
	r.log = slog.New(r.h)
	return r
}

// counts returns how many plain records of each message recs hold, and
// the summaries' counts by message.
func counts(recs []map[string]any) (plain, suppressed map[string]int) {
	plain, suppressed = map[string]int{}, map[string]int{}
	for _, m := range recs {
		msg := m["msg"].(string)
		if n, ok := m[SuppressedKey].(float64); ok {
			suppressed[msg] += int(n)
		} else {
			plain[msg]++
		}
	}
	return plain, suppressed
}

func TestBurstThenSummary(t *testing.T) {
	r := newRig(10, 10*time.Second)
	for i := range 10000 {
		r.log.Warn("dropping client", "i", i)
	}
	recs := r.out.take(t)
	if len(recs) != 10 {
		t.Fatalf("%d records passed, want 10", len(recs))
	}
	for i, m := range recs {
		if m["i"].(float64) != float64(i) {
			t.Fatalf("record %d is %v, want the first ones", i, m)
		}
	}
	// Within the interval, nothing more: no summary yet.
	r.clk.advance(10*time.Second - time.Nanosecond)
	r.log.Info("other")
	if got := r.out.take(t); len(got) != 1 || got[0]["msg"] != "other" {
		t.Fatalf("before the interval ends: %v", got)
	}
	// The next record after the interval brings the summary first.
	r.clk.advance(time.Nanosecond)
	r.log.Info("other")
	got := r.out.take(t)
	if len(got) != 2 {
		t.Fatalf("after the interval: %v", got)
	}
	s := got[0]
	if s["msg"] != "dropping client" || s["level"] != "WARN" || s[SuppressedKey] != float64(9990) {
		t.Fatalf("summary %v, want WARN dropping client suppressed=9990", s)
	}
	if got[1]["msg"] != "other" {
		t.Fatalf("record after the summary: %v", got[1])
	}
	// Once written, a summary is not repeated.
	r.clk.advance(time.Hour)
	r.log.Info("other")
	if got := r.out.take(t); len(got) != 1 {
		t.Fatalf("summary repeated: %v", got)
	}
}

func TestDistinctMessagesApart(t *testing.T) {
	r := newRig(3, time.Minute)
	for range 100 {
		r.log.Warn("a")
	}
	for range 100 {
		r.log.Warn("b")
		r.log.Info("c")
	}
	plain, _ := counts(r.out.take(t))
	if plain["a"] != 3 || plain["b"] != 3 || plain["c"] != 3 {
		t.Fatalf("passed %v, want 3 of each", plain)
	}
	r.clk.advance(time.Minute)
	r.log.Info("d")
	plain, sup := counts(r.out.take(t))
	if want := map[string]int{"a": 97, "b": 97, "c": 97}; fmt.Sprint(sup) != fmt.Sprint(want) {
		t.Fatalf("suppressed %v, want %v", sup, want)
	}
	if plain["d"] != 1 {
		t.Fatalf("d not passed: %v", plain)
	}
}

func TestErrorsCountedApart(t *testing.T) {
	r := newRig(2, time.Minute)
	for range 5 {
		r.log.Warn("x")
	}
	for range 5 {
		r.log.Error("x")
	}
	var levels []string
	for _, m := range r.out.take(t) {
		levels = append(levels, m["level"].(string))
	}
	if got := strings.Join(levels, " "); got != "WARN WARN ERROR ERROR" {
		t.Fatalf("passed %s, want two warnings and two errors", got)
	}
	r.clk.advance(time.Minute)
	r.log.Debug("tick")
	got := r.out.take(t)
	if len(got) != 3 {
		t.Fatalf("after the interval: %v", got)
	}
	seen := map[string]float64{}
	for _, m := range got[:2] {
		seen[m["level"].(string)] = m[SuppressedKey].(float64)
	}
	if seen["WARN"] != 3 || seen["ERROR"] != 3 {
		t.Fatalf("summaries %v, want 3 warnings and 3 errors", got[:2])
	}
}

func TestPassesAgainAfterInterval(t *testing.T) {
	r := newRig(5, 10*time.Second)
	for round := range 3 {
		for range 50 {
			r.log.Warn("again")
		}
		plain, sup := counts(r.out.take(t))
		if plain["again"] != 5 {
			t.Fatalf("round %d: %d passed, want 5", round, plain["again"])
		}
		if want := map[int]int{0: 0, 1: 45, 2: 45}[round]; sup["again"] != want {
			t.Fatalf("round %d: summary of %d, want %d", round, sup["again"], want)
		}
		r.clk.advance(10 * time.Second)
	}
}

// TestHighestLevelSummarized checks that a summary has the highest level
// of the records it counts.
func TestHighestLevelSummarized(t *testing.T) {
	r := newRig(1, time.Second)
	r.log.Info("m")
	r.log.Debug("m")
	r.log.Warn("m")
	r.log.Info("m")
	r.clk.advance(time.Second)
	r.log.Info("next")
	got := r.out.take(t)
	if len(got) != 3 || got[1]["level"] != "WARN" || got[1][SuppressedKey] != float64(3) {
		t.Fatalf("records %v, want INFO m, WARN m suppressed=3, next", got)
	}
}

func TestWithAttrsAndGroupShareCounts(t *testing.T) {
	r := newRig(4, time.Minute)
	a := r.log.With("conn", 1)
	g := r.log.WithGroup("vde").With("dir", "/tmp/v")
	for range 10 {
		r.log.Warn("refused")
		a.Warn("refused")
		g.Warn("refused")
	}
	got := r.out.take(t)
	if len(got) != 4 {
		t.Fatalf("%d records passed, want 4 shared: %v", len(got), got)
	}
	if got[1]["conn"] != float64(1) {
		t.Fatalf("With lost its attribute: %v", got[1])
	}
	if vde, _ := got[2]["vde"].(map[string]any); vde["dir"] != "/tmp/v" {
		t.Fatalf("WithGroup lost its group: %v", got[2])
	}
	// The summary goes through the handler of the last suppressed record.
	r.clk.advance(time.Minute)
	r.log.Info("next")
	got = r.out.take(t)
	if len(got) != 2 {
		t.Fatalf("after the interval: %v", got)
	}
	vde, _ := got[0]["vde"].(map[string]any)
	if got[0]["msg"] != "refused" || vde["dir"] != "/tmp/v" || vde[SuppressedKey] != float64(26) {
		t.Fatalf("summary %v, want refused with vde.suppressed=26", got[0])
	}
	if r.h.WithGroup("") != slog.Handler(r.h) {
		t.Fatal("WithGroup(\"\") did not return the handler")
	}
}

// TestOverflow checks that once too many messages are tracked, new ones
// share one count.
func TestOverflow(t *testing.T) {
	r := newRig(2, time.Minute)
	r.h.lim.max = 3
	for i := range 10 {
		for range 3 {
			r.log.Info(fmt.Sprintf("msg %d", i))
		}
	}
	plain, _ := counts(r.out.take(t))
	total := 0
	for _, n := range plain {
		total += n
	}
	if total != 3*2+2 {
		t.Fatalf("%d records passed (%v), want 2 of 3 messages and 2 more", total, plain)
	}
	if len(r.h.lim.windows) != 4 {
		t.Fatalf("%d messages tracked, want 3 and the overflow", len(r.h.lim.windows))
	}
	r.clk.advance(time.Minute)
	r.log.Info("next")
	_, sup := counts(r.out.take(t))
	if sup[OverflowMessage] != 7*3-2 {
		t.Fatalf("suppressed %v, want %d under %q", sup, 7*3-2, OverflowMessage)
	}
	if len(r.h.lim.windows) != 1 {
		t.Fatalf("%d messages tracked after the interval, want 1", len(r.h.lim.windows))
	}
}

// TestConcurrent logs from many goroutines, through derived handlers, while
// the clock moves: every record is either written or counted in a summary.
func TestConcurrent(t *testing.T) {
	const goroutines, perG = 8, 2000
	r := newRig(10, time.Second)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l := r.log.With("g", g)
			for i := range perG {
				if g == 0 && i%100 == 0 {
					r.clk.advance(300 * time.Millisecond)
				}
				switch i % 3 {
				case 0:
					l.Warn("a")
				case 1:
					l.Info("b")
				default:
					l.Error("a")
				}
			}
		}()
	}
	wg.Wait()
	r.clk.advance(time.Second)
	r.log.Info("flush")
	plain, sup := counts(r.out.take(t))
	if plain["flush"] != 1 {
		t.Fatalf("flush record: %v", plain)
	}
	delete(plain, "flush")
	total := 0
	for msg, n := range plain {
		total += n + sup[msg]
	}
	if total != goroutines*perG {
		t.Fatalf("%d records written or counted (%v written, %v suppressed), want %d", total, plain, sup, goroutines*perG)
	}
	if len(r.h.lim.windows) != 1 || len(r.h.lim.queue) != 1 {
		t.Fatalf("%d windows, %d queued after the flush, want 1", len(r.h.lim.windows), len(r.h.lim.queue))
	}
}

// TestSlogtest checks the handler against log/slog's conformance tests
// with a burst they never reach.
func TestSlogtest(t *testing.T) {
	var o *out
	slogtest.Run(t, func(*testing.T) slog.Handler {
		o = &out{}
		return New(slog.NewJSONHandler(o, nil), 1000, time.Minute)
	}, func(t *testing.T) map[string]any {
		recs := o.take(t)
		if len(recs) != 1 {
			t.Fatalf("%d records, want 1", len(recs))
		}
		return recs[0]
	})
}

func TestNewPanicsOnBadLimits(t *testing.T) {
	for _, c := range []struct {
		burst int
		every time.Duration
	}{{0, time.Second}, {1, 0}, {-1, -time.Second}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("New(h, %d, %v) did not panic", c.burst, c.every)
				}
			}()
			New(slog.DiscardHandler, c.burst, c.every)
		}()
	}
}

// TestHandleErrors checks that the inner handler's errors come back.
func TestHandleErrors(t *testing.T) {
	h := New(failing{}, 1, time.Second)
	if err := h.Handle(context.Background(), slog.NewRecord(time.Now(), slog.LevelInfo, "m", 0)); err == nil {
		t.Fatal("no error from a failing handler")
	}
}

type failing struct{ slog.Handler }

func (failing) Handle(context.Context, slog.Record) error { return fmt.Errorf("disk full") }
