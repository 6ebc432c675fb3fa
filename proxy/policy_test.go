package proxy

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/watertight/watertight/config"
)

// switchable answers with the status it is set to, after an optional delay,
// and counts the requests that reached it.
type switchable struct {
	status atomic.Int32
	delay  atomic.Int64
	hits   atomic.Int64
}

func newSwitchable(status int) *switchable {
	s := &switchable{}
	s.status.Store(int32(status))
	return s
}

func (s *switchable) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.hits.Add(1)
	if d := time.Duration(s.delay.Load()); d > 0 {
		select {
		case <-time.After(d):
		case <-r.Context().Done():
			return
		}
	}
	w.WriteHeader(int(s.status.Load()))
	_, _ = io.WriteString(w, "from upstream")
}

func circuit(t *testing.T, p *testProxy, upstream, state string) float64 {
	t.Helper()
	m := findMetric(t, p.reg, "watertight_circuit_state", map[string]string{"upstream": upstream, "state": state})
	if m == nil {
		t.Fatalf("no watertight_circuit_state{upstream=%q,state=%q}", upstream, state)
	}
	return m.GetGauge().GetValue()
}

func TestBreakerCountsOnlySystemFailures(t *testing.T) {
	up := newSwitchable(http.StatusNotFound)
	u := upstreamCfg("u", startUpstream(t, up), config.Bulkhead{})
	u.CircuitBreaker = &config.CircuitBreaker{FailureRate: 0.5, MinRequests: 10, Window: config.D(time.Minute),
		OpenFor: config.D(300 * time.Millisecond), HalfOpenRequests: 2}
	p := startProxy(t, &config.Config{Listeners: proxyListener(), Upstreams: []config.Upstream{u}})
	c, base := client(false), p.url(t, "out")

	// Business errors: 40 404s leave it closed, every one reaches the app.
	for range 40 {
		if resp, _ := get(t, c, base, "u", "/"); resp.StatusCode != 404 {
			t.Fatalf("404 became %d", resp.StatusCode)
		}
	}
	if circuit(t, p, "u", "closed") != 1 {
		t.Fatal("404s opened the breaker")
	}

	// System failures: once 503s are half of the window, it opens.
	up.status.Store(http.StatusServiceUnavailable)
	for range 40 {
		get(t, c, base, "u", "/")
	}
	if circuit(t, p, "u", "open") != 1 {
		t.Fatal("40 503s after 40 404s did not open the breaker")
	}
	hits := up.hits.Load()
	start := time.Now()
	resp, body := get(t, c, base, "u", "/")
	if resp.StatusCode != 503 || resp.Header.Get(HeaderReason) != "circuit_open" || !strings.Contains(body, "circuit breaker is open") {
		t.Fatalf("open breaker: %d %q %q", resp.StatusCode, resp.Header.Get(HeaderReason), body)
	}
	if up.hits.Load() != hits {
		t.Fatal("an open breaker let a request reach the upstream")
	}
	t.Logf("rejected in %v (client round trip included)", time.Since(start))
	if p.count(t, "u", "circuit_open") != 1 {
		t.Fatal("circuit_open not counted")
	}

	// After openFor, half-open: a failed probe re-opens it.
	eventually(t, "half-open probes", func() bool {
		resp, _ := get(t, c, base, "u", "/")
		return resp.Header.Get(HeaderReason) != "circuit_open"
	})
	if circuit(t, p, "u", "open") != 1 {
		t.Fatal("a failed probe did not re-open the breaker")
	}
	// The upstream recovers: two good probes close it.
	up.status.Store(http.StatusOK)
	eventually(t, "the breaker to close", func() bool {
		get(t, c, base, "u", "/")
		return circuit(t, p, "u", "closed") == 1
	})
	for range 20 {
		if resp, _ := get(t, c, base, "u", "/"); resp.StatusCode != 200 {
			t.Fatalf("closed breaker: %d", resp.StatusCode)
		}
	}
}

