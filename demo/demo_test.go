package demo

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/watertight/watertight/config"
	"github.com/watertight/watertight/sidecar"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// The demo's claim, measured: with compartments the healthy upstreams keep
// meeting their latency target while recommendations hangs; with one shared
// pool the app's workers pile up on recommendations and the healthy calls
// miss their target too.
//
// CI machines are small and busy and -race slows everything down, so the
// test runs the scenario at half scale (same story, half the CPU) and the
// thresholds leave wide margins. Measured under -race on a 2-core machine
// with a load average of 6 from other jobs: the healthy share was 94-100%
// with compartments and 53-66% with one pool. The shared-pool number is
// mechanical (the workers run out ~0.6s after the hang, then every healthy
// call waits), so noise only lowers it.
//
// What no threshold survives is the host not running the process at all:
// about one run in ten there, a stall of most of a second (catalog, a 5ms
// upstream, hitting the sidecar's 200ms timeout) sank the compartments run
// too. So the latency contrast gets up to three attempts, each failure
// logged with its output; the mechanical checks must hold on every attempt.
// A real loss of isolation fails every attempt: it turns the compartments
// run into the shared one.
func TestCompartmentsKeepHealthyUpstreamsOnTarget(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the demo for 10s or more")
	}
	const attempts = 3
	for attempt := 1; ; attempt++ {
		var out bytes.Buffer
		rep, err := RunWithReport(t.Context(), Options{Duration: 10 * time.Second, Scale: 0.5, Out: &out, Logger: quietLogger()})
		if err != nil {
			t.Fatalf("RunWithReport: %v", err)
		}
		checkMechanics(t, rep, out.String())
		if t.Failed() {
			t.Logf("demo output:\n%s", out.String())
			return
		}
		problems := contrastProblems(rep, out.String())
		if len(problems) == 0 {
			if attempt > 1 {
				t.Logf("the contrast showed on attempt %d", attempt)
			}
			return
		}
		if attempt == attempts {
			t.Errorf("no contrast in %d attempts; the last one:\n  %s\ndemo output:\n%s",
				attempts, strings.Join(problems, "\n  "), out.String())
			return
		}
		t.Logf("attempt %d of %d showed no contrast (a starved host, if the next attempt shows it):\n  %s\ndemo output:\n%s",
			attempt, attempts, strings.Join(problems, "\n  "), out.String())
	}
}

// checkMechanics asserts what follows from the scenario's arithmetic and
// must hold however busy the machine is.
func checkMechanics(t *testing.T, rep *Report, text string) {
	t.Helper()
	iso, ok := rep.Run(config.IsolationPerUpstream)
	if !ok {
		t.Fatal("no compartments run in the report")
	}
	sh, ok := rep.Run(config.IsolationShared)
	if !ok {
		t.Fatal("no shared-pool run in the report")
	}
	for _, rr := range []RunReport{iso, sh} {
		if rr.Interrupted {
			t.Errorf("%s run reported as interrupted", rr.Name)
		}
		// The composite's core comes first; the hung recommendations
		// arrive when the deadline cuts them off, failed.
		if c := rr.Composite; !strings.Contains(c, "multi-segment: core (item, price) after") ||
			!strings.Contains(c, "recs after") || !strings.Contains(c, "(failed") || !strings.Contains(c, "3 segments") ||
			!strings.Contains(text, c) {
			t.Errorf("%s run: composite probe %q", rr.Name, c)
		}
		for _, u := range rr.Upstreams {
			// Calls are due by the clock, busy machine or not; at most
			// workers + backlog (72) are cut off by the end of the run.
			if u.Calls < scaled(3*rateOf(t, u.Name), 0.5) {
				t.Errorf("%s run: only %d calls to %s", rr.Name, u.Calls, u.Name)
			}
			if u.Calls != u.OK+u.Refused+u.Failed+u.Dropped {
				t.Errorf("%s run, %s: %d calls but %d ok + %d refused + %d failed + %d dropped",
					rr.Name, u.Name, u.Calls, u.OK, u.Refused, u.Failed, u.Dropped)
			}
		}
	}
	// The hung recommendations fills its compartment, and the sidecar
	// refuses the rest.
	if iso.Upstream("recommendations").Refused == 0 {
		t.Error("compartments: the sidecar never refused a call to the hung recommendations")
	}
	// Without compartments nothing stops it: it takes the app's workers
	// (the shared pool, larger than the app's worker pool, never refuses).
	if shRec := sh.Upstream("recommendations"); shRec.PeakWorkers < sh.Workers*3/4 {
		t.Errorf("shared pool: recommendations held at most %d of %d app workers; the scenario should exhaust them",
			shRec.PeakWorkers, sh.Workers)
	}
	for _, u := range sh.Upstreams {
		if u.Refused != 0 {
			t.Errorf("shared pool: the sidecar refused %d calls to %s, but its one pool is larger than the app's workers", u.Refused, u.Name)
		}
	}
	for _, want := range []string{
		"upstream           ok/s refused/s failed/s active/limit  queued      p99  met target",
		"recommendations hangs",
		"Summary, compartments (5s)",
		"Summary, shared pool (5s)",
		"met target",
		"peak workers",
		"Contrast: only recommendations misbehaved.",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q", want)
		}
	}
}

