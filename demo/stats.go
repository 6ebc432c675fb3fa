package demo

import (
	"math"
	"slices"
	"sync"
	"time"
)

// outcome is how one of the app's calls ended, as the app sees it.
type outcome uint8

const (
	// outcomeOK: HTTP 200 from the upstream.
	outcomeOK outcome = iota
	// outcomeRefused: the sidecar refused the call before it reached the
	// upstream (pool and queue full, queue wait expired, ...): fast, and
	// the app's worker is free again at once.
	outcomeRefused
	// outcomeFailed: anything else (the sidecar's timeout, an upstream
	// error, the client's own timeout).
	outcomeFailed
	// outcomeDropped: the app's own queue of calls waiting for a worker was
	// full, so the call was never sent.
	outcomeDropped
)

// tally counts the calls to one upstream over some stretch of time.
type tally struct {
	calls, ok, met, refused, failed, dropped int
	// latencies of the calls that were sent (not dropped), from the moment
	// each was due to the moment its answer was read.
	latencies []time.Duration
}

func (t *tally) add(o outcome, latency, target time.Duration) {
	t.calls++
	switch o {
	case outcomeOK:
		t.ok++
		if latency <= target {
			t.met++
		}
	case outcomeRefused:
		t.refused++
	case outcomeFailed:
		t.failed++
	case outcomeDropped:
		t.dropped++
		return
	}
	t.latencies = append(t.latencies, latency)
}

// metShare is the share of calls that met their target, in percent.
func (t *tally) metShare() float64 { return percent(t.met, t.calls) }

// percentile of the latencies (q in [0,1]); 0 with no latencies. It sorts
// the latencies in place.
func (t *tally) percentile(q float64) time.Duration {
	return percentileOf(t.latencies, q)
}

func percentileOf(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	i := int(math.Ceil(q*float64(len(ds)))) - 1
	return ds[min(max(i, 0), len(ds)-1)]
}

func percent(n, of int) float64 {
	if of == 0 {
		return 0
	}
	return 100 * float64(n) / float64(of)
}

// recorder collects what the app's workers see: per upstream, the current
// tick's calls (for the live table) and the whole run's (for the summary),
// and how many workers each upstream holds.
type recorder struct {
	targets []time.Duration

	mu       sync.Mutex
	tick     []tally
	total    []tally
	inFlight []int // app workers waiting on each upstream now
	peak     []int // the most inFlight ever reached, per upstream
	busy     int   // app workers waiting on any upstream now
	peakBusy int
}

func newRecorder(specs []upstreamSpec) *recorder {
	r := &recorder{
		targets:  make([]time.Duration, len(specs)),
		tick:     make([]tally, len(specs)),
		total:    make([]tally, len(specs)),
		inFlight: make([]int, len(specs)),
		peak:     make([]int, len(specs)),
	}
	for i, s := range specs {
		r.targets[i] = s.target
	}
	return r
}

// sending marks a worker as busy with a call to upstream up; done undoes it.
func (r *recorder) sending(up int) {
	r.mu.Lock()
	r.inFlight[up]++
	r.peak[up] = max(r.peak[up], r.inFlight[up])
	r.busy++
	r.peakBusy = max(r.peakBusy, r.busy)
	r.mu.Unlock()
}

func (r *recorder) done(up int) {
	r.mu.Lock()
	r.inFlight[up]--
	r.busy--
	r.mu.Unlock()
}

// record counts a finished (or dropped) call.
func (r *recorder) record(up int, o outcome, latency time.Duration) {
	r.mu.Lock()
	r.tick[up].add(o, latency, r.targets[up])
	r.total[up].add(o, latency, r.targets[up])
	r.mu.Unlock()
}

// tickReading is the current tick's tallies and the workers each upstream
// holds now.
type tickReading struct {
	tallies  []tally
	inFlight []int
	busy     int
}

// takeTick returns the tick's tallies and starts a new tick.
func (r *recorder) takeTick() tickReading {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := tickReading{tallies: r.tick, inFlight: slices.Clone(r.inFlight), busy: r.busy}
	r.tick = make([]tally, len(r.targets))
	return t
}

// totals returns the whole run's tallies, the peak workers per upstream and
// the peak busy workers overall.
func (r *recorder) totals() ([]tally, []int, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ts := make([]tally, len(r.total))
	for i, t := range r.total {
		ts[i] = t
		ts[i].latencies = slices.Clone(t.latencies)
	}
	return ts, slices.Clone(r.peak), r.peakBusy
}