func TestSlowCallBreakerOpensOnSlowSuccesses(t *testing.T) {
	up := newSwitchable(http.StatusOK)
	up.delay.Store(int64(60 * time.Millisecond))
	u := upstreamCfg("u", startUpstream(t, up), config.Bulkhead{})
	u.CircuitBreaker = &config.CircuitBreaker{SlowCall: config.D(30 * time.Millisecond), SlowCallRate: 0.8,
		MinRequests: 5, Window: config.D(time.Minute), OpenFor: config.D(time.Hour)}
	p := startProxy(t, &config.Config{Listeners: proxyListener(), Upstreams: []config.Upstream{u}})
	c, base := client(false), p.url(t, "out")
	for i := range 5 {
		if resp, _ := get(t, c, base, "u", "/"); resp.StatusCode != 200 {
			t.Fatalf("call %d: %d", i, resp.StatusCode)
		}
	}
	resp, _ := get(t, c, base, "u", "/")
	if resp.Header.Get(HeaderReason) != "circuit_open" {
		t.Fatalf("after 5 slow 200s: %d %q, want circuit_open", resp.StatusCode, resp.Header.Get(HeaderReason))
	}
	if p.count(t, "u", "ok") != 5 || p.count(t, "u", "upstream_error") != 0 {
		t.Fatal("slow successes were counted as errors")
	}
}

// TestLimitWarmsUpAfterTheBreakerCloses: a recovered upstream gets a small
// pool that grows to its full limit over warmup.
func TestLimitWarmsUpAfterTheBreakerCloses(t *testing.T) {
	up := newSwitchable(http.StatusInternalServerError)
	u := upstreamCfg("u", startUpstream(t, up), config.Bulkhead{MaxConcurrent: 40})
	u.CircuitBreaker = &config.CircuitBreaker{ConsecutiveFailures: 1, OpenFor: config.D(50 * time.Millisecond), HalfOpenRequests: 1}
	u.Warmup = config.D(time.Second)
	p := startProxy(t, &config.Config{Budget: 40, Listeners: proxyListener(), Upstreams: []config.Upstream{u}})
	c, base := client(false), p.url(t, "out")
	get(t, c, base, "u", "/")
	up.status.Store(http.StatusOK)
	eventually(t, "the breaker to close", func() bool {
		get(t, c, base, "u", "/")
		return circuit(t, p, "u", "closed") == 1
	})
	get(t, c, base, "u", "/")
	if l := p.pool("u").Limit; l >= 40 || l < 4 {
		t.Fatalf("limit just after closing = %d, want between 10%% and less than the full 40", l)
	}
	eventually(t, "the full limit", func() bool {
		get(t, c, base, "u", "/")
		return p.pool("u").Limit == 40
	})
}

func TestOutlierDetectionEjectsTheBadEndpoint(t *testing.T) {
	var counts [3]atomic.Int64
	var eps []config.Endpoint
	for i := range 3 {
		status := 200
		if i == 2 {
			status = 500
		}
		eps = append(eps, config.Endpoint{Address: startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			counts[i].Add(1)
			w.WriteHeader(status)
		}))})
	}
	u := config.Upstream{Name: "u", Endpoints: eps, LoadBalancer: config.LBRoundRobin,
		OutlierDetection: &config.OutlierDetection{ConsecutiveFailures: 3, BaseEjectionTime: config.D(400 * time.Millisecond), MaxEjectionPercent: 50}}
	p := startProxy(t, &config.Config{Listeners: proxyListener(), Upstreams: []config.Upstream{u}})
	c, base := client(false), p.url(t, "out")
	for range 9 { // three rounds: the bad endpoint fails three times
		get(t, c, base, "u", "/")
	}
	bad := eps[2].Address
	ejected := func() float64 {
		m := findMetric(t, p.reg, "watertight_endpoint_ejected", map[string]string{"upstream": "u", "endpoint": bad})
		if m == nil {
			t.Fatal("no watertight_endpoint_ejected for the bad endpoint")
		}
		return m.GetGauge().GetValue()
	}
	if ejected() != 1 {
		t.Fatal("three failures in a row did not eject the endpoint")
	}
	before := counts[2].Load()
	for range 30 {
		if resp, _ := get(t, c, base, "u", "/"); resp.StatusCode != 200 {
			t.Fatalf("request went to the ejected endpoint: %d", resp.StatusCode)
		}
	}
	if counts[2].Load() != before {
		t.Fatal("the ejected endpoint got traffic")
	}
	if counts[0].Load() < 15 || counts[1].Load() < 15 {
		t.Errorf("traffic did not move to both good endpoints: %d, %d", counts[0].Load(), counts[1].Load())
	}
	// It comes back by itself.
	eventually(t, "the endpoint to return", func() bool {
		get(t, c, base, "u", "/")
		return counts[2].Load() > before
	})
	// A good endpoint is never ejected alongside it past 50%: 1 of 3 is the most.
	for _, e := range eps[:2] {
		if m := findMetric(t, p.reg, "watertight_endpoint_ejected", map[string]string{"upstream": "u", "endpoint": e.Address}); m.GetGauge().GetValue() != 0 {
			t.Errorf("good endpoint %s ejected", e.Address)
		}
	}
}

