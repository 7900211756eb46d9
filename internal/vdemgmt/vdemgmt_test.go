package vdemgmt

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ipn-project/ipn/internal/throttle"
)

// fakeNet is a switch of 8 ports with VLAN 1, in memory.
type fakeNet struct {
	path string
	mu   sync.Mutex
	file *os.File // guarded by mu
	opts map[string]string
	sets []string
}

// File opens the network file once and keeps it for the test's life.
func (n *fakeNet) File() *os.File {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.file == nil {
		f, err := os.Open(n.path)
		if err != nil {
			panic(err)
		}
		n.file = f
	}
	return n.file
}
func (n *fakeNet) Ports() ([]Port, error) {
	return []Port{{Num: 0, Descr: "a", MsgsIn: 3, BytesIn: 300}, {Num: 2, Peer: "vde uid 0 gid 0"}}, nil
}
func (n *fakeNet) NumPorts() (int, error) { return 8, nil }
func (n *fakeNet) SetNumPorts(v int) error {
	if v < 3 {
		return fmt.Errorf("port 2 in use: %w", syscall.EADDRINUSE)
	}
	return nil
}
func (n *fakeNet) Option(name string) (string, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	v, ok := n.opts[name]
	if !ok {
		return "", fmt.Errorf("option %q: %w", name, syscall.ENOPROTOOPT)
	}
	return v, nil
}
func (n *fakeNet) SetOption(name, value string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.sets = append(n.sets, name+"="+value)
	return nil
}

func serve(t testing.TB) (*Console, *fakeNet, string) {
	t.Helper()
	return serveConfig(t, 0o700, nil)
}

