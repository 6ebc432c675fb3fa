package main

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeRun adds one fortio measurement to a manifest in dir: qps, p50 in
// µs, and the proxy's CPU, user CPU and the two cores' steal.
func writeRun(t *testing.T, dir string, manifest *strings.Builder, sc, target string, rep int, qps, p50us, cpu, user, stealSrv, stealLoad float64) {
	t.Helper()
	writeRunFailing(t, dir, manifest, sc, target, rep, qps, p50us, cpu, user, stealSrv, stealLoad, 0)
}

// writeRunFailing is writeRun with failed of the requests answered 502.
func writeRunFailing(t *testing.T, dir string, manifest *strings.Builder, sc, target string, rep int, qps, p50us, cpu, user, stealSrv, stealLoad float64, failed int64) {
	t.Helper()
	file := fmt.Sprintf("%s.%s.%d.json", sc, target, rep)
	n := int64(qps * 10) // 10 s
	body := fmt.Sprintf(`{"ActualQPS": %g, "DurationHistogram": {"Count": %d, "Avg": %g, "Percentiles": [{"Percentile": 50, "Value": %g}]}, "RetCodes": {"200": %d, "502": %d}}`,
		qps, n, p50us/1e6, p50us/1e6, n-failed, failed)
	if err := os.WriteFile(filepath.Join(dir, file), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(manifest, "%s\trate\tdesc\t%s\t%d\tfortio\t%s\t0.0\t%.2f\t1000\t500\t%.2f\t%.1f\t%.1f\n",
		sc, target, rep, file, cpu, user, stealSrv, stealLoad)
}

// readManifest writes manifest into dir and reads the runs back: want of
// them, of one scenario.
func readManifest(t *testing.T, dir, manifest string, want int) ([]run, []scenario) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "manifest.tsv"), []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	runs, scenarios, err := readRuns(dir)
	if err != nil || len(runs) != want || len(scenarios) != 1 {
		t.Fatalf("readRuns: %d runs, %d scenarios, %v", len(runs), len(scenarios), err)
	}
	return runs, scenarios
}

func TestUserCPUStealAndPerRepetitionRatios(t *testing.T) {
	dir := t.TempDir()
	var m strings.Builder
	// Two repetitions: in the second, a steal spell slows everyone down
	// and inflates direct's p50; the added latencies keep their ratio.
	writeRun(t, dir, &m, "h1-rate2000", "direct", 1, 2000, 200, 2, 1, 0, 0)
	writeRun(t, dir, &m, "h1-rate2000", "watertight", 1, 2000, 500, 4, 1, 0, 0)
	writeRun(t, dir, &m, "h1-rate2000", "nginx", 1, 2000, 400, 2, 0.2, 0, 0)
	writeRun(t, dir, &m, "h1-rate2000", "direct", 2, 2000, 1000, 3, 1, 40, 30)
	writeRun(t, dir, &m, "h1-rate2000", "watertight", 2, 2000, 1600, 6, 1.2, 40, 30)
	writeRun(t, dir, &m, "h1-rate2000", "nginx", 2, 2000, 1400, 4, 0.4, 40, 30)
	runs, scenarios := readManifest(t, dir, m.String(), 6)
	sums := summarize("h1-rate2000", runs)
	wt, _ := find(sums, "h1-rate2000", "watertight")
	// 20,000 requests a repetition: user 1 s and 1.2 s -> 0.05 and 0.06 s per 1,000.
	if math.Abs(wt.UserPer1k-0.055) > 1e-9 || math.Abs(wt.CPUPer1k-0.25) > 1e-9 {
		t.Errorf("watertight: user %v, CPU %v s/1k; want 0.055, 0.25", wt.UserPer1k, wt.CPUPer1k)
	}
	if wt.StealServer != 20 || wt.StealLoad != 15 {
		t.Errorf("steal medians %v / %v, want 20 / 15", wt.StealServer, wt.StealLoad)
	}
	// Added p50 by repetition: 300/200 and 600/400, 1.5 both times; the
	// ratio of the medians says (1050-600)/(900-600), also 1.5 here, but
	// the per-repetition one holds however the medians fall.
	if v := perRep(runs, "h1-rate2000", "watertight", "nginx", addedP50Ratio); math.Abs(v-1.5) > 1e-9 {
		t.Errorf("per-repetition added p50 ratio %v, want 1.5", v)
	}
	if v := perRep(runs, "h1-rate2000", "watertight", "haproxy", qpsRatio); !math.IsNaN(v) {
		t.Errorf("ratio against a peer that never ran: %v, want NaN", v)
	}
	var md strings.Builder
	writeMarkdown(&md, scenarios, sums, runs)
	for _, want := range []string{"| 0.055 |", "| 20 / 15 |", "| 1.50 | 1.50 | ≤ 1.50 |"} {
		if !strings.Contains(md.String(), want) {
			t.Errorf("the report lacks %q:\n%s", want, md.String())
		}
	}
}

// A manifest of the old layout (11 fields) still reads, with the new
// measures unknown.
func TestOldManifestReads(t *testing.T) {
	dir := t.TempDir()
	var m strings.Builder
	writeRun(t, dir, &m, "h1-max", "watertight", 1, 9000, 300, 5, 2, 0, 0)
	old := strings.Join(strings.Split(strings.TrimSuffix(m.String(), "\n"), "\t")[:11], "\t") + "\n"
	if err := os.WriteFile(filepath.Join(dir, "manifest.tsv"), []byte(old), 0o644); err != nil {
		t.Fatal(err)
	}
	runs, _, err := readRuns(dir)
	if err != nil || len(runs) != 1 {
		t.Fatalf("readRuns: %v, %v", runs, err)
	}
	if r := runs[0]; !math.IsNaN(r.UserPer1k) || !math.IsNaN(r.StealServer) || r.QPS != 9000 {
		t.Errorf("old manifest read as %+v", r)
	}
}

