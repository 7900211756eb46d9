package daemon

// The daemon's side of the holder (holder.go). A persistent device port's
// descriptors (the device's and its network file's, dups kept in
// devPort.hfds) and its metadata (heldMeta) are put in the holder when it
// becomes persistent, dropped when its persistence is cleared or its port
// leaves for good (not when the daemon stops: the next daemon brings it
// back), and refreshed when its metadata changes (a VLAN, the network's
// size). At start (restoreHeld, from Serve) and whenever it connects to a
// holder, the daemon lists the holder's entries and brings back each one
// whose device port it lacks: its network (made again on the held network
// file if none lives there, charged to its creator as create does) and its
// port, persistent, at the same number, with the same sides.
//
// A takeover hands nothing of the holder over: the new daemon connects to
// the holder itself (restoreHeld), which replaces the old daemon's
// connection and tells it so; the old one then stays off the holder for
// good (superseded), so that its ports' leaving drops nothing. An entry
// whose device port the new daemon has already (taken over) is adopted,
// not restored. A daemon handing over may call detachHolder first, and
// resumeHolder if the hand-over failed.
//
// Every call has a deadline; a holder that does not answer is let go (the
// next call connects again, and syncs), one that is gone is started again.
// Lock order: holderClient.mu before devices.mu.

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ipn-project/ipn/engine"
	"github.com/ipn-project/ipn/internal/ctlsock"
	"github.com/ipn-project/ipn/internal/spec"
	"github.com/ipn-project/ipn/internal/wire"
	"github.com/ipn-project/ipn/policy"
)

// Deadlines and bounds of the daemon's calls to its holder.
const (
	holderCallTimeout  = 2 * time.Second
	holderListTimeout  = 5 * time.Second
	holderStartTimeout = 3 * time.Second
	// holderRefresh is how often the metadata of held ports is compared
	// with what was put.
	holderRefresh = 5 * time.Second
	// holderMaxPerUser bounds the entries one user's device ports may
	// take in the holder (root: holderMaxEntries).
	holderMaxPerUser = 256
)

// errSuperseded reports that another daemon has taken the holder.
var errSuperseded = fmt.Errorf("another daemon took the holder over: %w", syscall.EALREADY)

// holderClient is a daemon's connection to its holder.
type holderClient struct {
	mu         sync.Mutex      // serializes the calls; before devices.mu
	conn       *holderConn     // guarded by mu; nil when not connected
	superseded bool            // guarded by mu; another daemon took the holder
	pending    map[string]bool // guarded by mu; ids to drop once connected
	lastStart  time.Time       // guarded by mu; when a holder was last started
	refresh    sync.Once       // starts refreshLoop
}

// heldMeta is what the holder keeps of a device port beside its
// descriptors (the device's, the network file's).
type heldMeta struct {
	Kind  byte     `json:"kind"` // wire.DevTap or wire.DevGrab
	Name  string   `json:"name"` // the interface
	Maker uint32   `json:"maker"`
	Port  int      `json:"port"`
	Read  bool     `json:"read"`  // frames from the network go out of it
	Write bool     `json:"write"` // frames it receives enter the network
	VLAN  uint16   `json:"vlan,omitempty"`
	Trunk []uint16 `json:"trunk,omitempty"`
	Net   struct {
		Name     string `json:"name"`
		Proto    uint16 `json:"proto"`
		MTU      int    `json:"mtu"`
		NumPorts int    `json:"ports"`
		PoolSize int    `json:"pool"`
		Flags    uint32 `json:"flags"`
		Creator  uint32 `json:"creator"`
	} `json:"net"`
}

// portVLANs is a port's row in a switch's "ports" option.
type portVLANs struct {
	Port  int      `json:"port"`
	VLAN  uint16   `json:"vlan"`
	Trunk []uint16 `json:"trunk"`
}

// vlansOf returns the VLANs of port num of n, if its policy has them.
func vlansOf(n *engine.Network, num int) (uint16, []uint16) {
	v, err := n.PolicyOption("ports")
	if err != nil {
		return 0, nil
	}
	var rows []portVLANs
	if json.Unmarshal([]byte(v), &rows) != nil {
		return 0, nil
	}
	for _, r := range rows {
		if r.Port == num {
			return r.VLAN, r.Trunk
		}
	}
	return 0, nil
}