// flaky resets every other connection-level request, and records bodies.
type flaky struct {
	hits   atomic.Int64
	mu     sync.Mutex
	bodies []string
}

func (f *flaky) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := f.hits.Add(1)
	b, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	f.bodies = append(f.bodies, string(b))
	f.mu.Unlock()
	if n%2 == 1 {
		if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
			conn.Close() // a reset: no answer at all
		}
		return
	}
	_, _ = io.WriteString(w, "ok")
}

func TestRetries(t *testing.T) {
	retry := &config.Retry{Attempts: 2, On: []string{"reset"}, BufferLimit: 1024,
		Backoff: config.Backoff{Base: config.D(time.Millisecond), Max: config.D(5 * time.Millisecond)}}
	f := &flaky{}
	u := upstreamCfg("u", startUpstream(t, f), config.Bulkhead{})
	u.Protocol = config.ProtocolHTTP1
	u.Retry = retry
	p := startProxy(t, &config.Config{Listeners: proxyListener(), Upstreams: []config.Upstream{u}})
	c, base := client(false), p.url(t, "out")

	t.Run("an idempotent request recovers from a reset", func(t *testing.T) {
		f.hits.Store(0)
		resp, body := get(t, c, base, "u", "/")
		if resp.StatusCode != 200 || body != "ok" || f.hits.Load() != 2 {
			t.Fatalf("%d %q after %d upstream attempts, want 200 after 2", resp.StatusCode, body, f.hits.Load())
		}
	})
	post := func(body string, length int64) (*http.Response, string) {
		req, _ := http.NewRequest("POST", base+"/", strings.NewReader(body))
		req.Host = "u"
		req.ContentLength = length
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, string(b)
	}
	t.Run("a POST whose body is buffered is retried whole", func(t *testing.T) {
		f.hits.Store(0)
		f.bodies = nil
		body := strings.Repeat("x", 700)
		resp, _ := post(body, -1) // chunked: the sidecar keeps what it reads
		if resp.StatusCode != 200 || f.hits.Load() != 2 {
			t.Fatalf("%d after %d attempts", resp.StatusCode, f.hits.Load())
		}
		if f.bodies[1] != body {
			t.Fatalf("the retry sent %d bytes, want the whole %d", len(f.bodies[1]), len(body))
		}
	})
	t.Run("a POST too large to buffer is never retried", func(t *testing.T) {
		f.hits.Store(0)
		body := strings.Repeat("y", 4096)
		resp, _ := post(body, int64(len(body)))
		if resp.StatusCode != http.StatusBadGateway || resp.Header.Get(HeaderReason) != "upstream_error" || f.hits.Load() != 1 {
			t.Fatalf("%d %q after %d attempts, want 502 upstream_error after 1", resp.StatusCode, resp.Header.Get(HeaderReason), f.hits.Load())
		}
		f.hits.Store(0)
		resp, _ = post(body, -1) // the same, chunked: it overflows the buffer as it streams
		if resp.StatusCode != http.StatusBadGateway || f.hits.Load() != 1 {
			t.Fatalf("chunked: %d after %d attempts, want 502 after 1", resp.StatusCode, f.hits.Load())
		}
	})
	if got := findMetric(t, p.reg, "watertight_retries_total", map[string]string{"upstream": "u"}).GetCounter().GetValue(); got != 2 {
		t.Errorf("watertight_retries_total = %v, want 2", got)
	}
}

