package benchpeer

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Conn is a peer's connection to the network under test: one Send is one
// message to the network's other members, one Recv one message from them.
// Close must unblock a Recv in progress, which then returns an error.
type Conn interface {
	Send(b []byte) error
	Recv(b []byte) (int, error)
	Close() error
}

// BatchConn is a Conn that also moves messages in batches, for the
// transports whose API has them.
type BatchConn interface {
	Conn
	// SendBatch sends every message of msgs, each as one message.
	SendBatch(msgs [][]byte) error
	// RecvBatch waits for one message, then takes those already queued, up
	// to len(bufs); sizes gets their lengths.
	RecvBatch(bufs [][]byte, sizes []int) (int, error)
}

// Viewer is a Conn that can lend a received message in place, without a
// copy; receivers of big messages use it.
type Viewer interface {
	// RecvView calls fn with the next message, valid while fn runs. It
	// returns ErrTorn if the message was written over as fn read it.
	RecvView(fn func(b []byte)) error
}

// ErrTorn reports a message lent by a Viewer that was written over while
// read: a drop.
var ErrTorn = errors.New("message written over while read in place")

// ViewMin is the size of message from which receivers read in place.
const ViewMin = 65536

// Flusher is implemented by Conns that buffer what they send: the sender
// flushes once its sending time is over.
type Flusher interface {
	Flush() error
}

// Config is what one peer does.
type Config struct {
	ID       int           // peer id, 0..MaxPeers-1: the source MAC and the sender id
	Size     int           // frame size in bytes, MinSize at least
	Send     bool          // send load frames from "go" for Duration
	Recv     bool          // count the load frames received
	Dests    []int         // peers to send to, round robin; none: broadcast
	Hello    bool          // send a hello frame before "ready"
	Duration time.Duration // how long a sender sends
	Rate     float64       // frames per second a sender paces itself at; 0: as fast as it can
	Deadline time.Duration // the most the peer lives (enforced by the caller, see Watchdog)
	Target   string        // what to join: a network path, VDE directory or subject
	URL      string        // a server to reach, for transports that need one
	NoFast   bool          // IPN: do not ask for the shared-memory fast path
}

// FlagSet returns a flag set that fills c from command-line flags; the
// ipn bench-peer command and the other transports' peers share it.
func (c *Config) FlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.IntVar(&c.ID, "id", 0, "peer id (source MAC 02:00:00:00:00:<id+1>)")
	fs.IntVar(&c.Size, "size", 64, "frame size in bytes")
	fs.BoolVar(&c.Send, "send", false, "send load frames")
	fs.BoolVar(&c.Recv, "recv", false, "receive load frames")
	fs.Func("dests", "comma-separated peer ids to send to round robin (default: broadcast)", func(s string) error {
		for _, f := range strings.Split(s, ",") {
			if f == "" {
				continue
			}
			id, err := strconv.Atoi(f)
			if err != nil || id < 0 || id >= MaxPeers {
				return fmt.Errorf("bad peer id %q", f)
			}
			c.Dests = append(c.Dests, id)
		}
		return nil
	})
	fs.BoolVar(&c.Hello, "hello", false, "send a broadcast hello frame before ready")
	fs.DurationVar(&c.Duration, "duration", 2*time.Second, "how long to send")
	fs.Float64Var(&c.Rate, "rate", 0, "frames per second to send (0: as fast as possible)")
	fs.DurationVar(&c.Deadline, "deadline", time.Minute, "the most this peer lives")
	fs.StringVar(&c.Target, "target", "", "network path, VDE directory or subject to join")
	fs.StringVar(&c.URL, "url", "", "server URL, for transports that need one")
	fs.BoolVar(&c.NoFast, "no-fast", false, "IPN: do not ask for the fast path")
	return fs
}

// Check reports what is wrong with c.
func (c *Config) Check() error {
	switch {
	case c.ID < 0 || c.ID >= MaxPeers:
		return fmt.Errorf("peer id %d: want 0..%d", c.ID, MaxPeers-1)
	case c.Size < MinSize || c.Size > MaxSize:
		return fmt.Errorf("frame size %d: want %d..%d", c.Size, MinSize, MaxSize)
	case !c.Send && !c.Recv:
		return errors.New("neither sending nor receiving")
	case c.Rate < 0:
		return fmt.Errorf("rate %g: want >= 0", c.Rate)
	case c.Send && c.Duration <= 0:
		return fmt.Errorf("duration %v: want > 0", c.Duration)
	}
	return nil
}

// Result is what a peer measured, printed as one JSON line at the end.
type Result struct {
	ID          int           `json:"id"`
	Sent        int64         `json:"sent"`         // load frames sent (including ones the transport dropped at once)
	SendSeconds float64       `json:"send_seconds"` // from the first to the end of the last send
	Received    int64         `json:"received"`     // load frames received
	Lost        int64         `json:"lost"`         // gaps seen in the senders' sequence numbers
	P50         int64         `json:"p50_ns"`       // one-way latency percentiles
	P99         int64         `json:"p99_ns"`
	CPU         float64       `json:"cpu_s"`               // own user+system CPU from "go" to "stop"
	Latency     map[int]int64 `json:"latency,omitempty"`   // the latency histogram's buckets (see Hist.Buckets)
	FastPath    *bool         `json:"fast_path,omitempty"` // IPN: whether the fast path carried the frames
	Error       string        `json:"error,omitempty"`     // why sending or receiving failed
}