// metaOf returns the metadata of d's entry in the holder now.
func metaOf(d *devPort) []byte {
	n := d.key.net
	cfg := n.Config()
	m := heldMeta{Kind: d.kind, Name: d.key.name, Maker: d.maker, Port: d.port.Num(), Read: !d.noRead, Write: !d.noWrite}
	m.VLAN, m.Trunk = vlansOf(n, m.Port)
	m.Net.Name, m.Net.Proto, m.Net.MTU, m.Net.NumPorts = cfg.Name, uint16(cfg.Proto), cfg.MTU, cfg.NumPorts
	m.Net.PoolSize, m.Net.Flags, m.Net.Creator = cfg.PoolSize, uint32(cfg.Flags), netFileOf(n).creator
	b, _ := json.Marshal(m)
	return b
}

// newHID returns a new holder id for d: its network file, its name and a
// random part, so that a later port of the same name never has its id.
func newHID(d *devPort) string {
	id := netFileOf(d.key.net).id
	var r [6]byte
	rand.Read(r[:])
	return fmt.Sprintf("%x:%x/%s/%s", id.dev, id.ino, d.key.name, hex.EncodeToString(r[:]))
}

// restoreHeld brings back, at the daemon's start, the persistent device
// ports that a running holder keeps and this daemon lacks.
func (s *server) restoreHeld() {
	ds := &s.devices
	ds.srv.Store(s)
	h := &ds.holder
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, err := ds.ensureLocked(false); err != nil && !noHolder(err) {
		s.log.Warn("holder: no device ports restored", "err", err)
	}
}

// noHolder reports whether err means that no holder runs.
func noHolder(err error) bool {
	return errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED)
}

// hold puts the persistent device port d in the holder, starting one if
// none runs; on failure it logs that d would not survive a crash.
func (ds *devices) hold(d *devPort) {
	h := &ds.holder
	h.mu.Lock()
	defer h.mu.Unlock()
	srv := ds.srv.Load()
	hc, err := ds.ensureLocked(true)
	if err == nil {
		err = ds.putLocked(srv, hc, d)
	}
	if err != nil {
		srv.log.Warn("persistent device port not held: it will not survive a crash of the daemon",
			"network", d.key.net.Name(), "device", d.key.name, "err", err)
	}
}

// unhold closes d's descriptors for the holder and, if drop, drops its
// entry there.
func (ds *devices) unhold(d *devPort, drop bool) {
	h := &ds.holder
	h.mu.Lock()
	defer h.mu.Unlock()
	ds.mu.Lock()
	was := d.held
	d.held = false
	ds.mu.Unlock()
	closeFDs(d.hfds)
	d.hfds = nil
	if !was || !drop || h.superseded {
		return
	}
	if h.pending == nil {
		h.pending = map[string]bool{}
	}
	h.pending[d.hid] = true
	srv := ds.srv.Load()
	hc, err := ds.ensureLocked(false) // a connection's sync drops what is pending
	if err != nil || !h.pending[d.hid] {
		return // no holder runs (nothing to drop), or dropped
	}
	if _, err := hc.call(holderDrop, d.hid, nil, nil); err != nil {
		if !errors.Is(err, syscall.ENOENT) {
			ds.brokenLocked(hc)
			srv.log.Warn("holder: drop failed; will drop when connected again", "device", d.key.name, "err", err)
			return
		}
	}
	delete(h.pending, d.hid)
	srv.log.Info("device port no longer held", "network", d.key.net.Name(), "device", d.key.name)
}

// detachHolder lets the holder go without dropping anything, for good:
// for a daemon handing its ports over to another, before it lets them go.
func (ds *devices) detachHolder() {
	h := &ds.holder
	h.mu.Lock()
	defer h.mu.Unlock()
	h.superseded = true
	if h.conn != nil {
		h.conn.close()
		h.conn = nil
	}
}

// resumeHolder undoes detachHolder (a hand-over that failed): the daemon
// connects to the holder again and syncs its persistent device ports.
func (ds *devices) resumeHolder() {
	h := &ds.holder
	h.mu.Lock()
	defer h.mu.Unlock()
	h.superseded = false
	if srv := ds.srv.Load(); srv != nil {
		if _, err := ds.ensureLocked(ds.anyPersistLocked()); err != nil && !noHolder(err) {
			srv.log.Warn("holder: not resumed", "err", err)
		}
	}
}

