package spec

import (
	"runtime"
	"runtime/debug"
	"sync"
)

// Version is the release of this build, set by whoever builds it
// (make install does): go build -ldflags "-X
// github.com/ipn-project/ipn/internal/spec.Version=1.2.0"; "devel" if not.
var Version = "devel"

// BuildInfo describes the program's build.
type BuildInfo struct {
	Version  string // Version
	Module   string // the main module's version; "(devel)" when built in its tree
	Commit   string // the commit built (vcs.revision), "" if the toolchain recorded none
	Modified bool   // the tree had changes not committed (vcs.modified)
	Time     string // the commit's time (vcs.time), RFC 3339, or ""
	Go       string // the Go toolchain's version
}

// ReadBuild returns what the program and the toolchain recorded of its
// build.
func ReadBuild() BuildInfo { return readBuild() }

var readBuild = sync.OnceValue(func() BuildInfo {
	b := BuildInfo{Version: Version, Module: "unknown", Go: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return b
	}
	b.Module = bi.Main.Version
	if b.Module == "" {
		b.Module = "(devel)"
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			b.Commit = s.Value
		case "vcs.modified":
			b.Modified = s.Value == "true"
		case "vcs.time":
			b.Time = s.Value
		}
	}
	return b
})

// Build names the program's build: its version (the module's, unless
// Version was set) and, when the toolchain recorded them, the commit it
// was built from and whether the tree had changes ("+dirty"), e.g.
// "v0.0.0 (commit 1a2b3c4d5e6f)".
func Build() string { return buildOnce() }

var buildOnce = sync.OnceValue(func() string {
	b := ReadBuild()
	v := b.Module
	if b.Version != "devel" {
		v = b.Version
	}
	if b.Commit != "" {
		v += " (commit " + b.Commit[:min(12, len(b.Commit))]
		if b.Modified {
			v += "+dirty"
		}
		v += ")"
	}
	return v
})
