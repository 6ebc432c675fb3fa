package demo

import (
	"math"
	"math/rand/v2"
	"time"
)

// The scenario: every number the story depends on, in one place.
//
// Why these numbers: the app's 48 workers comfortably carry the healthy load
// (catalog needs about 120/s × 5ms ≈ 1 worker, pricing 100/s × 50ms ≈ 5)
// plus recommendations' own compartment (20 slots + 5 queued) when it hangs,
// about 32 in all. Without compartments a hanging recommendations wants
// 80/s × 1s timeout = 80 workers, more than the app has, so every worker
// ends up waiting on it and calls to healthy upstreams queue behind them.
// The shared pool (the whole budget of 60) is larger than the app's worker
// pool, so the sidecar never pushes back: the app runs out of workers first,
// which is how it goes in real services.
//
// These are the numbers at Scale 1; see load for other scales.
const (
	appWorkers = 48
	// clientTimeout is a little longer than the longest sidecar timeout, so
	// the sidecar's local reply (504 timeout) reaches the app first.
	clientTimeout = 1250 * time.Millisecond
	// tick is how often the live table prints a line per upstream.
	tick = time.Second
	// jitter spreads each answer over ±20% of its nominal latency.
	jitter = 0.2
)

// upstreamSpec is one dependency of the app: how the in-process upstream
// behaves and how the app uses it.
type upstreamSpec struct {
	name string
	// rate is the calls per second the app sends it (at Scale 1).
	rate int
	// target is the latency the app needs: a call meets it if it succeeds
	// within target of the moment it was due to be sent.
	target time.Duration
	// healthy upstreams never misbehave; the contrast is about them.
	healthy bool
	// steps is the upstream's behaviour over a run; each step starts at a
	// fraction of the run's length.
	steps []step
}

// step is one stretch of an upstream's behaviour.
type step struct {
	from    float64       // fraction of the run at which the step starts
	latency time.Duration // nominal answer time; 0 with hang
	hang    bool          // never answer (until the caller gives up)
	label   string        // shown in the live table when the step begins
}

var scenario = []upstreamSpec{
	{name: "catalog", rate: 120, target: 50 * time.Millisecond, healthy: true,
		steps: []step{{from: 0, latency: 5 * time.Millisecond, label: "fast (~5ms)"}}},
	{name: "pricing", rate: 100, target: 150 * time.Millisecond, healthy: true,
		steps: []step{{from: 0, latency: 50 * time.Millisecond, label: "steady (~50ms)"}}},
	{name: "recommendations", rate: 80, target: 150 * time.Millisecond,
		steps: []step{
			{from: 0, latency: 20 * time.Millisecond, label: "fine (~20ms)"},
			{from: 1.0 / 3, latency: 300 * time.Millisecond, label: "turns slow (~300ms)"},
			{from: 1.0 / 2, hang: true, label: "hangs (answers nothing)"},
		}},
}

// stepAt is the step in force at elapsed into a run of length run.
func (s *upstreamSpec) stepAt(elapsed, run time.Duration) (int, step) {
	i := 0
	for j, st := range s.steps {
		if elapsed >= time.Duration(st.from*float64(run)) {
			i = j
		}
	}
	return i, s.steps[i]
}

// withJitter spreads d uniformly over ±jitter, so that answers do not
// arrive in lockstep.
func withJitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (1 - jitter + 2*jitter*rand.Float64()))
}

// load is the scenario at a scale. The app's rates and workers and the
// sidecar's budget and queues grow and shrink together, so the story's
// arithmetic (the hang needs more workers than the app has, the compartment
// far fewer) holds at any scale; a smaller scale needs less CPU.
type load struct {
	scale float64
	// workers is the app's worker pool; backlog bounds its queue of calls
	// waiting for a worker (a call that finds it full is dropped, and
	// counted as a miss).
	workers, backlog int
	rates            []int // calls per second, per scenario upstream
}

func newLoad(scale float64) load {
	l := load{scale: scale, workers: scaled(appWorkers, scale)}
	l.backlog = 2 * l.workers
	for _, s := range scenario {
		l.rates = append(l.rates, scaled(s.rate, scale))
	}
	return l
}

func (l load) total() int {
	n := 0
	for _, r := range l.rates {
		n += r
	}
	return n
}

// scaled is n × scale rounded, and at least 1.
func scaled(n int, scale float64) int {
	return max(1, int(math.Round(float64(n)*scale)))
}
