package composite_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

// seg decodes one NDJSON segment.
type seg struct {
	Segment  int                        `json:"segment"`
	Kind     string                     `json:"kind"`
	Node     string                     `json:"node"`
	Nodes    map[string]json.RawMessage `json:"nodes"`
	Status   map[string]nodeStatus      `json:"_status"`
	Segments int                        `json:"segments"`
	OK       []string                   `json:"ok"`
	Degraded []string                   `json:"degraded"`
	Failed   []string                   `json:"failed"`
	Skipped  []string                   `json:"skipped"`
	Canceled []string                   `json:"canceled"`
}

type nodeStatus struct {
	Result string  `json:"result"`
	Status int     `json:"status"`
	Cause  string  `json:"cause"`
	Error  string  `json:"error"`
	MS     float64 `json:"ms"`
}

func decodeSegments(t *testing.T, segs []segment) []seg {
	t.Helper()
	out := make([]seg, len(segs))
	for i, s := range segs {
		if err := json.Unmarshal([]byte(s.line), &out[i]); err != nil {
			t.Fatalf("segment %d is not JSON: %v: %s", i, err, s.line)
		}
	}
	return out
}

// A hung weak dependency (recommendations) must not delay the core answer:
// the core segment goes out as soon as the critical nodes are done, the
// hung node's segment when the deadline cuts it off, then the end.
func TestHungWeakNodeDoesNotDelayTheCore(t *testing.T) {
	canceled := make(chan string, 1)
	user := startUpstream(t, delayed(30*time.Millisecond, 200, `{"name":"ann"}`))
	cart := startUpstream(t, delayed(50*time.Millisecond, 200, `{"items":[{"sku":"s1"}]}`))
	recs := startUpstream(t, hangs(canceled))
	promo := startUpstream(t, delayed(200*time.Millisecond, 200, `{"code":"X"}`))
	s := startSidecar(t, listenerYAML+yamlUpstreams(map[string]string{"user": user.addr, "cart": cart.addr, "recs": recs.addr, "promo": promo.addr}, nil)+`
composites:
  - name: home
    listener: app
    path: /home
    deadline: 1500ms
    nodes:
      - {name: user, upstream: user, critical: true, path: "/u/{{request.query.uid}}"}
      - {name: cart, upstream: cart, critical: true, path: "/c/{{request.query.uid}}"}
      - {name: recs, upstream: recs, path: "/r?sku={{nodes.cart.body.items[0].sku}}"}
      - {name: promo, upstream: promo, path: /p}
`)
	resp, segs := stream(t, s.url(t)+"/home?uid=7")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("status %d, content type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if len(segs) != 4 {
		t.Fatalf("%d segments, want core, promo, recs, end: %v", len(segs), segs)
	}
	ss := decodeSegments(t, segs)
	core := ss[0]
	if core.Kind != "core" || string(core.Nodes["user"]) != `{"name":"ann"}` || string(core.Nodes["cart"]) != `{"items":[{"sku":"s1"}]}` {
		t.Errorf("core segment: %s", segs[0].line)
	}
	if segs[0].at > time.Second {
		t.Errorf("the core segment came after %v: the hung weak node delayed it", segs[0].at)
	}
	if ss[1].Kind != "node" || ss[1].Node != "promo" || string(ss[1].Nodes["promo"]) != `{"code":"X"}` {
		t.Errorf("second segment: %s", segs[1].line)
	}
	if ss[2].Kind != "node" || ss[2].Node != "recs" || string(ss[2].Nodes["recs"]) != "null" || ss[2].Status["recs"].Result != "failed" {
		t.Errorf("third segment: %s", segs[2].line)
	}
	if segs[2].at < time.Second {
		t.Errorf("recs ended after %v, before the deadline", segs[2].at)
	}
	end := ss[3]
	if end.Kind != "end" || end.Segments != 4 || end.Segment != 4 ||
		strings.Join(end.Failed, ",") != "recs" || strings.Join(end.OK, ",") != "user,cart,promo" {
		t.Errorf("end segment: %s", segs[3].line)
	}
	select {
	case <-canceled:
	case <-time.After(5 * time.Second):
		t.Error("the hung upstream never saw its request canceled")
	}
	if got := recs.seen()[0].path; got != "/r?sku=s1" {
		t.Errorf("recs called at %q", got)
	}
	// The later segments' arrival, in the background's 1 s / 3 s / 5 s buckets.
	m := s.metric(t, "watertight_composite_segment_arrival_seconds", map[string]string{"composite": "home"})
	if h := m.GetHistogram(); h.GetSampleCount() != 2 || h.GetBucket()[0].GetUpperBound() != 1 || h.GetBucket()[0].GetCumulativeCount() != 1 {
		t.Errorf("segment arrival histogram: %v", h)
	}
	if m := s.metric(t, "watertight_composite_first_segment_seconds", map[string]string{"composite": "home"}); m.GetHistogram().GetSampleCount() != 1 {
		t.Error("first segment not observed")
	}
	if m := s.metric(t, "watertight_composite_requests_total", map[string]string{"composite": "home", "result": "degraded"}); m.GetCounter().GetValue() != 1 {
		t.Error("composite not counted as degraded")
	}

	// The same as server-sent events.
	req, _ := http.NewRequest(http.MethodGet, s.url(t)+"/home?uid=7", nil)
	req.Header.Set("Accept", "text/event-stream")
	sresp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer sresp.Body.Close()
	buf := make([]byte, 4096)
	n, _ := sresp.Body.Read(buf)
	if ct := sresp.Header.Get("Content-Type"); ct != "text/event-stream" || !strings.HasPrefix(string(buf[:n]), "event: core\ndata: {\"segment\":1,\"kind\":\"core\"") {
		t.Errorf("SSE: %q %q", ct, buf[:n])
	}
}

