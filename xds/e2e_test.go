package xds_test

// End to end over real gRPC: a real ControlPlane serving a config directory,
// real sidecars (sidecar.Start with --xds), real upstream HTTP servers, all on
// loopback. The package is xds_test because sidecar imports xds.

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/watertight/watertight/internal/poll"
	"github.com/watertight/watertight/internal/testlog"
	"github.com/watertight/watertight/internal/testmetrics"
	"github.com/watertight/watertight/internal/testupstream"
	"github.com/watertight/watertight/sidecar"
	"github.com/watertight/watertight/xds"
)

// TestMain checks for leaked goroutines. Nothing is ignored: every server,
// client, watcher and stream these tests start is closed in t.Cleanup.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// wait bounds every poll: generous, for a loaded 2-core machine under -race.
const wait = 15 * time.Second

// testLog is a logger whose output is shown only if the test fails. Call it
// first in a test, so that its cleanup runs last, after everything that
// logs has stopped.
func testLog(t *testing.T, name string) (*slog.Logger, *testlog.Buffer) {
	t.Helper()
	return testlog.New(t, name, slog.LevelDebug)
}

// writeFile writes then renames, as editors and kubelet do, so that the
// control plane never reads half a file.
func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// freeAddr is a loopback address nothing listens on (it was free a moment ago).
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// httpUpstream serves h (default: answer with name) on loopback.
func httpUpstream(t *testing.T, name string, h http.HandlerFunc) string {
	t.Helper()
	if h == nil {
		h = func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, name) }
	}
	return testupstream.Serve(t, h)
}

type controlPlane struct {
	*xds.ControlPlane
	reg  *prometheus.Registry
	stop func() // cancels Run and waits for it; idempotent
}

func startControlPlane(t *testing.T, dir, listen string, log *slog.Logger) *controlPlane {
	t.Helper()
	reg := prometheus.NewRegistry()
	cp, err := xds.NewControlPlane(xds.ControlPlaneOptions{Listen: listen, ConfigDir: dir, Logger: log, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cp.Run(ctx) }()
	h := &controlPlane{ControlPlane: cp, reg: reg}
	h.stop = sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("control plane Run: %v", err)
		}
	})
	t.Cleanup(h.stop)
	return h
}

func startSidecar(t *testing.T, xdsAddr, node string, log *slog.Logger) *sidecar.Sidecar {
	t.Helper()
	s, err := sidecar.Start(sidecar.Options{
		XDSAddress:   xdsAddr,
		NodeID:       node,
		AdminAddress: "127.0.0.1:0",
		DrainTimeout: 2 * time.Second,
		Logger:       log.With("node", node),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("sidecar %s shutdown: %v", node, err)
		}
	})
	return s
}

// newClient is an HTTP client of its own, so that its idle connections can
// be closed before goleak looks.
func newClient(t *testing.T) *http.Client {
	t.Helper()
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

type reply struct {
	status int
	body   string
	reason string // x-watertight-reason
}

func get(c *http.Client, addr, host, path string) (reply, error) {
	req, err := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return reply{}, err
	}
	req.Host = host
	resp, err := c.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return reply{}, err
	}
	return reply{resp.StatusCode, string(b), resp.Header.Get("x-watertight-reason")}, nil
}

// mustGet is get that fails the test on a transport error.
func mustGet(t *testing.T, c *http.Client, addr, host, path string) reply {
	t.Helper()
	r, err := get(c, addr, host, path)
	if err != nil {
		t.Fatalf("GET http://%s%s (Host %s): %v", addr, path, host, err)
	}
	return r
}

// eventually polls cond until it holds or wait passes; it returns how long
// it took.
func eventually(t *testing.T, what string, cond func() bool) time.Duration {
	t.Helper()
	return poll.Until(t, wait, what, cond)
}

// metric sums the series of name whose labels include the given pairs.
func metric(t *testing.T, g prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	want := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
	return testmetrics.Sum(t, g, name, want)
}

func sidecarMetric(t *testing.T, s *sidecar.Sidecar, name string, labels ...string) float64 {
	t.Helper()
	return metric(t, s.Metrics().Prometheus(), name, labels...)
}

