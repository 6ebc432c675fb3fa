package observability

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"

	"github.com/watertight/watertight/admin"
	"github.com/watertight/watertight/sidecar"
	"github.com/watertight/watertight/xds"
)

// busy is a sidecar whose upstreams cover every kind of ending: healthy
// answers, a pool and queue too small for its traffic (with a fallback), an
// upstream that fails and is broken off by its breaker and outlier
// detection, a rate limit and timeouts; and a composite call over two of
// them, one of its weak nodes failing. Its config is every label value the
// metrics may carry.
type busy struct {
	*sidecar.Sidecar
	out string // the proxy listener's address
	// endpoints are the configured endpoint addresses, by upstream.
	endpoints map[string][]string
}

// upstreamNames are the busy sidecar's upstreams.
var upstreamNames = []string{"healthy", "slow", "flaky", "limited", "timeouts"}

// The busy sidecar's composite and its nodes: user is critical; recs and ads
// are weak and start once user is done, so each comes in a segment of its
// own after the core one; ads calls flaky, whose breaker drive() opens
// first, so it fails and the composite ends degraded.
const (
	compositeName = "page"
	compositePath = "/page/42"
)

var compositeNodes = []string{"user", "recs", "ads"}

func startBusy(t *testing.T, log *slog.Logger) *busy {
	t.Helper()
	ok1, ok2 := startUpstream(t, okHandler), startUpstream(t, okHandler)
	slow := startUpstream(t, slowHandler(t, 300*time.Millisecond))
	failing := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "broken", http.StatusInternalServerError)
	}))
	dead := deadAddr(t)
	doc := fmt.Sprintf(`
budget: 64
listeners:
  - {name: out, address: "127.0.0.1:0", mode: proxy}
upstreams:
  - name: healthy
    hosts: [healthy, healthy.shop.svc.cluster.local]
    endpoints: [%[1]q, %[2]q]
    timeout: 5s
    retry: {attempts: 1}
    circuitBreaker: {consecutiveFailures: 1000}
    outlierDetection: {consecutiveFailures: 1000}
  - name: slow
    endpoints: [%[3]q]
    timeout: 5s
    bulkhead: {maxConcurrent: 1, maxQueue: 1, maxWait: 50ms}
    fallback: {on: [bulkhead_full, queue_timeout], status: 200, body: fallback}
  - name: flaky
    endpoints: [%[4]q, %[5]q]
    loadBalancer: round_robin
    timeout: 5s
    retry: {attempts: 1, on: [connect-failure, "500"], backoff: {base: 1ms, max: 2ms}}
    circuitBreaker: {consecutiveFailures: 6, openFor: 1m}
    outlierDetection: {consecutiveFailures: 2, baseEjectionTime: 1m, maxEjectionPercent: 50}
  - name: limited
    endpoints: [%[1]q]
    rateLimit: {rps: 0.001, burst: 1}
  - name: timeouts
    endpoints: [%[3]q]
    timeout: 20ms
composites:
  - name: page
    listener: out
    path: /page/{id}
    deadline: 2s
    nodes:
      - {name: user, upstream: healthy, critical: true, path: "/users/{{request.path.id}}"}
      - {name: recs, upstream: healthy, path: "/recs/{{request.path.id}}?user={{nodes.user.status}}"}
      - {name: ads, upstream: flaky, path: "/ads?user={{nodes.user.status}}"}
`, ok1, ok2, slow, failing, dead)
	s := startSidecar(t, doc, log)
	return &busy{
		Sidecar: s,
		out:     listenerAddr(t, s, "out"),
		endpoints: map[string][]string{
			"healthy": {ok1, ok2}, "slow": {slow}, "flaky": {failing, dead},
			"limited": {ok1}, "timeouts": {slow},
		},
	}
}