// TestRetryBudgetStopsRetryStorms: with the upstream down, concurrent
// requests retry only as far as the budget allows, not attempts times over.
func TestRetryBudgetStopsRetryStorms(t *testing.T) {
	down := newSwitchable(http.StatusServiceUnavailable)
	down.delay.Store(int64(100 * time.Millisecond)) // so the requests overlap
	u := upstreamCfg("u", startUpstream(t, down), config.Bulkhead{})
	u.Retry = &config.Retry{Attempts: 3, On: []string{"503"}, Budget: 0.2,
		Backoff: config.Backoff{Base: config.D(time.Millisecond), Max: config.D(2 * time.Millisecond)}}
	p := startProxy(t, &config.Config{Listeners: proxyListener(), Upstreams: []config.Upstream{u}})
	c, base := client(false), p.url(t, "out")
	const n = 40
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if resp, _ := get(t, c, base, "u", "/"); resp.StatusCode != 503 {
				t.Errorf("status %d, want the upstream's 503", resp.StatusCode)
			}
		}()
	}
	wg.Wait()
	hits := down.hits.Load()
	retries := findMetric(t, p.reg, "watertight_retries_total", map[string]string{"upstream": "u"}).GetCounter().GetValue()
	t.Logf("%d requests: %d upstream attempts, %v retries", n, hits, retries)
	if hits-n != int64(retries) {
		t.Errorf("attempts %d - requests %d != retries counted %v", hits, n, retries)
	}
	// Unbudgeted, 40 requests would make 160 attempts. The budget allows
	// 20% of what is in flight (at least 3) to be retries.
	if hits > n+n/2 {
		t.Errorf("%d attempts for %d requests: the budget did not hold retries back", hits, n)
	}
	if retries == 0 {
		t.Error("no retries at all: the budget's minimum of 3 allows some")
	}
}

