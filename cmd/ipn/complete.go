package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ipn-project/ipn"
)

// Shell completion (ipn completion bash|zsh|fish): cobra completes command
// and flag names; these complete the arguments and flag values that are
// ipn's own words: policies, cable schemes, policy settings, actions.

// protoWhat describes the built-in policies, for completions.
var protoWhat = map[string]string{
	"any":      "the network's own policy",
	"hub":      "every message to every other member",
	"switch":   "an Ethernet switch: MAC learning, VLANs",
	"l3switch": "a layer-3 switch: IPv4 and IPv6 by address, ARP answered",
}

// withWhat returns each word with its description, as cobra takes them
// ("word\tdescription"); words without one stay bare.
func withWhat(words []string, what func(string) string) []string {
	out := make([]string, 0, len(words))
	for _, w := range words {
		if d := what(w); d != "" {
			w += "\t" + d
		}
		out = append(out, w)
	}
	return out
}

// completeProto completes a --proto value: any and every policy this
// program knows.
func completeProto(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	names := append([]string{"any"}, ipn.ProtocolNames()...)
	return withWhat(names, func(n string) string { return protoWhat[n] }), cobra.ShellCompDirectiveNoFileComp
}

// schemeWhat describes plug's far ends, for completions.
var schemeWhat = map[string]string{
	"-":     "stdin/stdout: 2-byte length + frame, as vde_plug speaks",
	"stdio": "stdin/stdout, as -",
	"ipn":   "another IPN network on this host: ipn://PATH",
	"vde":   "a VDE 2 switch: vde:///DIR[N]",
	"udp":   "UDP datagrams: udp://LOCAL:PORT/REMOTE:PORT",
	"vxlan": "RFC 7348 VXLAN: vxlan://GROUP_OR_PEER[:PORT]/vni=N",
	"vxvde": "vdeplug4's multicast switch: vxvde://[GROUP]",
	"tap":   "a Linux tap interface, made if missing: tap://NAME",
	"grab":  "an existing interface, promiscuous: grab://IFACE",
}

// plugURLs returns the URLs plug takes that begin with prefix: its far
// ends' schemes, and once a tap:// or grab:// is typed, the interfaces it
// may name (the taps for tap://, every interface for grab://).
func plugURLs(prefix string) ([]string, cobra.ShellCompDirective) {
	for _, dev := range []string{"tap", "grab"} {
		if !strings.HasPrefix(prefix, dev+"://") {
			continue
		}
		var urls []string
		for _, name := range interfaces(dev == "tap") {
			urls = append(urls, dev+"://"+name)
		}
		return urls, cobra.ShellCompDirectiveNoFileComp
	}
	urls := []string{"-\t" + schemeWhat["-"], "stdio\t" + schemeWhat["stdio"]}
	for _, s := range plugSchemes() {
		if s == "stdio" {
			continue
		}
		urls = append(urls, withWhat([]string{s + "://"}, func(string) string { return schemeWhat[s] })...)
	}
	// A scheme is the start of a URL: no space after it.
	return urls, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveNoSpace
}

// interfaces returns the names of this network namespace's interfaces,
// or of its taps alone.
func interfaces(tapsOnly bool) []string {
	ents, err := os.ReadDir("/sys/class/net")
	if err != nil {
		return nil
	}
	var names []string
	for _, e := range ents {
		if tapsOnly {
			if _, err := os.Stat(filepath.Join("/sys/class/net", e.Name(), "tun_flags")); err != nil {
				continue
			}
		}
		names = append(names, e.Name())
	}
	return names
}

// policySettings returns the settings and tables of the policy of the
// network at path (asking its daemon, starting none), or of every
// built-in policy if that cannot be learnt, with their descriptions.
func policySettings(path string) []string {
	var opts []policyOpt
	if nets, err := ipn.List(path); err == nil && len(nets) == 1 {
		opts, _ = optionsOf(nets[0].Proto)
	}
	if opts == nil {
		for _, p := range policyOpts {
			opts = append(opts, p.opts...)
		}
	}
	var out []string
	seen := map[string]bool{}
	for _, o := range opts {
		if !seen[o.name] {
			seen[o.name] = true
			out = append(out, o.name+"\t"+o.what)
		}
	}
	slices.Sort(out)
	return out
}