// nacks is how many xDS responses the sidecar rejected, of every type.
func nacks(t *testing.T, s *sidecar.Sidecar) float64 {
	t.Helper()
	return sidecarMetric(t, s, "watertight_xds_updates_total", "result", "nack")
}

// limit is the upstream's bulkhead limit in force (-1: no such upstream).
func limit(s *sidecar.Sidecar, upstream string) int {
	for _, p := range s.Proxy().Pools() {
		if p.Upstream == upstream {
			return p.Stats.Limit
		}
	}
	return -1
}

// timeout is the upstream's timeout in force (-1: no such upstream).
func timeout(s *sidecar.Sidecar, upstream string) time.Duration {
	cfg := s.Proxy().Config()
	if cfg == nil {
		return -1
	}
	for _, u := range cfg.Upstreams {
		if u.Name == upstream {
			return u.Timeout.Duration
		}
	}
	return -1
}

func adminGet(t *testing.T, c *http.Client, s *sidecar.Sidecar, path string) int {
	t.Helper()
	resp, err := c.Get("http://" + s.AdminAddr().String() + path)
	if err != nil {
		t.Fatalf("admin %s: %v", path, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

func ready(t *testing.T, c *http.Client, s *sidecar.Sidecar) bool {
	t.Helper()
	return adminGet(t, c, s, "/ready") == http.StatusOK
}

// waitConfig waits for /ready and for the version of the config in force
// (set just after the data plane turns ready).
func waitConfig(t *testing.T, c *http.Client, s *sidecar.Sidecar, what string) {
	t.Helper()
	eventually(t, what, func() bool { return ready(t, c, s) && s.Version() != "" })
}

// TestReadyAfterFirstConfigAndRouteByHost: a sidecar whose control plane is
// not up yet is not ready and listens nowhere; once the control plane comes
// up it connects, applies the config, turns ready and routes by Host.
func TestReadyAfterFirstConfigAndRouteByHost(t *testing.T) {
	log, _ := testLog(t, "test")
	dir := t.TempDir()
	listen := freeAddr(t)
	writeFile(t, filepath.Join(dir, "default.yaml"), fmt.Sprintf(`
listeners: [{name: out, address: %q, mode: proxy}]
upstreams:
  - {name: alpha, hosts: [alpha.svc], endpoints: [%q]}
  - {name: beta, hosts: [beta.svc, beta.example], endpoints: [%q]}
`, listen, httpUpstream(t, "alpha", nil), httpUpstream(t, "beta", nil)))
	cpAddr := freeAddr(t)
	c := newClient(t)

	s := startSidecar(t, cpAddr, "node-a", log)
	if ready(t, c, s) {
		t.Fatal("/ready is 200 before any config arrived")
	}
	if got := sidecarMetric(t, s, "watertight_xds_connected"); got != 0 {
		t.Errorf("watertight_xds_connected = %v with no control plane, want 0", got)
	}
	if _, err := get(c, listen, "alpha.svc", "/"); err == nil {
		t.Error("the config's listener answers before the config arrived")
	}

	startControlPlane(t, dir, cpAddr, log.With("component", "controlplane"))
	took := eventually(t, "/ready to turn 200", func() bool { return ready(t, c, s) })
	t.Logf("ready %v after the control plane started", took)
	if got := sidecarMetric(t, s, "watertight_xds_connected"); got != 1 {
		t.Errorf("watertight_xds_connected = %v, want 1", got)
	}
	// Counted just after the data plane turns ready.
	eventually(t, `watertight_config_info{source="xds:`+cpAddr+`"} 1`, func() bool {
		return sidecarMetric(t, s, "watertight_config_info", "source", "xds:"+cpAddr) == 1
	})
	for host, want := range map[string]string{"alpha.svc": "alpha", "beta.svc": "beta", "beta.example": "beta"} {
		if r := mustGet(t, c, listen, host, "/"); r.status != 200 || r.body != want {
			t.Errorf("Host %s: %d %q, want 200 %q", host, r.status, r.body, want)
		}
	}
	if r := mustGet(t, c, listen, "nobody.svc", "/"); r.status != http.StatusNotFound || r.reason != "no_route" {
		t.Errorf("unknown host: %d reason %q, want 404 no_route", r.status, r.reason)
	}
	if n := nacks(t, s); n != 0 {
		t.Errorf("the sidecar NACKed %v updates of a good config", n)
	}
}

// load sends requests from several goroutines until stopped, and counts
// every one that does not come back 200 with the upstream's answer.
type load struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	firstFail  string
	stop       chan struct{}
	done       sync.WaitGroup
}

func startLoad(t *testing.T, c *http.Client, addr, host, want string, workers int) *load {
	l := &load{stop: make(chan struct{})}
	for range workers {
		l.done.Go(func() {
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				r, err := get(c, addr, host, "/")
				if err == nil && r.status == 200 && r.body == want {
					l.ok.Add(1)
					continue
				}
				l.failed.Add(1)
				l.mu.Lock()
				if l.firstFail == "" {
					l.firstFail = fmt.Sprintf("status %d reason %q body %q error %v", r.status, r.reason, r.body, err)
				}
				l.mu.Unlock()
			}
		})
	}
	t.Cleanup(l.finish)
	return l
}

func (l *load) finish() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.done.Wait()
}

