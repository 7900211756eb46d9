package main

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/ipn-project/ipn"
	"github.com/ipn-project/ipn/policy/vdeswitch"
)

// hintError is an error told in words of the command, wrapping the error
// it stands for (so that errors.Is still finds its errno).
type hintError struct {
	msg string
	err error
}

func (e *hintError) Error() string { return e.msg }
func (e *hintError) Unwrap() error { return e.err }

// lacks turns err, the refusal by the policy of the network at path of an
// option it does not have (ENOPROTOOPT), into what command cmd needs:
// "hub networks have no MAC table (policy hub; mac needs switch or
// l3switch)". Other errors pass unchanged.
func lacks(err error, path, cmd, what, needs string) error {
	if err == nil || !errors.Is(err, syscall.ENOPROTOOPT) {
		return err
	}
	proto := "its policy's"
	if nets, lerr := ipn.List(path); lerr == nil && len(nets) == 1 {
		proto = nets[0].Proto
	}
	return &hintError{
		msg: fmt.Sprintf("%s: %s networks have no %s (policy %s; %s needs %s): %v",
			path, proto, what, proto, cmd, needs, syscall.ENOPROTOOPT),
		err: err,
	}
}

// parseVLANs checks the VLAN arguments of ipn vlan add/del, all before any
// is sent, so that a bad one changes nothing.
func parseVLANs(args []string) error {
	for _, a := range args {
		if v, err := strconv.Atoi(a); err != nil || v < 1 || v > vdeswitch.MaxVLAN {
			return fmt.Errorf("vlan %q: want a number in 1..%d: %w", a, vdeswitch.MaxVLAN, syscall.EINVAL)
		}
	}
	return nil
}

// negativeArgs makes a command's flag errors explain an argument that
// looks like a negative number ("-3", "-5s"), which the flag parser takes
// for a flag: what the value may be (want), and how to pass it anyway.
func negativeArgs(cmd *cobra.Command, want string) {
	cmd.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		msg := err.Error()
		i := strings.LastIndex(msg, " in -")
		if !strings.HasPrefix(msg, "unknown shorthand flag") || i < 0 {
			return err
		}
		arg := msg[i+len(" in "):]
		if len(arg) < 2 || (arg[1] < '0' || arg[1] > '9') && arg[1] != '.' {
			return err
		}
		return fmt.Errorf("%s: not a flag, and a negative value is invalid here: %s (a value that begins with - goes after --: ipn %s ... -- %s)",
			arg, want, c.Name(), arg)
	})
}
