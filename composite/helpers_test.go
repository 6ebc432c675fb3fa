package composite_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/watertight/watertight/config"
	"github.com/watertight/watertight/internal/poll"
	"github.com/watertight/watertight/internal/testmetrics"
	"github.com/watertight/watertight/metrics"
	"github.com/watertight/watertight/proxy"
)

// upstream is a real HTTP server on loopback.
type upstream struct {
	addr   string
	active atomic.Int64 // requests being handled now
	mu     sync.Mutex
	hits   []hit
}

// hit is one request an upstream saw, with times relative to the test's t0.
type hit struct {
	path, body string
	header     http.Header
	start, end time.Duration
	canceled   bool
}

var t0 = time.Now()

// startUpstream serves h, recording every request. h returns whether the
// request was canceled before it answered.
func startUpstream(t testing.TB, h func(w http.ResponseWriter, r *http.Request, body string) bool) *upstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &upstream{addr: ln.Addr().String()}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Since(t0)
		u.active.Add(1)
		defer u.active.Add(-1)
		b, _ := io.ReadAll(r.Body)
		canceled := h(w, r, string(b))
		u.mu.Lock()
		u.hits = append(u.hits, hit{path: r.URL.RequestURI(), body: string(b), header: r.Header.Clone(), start: start, end: time.Since(t0), canceled: canceled})
		u.mu.Unlock()
	})}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
	})
	return u
}

// delayed answers body after d (or gives up when the request is canceled).
func delayed(d time.Duration, status int, body string) func(http.ResponseWriter, *http.Request, string) bool {
	return func(w http.ResponseWriter, r *http.Request, _ string) bool {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			return true
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
		return false
	}
}

// hangs never answers; it reports its cancellation on canceled.
func hangs(canceled chan<- string) func(http.ResponseWriter, *http.Request, string) bool {
	return func(w http.ResponseWriter, r *http.Request, _ string) bool {
		<-r.Context().Done()
		if canceled != nil {
			select {
			case canceled <- r.URL.Path:
			default:
			}
		}
		return true
	}
}

func (u *upstream) seen() []hit {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]hit(nil), u.hits...)
}

// sidecar is a proxy.Server running cfg.
type sidecar struct {
	*proxy.Server
	reg *metrics.Registry
}

func startSidecar(t testing.TB, yaml string) *sidecar {
	t.Helper()
	cfg, err := config.Parse([]byte(yaml))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	reg := metrics.New()
	s := proxy.NewServer(proxy.Options{Metrics: reg, DrainTimeout: 5 * time.Second, AccessLog: io.Discard})
	if err := s.Apply(cfg); err != nil {
		t.Fatalf("apply: %v", err)
	}
	sc := &sidecar{Server: s, reg: reg}
	t.Cleanup(func() {
		// No slot may stay taken once the answers are read.
		eventually(t, "every pool idle", func() bool {
			for _, p := range s.Pools() {
				if p.Stats.Active != 0 || p.Stats.Queued != 0 {
					return false
				}
			}
			return true
		})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return sc
}

func (s *sidecar) url(t testing.TB) string {
	t.Helper()
	a, ok := s.Addr("app")
	if !ok {
		t.Fatal("no listener app")
	}
	return "http://" + a.String()
}

// metric reads one series of a family, or nil.
func (s *sidecar) metric(t *testing.T, name string, labels map[string]string) *dto.Metric {
	t.Helper()
	return testmetrics.Find(t, s.reg.Prometheus(), name, labels)
}

func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	poll.Until(t, 10*time.Second, what, cond)
}

// get calls the composite and reads the whole answer.
func get(t *testing.T, url string, accept string) (*http.Response, string, time.Duration) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b), time.Since(start)
}

// segments reads an NDJSON answer line by line, noting when each arrived.
type segment struct {
	line string
	at   time.Duration
}

func stream(t *testing.T, url string) (*http.Response, []segment) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Accept", "application/x-ndjson")
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out []segment
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		out = append(out, segment{sc.Text(), time.Since(start)})
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return resp, out
}

// yamlUpstreams writes the upstreams section for name → address.
func yamlUpstreams(ups map[string]string, extra map[string]string) string {
	var b strings.Builder
	b.WriteString("upstreams:\n")
	for _, name := range sortedKeys(ups) {
		fmt.Fprintf(&b, "  - name: %s\n    endpoints: [%s]\n    protocol: http1\n", name, ups[name])
		if e := extra[name]; e != "" {
			b.WriteString(e)
		}
	}
	return b.String()
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

const listenerYAML = `
admin: {address: 127.0.0.1:0}
listeners:
  - {name: app, address: 127.0.0.1:0, mode: proxy}
`
