package ipn_test

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ipn-project/ipn"
	"github.com/ipn-project/ipn/internal/shmring"
	"github.com/ipn-project/ipn/port/shm"
)

// portsOf lists the ports of the network at path on the daemon at sock,
// as root, through ipn ls.
func portsOf(t *testing.T, sock, path string) []ipn.PortInfo {
	t.Helper()
	cmd := exec.Command(ipnCommand(t), "ls", "--json", path)
	cmd.Env = append(os.Environ(), "IPN_SOCKET="+sock)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("ipn ls --json %s: %v", path, err)
	}
	var nets []struct {
		Ports []ipn.PortInfo `json:"port_list"`
	}
	if err := json.Unmarshal(out, &nets); err != nil || len(nets) != 1 {
		t.Fatalf("ipn ls --json %s: %v: %s", path, err, out)
	}
	return nets[0].Ports
}

// isSock reports whether path is a socket file: a network bound there.
func isSock(path string) bool {
	st, err := os.Lstat(path)
	return err == nil && st.Mode()&os.ModeSocket != 0
}

// mallory, a real user of a root daemon run with --max-memory 256, cannot
// make it hold more memory for messages of 4 MiB than that: a network of
// MTU 4 MiB with many ports, or a second large one, is refused with
// EDQUOT naming --max-memory; and joining alice's network of MTU 4 MiB as a
// member that never reads, while alice sends 4 MiB messages as fast as
// she can, does not make the daemon grow past the network's bound.
func TestAttackBigMessageMemory(t *testing.T) {
	a, m := realUsers(t)
	sock, d := ownDaemon(t, "--max-memory", "256")
	env := []string{"IPN_SOCKET=" + sock}
	ipnc := ipnCommand(t)
	mdir := userDir(t, m, 0o755)
	mtu := fmt.Sprint(packetMTU)

	// Her networks' bound: 64 ports of 4 MiB messages is over it (about
	// 550 MiB), one of 16 (about 150) is not, and a second such is.
	refused := func(what string, args ...string) {
		t.Helper()
		out, err := runAs(t, &m, env, ipnc, append([]string{"cat", "--bind", "--send-only", "--mtu", mtu}, args...)...)
		if err == nil || !strings.Contains(out, "--max-memory") || !strings.Contains(strings.ToLower(out), "quota") {
			t.Fatalf("mallory, %s: %v: %q, want EDQUOT naming --max-memory", what, err, out)
		}
	}
	refused("64 ports", "--ports", "64", filepath.Join(mdir, "wide"))
	hold := start(t, m.cred(), env, ipnc, "cat", "--bind", "--send-only", "--mtu", mtu, "--ports", "16", filepath.Join(mdir, "n16"))
	waitFor(t, waitProcs, "mallory's network of 16 ports", func() bool { return isSock(filepath.Join(mdir, "n16")) })
	refused("a second network of 16 ports", "--ports", "16", filepath.Join(mdir, "n16b"))
	hold.stdin.Close()
	if err := hold.wait(waitProcs); err != nil {
		t.Fatalf("mallory's network of 16 ports: %v: %s", err, hold.stderr())
	}

	// alice's network: 4 ports of MTU 4 MiB, lossy, which mallory may
	// join (mode 0766 less alice's umask: r and w for all).
	adir := userDir(t, a, 0o755)
	path := filepath.Join(adir, "video")
	binder := start(t, a.cred(), env, "sh", "-c", `umask 0; exec "$0" cat --bind --send-only --mode 0766 --mtu "$1" --ports 4 "$2"`, ipnc, mtu, path)
	waitFor(t, waitProcs, "alice's network", func() bool { return isSock(path) })
	// mallory joins and never reads: her cat writes what it gets to a
	// pipe nobody reads, and stops reading once that is full.
	stuck := start(t, m.cred(), env, "sh", "-c", `"$0" cat --raw --recv-only "$1" | sleep 3600`, ipnc, path)
	waitFor(t, waitProcs, "mallory's member", func() bool { return len(portsOf(t, sock, path)) == 2 })
	before := vmRSS(t, d.cmd.Process.Pid)

	// alice sends one 4 MiB frame after another, until stopped.
	frame := rawFrame(4, bigPayload(rand.New(rand.NewPCG(9, 9)), packetMTU, 9))
	frameFile := filepath.Join(adir, "frame")
	if err := os.WriteFile(frameFile, frame, 0o644); err != nil {
		t.Fatal(err)
	}
	sender := start(t, a.cred(), env, "sh", "-c", `while cat "$1"; do :; done | exec "$0" cat --raw --send-only "$2"`, ipnc, frameFile, path)

	// Until the daemon has taken in (or refused) 64 of her messages,
	// 256 MiB, the daemon's RSS stays within the network's bound.
	const msgs = 64
	// engine.BigBudget, and per port its queue's pooled buffers and data
	// socket; on the fast path, the hub's shared log (charged to alice)
	// and the two members' rings instead of their sockets.
	bound := int64(2*packetMTU) + 4*(2*int64(packetMTU)+8<<16) +
		int64(shmring.LogBytes(packetMTU)) + 2*int64(shm.LayoutFor(packetMTU).Bytes())
	var peak int64
	var sent, delivered, drops uint64
	deadline := time.Now().Add(120 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for sent < msgs {
		select {
		case <-sender.done:
			t.Fatalf("alice's sender exited: %v: %s", sender.err, sender.stderr())
		case <-stuck.done:
			t.Fatalf("mallory's member exited: %v: %s", stuck.err, stuck.stderr())
		case <-tick.C:
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 120s the daemon had taken %d of alice's messages, want %d", sent, msgs)
		}
		peak = max(peak, vmRSS(t, d.cmd.Process.Pid))
		sent, delivered, drops = 0, 0, 0
		for _, p := range portsOf(t, sock, path) {
			if p.Write {
				sent += p.MsgsIn + p.Drops
			} else {
				delivered, drops = p.MsgsOut, p.Drops
			}
		}
	}
	peak = max(peak, vmRSS(t, d.cmd.Process.Pid))
	t.Logf("daemon RSS %d MiB before, peak %d MiB (bound %d MiB); alice's port took or dropped %d; mallory's port got %d, dropped %d",
		before>>20, peak>>20, bound>>20, sent, delivered, drops)
	if peak-before > bound {
		t.Fatalf("the daemon grew by %d MiB while mallory did not read, over the network's bound, %d MiB", (peak-before)>>20, bound>>20)
	}
	legit(t, a, sock)
	binder.stdin.Close()
}