// A critical node's failure fails the composite at once and cancels the
// calls still running, which their upstreams see.
func TestCriticalFailureFailsFastAndCancelsTheRest(t *testing.T) {
	canceled := make(chan string, 2)
	arrived := make(chan struct{}, 2)
	hang := hangs(canceled)
	slow := startUpstream(t, func(w http.ResponseWriter, r *http.Request, body string) bool {
		select {
		case arrived <- struct{}{}:
		default:
		}
		return hang(w, r, body)
	})
	// pay fails once both calls to slow have arrived there, so that slow
	// can see them cancelled.
	pay := startUpstream(t, func(w http.ResponseWriter, r *http.Request, _ string) bool {
		for range 2 {
			select {
			case <-r.Context().Done():
				return true
			case <-arrived:
			}
		}
		w.WriteHeader(http.StatusInternalServerError)
		return false
	})
	s := startSidecar(t, listenerYAML+yamlUpstreams(map[string]string{"pay": pay.addr, "slow": slow.addr}, nil)+`
composites:
  - name: order
    listener: app
    path: /order
    deadline: 10s
    nodes:
      - {name: pay, upstream: pay, critical: true, path: /pay}
      - {name: ship, upstream: slow, critical: true, path: /ship}
      - {name: recs, upstream: slow, path: /recs}
      - {name: after, upstream: slow, path: "/after/{{nodes.pay.status}}"}
`)
	resp, body, took := get(t, s.url(t)+"/order", "application/x-ndjson")
	if resp.StatusCode != http.StatusBadGateway || resp.Header.Get("X-Watertight-Reason") != "composite_failed" {
		t.Errorf("status %d reason %q: %s", resp.StatusCode, resp.Header.Get("X-Watertight-Reason"), body)
	}
	if took > 3*time.Second {
		t.Errorf("took %v: did not fail fast", took)
	}
	var ans struct {
		Error  string                `json:"error"`
		Node   string                `json:"node"`
		Status map[string]nodeStatus `json:"_status"`
	}
	if err := json.Unmarshal([]byte(body), &ans); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	if ans.Node != "pay" || !strings.Contains(ans.Error, `critical node "pay" failed: the upstream answered 500`) {
		t.Errorf("answer: %s", body)
	}
	if ans.Status["ship"].Result != "canceled" || ans.Status["recs"].Result != "canceled" || ans.Status["after"].Result != "canceled" {
		t.Errorf("the others: %s", body)
	}
	for range 2 {
		select {
		case <-canceled:
		case <-time.After(5 * time.Second):
			t.Fatal("an upstream still running never saw its request canceled")
		}
	}
	if n := len(slow.seen()); n != 2 {
		t.Errorf("slow saw %d requests; the dependent of pay must never be called", n)
	}
	if m := s.metric(t, "watertight_composite_requests_total", map[string]string{"composite": "order", "result": "failed"}); m.GetCounter().GetValue() != 1 {
		t.Error("not counted as failed")
	}
}

