// Package demo is `sidecar demo`: a self-contained demonstration of what
// compartments are for. In one process it starts three upstreams (one of
// which turns slow, then hangs), the sidecar on an embedded config, and an
// app with a fixed pool of workers calling all three through the sidecar.
// It runs the load twice, once with a pool per upstream and once with one
// pool for all, prints a live table each second and a summary of each run,
// and ends with the contrast.
package demo

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/watertight/watertight/config"
	"github.com/watertight/watertight/sidecar"
)

// DefaultDuration is the demo's length when Options.Duration is zero.
const DefaultDuration = 30 * time.Second

// MinDuration is the shortest demo that still tells the story: each run
// needs time for the slow upstream to go bad and for the effect to show.
const MinDuration = 4 * time.Second

// Options configure a demo.
type Options struct {
	// Duration is the whole demo: two runs of half each (default 30s).
	Duration time.Duration
	// Scale multiplies the load: the app's call rates and workers and the
	// sidecar's budget and queues, together, so the story is the same at
	// any scale (default 1: 300 calls/s, 48 workers, a budget of 60). Below
	// 1 it needs less CPU, for busy machines and tests; 0.25 to 4.
	Scale float64
	// Out receives the tables and summaries (default os.Stdout).
	Out    io.Writer
	Logger *slog.Logger
}

// settings is what every run of one demo shares.
type settings struct {
	out  io.Writer
	log  *slog.Logger
	load load
	run  time.Duration // the length of each run
}

// Run runs the demo until it ends or ctx is cancelled (Ctrl-C); either way it
// prints what it measured and returns nil. Errors are failures to set the
// demo up or to write its output.
func Run(ctx context.Context, o Options) error {
	_, err := RunWithReport(ctx, o)
	return err
}

