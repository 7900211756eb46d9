package daemon

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// Every metric the collector describes is in docs/metrics.md, with its
// type, and follows the naming rules: the ipn_ prefix, _total for
// counters alone.
func TestMetricsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan *prometheus.Desc, 100)
	(&collector{}).Describe(ch)
	close(ch)
	name := regexp.MustCompile(`fqName: "([^"]+)"`)
	n := 0
	for d := range ch {
		m := name.FindStringSubmatch(d.String())
		if m == nil {
			t.Fatalf("no name in %s", d)
		}
		fq := m[1]
		n++
		if !strings.HasPrefix(fq, "ipn_") {
			t.Errorf("%s: want the ipn_ prefix", fq)
		}
		kind := "gauge"
		if strings.HasSuffix(fq, "_total") {
			kind = "counter"
		}
		row := regexp.MustCompile("(?m)^\\| `" + regexp.QuoteMeta(fq) + "` \\| " + kind + " \\|")
		if !row.Match(doc) {
			t.Errorf("docs/metrics.md has no row | `%s` | %s |", fq, kind)
		}
	}
	if n < 20 {
		t.Errorf("%d metrics described, want the 20 and more of docs/metrics.md", n)
	}
}

// A metrics socket's listener removes its path at Close only while the
// path is its own: a daemon that took over may have bound its own there.
func TestMetricsSocketCloseKeepsAnothers(t *testing.T) {
	path := t.TempDir() + "/metrics.sock"
	old, err := listenMetrics(Config{Metrics: path})
	if err != nil {
		t.Fatal(err)
	}
	newer, err := listenMetrics(Config{Metrics: path, MetricsMode: 0o660})
	if err != nil {
		t.Fatal(err)
	}
	old.Close()
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode().Perm() != 0o660 {
		t.Fatalf("after the old listener closed: %v, %v; want the newer socket, of mode 0660", fi, err)
	}
	newer.Close()
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Fatalf("after the newer closed: %v, want no socket", err)
	}
}