// anyPersistLocked reports whether a device port is persistent. Caller
// must hold ds.holder.mu.
func (ds *devices) anyPersistLocked() bool {
	ds.mu.Lock()
	defer ds.mu.Unlock()
	for _, d := range ds.byKey {
		if d.persist {
			return true
		}
	}
	return false
}

// ensureLocked returns the connection to the holder, connecting first if
// there is none (and, if spawn and no holder runs, starting one) and then
// syncing with it. Caller must hold ds.holder.mu.
func (ds *devices) ensureLocked(spawn bool) (*holderConn, error) {
	h := &ds.holder
	if h.superseded {
		return nil, errSuperseded
	}
	if h.conn != nil {
		return h.conn, nil
	}
	srv := ds.srv.Load()
	if srv == nil || srv.cfg.Socket == "" {
		return nil, fmt.Errorf("holder: the daemon has no socket: %w", syscall.ENOTCONN)
	}
	path := holderPath(srv.cfg.Socket)
	hc, err := dialHolder(path, ds.holderLost)
	if err != nil && spawn && noHolder(err) {
		switch {
		case !holderCapable.Load():
			return nil, fmt.Errorf("holder: this program cannot start one (it does not call daemon.RunIfChild): %w", syscall.ENOSYS)
		case time.Since(h.lastStart) < time.Second:
			return nil, fmt.Errorf("holder: one was started a moment ago and is gone: %w", syscall.EAGAIN)
		}
		h.lastStart = time.Now()
		if err := startHolder(srv.cfg.Socket); err != nil {
			return nil, err
		}
		hc, err = dialHolder(path, ds.holderLost)
	}
	if err != nil {
		return nil, err
	}
	h.conn = hc
	srv.log.Info("holder connected", "pid", hc.pid, "socket", path)
	if err := ds.syncLocked(srv, hc); err != nil {
		ds.brokenLocked(hc)
		return nil, err
	}
	h.refresh.Do(func() { go ds.refreshLoop(srv) })
	return hc, nil
}

// brokenLocked lets the connection hc go. Caller must hold ds.holder.mu.
func (ds *devices) brokenLocked(hc *holderConn) {
	hc.close()
	if ds.holder.conn == hc {
		ds.holder.conn = nil
	}
}

// holderLost runs when the holder closed hc: replaced by another daemon's
// connection (that daemon took over), or gone, then started again if a
// device port is persistent.
func (ds *devices) holderLost(hc *holderConn) {
	h := &ds.holder
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.conn != hc {
		return
	}
	h.conn = nil
	srv := ds.srv.Load()
	if hc.replaced.Load() {
		h.superseded = true
		srv.log.Warn("holder: another daemon connected to it; leaving it that daemon's")
		return
	}
	if stopping(srv) || !ds.anyPersistLocked() {
		return
	}
	srv.log.Warn("holder gone; starting another and putting the persistent device ports back", "pid", hc.pid)
	if _, err := ds.ensureLocked(true); err != nil {
		srv.log.Warn("holder: could not put the persistent device ports back", "err", err)
	}
}

// syncLocked makes the holder's entries and the daemon's persistent
// device ports agree: it drops what is pending, brings back or adopts
// each entry the daemon lacks or has unheld, and puts every persistent
// port the holder lacks. Caller must hold ds.holder.mu.
func (ds *devices) syncLocked(srv *server, hc *holderConn) error {
	h := &ds.holder
	for id := range h.pending {
		if _, err := hc.call(holderDrop, id, nil, nil); err != nil && !errors.Is(err, syscall.ENOENT) {
			return err
		}
		delete(h.pending, id)
	}
	entries, err := hc.list()
	if err != nil {
		return err
	}
	for i, e := range entries {
		if err := ds.takeLocked(srv, hc, e); err != nil {
			for _, rest := range entries[i+1:] {
				closeFDs(rest.fds)
			}
			return err
		}
	}
	ds.mu.Lock()
	var unheld []*devPort
	for _, d := range ds.byKey {
		if d.persist && !d.held && !d.gone && len(d.hfds) > 0 {
			unheld = append(unheld, d)
		}
	}
	ds.mu.Unlock()
	for _, d := range unheld {
		if err := ds.putLocked(srv, hc, d); err != nil {
			return err
		}
	}
	return nil
}

