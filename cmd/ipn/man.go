package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"

	"github.com/ipn-project/ipn/internal/outfile"
	"github.com/ipn-project/ipn/internal/spec"
)

func init() {
	commands = append(commands, genManCmd)
}

func genManCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "gen-man DIR",
		Short: "Write a manual page for every ipn command into DIR",
		Long: `Write the manual pages of ipn, section 1, into the directory DIR (made if
missing): ipn.1 and one per command, ipn-COMMAND.1 (ipn-daemon.1,
ipn-completion-bash.1, ...), from the commands' own help. make install
installs them; man -l DIR/ipn-cat.1 reads one in place.

The pages are dated $SOURCE_DATE_EPOCH if set, else by the commit the
program was built from, so that a build makes the same pages each time.`,
		Hidden: true, // for packagers and make install
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return writeManPages(cmd.Root(), args[0])
		},
	}
}

// writeManPages writes a page for root and each of its commands that
// help lists (not the hidden ones) into dir.
func writeManPages(root *cobra.Command, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("manual pages: %w", err)
	}
	date, err := manDate()
	if err != nil {
		return err
	}
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	header := &doc.GenManHeader{
		Title:   "IPN",
		Section: "1",
		Date:    &date,
		Source:  "ipn " + spec.ReadBuild().Version,
		Manual:  "IPN Manual",
	}
	var walk func(c *cobra.Command) error
	walk = func(c *cobra.Command) error {
		for _, sub := range c.Commands() {
			if !sub.IsAvailableCommand() || sub.IsAdditionalHelpTopicCommand() {
				continue
			}
			if err := walk(sub); err != nil {
				return err
			}
		}
		c.Long = manText(c.Long)
		c.DisableAutoGenTag = true // the pages are dated, and reproducible
		path := filepath.Join(dir, manPageName(c))
		f, err := outfile.Create(path)
		if err != nil {
			return err
		}
		h := *header // GenMan fills in its title
		if err := doc.GenMan(c, &h, f); err != nil {
			f.Close()
			return fmt.Errorf("manual page %s: %w", path, err)
		}
		return f.Close()
	}
	return walk(root)
}

// manText makes a command's help text the Markdown that cobra's pages are
// written from: its indented blocks (URL tables, examples) are kept as
// they are, preformatted, rather than filled as paragraphs.
func manText(long string) string {
	var b strings.Builder
	inBlock := false
	for _, l := range strings.Split(long, "\n") {
		indented := strings.HasPrefix(l, " ") || strings.HasPrefix(l, "\t")
		switch {
		case indented && !inBlock:
			b.WriteString("\n")
			inBlock = true
		case !indented && inBlock && l != "":
			b.WriteString("\n")
			inBlock = false
		}
		if inBlock && l != "" {
			b.WriteString("    ")
		}
		b.WriteString(l)
		b.WriteString("\n")
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// manPageName is the file name of c's page: its command path with
// dashes, in section 1 (ipn-completion-bash.1).
func manPageName(c *cobra.Command) string {
	return strings.ReplaceAll(c.CommandPath(), " ", "-") + ".1"
}

// manDate is the date the pages carry: $SOURCE_DATE_EPOCH (seconds, as
// reproducible builds set it), else the built commit's time, else today.
func manDate() (time.Time, error) {
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return time.Time{}, fmt.Errorf("$SOURCE_DATE_EPOCH %q: want seconds since 1970: %w", s, err)
		}
		return time.Unix(n, 0).UTC(), nil
	}
	if t, err := time.Parse(time.RFC3339, spec.ReadBuild().Time); err == nil {
		return t.UTC(), nil
	}
	return time.Now().UTC(), nil
}
