package proxy

import (
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/watertight/watertight/config"
)

// TestDeadlinePropagation: the upstream is told the time left, which is the
// smaller of the upstream's timeout and the caller's x-request-timeout.
func TestDeadlinePropagation(t *testing.T) {
	addr := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Seen-Timeout", r.Header.Get("X-Request-Timeout"))
	}))
	u := upstreamCfg("u", addr, config.Bulkhead{})
	u.Timeout = config.D(300 * time.Millisecond)
	p := startProxy(t, &config.Config{Listeners: proxyListener(), Upstreams: []config.Upstream{u}})
	c := client(false)
	base := p.url(t, "out")
	seen := func(hdr ...string) time.Duration {
		t.Helper()
		resp, _ := get(t, c, base, "u", "/", hdr...)
		d, err := time.ParseDuration(resp.Header.Get("X-Seen-Timeout"))
		if err != nil {
			t.Fatalf("upstream saw x-request-timeout %q", resp.Header.Get("X-Seen-Timeout"))
		}
		return d
	}
	if d := seen(); d <= 0 || d > 300*time.Millisecond {
		t.Errorf("no caller timeout: upstream told %v, want (0, 300ms]", d)
	}
	if d := seen("X-Request-Timeout", "100ms"); d <= 0 || d > 100*time.Millisecond {
		t.Errorf("caller 100ms: upstream told %v, want (0, 100ms]", d)
	}
	if d := seen("X-Request-Timeout", "0.05"); d <= 0 || d > 50*time.Millisecond {
		t.Errorf("caller 0.05 (seconds): upstream told %v, want (0, 50ms]", d)
	}
	if d := seen("X-Request-Timeout", "5s"); d <= 100*time.Millisecond || d > 300*time.Millisecond {
		t.Errorf("caller 5s: upstream told %v, want the upstream's 300ms to win", d)
	}
	if d := seen("X-Request-Timeout", "soon"); d <= 0 || d > 300*time.Millisecond {
		t.Errorf("malformed caller timeout: upstream told %v, want the upstream's 300ms", d)
	}
}

func TestTimeoutIsA504AndCounted(t *testing.T) {
	g := newGate()
	defer g.open()
	u := upstreamCfg("u", startUpstream(t, g), config.Bulkhead{})
	u.Timeout = config.D(100 * time.Millisecond)
	p := startProxy(t, &config.Config{Listeners: proxyListener(), Upstreams: []config.Upstream{u}})
	start := time.Now()
	resp, _ := get(t, client(false), p.url(t, "out"), "u", "/")
	took := time.Since(start)
	if resp.StatusCode != http.StatusGatewayTimeout || resp.Header.Get(HeaderReason) != "timeout" {
		t.Fatalf("got %d %q, want 504 timeout", resp.StatusCode, resp.Header.Get(HeaderReason))
	}
	if took < 100*time.Millisecond || took > 2*time.Second {
		t.Errorf("timed out after %v, want about 100ms", took)
	}
	if got := p.count(t, "u", "timeout"); got != 1 {
		t.Errorf("timeout counted %v times", got)
	}
	// The caller's shorter timeout wins.
	start = time.Now()
	resp, _ = get(t, client(false), p.url(t, "out"), "u", "/", "X-Request-Timeout", "20ms")
	if resp.StatusCode != http.StatusGatewayTimeout || time.Since(start) > 90*time.Millisecond+time.Second {
		t.Errorf("caller timeout: %d after %v", resp.StatusCode, time.Since(start))
	}
	eventually(t, "slots back", func() bool { return p.pool("u").Active == 0 })
}

// TestTimeoutMidBody: a response that starts but stalls is cut at the
// deadline, counted as a timeout, and its slot returned.
func TestTimeoutMidBody(t *testing.T) {
	addr := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "partial")
		_ = http.NewResponseController(w).Flush()
		<-r.Context().Done()
	}))
	u := upstreamCfg("u", addr, config.Bulkhead{})
	u.Timeout = config.D(100 * time.Millisecond)
	p := startProxy(t, &config.Config{Listeners: proxyListener(), Upstreams: []config.Upstream{u}})
	req, _ := http.NewRequest("GET", p.url(t, "out")+"/", nil)
	req.Host = "u"
	resp, err := client(false).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "partial" || err == nil {
		t.Fatalf("got %d %q %v; want the partial body then an error", resp.StatusCode, body, err)
	}
	eventually(t, "timeout counted", func() bool { return p.count(t, "u", "timeout") == 1 })
	eventually(t, "slot back", func() bool { return p.pool("u").Active == 0 })
}