// takeLocked deals with the holder's entry e, owning its descriptors: the
// daemon's own entry is kept; one of a device port the daemon has (taken
// over) but holds under no entry is adopted; one the daemon lacks is
// brought back, or dropped if it cannot be. It fails only if the
// connection does. Caller must hold ds.holder.mu.
func (ds *devices) takeLocked(srv *server, hc *holderConn, e heldEntry) error {
	ds.mu.Lock()
	for _, d := range ds.byKey {
		if d.hid == e.id && !d.gone {
			d.held = true
			ds.mu.Unlock()
			closeFDs(e.fds)
			return nil
		}
	}
	ds.mu.Unlock()
	var m heldMeta
	err := json.Unmarshal(e.meta, &m)
	if err == nil && len(e.fds) != 2 {
		err = fmt.Errorf("%d descriptors, want 2: %w", len(e.fds), syscall.EINVAL)
	}
	var fid fileID
	if err == nil {
		fid, _, err = statNetFile(e.fds[1])
	}
	if err == nil {
		var adopted bool
		if adopted, err = ds.adoptLocked(srv, e, m, fid); adopted {
			return nil
		}
	}
	if err == nil {
		var port *engine.Port
		if port, err = ds.restoreLocked(srv, e, m, fid); err == nil {
			srv.log.Info("device port restored", "network", port.Network().Name(), "port", port.Num(),
				"device", port.Options().Description, "was", m.Port, "read", m.Read, "write", m.Write, "maker", m.Maker)
			return nil
		}
	}
	closeFDs(e.fds)
	srv.log.Warn("device port not restored; dropping it from the holder", "entry", e.id, "device", m.Name, "network", m.Net.Name, "err", err)
	if _, err := hc.call(holderDrop, e.id, nil, nil); err != nil && !errors.Is(err, syscall.ENOENT) {
		return err
	}
	return nil
}

// adoptLocked makes e the entry of the device port the daemon has on its
// network already (taken over from another daemon) if it is persistent and
// held under no entry; it reports whether it took e. An entry of a device
// port that is not persistent, or held under another entry, is an error
// (dropped). Caller must hold ds.holder.mu.
func (ds *devices) adoptLocked(srv *server, e heldEntry, m heldMeta, fid fileID) (bool, error) {
	n, err := srv.engine.Acquire(fid)
	if err != nil {
		return false, nil // no network: restore it
	}
	defer n.Release()
	ds.mu.Lock()
	d := ds.byKey[devKey{n, m.Name}]
	switch {
	case d == nil:
		ds.mu.Unlock()
		return false, nil
	case !d.persist || d.held || d.gone:
		ds.mu.Unlock()
		return false, fmt.Errorf("device port %s is here already, not persistent or held otherwise: %w", m.Name, syscall.EEXIST)
	}
	d.held = true
	if d.kind == 0 { // a device port taken over knows no more than its key
		d.kind, d.noRead, d.noWrite = m.Kind, !m.Read, !m.Write
	}
	ds.mu.Unlock()
	d.hid = e.id
	if len(d.hfds) == 0 {
		d.hfds = e.fds
	} else {
		closeFDs(e.fds)
	}
	d.meta = e.meta
	srv.log.Info("device port held already here; its entry adopted", "network", n.Name(), "port", d.port.Num(), "device", m.Name)
	return true, nil
}

