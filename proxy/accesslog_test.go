package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/watertight/watertight/config"
	"github.com/watertight/watertight/internal/testlog"
	"github.com/watertight/watertight/metrics"
)

// accessLines decodes the access log's JSON lines.
func accessLines(t *testing.T, buf *testlog.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(buf.Bytes()))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("access log line is not JSON: %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

func TestAccessLog(t *testing.T) {
	var seenTraceparent string
	var mu sync.Mutex
	addr := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/items/7" {
			mu.Lock()
			seenTraceparent = r.Header.Get("Traceparent")
			mu.Unlock()
		}
		_, _ = w.Write([]byte("0123456789"))
	}))
	buf := &testlog.Buffer{}
	cfg := &config.Config{
		Listeners: []config.Listener{
			{Name: "logged", Address: "127.0.0.1:0", Mode: config.ModeProxy, AccessLog: &config.AccessLog{}},
			{Name: "sampled", Address: "127.0.0.2:0", Mode: config.ModeProxy, AccessLog: &config.AccessLog{Sample: 0.5}},
			{Name: "quiet", Address: "127.0.0.3:0", Mode: config.ModeProxy},
		},
		Upstreams: []config.Upstream{
			upstreamCfg("u", addr, config.Bulkhead{}),
			{Name: "degraded", Endpoints: []config.Endpoint{{Address: deadAddress(t)}},
				Fallback: config.Fallbacks{{On: []string{"upstream_unavailable"}, Body: "{}"}}},
		},
		// One line for the composite, with its name and outcome; none for
		// its node calls.
		Composites: []config.Composite{{Name: "page", Listener: "logged", Path: "/page", Nodes: []config.CompositeNode{
			{Name: "item", Upstream: "u", Path: "/items/1", Critical: true},
			{Name: "extra", Upstream: "degraded", Path: "/"},
		}}},
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	s := NewServer(Options{Metrics: metrics.New(), AccessLog: buf, UpstreamHTTP1: *upstreamHTTP1, UpstreamHTTP2: *upstreamHTTP2, DownstreamHTTP1: *downstreamHTTP1, DownstreamHTTP2: *downstreamHTTP2, Lane: *laneOn})
	if err := s.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
	})
	p := &testProxy{Server: s}
	c := client(false)
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	req, _ := http.NewRequest("POST", p.url(t, "logged")+"/items/7?secret=1", strings.NewReader("hello"))
	req.Host = "u"
	req.Header.Set("Traceparent", tp)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	get(t, c, p.url(t, "logged"), "nobody", "/")
	get(t, c, p.url(t, "logged"), "degraded", "/")
	get(t, c, p.url(t, "logged"), "anyhost", "/page")
	for range 400 {
		get(t, c, p.url(t, "sampled"), "u", "/")
	}
	get(t, c, p.url(t, "quiet"), "u", "/")

	mu.Lock()
	if seenTraceparent != tp {
		t.Errorf("traceparent reached the upstream as %q, want it untouched", seenTraceparent)
	}
	mu.Unlock()
	lines := accessLines(t, buf)
	byListener := map[string][]map[string]any{}
	for _, l := range lines {
		byListener[l["listener"].(string)] = append(byListener[l["listener"].(string)], l)
	}
	logged := byListener["logged"]
	if len(logged) != 4 || len(byListener["quiet"]) != 0 {
		t.Fatalf("lines per listener: logged %d (want 4), quiet %d (want 0)", len(logged), len(byListener["quiet"]))
	}
	ok := logged[0]
	for k, want := range map[string]any{
		"msg": "access", "method": "POST", "authority": "u", "path": "/items/7", "status": 200.0,
		"result": "ok", "upstream": "u", "endpoint": addr, "attempts": 1.0,
		"bytes_received": 5.0, "bytes_sent": 10.0, "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
	} {
		if ok[k] != want {
			t.Errorf("%s = %v, want %v (line %v)", k, ok[k], want, ok)
		}
	}
	if d, _ := ok["duration_ms"].(float64); d <= 0 {
		t.Errorf("duration_ms = %v", ok["duration_ms"])
	}
	if noRoute := logged[1]; noRoute["status"] != 404.0 || noRoute["result"] != "local" || noRoute["upstream"] != "" {
		t.Errorf("no-route line: %v", noRoute)
	}
	if fb := logged[2]; fb["status"] != 200.0 || fb["result"] != "upstream_unavailable" || fb["fallback"] != "upstream_unavailable" {
		t.Errorf("fallback line: %v", fb)
	}
	if cl := logged[3]; cl["status"] != 200.0 || cl["composite"] != "page" || cl["result"] != "degraded" || cl["upstream"] != "" {
		t.Errorf("composite line: %v", cl)
	}
	if n := len(byListener["sampled"]); n < 140 || n > 260 {
		t.Errorf("sample 0.5 logged %d of 400 requests", n)
	}
}
