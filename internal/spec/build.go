package spec

import (
	"runtime/debug"
	"sync"
)

// Build names the program's build: its module version and, when the
// toolchain recorded them, the commit it was built from and whether the
// tree had changes ("+dirty"), e.g. "v0.0.0 (commit 1a2b3c4d5e6f)".
func Build() string { return buildOnce() }

var buildOnce = sync.OnceValue(func() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	if v == "" {
		v = "(devel)"
	}
	var rev, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value[:min(12, len(s.Value))]
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "+dirty"
			}
		}
	}
	if rev != "" {
		v += " (commit " + rev + dirty + ")"
	}
	return v
})
