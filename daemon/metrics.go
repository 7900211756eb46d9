package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/net/netutil"

	"github.com/ipn-project/ipn/endpoint"
	"github.com/ipn-project/ipn/engine"
	"github.com/ipn-project/ipn/policy"
	"github.com/ipn-project/ipn/port/grab"
	"github.com/ipn-project/ipn/port/seqpacket"
	"github.com/ipn-project/ipn/port/shm"
	"github.com/ipn-project/ipn/port/tap"
	"github.com/ipn-project/ipn/port/vde"
)

// DefaultMetricsMode is the mode of a metrics Unix socket whose Config
// gives none: the daemon's user alone.
const DefaultMetricsMode os.FileMode = 0o600

// CheckMetricsAddr checks a metrics address (Config.Metrics): the path of
// a Unix socket (it begins with "/"), or HOST:PORT where HOST is a loopback
// address or "localhost", unless any allows every address. Metrics show
// every user's network paths and port descriptions to whoever reaches them.
func CheckMetricsAddr(addr string, any bool) error {
	if strings.HasPrefix(addr, "/") {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("metrics address %q: want HOST:PORT (127.0.0.1:9215) or the path of a Unix socket (/run/ipn/metrics.sock): %w", addr, err)
	}
	if any || host == "localhost" {
		return nil
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.IsLoopback() {
		return nil
	}
	what := "not a loopback address"
	if host == "" {
		what = "every interface"
	}
	return fmt.Errorf("metrics address %q is %s, and metrics show every user's networks and ports to whoever reaches them: "+
		"want 127.0.0.1, [::1] or localhost, or a Unix socket path; --metrics-any serves them there anyway", addr, what)
}

// checkMetrics checks cfg's metrics settings: the address
// (CheckMetricsAddr) and the mode of a Unix socket.
func checkMetrics(cfg Config) error {
	if err := CheckMetricsAddr(cfg.Metrics, cfg.MetricsAny); err != nil {
		return err
	}
	if cfg.MetricsMode&^0o777 != 0 {
		return fmt.Errorf("metrics socket mode %#o: want permission bits alone (0600, 0660, ...)", cfg.MetricsMode)
	}
	return nil
}

// listenMetrics opens cfg.Metrics, checked. A Unix socket is bound in a
// fresh directory of mode 0700 beside its path, given cfg.MetricsMode
// there and only then renamed into place, so that it is never reachable
// with a wider mode; a stale socket at the path is replaced.
func listenMetrics(cfg Config) (net.Listener, error) {
	if err := checkMetrics(cfg); err != nil {
		return nil, err
	}
	addr := cfg.Metrics
	if !strings.HasPrefix(addr, "/") {
		if host, port, _ := net.SplitHostPort(addr); host == "localhost" {
			addr = net.JoinHostPort("127.0.0.1", port) // never what a hosts file says
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("metrics: %w", err)
		}
		return ln, nil
	}
	mode := cfg.MetricsMode
	if mode == 0 {
		mode = DefaultMetricsMode
	}
	tmp, err := os.MkdirTemp(filepath.Dir(addr), ".metrics-")
	if err != nil {
		return nil, fmt.Errorf("metrics socket %s: %w", addr, err)
	}
	defer os.RemoveAll(tmp)
	at := filepath.Join(tmp, "s")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: at, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("metrics socket %s: %w", addr, err)
	}
	ln.SetUnlinkOnClose(false) // it is renamed; Close removes it where it is then
	if err = os.Chmod(at, mode); err == nil {
		if fi, lerr := os.Lstat(addr); lerr == nil && fi.Mode()&os.ModeSocket == 0 {
			err = fmt.Errorf("%s is there and is not a socket", addr)
		} else {
			err = os.Rename(at, addr)
		}
	}
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("metrics socket %s: %w", addr, err)
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(addr, &st); err != nil {
		ln.Close()
		return nil, fmt.Errorf("metrics socket %s: %w", addr, err)
	}
	return &renamedListener{UnixListener: ln, path: addr, dev: uint64(st.Dev), ino: uint64(st.Ino)}, nil
}

// renamedListener is a Unix listener renamed to path after its bind: it
// reports path as its address and, at Close, removes it if it is still
// its socket (a daemon that took over may have put its own there).
type renamedListener struct {
	*net.UnixListener
	path     string
	dev, ino uint64
}

