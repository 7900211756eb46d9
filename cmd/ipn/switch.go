package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/ipn-project/ipn"
	"github.com/ipn-project/ipn/policy/vdeswitch"
)

func init() {
	commands = append(commands, macCmd, vlanCmd, portCmd, policyCmd)
}

// getJSON reads the policy table name of the network at path into v.
func getJSON(path, name string, v any) (string, error) {
	s, err := ipn.PolicyOption(path, name)
	if err != nil {
		return "", readErr(err, path)
	}
	if err := json.Unmarshal([]byte(s), v); err != nil {
		return "", fmt.Errorf("%s of %s: %w", name, path, err)
	}
	return s, nil
}

func macCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "mac PATH",
		Short: "Print a switch's MAC table: MAC, VLAN, port, age",
		Long: `Print the MAC address table of the switch network at PATH: each learnt
MAC with its VLAN, the port it is behind and the seconds since it was last
seen. Needs r or x on the network.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var macs []vdeswitch.MACEntry
			raw, err := getJSON(args[0], "macs", &macs)
			if err != nil {
				return lacks(err, args[0], "mac", "MAC table", "switch or l3switch")
			}
			out := cmd.OutOrStdout()
			if asJSON {
				fmt.Fprintln(out, raw)
				return nil
			}
			w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "MAC\tVLAN\tPORT\tAGE")
			for _, m := range macs {
				fmt.Fprintf(w, "%s\t%d\t%d\t%.1fs\n", m.MAC, m.VLAN, m.Port, m.Age)
			}
			return w.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON for scripts")
	return cmd
}

func vlanCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "vlan PATH [add|del VLAN...]",
		Short: "List, add or remove a switch's VLANs",
		Long: `Without an action, list the VLANs of the switch network at PATH with their
untagged (access) and tagged (trunk) ports. "add" makes VLANs (1..4095),
"del" removes them from the switch and every port. Changes need x on the
network; listing needs r or x. Assign ports with ipn port.

Example:
  ipn vlan /tmp/sw add 10 20
  ipn port /tmp/sw 3 --vlan 10          # port 3: access port of VLAN 10
  ipn port /tmp/sw 4 --vlan 0 --trunk 10,20`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := args[0]
			if len(args) > 1 {
				action := args[1]
				if (action != "add" && action != "del") || len(args) < 3 {
					return errors.New("usage: ipn vlan PATH [add|del VLAN...]")
				}
				if err := parseVLANs(args[2:]); err != nil {
					return err
				}
				for _, v := range args[2:] {
					if err := ipn.SetPolicyOption(path, "vlan."+action, v); err != nil {
						return lacks(err, path, "vlan", "VLANs", "switch")
					}
				}
				return nil
			}
			var vlans []uint16
			if _, err := getJSON(path, "vlans", &vlans); err != nil {
				return lacks(err, path, "vlan", "VLANs", "switch")
			}
			var ports []vdeswitch.PortEntry
			if _, err := getJSON(path, "ports", &ports); err != nil {
				return err
			}
			type row struct {
				VLAN     uint16 `json:"vlan"`
				Untagged []int  `json:"untagged"`
				Tagged   []int  `json:"tagged"`
			}
			rows := make([]row, 0, len(vlans))
			for _, v := range vlans {
				r := row{VLAN: v, Untagged: []int{}, Tagged: []int{}}
				for _, p := range ports {
					if p.Untagged == v {
						r.Untagged = append(r.Untagged, p.Port)
					}
					for _, t := range p.Tagged {
						if t == v {
							r.Tagged = append(r.Tagged, p.Port)
						}
					}
				}
				rows = append(rows, r)
			}
			out := cmd.OutOrStdout()
			if asJSON {
				return json.NewEncoder(out).Encode(rows)
			}
			w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "VLAN\tUNTAGGED PORTS\tTAGGED PORTS")
			for _, r := range rows {
				fmt.Fprintf(w, "%d\t%s\t%s\n", r.VLAN, intList(r.Untagged), intList(r.Tagged))
			}
			return w.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON for scripts")
	negativeArgs(cmd, fmt.Sprintf("a VLAN is 1..%d", vdeswitch.MaxVLAN))
	return cmd
}

// intList writes a sorted list of numbers with runs as ranges: 0,3-63.
func intList[T int | uint16](l []T) string {
	if len(l) == 0 {
		return "-"
	}
	var parts []string
	for i := 0; i < len(l); {
		j := i
		for j+1 < len(l) && l[j+1] == l[j]+1 {
			j++
		}
		switch {
		case j == i:
			parts = append(parts, strconv.Itoa(int(l[i])))
		case j == i+1:
			parts = append(parts, strconv.Itoa(int(l[i])), strconv.Itoa(int(l[j])))
		default:
			parts = append(parts, fmt.Sprintf("%d-%d", l[i], l[j]))
		}
		i = j + 1
	}
	return strings.Join(parts, ",")
}

func portCmd() *cobra.Command {
	var (
		asJSON bool
		all    bool
		vlan   int
		trunk  string
	)
	cmd := &cobra.Command{
		Use:   "port PATH [PORT --vlan V --trunk V,V...]",
		Short: "Show or set a switch's port VLANs",
		Long: `Without PORT, list the ports in use (--all: every port) of the switch