// Reporter is implemented by Conns that add to the Result, such as the
// IPN one telling whether it uses the fast path.
type Reporter interface {
	Report(r *Result)
}

// Run drives one peer on conn, already joined, with the commands read
// from in and the replies written to out (see the package comment). It
// closes conn before it returns.
func Run(conn Conn, cfg Config, in io.Reader, out io.Writer) error {
	if err := cfg.Check(); err != nil {
		conn.Close()
		return err
	}
	p := &peer{conn: conn, cfg: cfg, out: out, res: Result{ID: cfg.ID}}
	var closeOnce sync.Once
	closeConn := func() { closeOnce.Do(func() { conn.Close() }) }
	defer closeConn()
	if cfg.Hello {
		if err := conn.Send(Hello(cfg.ID, cfg.Size)); err != nil {
			return fmt.Errorf("sending hello: %w", err)
		}
	}
	recvDone := make(chan struct{})
	if cfg.Recv {
		go func() {
			defer close(recvDone)
			p.receive()
		}()
	} else {
		close(recvDone)
	}
	if err := p.say("ready"); err != nil {
		return err
	}
	var (
		cpu0     float64
		sendDone = make(chan struct{})
		started  bool
	)
	lines := bufio.NewScanner(in)
	for lines.Scan() {
		cmd := strings.TrimSpace(lines.Text())
		switch cmd {
		case "go":
			if started {
				continue
			}
			started = true
			cpu0 = cpuSeconds()
			if cfg.Send {
				go func() {
					defer close(sendDone)
					p.send()
					p.say("done")
				}()
			} else {
				close(sendDone)
			}
		case "count":
			if err := p.say("count " + strconv.FormatInt(p.received.Load(), 10)); err != nil {
				return err
			}
		case "stop":
			goto stop
		case "":
		default:
			p.say("error unknown command " + strconv.Quote(cmd))
		}
	}
stop:
	// Closing the connection ends a sender blocked in a lossless network
	// and the receiver.
	p.stopping.Store(true)
	closeConn()
	if started {
		<-sendDone
	}
	<-recvDone
	if started {
		p.res.CPU = cpuSeconds() - cpu0
	}
	p.res.Received = p.received.Load()
	p.res.P50 = p.hist.Quantile(0.50)
	p.res.P99 = p.hist.Quantile(0.99)
	if p.hist.Count() > 0 {
		p.res.Latency = p.hist.Buckets()
	}
	if r, ok := conn.(Reporter); ok {
		r.Report(&p.res)
	}
	b, err := json.Marshal(p.res)
	if err != nil {
		return err
	}
	return p.say(string(b))
}

type peer struct {
	conn Conn
	cfg  Config
	// touched keeps the sum of the bytes a receiver looked at, so that
	// the compiler keeps the looking.
	touched byte

	outMu sync.Mutex
	out   io.Writer

	errMu    sync.Mutex
	res      Result       // Sent, SendSeconds by the sender; the rest at the end
	received atomic.Int64 // by the receiver
	hist     Hist         // by the receiver until it returns
	stopping atomic.Bool  // set before the connection is closed at the end
}

// say writes one line to out.
func (p *peer) say(line string) error {
	p.outMu.Lock()
	defer p.outMu.Unlock()
	_, err := io.WriteString(p.out, line+"\n")
	return err
}

// fail records the first error.
func (p *peer) fail(err error) {
	p.errMu.Lock()
	defer p.errMu.Unlock()
	if p.res.Error == "" {
		p.res.Error = err.Error()
	}
}

// closedErr reports whether err comes from the connection being closed.
func closedErr(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) || errors.Is(err, syscall.EBADF)
}

// batch is the number of frames a BatchConn moves at once.
const batch = 32

