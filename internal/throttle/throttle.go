// Package throttle rate-limits repeated log records, so that a flood of
// clients that each earn a warning cannot make the daemon fill its log
// (often tmpfs, so memory) faster than anyone could read it.
//
// The handler New returns passes at most burst records with the same
// message per interval of the given length, which starts at the first
// record of the message. Records past the burst are counted, not written.
// When the interval of a message that lost records has ended, the next
// record the handler sees (of any message) first writes one summary
// record: the message, at the highest level of those it dropped, with an
// attribute suppressed=N, through the handler (so with the attributes and
// groups) of the last record it dropped. Summaries are thus written
// lazily: there is no timer and no goroutine, so nothing to stop, and a
// summary waits for the next record.
//
// Records at slog.LevelError and above are counted apart from the others
// with the same message, so a flood of warnings does not hide an error.
// At most 1024 messages are counted apart at once; the records of further
// messages share one count (of each class), whose summaries carry
// OverflowMessage.
package throttle

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"
)

// Recommended settings for a daemon's log: DefaultBurst records of a
// message per DefaultEvery.
const (
	DefaultBurst = 10
	DefaultEvery = 10 * time.Second
)

// SuppressedKey is the key of the summary records' count attribute.
const SuppressedKey = "suppressed"

// OverflowMessage is the message of the summaries of the records that
// share one count because too many distinct messages (built from what
// clients send, say) were being counted at once.
const OverflowMessage = "log records of too many distinct messages"

// maxMessages is how many distinct messages the limiter tracks at once.
const maxMessages = 1024

// New returns a handler that passes records to h, at most burst of each
// message (and level class) per every. It is safe for concurrent use, as
// are the handlers its WithAttrs and WithGroup return, which share its
// counts. It panics if burst < 1 or every <= 0.
func New(h slog.Handler, burst int, every time.Duration) slog.Handler {
	return newHandler(h, burst, every, time.Now)
}

func newHandler(h slog.Handler, burst int, every time.Duration, now func() time.Time) *handler {
	if burst < 1 || every <= 0 {
		panic("throttle: New needs burst >= 1 and every > 0")
	}
	return &handler{inner: h, lim: &limiter{
		burst:   burst,
		every:   every,
		now:     now,
		max:     maxMessages,
		windows: make(map[key]*window),
	}}
}

// handler is what New returns: inner behind a limiter that the handlers
// derived from it share.
type handler struct {
	inner slog.Handler
	lim   *limiter
}

var _ slog.Handler = (*handler)(nil)

// Enabled implements slog.Handler.Enabled.
func (h *handler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.inner.Enabled(ctx, level)
}

// Handle implements slog.Handler.Handle: it writes the summaries that are
// due, then r if its message is within its burst.
func (h *handler) Handle(ctx context.Context, r slog.Record) error {
	pass, due := h.lim.admit(h.inner, r.Message, r.Level)
	var errs []error
	for _, s := range due {
		rec := slog.NewRecord(s.time, s.level, s.msg, 0)
		rec.AddAttrs(slog.Int(SuppressedKey, s.n))
		if err := s.h.Handle(ctx, rec); err != nil {
			errs = append(errs, err)
		}
	}
	if pass {
		if err := h.inner.Handle(ctx, r); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// WithAttrs implements slog.Handler.WithAttrs; the new handler shares h's
// counts.
func (h *handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &handler{inner: h.inner.WithAttrs(attrs), lim: h.lim}
}

// WithGroup implements slog.Handler.WithGroup; the new handler shares h's
// counts.
func (h *handler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	return &handler{inner: h.inner.WithGroup(name), lim: h.lim}
}

// key is what records are counted by: the message, and whether they are
// errors.
type key struct {
	msg    string
	errors bool
}

// window is the count of one key in its current interval.
type window struct {
	key        key
	end        time.Time
	passed     int
	suppressed int
	level      slog.Level   // the highest level suppressed
	h          slog.Handler // the handler of the last suppressed record
}

// summary is a record that reports suppressed records.
type summary struct {
	h     slog.Handler
	time  time.Time
	level slog.Level
	msg   string
	n     int
}

// limiter holds the counts of the handlers derived from one New.
type limiter struct {
	burst int
	every time.Duration
	now   func() time.Time
	max   int // most keys tracked before records go to the overflow keys

	mu      sync.Mutex
	windows map[key]*window // guarded by mu
	// queue holds the windows in the order they started, which is the
	// order they end in: they all last every (should the clock step back,
	// a window may end late). Guarded by mu.
	queue []*window
}

// admit counts a record of msg at level, handled by h, and reports whether
// it passes, with the summaries of the intervals that have ended.
func (l *limiter) admit(h slog.Handler, msg string, level slog.Level) (bool, []summary) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	due := l.expireLocked(now)
	k := key{msg: msg, errors: level >= slog.LevelError}
	w := l.windows[k]
	if w == nil && len(l.windows) >= l.max {
		k.msg = OverflowMessage
		w = l.windows[k]
	}
	if w == nil {
		w = &window{key: k, end: now.Add(l.every)}
		l.windows[k] = w
		l.queue = append(l.queue, w)
	}
	if w.passed < l.burst {
		w.passed++
		return true, due
	}
	if w.suppressed == 0 || level > w.level {
		w.level = level
	}
	w.suppressed++
	w.h = h
	return false, due
}

// expireLocked forgets the windows that ended by now and returns the
// summaries of those that suppressed records. The caller holds l.mu.
func (l *limiter) expireLocked(now time.Time) []summary {
	var due []summary
	for len(l.queue) > 0 && !now.Before(l.queue[0].end) {
		w := l.queue[0]
		l.queue[0] = nil
		l.queue = l.queue[1:]
		delete(l.windows, w.key)
		if w.suppressed > 0 {
			due = append(due, summary{h: w.h, time: now, level: w.level, msg: w.key.msg, n: w.suppressed})
		}
	}
	return due
}