// The client going away cancels every node call.
func TestClientGoneCancelsTheNodes(t *testing.T) {
	canceled := make(chan string, 2)
	slow := startUpstream(t, hangs(canceled))
	s := startSidecar(t, listenerYAML+yamlUpstreams(map[string]string{"slow": slow.addr}, nil)+`
composites:
  - name: c
    listener: app
    path: /c
    nodes:
      - {name: a, upstream: slow, critical: true, path: /a}
      - {name: b, upstream: slow, path: /b}
`)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.url(t)+"/c", nil)
	errc := make(chan error, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	eventually(t, "both calls at the upstream", func() bool { return slow.active.Load() == 2 })
	cancel()
	for range 2 {
		select {
		case <-canceled:
		case <-time.After(5 * time.Second):
			t.Fatal("a node call was not canceled when the client went away")
		}
	}
	<-errc
	eventually(t, "the composite counted as canceled", func() bool {
		m := s.metric(t, "watertight_composite_requests_total", map[string]string{"composite": "c", "result": "canceled"})
		return m.GetCounter().GetValue() == 1
	})
}

// Weak failures: the upstream's fallback, or null; dependents of a failed
// node are skipped, or called with null (onMissingInput: null).
func TestWeakFailuresFallbackNullSkip(t *testing.T) {
	core := startUpstream(t, delayed(0, 200, `{"id":1}`))
	broken := startUpstream(t, delayed(0, 503, `down`))
	echo := startUpstream(t, func(w http.ResponseWriter, r *http.Request, body string) bool {
		w.Header().Set("Content-Type", "application/json")
		b, _ := json.Marshal(map[string]string{"path": r.URL.RequestURI(), "body": body})
		_, _ = w.Write(b)
		return false
	})
	s := startSidecar(t, listenerYAML+yamlUpstreams(map[string]string{"core": core.addr, "broken": broken.addr, "echo": echo.addr, "withfb": broken.addr},
		map[string]string{"withfb": "    fallback: {on: [upstream_error], status: 200, headers: {content-type: application/json}, body: '{\"items\":[]}'}\n"})+`
composites:
  - name: page
    listener: app
    path: /page
    nodes:
      - {name: core, upstream: core, critical: true, path: /core}
      - {name: recs, upstream: withfb, path: /recs}
      - {name: ads, upstream: broken, path: /ads}
      - {name: adsDetail, upstream: echo, path: "/detail/{{nodes.ads.body.id}}"}
      - {name: adsOrNull, upstream: echo, path: /null, onMissingInput: "null", body: '{"ad": {{nodes.ads.body.id}}, "s": "{{nodes.ads.status}}"}'}
      - {name: recsCount, upstream: echo, path: "/count?first={{nodes.recs.body.items}}"}
`)
	resp, body, _ := get(t, s.url(t)+"/page", "")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	var ans map[string]json.RawMessage
	if err := json.Unmarshal([]byte(body), &ans); err != nil {
		t.Fatal(err)
	}
	var st map[string]nodeStatus
	_ = json.Unmarshal(ans["_status"], &st)
	check := func(node, value, result string) {
		t.Helper()
		if string(ans[node]) != value || st[node].Result != result {
			t.Errorf("%s = %s (%s), want %s (%s); status %+v", node, ans[node], st[node].Result, value, result, st[node])
		}
	}
	check("core", `{"id":1}`, "ok")
	check("recs", `{"items":[]}`, "degraded")
	check("ads", "null", "failed")
	check("adsDetail", "null", "skipped")
	check("adsOrNull", `{"body":"{\"ad\": null, \"s\": \"\"}","path":"/null"}`, "ok")
	// A fallback is data: the dependent runs on it, and a template that
	// asks for an array in a path says so.
	check("recsCount", "null", "failed")
	if st["recs"].Cause != "upstream_error" || !strings.Contains(st["recsCount"].Error, "is an array, which has no text to put in a path") {
		t.Errorf("status: %+v", st)
	}
	if !strings.Contains(st["adsDetail"].Error, `its input "ads" failed`) || !strings.Contains(st["ads"].Error, "503") {
		t.Errorf("status: %+v", st)
	}
}

// A template that asks for what is not there fails its node with an error
// that says what is missing; missing request data is the client's fault.
func TestMissingTemplateFields(t *testing.T) {
	cart := startUpstream(t, delayed(0, 200, `{"items":[]}`))
	echo := startUpstream(t, delayed(0, 200, `{}`))
	s := startSidecar(t, listenerYAML+yamlUpstreams(map[string]string{"cart": cart.addr, "echo": echo.addr}, nil)+`
composites:
  - name: a
    listener: app
    path: /a
    nodes:
      - {name: cart, upstream: cart, critical: true, path: /cart}
      - {name: price, upstream: echo, critical: true, path: "/price/{{nodes.cart.body.items[0].sku}}"}
  - name: b
    listener: app
    path: /b
    nodes:
      - {name: user, upstream: echo, critical: true, path: "/u/{{request.query.uid}}"}
`)
	resp, body, _ := get(t, s.url(t)+"/a", "")
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, `critical node \"price\" failed: path: {{nodes.cart.body.items[0].sku}}: cart's body.items has 0 elements, no [0]`) {
		t.Errorf("status %d: %s", resp.StatusCode, body)
	}
	resp, body, _ = get(t, s.url(t)+"/b", "")
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, `the request has no query parameter \"uid\"`) {
		t.Errorf("status %d: %s", resp.StatusCode, body)
	}
	if n := len(echo.seen()); n != 0 {
		t.Errorf("echo was called %d times", n)
	}
}

