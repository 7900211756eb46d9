package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os/user"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"unicode"

	"github.com/spf13/cobra"

	"github.com/ipn-project/ipn"
)

func lsCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ls [PATH]",
		Short: "List networks, their ports and counters",
		Long: `List the networks you can see (or just the one at PATH): those whose file
you can reach by its path. For each: protocol, owner, mode, ports in use
out of the total, readers, writers, and for each port its description,
who is behind it (shown to the network's managers, who have x, and root
only), and counters of messages and bytes in (sent by the node) and out
(delivered to it), drops and errors. A device port (tap, grab) that
outlives its session is marked PERSIST; its PEER is the process that holds
it now (ipn plug, or ipn device join), or "device uid U, no process". A
monitor port (ipn dump with x: it gets a copy of everything the members
send) is marked MONITOR, a link to another network (cable, VDE client,
device: loop protection probes it) LINK.

ls starts no daemon. With none running there are no networks: ls prints
"no networks" and why (--json: []) and exits 0; ls PATH fails, since there
is no network at PATH.

With --json: an array of networks, each with the fields path, proto, tag,
uid, gid, mode (the permission bits as an octal string, "0766"), dev, ino,
mtu, ports, pool, flags, readers, writers and port_list (each port with
port, descr, peer, read, write, msgs_in, bytes_in, msgs_out, bytes_out,
drops, errors, policy and persist; descr, peer, policy and persist are
left out when empty).`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := ""
			if len(args) == 1 {
				path = args[0]
			}
			out := cmd.OutOrStdout()
			nets, err := ipn.List(path)
			if errors.Is(err, ipn.ErrNoDaemon) && path == "" {
				if asJSON {
					_, err := fmt.Fprintln(out, "[]")
					return err
				}
				_, err := fmt.Fprintf(out, "no networks: %v\n", noDaemon(err))
				return err
			}
			if err != nil {
				return readErr(err, path)
			}
			sort.Slice(nets, func(i, j int) bool { return nets[i].Path < nets[j].Path })
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				list := make([]netJSON, len(nets))
				for i, n := range nets {
					list[i] = netJSON{n, octal(n.Mode)}
				}
				return enc.Encode(list)
			}
			printNets(out, nets)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON for scripts")
	return cmd
}

// netJSON is a network as ls --json prints it: the daemon's fields, with
// the mode as an octal string for people and scripts alike.
type netJSON struct {
	ipn.NetInfo
	Mode string `json:"mode"`
}

// octal writes permission bits as ls -l's numeric form does: "0766".
func octal(mode uint32) string { return fmt.Sprintf("%04o", mode) }

// noDaemon returns the message of ipn.ErrNoDaemon err without the
// library's prefix ("socket ipn: ..."): "no ipn daemon runs (at SOCKET)".
func noDaemon(err error) string {
	msg := err.Error()
	if i := strings.Index(msg, ipn.ErrNoDaemon.Error()); i >= 0 {
		msg = msg[i:]
	}
	return msg
}

// readErr explains the error of a command that reads what the daemon
// serves about the network at path (or every network, for "").
func readErr(err error, path string) error {
	if !errors.Is(err, ipn.ErrNoDaemon) {
		return err
	}
	if path == "" {
		return fmt.Errorf("%s: nothing to list", noDaemon(err))
	}
	return fmt.Errorf("%s: no network at %s", noDaemon(err), path)
}

func printNets(out io.Writer, nets []ipn.NetInfo) {
	if len(nets) == 0 {
		fmt.Fprintln(out, "no networks")
		return
	}
	for i, n := range nets {
		if i > 0 {
			fmt.Fprintln(out)
		}
		w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "NETWORK\tPROTO\tOWNER\tMODE\tPORTS\tREADERS\tWRITERS\tMTU\tPOOL\tFLAGS")
		flags := strings.Join(n.Flags, ",")
		if flags == "" {
			flags = "-"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\ts%s\t%d/%d\t%d\t%d\t%d\t%d\t%s\n",
			shown(n.Path), n.Proto, owner(n.UID, n.GID), fs.FileMode(n.Mode).Perm().String()[1:],
			len(n.PortsInfo), n.NumPorts, n.Readers, n.Writers, n.MTU, n.PoolSize, flags)
		w.Flush()
		if len(n.PortsInfo) == 0 {
			continue
		}
		w = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "  PORT\tSIDES\tDESCR\tPEER\tMSGS-IN\tBYTES-IN\tMSGS-OUT\tBYTES-OUT\tDROPS\tERRORS\tPOLICY")
		for _, p := range n.PortsInfo {
			descr, pol, peer := p.Descr, p.Policy, p.Peer
			if descr == "" {
				descr = "-"
			}
			if peer == "" {
				peer = "-"
			}
			if p.Persist {
				descr += " PERSIST"
			}
			if p.Monitor {
				descr += " MONITOR"
			}
			if p.Link {
				descr += " LINK"
			}
			if pol == "" {
				pol = "-"
			}
			fmt.Fprintf(w, "  %d\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%s\n",
				p.Port, sides(p.Read, p.Write), shown(descr), peer,
				p.MsgsIn, p.BytesIn, p.MsgsOut, p.BytesOut, p.Drops, p.Errors, pol)
		}
		w.Flush()
	}
}

// shown returns s as it may be printed: quoted, with escapes, if it holds
// anything but printable characters and spaces, so that a name another
// user chose cannot drive the terminal or forge a line.
func shown(s string) string {
	for _, r := range s {
		if !unicode.IsPrint(r) || r == '\t' {
			return strconv.Quote(s)
		}
	}
	return s
}

func sides(r, w bool) string {
	s := []byte("--")
	if r {
		s[0] = 'r'
	}
	if w {
		s[1] = 'w'
	}
	return string(s)
}

func owner(uid, gid uint32) string {
	u := strconv.Itoa(int(uid))
	if x, err := user.LookupId(u); err == nil {
		u = x.Username
	}
	g := strconv.Itoa(int(gid))
	if x, err := user.LookupGroupId(g); err == nil {
		g = x.Name
	}
	return u + ":" + g
}
