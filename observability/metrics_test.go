package observability

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/watertight/watertight/metrics"
)

// contract is DESIGN.md's "Metrics" section (and README's reload counter,
// the composite calls' metrics, and the control plane's own metrics): name →
// type and label names, and for the composite metrics the exact help text
// of metrics/composite.go. TestMetricsContract checks it against what is
// exported and against docs/observability.md's tables.
var contract = map[string]struct {
	typ    dto.MetricType
	labels []string
	help   string // "": any, as long as there is one
}{
	"watertight_requests_total":              {dto.MetricType_COUNTER, []string{"result", "upstream"}, ""},
	"watertight_request_duration_seconds":    {dto.MetricType_HISTOGRAM, []string{"upstream"}, ""},
	"watertight_bulkhead_active":             {dto.MetricType_GAUGE, []string{"upstream"}, ""},
	"watertight_bulkhead_queued":             {dto.MetricType_GAUGE, []string{"upstream"}, ""},
	"watertight_bulkhead_limit":              {dto.MetricType_GAUGE, []string{"upstream"}, ""},
	"watertight_bulkhead_queue_capacity":     {dto.MetricType_GAUGE, []string{"upstream"}, ""},
	"watertight_bulkhead_queue_wait_seconds": {dto.MetricType_HISTOGRAM, []string{"upstream"}, ""},
	"watertight_circuit_state":               {dto.MetricType_GAUGE, []string{"state", "upstream"}, ""},
	"watertight_fallbacks_total":             {dto.MetricType_COUNTER, []string{"cause", "upstream"}, ""},
	"watertight_retries_total":               {dto.MetricType_COUNTER, []string{"upstream"}, ""},
	"watertight_endpoint_ejected":            {dto.MetricType_GAUGE, []string{"endpoint", "upstream"}, ""},
	"watertight_xds_connected":               {dto.MetricType_GAUGE, nil, ""},
	"watertight_xds_updates_total":           {dto.MetricType_COUNTER, []string{"result", "type"}, ""},
	"watertight_config_info":                 {dto.MetricType_GAUGE, []string{"source", "version"}, ""},
	"watertight_config_reloads_total":        {dto.MetricType_COUNTER, []string{"result"}, ""},

	"watertight_composite_requests_total": {dto.MetricType_COUNTER, []string{"composite", "result"},
		"Composite calls by how they ended (ok, degraded, failed, canceled)."},
	"watertight_composite_duration_seconds": {dto.MetricType_HISTOGRAM, []string{"composite"},
		"Time from a composite call's arrival to its last node's end (or its failure)."},
	"watertight_composite_node_results_total": {dto.MetricType_COUNTER, []string{"composite", "node", "result"},
		"Nodes of composite calls by how they ended (ok, degraded, failed, skipped, canceled)."},
	"watertight_composite_node_duration_seconds": {dto.MetricType_HISTOGRAM, []string{"composite", "node"},
		"Time a composite's node took, from its start (all its inputs done) to its answer."},
	"watertight_composite_first_segment_seconds": {dto.MetricType_HISTOGRAM, []string{"composite"},
		"Time from a composite call's arrival to its first (core) segment or single answer."},
	"watertight_composite_segment_arrival_seconds": {dto.MetricType_HISTOGRAM, []string{"composite"},
		"Time from a composite call's arrival to each later (weak node) segment of a multi-segment answer; buckets 1, 3 and 5 s."},

	"watertight_controlplane_connected_streams":  {dto.MetricType_GAUGE, nil, ""},
	"watertight_controlplane_pushes_total":       {dto.MetricType_COUNTER, []string{"type"}, ""},
	"watertight_controlplane_replies_total":      {dto.MetricType_COUNTER, []string{"result", "type"}, ""},
	"watertight_controlplane_snapshots_total":    {dto.MetricType_COUNTER, nil, ""},
	"watertight_controlplane_snapshot_info":      {dto.MetricType_GAUGE, []string{"node", "version"}, ""},
	"watertight_controlplane_config_loads_total": {dto.MetricType_COUNTER, []string{"result"}, ""},
}

// The fixed enumerations label values may come from, besides config names.
var (
	results     = []string{"ok", "upstream_error", "timeout", "bulkhead_full", "queue_timeout", "circuit_open", "rate_limited", "upstream_unavailable", "canceled"}
	causes      = []string{"upstream_error", "timeout", "bulkhead_full", "queue_timeout", "circuit_open", "rate_limited", "upstream_unavailable"}
	states      = []string{"closed", "open", "half_open"}
	xdsTypes    = []string{"lds", "rds", "cds", "eds", "rtds"}
	ackNack     = []string{"ack", "nack"}
	successFail = []string{"success", "failure"}
)

