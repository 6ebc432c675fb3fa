package observability

import (
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
)

// PromQL, read just enough to find what an expression depends on: the
// metric names it selects, the labels it matches on and groups by.
var (
	metricRe   = regexp.MustCompile(`\b(watertight_[a-z0-9_]+|ALERTS)\b`)
	selectorRe = regexp.MustCompile(`\b(watertight_[a-z0-9_]+|ALERTS)\s*\{([^}]*)\}`)
	matcherRe  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"`)
	groupingRe = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)`)
	// Template variables and Grafana's interval macros.
	labelValuesRe = regexp.MustCompile(`label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)$`)
	legendLabelRe = regexp.MustCompile(`\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}`)
	annotLabelRe  = regexp.MustCompile(`\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)`)
)

// targetLabels are what Prometheus adds to every scraped series: job and
// instance, and namespace and pod from Kubernetes service discovery.
var targetLabels = []string{"job", "instance", "namespace", "pod"}

func metricNames(expr string) []string {
	var out []string
	for _, m := range metricRe.FindAllStringSubmatch(expr, -1) {
		if !slices.Contains(out, m[1]) {
			out = append(out, m[1])
		}
	}
	return out
}

// baseName maps a histogram's series to its family.
func baseName(name string) string {
	for _, suf := range []string{"_bucket", "_count", "_sum"} {
		if b, ok := strings.CutSuffix(name, suf); ok {
			if c, ok := contract[b]; ok && c.typ == dto.MetricType_HISTOGRAM {
				return b
			}
		}
	}
	return name
}

// exprLabels are the label names expr matches on or groups by.
func exprLabels(expr string) []string {
	var out []string
	add := func(l string) {
		if l = strings.TrimSpace(l); l != "" && !slices.Contains(out, l) {
			out = append(out, l)
		}
	}
	for _, s := range selectorRe.FindAllStringSubmatch(expr, -1) {
		for _, m := range matcherRe.FindAllStringSubmatch(s[2], -1) {
			add(m[1])
		}
	}
	for _, g := range groupingRe.FindAllStringSubmatch(expr, -1) {
		for _, l := range strings.Split(g[2], ",") {
			add(l)
		}
	}
	return out
}

// dashboard is the part of a Grafana dashboard the tests read.
type dashboard struct {
	Title      string  `json:"title"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Datasource *datasource     `json:"datasource"`
			IncludeAll bool            `json:"includeAll"`
			Multi      bool            `json:"multi"`
		} `json:"list"`
	} `json:"templating"`
}

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type panel struct {
	ID         int         `json:"id"`
	Type       string      `json:"type"`
	Title      string      `json:"title"`
	Repeat     string      `json:"repeat"`
	Collapsed  bool        `json:"collapsed"`
	Datasource *datasource `json:"datasource"`
	Panels     []panel     `json:"panels"` // a collapsed row's
	Targets    []struct {
		Expr         string      `json:"expr"`
		LegendFormat string      `json:"legendFormat"`
		Datasource   *datasource `json:"datasource"`
	} `json:"targets"`
}