// TestLiveChangeUnderLoad: while requests flow without pause, default.yaml
// changes an upstream's weight (so its bulkhead limit) and timeout, several
// times. No request fails, and each change is in force within a second of
// the file write.
func TestLiveChangeUnderLoad(t *testing.T) {
	log, _ := testLog(t, "test")
	dir := t.TempDir()
	listen := freeAddr(t)
	svc := httpUpstream(t, "svc", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			select {
			case <-r.Context().Done():
				return
			case <-time.After(500 * time.Millisecond):
			}
		}
		_, _ = io.WriteString(w, "svc")
	})
	other := httpUpstream(t, "other", nil)
	write := func(weight int, timeout string) {
		writeFile(t, filepath.Join(dir, "default.yaml"), fmt.Sprintf(`
budget: 40
listeners: [{name: out, address: %q, mode: proxy}]
upstreams:
  - {name: svc, endpoints: [%q], bulkhead: {weight: %d}, timeout: %s}
  - {name: other, endpoints: [%q]}
`, listen, svc, weight, timeout, other))
	}
	write(1, "200ms")
	cp := startControlPlane(t, dir, "127.0.0.1:0", log.With("component", "controlplane"))
	s := startSidecar(t, cp.Addr().String(), "node-a", log)
	c := newClient(t)
	waitConfig(t, c, s, "the first config")
	if got := limit(s, "svc"); got != 20 {
		t.Fatalf("svc limit = %d, want 20 (budget 40, weights 1:1)", got)
	}
	if r := mustGet(t, c, listen, "svc", "/slow"); r.status != http.StatusGatewayTimeout || r.reason != "timeout" {
		t.Fatalf("/slow with timeout 200ms: %d %q, want 504 timeout", r.status, r.reason)
	}

	l := startLoad(t, c, listen, "svc", "svc", 6)
	eventually(t, "the load to get going", func() bool { return l.ok.Load() >= 50 })
	steps := []struct {
		weight  int
		timeout string
		limit   int
	}{
		{3, "2s", 30}, // floor(40*3/4)
		{1, "200ms", 20},
		{3, "2s", 30},
		{2, "1s", 26}, // floor(40*2/3)
		{3, "2s", 30},
	}
	var worst time.Duration
	for i, st := range steps {
		want, _ := time.ParseDuration(st.timeout)
		before := l.ok.Load()
		write(st.weight, st.timeout)
		written := time.Now()
		eventually(t, fmt.Sprintf("step %d: limit %d and timeout %s in force", i, st.limit, st.timeout), func() bool {
			return limit(s, "svc") == st.limit && timeout(s, "svc") == want
		})
		took := time.Since(written)
		worst = max(worst, took)
		t.Logf("step %d (weight %d, timeout %s): in force %v after the file write", i, st.weight, st.timeout, took)
		if took > time.Second {
			t.Errorf("step %d: the change took %v to be in force, want under 1s", i, took)
		}
		// Let requests flow on the new config before the next change.
		eventually(t, "requests on the new config", func() bool { return l.ok.Load() >= before+50 })
	}
	t.Logf("file write → new limit and timeout in force: worst %v over %d changes", worst, len(steps))
	if r := mustGet(t, c, listen, "svc", "/slow"); r.status != 200 {
		t.Errorf("/slow with timeout 2s: %d %q, want 200", r.status, r.reason)
	}
	l.finish()
	t.Logf("load: %d requests ok, %d failed", l.ok.Load(), l.failed.Load())
	if n := l.failed.Load(); n != 0 {
		t.Errorf("%d requests failed during the changes; the first: %s", n, l.firstFail)
	}
	if got := sidecarMetric(t, s, "watertight_bulkhead_limit", "upstream", "svc"); got != 30 {
		t.Errorf(`watertight_bulkhead_limit{upstream="svc"} = %v, want 30`, got)
	}
	if n := nacks(t, s); n != 0 {
		t.Errorf("the sidecar NACKed %v updates of good configs", n)
	}
}

