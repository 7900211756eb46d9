package devfs

import "testing"

func TestName(t *testing.T) {
	for path, want := range map[string]string{
		"/tmp/chat":    "tmp_chat",
		"/a/b/c":       "a_b_c",
		"/tmp//x/../y": "tmp_y",
	} {
		if got := Name(path); got != want {
			t.Errorf("Name(%q) = %q, want %q", path, got, want)
		}
	}
}

func TestAccess(t *testing.T) {
	cases := []struct {
		mode, uid, gid uint32
		groups         []uint32
		r, w           bool
	}{
		{0o700, 0, 0, nil, true, true},             // root
		{0o600, 10, 99, nil, true, true},           // owner
		{0o060, 10, 99, nil, false, false},         // owner bits win over group's
		{0o040, 11, 20, nil, true, false},          // group
		{0o020, 11, 99, []uint32{20}, false, true}, // supplementary group
		{0o704, 11, 99, nil, true, false},          // other
		{0o702, 11, 99, []uint32{5}, false, true},
	}
	for _, c := range cases {
		r, w := access(10, 20, c.mode, c.uid, c.gid, c.groups)
		if r != c.r || w != c.w {
			t.Errorf("mode %o uid %d gid %d groups %v: r=%v w=%v, want %v %v", c.mode, c.uid, c.gid, c.groups, r, w, c.r, c.w)
		}
	}
}
