package main

import (
	"bytes"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/ipn-project/ipn"
)

// runIPN runs this test binary as the ipn command with args and returns
// its stdout, failing the test if it fails.
func runIPN(t *testing.T, env []string, args ...string) string {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(append(os.Environ(), asIPNEnv+"=1"), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("ipn %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String()
}

// ipn version and ipn --version print the same facts: the release
// ("devel" unless the build set one), the module, the commit (a test
// binary records none), the Go toolchain and the protocol version.
func TestVersion(t *testing.T) {
	out := runIPN(t, nil, "version")
	if got := runIPN(t, nil, "--version"); got != out {
		t.Errorf("ipn --version:\n%s\nipn version:\n%s", got, out)
	}
	for _, want := range []string{
		"ipn devel\n",
		"module:   ",
		"commit:   unknown",
		"go:       " + runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH + "\n",
		"protocol: " + strconv.Itoa(ipn.ProtocolVersion) + "\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("ipn version lacks %q:\n%s", want, out)
		}
	}
	if !strings.HasPrefix(out, "ipn ") {
		t.Errorf("ipn version does not begin with its name and release:\n%s", out)
	}
}