// TestAddAndRemoveUpstream: an upstream added to the file becomes routable;
// removed, its hosts get 404 no_route, and nothing is NACKed on the way.
func TestAddAndRemoveUpstream(t *testing.T) {
	log, _ := testLog(t, "test")
	dir := t.TempDir()
	listen := freeAddr(t)
	svc, extra := httpUpstream(t, "svc", nil), httpUpstream(t, "extra", nil)
	base := fmt.Sprintf(`
listeners: [{name: out, address: %q, mode: proxy}]
upstreams:
  - {name: svc, endpoints: [%q]}
`, listen, svc)
	withExtra := base + fmt.Sprintf(`  - {name: extra, hosts: [extra.svc, extra.example], endpoints: [%q], bulkhead: {maxConcurrent: 3}}
`, extra)
	writeFile(t, filepath.Join(dir, "default.yaml"), base)
	cp := startControlPlane(t, dir, "127.0.0.1:0", log.With("component", "controlplane"))
	s := startSidecar(t, cp.Addr().String(), "node-a", log)
	c := newClient(t)
	waitConfig(t, c, s, "the first config")
	if r := mustGet(t, c, listen, "extra.svc", "/"); r.status != http.StatusNotFound {
		t.Fatalf("extra before it is added: %d, want 404", r.status)
	}

	for round := range 2 {
		writeFile(t, filepath.Join(dir, "default.yaml"), withExtra)
		eventually(t, "the added upstream to route", func() bool {
			return mustGet(t, c, listen, "extra.svc", "/").body == "extra"
		})
		if r := mustGet(t, c, listen, "extra.example", "/"); r.status != 200 || r.body != "extra" {
			t.Errorf("round %d: Host extra.example: %d %q, want 200 extra", round, r.status, r.body)
		}
		if got := limit(s, "extra"); got != 3 {
			t.Errorf("round %d: extra's limit = %d, want 3", round, got)
		}

		writeFile(t, filepath.Join(dir, "default.yaml"), base)
		eventually(t, "the removed upstream to be gone", func() bool {
			return limit(s, "extra") == -1 && mustGet(t, c, listen, "extra.svc", "/").status == http.StatusNotFound
		})
		if r := mustGet(t, c, listen, "extra.svc", "/"); r.reason != "no_route" {
			t.Errorf("round %d: removed upstream: reason %q, want no_route", round, r.reason)
		}
		if r := mustGet(t, c, listen, "svc", "/"); r.status != 200 || r.body != "svc" {
			t.Errorf("round %d: svc: %d %q, want 200 svc", round, r.status, r.body)
		}
	}
	if n := nacks(t, s); n != 0 {
		t.Errorf("the sidecar NACKed %v updates while an upstream was added and removed", n)
	}
	if n := metric(t, cp.reg, "watertight_controlplane_replies_total", "result", "nack"); n != 0 {
		t.Errorf("the control plane saw %v NACKs while an upstream was added and removed", n)
	}
}