// serveConfig is serve with a network file of mode netMode and the
// Config changed by mod (if not nil).
func serveConfig(t testing.TB, netMode os.FileMode, mod func(*Config)) (*Console, *fakeNet, string) {
	t.Helper()
	d := t.TempDir()
	netFile := filepath.Join(d, "net")
	if err := os.WriteFile(netFile, nil, netMode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(netFile, netMode); err != nil { // whatever the umask
		t.Fatal(err)
	}
	n := &fakeNet{path: netFile, opts: map[string]string{
		"hashsize": "16", "expire": "2m0s", "vlans": "[1]", "macs": `[{"mac":"02:00:00:00:00:01","vlan":1,"port":0,"age_seconds":3.5}]`,
		"ports": `[{"port":0,"vlan":1,"trunk":[]},{"port":1,"vlan":1,"trunk":[]},{"port":2,"vlan":1,"trunk":[]}]`,
	}}
	sock := filepath.Join(d, "mgmt")
	cfg := Config{Net: n, Path: sock, Group: -1, Log: discard()}
	if mod != nil {
		mod(&cfg)
	}
	c, err := Listen(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, n, sock
}

// term is a raw console session.
type term struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

func dial(t *testing.T, sock string) *term {
	t.Helper()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	tm := &term{t: t, conn: conn, r: bufio.NewReader(conn)}
	if b := tm.until(); b != "VDE switch V.2.3.2\nipn console for "+filepath.Join(filepath.Dir(sock), "net")+"\n" {
		t.Fatalf("banner %q", b)
	}
	return tm
}

// until reads up to the next prompt and returns what came before it.
func (tm *term) until() string {
	tm.t.Helper()
	tm.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var b []byte
	for !strings.HasSuffix(string(b), Prompt) {
		c, err := tm.r.ReadByte()
		if err != nil {
			tm.t.Fatalf("after %q: %v", b, err)
		}
		b = append(b, c)
	}
	return strings.TrimSuffix(string(b), Prompt)
}

func (tm *term) cmd(c string) string {
	tm.t.Helper()
	fmt.Fprintf(tm.conn, "%s\n", c)
	return tm.until()
}

func TestReplies(t *testing.T) {
	_, n, sock := serve(t)
	tm := dial(t, sock)
	for _, c := range []struct{ cmd, want string }{
		{"hash/showinfo", "0000 DATA END WITH '.'\nHash size 16\nGC interval 1 secs\nGC expire 120 secs\nMin persistence 0 secs\n.\n1000 Success\n"},
		{"hash/print", "0000 DATA END WITH '.'\nHash: "},
		{"port/print 0", "0000 DATA END WITH '.'\nPort 0000 untagged_vlan=0001 ACTIVE - Unnamed Allocatable\n Current User: NONE Access Control: (User: NONE - Group: NONE)\n IN:  pkts          3          bytes                  300\n OUT: pkts          0          bytes                    0\n  -- endpoint ID 0000 module ipn         : a\n.\n1000 Success\n"},
		{"port/print 1", "0000 DATA END WITH '.'\n.\n1006 No such device or address\n"},
		{"port/print 8", "0000 DATA END WITH '.'\n.\n1022 Invalid argument\n"},
		{"port/resetcounter 0", "1000 Success\n"},
		{"port/print 0", "0000 DATA END WITH '.'\nPort 0000 untagged_vlan=0001 ACTIVE - Unnamed Allocatable\n Current User: NONE Access Control: (User: NONE - Group: NONE)\n IN:  pkts          0          bytes                    0\n"},
		{"port/setnumports 1", "1098 Address already in use\n"},
		{"port/setnumports 7", "1000 Success\n"},
		{"vlan/create 1", "1017 File exists\n"},
		{"vlan/create 0x10", "1022 Invalid argument\n"}, // atoi, as vde_switch
		{"vlan/create 16", "1000 Success\n"},
		{"vlan/remove 1", "1098 Address already in use\n"},
		{"vlan/addport 1 0", "1000 Success\n"},
		{"vlan/addport 0x1 abc", "1022 Invalid argument\n"},
		{"port/setvlan 2 4095", "1000 Success\n"},
		{"hash/setexpire 0", "1022 Invalid argument\n"},
		{"hash/setexpire 30", "1000 Success\n"},
		{"hash/find 02:00:00:00:00:01", "0000 DATA END WITH '.'\nHash: "},
		{"hash/find 02.00.00.00.00.01 1", "0000 DATA END WITH '.'\nHash: "},
		{"hash/find 02:00:00:00:00:01 2", "0000 DATA END WITH '.'\n.\n1019 No such device\n"},
		{"hash/find 02:00", "0000 DATA END WITH '.'\n.\n1022 Invalid argument\n"},
		{"port/showinfo", "0000 DATA END WITH '.'\nNumports=7\nHUB=false\ncounters=true\n.\n1000 Success\n"},
		{"vlan/allprint 0", "0000 DATA END WITH '.'\n.\n1022 Invalid argument\n"},
		{"vlan/allprint", "0000 DATA END WITH '.'\nVLAN 0001\n -- Port 0000 tagged=0 active=1 status=Forwarding\n -- Port 0002 tagged=0 active=1 status=Forwarding\n.\n1000 Success\n"},
		{"ds/showinfo", "0000 DATA END WITH '.'\n.\n1006 No such device or address\n"},
		{"shutdown", "1001 Operation not permitted\n"},
		{"debug/list", "1038 Function not implemented\n"},
		{"\x00\xff\x1b[2J", "1038 Function not implemented\n"},
		{strings.Repeat("port/print ", 20), "1022 Invalid argument\n"},
		{"", ""},
		{"  # note", ""},
	} {
		if got := tm.cmd(c.cmd); !strings.HasPrefix(got, c.want) {
			t.Errorf("%.30q: got %q, want it to begin %q", c.cmd, got, c.want)
		}
	}
	n.mu.Lock()
	sets := strings.Join(n.sets, ";")
	n.mu.Unlock()
	// vlan/addport 1 0 is port 0's untagged VLAN already: nothing to set.
	if want := "vlan.add=16;port.vlan=2 0;expire=30s"; sets != want {
		t.Errorf("the console set %q, want %q", sets, want)
	}
	fmt.Fprintf(tm.conn, "logout\n")
	b, err := io.ReadAll(tm.r)
	if err != nil || string(b) != EndOfSession {
		t.Errorf("logout: %q, %v", b, err)
	}
}

// A user may hold at most MaxUserConns sessions (the test's user is every
// session's here); the next is closed at once, and once one ends another
// is served.
func TestBoundedSessions(t *testing.T) {
	_, _, sock := serve(t)
	var terms []*term
	for range MaxUserConns {
		terms = append(terms, dial(t, sock))
	}
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if b, err := io.ReadAll(conn); len(b) != 0 || err != nil {
		t.Fatalf("session %d: got %q, %v; want it closed", MaxUserConns+1, b, err)
	}
	terms[0].conn.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		conn, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		b := make([]byte, 5)
		_, err = io.ReadFull(conn, b)
		conn.Close()
		if err == nil && string(b) == "VDE s" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no session served after one ended")
		}
	}
	if got := terms[1].cmd("vlan/print"); !strings.HasPrefix(got, "0000 DATA END WITH '.'\nVLAN 0001\n") {
		t.Errorf("a session among the full set: %q", got)
	}
}