// restoreLocked brings back the device port of e, on its network (made
// again from the held file if none lives there), at its port if free, and
// gives it e's descriptors. Caller must hold ds.holder.mu.
func (ds *devices) restoreLocked(srv *server, e heldEntry, m heldMeta, fid fileID) (*engine.Port, error) {
	n, err := srv.engine.Acquire(fid)
	if err != nil {
		cfg := engine.Config{Proto: policy.Tag(m.Net.Proto), MTU: m.Net.MTU, NumPorts: m.Net.NumPorts,
			PoolSize: m.Net.PoolSize, Flags: engine.Flags(m.Net.Flags)}
		n, err = srv.createNetwork(e.fds[1], fid, cfg, m.Net.Creator, m.Net.Name)
		if errors.Is(err, syscall.EEXIST) {
			n, err = srv.engine.Acquire(fid)
		}
		if err != nil {
			return nil, fmt.Errorf("network %s: %w", m.Net.Name, err)
		}
		srv.log.Info("network restored", "path", n.Name(), "proto", n.Config().Proto, "creator", m.Net.Creator)
	}
	defer n.Release() // the port holds its own reference
	d := &devPort{key: devKey{n, m.Name}, maker: m.Maker, kind: m.Kind, noRead: !m.Read, noWrite: !m.Write,
		persist: true, hid: e.id, meta: e.meta}
	want := m.Port
	if engine.CheckWant(want) != nil {
		want = -1
	}
	for {
		keep, err := dupFDs(e.fds[0])
		if err != nil {
			return nil, err
		}
		port, err := ds.attach(srv, d, keep[0], want)
		if errors.Is(err, syscall.EADDRNOTAVAIL) && want >= 0 {
			srv.log.Warn("device port restored at another port: its own is taken", "device", m.Name, "port", want)
			want = -1
			continue
		}
		if err != nil {
			return nil, err
		}
		d.hfds = e.fds
		ds.mu.Lock()
		d.held = true
		ds.mu.Unlock()
		setVLANs(srv, n, port.Num(), m.VLAN, m.Trunk)
		return port, nil
	}
}

// setVLANs gives port num of n the VLANs it had, making them first.
func setVLANs(srv *server, n *engine.Network, num int, vlan uint16, trunk []uint16) {
	v, t := vlansOf(n, num)
	if v == vlan && fmt.Sprint(t) == fmt.Sprint(trunk) {
		return
	}
	set := func(name, value string) {
		if err := srv.recharge(n, func() error { return n.SetPolicyOption(name, value) }, nil); err != nil {
			srv.log.Warn("device port restored without its VLANs", "network", n.Name(), "port", num, "option", name, "value", value, "err", err)
		}
	}
	var list []string
	for _, x := range append([]uint16{vlan}, trunk...) {
		if x != 0 {
			set("vlan.add", strconv.Itoa(int(x)))
		}
	}
	for _, x := range trunk {
		list = append(list, strconv.Itoa(int(x)))
	}
	set("port.vlan", fmt.Sprintf("%d %d", num, vlan))
	set("port.trunk", fmt.Sprintf("%d %s", num, strings.Join(list, ",")))
}

// putLocked puts d in the holder if it is persistent and not gone, within
// its maker's share; it fails only if the connection does (a refusal is
// logged). Caller must hold ds.holder.mu.
func (ds *devices) putLocked(srv *server, hc *holderConn, d *devPort) error {
	ds.mu.Lock()
	ok := ds.byKey[d.key] == d && d.persist && !d.gone && d.port != nil && len(d.hfds) > 0
	over := false
	if ok && d.maker != 0 && !d.held {
		held := 0
		for _, o := range ds.byKey {
			if o.maker == d.maker && o.held {
				held++
			}
		}
		over = held >= holderMaxPerUser
	}
	ds.mu.Unlock()
	if !ok {
		return nil
	}
	if over {
		srv.log.Warn("persistent device port not held: its maker has the most a user may have in the holder",
			"device", d.key.name, "maker", d.maker, "most", holderMaxPerUser)
		return nil
	}
	if d.hid == "" {
		d.hid = newHID(d)
	}
	meta := metaOf(d)
	if _, err := hc.call(holderPut, d.hid, meta, d.hfds); err != nil {
		var refused *holderRefusal
		if errors.As(err, &refused) {
			srv.log.Warn("holder refused a device port: it will not survive a crash of the daemon", "device", d.key.name, "err", err)
			return nil
		}
		return err
	}
	d.meta = meta
	ds.mu.Lock()
	d.held = true
	ds.mu.Unlock()
	return nil
}

