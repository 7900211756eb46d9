package perm

import "testing"

func TestRights(t *testing.T) {
	for _, c := range []struct {
		name      string
		mode, uid uint32
		gid       uint32
		groups    []uint32
		r, w, x   bool
	}{
		{"owner", 0o700, 10, 99, nil, true, true, true},
		{"owner bits only", 0o077, 10, 20, nil, false, false, false},
		{"group", 0o750, 11, 20, nil, true, false, true},
		{"supplementary group", 0o740, 11, 99, []uint32{5, 20}, true, false, false},
		{"other", 0o702, 11, 99, nil, false, true, false},
		{"root", 0o000, 0, 0, nil, true, true, false},
		{"root x", 0o001, 0, 0, nil, true, true, true},
	} {
		r, w, x := Rights(10, 20, c.mode, c.uid, c.gid, c.groups)
		if r != c.r || w != c.w || x != c.x {
			t.Errorf("%s: got r%v w%v x%v", c.name, r, w, x)
		}
	}
}
