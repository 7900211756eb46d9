package main

import (
	"fmt"
	"runtime"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ipn-project/ipn"
	"github.com/ipn-project/ipn/internal/spec"
)

func init() {
	commands = append(commands, versionCmd)
}

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version of ipn: release, commit, Go, protocol",
		Long: `Print the version of this ipn: its release (set when it is built, make
install does; "devel" otherwise), the Go module's version, the commit it
was built from (with "modified" if the tree had changes), the Go toolchain
that built it, and the version of the protocol it speaks to the daemon.
ipn --version prints the same.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprint(cmd.OutOrStdout(), versionText())
			return err
		},
	}
}

// versionText describes this build, one fact a line.
func versionText() string {
	b := spec.ReadBuild()
	commit := b.Commit
	switch {
	case commit == "":
		commit = "unknown (not built from a git tree)"
	case b.Modified:
		commit += " (modified)"
	}
	var w strings.Builder
	fmt.Fprintf(&w, "ipn %s\n", b.Version)
	fmt.Fprintf(&w, "module:   %s\n", b.Module)
	fmt.Fprintf(&w, "commit:   %s\n", commit)
	if b.Time != "" {
		fmt.Fprintf(&w, "time:     %s\n", b.Time)
	}
	fmt.Fprintf(&w, "go:       %s %s/%s\n", b.Go, runtime.GOOS, runtime.GOARCH)
	fmt.Fprintf(&w, "protocol: %d\n", ipn.ProtocolVersion)
	return w.String()
}