func (l *renamedListener) Addr() net.Addr { return &net.UnixAddr{Name: l.path, Net: "unix"} }

func (l *renamedListener) Close() error {
	err := l.UnixListener.Close()
	var st syscall.Stat_t
	if syscall.Lstat(l.path, &st) == nil && uint64(st.Dev) == l.dev && uint64(st.Ino) == l.ino {
		os.Remove(l.path)
	}
	return err
}

// metricsTakeoverWait is how long a daemon that took over tries its
// metrics address every 50 ms, quietly, while the old daemon lets it go;
// metricsRetryMax is the longest pause between two tries at an address
// that cannot be had.
const (
	metricsTakeoverWait = 5 * time.Second
	metricsRetryMax     = 10 * time.Second
)

// metricsRunner serves a daemon's metrics from a goroutine of its own,
// which stop ends.
type metricsRunner struct {
	quit chan struct{}
	done chan struct{} // closed when the goroutine has returned
	once sync.Once
}

// runMetrics serves s.cfg.Metrics, in the background: the daemon serves
// its networks whether or not the address can be had. An address that
// cannot be bound (another process holds the port, a directory is
// missing) is logged as an error, naming it, and tried again with a
// growing pause until it is bound or the runner stopped. A daemon that
// took over (took) first gives the old one metricsTakeoverWait to let the
// address go. s.cfg.MetricsReady is called, from the runner's goroutine,
// once metrics are served.
func (s *server) runMetrics(took bool) *metricsRunner {
	r := &metricsRunner{quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		ln := s.bindMetrics(took, r.quit)
		if ln == nil {
			return
		}
		m := s.startMetrics(ln)
		if s.cfg.MetricsReady != nil {
			s.cfg.MetricsReady(ln.Addr())
		}
		<-r.quit
		m.stop()
	}()
	return r
}

// stop stops serving metrics and returns once the runner's goroutine,
// and the server's, have returned. It may be called again.
func (r *metricsRunner) stop() {
	r.once.Do(func() { close(r.quit) })
	<-r.done
}

// bindMetrics opens s.cfg.Metrics, trying again until it is opened or
// quit is closed (then nil).
func (s *server) bindMetrics(took bool, quit <-chan struct{}) net.Listener {
	var oldLetsGo time.Time // until then, EADDRINUSE is the old daemon's
	if took {
		oldLetsGo = time.Now().Add(metricsTakeoverWait)
	}
	var pause time.Duration
	for failed := false; ; {
		ln, err := listenMetrics(s.cfg)
		if err == nil {
			if failed {
				s.log.Warn("metrics address bound after all", "addr", s.cfg.Metrics)
			}
			return ln
		}
		if errors.Is(err, syscall.EADDRINUSE) && time.Now().Before(oldLetsGo) {
			pause = 50 * time.Millisecond
		} else {
			failed = true
			pause = min(max(2*pause, 100*time.Millisecond), metricsRetryMax)
			s.log.Error("cannot serve metrics; serving the networks without them, trying again",
				"addr", s.cfg.Metrics, "err", err, "retry_in", pause)
		}
		t := time.NewTimer(pause)
		select {
		case <-t.C:
		case <-quit:
			t.Stop()
			return nil
		}
	}
}

// The metrics server's bounds. Every local user may reach a loopback
// address, so no connection is kept past its one request, and a silent
// or slow one is dropped in seconds: with the cap on connections held,
// one user's connections cannot keep a scrape out for long. On a Unix
// socket the kernel says whose a connection is, and each user holds
// maxMetricsConnsPerUser at most.
const (
	maxMetricsConns        = 16
	maxMetricsConnsPerUser = 4
	metricsHeaderTimeout   = 2 * time.Second
	metricsReadTimeout     = 5 * time.Second
	metricsWriteTimeout    = 15 * time.Second
)

// metricsServer serves the daemon's metrics over HTTP until stopped.
type metricsServer struct {
	http *http.Server
	ln   net.Listener
	done chan struct{} // closed when the serving goroutine has returned
}

