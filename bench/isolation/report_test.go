package main

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
)

// A run of three upstreams where c turns slow at 1 s: the summary must judge
// healthy calls by the latency target, count c's refusals and time them from
// send to answer, and leave calls before the slow phase out of the
// slow-phase figures.
func TestSummarize(t *testing.T) {
	r := &Result{
		Experiment: "isolation", Upstreams: []string{"a", "b", "c"}, Slow: 2, SlowAtS: 1, DurationS: 2,
		TargetsMS: []float64{100, 100, 100},
		Calls: []Call{
			{Up: 0, DueS: 0.5, WaitMS: 0, LatMS: 10, Status: 200},                           // before: ok
			{Up: 0, DueS: 1.1, WaitMS: 0, LatMS: 10, Status: 200},                           // healthy ok
			{Up: 1, DueS: 1.2, WaitMS: 90, LatMS: 150, Status: 200},                         // healthy, too late
			{Up: 2, DueS: 1.3, WaitMS: 1, LatMS: 1.5, Status: 503, Reason: "bulkhead_full"}, // refused in 0.5 ms
			{Up: 2, DueS: 1.4, WaitMS: 2, LatMS: 502, Status: 504, Reason: "timeout"},
			{Up: 2, DueS: 1.5, WaitMS: -1, LatMS: 1000, Reason: "app_deadline_before_send"},
			{Up: 2, DueS: 0.9, WaitMS: 0, LatMS: 10, Status: 200}, // before the slow phase
		},
	}
	s := summarize(r)
	if s.HealthyCalls != 2 || s.HealthyOK != 0.5 || s.HealthyOKPre != 1 {
		t.Errorf("healthy: calls %d ok %v before %v, want 2, 0.5, 1", s.HealthyCalls, s.HealthyOK, s.HealthyOKPre)
	}
	if s.SlowCalls != 3 || s.SlowFailed != 3 || s.SlowRefused != 2 {
		t.Errorf("slow: calls %d failed %d refused %d, want 3, 3, 2", s.SlowCalls, s.SlowFailed, s.SlowRefused)
	}
	if math.Abs(s.RefuseAnswerMS-0.5) > 1e-9 {
		t.Errorf("refusal answered in %v ms, want 0.5 (the faster of 0.5 and 500 by nearest rank)", s.RefuseAnswerMS)
	}
	if s.SlowReasons["503 bulkhead_full"] != 1 || s.SlowReasons["504 timeout"] != 1 || s.SlowReasons["app_deadline_before_send"] != 1 {
		t.Errorf("reasons %v", s.SlowReasons)
	}
	if len(s.SeriesHealthy) != 2 || s.SeriesHealthy[0] != 100 || s.SeriesHealthy[1] != 50 {
		t.Errorf("healthy series %v, want [100 50]", s.SeriesHealthy)
	}
	if s.OKTotal != 3 {
		t.Errorf("ok total %d, want 3", s.OKTotal)
	}
}

func TestPercentileAndMedian(t *testing.T) {
	if p := percentile([]float64{5, 1, 4, 2, 3}, 50); p != 3 {
		t.Errorf("p50 = %v, want 3", p)
	}
	if p := percentile([]float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, 99); p != 10 {
		t.Errorf("p99 = %v, want 10", p)
	}
	if !math.IsNaN(percentile(nil, 50)) {
		t.Error("percentile of nothing must be NaN")
	}
	if m := median([]float64{3, math.NaN(), 1, 2, 10}); m != 2.5 {
		t.Errorf("median = %v, want 2.5 (NaN ignored)", m)
	}
}

// isoRun is a run of a, b and c in which c hangs from 1 s and every healthy
// call in the slow phase takes healthyMS.
func isoRun(name, proto string, rep int, healthyMS float64) Result {
	r := Result{Name: name, Experiment: "isolation", Callers: "shared", Proto: proto, Rep: rep,
		Upstreams: []string{"a", "b", "c"}, Slow: 2, SlowAtS: 1, DurationS: 2, Rate: 3, Workers: 6,
		TargetsMS: []float64{100, 100, 100}}
	for i := 0; i < 6; i++ {
		due := float64(i) / 3
		up := i % 3
		lat := 10.0
		if due >= 1 && up != 2 {
			lat = healthyMS
		}
		r.Calls = append(r.Calls, Call{Up: up, DueS: due, LatMS: lat, Status: 200})
	}
	return r
}

// tableRow is the first line of the markdown section headed heading that
// starts with "| name |".
func tableRow(t *testing.T, md, heading, name string) string {
	t.Helper()
	_, sec, ok := strings.Cut(md, heading+"\n")
	if !ok {
		t.Fatalf("no section %q in:\n%s", heading, md)
	}
	sec, _, _ = strings.Cut(sec, "\n### ")
	for _, line := range strings.Split(sec, "\n") {
		if strings.HasPrefix(line, "| "+name+" |") {
			return line
		}
	}
	t.Fatalf("no row %q in section %q:\n%s", name, heading, sec)
	return ""
}

// Runs over HTTP/1.1 and h2c of the same target must land in separate
// tables: pooled, the medians would mix protocols (here every h1 run keeps
// the healthy calls and every h2c run loses them, so a pooled median is
// 50 %). A result from before the proto field existed counts as h1.
func TestReportSeparatesProtocols(t *testing.T) {
	old := isoRun("watertight", "", 1, 10)
	b, err := json.Marshal(old)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	delete(m, "proto") // as written before -proto existed
	b, _ = json.Marshal(m)
	var legacy Result
	if err := json.Unmarshal(b, &legacy); err != nil {
		t.Fatal(err)
	}
	results := []Result{
		isoRun("watertight", protoH2C, 1, 500),
		legacy,
		isoRun("watertight", protoH1, 2, 10),
		isoRun("watertight", protoH2C, 2, 500),
	}
	md, err := render(results, "", []string{"watertight"})
	if err != nil {
		t.Fatal(err)
	}
	h1 := tableRow(t, md, "### Isolation, shared callers, HTTP/1.1", "watertight")
	if !strings.HasPrefix(h1, "| watertight | **100.00** (100.00–100.00) |") {
		t.Errorf("HTTP/1.1 row %q, want 100 %% healthy from the two h1 runs only", h1)
	}
	h2 := tableRow(t, md, "### Isolation, shared callers, h2c", "watertight")
	if !strings.HasPrefix(h2, "| watertight | **0.00** (0.00–0.00) |") {
		t.Errorf("h2c row %q, want 0 %% healthy from the two h2c runs only", h2)
	}
	if i, j := strings.Index(md, "HTTP/1.1"), strings.Index(md, "h2c"); i > j {
		t.Errorf("the HTTP/1.1 section must come first:\n%s", md)
	}
	if !strings.Contains(md, "Medians of 2 repetitions") || strings.Contains(md, "Medians of 4 repetitions") {
		t.Errorf("each section must count its own protocol's 2 repetitions:\n%s", md)
	}
}

// With only HTTP/1.1 runs, the report reads as it did before h2c: no
// protocol in the heading.
func TestReportH1OnlyHeading(t *testing.T) {
	md, err := render([]Result{isoRun("watertight", "", 1, 10)}, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(md, "### Isolation, shared callers\n") || strings.Contains(md, "HTTP/1.1") || strings.Contains(md, "h2c") {
		t.Errorf("h1-only report:\n%s", md)
	}
}