// send sends load frames for the configured duration.
func (p *peer) send() {
	cfg := p.cfg
	dests := make([]net.HardwareAddr, len(cfg.Dests))
	for i, d := range cfg.Dests {
		dests[i] = MAC(d)
	}
	if len(dests) == 0 {
		dests = []net.HardwareAddr{Broadcast}
	}
	// One frame buffer per batch slot; a frame's destination is that of
	// its turn in the round robin, with its own sequence per destination.
	bc, batched := p.conn.(BatchConn)
	nbuf := 1
	if batched && cfg.Rate == 0 {
		nbuf = batch
	}
	frames := make([][]byte, nbuf)
	for i := range frames {
		frames[i] = make([]byte, cfg.Size)
	}
	seqs := make([]uint64, len(dests))
	if cfg.Rate > 0 {
		// The pace's sleeps end when due, not up to the default timer
		// slack (50 µs) later: that would bunch the frames in pairs.
		// The slack is the thread's, so the sender keeps its thread.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		unix.Prctl(unix.PR_SET_TIMERSLACK, 1, 0, 0, 0)
	}
	var (
		sent  int64
		turn  int
		start = Now()
		end   = start + int64(cfg.Duration)
		err   error
		// the pace's origin and the frames paced from it
		paceStart = start
		paced     int64
	)
	for {
		now := Now()
		if now >= end {
			break
		}
		if cfg.Rate > 0 {
			// Paced: a frame is due every 1/Rate; a sender that fell
			// more than a millisecond behind starts afresh rather than
			// send a burst. The sleep is nanosleep(2): the runtime's
			// timers round short sleeps up to a millisecond.
			due := paceStart + int64(float64(paced)*1e9/cfg.Rate)
			if due > now {
				sleep(due - now)
				continue
			}
			if now-due > int64(time.Millisecond) {
				paceStart, paced = now, 0
			}
			paced++
		}
		for i := range frames {
			d := turn % len(dests)
			turn++
			PutHeader(frames[i], dests[d], cfg.ID)
			Stamp(frames[i], seqs[d], Now())
			seqs[d]++
		}
		if nbuf > 1 {
			err = bc.SendBatch(frames)
		} else {
			err = p.conn.Send(frames[0])
		}
		if err != nil {
			if !(p.stopping.Load() && closedErr(err)) {
				p.fail(fmt.Errorf("send: %w", err))
			}
			break
		}
		sent += int64(nbuf)
	}
	if f, ok := p.conn.(Flusher); ok && err == nil {
		if err := f.Flush(); err != nil && !p.stopping.Load() {
			p.fail(fmt.Errorf("flush: %w", err))
		}
	}
	p.errMu.Lock()
	p.res.Sent = sent
	p.res.SendSeconds = float64(Now()-start) / 1e9
	p.errMu.Unlock()
}

// receive counts load frames until the connection is closed.
func (p *peer) receive() {
	var next [MaxPeers]uint64 // per sender: the sequence number expected
	var lost int64
	var touched byte
	count := func(id int, seq uint64, t, now int64) {
		if seq > next[id] {
			lost += int64(seq - next[id])
		}
		if seq >= next[id] {
			next[id] = seq + 1
		}
		p.hist.Record(now - t)
		p.received.Add(1)
	}
	handle := func(b []byte, now int64) {
		id, seq, t, err := Parse(b)
		if err != nil {
			return
		}
		// A receiver of big messages looks at each of their pages, as
		// one that uses them would.
		for i := 4096; i < len(b); i += 4096 {
			touched += b[i]
		}
		count(id, seq, t, now)
	}
	bufSize := max(p.cfg.Size, 2048)
	var err error
	if v, ok := p.conn.(Viewer); ok && p.cfg.Size >= ViewMin {
		// What a torn view saw is not counted: the next message's
		// sequence number counts it lost.
		var id int
		var seq uint64
		var t int64
		var perr error
		view := func(b []byte) {
			id, seq, t, perr = Parse(b)
			for i := 4096; i < len(b); i += 4096 {
				touched += b[i]
			}
		}
		for {
			if err = v.RecvView(view); errors.Is(err, ErrTorn) {
				continue
			}
			if err != nil {
				break
			}
			if perr == nil {
				count(id, seq, t, Now())
			}
		}
	} else if bc, ok := p.conn.(BatchConn); ok {
		bufs := make([][]byte, batch)
		for i := range bufs {
			bufs[i] = make([]byte, bufSize)
		}
		sizes := make([]int, batch)
		for {
			var n int
			n, err = bc.RecvBatch(bufs, sizes)
			if err != nil {
				break
			}
			now := Now()
			for i := range n {
				handle(bufs[i][:min(sizes[i], len(bufs[i]))], now)
			}
		}
	} else {
		buf := make([]byte, bufSize)
		for {
			var n int
			n, err = p.conn.Recv(buf)
			if err != nil {
				break
			}
			handle(buf[:n], Now())
		}
	}
	if !closedErr(err) && !p.stopping.Load() {
		p.fail(fmt.Errorf("receive: %w", err))
	}
	p.errMu.Lock()
	p.res.Lost = lost
	p.errMu.Unlock()
	p.touched = touched
}

// sleep sleeps for ns nanoseconds in the kernel.
func sleep(ns int64) {
	ts := unix.NsecToTimespec(ns)
	for unix.Nanosleep(&ts, &ts) == unix.EINTR {
	}
}

// cpuSeconds returns the user and system CPU time of this process.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

// Watchdog ends the process with status 3 once d has passed, so that a
// peer never outlives its benchmark; stop cancels it.
func Watchdog(d time.Duration, exit func(code int)) (stop func() bool) {
	t := time.AfterFunc(d, func() { exit(3) })
	return t.Stop
}
