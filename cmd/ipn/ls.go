package main

import (
	"encoding/json"
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
outlives its session is marked PERSIST.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := ""
			if len(args) == 1 {
				path = args[0]
			}
			nets, err := ipn.List(path)
			if err != nil {
				return err
			}
			sort.Slice(nets, func(i, j int) bool { return nets[i].Path < nets[j].Path })
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if nets == nil {
					nets = []ipn.NetInfo{}
				}
				return enc.Encode(nets)
			}
			printNets(cmd.OutOrStdout(), nets)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON for scripts")
	return cmd
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
