package proxy

import (
	"io"
	"net/http"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/watertight/watertight/config"
)

// TestIsolationSlowUpstreamCannotStarveOthers is the project's reason to
// exist: upstream S hangs and is flooded; upstream F keeps answering every
// request at its normal latency, and S's excess is refused fast.
func TestIsolationSlowUpstreamCannotStarveOthers(t *testing.T) {
	slow := newGate()
	defer slow.open()
	fastAddr := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "fast")
	}))
	cfg := &config.Config{
		Budget:    64,
		Listeners: proxyListener(),
		Upstreams: []config.Upstream{
			upstreamCfg("slow", startUpstream(t, slow), config.Bulkhead{MaxConcurrent: 4, MaxQueue: 4, MaxWait: config.D(300 * time.Millisecond)}),
			upstreamCfg("fast", fastAddr, config.Bulkhead{Weight: 1}),
		},
	}
	cfg.Upstreams[0].Timeout = config.D(10 * time.Second) // S would hold callers this long
	p := startProxy(t, cfg)
	base := p.url(t, "out")
	c := client(false)

	// Baseline latency of F before the flood.
	latencies := func(n int) []time.Duration {
		out := make([]time.Duration, n)
		for i := range out {
			start := time.Now()
			resp, body := get(t, c, base, "fast", "/")
			out[i] = time.Since(start)
			if resp.StatusCode != 200 || body != "fast" {
				t.Fatalf("fast upstream: %d %q", resp.StatusCode, body)
			}
		}
		sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
		return out
	}
	before := latencies(200)

	// Flood S with 40 concurrent callers.
	type outcome struct {
		status int
		reason string
		took   time.Duration
	}
	results := make(chan outcome, 40)
	var wg sync.WaitGroup
	for range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			req, _ := http.NewRequest("GET", base+"/", nil)
			req.Host = "slow"
			resp, err := c.Do(req)
			if err != nil {
				t.Errorf("slow caller: %v", err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			results <- outcome{resp.StatusCode, resp.Header.Get(HeaderReason), time.Since(start)}
		}()
	}
	eventually(t, "S's pool to fill", func() bool { return p.pool("slow").Active == 4 })

	// F is untouched: every request succeeds, at its normal latency.
	during := latencies(200)
	p99 := func(d []time.Duration) time.Duration { return d[len(d)*99/100] }
	if limit := max(10*p99(before), 50*time.Millisecond); p99(during) > limit {
		t.Errorf("fast upstream p99 %v while S is flooded (before: %v); want under %v", p99(during), p99(before), limit)
	}

	// S's excess is refused long before S's 10s timeout: at once when the
	// queue is full (bulkhead_full), after maxWait when it had room
	// (queue_timeout). How many find room depends on when the callers
	// arrive: at least the 4 first, more if some come after a wait ended.
	refused := map[string]int{}
	for range 36 {
		o := <-results
		if o.status != http.StatusServiceUnavailable {
			t.Fatalf("S excess got %d, want 503", o.status)
		}
		if o.took > 2*time.Second {
			t.Errorf("S excess took %v to be refused (%s)", o.took, o.reason)
		}
		refused[o.reason]++
	}
	if refused["bulkhead_full"]+refused["queue_timeout"] != 36 || refused["queue_timeout"] < 4 || refused["bulkhead_full"] < 20 {
		t.Errorf("refusals by reason = %v, want 36 of bulkhead_full and queue_timeout, most of them bulkhead_full, at least 4 queue_timeout", refused)
	}
	if st := p.pool("slow"); st.Active != 4 || st.Queued != 0 {
		t.Errorf("S's pool = %+v, want 4 active, none queued", st)
	}
	if st := p.pool("fast"); st.Active != 0 {
		t.Errorf("F's pool holds %d slots after its requests ended", st.Active)
	}
	slow.open()
	wg.Wait()
	close(results)
	for o := range results {
		if o.status != 200 {
			t.Errorf("an admitted S request ended %d", o.status)
		}
	}
	if got := p.count(t, "slow", "bulkhead_full"); got != float64(refused["bulkhead_full"]) {
		t.Errorf("metric bulkhead_full = %v, want %d", got, refused["bulkhead_full"])
	}
	if got := p.count(t, "slow", "queue_timeout"); got != float64(refused["queue_timeout"]) {
		t.Errorf("metric queue_timeout = %v, want %d", got, refused["queue_timeout"])
	}
	if got := p.count(t, "fast", "ok"); got != 400 {
		t.Errorf("metric fast ok = %v, want 400", got)
	}
}

// TestSharedPoolIsWhatCompartmentsPrevent shows the failure mode DESIGN.md
// exists for: with one shared pool, a flooded slow upstream takes every slot
// and the fast upstream is refused too.
func TestSharedPoolIsWhatCompartmentsPrevent(t *testing.T) {
	slow := newGate()
	defer slow.open()
	cfg := &config.Config{
		Budget:    8,
		Isolation: config.IsolationShared,
		Listeners: proxyListener(),
		Upstreams: []config.Upstream{
			upstreamCfg("slow", startUpstream(t, slow), config.Bulkhead{}),
			upstreamCfg("fast", startUpstream(t, http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})), config.Bulkhead{}),
		},
	}
	p := startProxy(t, cfg)
	base := p.url(t, "out")
	c := client(false)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, _ := get(t, c, base, "slow", "/")
			if resp.StatusCode != 200 {
				t.Errorf("slow: %d", resp.StatusCode)
			}
		}()
	}
	eventually(t, "the shared pool to fill", func() bool { return p.pool("slow").Active == 8 })
	resp, _ := get(t, c, base, "fast", "/")
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get(HeaderReason) != "bulkhead_full" {
		t.Errorf("fast upstream in a shared pool: %d %q, want 503 bulkhead_full", resp.StatusCode, resp.Header.Get(HeaderReason))
	}
	if st := p.pool("fast"); st.Limit != 8 || st.Active != 0 {
		t.Errorf("fast's view of the shared pool: %+v", st)
	}
	slow.open()
	wg.Wait()
}