func loadDashboard(t *testing.T) *dashboard {
	t.Helper()
	var d dashboard
	if err := json.Unmarshal(readFile(t, dashboardFile), &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	return &d
}

// rowsOf flattens the panels, each with the title of the row it is in
// (rows are expanded: a row's panels follow it, or sit in it if collapsed).
func (d *dashboard) rows() map[string][]panel {
	out := map[string][]panel{}
	row := ""
	for _, p := range d.Panels {
		if p.Type == "row" {
			row = p.Title
			out[row] = append(out[row], p.Panels...)
			continue
		}
		out[row] = append(out[row], p)
	}
	return out
}

// queries are every PromQL expression of the dashboard: panel targets and
// template variable queries (label_values(...) unwrapped).
func (d *dashboard) queries(t *testing.T) (exprs []string, legends []string) {
	t.Helper()
	for _, ps := range d.rows() {
		for _, p := range ps {
			for _, tg := range p.Targets {
				exprs = append(exprs, tg.Expr)
				legends = append(legends, tg.LegendFormat)
			}
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		q := variableQuery(t, v.Query)
		m := labelValuesRe.FindStringSubmatch(q)
		if m == nil {
			t.Errorf("variable %s: query %q is not label_values(metric{...}, label)", v.Name, q)
			continue
		}
		exprs = append(exprs, m[1])
		legends = append(legends, "{{"+m[2]+"}}") // the label it lists is checked as printed

	}
	return exprs, legends
}

func variableQuery(t *testing.T, raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var o struct {
		Query string `json:"query"`
	}
	if err := json.Unmarshal(raw, &o); err != nil {
		t.Errorf("variable query %s: %v", raw, err)
	}
	return o.Query
}

// TestDashboardAndRulesUseExportedMetrics scrapes running processes (a
// file-configured sidecar with traffic, an xDS sidecar and the control
// plane) and checks that every metric the dashboard and the rules query is
// exported, and that every label they match on, group by, print in a legend
// or an annotation is one those metrics carry (or a target label).
func TestDashboardAndRulesUseExportedMetrics(t *testing.T) {
	log := testLog(t, "sidecars")
	b := startBusy(t, log)
	b.drive(t)
	x := startXDSPair(t, log)
	fams := allFamilies(t, b, x)
	exported := map[string][]string{} // name → its labels (histograms: and le)
	for name, mf := range fams {
		ls := labelNames(mf)
		if mf.GetType() == dto.MetricType_HISTOGRAM {
			ls = append(ls, "le")
		}
		exported[name] = ls
	}
	// ALERTS is Prometheus' own series of the rules' alerts: its labels are
	// the alerts' labels.
	alertLabels := []string{"alertname", "alertstate", "severity"}
	for _, r := range loadRules(t) {
		for _, name := range metricNames(r.Expr) {
			alertLabels = append(alertLabels, exported[baseName(name)]...)
		}
	}
	exported["ALERTS"] = alertLabels

	check := func(where, expr string, printed []string) {
		names := metricNames(expr)
		var labels []string
		for _, name := range names {
			ls, ok := exported[baseName(name)]
			if !ok {
				t.Errorf("%s: %s is not exported by the sidecar or the control plane", where, name)
			}
			labels = append(labels, ls...)
		}
		labels = append(labels, targetLabels...)
		for _, l := range append(exprLabels(expr), printed...) {
			if l != "__name__" && !slices.Contains(labels, l) {
				t.Errorf("%s: label %q is not a label of %v", where, l, names)
			}
		}
	}
	used := map[string]bool{}
	d := loadDashboard(t)
	exprs, legends := d.queries(t)
	for i, e := range exprs {
		var printed []string
		for _, m := range legendLabelRe.FindAllStringSubmatch(legends[i], -1) {
			printed = append(printed, m[1])
		}
		check("dashboard query "+strings.ReplaceAll(e, "\n", " "), e, printed)
		for _, n := range metricNames(e) {
			used[baseName(n)] = true
		}
	}
	for _, r := range loadRules(t) {
		var printed []string
		for _, a := range r.Annotations {
			for _, m := range annotLabelRe.FindAllStringSubmatch(a, -1) {
				printed = append(printed, m[1])
			}
		}
		check("rule "+r.Alert, r.Expr, printed)
		for _, n := range metricNames(r.Expr) {
			used[baseName(n)] = true
		}
	}
	// And the other way: the dashboard shows every watertight_* metric.
	var unused []string
	for name := range exported {
		if strings.HasPrefix(name, "watertight_") && !used[name] {
			unused = append(unused, name)
		}
	}
	sort.Strings(unused)
	if len(unused) > 0 {
		t.Errorf("exported but in neither the dashboard nor the rules: %v", unused)
	}
}

// TestDashboardShape: the datasource is a variable that every query uses;
// namespace, pod and upstream are variables every sidecar query filters on
// (composite, every composite query); a top row answers "which dependency is
// hurting us", a row repeated per upstream shows its traffic, latency, pool,
// queue, refusals, breaker and endpoints, a row shows xDS health and the
// config version, and a collapsed row shows the composite calls.
func TestDashboardShape(t *testing.T) {
	d := loadDashboard(t)
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
		if v.Type == "query" {
			if v.Datasource == nil || v.Datasource.UID != "${datasource}" {
				t.Errorf("variable %s does not query the datasource variable", v.Name)
			}
			if !v.IncludeAll || !v.Multi {
				t.Errorf("variable %s should allow All and several values", v.Name)
			}
		}
	}
	want := map[string]string{"datasource": "datasource", "namespace": "query", "pod": "query", "upstream": "query", "composite": "query"}
	for name, typ := range want {
		if vars[name] != typ {
			t.Errorf("variable %s: type %q, want %q", name, vars[name], typ)
		}
	}

	rows := d.rows()
	metricsOf := func(ps []panel) map[string]bool {
		out := map[string]bool{}
		for _, p := range ps {
			for _, tg := range p.Targets {
				for _, n := range metricNames(tg.Expr) {
					out[baseName(n)] = true
				}
			}
		}
		return out
	}
	var top, perUpstream, xdsRow, compositeRow string
	compositeCollapsed := false
	for _, p := range d.Panels {
		if p.Type != "row" {
			continue
		}
		switch {
		case top == "":
			top = p.Title
		case p.Repeat == "upstream":
			perUpstream = p.Title
		case strings.Contains(p.Title, "xDS"):
			xdsRow = p.Title
		case strings.Contains(strings.ToLower(p.Title), "composite"):
			compositeRow, compositeCollapsed = p.Title, p.Collapsed
		}
	}
	if !strings.Contains(strings.ToLower(top), "hurting") {
		t.Errorf("the first row is %q, want the one answering which dependency is hurting us", top)
	}
	if len(rows[top]) < 3 {
		t.Errorf("top row %q has %d panels", top, len(rows[top]))
	}
	if perUpstream == "" {
		t.Fatal("no row repeated per upstream")
	}
	got := metricsOf(rows[perUpstream])
	for _, m := range []string{
		"watertight_requests_total", "watertight_request_duration_seconds", "watertight_bulkhead_active",
		"watertight_bulkhead_limit", "watertight_bulkhead_queued", "watertight_bulkhead_queue_capacity",
		"watertight_bulkhead_queue_wait_seconds", "watertight_fallbacks_total", "watertight_circuit_state",
		"watertight_endpoint_ejected",
	} {
		if !got[m] {
			t.Errorf("the per-upstream row does not show %s", m)
		}
	}
	got = metricsOf(rows[xdsRow])
	for _, m := range []string{"watertight_xds_connected", "watertight_xds_updates_total", "watertight_config_info"} {
		if !got[m] {
			t.Errorf("the xDS row %q does not show %s", xdsRow, m)
		}
	}
	checkCompositeRow(t, d, compositeRow, compositeCollapsed, rows[compositeRow])

	for row, ps := range rows {
		for _, p := range ps {
			if p.Type != "row" && (p.Datasource == nil || p.Datasource.UID != "${datasource}") {
				t.Errorf("panel %q does not use the datasource variable", p.Title)
			}
			for _, tg := range p.Targets {
				if tg.Datasource == nil || tg.Datasource.UID != "${datasource}" {
					t.Errorf("panel %q: a query does not use the datasource variable", p.Title)
				}
				for _, s := range selectorRe.FindAllStringSubmatch(tg.Expr, -1) {
					name, body := baseName(s[1]), s[2]
					if strings.HasPrefix(name, "watertight_controlplane_") {
						continue
					}
					need := []string{`namespace=~"$namespace"`, `pod=~"$pod"`}
					if c, ok := contract[name]; ok && slices.Contains(c.labels, "upstream") && name != "ALERTS" {
						need = append(need, `upstream=~"$upstream"`)
					}
					if c, ok := contract[name]; ok && slices.Contains(c.labels, "composite") {
						need = append(need, `composite=~"$composite"`)
					}
					for _, n := range need {
						if !strings.Contains(body, n) {
							t.Errorf("row %q panel %q: %s{%s} does not filter on %s", row, p.Title, s[1], body, n)
						}
					}
				}
				for _, n := range metricNames(tg.Expr) {
					if strings.HasPrefix(n, "watertight_") && !strings.HasPrefix(n, "watertight_controlplane_") &&
						!regexp.MustCompile(regexp.QuoteMeta(n)+`\s*\{`).MatchString(tg.Expr) {
						t.Errorf("panel %q: %s is selected without the namespace/pod filters", p.Title, n)
					}
				}
			}
		}
	}
}

// checkCompositeRow: the collapsed "Composite calls" row has a panel for
// each thing the composite metrics are for: calls by result, p50/p99
// duration, p50/p99 time to the first (core) segment, the share of later
// segments within 1 s, 3 s and 5 s, node results by node and result, and
// p99 node duration; and the composite variable lists the composites
// (label_values over a composite metric, filtered like the upstream one).
func checkCompositeRow(t *testing.T, d *dashboard, title string, collapsed bool, ps []panel) {
	t.Helper()
	if title == "" {
		t.Fatal("no composite calls row")
	}
	if !collapsed {
		t.Errorf("the row %q is not collapsed", title)
	}
	for _, v := range d.Templating.List {
		if v.Name != "composite" {
			continue
		}
		q := variableQuery(t, v.Query)
		m := labelValuesRe.FindStringSubmatch(q)
		if m == nil || m[2] != "composite" || !slices.ContainsFunc(metricNames(m[1]), func(n string) bool {
			return strings.HasPrefix(n, "watertight_composite_")
		}) || !strings.Contains(m[1], `namespace=~"$namespace"`) || !strings.Contains(m[1], `pod=~"$pod"`) {
			t.Errorf("variable composite: query %q, want label_values(watertight_composite_...{namespace=~\"$namespace\", pod=~\"$pod\"}, composite)", q)
		}
	}
	// A panel answers a question when one of its queries matches every
	// pattern.
	type question struct {
		what     string
		patterns []string
	}
	quantile := func(q, metric, by string) question {
		return question{fmt.Sprintf("p%s of %s by %s", strings.TrimPrefix(q, "0."), metric, by), []string{
			`histogram_quantile\(` + regexp.QuoteMeta(q) + `, sum by \(` + by + `, le\) \(rate\(` + metric + `_bucket\{`,
			`or\s+histogram_quantile\(` + regexp.QuoteMeta(q) + `, sum by \(` + by + `\) \(rate\(` + metric + `\{`, // native histograms
		}}
	}
	within := func(s string) question {
		return question{"later segments within " + s + "s", []string{
			`sum by \(composite\) \(rate\(watertight_composite_segment_arrival_seconds_bucket\{[^}]*le=~"` + s + `\|` + s + `\.0"\}`,
			`/\s*sum by \(composite\) \(rate\(watertight_composite_segment_arrival_seconds_count\{`,
		}}
	}
	questions := []question{
		{"composite calls by result", []string{`sum by \(composite, result\) \(rate\(watertight_composite_requests_total\{`}},
		quantile("0.5", "watertight_composite_duration_seconds", "composite"),
		quantile("0.99", "watertight_composite_duration_seconds", "composite"),
		quantile("0.5", "watertight_composite_first_segment_seconds", "composite"),
		quantile("0.99", "watertight_composite_first_segment_seconds", "composite"),
		within("1"), within("3"), within("5"),
		{"node results by node and result", []string{`sum by \(composite, node, result\) \(rate\(watertight_composite_node_results_total\{`}},
		quantile("0.99", "watertight_composite_node_duration_seconds", "composite, node"),
	}
	for _, q := range questions {
		found := false
		for _, p := range ps {
			for _, tg := range p.Targets {
				all := true
				for _, pat := range q.patterns {
					all = all && regexp.MustCompile(pat).MatchString(tg.Expr)
				}
				found = found || all
			}
		}
		if !found {
			t.Errorf("the row %q has no panel showing %s", title, q.what)
		}
	}
	// And nothing but composites: every query of the row is over the
	// composite metrics, filtered on the composite variable (checked for
	// every selector above).
	for _, p := range ps {
		for _, tg := range p.Targets {
			for _, n := range metricNames(tg.Expr) {
				if !strings.HasPrefix(n, "watertight_composite_") {
					t.Errorf("row %q panel %q: %s is not a composite metric", title, p.Title, n)
				}
			}
		}
	}
}