// allFamilies scrapes the busy sidecar, an xDS sidecar and a control plane
// and merges what they export.
func allFamilies(t *testing.T, b *busy, x *xdsPair) map[string]*dto.MetricFamily {
	t.Helper()
	out := families(t, metricsURL(b.Sidecar))
	for name, mf := range families(t, metricsURL(x.sidecar)) {
		if _, ok := out[name]; !ok {
			out[name] = mf
		}
	}
	for name, mf := range families(t, x.cpAdmin) {
		if _, ok := out[name]; !ok {
			out[name] = mf
		}
	}
	return out
}

// TestMetricsContract: every metric of the contract is exported with its
// type, exactly its labels and help text; nothing watertight_* is exported
// that the contract (and so docs/observability.md) does not know; the
// histograms' buckets resolve 100µs to 10s.
func TestMetricsContract(t *testing.T) {
	log := testLog(t, "sidecars")
	b := startBusy(t, log)
	b.drive(t)
	x := startXDSPair(t, log)
	fams := allFamilies(t, b, x)

	for name, want := range contract {
		mf := fams[name]
		if mf == nil {
			t.Errorf("%s is not exported", name)
			continue
		}
		if mf.GetType() != want.typ {
			t.Errorf("%s is a %v, the contract says %v", name, mf.GetType(), want.typ)
		}
		if got := labelNames(mf); !slices.Equal(got, want.labels) {
			t.Errorf("%s has labels %v, the contract says %v", name, got, want.labels)
		}
		if want.help != "" && mf.GetHelp() != want.help {
			t.Errorf("%s has help %q, the contract (metrics/composite.go) says %q", name, mf.GetHelp(), want.help)
		}
	}
	// docs/observability.md's tables are the contract as users read it.
	documented := documentedMetrics(t)
	for name, want := range contract {
		doc, ok := documented[name]
		switch {
		case !ok:
			t.Errorf("%s is not in a table of %s", name, docFile)
		case doc.typ != strings.ToLower(want.typ.String()) || !slices.Equal(doc.labels, want.labels):
			t.Errorf("%s: %s says %s %v, the contract %v %v", name, docFile, doc.typ, doc.labels, want.typ, want.labels)
		}
	}
	for name := range documented {
		if _, ok := contract[name]; !ok {
			t.Errorf("%s is in %s but not in the contract", name, docFile)
		}
	}
	for name, mf := range fams {
		if strings.TrimSpace(mf.GetHelp()) == "" {
			t.Errorf("%s has no help text", name)
		}
		if _, ok := contract[name]; strings.HasPrefix(name, "watertight_") && !ok {
			t.Errorf("%s is exported but not in the contract (add it to DESIGN.md/docs/observability.md and to this test)", name)
		}
	}
	for _, name := range []string{
		"watertight_request_duration_seconds", "watertight_bulkhead_queue_wait_seconds",
		"watertight_composite_duration_seconds", "watertight_composite_node_duration_seconds",
		"watertight_composite_first_segment_seconds",
	} {
		if len(fams[name].GetMetric()) == 0 {
			t.Errorf("%s has no series", name)
		}
		for _, m := range fams[name].GetMetric() {
			var bounds []float64
			for _, bk := range m.GetHistogram().GetBucket() {
				bounds = append(bounds, bk.GetUpperBound())
			}
			if !slices.Equal(bounds, metrics.LatencyBuckets) || bounds[0] != 0.0001 || bounds[len(bounds)-1] != 10 {
				t.Errorf("%s{%s} buckets %v, want %v (100µs to 10s)", name, m.GetLabel(), bounds, metrics.LatencyBuckets)
			}
		}
	}
	// The later segments' histogram has the background's marks only, so
	// that the dashboard's within-1s/3s/5s ratios are exact.
	for _, m := range fams["watertight_composite_segment_arrival_seconds"].GetMetric() {
		var bounds []float64
		for _, bk := range m.GetHistogram().GetBucket() {
			bounds = append(bounds, bk.GetUpperBound())
		}
		if !slices.Equal(bounds, []float64{1, 3, 5}) || !slices.Equal(bounds, metrics.SegmentArrivalBuckets) {
			t.Errorf("watertight_composite_segment_arrival_seconds{%s} buckets %v, want [1 3 5]", m.GetLabel(), bounds)
		}
	}
	// Every node of the composite has its series, labelled with the
	// composite's and the node's names from the config.
	for _, n := range compositeNodes {
		if !hasSeries(fams["watertight_composite_node_results_total"], "composite", compositeName, "node", n) ||
			!hasSeries(fams["watertight_composite_node_duration_seconds"], "composite", compositeName, "node", n) {
			t.Errorf("no watertight_composite_node_* series for node %q of composite %q", n, compositeName)
		}
	}
	// Every upstream has its series from the start, with every result, so
	// that rates and alerts have something to work on.
	for _, u := range upstreamNames {
		for _, r := range results {
			if !hasSeries(fams["watertight_requests_total"], "upstream", u, "result", r) {
				t.Errorf("no watertight_requests_total{upstream=%q,result=%q}", u, r)
			}
		}
		for _, st := range states {
			if !hasSeries(fams["watertight_circuit_state"], "upstream", u, "state", st) {
				t.Errorf("no watertight_circuit_state{upstream=%q,state=%q}", u, st)
			}
		}
	}
}