// contrastProblems lists where the run failed to show the contrast.
func contrastProblems(rep *Report, text string) []string {
	iso, _ := rep.Run(config.IsolationPerUpstream)
	sh, _ := rep.Run(config.IsolationShared)
	var problems []string
	for _, name := range []string{"catalog", "pricing"} {
		if got := iso.Upstream(name).MetShare(); got < 80 {
			problems = append(problems, fmt.Sprintf("compartments: %s met its target in %.1f%% of calls, want at least 80%%", name, got))
		}
	}
	isoShare, shShare := iso.HealthyMetShare(), sh.HealthyMetShare()
	if isoShare < 85 {
		problems = append(problems, fmt.Sprintf("compartments: the healthy upstreams met their target in %.1f%% of calls, want at least 85%%", isoShare))
	}
	if shShare > 80 || isoShare-shShare < 15 {
		problems = append(problems, fmt.Sprintf("healthy upstreams met their target in %.1f%% of calls with compartments and %.1f%% with one shared pool; "+
			"want the shared pool at most 80%% and at least 15 points worse", isoShare, shShare))
	}
	// Its compartment bounds what recommendations holds of the app.
	if rec := iso.Upstream("recommendations"); rec.PeakWorkers >= iso.Workers {
		problems = append(problems, fmt.Sprintf("compartments: recommendations held all %d app workers at once", rec.PeakWorkers))
	}
	if !strings.Contains(text, "held up to") {
		problems = append(problems, "the contrast paragraph does not tell the story")
	}
	return problems
}

func rateOf(t *testing.T, name string) int {
	t.Helper()
	for _, s := range scenario {
		if s.name == name {
			return s.rate
		}
	}
	t.Fatalf("no upstream %q in the scenario", name)
	return 0
}

// cancelOnWrite cancels a context the first time the output contains marker:
// the test stops the demo at a point of its story, not after a guessed delay.
type cancelOnWrite struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	marker string
	cancel context.CancelFunc
}

func (c *cancelOnWrite) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, err := c.buf.Write(p)
	if strings.Contains(c.buf.String(), c.marker) {
		c.cancel()
	}
	return n, err
}

func (c *cancelOnWrite) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

// Ctrl-C during the first run: the demo stops at once, still prints what it
// measured, returns nil, and leaves nothing running (goleak checks).
func TestCancelStopsEarlyAndReports(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	out := &cancelOnWrite{marker: "workers busy", cancel: cancel} // the first tick of the table
	start := time.Now()
	rep, err := RunWithReport(ctx, Options{Duration: time.Minute, Out: out, Logger: quietLogger()})
	if err != nil {
		t.Fatalf("RunWithReport after cancel: %v, want nil", err)
	}
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("the demo took %s to stop after cancel", took)
	}
	if len(rep.Runs) != 1 || !rep.Runs[0].Interrupted {
		t.Fatalf("report = %+v, want one interrupted run", rep.Runs)
	}
	if rep.Runs[0].Upstream("catalog").Calls == 0 {
		t.Error("the interrupted run counted no calls")
	}
	text := out.String()
	for _, want := range []string{"Summary, compartments (stopped after", "no contrast to show"} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "== Run 2") {
		t.Error("the second run started after cancel")
	}
}

func TestRejectsBadOptions(t *testing.T) {
	for _, tc := range []struct {
		o    Options
		want string
	}{
		{Options{Duration: time.Second}, "too short"},
		{Options{Scale: 0.1}, "outside 0.25 to 4"},
		{Options{Scale: -1}, "outside 0.25 to 4"},
	} {
		tc.o.Out, tc.o.Logger = io.Discard, quietLogger()
		if err := Run(t.Context(), tc.o); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Run(%+v): got %v, want an error saying %q", tc.o, err, tc.want)
		}
	}
}

