package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"testing"

	"github.com/ipn-project/ipn/internal/vdetest"
)

// asIPNEnv makes the test binary run as the ipn command, so that ipn
// bench can start its daemon and peers from it (os.Executable).
const asIPNEnv = "IPN_BENCH_TEST_AS_IPN"

func TestMain(m *testing.M) {
	if os.Getenv(asIPNEnv) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestBenchQuick runs ipn bench --quick on a few rows and checks the JSON
// rows it prints; it asserts nothing about speed.
func TestBenchQuick(t *testing.T) {
	vdetest.Need(t, "vde_switch")
	cmd := exec.Command(os.Args[0], "bench", "--quick", "--json",
		"--paths", "fast,socket,vde,vde_switch,nats",
		"--scenarios", "=hub 1->1 64B,=switch 4<->4 64B,=hub 1->1 64B lossless",
		"--nats", "/nonexistent/ipn-bench-nats")
	cmd.Env = append(os.Environ(), asIPNEnv+"=1")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("ipn bench: %v\n%s", err, stderr.String())
	}
	var rows []map[string]any
	if err := json.Unmarshal(stdout.Bytes(), &rows); err != nil {
		t.Fatalf("the JSON rows: %v\n%s", err, stdout.String())
	}
	want := map[string]bool{
		"hub 1->1 64B/fast": true, "hub 1->1 64B/socket": true, "hub 1->1 64B/vde": true,
		"hub 1->1 64B/vde_switch": true, "hub 1->1 64B/nats": true,
		"switch 4<->4 64B/fast": true, "switch 4<->4 64B/socket": true, "switch 4<->4 64B/vde": true,
		"switch 4<->4 64B/vde_switch": true,
		"hub 1->1 64B lossless/fast":  true, "hub 1->1 64B lossless/socket": true,
	}
	fields := []string{"scenario", "path", "delivered_per_s", "per_receiver_per_s", "loss_pct", "p50_us", "p99_us",
		"cpu_s_per_million", "server_cpu_s_per_million", "vs_vde_switch", "vs_nats", "sent", "delivered", "seconds", "note"}
	for _, r := range rows {
		key := r["scenario"].(string) + "/" + r["path"].(string)
		if !want[key] {
			t.Errorf("unexpected row %s", key)
			continue
		}
		delete(want, key)
		for _, f := range fields {
			if _, ok := r[f]; !ok {
				t.Errorf("%s: no field %q", key, f)
			}
		}
		if r["vs_nats"] != nil {
			t.Errorf("%s: vs_nats %v without NATS", key, r["vs_nats"])
		}
		switch r["path"] {
		case "nats":
			if r["note"] == "" {
				t.Errorf("%s: no note that NATS is missing", key)
			}
		case "vde_switch":
			if _, err := exec.LookPath("vde_switch"); err != nil {
				break
			}
			fallthrough
		default:
			if d, _ := r["delivered"].(float64); d <= 0 {
				t.Errorf("%s: nothing delivered: %v", key, r)
			}
		}
	}
	for key := range want {
		t.Errorf("no row %s", key)
	}
	if t.Failed() {
		t.Logf("stderr:\n%s", stderr.String())
	}
}