// docMetric is a row of one of docs/observability.md's metric tables.
type docMetric struct {
	typ    string
	labels []string // sorted
}

// documentedMetrics reads the metric tables of docs/observability.md: rows
// "| `name` | type | `label`, `label` | meaning |".
func documentedMetrics(t *testing.T) map[string]docMetric {
	t.Helper()
	out := map[string]docMetric{}
	for _, line := range strings.Split(string(readFile(t, docFile)), "\n") {
		if !strings.HasPrefix(line, "| `watertight_") {
			continue
		}
		cells := strings.Split(line, "|")
		if len(cells) < 5 {
			t.Errorf("%s: a metric row with fewer than 4 cells: %s", docFile, line)
			continue
		}
		name := strings.Trim(strings.TrimSpace(cells[1]), "`")
		var labels []string
		for _, l := range strings.Split(cells[3], ",") {
			if l = strings.Trim(strings.TrimSpace(l), "`"); l != "" {
				labels = append(labels, l)
			}
		}
		sort.Strings(labels)
		if _, dup := out[name]; dup {
			t.Errorf("%s: %s has two rows", docFile, name)
		}
		out[name] = docMetric{typ: strings.TrimSpace(cells[2]), labels: labels}
	}
	return out
}

func hasSeries(mf *dto.MetricFamily, labels ...string) bool {
series:
	for _, m := range mf.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			if labelValue(m, labels[i]) != labels[i+1] {
				continue series
			}
		}
		return true
	}
	return false
}

// TestNativeHistograms: scraped in the protobuf format (what Prometheus asks
// for with native histograms enabled), the latency histograms carry native
// buckets (a schema, spans and deltas) next to the classic ones.
func TestNativeHistograms(t *testing.T) {
	b := startBusy(t, testLog(t, "sidecar"))
	b.drive(t)
	fams := families(t, metricsURL(b.Sidecar))
	for _, c := range []struct{ name, upstream string }{
		{"watertight_request_duration_seconds", "healthy"},
		{"watertight_request_duration_seconds", "slow"},
		{"watertight_bulkhead_queue_wait_seconds", "slow"},
	} {
		var h *dto.Histogram
		for _, m := range fams[c.name].GetMetric() {
			if labelValue(m, "upstream") == c.upstream {
				h = m.GetHistogram()
			}
		}
		if h == nil || h.GetSampleCount() == 0 {
			t.Errorf("%s{upstream=%q}: no observations", c.name, c.upstream)
			continue
		}
		spans, deltas := len(h.GetPositiveSpan()), len(h.GetPositiveDelta())
		if h.Schema == nil || spans == 0 || deltas == 0 {
			t.Errorf("%s{upstream=%q} has no native buckets (schema %v, %d spans, %d deltas)", c.name, c.upstream, h.Schema, spans, deltas)
		}
		if h.GetSchema() < 3 {
			t.Errorf("%s{upstream=%q}: schema %d is coarser than a bucket factor of 1.1 asks for", c.name, c.upstream, h.GetSchema())
		}
		if len(h.GetBucket()) != len(metrics.LatencyBuckets) {
			t.Errorf("%s{upstream=%q}: %d classic buckets, want %d next to the native ones", c.name, c.upstream, len(h.GetBucket()), len(metrics.LatencyBuckets))
		}
	}
}

// TestPromtoolCheckMetrics: `promtool check metrics` (Prometheus' linter of
// the exposition: naming, units, suffixes, help) has nothing to say about a
// sidecar with traffic, an xDS sidecar or the control plane.
func TestPromtoolCheckMetrics(t *testing.T) {
	promtool := requireTool(t, "promtool")
	log := testLog(t, "sidecars")
	b := startBusy(t, log)
	b.drive(t)
	x := startXDSPair(t, log)
	for _, target := range []struct{ name, url string }{
		{"file-configured sidecar with traffic", metricsURL(b.Sidecar)},
		{"xDS-configured sidecar", metricsURL(x.sidecar)},
		{"control plane", x.cpAdmin},
	} {
		body, _ := scrape(t, target.url, acceptText)
		if !bytes.Contains(body, []byte("# HELP watertight_")) {
			t.Fatalf("the %s exports no watertight_ metrics:\n%s", target.name, body)
		}
		cmd := exec.Command(promtool, "check", "metrics")
		cmd.Stdin = bytes.NewReader(body)
		out, err := cmd.CombinedOutput()
		if err != nil || len(bytes.TrimSpace(out)) != 0 {
			t.Errorf("promtool check metrics on the %s: %v\n%s", target.name, err, out)
		}
	}
}

