package ipn_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	// Helper processes are this test binary: it must be able to start as
	// a daemon too (TestAutostartRaceAndSIGTERM).
	_ "github.com/ipn-project/ipn/daemon/autostart"
	"github.com/ipn-project/ipn/internal/daemontest"
)

// The package's tests share one daemon, served from this test process, on a
// socket in testDir (mode 0755 so that helpers running as other users reach
// it). Helper processes are this test binary again, copied to testDir.
var (
	testDir   string
	helperBin string
	socket    string
)

const helperEnv = "IPN_TEST_HELPER"

func TestMain(m *testing.M) {
	if name := os.Getenv(helperEnv); name != "" {
		os.Exit(runHelper(name, os.Args[1:]))
	}
	os.Exit(run(m))
}

func run(m *testing.M) int {
	var err error
	if testDir, err = os.MkdirTemp("", "ipn-test-"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(testDir)
	os.Chmod(testDir, 0o755)
	self, _ := os.Executable()
	helperBin = filepath.Join(testDir, "helper.test")
	if err := copyFile(self, helperBin, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	socket = filepath.Join(testDir, "daemon.sock")
	stop, err := daemontest.Serve(socket)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	code := m.Run()
	removeUsers()
	if err := stop(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return code
}