// Close ends the sessions and removes the socket; a new console refuses a
// live socket and a name that is not a socket, and follows no link.
func TestSocketLife(t *testing.T) {
	c, n, sock := serve(t)
	tm := dial(t, sock)
	st, err := os.Lstat(sock)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, %v; want 0600", st.Mode(), err)
	}
	if _, err := Listen(Config{Net: n, Path: sock, Group: -1, Log: discard()}); !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("a second console on a live socket: %v", err)
	}
	c.Close()
	if _, err := tm.r.ReadByte(); err == nil {
		t.Error("a session outlived Close")
	}
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("the socket outlived Close: %v", err)
	}
	file := filepath.Join(filepath.Dir(sock), "file")
	os.WriteFile(file, []byte("keep"), 0o600)
	if _, err := Listen(Config{Net: n, Path: file, Group: -1, Log: discard()}); !errors.Is(err, syscall.EEXIST) {
		t.Errorf("a console on a plain file: %v", err)
	}
	link := filepath.Join(filepath.Dir(sock), "link")
	os.Symlink(file, link)
	if _, err := Listen(Config{Net: n, Path: link, Group: -1, Log: discard()}); !errors.Is(err, syscall.EEXIST) {
		t.Errorf("a console on a symlink: %v", err)
	}
	if b, _ := os.ReadFile(file); string(b) != "keep" {
		t.Errorf("the file now holds %q", b)
	}
	c2, err := Listen(Config{Net: n, Path: sock, Mode: 0o660, Group: -1, Log: discard()})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if st, err := os.Lstat(sock); err != nil || st.Mode().Perm() != 0o660 {
		t.Errorf("socket mode %v, %v; want 0660", st.Mode(), err)
	}
}

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// Any line gets a reply in vde_switch's framing (or none, for a blank line
// or a comment), never a crash: the data block, then one code line.
func FuzzCommand(f *testing.F) {
	for _, c := range commands {
		f.Add(c.path + " 1 2")
	}
	f.Add("vlan/addport 0x7fffffff -9")
	f.Add("hash/find ff:ff:ff:ff:ff:ff:ff 99999999999")
	c, _, _ := serve(f)
	f.Fuzz(func(t *testing.T, line string) {
		if strings.ContainsAny(line, "\n") || len(line) > MaxLine {
			return
		}
		s := &session{c: c, who: c.self}
		out, end := s.run(line)
		if end {
			return
		}
		trimmed := strings.TrimLeft(line, " \t")
		if trimmed == "" || trimmed[0] == '#' {
			if out != "" {
				t.Fatalf("%q: a reply %q", line, out)
			}
			return
		}
		lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
		if lines[0] == "0000 DATA END WITH '.'" {
			if len(lines) < 3 || lines[len(lines)-2] != "." {
				t.Fatalf("%q: data block %q", line, out)
			}
			lines = lines[len(lines)-1:]
		}
		if len(lines) != 1 || len(lines[0]) < 6 || lines[0][0] != '1' || lines[0][4] != ' ' {
			t.Fatalf("%q: reply %q", line, out)
		}
	})
}

// A session that sends no command for Config.Idle is closed: idle
// sessions cannot hold the console's places for ever.
func TestIdleSessionClosed(t *testing.T) {
	const idle = 200 * time.Millisecond
	_, _, sock := serveConfig(t, 0o700, func(c *Config) { c.Idle = idle })
	tm := dial(t, sock)
	if got := tm.cmd("port/showinfo"); !strings.HasSuffix(got, "1000 Success\n") {
		t.Fatalf("port/showinfo: %q", got)
	}
	start := time.Now()
	fmt.Fprintf(tm.conn, "port/sho") // half a command is not one
	tm.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(tm.r)
	if err != nil || len(b) != 0 {
		t.Fatalf("an idle session: got %q, %v; want it closed", b, err)
	}
	if took := time.Since(start); took < idle {
		t.Errorf("the idle session was closed after %v, before its %v", took, idle)
	}
	if _, err := Listen(Config{Net: &fakeNet{path: sock}, Path: sock + "2", Idle: -time.Second, Log: discard()}); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("a negative idle timeout: %v, want EINVAL", err)
	}
}

// countHandler counts the records of each message.
type countHandler struct {
	mu sync.Mutex
	n  map[string]int // guarded by mu
}

func (h *countHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.n[r.Message]++
	return nil
}
func (h *countHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countHandler) WithGroup(string) slog.Handler      { return h }

// A user who may connect but not change cannot make the console log
// without bound: its refusals are throttled.
func TestRefusalsLogThrottled(t *testing.T) {
	h := &countHandler{n: map[string]int{}}
	_, _, sock := serveConfig(t, 0o600, func(c *Config) { c.Log = slog.New(h) }) // no x for anyone
	tm := dial(t, sock)
	const tries = 3 * throttle.DefaultBurst
	for range tries {
		if got := tm.cmd("vlan/create 7"); got != "1013 Permission denied\n" {
			t.Fatalf("vlan/create without x: %q", got)
		}
	}
	h.mu.Lock()
	n := h.n["mgmt: refused a change"]
	h.mu.Unlock()
	if n == 0 || n > throttle.DefaultBurst {
		t.Errorf("%d refused changes logged %d records, want 1 to %d", tries, n, throttle.DefaultBurst)
	}
}