network at PATH: untagged VLAN, tagged (trunk) VLANs, and whether loop
protection blocked the port; listing needs r or x, and starts no daemon. With
PORT, set its untagged VLAN (--vlan, 0 for none) and/or its tagged VLANs
(--trunk, a comma-separated list; "" for none). Setting needs x.`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := args[0]
			if len(args) == 2 {
				if p, err := strconv.Atoi(args[1]); err != nil || p < 0 {
					return fmt.Errorf("port %q: want a port number, 0 or more (ipn port %s lists them)", args[1], path)
				}
				set := false
				if cmd.Flags().Changed("vlan") {
					if err := ipn.SetPolicyOption(path, "port.vlan", fmt.Sprintf("%s %d", args[1], vlan)); err != nil {
						return lacks(err, path, "port", "port VLANs", "switch")
					}
					set = true
				}
				if cmd.Flags().Changed("trunk") {
					if err := ipn.SetPolicyOption(path, "port.trunk", args[1]+" "+trunk); err != nil {
						return lacks(err, path, "port", "port VLANs", "switch")
					}
					set = true
				}
				if !set {
					return fmt.Errorf("nothing to set: give --vlan and/or --trunk")
				}
				return nil
			}
			var ports []vdeswitch.PortEntry
			if _, err := getJSON(path, "ports", &ports); err != nil {
				return lacks(err, path, "port", "port VLANs", "switch")
			}
			if !all {
				var err error
				if ports, err = usedPorts(path, ports); err != nil {
					return err
				}
			}
			return printPorts(cmd.OutOrStdout(), ports, asJSON)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON for scripts")
	cmd.Flags().BoolVar(&all, "all", false, "list every port, in use or not")
	cmd.Flags().IntVar(&vlan, "vlan", 1, "untagged VLAN of the port (0: none)")
	cmd.Flags().StringVar(&trunk, "trunk", "", "tagged VLANs of the port, comma-separated")
	negativeArgs(cmd, fmt.Sprintf("a port is 0 or more, a VLAN 1..%d (--vlan 0: none)", vdeswitch.MaxVLAN))
	return cmd
}

// usedPorts returns the entries of ports that a member of the network at
// path holds.
func usedPorts(path string, ports []vdeswitch.PortEntry) ([]vdeswitch.PortEntry, error) {
	nets, err := ipn.List(path)
	if err != nil {
		return nil, readErr(err, path)
	}
	used := map[int]bool{}
	for _, n := range nets {
		for _, p := range n.PortsInfo {
			used[p.Port] = true
		}
	}
	var in []vdeswitch.PortEntry
	for _, p := range ports {
		if used[p.Port] {
			in = append(in, p)
		}
	}
	return in, nil
}

func printPorts(out io.Writer, ports []vdeswitch.PortEntry, asJSON bool) error {
	if asJSON {
		if ports == nil {
			ports = []vdeswitch.PortEntry{}
		}
		return json.NewEncoder(out).Encode(ports)
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "PORT\tVLAN\tTRUNK\tSTATE")
	for _, p := range ports {
		state := "forwarding"
		if p.Blocked {
			state = "blocked (loop)"
		}
		v := "-"
		if p.Untagged != 0 {
			v = strconv.Itoa(int(p.Untagged))
		}
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\n", p.Port, v, intList(p.Tagged), state)
	}
	return w.Flush()
}

func policyCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "policy PATH [NAME [VALUE]]",
		Short: "Read or change a setting of a network's policy",
		Long: `Without NAME, print the settings of the policy of the network at PATH (not
its tables); with NAME, that setting or table; with VALUE, change the
setting. Reading needs r or x and starts no daemon; changing needs x.
--json prints a table as it is, a setting as a JSON value (a number, or a
string such as "2m0s"), and the settings as one object.

The options of the built-in policies:
` + policyHelp(),
		Args: cobra.RangeArgs(1, 3),
		RunE: func(cmd *cobra.Command, args []string) error {
			path, out := args[0], cmd.OutOrStdout()
			switch len(args) {
			case 3:
				return readErr(ipn.SetPolicyOption(path, args[1], args[2]), path)
			case 2:
				v, err := ipn.PolicyOption(path, args[1])
				if err != nil {
					return readErr(err, path)
				}
				if asJSON {
					_, err = fmt.Fprintf(out, "%s\n", policyValue(v))
				} else {
					_, err = fmt.Fprintln(out, v)
				}
				return err
			}
			return printSettings(out, path, asJSON)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON for scripts")
	negativeArgs(cmd, "no setting of the built-in policies takes one (ipn policy --help lists their ranges)")
	return cmd
}

// printSettings prints the settings of the policy of the network at path.
func printSettings(out io.Writer, path string, asJSON bool) error {
	nets, err := ipn.List(path)
	if err != nil {
		return readErr(err, path)
	}
	if len(nets) != 1 {
		return fmt.Errorf("%s: no network there", path)
	}
	proto := nets[0].Proto
	opts, ok := optionsOf(proto)
	if !ok {
		return fmt.Errorf("%s: ipn knows no settings of policy %s: name one (ipn policy %s NAME)", path, proto, path)
	}
	values := map[string]json.RawMessage{}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	for _, o := range opts {
		if !o.get || o.table {
			continue
		}
		v, err := ipn.PolicyOption(path, o.name)
		if err != nil {
			return readErr(err, path)
		}
		values[o.name] = policyValue(v)
		fmt.Fprintf(w, "%s\t%s\n", o.name, v)
	}
	if asJSON {
		return json.NewEncoder(out).Encode(values)
	}
	if len(values) == 0 {
		_, err := fmt.Fprintf(out, "%s: policy %s has no settings\n", path, proto)
		return err
	}
	return w.Flush()
}