// TestPerNodeFile: nodes/<id>.yaml replaces an upstream and a listener for
// that node only, and a change to it reaches that node only.
func TestPerNodeFile(t *testing.T) {
	log, _ := testLog(t, "test")
	dir := t.TempDir()
	listenA, listenB := freeAddr(t), freeAddr(t)
	one, two := httpUpstream(t, "one", nil), httpUpstream(t, "two", nil)
	writeFile(t, filepath.Join(dir, "default.yaml"), fmt.Sprintf(`
listeners: [{name: out, address: %q, mode: proxy}]
upstreams:
  - {name: svc, endpoints: [%q], bulkhead: {maxConcurrent: 4}}
`, listenA, one))
	node := func(maxConcurrent int) string {
		return fmt.Sprintf(`
listeners: [{name: out, address: %q, mode: proxy}]
upstreams:
  - {name: svc, endpoints: [%q], bulkhead: {maxConcurrent: %d}}
`, listenB, two, maxConcurrent)
	}
	writeFile(t, filepath.Join(dir, "nodes", "node-b.yaml"), node(5))
	cp := startControlPlane(t, dir, "127.0.0.1:0", log.With("component", "controlplane"))
	a := startSidecar(t, cp.Addr().String(), "node-a", log)
	b := startSidecar(t, cp.Addr().String(), "node-b", log)
	c := newClient(t)
	waitConfig(t, c, a, "node-a's config")
	waitConfig(t, c, b, "node-b's config")
	if r := mustGet(t, c, listenA, "svc", "/"); r.body != "one" {
		t.Errorf("node-a: svc answered %d %q, want one", r.status, r.body)
	}
	if r := mustGet(t, c, listenB, "svc", "/"); r.body != "two" {
		t.Errorf("node-b: svc answered %d %q, want two", r.status, r.body)
	}
	if la, lb := limit(a, "svc"), limit(b, "svc"); la != 4 || lb != 5 {
		t.Errorf("limits: node-a %d, node-b %d; want 4 and 5", la, lb)
	}
	if _, ok := a.Proxy().Addr("out"); !ok {
		t.Error("node-a has no listener out")
	}

	writeFile(t, filepath.Join(dir, "nodes", "node-b.yaml"), node(9))
	eventually(t, "node-b's new limit", func() bool { return limit(b, "svc") == 9 })
	if got := limit(a, "svc"); got != 4 {
		t.Errorf("node-a's limit changed to %d with node-b's file", got)
	}
	for _, s := range []*sidecar.Sidecar{a, b} {
		if n := nacks(t, s); n != 0 {
			t.Errorf("a sidecar NACKed %v updates", n)
		}
	}
}

// TestControlPlaneAwayAndBack: without its control plane the sidecar keeps
// serving the last config and says it is disconnected; a control plane back
// on the same address with a changed config is reconnected to and caught up
// with.
func TestControlPlaneAwayAndBack(t *testing.T) {
	log, _ := testLog(t, "test")
	dir := t.TempDir()
	listen := freeAddr(t)
	svc := httpUpstream(t, "svc", nil)
	write := func(maxConcurrent int) {
		writeFile(t, filepath.Join(dir, "default.yaml"), fmt.Sprintf(`
listeners: [{name: out, address: %q, mode: proxy}]
upstreams:
  - {name: svc, endpoints: [%q], bulkhead: {maxConcurrent: %d}}
`, listen, svc, maxConcurrent))
	}
	write(4)
	cp := startControlPlane(t, dir, "127.0.0.1:0", log.With("component", "controlplane-1"))
	cpAddr := cp.Addr().String()
	s := startSidecar(t, cpAddr, "node-a", log)
	c := newClient(t)
	waitConfig(t, c, s, "the first config")
	version := s.Version()

	cp.stop()
	eventually(t, "watertight_xds_connected 0", func() bool {
		return sidecarMetric(t, s, "watertight_xds_connected") == 0
	})
	for range 20 {
		if r := mustGet(t, c, listen, "svc", "/"); r.status != 200 || r.body != "svc" {
			t.Fatalf("without the control plane: %d %q, want 200 svc", r.status, r.body)
		}
	}
	if !ready(t, c, s) {
		t.Error("/ready turned 503 when the control plane went away")
	}
	if got := limit(s, "svc"); got != 4 || s.Version() != version {
		t.Errorf("config changed without a control plane: limit %d, version %s (was %s)", got, s.Version(), version)
	}

	write(7)
	back := startControlPlane(t, dir, cpAddr, log.With("component", "controlplane-2"))
	took := eventually(t, "the sidecar to catch up with the new control plane", func() bool { return limit(s, "svc") == 7 })
	t.Logf("caught up %v after the control plane came back", took)
	if got := sidecarMetric(t, s, "watertight_xds_connected"); got != 1 {
		t.Errorf("watertight_xds_connected = %v after reconnecting, want 1", got)
	}
	if r := mustGet(t, c, listen, "svc", "/"); r.status != 200 || r.body != "svc" {
		t.Errorf("after reconnecting: %d %q, want 200 svc", r.status, r.body)
	}
	if n := metric(t, back.reg, "watertight_controlplane_connected_streams"); n != 1 {
		t.Errorf("the new control plane has %v streams, want 1", n)
	}
	if n := nacks(t, s); n != 0 {
		t.Errorf("the sidecar NACKed %v updates", n)
	}
}