// drive sends each upstream the traffic that makes it end its own way, and
// checks that it did.
func (b *busy) drive(t *testing.T) {
	t.Helper()
	c := newClient(t)
	url := "http://" + b.out + "/"
	must := func(host string) (int, string) {
		code, reason, err := do(c, http.MethodGet, url, host, nil)
		if err != nil {
			t.Fatalf("GET via the sidecar (Host %s): %v", host, err)
		}
		return code, reason
	}
	for range 20 {
		if code, reason := must("healthy"); code != http.StatusOK {
			t.Fatalf("healthy: %d %s", code, reason)
		}
	}
	for range 12 {
		must("flaky")
	}
	must("limited")
	must("limited")
	must("timeouts")
	// More requests than the slow upstream's slot and queue at once.
	var wg sync.WaitGroup
	for range 6 {
		wg.Go(func() {
			if _, _, err := do(c, http.MethodGet, url, "slow", nil); err != nil {
				t.Errorf("slow: %v", err)
			}
		})
	}
	wg.Wait()
	// The composite, once as one JSON answer and once core first
	// (multi-segment), after flaky's breaker opened: every composite series
	// exists, the later segments' included.
	for _, accept := range []string{"application/json", "application/x-ndjson"} {
		code, reason, err := do(c, http.MethodGet, "http://"+b.out+compositePath, "", http.Header{"Accept": {accept}})
		if err != nil || code != http.StatusOK {
			t.Fatalf("composite %s (Accept %s): %d %s %v", compositePath, accept, code, reason, err)
		}
	}
	fams := families(t, metricsURL(b.Sidecar))
	if n := counter(fams, "watertight_composite_requests_total", "composite", compositeName, "result", "degraded"); n != 2 {
		t.Errorf("watertight_composite_requests_total{composite=%q,result=\"degraded\"} = %v, want 2", compositeName, n)
	}
	for _, want := range []struct{ node, result string }{{"user", "ok"}, {"recs", "ok"}, {"ads", "failed"}} {
		if n := counter(fams, "watertight_composite_node_results_total", "composite", compositeName, "node", want.node, "result", want.result); n != 2 {
			t.Errorf("watertight_composite_node_results_total{node=%q,result=%q} = %v, want 2", want.node, want.result, n)
		}
	}
	for _, want := range []struct {
		name  string
		count uint64
	}{
		{"watertight_composite_duration_seconds", 2},
		{"watertight_composite_first_segment_seconds", 2},
		{"watertight_composite_segment_arrival_seconds", 2}, // recs and ads, after the core
		{"watertight_composite_node_duration_seconds", 6},
	} {
		if n := observations(fams, want.name, "composite", compositeName); n != want.count {
			t.Errorf("%s{composite=%q}: %d observations, want %d", want.name, compositeName, n, want.count)
		}
	}
	for _, want := range []struct{ upstream, result string }{
		{"healthy", "ok"}, {"slow", "ok"}, {"flaky", "circuit_open"}, {"limited", "rate_limited"}, {"timeouts", "timeout"},
	} {
		if counter(fams, "watertight_requests_total", "upstream", want.upstream, "result", want.result) == 0 {
			t.Errorf("the traffic made no %s result for %s", want.result, want.upstream)
		}
	}
	// Which of the two refusals the slow upstream's surplus gets depends on
	// how close together the requests arrive.
	if counter(fams, "watertight_requests_total", "upstream", "slow", "result", "bulkhead_full")+
		counter(fams, "watertight_requests_total", "upstream", "slow", "result", "queue_timeout") == 0 {
		t.Error("the traffic made no bulkhead_full or queue_timeout result for slow")
	}
	if counter(fams, "watertight_requests_total", "upstream", "flaky", "result", "upstream_error")+
		counter(fams, "watertight_requests_total", "upstream", "flaky", "result", "upstream_unavailable") == 0 {
		t.Error("the traffic made no upstream_error or upstream_unavailable result for flaky")
	}
	for _, want := range []struct{ name, upstream string }{
		{"watertight_retries_total", "flaky"},
		{"watertight_fallbacks_total", "slow"},
		{"watertight_endpoint_ejected", "flaky"},
	} {
		if counter(fams, want.name, "upstream", want.upstream) == 0 {
			t.Errorf("the traffic left %s{upstream=%q} at 0", want.name, want.upstream)
		}
	}
	if t.Failed() {
		body, _ := scrape(t, metricsURL(b.Sidecar), acceptText)
		t.Logf("metrics:\n%s", grepLines(string(body), "watertight_"))
	}
}

// counter sums the counter or gauge series of name whose labels include
// the given pairs.
func counter(fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	mf := fams[name]
	if mf == nil {
		return 0
	}
	sum := 0.0
series:
	for _, m := range mf.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			if labelValue(m, labels[i]) != labels[i+1] {
				continue series
			}
		}
		sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
	}
	return sum
}

// observations sums the sample counts of the histogram series of name whose
// labels include the given pairs.
func observations(fams map[string]*dto.MetricFamily, name string, labels ...string) uint64 {
	var n uint64
series:
	for _, m := range fams[name].GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			if labelValue(m, labels[i]) != labels[i+1] {
				continue series
			}
		}
		n += m.GetHistogram().GetSampleCount()
	}
	return n
}

// deadAddr is a loopback address that refuses connections for the whole
// test: a socket bound to it, never listening, keeps anyone else (another
// server of the test asking for port 0) from taking the port.
func deadAddr(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
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
	return fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
}

// xdsPair is a control plane with its admin port, and a sidecar taking its
// config from it: the processes that export watertight_xds_* and
// watertight_controlplane_*.
type xdsPair struct {
	sidecar  *sidecar.Sidecar
	cpAdmin  string // the control plane's /metrics URL
	upstream string // the one upstream's endpoint
}

func startXDSPair(t *testing.T, log *slog.Logger) *xdsPair {
	t.Helper()
	ep := startUpstream(t, okHandler)
	dir := t.TempDir()
	doc := fmt.Sprintf(`
listeners: [{name: out, address: %q, mode: proxy}]
upstreams:
  - name: inventory
    endpoints: [%q]
    outlierDetection: {consecutiveFailures: 5}
`, "127.0.0.1:0", ep)
	if err := os.WriteFile(filepath.Join(dir, "default.yaml"), []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	cp, err := xds.NewControlPlane(xds.ControlPlaneOptions{Listen: "127.0.0.1:0", ConfigDir: dir, Logger: log.With("component", "controlplane"), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cp.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("control plane: %v", err)
		}
	})
	// The control plane creates the series of
	// watertight_controlplane_config_loads_total at its first reload, not at
	// start: reload once so that they are there to check.
	cp.Reload()
	adm, err := admin.Start("127.0.0.1:0", admin.Handler(reg, cp))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = adm.Shutdown(ctx)
	})
	s, err := sidecar.Start(sidecar.Options{
		XDSAddress: cp.Addr().String(), NodeID: "pod-1.shop", AdminAddress: "127.0.0.1:0",
		DrainTimeout: 2 * time.Second, Logger: log.With("component", "sidecar"),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("xds sidecar shutdown: %v", err)
		}
	})
	eventually(t, "the xDS sidecar to be connected and ready", func() bool {
		return s.Ready() && counter(families(t, metricsURL(s)), "watertight_xds_connected") == 1
	})
	return &xdsPair{sidecar: s, cpAdmin: "http://" + adm.Addr().String() + "/metrics", upstream: ep}
}

// grepLines keeps the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) && !strings.HasPrefix(l, "#") && !strings.Contains(l, "_bucket") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