// startMetrics serves s's metrics on ln from a goroutine of its own,
// which stop ends.
func (s *server) startMetrics(ln net.Listener) *metricsServer {
	reg := prometheus.NewRegistry()
	reg.MustRegister(&collector{s: s},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:            metricsLog{s},
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4,
		Timeout:             10 * time.Second,
	}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintln(w, "ipn daemon: metrics at /metrics")
	})
	// Connections beyond the bound wait in the kernel's backlog: a
	// scraper that opens many holds no more of the daemon than this.
	if _, ok := ln.Addr().(*net.UnixAddr); ok {
		ln = &peerLimitListener{Listener: ln, log: s.log, max: maxMetricsConnsPerUser, by: make(map[uint32]int)}
	}
	ln = netutil.LimitListener(ln, maxMetricsConns)
	m := &metricsServer{
		http: &http.Server{
			Handler:           mux,
			ReadHeaderTimeout: metricsHeaderTimeout,
			ReadTimeout:       metricsReadTimeout,
			WriteTimeout:      metricsWriteTimeout,
			IdleTimeout:       time.Second, // none: keep-alives are off
			MaxHeaderBytes:    16 << 10,
		},
		ln:   ln,
		done: make(chan struct{}),
	}
	// An idle connection kept for a next request would hold its slot
	// for whoever opened it: each connection serves one request.
	m.http.SetKeepAlivesEnabled(false)
	go func() {
		defer close(m.done)
		if err := m.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("metrics server stopped", "addr", ln.Addr().String(), "err", err)
		}
	}()
	s.log.Info("serving metrics", "addr", ln.Addr().String())
	return m
}

// peerLimitListener accepts at most max connections at once from each
// user, as SO_PEERCRED says, of a Unix listener; one over, or whose
// peer cannot be told, is closed unread.
type peerLimitListener struct {
	net.Listener
	log *slog.Logger
	max int

	mu sync.Mutex
	by map[uint32]int // guarded by mu: connections open, by uid
}

// Accept implements net.Listener.Accept.
func (l *peerLimitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		uc, ok := c.(*net.UnixConn)
		if !ok {
			c.Close()
			return nil, fmt.Errorf("metrics: a %T from a Unix listener", c)
		}
		cr, err := peerCred(uc)
		if err != nil {
			l.log.Warn("metrics: refusing a connection whose peer is unknown", "err", err)
			c.Close()
			continue
		}
		l.mu.Lock()
		n := l.by[cr.UID]
		if n < l.max {
			l.by[cr.UID] = n + 1
		}
		l.mu.Unlock()
		if n >= l.max {
			l.log.Warn("metrics: refusing a connection: its user has the most open", "client", cr, "max", l.max)
			c.Close()
			continue
		}
		return &peerConn{Conn: c, l: l, uid: cr.UID}, nil
	}
}

// peerConn is a connection a peerLimitListener counts against its user
// until it is closed.
type peerConn struct {
	net.Conn
	l    *peerLimitListener
	uid  uint32
	once sync.Once
}

// Close implements net.Conn.Close; it gives the user's slot back once.
func (c *peerConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.mu.Lock()
		if c.l.by[c.uid]--; c.l.by[c.uid] <= 0 {
			delete(c.l.by, c.uid)
		}
		c.l.mu.Unlock()
	})
	return err
}

// stop closes the listener, lets the scrapes under way finish for a
// second at most, and returns once the serving goroutine has.
func (m *metricsServer) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := m.http.Shutdown(ctx); err != nil {
		m.http.Close()
	}
	<-m.done
}

// metricsLog passes promhttp's errors to the daemon's log.
type metricsLog struct{ s *server }

func (l metricsLog) Println(v ...any) { l.s.log.Warn("metrics", "err", fmt.Sprint(v...)) }

