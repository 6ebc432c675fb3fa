package proxy

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"

	"github.com/watertight/watertight/bulkhead"
	"github.com/watertight/watertight/config"
	"github.com/watertight/watertight/internal/poll"
	"github.com/watertight/watertight/internal/testmetrics"
	"github.com/watertight/watertight/internal/testupstream"
	"github.com/watertight/watertight/metrics"
)

// testProxy is a running proxy.Server on loopback with its own metrics.
type testProxy struct {
	*Server
	reg *metrics.Registry
}

// startProxy applies cfg (defaults set, validated) on a new server.
func startProxy(t testing.TB, cfg *config.Config) *testProxy {
	t.Helper()
	return startProxyWith(t, cfg, nil)
}

// startProxyWith is startProxy with the server's options changed by opt.
func startProxyWith(t testing.TB, cfg *config.Config, opt func(*Options)) *testProxy {
	t.Helper()
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("test config invalid: %v", err)
	}
	reg := metrics.New()
	o := Options{Metrics: reg, DrainTimeout: 5 * time.Second, UpstreamHTTP1: *upstreamHTTP1, UpstreamHTTP2: *upstreamHTTP2, DownstreamHTTP1: *downstreamHTTP1, DownstreamHTTP2: *downstreamHTTP2, Lane: *laneOn}
	if opt != nil {
		opt(&o)
	}
	s := NewServer(o)
	if err := s.Apply(cfg); err != nil {
		t.Fatalf("apply: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return &testProxy{Server: s, reg: reg}
}

// url is the base URL of the named listener.
func (p *testProxy) url(t testing.TB, listener string) string {
	t.Helper()
	a, ok := p.Addr(listener)
	if !ok {
		t.Fatalf("no listener %q", listener)
	}
	return "http://" + a.String()
}

// pool reads one upstream's pool.
func (p *testProxy) pool(name string) bulkhead.Stats {
	for _, r := range p.Pools() {
		if r.Upstream == name {
			return r.Stats
		}
	}
	return bulkhead.Stats{Limit: -1}
}

// count reads watertight_requests_total{upstream, result}.
func (p *testProxy) count(t testing.TB, upstream, result string) float64 {
	t.Helper()
	m := findMetric(t, p.reg, "watertight_requests_total", map[string]string{"upstream": upstream, "result": result})
	if m == nil {
		return 0
	}
	return m.GetCounter().GetValue()
}

func findMetric(t testing.TB, reg *metrics.Registry, name string, labels map[string]string) *dto.Metric {
	t.Helper()
	return testmetrics.Find(t, reg.Prometheus(), name, labels)
}

// eventually polls cond until it holds or 5s pass.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	poll.Until(t, 5*time.Second, what, cond)
}

// startUpstream serves h on loopback, speaking HTTP/1.1 and h2c.
func startUpstream(t testing.TB, h http.Handler) string {
	t.Helper()
	return testupstream.Serve(t, h)
}

// deadAddress is a loopback address nothing listens on: a socket bound to
// it but not listening keeps the port from being handed to another test's
// server until this test ends, and connecting to it is refused.
func deadAddress(t testing.TB) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*syscall.SockaddrInet4).Port))
}

// gate is a handler that blocks until released (or the request ends).
type gate struct {
	release chan struct{}
	once    sync.Once
	entered chan struct{}
}

func newGate() *gate {
	return &gate{release: make(chan struct{}), entered: make(chan struct{}, 1024)}
}

func (g *gate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	g.entered <- struct{}{}
	select {
	case <-g.release:
		_, _ = io.WriteString(w, "released")
	case <-r.Context().Done():
	}
}

func (g *gate) open() { g.once.Do(func() { close(g.release) }) }

func client(h2c bool) *http.Client {
	var p http.Protocols
	if h2c {
		p.SetUnencryptedHTTP2(true)
	} else {
		p.SetHTTP1(true)
	}
	return &http.Client{Transport: &http.Transport{Protocols: &p, MaxIdleConnsPerHost: 256, DisableCompression: true}}
}

// get sends a GET with the given Host through the proxy listener.
func get(t testing.TB, c *http.Client, base, host, path string, hdr ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest("GET", base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s (Host %s): %v", path, host, err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("reading body: %v", err)
	}
	return resp, strings.TrimSpace(string(b))
}

// upstreamCfg is an upstream with one endpoint and the given bulkhead.
func upstreamCfg(name, addr string, b config.Bulkhead) config.Upstream {
	return config.Upstream{Name: name, Endpoints: []config.Endpoint{{Address: addr}}, Bulkhead: b}
}

func proxyListener() []config.Listener {
	return []config.Listener{{Name: "out", Address: "127.0.0.1:0", Mode: config.ModeProxy}}
}

// scrape renders the registry as Prometheus' text format.
func scrape(t testing.TB, p *testProxy) string {
	t.Helper()
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(p.reg.Prometheus(), promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	return rec.Body.String()
}
