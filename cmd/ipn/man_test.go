package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// manPages returns the file names of the pages ipn gen-man must write:
// one for ipn and one for each command help lists, completion's included.
func manPages() []string {
	root := newRoot()
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	var names []string
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		names = append(names, manPageName(c))
		for _, sub := range c.Commands() {
			if sub.IsAvailableCommand() && !sub.IsAdditionalHelpTopicCommand() {
				walk(sub)
			}
		}
	}
	walk(root)
	slices.Sort(names)
	return names
}

// checkManPages fails unless dir holds exactly the pages of manPages,
// each of which man -l (Debian's man-db) formats with its NAME, SYNOPSIS
// and the command's options.
func checkManPages(t *testing.T, dir string) {
	t.Helper()
	want := manPages()
	for _, w := range []string{"ipn.1", "ipn-daemon.1", "ipn-plug.1", "ipn-version.1", "ipn-completion-bash.1"} {
		if !slices.Contains(want, w) {
			t.Fatalf("the commands give no page %s: %q", w, want)
		}
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if !slices.Equal(got, want) {
		t.Fatalf("pages in %s: %q, want %q", dir, got, want)
	}
	man := need(t, "man", "man-db")
	for _, page := range got {
		cmdPath := strings.ReplaceAll(strings.TrimSuffix(page, ".1"), "-", " ")
		cmd := exec.Command(man, "-l", "-P", "cat", filepath.Join(dir, page))
		cmd.Env = append(os.Environ(), "MANWIDTH=200", "LC_ALL=C.UTF-8")
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Run(); err != nil || errb.Len() > 0 {
			t.Errorf("man -l %s: %v\n%s", page, err, errb.String())
			continue
		}
		text := out.String()
		name := strings.TrimSuffix(page, ".1")
		for _, want := range []string{"NAME\n", "\n       " + name + " - ", "SYNOPSIS\n", "\n       " + cmdPath, "OPTIONS", "--help"} {
			if !strings.Contains(text, want) {
				t.Errorf("man -l %s lacks %q:\n%s", page, want, text)
			}
		}
	}
}

// ipn gen-man DIR writes a page for every command, which man reads; the
// hidden commands get none.
func TestManPages(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "man1")
	runIPN(t, []string{"SOURCE_DATE_EPOCH=1798761600"}, "gen-man", dir)
	checkManPages(t, dir)
	b, err := os.ReadFile(filepath.Join(dir, "ipn-daemon.1"))
	if err != nil {
		t.Fatal(err)
	}
	// Dated by SOURCE_DATE_EPOCH (2027-01-01), not by today.
	if !bytes.Contains(b, []byte(`.TH "IPN" "1" "Jan 2027" "ipn devel" "IPN Manual"`)) {
		t.Errorf("ipn-daemon.1's header is not dated by SOURCE_DATE_EPOCH:\n%s", b[:min(len(b), 200)])
	}
	for _, hidden := range []string{"ipn-gen-man.1", "ipn-bench-peer.1", "ipn-bench-net.1"} {
		if _, err := os.Stat(filepath.Join(dir, hidden)); err == nil {
			t.Errorf("a page for hidden command: %s", hidden)
		}
	}
}