// Descriptions of the metrics; docs/metrics.md lists them.
var (
	// id, the network file's DEV:INO, tells networks apart: network is
	// what the daemon can say of their paths, and two may say the same.
	netLabels  = []string{"network", "id", "proto"}
	portLabels = []string{"network", "id", "proto", "port", "kind"}

	descNetworks    = prometheus.NewDesc("ipn_networks", "Networks the daemon serves.", nil, nil)
	descConnections = prometheus.NewDesc("ipn_connections", "Control connections open to the daemon.", nil, nil)
	descUserNets    = prometheus.NewDesc("ipn_user_networks", "Networks a user made that live (users but root).", []string{"uid"}, nil)
	descUserPorts   = prometheus.NewDesc("ipn_user_ports", "Ports a user's requests hold (users but root).", []string{"uid"}, nil)
	descUserConns   = prometheus.NewDesc("ipn_user_connections", "Control connections a user has open (users but root).", []string{"uid"}, nil)
	descUserShm     = prometheus.NewDesc("ipn_user_shm_bytes", "Fast-path rings of a user's members (users but root).", []string{"uid"}, nil)
	descUserMemory  = prometheus.NewDesc("ipn_user_memory_bytes", "Message memory charged to a user's networks (users but root).", []string{"uid"}, nil)

	descNetPorts    = prometheus.NewDesc("ipn_network_ports", "Ports in use, by kind (shm: the fast path; socket: the socket path; vde, tap, grab; other).", append(netLabels, "kind"), nil)
	descNetMaxPorts = prometheus.NewDesc("ipn_network_max_ports", "Ports the network has (its size).", netLabels, nil)
	descNetReaders  = prometheus.NewDesc("ipn_network_readers", "Ports whose receive side is open.", netLabels, nil)
	descNetWriters  = prometheus.NewDesc("ipn_network_writers", "Ports whose send side is open.", netLabels, nil)
	descNetMTU      = prometheus.NewDesc("ipn_network_mtu_bytes", "The network's largest message.", netLabels, nil)
	descNetMemory   = prometheus.NewDesc("ipn_network_memory_bytes", "Message memory the network is charged to its maker.", netLabels, nil)
	descNetLogRead  = prometheus.NewDesc("ipn_network_shared_log_readers", "Fast-path ports that read the network's shared log (lossy hubs).", netLabels, nil)
	descNetLogBytes = prometheus.NewDesc("ipn_network_shared_log_bytes", "Size of the network's shared log, 0 if it has none.", netLabels, nil)
	descNetTable    = prometheus.NewDesc("ipn_network_table_entries", "Live entries of a table of the policy's (switch: mac; l3switch: mac, ip).", append(netLabels, "table"), nil)
	descNetTableMax = prometheus.NewDesc("ipn_network_table_max_entries", "The most entries the table holds (hashsize).", append(netLabels, "table"), nil)

	descPortInfo     = prometheus.NewDesc("ipn_port_info", "A port in use, always 1: its description, role (member, monitor, link) and open sides (r, w, rw, -).", append(portLabels, "description", "role", "sides"), nil)
	descPortInMsgs   = prometheus.NewDesc("ipn_port_in_messages_total", "Messages the port's node sent into the network.", portLabels, nil)
	descPortInBytes  = prometheus.NewDesc("ipn_port_in_bytes_total", "Bytes of the messages the port's node sent into the network.", portLabels, nil)
	descPortInErrs   = prometheus.NewDesc("ipn_port_in_errors_total", "Messages refused from the port's node (too long, broken fragments, runt frames).", portLabels, nil)
	descPortOutMsgs  = prometheus.NewDesc("ipn_port_out_messages_total", "Messages delivered to the port's node.", portLabels, nil)
	descPortOutBytes = prometheus.NewDesc("ipn_port_out_bytes_total", "Bytes of the messages delivered to the port's node.", portLabels, nil)
	descPortOutDrops = prometheus.NewDesc("ipn_port_out_drops_total", "Messages for the port's node that it missed (a lossy network's full queue or lapped shared log).", portLabels, nil)
)

// collector reads the daemon's counters when scraped: the engine's port
// statistics, the same as ipn ls shows, so the data path does no work
// for metrics.
type collector struct{ s *server }

var _ prometheus.Collector = (*collector)(nil)

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		descNetworks, descConnections, descUserNets, descUserPorts, descUserConns, descUserShm, descUserMemory,
		descNetPorts, descNetMaxPorts, descNetReaders, descNetWriters, descNetMTU, descNetMemory,
		descNetLogRead, descNetLogBytes, descNetTable, descNetTableMax,
		descPortInfo, descPortInMsgs, descPortInBytes, descPortInErrs, descPortOutMsgs, descPortOutBytes, descPortOutDrops,
	} {
		ch <- d
	}
}

// portKinds are the values of the kind label, in the order they are
// reported.
var portKinds = []string{"shm", "socket", "vde", "tap", "grab", "other"}