// The like-for-like rows: watertight-h1up (h2c in, HTTP/1.1 out) is judged
// like the sidecar, and nginx-h2up (nginx passing h2c on as h2c) is a peer
// the goals are read against, next to nginx.
func TestLikeForLikeTargetsAreJudged(t *testing.T) {
	md := rateReport(t, map[string]rateRun{
		"direct": {p50: 200}, "watertight": {p50: 500}, "watertight-h1up": {p50: 400},
		"nginx": {p50: 300}, "nginx-h2up": {p50: 450},
	})
	reportHas(t, md,
		// 300 µs added against nginx-h2up's 250: 1.20; against nginx's 100: 3.00.
		"| watertight | h2c-rate2000 | added p50 ratio | nginx-h2up | 1.20 | 1.20 | ≤ 1.50 | yes |",
		"| watertight | h2c-rate2000 | added p50 ratio | nginx | 3.00 | 3.00 | ≤ 1.50 | **no** |",
		"| watertight-h1up | h2c-rate2000 | added p50 ratio | nginx | 2.00 | 2.00 | ≤ 1.50 | **no** |",
	)
	// Table order: the like-for-like rows sit next to what they mirror.
	if i, j := strings.Index(md, "| nginx | 2000"), strings.Index(md, "| nginx-h2up | 2000"); i < 0 || j < i {
		t.Errorf("nginx-h2up's row is not after nginx's:\n%s", md)
	}
}

// A ratio against a peer that failed requests is no verdict: fast failures
// flatter it.
func TestFailedRequestsVoidTheVerdict(t *testing.T) {
	md := rateReport(t, map[string]rateRun{
		"direct": {p50: 200}, "watertight": {p50: 500}, "nginx": {p50: 400},
		"nginx-h2up": {p50: 400, failed: 5}, // 5 of its 20,000 requests answered 502
	})
	reportHas(t, md,
		"| watertight | h2c-rate2000 | added p50 ratio | nginx | 1.50 | 1.50 | ≤ 1.50 | yes |",
		"| watertight | h2c-rate2000 | added p50 ratio | nginx-h2up | 1.50 | 1.50 | ≤ 1.50 | n/a (failed: 0 / 5) |",
	)
}

// rateRun is one target's h2c-rate2000 repetition: its p50 in µs and its
// failed requests.
type rateRun struct {
	p50    float64
	failed int64
}

// rateReport writes one repetition of h2c-rate2000 at 2,000 req/s for each
// target and returns the report's markdown.
func rateReport(t *testing.T, targets map[string]rateRun) string {
	t.Helper()
	dir := t.TempDir()
	var m strings.Builder
	for target, r := range targets {
		writeRunFailing(t, dir, &m, "h2c-rate2000", target, 1, 2000, r.p50, 2, 1, 0, 0, r.failed)
	}
	runs, scenarios := readManifest(t, dir, m.String(), len(targets))
	var md strings.Builder
	writeMarkdown(&md, scenarios, summarize("h2c-rate2000", runs), runs)
	return md.String()
}

// reportHas checks md holds every line of want.
func reportHas(t *testing.T, md string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(md, w) {
			t.Errorf("the report lacks %q:\n%s", w, md)
		}
	}
}

// fortio -grpc counts calls by the health status they got back: SERVING is
// an answer, ERROR a failed call; HTTP's are by status code.
func TestFailedCallsCounted(t *testing.T) {
	for _, tc := range []struct {
		codes string
		want  int64
	}{
		{`{"SERVING": 97, "ERROR": 3}`, 3},
		{`{"200": 98, "503": 2}`, 2},
		{`{"NOT_SERVING": 100}`, 100},
	} {
		path := filepath.Join(t.TempDir(), "run.json")
		body := `{"ActualQPS": 10, "DurationHistogram": {"Count": 100, "Avg": 0.001, "Percentiles": [{"Percentile": 50, "Value": 0.001}]}, "RetCodes": ` + tc.codes + `}`
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		var r run
		if err := parseFortio(path, &r); err != nil {
			t.Fatal(err)
		}
		if r.Errors != tc.want {
			t.Errorf("RetCodes %s: %d errors, want %d", tc.codes, r.Errors, tc.want)
		}
	}
}

// The throughput picture has a bar for each target a max scenario measured,
// and none, rather than one at 0, where it did not (nginx has no gRPC row,
// nginx-h2up no HTTP/1.1 one).
func TestThroughputBarsOnlyWhereMeasured(t *testing.T) {
	dir := t.TempDir()
	scenarios := []scenario{{"h1-max", "max", "h1"}, {"grpc-max", "max", "grpc"}}
	sums := []summary{
		{Scenario: "h1-max", Target: "watertight", QPS: 40000},
		{Scenario: "h1-max", Target: "nginx", QPS: 49000},
		{Scenario: "grpc-max", Target: "watertight", QPS: 9000},
		{Scenario: "grpc-max", Target: "nginx-h2up", QPS: 10000},
	}
	var md strings.Builder
	if err := writePictures(dir, scenarios, sums, &md); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "throughput.svg"))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Count(string(b), "<rect "); got != 1+4 { // background and 4 bars
		t.Errorf("%d rects in the throughput picture, want 5 (background and 4 bars)", got)
	}
	for _, target := range []string{"watertight", "nginx", "nginx-h2up"} {
		if !strings.Contains(string(b), ">"+target+"<") {
			t.Errorf("no %s in the throughput picture", target)
		}
	}
}