func TestRateLimitHoldsTheRate(t *testing.T) {
	u := upstreamCfg("u", startUpstream(t, newSwitchable(200)), config.Bulkhead{})
	// A burst of 10 (a tenth of a second) absorbs the scheduling gaps of a
	// busy machine, when no request happens to ask as a token arrives.
	u.RateLimit = &config.RateLimit{RPS: 100, Burst: 10}
	p := startProxy(t, &config.Config{Listeners: proxyListener(), Upstreams: []config.Upstream{u}})
	c, base := client(false), p.url(t, "out")
	var ok, limited atomic.Int64
	start := time.Now()
	stop := start.Add(2 * time.Second)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) {
				resp, _ := get(t, c, base, "u", "/")
				switch {
				case resp.StatusCode == 200:
					ok.Add(1)
				case resp.StatusCode == 429 && resp.Header.Get(HeaderReason) == "rate_limited":
					limited.Add(1)
				default:
					t.Errorf("status %d", resp.StatusCode)
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	want := 100*elapsed + 10
	got := float64(ok.Load())
	t.Logf("%v admitted in %.2fs (%v limited); expected %.0f", got, elapsed, limited.Load(), want)
	if got < want*0.9 || got > want*1.1 {
		t.Fatalf("admitted %v in %.2fs, want %.0f ±10%%", got, elapsed, want)
	}
	if limited.Load() == 0 {
		t.Fatal("nothing was limited: the test did not press hard enough")
	}
}

// TestFallbacksPerCause: every cause serves its own configured answer.
func TestFallbacksPerCause(t *testing.T) {
	hold := newGate()
	defer hold.open()
	fb := func(cause string) config.Fallbacks {
		return config.Fallbacks{{On: []string{cause}, Status: 200,
			Headers: map[string]string{"Content-Type": "application/json", "X-Degraded": cause},
			Body:    fmt.Sprintf(`{"fallback":%q}`, cause)}}
	}
	mk := func(name, addr string, b config.Bulkhead, cause string, edit func(*config.Upstream)) config.Upstream {
		u := upstreamCfg(name, addr, b)
		u.Fallback = fb(cause)
		if edit != nil {
			edit(&u)
		}
		return u
	}
	held := startUpstream(t, hold)
	failing := startUpstream(t, newSwitchable(500))
	cfg := &config.Config{Listeners: proxyListener(), Upstreams: []config.Upstream{
		mk("full", held, config.Bulkhead{MaxConcurrent: 1}, "bulkhead_full", nil),
		mk("queued", held, config.Bulkhead{MaxConcurrent: 1, MaxQueue: 1, MaxWait: config.D(20 * time.Millisecond)}, "queue_timeout", nil),
		mk("open", failing, config.Bulkhead{}, "circuit_open", func(u *config.Upstream) {
			u.CircuitBreaker = &config.CircuitBreaker{ConsecutiveFailures: 1, OpenFor: config.D(time.Hour)}
		}),
		mk("limited", failing, config.Bulkhead{}, "rate_limited", func(u *config.Upstream) {
			u.RateLimit = &config.RateLimit{RPS: 0.001, Burst: 1}
		}),
		mk("slow", held, config.Bulkhead{}, "timeout", func(u *config.Upstream) { u.Timeout = config.D(30 * time.Millisecond) }),
		mk("broken", failing, config.Bulkhead{}, "upstream_error", nil),
		mk("dead", deadAddress(t), config.Bulkhead{}, "upstream_unavailable", nil),
	}}
	p := startProxy(t, cfg)
	c, base := client(false), p.url(t, "out")
	// Fill the pools that must be full.
	for _, name := range []string{"full", "queued"} {
		go func() {
			req, _ := http.NewRequest("GET", base+"/", nil)
			req.Host = name
			if resp, err := c.Do(req); err == nil {
				resp.Body.Close()
			}
		}()
		eventually(t, name+" to fill", func() bool { return p.pool(name).Active == 1 })
	}
	get(t, c, base, "open", "/")    // its one failure opens the breaker
	get(t, c, base, "limited", "/") // spends the only token
	for _, tc := range []struct{ host, cause string }{
		{"full", "bulkhead_full"}, {"queued", "queue_timeout"}, {"open", "circuit_open"}, {"limited", "rate_limited"},
		{"slow", "timeout"}, {"broken", "upstream_error"}, {"dead", "upstream_unavailable"},
	} {
		resp, body := get(t, c, base, tc.host, "/")
		if resp.StatusCode != 200 || body != fmt.Sprintf(`{"fallback":%q}`, tc.cause) ||
			resp.Header.Get(HeaderFallback) != tc.cause || resp.Header.Get("X-Degraded") != tc.cause ||
			resp.Header.Get("Content-Type") != "application/json" {
			t.Errorf("%s: %d %q %v, want the %s fallback", tc.host, resp.StatusCode, body, resp.Header, tc.cause)
		}
		m := findMetric(t, p.reg, "watertight_fallbacks_total", map[string]string{"upstream": tc.host, "cause": tc.cause})
		if m.GetCounter().GetValue() != 1 {
			t.Errorf("%s: fallbacks_total{cause=%s} = %v", tc.host, tc.cause, m.GetCounter().GetValue())
		}
	}
	// A fallback with only a gRPC form does not answer an HTTP client: it
	// gets the local reply, not an empty success.
	grpcOnly := upstreamCfg("grpconly", deadAddress(t), config.Bulkhead{})
	grpcOnly.Fallback = config.Fallbacks{{On: []string{"upstream_unavailable"}, GRPCStatus: "UNAVAILABLE"}}
	next := &config.Config{Listeners: proxyListener(), Upstreams: append(cfg.Upstreams, grpcOnly)}
	next.SetDefaults()
	if err := p.Apply(next); err != nil {
		t.Fatal(err)
	}
	resp, _ := get(t, c, base, "grpconly", "/")
	if resp.StatusCode != 503 || resp.Header.Get(HeaderFallback) != "" || resp.Header.Get(HeaderReason) != "upstream_unavailable" {
		t.Errorf("gRPC-only fallback to an HTTP client: %d %v", resp.StatusCode, resp.Header)
	}
	hold.open()
}

// TestReloadKeepsPolicyState: an open breaker stays open and an ejected
// endpoint stays out across a config change that leaves their policies be.
func TestReloadKeepsPolicyState(t *testing.T) {
	up := newSwitchable(500)
	addr := startUpstream(t, up)
	mk := func(weight int) *config.Config {
		u := upstreamCfg("u", addr, config.Bulkhead{Weight: weight})
		u.CircuitBreaker = &config.CircuitBreaker{ConsecutiveFailures: 1, OpenFor: config.D(time.Hour)}
		return &config.Config{Listeners: proxyListener(), Upstreams: []config.Upstream{u}}
	}
	p := startProxy(t, mk(1))
	c, base := client(false), p.url(t, "out")
	get(t, c, base, "u", "/")
	if circuit(t, p, "u", "open") != 1 {
		t.Fatal("not open")
	}
	next := mk(2)
	next.SetDefaults()
	if err := p.Apply(next); err != nil {
		t.Fatal(err)
	}
	if resp, _ := get(t, c, base, "u", "/"); resp.Header.Get(HeaderReason) != "circuit_open" {
		t.Fatal("a reload closed the open breaker")
	}
}

func TestHedgingWinsAgainstASlowAttempt(t *testing.T) {
	var calls atomic.Int64
	firstCancelled := make(chan struct{})
	addr := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 && r.Method == http.MethodGet {
			<-r.Context().Done() // the first attempt hangs until it loses the race
			close(firstCancelled)
			return
		}
		_, _ = io.WriteString(w, "hedge")
	}))
	u := upstreamCfg("u", addr, config.Bulkhead{})
	u.Hedge = &config.Hedge{Delay: config.D(30 * time.Millisecond)}
	p := startProxy(t, &config.Config{Listeners: proxyListener(), Upstreams: []config.Upstream{u}})
	c, base := client(false), p.url(t, "out")
	start := time.Now()
	resp, body := get(t, c, base, "u", "/")
	if resp.StatusCode != 200 || body != "hedge" {
		t.Fatalf("%d %q, want the hedge's answer", resp.StatusCode, body)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("took %v: the hedge did not win", took)
	}
	select {
	case <-firstCancelled:
	case <-time.After(5 * time.Second):
		t.Fatal("the losing attempt was never cancelled")
	}
	if got := findMetric(t, p.reg, "watertight_retries_total", map[string]string{"upstream": "u"}).GetCounter().GetValue(); got != 1 {
		t.Errorf("hedges counted as %v retries, want 1", got)
	}
	eventually(t, "both slots back", func() bool { return p.pool("u").Active == 0 })
	if p.count(t, "u", "ok") != 1 || p.count(t, "u", "canceled") != 0 {
		t.Errorf("the request counted as %v ok, %v canceled; want 1 ok", p.count(t, "u", "ok"), p.count(t, "u", "canceled"))
	}
	// A POST is never hedged, however long it takes.
	calls.Store(0)
	slowPost := newSwitchable(200)
	slowPost.delay.Store(int64(200 * time.Millisecond))
	u.Endpoints = []config.Endpoint{{Address: startUpstream(t, slowPost)}}
	next := &config.Config{Listeners: proxyListener(), Upstreams: []config.Upstream{u}}
	next.SetDefaults()
	if err := p.Apply(next); err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("POST", base+"/", strings.NewReader("x"))
	req.Host = "u"
	if resp, err := c.Do(req); err == nil {
		resp.Body.Close()
	}
	if slowPost.hits.Load() != 1 {
		t.Errorf("a POST was sent %d times", slowPost.hits.Load())
	}
}