// refreshLoop puts again, every holderRefresh until the daemon stops, each
// held port whose metadata changed (its VLANs, its network's size).
func (ds *devices) refreshLoop(srv *server) {
	t := time.NewTicker(holderRefresh)
	defer t.Stop()
	for {
		select {
		case <-srv.stop:
			return
		case <-t.C:
		}
		h := &ds.holder
		h.mu.Lock()
		if hc := h.conn; hc != nil {
			ds.mu.Lock()
			var held []*devPort
			for _, d := range ds.byKey {
				if d.held && !d.gone {
					held = append(held, d)
				}
			}
			ds.mu.Unlock()
			for _, d := range held {
				if m := metaOf(d); !bytes.Equal(m, d.meta) {
					if _, err := hc.call(holderPut, d.hid, m, d.hfds); err != nil {
						var refused *holderRefusal
						if !errors.As(err, &refused) {
							ds.brokenLocked(hc)
							break
						}
					}
					d.meta = m
				}
			}
		}
		h.mu.Unlock()
	}
}

// holderConn is a connection to the holder, read by its own goroutine.
type holderConn struct {
	c        *net.UnixConn
	pid      int
	in       chan holderPkt // packets read, but the replaced notice
	dead     chan struct{}  // closed once the reader has stopped
	quit     chan struct{}  // closed by close
	once     sync.Once
	replaced atomic.Bool // the holder said another daemon replaced this one
}

// holderPkt is one packet from the holder, with its descriptors.
type holderPkt struct {
	b   []byte
	fds []int
}

// holderRefusal is the holder's error answer to a request.
type holderRefusal struct {
	op    byte
	errno syscall.Errno
}

func (e *holderRefusal) Error() string {
	return fmt.Sprintf("holder refused op %d: %v", e.op, e.errno)
}
func (e *holderRefusal) Unwrap() error { return e.errno }

// dialHolder connects to the holder at path, if it is of the daemon's own
// user, and reads its hello; lost runs when the holder closes the
// connection.
func dialHolder(path string, lost func(*holderConn)) (*holderConn, error) {
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("holder: %w", err)
	}
	cr, err := peerCred(c)
	if err == nil && cr.UID != uint32(os.Geteuid()) {
		err = fmt.Errorf("holder: %s is served by uid %d, not this daemon's: %w", path, cr.UID, syscall.EPERM)
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	hc := &holderConn{c: c, in: make(chan holderPkt, 16), dead: make(chan struct{}), quit: make(chan struct{})}
	go hc.read(lost)
	p, err := hc.next(time.Now().Add(holderCallTimeout))
	if err == nil && (len(p.b) < 6 || p.b[0] != holderHello || p.b[1] != holderVersion) {
		closeFDs(p.fds)
		err = fmt.Errorf("holder: not a hello of version %d: %w", holderVersion, syscall.EPROTO)
	}
	if err != nil {
		hc.close()
		return nil, fmt.Errorf("holder %s: %w", path, err)
	}
	hc.pid = int(binary.LittleEndian.Uint32(p.b[2:]))
	return hc, nil
}

// read passes the holder's packets on until the connection ends, and
// calls lost if the holder ended it.
func (hc *holderConn) read(lost func(*holderConn)) {
	defer close(hc.dead)
	buf := make([]byte, holderMaxPacket+1)
	for {
		pkt, fds, err := wire.Recv(hc.c, buf)
		if err != nil {
			break
		}
		if pkt[0] == holderReplaced {
			hc.replaced.Store(true)
			closeFDs(fds)
			continue
		}
		select {
		case hc.in <- holderPkt{append([]byte(nil), pkt...), fds}:
		case <-hc.quit:
			closeFDs(fds)
			return
		}
	}
	select {
	case <-hc.quit:
	default:
		if lost != nil {
			go lost(hc)
		}
	}
}

// close ends the connection; packets not taken have their descriptors
// closed.
func (hc *holderConn) close() {
	hc.once.Do(func() {
		close(hc.quit)
		hc.c.Close()
		go func() {
			<-hc.dead
			for {
				select {
				case p := <-hc.in:
					closeFDs(p.fds)
				default:
					return
				}
			}
		}()
	})
}

// next returns the next packet from the holder, waiting until deadline.
func (hc *holderConn) next(deadline time.Time) (holderPkt, error) {
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case p := <-hc.in:
		return p, nil
	case <-hc.dead:
		select {
		case p := <-hc.in:
			return p, nil
		default:
		}
		if hc.replaced.Load() {
			return holderPkt{}, errSuperseded
		}
		return holderPkt{}, fmt.Errorf("holder gone: %w", syscall.EPIPE)
	case <-t.C:
		return holderPkt{}, fmt.Errorf("holder did not answer in time: %w", syscall.ETIMEDOUT)
	}
}

