package composite_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"
)

// The background's graph: D needs A and B; E needs C and D. Delays are
// chosen so that grouping hurts: C, the long independent call, and D, which
// needs only the short A and B, overlap under self-driven scheduling.
var (
	delays = map[string]time.Duration{
		"A": 100 * time.Millisecond,
		"B": 200 * time.Millisecond,
		"C": 600 * time.Millisecond,
		"D": 500 * time.Millisecond,
		"E": 100 * time.Millisecond,
	}
	deps = map[string][]string{"D": {"A", "B"}, "E": {"C", "D"}}
)

// criticalPath is the longest chain of delays: what self-driven scheduling
// takes.
func criticalPath() time.Duration {
	var finish func(n string) time.Duration
	finish = func(n string) time.Duration {
		var ready time.Duration
		for _, d := range deps[n] {
			ready = max(ready, finish(d))
		}
		return ready + delays[n]
	}
	var out time.Duration
	for n := range delays {
		out = max(out, finish(n))
	}
	return out
}

// groupedSchedule is what the layer-by-layer schedule takes: layer k holds
// the nodes whose longest chain of inputs has k nodes; each layer waits for
// the slowest node of the one before (a barrier).
func groupedSchedule() time.Duration {
	var depth func(n string) int
	depth = func(n string) int {
		d := 0
		for _, in := range deps[n] {
			d = max(d, depth(in)+1)
		}
		return d
	}
	layers := map[int]time.Duration{}
	for n, d := range delays {
		layers[depth(n)] = max(layers[depth(n)], d)
	}
	var out time.Duration
	for _, d := range layers {
		out += d
	}
	return out
}

func TestSelfDrivenScheduleTakesTheCriticalPath(t *testing.T) {
	bodies := map[string]string{
		"A": `{"id":"a1"}`,
		"B": `{"id":"b1","n":2}`,
		"C": `{"x":{"y":[7,8]}}`,
		"D": `{"total":42}`,
		"E": `{"ok":true}`,
	}
	ups := map[string]*upstream{}
	addrs := map[string]string{}
	for _, n := range []string{"A", "B", "C", "D", "E"} {
		ups[n] = startUpstream(t, delayed(delays[n], http.StatusOK, bodies[n]))
		addrs[n] = ups[n].addr
	}
	s := startSidecar(t, listenerYAML+yamlUpstreams(addrs, nil)+`
composites:
  - name: page
    listener: app
    path: /page/{uid}
    deadline: 5s
    nodes:
      - {name: E, upstream: E, critical: true, path: /e,
         body: '{"d": {{nodes.D.body}}, "c": {{nodes.C.body.x.y[0]}}, "note": "user {{request.path.uid}} {{request.query.q}}"}'}
      - {name: D, upstream: D, critical: true, path: "/d/{{nodes.A.body.id}}?b={{nodes.B.body.id}}&n={{nodes.B.body.n}}"}
      - {name: A, upstream: A, critical: true, path: /a}
      - {name: B, upstream: B, critical: true, path: /b, headers: {x-user: "{{request.path.uid}}"}}
      - {name: C, upstream: C, critical: true, path: /c}
`)
	cp, grouped := criticalPath(), groupedSchedule()
	if cp != 800*time.Millisecond || grouped != 1200*time.Millisecond {
		t.Fatalf("the test's own arithmetic: critical path %v, grouped %v", cp, grouped)
	}
	const runs = 3
	var best time.Duration
	var all []time.Duration
	for i := range runs {
		resp, body, took := get(t, s.url(t)+"/page/u7?q=a%22b", "")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		if took < cp-10*time.Millisecond {
			t.Errorf("run %d took %v, less than the critical path %v: a node did not wait for its inputs", i, took, cp)
		}
		all = append(all, took.Round(time.Millisecond))
		if i == 0 || took < best {
			best = took
		}
		var got map[string]json.RawMessage
		if err := json.Unmarshal([]byte(body), &got); err != nil {
			t.Fatalf("answer is not JSON: %v: %s", err, body)
		}
		for n, want := range bodies {
			if string(got[n]) != want {
				t.Errorf("answer[%s] = %s, want %s", n, got[n], want)
			}
		}
	}
	t.Logf("composite calls: critical path %v, grouped (layer by layer) schedule %v, measured %v (best %v)", cp, grouped, all, best)
	// Half-way between the two: far above scheduling noise on both sides.
	if limit := cp + (grouped-cp)/2; best >= limit {
		t.Errorf("best run took %v: not the critical path %v (grouped would be %v)", best, cp, grouped)
	}

	// The structure itself, independent of timing: D started before C
	// ended (no barrier after the first layer), E after both C and D.
	for i := range runs {
		a, b, c, d, e := ups["A"].seen()[i], ups["B"].seen()[i], ups["C"].seen()[i], ups["D"].seen()[i], ups["E"].seen()[i]
		if d.start < max(a.end, b.end) {
			t.Errorf("run %d: D started at %v, before its inputs ended (A %v, B %v)", i, d.start, a.end, b.end)
		}
		if d.start >= c.end {
			t.Errorf("run %d: D started at %v, after C ended at %v: it waited for a layer barrier", i, d.start, c.end)
		}
		if e.start < max(c.end, d.end) {
			t.Errorf("run %d: E started at %v before its inputs ended", i, e.start)
		}
	}
	// What the templates made of the inputs.
	d := ups["D"].seen()[0]
	if d.path != "/d/a1?b=b1&n=2" {
		t.Errorf("D was called at %q", d.path)
	}
	if got := ups["B"].seen()[0].header.Get("X-User"); got != "u7" {
		t.Errorf("B got x-user %q", got)
	}
	e := ups["E"].seen()[0]
	var eb map[string]any
	if err := json.Unmarshal([]byte(e.body), &eb); err != nil {
		t.Fatalf("E's body is not JSON: %v: %s", err, e.body)
	}
	if fmt.Sprint(eb["d"]) != "map[total:42]" || fmt.Sprint(eb["c"]) != "7" || eb["note"] != `user u7 a"b` {
		t.Errorf("E's body: %s", e.body)
	}
	if ct := e.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("E's content type %q", ct)
	}
	if got := e.header.Get("X-Request-Timeout"); got == "" {
		t.Error("E was not told the composite's deadline")
	}
	// Metrics.
	if m := s.metric(t, "watertight_composite_requests_total", map[string]string{"composite": "page", "result": "ok"}); m.GetCounter().GetValue() != runs {
		t.Errorf("composite ok count %v", m.GetCounter().GetValue())
	}
	for n := range delays {
		m := s.metric(t, "watertight_composite_node_results_total", map[string]string{"composite": "page", "node": n, "result": "ok"})
		if m.GetCounter().GetValue() != runs {
			t.Errorf("node %s ok count %v", n, m.GetCounter().GetValue())
		}
	}
	if m := s.metric(t, "watertight_composite_duration_seconds", map[string]string{"composite": "page"}); m.GetHistogram().GetSampleCount() != runs {
		t.Errorf("duration count %v", m.GetHistogram().GetSampleCount())
	}
	if !slices.ContainsFunc(ups["A"].seen(), func(h hit) bool { return h.header.Get("X-Request-Timeout") != "" }) {
		t.Error("A was not told the deadline")
	}
}
