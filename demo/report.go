package demo

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// Report is what the demo measured: one RunReport per run that started.
type Report struct {
	Runs []RunReport
}

// RunReport is one run of the load: with compartments, or with one shared pool.
type RunReport struct {
	// Name is "compartments" or "shared pool".
	Name string
	// Isolation is the config's isolation mode ("per-upstream" or "shared").
	Isolation string
	// Planned is the run's length; Elapsed how long it ran (shorter when
	// interrupted).
	Planned, Elapsed time.Duration
	// Interrupted: the demo was stopped during this run.
	Interrupted bool
	Upstreams   []UpstreamReport
	// Workers is the size of the app's worker pool; PeakBusy the most of
	// them ever busy at once.
	Workers, PeakBusy int
	// Composite says how one call of the demo's composite went at the end
	// of the run ("" when the run was interrupted).
	Composite string
}

// UpstreamReport is one upstream's calls over a run, as the app saw them.
type UpstreamReport struct {
	Name string
	// Healthy upstreams never misbehave in the scenario.
	Healthy bool
	// Target is the latency a call had to succeed within to meet it.
	Target time.Duration
	// Calls is every call due in the run (except those cut off by its end):
	// OK + Refused + Failed + Dropped. Met is the OK calls within Target.
	Calls, OK, Met, Refused, Failed, Dropped int
	// P50 and P99 are over the calls that were sent (not dropped), from the
	// moment each was due, so waiting for a free app worker counts.
	P50, P99 time.Duration
	// PeakWorkers is the most app workers this upstream held at once.
	PeakWorkers int
}

// MetShare is the percentage of calls that met their target.
func (u UpstreamReport) MetShare() float64 { return percent(u.Met, u.Calls) }

// OKShare is the percentage of calls that succeeded.
func (u UpstreamReport) OKShare() float64 { return percent(u.OK, u.Calls) }

// Upstream returns the named upstream's report (the zero value if absent).
func (r RunReport) Upstream(name string) UpstreamReport {
	for _, u := range r.Upstreams {
		if u.Name == name {
			return u
		}
	}
	return UpstreamReport{}
}

// HealthyMetShare is the percentage of the healthy upstreams' calls, taken
// together, that met their target.
func (r RunReport) HealthyMetShare() float64 {
	met, calls := 0, 0
	for _, u := range r.Upstreams {
		if u.Healthy {
			met += u.Met
			calls += u.Calls
		}
	}
	return percent(met, calls)
}

// Run returns the run with the given isolation mode, if it ran.
func (r *Report) Run(isolation string) (RunReport, bool) {
	for _, rr := range r.Runs {
		if rr.Isolation == isolation {
			return rr, true
		}
	}
	return RunReport{}, false
}

func newRunReport(name, isolation string, planned, elapsed time.Duration, workers int, rec *recorder) RunReport {
	tallies, peaks, peakBusy := rec.totals()
	rr := RunReport{
		Name: name, Isolation: isolation, Planned: planned, Elapsed: elapsed,
		Workers: workers, PeakBusy: peakBusy,
	}
	for i, s := range scenario {
		t := &tallies[i]
		rr.Upstreams = append(rr.Upstreams, UpstreamReport{
			Name: s.name, Healthy: s.healthy, Target: s.target,
			Calls: t.calls, OK: t.ok, Met: t.met, Refused: t.refused, Failed: t.failed, Dropped: t.dropped,
			P50: t.percentile(0.50), P99: t.percentile(0.99),
			PeakWorkers: peaks[i],
		})
	}
	return rr
}