func TestLatencyTrackerQuantile(t *testing.T) {
	var lt latencyTracker
	if lt.quantile(0.95) != 0 {
		t.Fatal("a quantile from no data")
	}
	for i := range 1000 {
		d := 10 * time.Millisecond
		if i%20 == 0 { // 5% slow
			d = 500 * time.Millisecond
		}
		lt.record(d)
	}
	if q := lt.quantile(0.9); q < 10*time.Millisecond || q > 14*time.Millisecond {
		t.Errorf("p90 = %v, want about 10ms", q)
	}
	if q := lt.quantile(0.99); q < 500*time.Millisecond || q > 700*time.Millisecond {
		t.Errorf("p99 = %v, want about 500ms", q)
	}
}

// warmHit is one request of TestWarmupRampsAReturningEndpoint: when it was
// sent and answered, and whether the warming endpoint answered it.
type warmHit struct {
	sent, done time.Time
	warming    bool
}

// warmLoad sends requests to host from a few workers, back to back, until
// stop, and reports which endpoint answered each ("warming" in the body).
func warmLoad(t *testing.T, c *http.Client, base, host string, stop time.Time) []warmHit {
	t.Helper()
	const workers = 4
	var (
		mu   sync.Mutex
		hits []warmHit
		wg   sync.WaitGroup
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []warmHit
			defer func() {
				mu.Lock()
				hits = append(hits, mine...)
				mu.Unlock()
			}()
			for time.Now().Before(stop) {
				req, err := http.NewRequest("GET", base+"/", nil)
				if err != nil {
					t.Error(err)
					return
				}
				req.Host = host
				sent := time.Now()
				resp, err := c.Do(req)
				if err != nil {
					t.Errorf("request: %v", err)
					return
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != 200 {
					t.Errorf("request: %d %q %v", resp.StatusCode, b, err)
					return
				}
				mine = append(mine, warmHit{sent: sent, done: time.Now(), warming: string(b) == "warming"})
			}
		}()
	}
	wg.Wait()
	return hits
}