// portKind names how p's messages move.
func portKind(p *engine.Port) string {
	switch p.Endpoint().(type) {
	case *shm.Endpoint:
		return "shm"
	case *seqpacket.Endpoint, seqpacket.Lossy:
		return "socket"
	case *vde.Endpoint:
		return "vde"
	case *tap.Endpoint:
		return "tap"
	case *grab.Endpoint:
		return "grab"
	}
	return "other"
}

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	// Label values come from users (paths, descriptions): a bad one
	// spoils its metric alone, never the scrape or the daemon.
	emit := func(d *prometheus.Desc, t prometheus.ValueType, v float64, labels []string) {
		m, err := prometheus.NewConstMetric(d, t, v, labels...)
		if err != nil {
			m = prometheus.NewInvalidMetric(d, err)
		}
		ch <- m
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) { emit(d, prometheus.GaugeValue, v, labels) }
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		emit(d, prometheus.CounterValue, float64(v), labels)
	}
	nets := s.engine.Networks()
	gauge(descNetworks, float64(len(nets)))
	s.mu.Lock()
	conns := len(s.sessions)
	s.mu.Unlock()
	gauge(descConnections, float64(conns))

	s.acct.mu.Lock()
	users := make(map[uint32]usage, len(s.acct.by))
	for uid, u := range s.acct.by {
		users[uid] = *u
	}
	s.acct.mu.Unlock()
	for uid, u := range users {
		id := strconv.FormatUint(uint64(uid), 10)
		gauge(descUserNets, float64(u.networks), id)
		gauge(descUserPorts, float64(u.ports), id)
		gauge(descUserConns, float64(u.conns), id)
		gauge(descUserShm, float64(u.shm), id)
		gauge(descUserMemory, float64(u.memory), id)
	}

	for _, n := range nets {
		nf := netFileOf(n)
		cfg := n.Config()
		// The network label is for people: a path as ipn ls shows it,
		// mended, which two networks may share (a path and its mended
		// twin, or two removed networks of one name). The id label is
		// the file's, which the daemon holds for the network's life, so
		// no two live networks share one (docs/metrics.md).
		path := nf.path()
		if path == "" {
			path = "(no path here) " + cfg.Name // as ipn ls says
		}
		path = strings.ToValidUTF8(path, "\ufffd")
		id := strconv.FormatUint(nf.id.dev, 10) + ":" + strconv.FormatUint(nf.id.ino, 10)
		proto := cfg.Proto.String()
		nl := []string{path, id, proto}
		readers, writers := n.Counts()
		gauge(descNetMaxPorts, float64(cfg.NumPorts), nl...)
		gauge(descNetReaders, float64(readers), nl...)
		gauge(descNetWriters, float64(writers), nl...)
		gauge(descNetMTU, float64(cfg.MTU), nl...)
		nf.mu.Lock()
		memory, logMem := nf.memory, int64(0)
		if nf.log != nil {
			logMem = nf.log.Bytes()
		}
		nf.mu.Unlock()
		gauge(descNetMemory, float64(memory), nl...)
		gauge(descNetLogBytes, float64(logMem), nl...)
		if t, ok := n.Policy().(policy.Tabler); ok {
			for _, tab := range t.Tables() {
				gauge(descNetTable, float64(tab.Entries), path, id, proto, tab.Name)
				gauge(descNetTableMax, float64(tab.Max), path, id, proto, tab.Name)
			}
		}

		kinds := make(map[string]int, len(portKinds))
		logReaders := 0
		for _, p := range n.Ports() {
			kind := portKind(p)
			kinds[kind]++
			if fr, ok := p.Endpoint().(endpoint.FanOutReader); ok && fr.FanOut() != nil {
				logReaders++
			}
			o := p.Options()
			role := "member"
			switch {
			case o.Monitor:
				role = "monitor"
			case o.Link:
				role = "link"
			}
			sides := ""
			if p.CanRead() {
				sides += "r"
			}
			if p.CanWrite() {
				sides += "w"
			}
			if sides == "" {
				sides = "-"
			}
			pl := []string{path, id, proto, strconv.Itoa(p.Num()), kind}
			gauge(descPortInfo, 1, append(pl, strings.ToValidUTF8(o.Description, "\ufffd"), role, sides)...)
			st := p.Stats()
			counter(descPortInMsgs, st.MsgsIn, pl...)
			counter(descPortInBytes, st.BytesIn, pl...)
			counter(descPortInErrs, st.Errors, pl...)
			counter(descPortOutMsgs, st.MsgsOut, pl...)
			counter(descPortOutBytes, st.BytesOut, pl...)
			counter(descPortOutDrops, st.Drops, pl...)
		}
		for _, k := range portKinds {
			gauge(descNetPorts, float64(kinds[k]), append(nl, k)...)
		}
		gauge(descNetLogRead, float64(logReaders), nl...)
	}
}