// writeSummary prints one run's totals.
func writeSummary(w io.Writer, rr RunReport) {
	how := rr.Elapsed.Round(time.Second).String()
	if rr.Interrupted {
		how = fmt.Sprintf("stopped after %s of %s", rr.Elapsed.Round(time.Second), rr.Planned)
	}
	fmt.Fprintf(w, "\nSummary, %s (%s):\n", rr.Name, how)
	fmt.Fprintf(w, "  %-16s %7s %6s %7s %11s %7s %7s %8s %7s %8s %13s\n",
		"upstream", "target", "calls", "ok", "met target", "p50", "p99", "refused", "failed", "dropped", "peak workers")
	for _, u := range rr.Upstreams {
		fmt.Fprintf(w, "  %-16s %7s %6d %6.1f%% %10.1f%% %7s %7s %8d %7d %8d %13d\n",
			u.Name, fmtMs(u.Target), u.Calls, u.OKShare(), u.MetShare(), fmtMs(u.P50), fmtMs(u.P99),
			u.Refused, u.Failed, u.Dropped, u.PeakWorkers)
	}
	fmt.Fprintf(w, "  app workers: at most %d of %d busy at once\n", rr.PeakBusy, rr.Workers)
	if rr.Composite != "" {
		fmt.Fprintf(w, "  %s\n", rr.Composite)
	}
}

// writeContrast prints the comparison of the two runs. The story is told
// only as far as the numbers bear it out: a run stopped before the slow
// upstream hung shows no contrast, and the text says so.
func writeContrast(w io.Writer, rep *Report) {
	iso, okIso := rep.Run("per-upstream")
	sh, okSh := rep.Run("shared")
	fmt.Fprintln(w)
	if !okIso || !okSh {
		fmt.Fprintln(w, "Stopped before the run with one shared pool: no contrast to show.")
		return
	}
	var healthy, bad []string
	for _, u := range iso.Upstreams {
		if u.Healthy {
			healthy = append(healthy, fmt.Sprintf("%s %.1f%% → %.1f%%", u.Name, u.MetShare(), sh.Upstream(u.Name).MetShare()))
		} else {
			bad = append(bad, u.Name)
		}
	}
	fmt.Fprintf(w, "Contrast: only %s misbehaved. The healthy upstreams met their latency target\n", strings.Join(bad, ", "))
	fmt.Fprintf(w, "in %.1f%% of calls with compartments and in %.1f%% with one shared pool (%s).\n",
		iso.HealthyMetShare(), sh.HealthyMetShare(), strings.Join(healthy, ", "))
	const noticeable = 5 // percentage points
	switch {
	case iso.HealthyMetShare()-sh.HealthyMetShare() >= noticeable:
		for _, name := range bad {
			fmt.Fprintf(w, "With one shared pool, %s held up to %d of the app's %d workers (%d with compartments),\n",
				name, sh.Upstream(name).PeakWorkers, sh.Workers, iso.Upstream(name).PeakWorkers)
		}
		fmt.Fprintln(w, "so calls to the healthy upstreams waited for a free worker and missed their target too.")
		refused := 0
		for _, name := range bad {
			refused += iso.Upstream(name).Refused
		}
		if refused > 0 {
			fmt.Fprintf(w, "With compartments, the sidecar refused at once the %d calls the slow upstream's own pool\n", refused)
			fmt.Fprintln(w, "could not take, so the app's workers stayed free for everything else.")
		}
	case sh.Interrupted:
		fmt.Fprintln(w, "The shared-pool run was stopped before the slow upstream could do its damage.")
	case iso.HealthyMetShare() < 90:
		fmt.Fprintln(w, "Even with compartments the healthy calls missed their target: the machine was too busy to")
		fmt.Fprintln(w, "keep up with the load, which hides the contrast. Try again on a quieter machine.")
	default:
		fmt.Fprintln(w, "This time the shared pool coped as well as the compartments: the app never ran out of")
		fmt.Fprintln(w, "workers, and compartments matter when it does.")
	}
	if iso.Interrupted || sh.Interrupted {
		fmt.Fprintln(w, "(The demo was stopped early: these numbers cover only part of a run.)")
	}
}

// fmtMs writes a latency in whole milliseconds (or "-" for none), which is
// all the precision the demo's story needs.
func fmtMs(d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	if d < time.Millisecond {
		return "<1ms"
	}
	return fmt.Sprintf("%dms", d.Milliseconds())
}