// The composite's path wins on its listener; everything else still goes
// to the upstreams by Host.
func TestOtherRequestsStillProxied(t *testing.T) {
	u := startUpstream(t, delayed(0, 200, `{"plain":true}`))
	s := startSidecar(t, listenerYAML+yamlUpstreams(map[string]string{"u": u.addr}, nil)+`
composites:
  - {name: c, listener: app, path: "/c/{id}", nodes: [{name: n, upstream: u, path: "/x/{{request.path.id}}"}]}
`)
	req, _ := http.NewRequest(http.MethodGet, s.url(t)+"/other", nil)
	req.Host = "u"
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || u.seen()[0].path != "/other" {
		t.Errorf("plain request: %d %v", resp.StatusCode, u.seen())
	}
	resp2, body, _ := get(t, s.url(t)+"/c/a%20b", "")
	if resp2.StatusCode != 200 || !strings.Contains(body, `"n":{"plain":true}`) || u.seen()[1].path != "/x/a%20b" {
		t.Errorf("composite: %d %s %v", resp2.StatusCode, body, u.seen())
	}
	resp3, _, _ := get(t, s.url(t)+"/c/a/b", "")
	if resp3.StatusCode != http.StatusNotFound {
		t.Errorf("/c/a/b: %d, want 404 (not the composite, no upstream for the host)", resp3.StatusCode)
	}
}

// The deadline passing before the core is done fails the composite with
// 504, even when a multi-segment answer was asked for; a weak node done
// before the core rides in the core segment.
func TestDeadlineAndCoreSegmentContents(t *testing.T) {
	canceled := make(chan string, 4)
	hung := startUpstream(t, hangs(canceled))
	fast := startUpstream(t, delayed(0, 200, `{"fast":true}`))
	core := startUpstream(t, delayed(100*time.Millisecond, 200, `{"core":true}`))
	s := startSidecar(t, listenerYAML+yamlUpstreams(map[string]string{"hung": hung.addr, "fast": fast.addr, "core": core.addr}, nil)+`
composites:
  - name: late
    listener: app
    path: /late
    deadline: 300ms
    nodes:
      - {name: fast, upstream: fast, path: /f}
      - {name: stuck, upstream: hung, critical: true, path: /s}
  - name: early
    listener: app
    path: /early
    nodes:
      - {name: fast, upstream: fast, path: /f}
      - {name: core, upstream: core, critical: true, path: /c}
      - {name: capped, upstream: hung, path: /capped, timeout: 200ms}
`)
	resp, body, took := get(t, s.url(t)+"/late", "application/x-ndjson")
	if resp.StatusCode != http.StatusGatewayTimeout || resp.Header.Get("Content-Type") != "application/json" ||
		!strings.Contains(body, `critical node \"stuck\" failed`) || !strings.Contains(body, `"fast":{"result":"ok"`) ||
		!strings.Contains(body, `"stuck":{"result":"failed"`) || !strings.Contains(body, `"cause":"timeout"`) {
		t.Errorf("status %d: %s", resp.StatusCode, body)
	}
	if took > 3*time.Second {
		t.Errorf("took %v with a deadline of 300ms", took)
	}

	_, segs := stream(t, s.url(t)+"/early")
	ss := decodeSegments(t, segs)
	if len(ss) != 3 || ss[0].Kind != "core" || string(ss[0].Nodes["fast"]) != `{"fast":true}` || string(ss[0].Nodes["core"]) != `{"core":true}` {
		t.Fatalf("segments: %v", segs)
	}
	if ss[1].Node != "capped" || ss[1].Status["capped"].Result != "failed" || ss[1].Status["capped"].Cause != "timeout" {
		t.Errorf("the node with its own timeout: %s", segs[1].line)
	}
	if segs[1].at > 3*time.Second {
		t.Errorf("capped's segment after %v, its timeout is 200ms", segs[1].at)
	}
	if ss[2].Kind != "end" || ss[2].Segments != 3 {
		t.Errorf("end: %s", segs[2].line)
	}
}
