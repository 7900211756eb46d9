// Command ipn makes, joins and inspects IPN networks, and runs the daemon
// that serves them.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	_ "github.com/ipn-project/ipn/daemon/autostart" // starts this binary as the daemon when none runs
	"github.com/ipn-project/ipn/internal/spec"
)

func main() {
	if err := newRoot().Execute(); err != nil {
		var sig signalExit
		if errors.As(err, &sig) {
			if sig.err != nil {
				fmt.Fprintln(os.Stderr, "ipn:", sig.err)
			}
			os.Exit(sig.status())
		}
		fmt.Fprintln(os.Stderr, "ipn:", err)
		var ex exitError
		if errors.As(err, &ex) {
			os.Exit(int(ex))
		}
		os.Exit(1)
	}
}

// newRoot returns the ipn command with every subcommand.
func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "ipn",
		Short: "Inter Process Networking: processes, containers and VMs on a network bus",
		Long: `ipn makes and joins IPN networks. A network is a path in the file system;
every message a member sends is delivered by the network's policy (hub:
to all other members) to the others. File permissions are the access
control: r to receive, w to send, x to manage.

The daemon that serves networks starts by itself when first needed.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       spec.ReadBuild().Version,
	}
	cobra.AddTemplateFunc("ipnVersion", versionText)
	root.SetVersionTemplate("{{ipnVersion}}")
	for _, c := range commands {
		root.AddCommand(c())
	}
	addCompletions(root)
	return root
}

// commands are ipn's subcommands; a file that adds one appends it here
// from its init.
var commands = []func() *cobra.Command{catCmd, lsCmd, daemonCmd, demoCmd}

// exitError carries an exit status for main.
type exitError int

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", int(e)) }