// TestNACKKeepsConfigAndDoesNotLoop: a listener on a port that is taken on
// the sidecar's host passes the control plane's validation but cannot be
// applied. The sidecar NACKs it with a readable reason, which reaches the
// control plane; the old config keeps serving; neither side loops. A fixed
// config is then accepted.
func TestNACKKeepsConfigAndDoesNotLoop(t *testing.T) {
	log, _ := testLog(t, "test")
	cpLog, cpBuf := testLog(t, "control plane")
	dir := t.TempDir()
	listen, fixed := freeAddr(t), freeAddr(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = taken.Close() })
	svc := httpUpstream(t, "svc", nil)
	write := func(second string) {
		doc := fmt.Sprintf(`
listeners:
  - {name: out, address: %q, mode: proxy}
`, listen)
		if second != "" {
			doc += fmt.Sprintf("  - {name: direct, address: %q, mode: upstream, upstream: svc}\n", second)
		}
		doc += fmt.Sprintf("upstreams: [{name: svc, endpoints: [%q]}]\n", svc)
		writeFile(t, filepath.Join(dir, "default.yaml"), doc)
	}
	write("")
	cp := startControlPlane(t, dir, "127.0.0.1:0", cpLog)
	s := startSidecar(t, cp.Addr().String(), "node-a", log)
	c := newClient(t)
	waitConfig(t, c, s, "the first config")
	good := s.Version()

	// The listener arrives first and waits for its new route config; the
	// route config completes the set, which then fails to apply: it is the
	// update NACKed.
	write(taken.Addr().String())
	eventually(t, "the sidecar's NACK", func() bool { return nacks(t, s) >= 1 })
	eventually(t, "the control plane to see the NACK", func() bool {
		return metric(t, cp.reg, "watertight_controlplane_replies_total", "result", "nack") >= 1
	})
	// The reason reaches the control plane, readable: what, where, why.
	eventually(t, "the NACK's reason in the control plane's log", func() bool {
		return strings.Contains(cpBuf.String(), "rejected an update (NACK)")
	})
	for _, want := range []string{"listeners[1].address", taken.Addr().String(), "address already in use"} {
		if !strings.Contains(cpBuf.String(), want) {
			t.Errorf("the control plane's log of the NACK does not say %q:\n%s", want, grep(cpBuf.String(), "NACK"))
		}
	}

	// Neither side loops: over two seconds, while the old config serves,
	// the control plane sends nothing more (it holds the NACKed type) and the
	// sidecar NACKs no more.
	pushes := metric(t, cp.reg, "watertight_controlplane_pushes_total")
	sidecarNACKs := nacks(t, s)
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); {
		if r := mustGet(t, c, listen, "svc", "/"); r.status != 200 || r.body != "svc" {
			t.Fatalf("the old config stopped serving after the NACK: %d %q", r.status, r.body)
		}
	}
	if more := metric(t, cp.reg, "watertight_controlplane_pushes_total") - pushes; more > 1 {
		t.Errorf("the control plane pushed %v more responses after the NACK, want at most 1", more)
	}
	if more := nacks(t, s) - sidecarNACKs; more > 1 {
		t.Errorf("the sidecar NACKed %v more times, want at most 1", more)
	}
	if total := nacks(t, s); total > 3 {
		t.Errorf("the sidecar NACKed %v times in all, want few", total)
	}
	if s.Version() != good {
		t.Errorf("the config in force changed to %s, want %s (the last good)", s.Version(), good)
	}
	if _, ok := s.Proxy().Addr("direct"); ok {
		t.Error("the rejected listener is in force")
	}
	if !ready(t, c, s) {
		t.Error("/ready turned 503 after a NACK")
	}

	// Fixed: the new config is accepted.
	rejected := nacks(t, s)
	write(fixed)
	eventually(t, "the fixed config to serve", func() bool {
		r, err := get(c, fixed, "anything", "/")
		return err == nil && r.status == 200 && r.body == "svc"
	})
	// The version is recorded just after the data plane has the config.
	eventually(t, "the version in force to change", func() bool { return s.Version() != good })
	if n := nacks(t, s); n != rejected {
		t.Errorf("the fixed config was NACKed (%v NACKs, were %v)", n, rejected)
	}
}

