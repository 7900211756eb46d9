package cable_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ipn-project/ipn/cable"
	"github.com/ipn-project/ipn/farend/vdeplug"
)

// A cable URL with a value the far end cannot mean is refused when it is
// opened, before anything is joined, and the error names the value and
// the allowed form.
func TestOpenRefusesBadURLs(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		url  string
		want []string
	}{
		{"vde://" + dir + "[abc]", []string{`"abc"`, "DIR[N]", "DIR[port=N]", "DIR[portgroup=NAME]"}},
		{"vde://" + dir + "[port=abc]", []string{`"abc"`, "DIR[N]"}},
		{"vde://" + dir + "[-3]", []string{`"-3"`, "0..8388607"}},
		{"vde://" + dir + "[port=]", []string{"empty port", "DIR[N]"}},
		{"vde://" + dir + "[9999999999]", []string{`"9999999999"`, "0..8388607"}},
		{"vxlan://239.1.1.1", []string{"no vni", "vni=N", "0..16777215", "e.g. vxlan://239.1.1.1/vni=42"}},
		{"vxlan://10.0.0.1:4790/ttl=2", []string{"no vni", "vxlan://10.0.0.1:4790/ttl=2/vni=N"}},
		{"vxlan://239.1.1.1/vni=16777216", []string{`"16777216"`, "16777215"}},
	} {
		far, err := cable.Open(context.Background(), tc.url)
		if err == nil {
			far.Close()
			t.Errorf("%s opened", tc.url)
			continue
		}
		if cable.Retryable(err) {
			t.Errorf("%s: %v is retryable, want final", tc.url, err)
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q lacks %q", tc.url, err, w)
			}
		}
	}
}

// The forms the errors offer parse: opening them fails only because no
// switch serves the directory.
func TestOpenAcceptsVDEForms(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "sw")
	for _, params := range []string{"", "[3]", "[0]", "[port=4]", "[portgroup=lan]", "[group=portusers]", "[5/mode=660]"} {
		url := "vde://" + dir + params
		far, err := cable.Open(context.Background(), url)
		if err == nil {
			far.Close()
			t.Fatalf("%s opened with no switch there", url)
		}
		if !errors.Is(err, vdeplug.ErrNoSwitch) {
			t.Errorf("%s: %v, want only that no switch serves it", url, err)
		}
	}
}

// A far end that is not there yet is worth retrying (ipn plug --reconnect).
func TestOpenMissingFarEndIsRetryable(t *testing.T) {
	dir := t.TempDir()
	for _, url := range []string{
		"vde://" + filepath.Join(dir, "later"),
		"vde://" + filepath.Join(dir, "later") + "[3]",
	} {
		far, err := cable.Open(context.Background(), url)
		if err == nil {
			far.Close()
			t.Fatalf("%s opened", url)
		}
		if !cable.Retryable(err) {
			t.Errorf("%s: %v is final, want retryable", url, err)
		}
	}
}