// warmShare is the warming endpoint's share of the requests sent in [from, to).
func warmShare(hits []warmHit, from, to time.Time) (share float64, n int) {
	w := 0
	for _, h := range hits {
		if !h.sent.Before(from) && h.sent.Before(to) {
			n++
			if h.warming {
				w++
			}
		}
	}
	if n == 0 {
		return 0, 0
	}
	return float64(w) / float64(n), n
}

// TestWarmupRampsAReturningEndpoint: an endpoint that joins a running
// upstream (by a reload) or comes back from ejection gets a small share of
// the requests at first and its fair share once warmup has passed (slow
// start), while the load goes on.
func TestWarmupRampsAReturningEndpoint(t *testing.T) {
	const (
		warmup  = 2 * time.Second
		early   = 500 * time.Millisecond // a share of at most 25%: 1 in 5 requests at most
		minHits = 30                     // per bucket, for the shares to mean anything
	)
	endpoints := func(t *testing.T) (steady string, warming *switchableNamed) {
		steady = startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.WriteString(w, "steady")
		}))
		warming = &switchableNamed{name: "warming"}
		warming.status.Store(http.StatusOK)
		warming.addr = startUpstream(t, warming)
		return steady, warming
	}
	upstream := func(eps ...string) config.Upstream {
		u := config.Upstream{Name: "u", LoadBalancer: config.LBRoundRobin, Warmup: config.D(warmup)}
		for _, e := range eps {
			u.Endpoints = append(u.Endpoints, config.Endpoint{Address: e})
		}
		return u
	}
	// check asserts the ramp: the warming endpoint's share is well below
	// fair (1/2) in the first moments after start (before which it cannot
	// have warmed), grows, and is fair once warmup has passed since end
	// (after which it must have fully warmed).
	check := func(t *testing.T, hits []warmHit, start, end time.Time) {
		t.Helper()
		e, en := warmShare(hits, start, start.Add(early))
		m, mn := warmShare(hits, start.Add(warmup/2), start.Add(warmup*3/4))
		l, ln := warmShare(hits, end.Add(warmup+100*time.Millisecond), end.Add(warmup+time.Second))
		t.Logf("warming endpoint's share: %.2f of %d requests in the first %v, %.2f of %d halfway, %.2f of %d after warmup",
			e, en, early, m, mn, l, ln)
		if en < minHits || mn < minHits || ln < minHits {
			t.Fatalf("too few requests to judge (%d, %d, %d)", en, mn, ln)
		}
		if e >= 0.3 {
			t.Errorf("share %.2f in the first %v of warmup, want well below the fair 0.5", e, early)
		}
		if m <= e {
			t.Errorf("share %.2f halfway through warmup, want more than the %.2f at its start", m, e)
		}
		if l < 0.4 || l > 0.6 {
			t.Errorf("share %.2f after warmup, want about the fair 0.5", l)
		}
	}

	t.Run("joins-by-reload", func(t *testing.T) {
		steady, warming := endpoints(t)
		p := startProxy(t, &config.Config{Listeners: proxyListener(), Upstreams: []config.Upstream{upstream(steady)}})
		c, base := client(false), p.url(t, "out")
		if resp, body := get(t, c, base, "u", "/"); resp.StatusCode != 200 || body != "steady" {
			t.Fatalf("before the reload: %d %q", resp.StatusCode, body)
		}
		next := &config.Config{Listeners: proxyListener(), Upstreams: []config.Upstream{upstream(steady, warming.addr)}}
		next.SetDefaults()
		if err := next.Validate(); err != nil {
			t.Fatal(err)
		}
		before := time.Now()
		if err := p.Apply(next); err != nil {
			t.Fatal(err)
		}
		after := time.Now()
		check(t, warmLoad(t, c, base, "u", after.Add(warmup+1200*time.Millisecond)), before, after)
	})

	t.Run("back-from-ejection", func(t *testing.T) {
		steady, warming := endpoints(t)
		u := upstream(steady, warming.addr)
		u.OutlierDetection = &config.OutlierDetection{ConsecutiveFailures: 3,
			BaseEjectionTime: config.D(300 * time.Millisecond), MaxEjectionPercent: 50}
		p := startProxy(t, &config.Config{Listeners: proxyListener(), Upstreams: []config.Upstream{u}})
		c, base := client(false), p.url(t, "out")
		// Its first requests warm nothing: it was there from the start.
		for range 10 {
			get(t, c, base, "u", "/")
		}
		if got := warming.hits.Load(); got != 5 {
			t.Fatalf("the endpoint there from the start got %d of 10 round-robin requests, want 5", got)
		}
		// Three failures in a row eject it.
		warming.status.Store(http.StatusInternalServerError)
		var out time.Time // when its ejection ends
		eventually(t, "the failing endpoint to be ejected", func() bool {
			get(t, c, base, "u", "/")
			out = p.ejectedUntil(t, "u", warming.addr)
			return time.Now().Before(out)
		})
		warming.status.Store(http.StatusOK)
		hits := warmLoad(t, c, base, "u", out.Add(warmup+1200*time.Millisecond))
		for _, h := range hits {
			if h.warming && h.done.Before(out) {
				t.Fatalf("the ejected endpoint answered a request at %v, %v before its ejection ended",
					h.done.Format(time.StampMicro), out.Sub(h.done))
			}
		}
		check(t, hits, out, out)
	})
}

