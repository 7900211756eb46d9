package main

import (
	"bufio"
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// make install, with DESTDIR and PREFIX, builds ipn and puts the binary,
// the systemd units (ExecStart naming the installed binary), the manual
// pages and the bash, zsh and fish completions in their places under
// DESTDIR, and nothing else; the binary says the VERSION it was built
// with and the commit the toolchain recorded; the units it installed
// parse; make uninstall removes every file. It needs no network: the
// module proxy is off.
func TestMakeInstall(t *testing.T) {
	mk := need(t, "make", "make")
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("needs the go command")
	}
	repo, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	destdir, build := filepath.Join(tmp, "root"), filepath.Join(tmp, "build")
	const prefix, version = "/usr", "9.8.7-test"
	makeRun := func(target string, vars ...string) {
		t.Helper()
		cmd := exec.Command(mk, append([]string{"-C", repo, target, "DESTDIR=" + destdir, "PREFIX=" + prefix, "BUILD=" + build, "VERSION=" + version}, vars...)...)
		cmd.Env = append(os.Environ(), "GOPROXY=off", "GOFLAGS=-mod=readonly")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("make %s: %v\n%s", target, err, out)
		}
	}
	makeRun("install")
	// Once built, install only copies (sudo make install after make
	// builds nothing as root): with no go command, it still installs.
	makeRun("install", "GO=/nonexistent/go")

	want := []string{"usr/bin/ipn",
		"usr/lib/systemd/system/ipn.service", "usr/lib/systemd/system/ipn.socket",
		"usr/lib/systemd/user/ipn.service", "usr/lib/systemd/user/ipn.socket",
		"usr/share/bash-completion/completions/ipn",
		"usr/share/zsh/site-functions/_ipn",
		"usr/share/fish/vendor_completions.d/ipn.fish"}
	for _, p := range manPages() {
		want = append(want, "usr/share/man/man1/"+p)
	}
	slices.Sort(want)
	if got := filesUnder(t, destdir); !slices.Equal(got, want) {
		t.Fatalf("make install put under DESTDIR:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	bin := filepath.Join(destdir, "usr/bin/ipn")
	if fi, err := os.Stat(bin); err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("installed ipn: %v, %v; want mode 0755", fi, err)
	}
	checkManPages(t, filepath.Join(destdir, "usr/share/man/man1"))

	// ipn version: the VERSION given, and the commit go recorded (none
	// from a git worktree, whose .git is a file).
	out, err := exec.Command(bin, "version").Output()
	if err != nil {
		t.Fatalf("installed ipn version: %v", err)
	}
	if !strings.HasPrefix(string(out), "ipn "+version+"\n") {
		t.Errorf("installed ipn version:\n%s\nwant it to begin ipn %s", out, version)
	}
	commit := "unknown"
	if meta, err := exec.Command("go", "version", "-m", bin).Output(); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(meta))
		for sc.Scan() {
			if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == "build" && strings.HasPrefix(f[1], "vcs.revision=") {
				commit = strings.TrimPrefix(f[1], "vcs.revision=")
			}
		}
	}
	if !strings.Contains(string(out), "commit:   "+commit) {
		t.Errorf("installed ipn version:\n%s\nwant commit %s", out, commit)
	}

	// Completions: each shell's script, for ipn.
	for file, want := range map[string]string{
		"usr/share/bash-completion/completions/ipn":    "complete -o default -F __start_ipn ipn",
		"usr/share/zsh/site-functions/_ipn":            "#compdef ipn",
		"usr/share/fish/vendor_completions.d/ipn.fish": "complete -c ipn",
	} {
		b, err := os.ReadFile(filepath.Join(destdir, file))
		if err != nil || !bytes.Contains(b, []byte(want)) {
			t.Errorf("%s: %v; want it to hold %q", file, err, want)
		}
	}

	// The units run the installed binary, and parse; systemd-analyze
	// checks ExecStart's program exists and, with MANPATH, that
	// Documentation= names an installed page.
	for _, kind := range []string{"system", "user"} {
		dir := filepath.Join(destdir, "usr/lib/systemd", kind)
		service, err := os.ReadFile(filepath.Join(dir, "ipn.service"))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(service, []byte("\nExecStart="+prefix+"/bin/ipn daemon --foreground ")) {
			t.Errorf("installed %s ipn.service does not run %s/bin/ipn:\n%s", kind, prefix, service)
		}
		if analyze, err := exec.LookPath("systemd-analyze"); err == nil {
			tmpUnits := t.TempDir()
			for _, u := range []string{"ipn.socket", "ipn.service"} {
				b, err := os.ReadFile(filepath.Join(dir, u))
				if err != nil {
					t.Fatal(err)
				}
				b = bytes.ReplaceAll(b, []byte(prefix+"/bin/ipn"), []byte(bin))
				if err := os.WriteFile(filepath.Join(tmpUnits, u), b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			t.Setenv("MANPATH", filepath.Join(destdir, "usr/share/man"))
			verify(t, analyze, kind, tmpUnits)
		}
	}

	makeRun("uninstall")
	if left := filesUnder(t, destdir); len(left) != 0 {
		t.Errorf("make uninstall left %q", left)
	}
}

// filesUnder returns the files (not directories) under root, relative to
// it, sorted.
func filesUnder(t *testing.T, root string) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			rel, _ := filepath.Rel(root, p)
			files = append(files, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(files)
	return files
}