// The embedded config sizes the pools as the demo's story needs (the weights
// favour the slow-but-acceptable pricing) and routes each Host to its
// upstream; shared isolation puts everyone in one pool of the whole budget.
func TestEmbeddedConfigPoolsAndRoutes(t *testing.T) {
	ups, err := startUpstreams(time.Minute, quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer closeUpstreams(context.Background(), ups)
	for _, tc := range []struct {
		isolation string
		scale     float64
		limits    []int
		queues    []int
	}{
		{config.IsolationPerUpstream, 1, []int{10, 30, 20}, []int{10, 10, 5}},
		{config.IsolationShared, 1, []int{60, 60, 60}, []int{25, 25, 25}},
		{config.IsolationPerUpstream, 0.5, []int{5, 15, 10}, []int{5, 5, 3}},
		{config.IsolationShared, 0.5, []int{30, 30, 30}, []int{13, 13, 13}},
	} {
		t.Run(fmt.Sprintf("%s×%v", tc.isolation, tc.scale), func(t *testing.T) {
			cfg, err := sidecarConfig(upstreamAddrs(ups), tc.isolation, tc.scale)
			if err != nil {
				t.Fatal(err)
			}
			sc, err := sidecar.Start(sidecar.Options{Config: cfg, AdminAddress: "127.0.0.1:0", Logger: quietLogger()})
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				if err := sc.Shutdown(context.Background()); err != nil {
					t.Errorf("shutdown: %v", err)
				}
			}()
			pools := sc.Proxy().Pools()
			if len(pools) != len(tc.limits) {
				t.Fatalf("%d pools, want %d", len(pools), len(tc.limits))
			}
			for i, p := range pools {
				if p.Upstream != scenario[i].name || p.Stats.Limit != tc.limits[i] || p.Stats.QueueCapacity != tc.queues[i] {
					t.Errorf("pool %d = %s limit %d queue %d, want %s limit %d queue %d", i,
						p.Upstream, p.Stats.Limit, p.Stats.QueueCapacity, scenario[i].name, tc.limits[i], tc.queues[i])
				}
			}
			addr, ok := sc.Proxy().Addr(listenerName)
			if !ok {
				t.Fatalf("no listener %q", listenerName)
			}
			client := &http.Client{Transport: &http.Transport{}, Timeout: 5 * time.Second}
			defer client.CloseIdleConnections()
			for _, s := range scenario {
				req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+addr.String()+"/", nil)
				if err != nil {
					t.Fatal(err)
				}
				req.Host = s.name
				resp, err := client.Do(req)
				if err != nil {
					t.Fatalf("GET via the sidecar with Host %s: %v", s.name, err)
				}
				body, _ := io.ReadAll(resp.Body)
				_ = resp.Body.Close()
				if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"upstream":"`+s.name+`"`) {
					t.Errorf("Host %s: %d %q, want 200 from that upstream", s.name, resp.StatusCode, body)
				}
			}
		})
	}
}

func TestMissingEndpointIsAnError(t *testing.T) {
	_, err := sidecarConfig(map[string]string{"catalog": "127.0.0.1:1"}, config.IsolationPerUpstream, 1)
	if err == nil || !strings.Contains(err.Error(), "pricing, recommendations") {
		t.Fatalf("got %v, want an error naming pricing and recommendations", err)
	}
}

func TestRecommendationsTimeline(t *testing.T) {
	rec := &scenario[2]
	run := 9 * time.Second
	for _, tc := range []struct {
		at       time.Duration
		slow     bool
		hang     bool
		wantStep int
	}{
		{0, false, false, 0},
		{2900 * time.Millisecond, false, false, 0},
		{3 * time.Second, true, false, 1},
		{4400 * time.Millisecond, true, false, 1},
		{4500 * time.Millisecond, false, true, 2},
		{9 * time.Second, false, true, 2},
	} {
		i, st := rec.stepAt(tc.at, run)
		if i != tc.wantStep || st.hang != tc.hang || (st.latency >= 300*time.Millisecond) != tc.slow {
			t.Errorf("at %s: step %d %+v, want step %d", tc.at, i, st, tc.wantStep)
		}
	}
}

func TestPercentile(t *testing.T) {
	ms := func(ns ...int) []time.Duration {
		ds := make([]time.Duration, len(ns))
		for i, n := range ns {
			ds[i] = time.Duration(n) * time.Millisecond
		}
		return ds
	}
	for _, tc := range []struct {
		in   []time.Duration
		q    float64
		want time.Duration
	}{
		{nil, 0.99, 0},
		{ms(7), 0.5, 7 * time.Millisecond},
		{ms(5, 1, 4, 2, 3), 0.5, 3 * time.Millisecond},
		{ms(5, 1, 4, 2, 3), 0.99, 5 * time.Millisecond},
		{ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 0.9, 9 * time.Millisecond},
	} {
		if got := percentileOf(tc.in, tc.q); got != tc.want {
			t.Errorf("percentileOf(%v, %v) = %v, want %v", tc.in, tc.q, got, tc.want)
		}
	}
}
