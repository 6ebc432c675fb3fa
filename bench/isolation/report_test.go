package main

import (
	"math"
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
