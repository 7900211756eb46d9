package devfs

import "testing"

func TestName(t *testing.T) {
	for path, want := range map[string]string{
		"/tmp/chat":    "tmp_chat",
		"/a/b/c":       "a_b_c",
		"/tmp//x/../y": "tmp_y",
		"/a/x_y":       "a_x%5Fy",
		"/a/x/y":       "a_x_y",
		"/a/x%y":       "a_x%25y",
		"/a_/b":        "a%5F_b",
		"/a/_b":        "a_%5Fb",
	} {
		if got := Name(path); got != want {
			t.Errorf("Name(%q) = %q, want %q", path, got, want)
		}
		if p, ok := Path(want); !ok || Name(p) != want {
			t.Errorf("Path(%q) = %q %v, not a path that Name makes %q", want, p, ok, want)
		}
	}
}

func TestPathRefusesOtherNames(t *testing.T) {
	for _, name := range []string{"a__b", "a%5f", "a%2F", "a%", "a%5", "_a", "a_", "a%41"} {
		if p, ok := Path(name); ok {
			t.Errorf("Path(%q) = %q, want no path", name, p)
		}
	}
}

// FuzzName checks that names are unique and reversible: Path undoes Name,
// and a name Path accepts is the Name of its path.
func FuzzName(f *testing.F) {
	for _, s := range []string{"/tmp/chat", "/a/x_y", "/a/x/y", "/%5F", "a__b", "a%5Fb"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if len(s) > 0 && s[0] == '/' {
			name := Name(s)
			p, ok := Path(name)
			if name != "" && name != "." && (!ok || Name(p) != name) {
				t.Fatalf("Name(%q) = %q; Path gives %q %v", s, name, p, ok)
			}
		}
		if p, ok := Path(s); ok && Name(p) != s {
			t.Fatalf("Path(%q) = %q, whose Name is %q", s, p, Name(p))
		}
	})
}
