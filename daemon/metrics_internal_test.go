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