// call sends the request op (put or drop) for id and returns the holder's
// answer: a *holderRefusal if it refused, another error if the
// connection failed (then the caller lets it go).
func (hc *holderConn) call(op byte, id string, meta []byte, fds []int) ([]byte, error) {
	if len(id) == 0 || len(id) > holderMaxID {
		return nil, &holderRefusal{op, syscall.EINVAL}
	}
	req := append(append([]byte{op, byte(len(id))}, id...), meta...)
	deadline := time.Now().Add(holderCallTimeout)
	hc.c.SetWriteDeadline(deadline)
	if err := wire.Send(hc.c, req, fds...); err != nil {
		return nil, fmt.Errorf("holder: %w", err)
	}
	p, err := hc.next(deadline)
	if err != nil {
		return nil, err
	}
	closeFDs(p.fds)
	if len(p.b) < 5 || p.b[0] != op {
		return nil, fmt.Errorf("holder: answer %x to op %d: %w", p.b[:min(len(p.b), 8)], op, syscall.EPROTO)
	}
	if errno := binary.LittleEndian.Uint32(p.b[1:]); errno != 0 {
		return nil, &holderRefusal{op, syscall.Errno(errno)}
	}
	return p.b[5:], nil
}

// list returns the holder's entries with their descriptors, which the
// caller owns.
func (hc *holderConn) list() ([]heldEntry, error) {
	deadline := time.Now().Add(holderListTimeout)
	hc.c.SetWriteDeadline(deadline)
	if err := wire.Send(hc.c, []byte{holderList}); err != nil {
		return nil, fmt.Errorf("holder: %w", err)
	}
	var entries []heldEntry
	fail := func(err error) ([]heldEntry, error) {
		for _, e := range entries {
			closeFDs(e.fds)
		}
		return nil, err
	}
	for {
		p, err := hc.next(deadline)
		if err != nil {
			return fail(err)
		}
		switch {
		case len(p.b) >= 5 && p.b[0] == holderEnd:
			closeFDs(p.fds)
			if n := binary.LittleEndian.Uint32(p.b[1:]); int(n) != len(entries) {
				return fail(fmt.Errorf("holder: %d entries of %d: %w", len(entries), n, syscall.EPROTO))
			}
			return entries, nil
		case p.b[0] == holderEntry && len(entries) < holderMaxEntries:
			id, meta, err := splitID(p.b[1:])
			if err != nil {
				closeFDs(p.fds)
				return fail(err)
			}
			entries = append(entries, heldEntry{id: id, meta: append([]byte(nil), meta...), fds: p.fds})
		default:
			closeFDs(p.fds)
			return fail(fmt.Errorf("holder: unexpected packet %d in a list: %w", p.b[0], syscall.EPROTO))
		}
	}
}

// startHolder starts a holder for the daemon's socket (this program,
// re-executed, in a session of its own, logging to SOCKET.holder.log) and
// waits until it accepts.
func startHolder(socket string) error {
	path := holderPath(socket)
	logf, err := ctlsock.OpenBeside(path+".log", os.O_WRONLY|os.O_APPEND)
	if err != nil {
		return fmt.Errorf("start holder: %w", err)
	}
	defer logf.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("start holder: %w", err)
	}
	defer r.Close()
	// /proc/self/exe: this very binary, even if its file was replaced or
	// removed since, so that the holder speaks this daemon's protocol.
	cmd := exec.Command("/proc/self/exe")
	cmd.Args = []string{"ipn-holder"}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, spec.DaemonChildEnv+"=") && !strings.HasPrefix(kv, spec.HolderChildEnv+"=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, spec.HolderChildEnv+"=1", SocketEnv+"="+socket)
	cmd.Stderr = logf
	cmd.ExtraFiles = []*os.File{w}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	w.Close()
	if err != nil {
		return fmt.Errorf("start holder: %w", err)
	}
	go cmd.Wait() // reap it, should it exit before the daemon
	r.SetReadDeadline(time.Now().Add(holderStartTimeout))
	var b [1]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return fmt.Errorf("start holder: it did not come up (%v); see %s%s: %w", err, path+".log", lastLine(path+".log"), syscall.ETIMEDOUT)
	}
	return nil
}
