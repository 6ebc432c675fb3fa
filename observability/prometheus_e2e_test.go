package observability

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/watertight/watertight/internal/testlog"
)

// TestPrometheusEndToEnd runs a real Prometheus (Debian's, with native
// histograms enabled) against a real sidecar on loopback. One upstream is
// slow and saturated by the test's load (2 slots, a queue of 2, 200ms
// maxWait, 1s answers), the other healthy. Prometheus scrapes the admin
// port every second with the labels Kubernetes service discovery would add
// (namespace, pod) and evaluates:
//
//   - the project's rule file as it is: its alerts wait minutes (`for:`), so
//     within a test the saturation alert can only reach "pending", which it
//     must;
//   - a copy of the same rules with every `for:` cut to 1s (and a label
//     variant="fast"), where the saturation, rejection-ratio and queue-wait
//     alerts of the slow upstream must reach "firing". The expressions are
//     the project's, unchanged, on real data; the queue-wait alert goes
//     through its native-histogram branch, since Prometheus 2.42 with native
//     histograms ingests only those.
//
// Meanwhile no alert may name the healthy upstream, in any state, in either
// file, and no alert other than those three may appear at all. Then every
// query of the dashboard must be valid PromQL on this Prometheus, every
// query of its composite row must have data for the composite the test
// calls all along, and the dashboard's top panel must name the slow
// upstream first.
func TestPrometheusEndToEnd(t *testing.T) {
	promBin := requireTool(t, "prometheus")
	log := testLog(t, "sidecar")

	slow := startUpstream(t, slowHandler(t, time.Second))
	healthy := startUpstream(t, okHandler)
	s := startSidecar(t, fmt.Sprintf(`
listeners:
  - {name: out, address: "127.0.0.1:0", mode: proxy}
upstreams:
  - name: slow
    endpoints: [%q]
    timeout: 10s
    bulkhead: {maxConcurrent: 2, maxQueue: 2, maxWait: 200ms}
  - name: healthy
    endpoints: [%q]
    timeout: 5s
    bulkhead: {maxConcurrent: 8}
composites:
  - name: page
    listener: out
    path: /page/{id}
    nodes:
      - {name: user, upstream: healthy, critical: true, path: "/users/{{request.path.id}}"}
      - {name: recs, upstream: healthy, path: "/recs?user={{nodes.user.status}}"}
`, slow, healthy), log)
	prom := startPrometheus(t, promBin, s.AdminAddr().String())
	out := "http://" + listenerAddr(t, s, "out")
	load(t, out+"/", map[string]int{"slow": 6, "healthy": 2}, nil)
	// The composite, core first: recs comes in a later segment.
	load(t, out+"/page/1", map[string]int{"any": 1}, http.Header{"Accept": {"application/x-ndjson"}})

	const saturated = "WatertightBulkheadSaturated"
	fastFiring := []string{saturated, "WatertightHighRejectionRatio", "WatertightQueueWaitHigh"}
	var last []promAlert
	eventually(t, "the saturation alert pending, and the fast variant's alerts firing, for upstream slow", func() bool {
		last = prom.alerts(t)
		for _, a := range last {
			if a.Labels["upstream"] == "healthy" {
				t.Fatalf("an alert for the healthy upstream: %+v", a)
			}
			if !slices.Contains(fastFiring, a.Labels["alertname"]) || a.Labels["upstream"] != "slow" {
				t.Fatalf("an unexpected alert: %+v", a)
			}
			if a.Labels["namespace"] != "e2e" || a.Labels["pod"] != "e2e-pod-1" {
				t.Fatalf("an alert without the pod's namespace and pod labels: %+v", a)
			}
		}
		if !hasAlert(last, "", saturated, "pending", "firing") {
			return false
		}
		for _, name := range fastFiring {
			if !hasAlert(last, "fast", name, "firing") {
				return false
			}
		}
		return true
	})
	for _, a := range last {
		if a.Labels["alertname"] == saturated && a.Labels["variant"] == "" {
			t.Logf("project rule file: %s %s, value %s: %s", saturated, a.State, a.Value, a.Annotations["description"])
		}
	}

	// Quiet for the whole run, not only now: ALERTS keeps every state an
	// alert was in.
	if r := prom.query(t, `max_over_time(ALERTS{upstream="healthy"}[10m])`); len(r) != 0 {
		t.Errorf("the healthy upstream had alerts during the run: %v", r)
	}
	if r := prom.query(t, `count by (alertname) (max_over_time(ALERTS{upstream="slow"}[10m]))`); len(r) != len(fastFiring) {
		t.Errorf("alerts of the slow upstream during the run: %v, want %v", r, fastFiring)
	}

	// Native histograms: Prometheus asked for the protobuf exposition and
	// stored the latency as a native histogram.
	r := prom.query(t, `watertight_request_duration_seconds{upstream="healthy"}`)
	if len(r) != 1 || r[0].Histogram == nil {
		t.Errorf("watertight_request_duration_seconds{upstream=\"healthy\"} is not a native histogram in Prometheus: %+v", r)
	}
	if r := prom.query(t, `histogram_quantile(0.99, rate(watertight_request_duration_seconds{upstream="slow"}[1m])) > 0`); len(r) != 1 {
		t.Errorf("no p99 latency of the slow upstream from the native histogram: %+v", r)
	}

	if n := len(prom.query(t, `watertight_bulkhead_queue_wait_seconds_bucket`)); n == 0 {
		t.Log("classic buckets not stored (native histograms only): the queue-wait alert fired from its native-histogram branch")
	}
	// The dashboard's queries, with its variables set to this pod.
	vars := strings.NewReplacer(`$namespace`, "e2e", `$pod`, "e2e-pod-1", `$upstream`, "slow|healthy", `$composite`, "page", `$__rate_interval`, "1m")
	d := loadDashboard(t)
	for row, ps := range d.rows() {
		for _, p := range ps {
			for _, tg := range p.Targets {
				expr := vars.Replace(tg.Expr)
				if _, err := prom.try(expr); err != nil {
					t.Errorf("row %q panel %q: %v\n%s", row, p.Title, err, expr)
				}
			}
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		m := labelValuesRe.FindStringSubmatch(variableQuery(t, v.Query))
		if m == nil {
			continue // reported by TestDashboardAndRulesUseExportedMetrics
		}
		got := prom.labelValues(t, m[2], vars.Replace(m[1]))
		want := map[string][]string{"namespace": {"e2e"}, "pod": {"e2e-pod-1"}, "upstream": {"healthy", "slow"}, "composite": {"page"}}[v.Name]
		if !slices.Equal(got, want) {
			t.Errorf("variable %s: %v, want %v", v.Name, got, want)
		}
	}
	// The composite row's queries have data: the composite was called all
	// along, core first, and its later segment went out within 1 s.
	for row, ps := range d.rows() {
		if !strings.Contains(strings.ToLower(row), "composite") {
			continue
		}
		for _, p := range ps {
			for _, tg := range p.Targets {
				expr := vars.Replace(tg.Expr)
				res, err := prom.try(expr)
				if err != nil {
					continue // reported above
				}
				if len(res) == 0 {
					t.Errorf("row %q panel %q: no data\n%s", row, p.Title, expr)
				}
				for _, r := range res {
					if r.Metric["composite"] != "page" {
						t.Errorf("row %q panel %q: a series without composite=\"page\": %+v", row, p.Title, r)
					}
				}
			}
		}
	}
	if r := prom.query(t, vars.Replace(`sum by (composite) (rate(watertight_composite_segment_arrival_seconds_bucket{composite="page", le=~"1|1.0"}[1m])) / sum by (composite) (rate(watertight_composite_segment_arrival_seconds_count{composite="page"}[1m]))`)); len(r) != 1 || r[0].Value[1] != "1" {
		t.Errorf("share of later segments within 1s: %+v, want 1", r)
	}
	top := d.rows()[d.Panels[0].Title][0]
	res := prom.query(t, vars.Replace(top.Targets[0].Expr))
	if len(res) == 0 || res[0].Metric["upstream"] != "slow" {
		t.Errorf("the dashboard's first panel (%q) does not put the slow upstream first: %+v", top.Title, res)
	}
}

// load sends requests to each upstream (by Host) from the given number of
// workers, each at most 10 a second, with the given headers, until the test
// ends.
func load(t *testing.T, url string, workers map[string]int, hdr http.Header) {
	t.Helper()
	c := newClient(t)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for host, n := range workers {
		for range n {
			wg.Go(func() {
				tick := time.NewTicker(100 * time.Millisecond)
				defer tick.Stop()
				for {
					req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
					req.Host = host
					for k, v := range hdr {
						req.Header[k] = v
					}
					if resp, err := c.Do(req); err == nil {
						_, _ = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
					}
					select {
					case <-ctx.Done():
						return
					case <-tick.C:
					}
				}
			})
		}
	}
}

// promServer is a running Prometheus server.
type promServer struct {
	base string
	c    *http.Client
}

// startPrometheus runs Prometheus scraping target every second, with the
// project's rule file and its fast variant, until the test ends.
func startPrometheus(t *testing.T, bin, target string) *promServer {
	t.Helper()
	dir := t.TempDir()
	rules, err := filepath.Abs(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	fast := filepath.Join(dir, "fast-rules.yaml")
	writeFastVariant(t, rules, fast)
	cfg := fmt.Sprintf(`
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: [%q, %q]
scrape_configs:
  - job_name: watertight
    static_configs:
      - targets: [%q]
        labels: {namespace: e2e, pod: e2e-pod-1}
`, rules, fast, target)
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	// The port is free when picked but may be taken before Prometheus binds
	// it: then it exits at once, and another port is tried.
	for attempt := 1; ; attempt++ {
		p, err := runPrometheus(t, bin, cfgPath, filepath.Join(dir, fmt.Sprintf("data-%d", attempt)))
		if err == nil {
			return p
		}
		if attempt == 3 || !strings.Contains(err.Error(), "address already in use") {
			t.Fatal(err)
		}
		t.Logf("retrying on another port: %v", err)
	}
}

// runPrometheus starts Prometheus with cfgPath on a free loopback port and
// waits until it has scraped the sidecar. It is stopped (and waited for)
// when the test ends. An error means it exited before that.
func runPrometheus(t *testing.T, bin, cfgPath, dataDir string) (*promServer, error) {
	t.Helper()
	addr := freeLoopback(t)
	out := &testlog.Buffer{}
	cmd := exec.Command(bin,
		"--config.file="+cfgPath,
		"--storage.tsdb.path="+dataDir,
		"--web.listen-address="+addr,
		"--enable-feature=native-histograms",
		"--log.level=info",
	)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting prometheus: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	t.Cleanup(func() {
		if stopped {
			return
		}
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("prometheus log:\n%s", out.String())
		}
	})
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	p := &promServer{base: "http://" + addr, c: &http.Client{Transport: tr, Timeout: 5 * time.Second}}
	var exitErr error
	eventually(t, "prometheus to be ready and scraping the sidecar", func() bool {
		select {
		case err := <-exited:
			stopped = true
			exitErr = fmt.Errorf("prometheus exited (%v):\n%s", err, out.String())
			return true
		default:
		}
		r, err := p.try(`up{job="watertight"} == 1`)
		return err == nil && len(r) == 1
	})
	if exitErr != nil {
		return nil, exitErr
	}
	return p, nil
}

// writeFastVariant copies the rule file with every `for:` cut to 1s, its
// groups renamed and its alerts labelled variant="fast". Expressions,
// labels and annotations stay as they are.
func writeFastVariant(t *testing.T, from, to string) {
	t.Helper()
	var f map[string]any
	if err := yaml.Unmarshal(readFile(t, from), &f); err != nil {
		t.Fatal(err)
	}
	for _, g := range f["groups"].([]any) {
		g := g.(map[string]any)
		g["name"] = "fast-" + g["name"].(string)
		for _, r := range g["rules"].([]any) {
			r := r.(map[string]any)
			if _, ok := r["for"]; ok {
				r["for"] = "1s"
			}
			labels, _ := r["labels"].(map[string]any)
			if labels == nil {
				labels = map[string]any{}
			}
			labels["variant"] = "fast"
			r["labels"] = labels
		}
	}
	b, err := yaml.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// freeLoopback is a loopback address that was free a moment ago.
func freeLoopback(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

type promAlert struct {
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	State       string            `json:"state"`
	Value       string            `json:"value"`
}

// hasAlert: an alert of the slow upstream named name from the given variant
// ("" for the project's file) is in one of states.
func hasAlert(as []promAlert, variant, name string, states ...string) bool {
	for _, a := range as {
		if a.Labels["alertname"] == name && a.Labels["variant"] == variant && a.Labels["upstream"] == "slow" && slices.Contains(states, a.State) {
			return true
		}
	}
	return false
}

func (p *promServer) get(path string, params url.Values, out any) error {
	resp, err := p.c.Get(p.base + path + "?" + params.Encode())
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var env struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&env); err != nil {
		return fmt.Errorf("%s: %d, %v", path, resp.StatusCode, err)
	}
	if env.Status != "success" {
		return fmt.Errorf("%s: %s", path, env.Error)
	}
	return json.Unmarshal(env.Data, out)
}

func (p *promServer) alerts(t *testing.T) []promAlert {
	t.Helper()
	var d struct {
		Alerts []promAlert `json:"alerts"`
	}
	if err := p.get("/api/v1/alerts", nil, &d); err != nil {
		t.Fatalf("alerts: %v", err)
	}
	return d.Alerts
}

type promSample struct {
	Metric    map[string]string `json:"metric"`
	Value     []any             `json:"value"`
	Histogram []any             `json:"histogram"`
}

// try runs an instant query and returns its vector (or an error for
// invalid PromQL).
func (p *promServer) try(expr string) ([]promSample, error) {
	var d struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	if err := p.get("/api/v1/query", url.Values{"query": {expr}}, &d); err != nil {
		return nil, err
	}
	if d.ResultType != "vector" {
		return nil, fmt.Errorf("result type %s, want vector", d.ResultType)
	}
	var out []promSample
	return out, json.Unmarshal(d.Result, &out)
}

func (p *promServer) query(t *testing.T, expr string) []promSample {
	t.Helper()
	r, err := p.try(expr)
	if err != nil {
		t.Fatalf("query %s: %v", expr, err)
	}
	return r
}

func (p *promServer) labelValues(t *testing.T, label, match string) []string {
	t.Helper()
	var out []string
	if err := p.get("/api/v1/label/"+label+"/values", url.Values{"match[]": {match}}, &out); err != nil {
		t.Fatalf("label values of %s for %s: %v", label, match, err)
	}
	slices.Sort(out)
	return out
}