// commaList completes one item of a comma-separated list of words.
func commaList(words []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	done, _ := splitLast(toComplete)
	have := map[string]bool{}
	for _, w := range strings.Split(done, ",") {
		have[w] = true
	}
	var out []string
	for _, w := range words {
		if !have[w] {
			out = append(out, done+w)
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveNoSpace
}

// splitLast splits a comma-separated list at its last comma: the items
// typed (with the comma) and the one being typed.
func splitLast(s string) (string, string) {
	i := strings.LastIndexByte(s, ',')
	return s[:i+1], s[i+1:]
}

// argsCompletion completes the positional arguments of a command: for the
// argument at index i, fn[i] if set, else files.
func argsCompletion(fn ...func(args []string, toComplete string) ([]string, cobra.ShellCompDirective)) cobra.CompletionFunc {
	return func(_ *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		if len(args) >= len(fn) {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		if fn[len(args)] == nil {
			return nil, cobra.ShellCompDirectiveDefault
		}
		return fn[len(args)](args, toComplete)
	}
}

// words completes one of a fixed set of words.
func words(w ...string) func([]string, string) ([]string, cobra.ShellCompDirective) {
	return func([]string, string) ([]string, cobra.ShellCompDirective) {
		return w, cobra.ShellCompDirectiveNoFileComp
	}
}

// dirs completes directories.
func dirs([]string, string) ([]string, cobra.ShellCompDirective) {
	return nil, cobra.ShellCompDirectiveFilterDirs
}

// none completes nothing: the argument is a value of the user's.
func none([]string, string) ([]string, cobra.ShellCompDirective) {
	return nil, cobra.ShellCompDirectiveNoFileComp
}

// addCompletions teaches root's commands to complete their arguments and
// enumerated flag values. A command or flag it does not find is left
// alone (the completion test names every one it expects).
func addCompletions(root *cobra.Command) {
	sub := func(name string) *cobra.Command {
		for _, c := range root.Commands() {
			if c.Name() == name {
				return c
			}
		}
		return nil
	}
	flag := func(cmd, name string, fn cobra.CompletionFunc) {
		if c := sub(cmd); c != nil && c.Flags().Lookup(name) != nil {
			c.RegisterFlagCompletionFunc(name, fn)
		}
	}
	args := func(cmd string, fn cobra.CompletionFunc) {
		if c := sub(cmd); c != nil {
			c.ValidArgsFunction = fn
		}
	}
	flag("cat", "proto", completeProto)
	flag("vde", "proto", completeProto)
	flag("bench", "paths", func(_ *cobra.Command, _ []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		return commaList(benchPaths, toComplete)
	})
	args("plug", argsCompletion(nil, func(_ []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		return plugURLs(toComplete)
	}))
	args("policy", argsCompletion(nil, func(args []string, _ string) ([]string, cobra.ShellCompDirective) {
		return policySettings(args[0]), cobra.ShellCompDirectiveNoFileComp
	}, none))
	args("vlan", func(_ *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
		switch len(args) {
		case 0:
			return nil, cobra.ShellCompDirectiveDefault
		case 1:
			return []string{"add\tmake VLANs", "del\tremove VLANs"}, cobra.ShellCompDirectiveNoFileComp
		}
		return nil, cobra.ShellCompDirectiveNoFileComp
	})
	args("device", argsCompletion(nil, words("join\ttake the port over", "clear\tremove its persistence"), none))
	args("vde", argsCompletion(nil, dirs))
	args("mount", argsCompletion(dirs))
	for _, name := range []string{"cat", "dump", "mac", "port"} {
		args(name, argsCompletion(nil))
	}
	args("ls", argsCompletion(nil))
	for _, name := range []string{"daemon", "demo", "bench", "version"} {
		args(name, cobra.NoFileCompletions)
	}
}