// grep is the lines of s that contain substr.
func grep(s, substr string) string {
	var out []string
	for line := range strings.Lines(s) {
		if strings.Contains(line, substr) {
			out = append(out, strings.TrimRight(line, "\n"))
		}
	}
	return strings.Join(out, "\n")
}

// plainControlPlane is go-control-plane as anyone would run it: a snapshot
// cache and its server, no watertight code, default (unordered) ADS.
type plainControlPlane struct {
	cache cachev3.SnapshotCache
	addr  string
}

func startPlainControlPlane(t *testing.T) *plainControlPlane {
	t.Helper()
	cache := cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	srv := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(srv, serverv3.NewServer(ctx, cache, nil))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		cancel() // ends the ADS streams, so that GracefulStop does not wait on them
		srv.GracefulStop()
		<-done
	})
	return &plainControlPlane{cache: cache, addr: ln.Addr().String()}
}

// plainUpstream is one virtual host, EDS cluster and load assignment in
// Envoy's standard fields only.
type plainUpstream struct {
	name, host, endpoint string
	maxRequests          uint32
}

func socketAddr(t *testing.T, hostport string) *corev3.Address {
	t.Helper()
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		t.Fatal(err)
	}
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(n)},
	}}}
}

// plainSnapshot is a listener on listen whose HttpConnectionManager takes
// route config "outbound" over ADS (or has it inline), and the upstreams: no
// Runtime, no metadata.
func plainSnapshot(t *testing.T, version, listen string, inline bool, ups ...plainUpstream) *cachev3.Snapshot {
	t.Helper()
	ads := &corev3.ConfigSource{
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
		ResourceApiVersion:    corev3.ApiVersion_V3,
	}
	router, err := anypb.New(&routerv3.Router{})
	if err != nil {
		t.Fatal(err)
	}
	rc := &routev3.RouteConfiguration{Name: "outbound"}
	res := map[resourcev3.Type][]types.Resource{}
	for _, u := range ups {
		rc.VirtualHosts = append(rc.VirtualHosts, &routev3.VirtualHost{
			Name:    u.name,
			Domains: []string{u.host},
			Routes: []*routev3.Route{{
				Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{
					ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: u.name},
					Timeout:          durationpb.New(3 * time.Second),
				}},
			}},
		})
		res[resourcev3.ClusterType] = append(res[resourcev3.ClusterType], &clusterv3.Cluster{
			Name:                 u.name,
			ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
			EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: ads},
			LbPolicy:             clusterv3.Cluster_ROUND_ROBIN,
			CircuitBreakers: &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
				Priority:    corev3.RoutingPriority_DEFAULT,
				MaxRequests: wrapperspb.UInt32(u.maxRequests),
			}}},
		})
		res[resourcev3.EndpointType] = append(res[resourcev3.EndpointType], &endpointv3.ClusterLoadAssignment{
			ClusterName: u.name,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{
				Locality: &corev3.Locality{Zone: "a"},
				LbEndpoints: []*endpointv3.LbEndpoint{{
					HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: socketAddr(t, u.endpoint)}},
				}},
			}},
		})
	}
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix:     "outbound",
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{ConfigSource: ads, RouteConfigName: "outbound"}},
		HttpFilters: []*hcmv3.HttpFilter{{
			Name:       wellknown.Router,
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router},
		}},
	}
	if inline {
		hcm.RouteSpecifier = &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: rc}
	} else {
		res[resourcev3.RouteType] = []types.Resource{rc}
	}
	typed, err := anypb.New(hcm)
	if err != nil {
		t.Fatal(err)
	}
	res[resourcev3.ListenerType] = []types.Resource{&listenerv3.Listener{
		Name:    "outbound",
		Address: socketAddr(t, listen),
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name:       wellknown.HTTPConnectionManager,
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: typed},
		}}}},
	}}
	snap, err := cachev3.NewSnapshot(version, res)
	if err != nil {
		t.Fatal(err)
	}
	if err := snap.Consistent(); err != nil {
		t.Fatal(err)
	}
	return snap
}