// TestLabelValuesComeFromConfig: after requests with many different paths,
// hosts, methods, headers and deadlines, every label value of every
// watertight_* series is an upstream or endpoint of the config or one of the
// fixed enumerations, and the number of series has not grown.
func TestLabelValuesComeFromConfig(t *testing.T) {
	log := testLog(t, "sidecars")
	b := startBusy(t, log)
	b.drive(t)
	x := startXDSPair(t, log)
	xOut := listenerAddr(t, x.sidecar, "out")
	before := seriesCount(allFamilies(t, b, x))

	c := newClient(t)
	rng := rand.New(rand.NewPCG(1, 2))
	hosts := []string{"healthy", "healthy.shop.svc.cluster.local", "HEALTHY", "healthy:8080", "limited", "flaky", "timeouts"}
	methods := []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodHead, "PATCH", "PURGE"}
	for i := range 300 {
		host := hosts[rng.IntN(len(hosts))]
		if i%3 == 0 {
			host = fmt.Sprintf("unknown-%d.example", i) // no route: 404, no upstream
		}
		hdr := http.Header{
			"X-Request-Id":                {fmt.Sprintf("req-%d", i)},
			"User-Agent":                  {fmt.Sprintf("agent/%d", i)},
			"X-Request-Timeout":           {fmt.Sprintf("%dms", 1+rng.IntN(500))},
			fmt.Sprintf("X-Custom-%d", i): {"v"},
		}
		if i%5 == 0 {
			hdr.Set("Content-Type", "application/grpc")
			hdr.Set("Grpc-Timeout", fmt.Sprintf("%dm", 1+rng.IntN(500)))
		}
		out := b.out
		if i%4 == 1 { // the xDS sidecar's listener, from the control plane
			out = xOut
			if i%8 == 1 {
				host = "inventory"
			}
		}
		url := fmt.Sprintf("http://%s/path/%d/%x?q=%d", out, i, rng.Uint64(), i)
		if _, _, err := do(c, methods[rng.IntN(len(methods))], url, host, hdr); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	fams := allFamilies(t, b, x)
	if after := seriesCount(fams); after != before {
		t.Errorf("watertight_* series grew from %d to %d with request data", before, after)
	}

	allowed := map[string][]string{
		"upstream": append(slices.Clone(upstreamNames), "inventory"),
		"result": slices.Concat(results, ackNack, successFail, []string{
			metrics.CompositeOK, metrics.CompositeDegraded, metrics.CompositeFailed, metrics.CompositeCanceled,
			metrics.NodeOK, metrics.NodeDegraded, metrics.NodeFailed, metrics.NodeSkipped, metrics.NodeCanceled,
		}),
		"cause":     causes,
		"state":     states,
		"type":      xdsTypes,
		"composite": {compositeName},
		"node":      compositeNodes,
	}
	for _, eps := range b.endpoints {
		allowed["endpoint"] = append(allowed["endpoint"], eps...)
	}
	allowed["endpoint"] = append(allowed["endpoint"], x.upstream)
	for name, mf := range fams {
		if !strings.HasPrefix(name, "watertight_") {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				k, v := lp.GetName(), lp.GetValue()
				switch {
				case k == "version" || k == "source":
					// config_info: one series, the config in force (checked
					// below); snapshot_info: one per node id.
					continue
				case k == "node" && name == "watertight_controlplane_snapshot_info":
					continue // an xDS node id, not a composite's node
				}
				if !slices.Contains(allowed[k], v) {
					t.Errorf("%s{%s=%q}: not a value from the config or a fixed enumeration", name, k, v)
				}
			}
		}
	}
	for _, name := range []string{"watertight_config_info", "watertight_xds_connected"} {
		if n := len(fams[name].GetMetric()); n != 1 {
			t.Errorf("%s has %d series, want 1", name, n)
		}
	}
}

func seriesCount(fams map[string]*dto.MetricFamily) int {
	n := 0
	for name, mf := range fams {
		if strings.HasPrefix(name, "watertight_") {
			n += len(mf.GetMetric())
		}
	}
	return n
}