// RunWithReport is Run that also returns the measurements.
func RunWithReport(ctx context.Context, o Options) (*Report, error) {
	if o.Duration == 0 {
		o.Duration = DefaultDuration
	}
	if o.Duration < MinDuration {
		return nil, fmt.Errorf("running the demo: a duration of %s is too short to show anything (at least %s)", o.Duration, MinDuration)
	}
	if o.Scale == 0 {
		o.Scale = 1
	}
	if o.Scale < 0.25 || o.Scale > 4 {
		return nil, fmt.Errorf("running the demo: a scale of %v is outside 0.25 to 4", o.Scale)
	}
	if o.Out == nil {
		o.Out = os.Stdout
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	out := &stickyWriter{w: o.Out}
	d := settings{out: out, log: o.Logger, load: newLoad(o.Scale), run: o.Duration / 2}
	d.writeIntro()

	runs := []struct{ name, isolation, what string }{
		{"compartments", config.IsolationPerUpstream, "a pool per upstream, sized by weight"},
		{"shared pool", config.IsolationShared, "the same load, every upstream in one pool of the whole budget"},
	}
	rep := &Report{}
	for i, r := range runs {
		if ctx.Err() != nil {
			break
		}
		fmt.Fprintf(out, "\n== Run %d of %d: %s (isolation: %s): %s ==\n", i+1, len(runs), r.name, r.isolation, r.what)
		rr, err := d.runOnce(ctx, r.name, r.isolation)
		if err != nil {
			return rep, err
		}
		rep.Runs = append(rep.Runs, rr)
		writeSummary(out, rr)
	}
	writeContrast(out, rep)
	if out.err != nil {
		return rep, fmt.Errorf("writing the demo's output: %w", out.err)
	}
	return rep, nil
}

// runOnce runs the load for one isolation mode on fresh upstreams and a
// fresh sidecar, printing the live table, and tears everything down.
func (d settings) runOnce(ctx context.Context, name, isolation string) (rr RunReport, err error) {
	out, log, run := d.out, d.log, d.run
	ups, err := startUpstreams(run, log)
	if err != nil {
		return rr, err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		closeUpstreams(cctx, ups)
	}()
	cfg, err := sidecarConfig(upstreamAddrs(ups), isolation, d.load.scale)
	if err != nil {
		return rr, err
	}
	sc, err := sidecar.Start(sidecar.Options{
		Config:       cfg,
		AdminAddress: "127.0.0.1:0",
		DrainTimeout: 2 * time.Second,
		Logger:       log,
	})
	if err != nil {
		return rr, fmt.Errorf("starting the demo's sidecar (%s): %w", isolation, err)
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if serr := sc.Shutdown(sctx); serr != nil {
			log.Warn("demo sidecar did not stop cleanly", "error", serr)
		}
	}()
	addr, ok := sc.Proxy().Addr(listenerName)
	if !ok {
		return rr, fmt.Errorf("starting the demo's sidecar: no listener named %q in the demo config", listenerName)
	}
	d.writePools(sc, addr.String(), isolation)
	fmt.Fprintln(out)
	writeTableHeader(out)

	a := newApp(scenario, d.load, addr.String(), log)
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	start := time.Now()
	for _, u := range ups {
		u.begin(start)
	}
	loadDone := make(chan struct{})
	go func() {
		defer close(loadDone)
		a.run(loadCtx, start)
	}()

	ticker := time.NewTicker(tick)
	defer ticker.Stop()
	end := time.NewTimer(run)
	defer end.Stop()
	lastTick := start
	steps := make([]int, len(scenario)) // the step each upstream was last shown in
	printTick := func(now time.Time) {
		at := now.Sub(start)
		var events []string
		for i := range scenario {
			if j, st := scenario[i].stepAt(at, run); j != steps[i] {
				steps[i] = j
				from := time.Duration(st.from * float64(run)).Round(100 * time.Millisecond)
				events = append(events, fmt.Sprintf("at %s %s %s", from, scenario[i].name, st.label))
			}
		}
		writeTableTick(out, tableTick{
			at: at, interval: now.Sub(lastTick), reading: a.rec.takeTick(),
			pools: sc.Proxy().Pools(), shared: isolation == config.IsolationShared,
			backlog: a.backlogLen(), load: d.load, events: events,
		})
		lastTick = now
	}
	interrupted := false
loop:
	for {
		select {
		case now := <-ticker.C:
			printTick(now)
		case <-end.C:
			break loop
		case <-ctx.Done():
			interrupted = true
			break loop
		}
	}
	elapsed := time.Since(start)
	// The last stretch gets its own line when it is long enough for its
	// rates to mean something.
	if now := time.Now(); now.Sub(lastTick) >= tick/2 {
		printTick(now)
	}
	stopLoad()
	<-loadDone
	rr = newRunReport(name, isolation, run, elapsed, d.load.workers, a.rec)
	rr.Interrupted = interrupted
	if !interrupted {
		// The load has stopped (so it is not counted); recommendations
		// still hangs.
		rr.Composite = probeComposite(ctx, addr.String())
	}
	return rr, nil
}

func (d settings) writeIntro() {
	w, run := d.out, d.run
	var rates, targets, ups []string
	for i, s := range scenario {
		rates = append(rates, fmt.Sprintf("%s %d/s", s.name, d.load.rates[i]))
		targets = append(targets, fmt.Sprintf("%s %s", s.name, fmtMs(s.target)))
		var b strings.Builder
		b.WriteString(s.name)
		for j, st := range s.steps {
			switch {
			case j == 0:
				b.WriteString(" " + st.label)
			default:
				fmt.Fprintf(&b, ", %s at %s", st.label, time.Duration(st.from*float64(run)).Round(100*time.Millisecond))
			}
		}
		ups = append(ups, b.String())
	}
	fmt.Fprintf(w, "Watertight demo: what one slow dependency does to an app, with and without compartments.\n\n")
	fmt.Fprintf(w, "  upstreams  %s\n", strings.Join(ups, "\n             "))
	fmt.Fprintf(w, "  app        %d workers shared by all outbound calls, %d calls/s (%s)\n", d.load.workers, d.load.total(), strings.Join(rates, ", "))
	fmt.Fprintf(w, "  target     a call meets it if it succeeds within %s of when it was due\n", strings.Join(targets, ", "))
	fmt.Fprintf(w, "  two runs of %s: with compartments, then with one shared pool. Ctrl-C stops early.\n\n", run)
	writeTableLegend(w)
}

// writePools says where the sidecar listens and how its pools are sized.
func (d settings) writePools(sc *sidecar.Sidecar, addr, isolation string) {
	w := d.out
	cfg := sc.Proxy().Config()
	pools := sc.Proxy().Pools()
	fmt.Fprintf(w, "sidecar on %s, metrics on http://%s/metrics\n", addr, sc.AdminAddr())
	if isolation == config.IsolationShared && len(pools) > 0 {
		st := pools[0].Stats
		fmt.Fprintf(w, "one pool for all upstreams: %d slots, queue %d (the budget of %d is larger than the app's %d workers,\n"+
			"so this pool never fills: the app runs out of workers first)\n", st.Limit, st.QueueCapacity, cfg.Budget, d.load.workers)
		return
	}
	parts := make([]string, 0, len(pools))
	for _, p := range pools {
		u := cfg.Upstream(p.Upstream)
		wait := ""
		if u != nil {
			wait = fmt.Sprintf(", wait ≤%s, timeout %s", u.Bulkhead.MaxWait.Duration, u.Timeout.Duration)
		}
		parts = append(parts, fmt.Sprintf("%s %d slots (queue %d%s)", p.Upstream, p.Stats.Limit, p.Stats.QueueCapacity, wait))
	}
	fmt.Fprintf(w, "pools from a budget of %d: %s\n", cfg.Budget, strings.Join(parts, "; "))
}

// stickyWriter keeps the first write error, so that printing needs no error
// check on every line and the demo still reports a broken output.
type stickyWriter struct {
	w   io.Writer
	err error
}

func (s *stickyWriter) Write(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	n, err := s.w.Write(p)
	if err != nil {
		s.err = err
	}
	return n, err
}