func TestUnavailableAndUpstreamErrors(t *testing.T) {
	reset := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close() // no answer at all
		}
	}))
	failing := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "broken", http.StatusInternalServerError)
	}))
	business := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no such item", http.StatusNotFound)
	}))
	cfg := &config.Config{Listeners: proxyListener(), Upstreams: []config.Upstream{
		upstreamCfg("dead", deadAddress(t), config.Bulkhead{}),
		upstreamCfg("reset", reset, config.Bulkhead{}),
		upstreamCfg("failing", failing, config.Bulkhead{}),
		upstreamCfg("business", business, config.Bulkhead{}),
		{Name: "empty"}, // no endpoints (EDS during a scale to zero)
	}}
	p := startProxy(t, cfg)
	c := client(false)
	base := p.url(t, "out")
	for _, tc := range []struct {
		host, reason, result string
		status               int
	}{
		{"dead", "upstream_unavailable", "upstream_unavailable", 503},
		{"empty", "upstream_unavailable", "upstream_unavailable", 503},
		{"reset", "upstream_error", "upstream_error", 502},
		{"failing", "", "upstream_error", 500}, // the upstream's own 500 passes through
		{"business", "", "ok", 404},            // a business error is not a failure
	} {
		resp, _ := get(t, c, base, tc.host, "/")
		if resp.StatusCode != tc.status || resp.Header.Get(HeaderReason) != tc.reason {
			t.Errorf("%s: %d reason %q, want %d %q", tc.host, resp.StatusCode, resp.Header.Get(HeaderReason), tc.status, tc.reason)
		}
		if got := p.count(t, tc.host, tc.result); got != 1 {
			t.Errorf("%s: result %s counted %v times", tc.host, tc.result, got)
		}
	}
}

// TestQueueingCountsAndReports: a request that waits for a slot is counted
// in the queue-wait histogram, and its wait comes out of its deadline.
func TestQueueingCountsAndReports(t *testing.T) {
	g := newGate()
	defer g.open()
	u := upstreamCfg("u", startUpstream(t, g), config.Bulkhead{MaxConcurrent: 1, MaxQueue: 1, MaxWait: config.D(5 * time.Second)})
	p := startProxy(t, &config.Config{Budget: 10, Listeners: proxyListener(), Upstreams: []config.Upstream{u}})
	base := p.url(t, "out")
	done := make(chan int, 2)
	for range 2 {
		go func() {
			req, _ := http.NewRequest("GET", base+"/", nil)
			req.Host = "u"
			resp, err := client(false).Do(req)
			if err != nil {
				done <- 0
				return
			}
			resp.Body.Close()
			done <- resp.StatusCode
		}()
	}
	eventually(t, "one active, one queued", func() bool { st := p.pool("u"); return st.Active == 1 && st.Queued == 1 })
	g.open()
	for range 2 {
		if s := <-done; s != 200 {
			t.Fatalf("status %d", s)
		}
	}
	m := findMetric(t, p.reg, "watertight_bulkhead_queue_wait_seconds", map[string]string{"upstream": "u"})
	if m == nil || m.GetHistogram().GetSampleCount() != 1 || m.GetHistogram().GetSampleSum() <= 0 {
		t.Fatalf("queue wait histogram: %v", m)
	}
	body := scrape(t, p)
	for _, want := range []string{
		`watertight_bulkhead_limit{upstream="u"} 1`,
		`watertight_bulkhead_queue_capacity{upstream="u"} 1`,
		`watertight_bulkhead_active{upstream="u"} 0`,
		`watertight_bulkhead_queued{upstream="u"} 0`,
		`watertight_requests_total{result="ok",upstream="u"} 2`,
		`watertight_request_duration_seconds_count{upstream="u"} 2`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// TestPropagateDeadlineSharesNoWrites: requests leaving in the same
// millisecond share one X-Request-Timeout value, and a later call (a retry)
// gives its header a value of its own rather than writing into the shared
// one.
func TestPropagateDeadlineSharesNoWrites(t *testing.T) {
	var last atomic.Pointer[deadlineField]
	a, b := http.Header{}, http.Header{headerRequestTimeout: {"999999ms"}}
	propagateDeadline(a, false, 1500*time.Millisecond+300*time.Microsecond, &last)
	propagateDeadline(b, false, 1500*time.Millisecond, &last)
	if got := b.Get(headerRequestTimeout); got != "1500ms" {
		t.Fatalf("X-Request-Timeout = %q, want 1500ms (the caller's own value replaced)", got)
	}
	if &a[headerRequestTimeout][0] != &b[headerRequestTimeout][0] {
		t.Error("two requests in the same millisecond did not share the value")
	}
	propagateDeadline(a, false, 200*time.Millisecond, &last)
	if got, other := a.Get(headerRequestTimeout), b.Get(headerRequestTimeout); got != "200ms" || other != "1500ms" {
		t.Fatalf("after a retry: its header %q (want 200ms), the other request's %q (want 1500ms)", got, other)
	}
	propagateDeadline(a, false, -time.Second, &last)
	if got := a.Get(headerRequestTimeout); got != "0ms" {
		t.Fatalf("a passed deadline sends %q, want 0ms", got)
	}
	g := http.Header{}
	propagateDeadline(g, true, 1500*time.Millisecond, &last)
	if got := g.Get(headerGRPCTimeout); got != formatGRPCTimeout(1500*time.Millisecond) {
		t.Fatalf("grpc-timeout = %q", got)
	}
}