// switchableNamed answers its name with the status it is set to and counts
// the requests that reached it.
type switchableNamed struct {
	name   string
	addr   string
	status atomic.Int32
	hits   atomic.Int64
}

func (s *switchableNamed) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.hits.Add(1)
	w.WriteHeader(int(s.status.Load()))
	_, _ = io.WriteString(w, s.name)
}

// ejectedUntil is the end of the endpoint's last ejection (zero if never).
func (p *testProxy) ejectedUntil(t *testing.T, upstream, addr string) time.Time {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.compartments {
		if c.name != upstream {
			continue
		}
		for _, e := range c.balancer.eps {
			if e.addr == addr {
				return e.out.EjectedUntil()
			}
		}
	}
	t.Fatalf("no endpoint %s in upstream %s", addr, upstream)
	return time.Time{}
}

// TestFailureStatusesAreConfigurable: the upstream decides which statuses
// are its failures, for the metrics and the breaker alike.
func TestFailureStatusesAreConfigurable(t *testing.T) {
	up := newSwitchable(500)
	u := upstreamCfg("u", startUpstream(t, up), config.Bulkhead{})
	u.FailureStatuses = []int{503, 429}
	u.CircuitBreaker = &config.CircuitBreaker{ConsecutiveFailures: 3, OpenFor: config.D(time.Hour)}
	p := startProxy(t, &config.Config{Listeners: proxyListener(), Upstreams: []config.Upstream{u}})
	c, base := client(false), p.url(t, "out")
	for range 5 {
		get(t, c, base, "u", "/") // 500: not in the list
	}
	if p.count(t, "u", "ok") != 5 || circuit(t, p, "u", "closed") != 1 {
		t.Fatalf("500s not in failureStatuses: %v ok, breaker closed=%v", p.count(t, "u", "ok"), circuit(t, p, "u", "closed"))
	}
	up.status.Store(429)
	for range 3 {
		get(t, c, base, "u", "/")
	}
	if p.count(t, "u", "upstream_error") != 3 || circuit(t, p, "u", "open") != 1 {
		t.Fatalf("429 in failureStatuses: %v upstream_error, breaker open=%v", p.count(t, "u", "upstream_error"), circuit(t, p, "u", "open"))
	}
}