// TestPlainGoControlPlane: the sidecar runs on Envoy's standard resources
// from a go-control-plane server that knows nothing of watertight (no
// Runtime ever comes, no metadata), and follows its updates: a changed
// max_requests, an upstream added and removed. Routes come over RDS, or
// inline in the listener.
func TestPlainGoControlPlane(t *testing.T) {
	for _, inline := range []bool{false, true} {
		name := "rds"
		if inline {
			name = "inline"
		}
		t.Run(name, func(t *testing.T) { testPlainGoControlPlane(t, inline) })
	}
}

func testPlainGoControlPlane(t *testing.T, inline bool) {
	log, _ := testLog(t, "test")
	cp := startPlainControlPlane(t)
	listen := freeAddr(t)
	one := plainUpstream{"one", "one.svc", httpUpstream(t, "one", nil), 7}
	two := plainUpstream{"two", "two.svc", httpUpstream(t, "two", nil), 3}
	set := func(version string, ups ...plainUpstream) {
		t.Helper()
		if err := cp.cache.SetSnapshot(context.Background(), "plain-node", plainSnapshot(t, version, listen, inline, ups...)); err != nil {
			t.Fatal(err)
		}
	}
	set("v1", one)
	s := startSidecar(t, cp.addr, "plain-node", log)
	c := newClient(t)
	waitConfig(t, c, s, "the config from plain resources")
	if r := mustGet(t, c, listen, "one.svc", "/"); r.status != 200 || r.body != "one" {
		t.Errorf("Host one.svc: %d %q, want 200 one", r.status, r.body)
	}
	if got := limit(s, "one"); got != 7 {
		t.Errorf("one's limit = %d, want max_requests 7", got)
	}
	if got := timeout(s, "one"); got != 3*time.Second {
		t.Errorf("one's timeout = %v, want the route's 3s", got)
	}
	if r := mustGet(t, c, listen, "two.svc", "/"); r.status != http.StatusNotFound || r.reason != "no_route" {
		t.Errorf("Host two.svc before it exists: %d %q, want 404 no_route", r.status, r.reason)
	}

	one.maxRequests = 9
	set("v2", one, two)
	eventually(t, "v2: one's new limit and two routable", func() bool {
		return limit(s, "one") == 9 && mustGet(t, c, listen, "two.svc", "/").body == "two"
	})
	if got := limit(s, "two"); got != 3 {
		t.Errorf("two's limit = %d, want max_requests 3", got)
	}
	set("v3", one)
	eventually(t, "v3: two gone", func() bool {
		return limit(s, "two") == -1 && mustGet(t, c, listen, "two.svc", "/").status == http.StatusNotFound
	})
	if r := mustGet(t, c, listen, "one.svc", "/"); r.status != 200 || r.body != "one" {
		t.Errorf("Host one.svc after v3: %d %q, want 200 one", r.status, r.body)
	}
	if n := sidecarMetric(t, s, "watertight_xds_updates_total", "type", "rtds", "result", "ack"); n != 0 {
		t.Errorf("the sidecar accepted %v Runtime responses from a control plane that has none", n)
	}
	t.Logf("NACKs on the way (the plain server's order is random): %v", nacks(t, s))
}
