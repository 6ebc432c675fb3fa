package composite

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/watertight/watertight/composite/template"
	"github.com/watertight/watertight/metrics"
)

// Limits on what a composite reads.
const (
	maxRequestBody = 1 << 20 // the composite request's body, when a template reads it
	maxNodeBody    = 4 << 20 // one node's answer
)

// Headers of the composite request passed on to every node call, so a
// trace spans the composite; anything else the node must ask for with a
// {{request.header.NAME}} template.
var passedHeaders = []string{"Traceparent", "Tracestate", "X-Request-Id"}

// Headers the compartment sets on its own replies (proxy.HeaderReason,
// proxy.HeaderFallback; proxy imports this package, not the reverse).
const (
	headerReason   = "X-Watertight-Reason"
	headerFallback = "X-Watertight-Fallback"
	headerTimeout  = "X-Request-Timeout"
)

// state is how a node ended.
type state uint8

const (
	pending state = iota
	stOK
	stDegraded // the upstream's fallback answered for a weak node
	stFailed
	stSkipped
	stCanceled
)

var stateNames = [...]string{"pending", metrics.NodeOK, metrics.NodeDegraded, metrics.NodeFailed, metrics.NodeSkipped, metrics.NodeCanceled}

func (s state) String() string { return stateNames[s] }

// available: the node's answer is data its dependents can use. A fallback
// is: the upstream's owner wrote it to be used in place of an answer.
func (s state) available() bool { return s == stOK || s == stDegraded }

// result is how one node ended. A node's goroutine writes it, then reports
// on run.events; the coordinator reads it only after that report, and
// starts dependents (whose templates read it) only after that too.
type result struct {
	state    state
	status   int         // HTTP status of the answer (0: none)
	header   http.Header // of the answer
	out      []byte      // the node's value in the answer: JSON
	body     any         // out decoded, for templates
	err      string      // why it failed
	cause    string      // x-watertight-reason or -fallback, if any
	httpCode int         // the composite's status if this failure fails it
	took     time.Duration
	started  bool
}

// run is one call of a plan.
type run struct {
	p       *Plan
	ctx     context.Context
	cancel  context.CancelFunc
	start   time.Time
	query   url.Values
	header  http.Header
	params  map[string]string
	reqBody any
	bodyErr error

	results   []result
	processed []bool   // the coordinator has handled the node's end
	events    chan int // a node's index once its result is written
	running   int
	waiting   []int // per node: inputs not done yet
	done      int
	critical  int // critical nodes done
	failed    int // index of the critical node that failed the composite, or -1
	timedOut  bool
	client    context.Context // the composite request's own context
}

// clientGone: the app went away (or the server is closing its connection).
func (ru *run) clientGone() bool { return ru.client.Err() != nil }

// serve runs the composite for r and answers it.
func (p *Plan) serve(w http.ResponseWriter, r *http.Request, params map[string]string) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(r.Context(), p.deadline)
	defer cancel()
	ru := &run{
		p: p, ctx: ctx, cancel: cancel, start: start,
		query: r.URL.Query(), header: r.Header, params: params,
		results:   make([]result, len(p.nodes)),
		processed: make([]bool, len(p.nodes)),
		events:    make(chan int, len(p.nodes)), // never blocks a node
		waiting:   make([]int, len(p.nodes)),
		failed:    -1,
		client:    r.Context(),
	}
	if p.useBody {
		ru.readBody(r)
	}
	ans := newAnswer(w, r, ru)
	ru.execute(ans)
}

func (ru *run) readBody(r *http.Request) {
	if r.Body == nil || r.Body == http.NoBody {
		ru.bodyErr = errors.New("the request has no body")
		return
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, maxRequestBody+1))
	switch {
	case err != nil:
		ru.bodyErr = fmt.Errorf("reading the request body: %w", err)
	case len(b) > maxRequestBody:
		ru.bodyErr = fmt.Errorf("the request body is larger than %d bytes", maxRequestBody)
	default:
		if ru.reqBody, err = decodeJSON(b); err != nil {
			ru.bodyErr = fmt.Errorf("the request body is not JSON: %w", err)
		}
	}
}

// execute is the self-driven schedule: every node starts the moment its
// last input is done; there are no layers and no barriers. The coordinator
// (this goroutine, the handler's) only counts: it hears of each node's end,
// starts what that end made ready, and writes the answer's segments.
func (ru *run) execute(ans *answer) {
	p := ru.p
	var ready []int
	for _, n := range p.nodes {
		ru.waiting[n.index] = len(n.deps)
		if len(n.deps) == 0 {
			ready = append(ready, n.index)
		}
	}
	ru.startAll(ready)
	if p.critical == 0 {
		ans.core() // nothing to wait for: the core is empty
	}
	for ru.running > 0 {
		var i int
		select {
		case i = <-ru.events:
		case <-ru.ctx.Done():
			ru.stop()
			i = <-ru.events
		}
		ru.running--
		ru.finished(i, ans)
	}
	// Nodes never started: the composite ended first (a critical failure,
	// the deadline, the client gone).
	for i := range ru.results {
		if ru.results[i].state == pending {
			ru.results[i].state = stCanceled
			ru.results[i].err = ru.endReason()
			ru.processed[i] = true
			p.metrics.CompositeNode(p.name, p.nodes[i].name, metrics.NodeCanceled, 0)
		}
	}
	ans.finish()
}

// stop is the end of the composite's time: the deadline or the client.
// Nodes in flight see it through their context.
func (ru *run) stop() {
	if errors.Is(ru.ctx.Err(), context.DeadlineExceeded) {
		ru.timedOut = true
	}
	ru.cancel()
}

func (ru *run) endReason() string {
	switch {
	case ru.failed >= 0:
		return fmt.Sprintf("not called: critical node %q failed", ru.p.nodes[ru.failed].name)
	case ru.timedOut:
		return fmt.Sprintf("not called: the composite's deadline (%s) passed", ru.p.deadline)
	default:
		return "not called: the client went away"
	}
}

// finished handles node i's end and the ends it causes (skipped dependents).
func (ru *run) finished(i int, ans *answer) {
	queue := []int{i}
	for len(queue) > 0 {
		i, queue = queue[0], queue[1:]
		n := ru.p.nodes[i]
		res := &ru.results[i]
		ru.processed[i] = true
		ru.done++
		ru.p.metrics.CompositeNode(ru.p.name, n.name, res.state.String(), res.took)
		if n.critical {
			ru.critical++
			if res.state != stOK && ru.failed < 0 {
				// A strong dependency is never degraded: its failure (or
				// its upstream's fallback) fails the composite, at once.
				ru.failed = i
				ru.cancel()
			}
		}
		if ru.ctx.Err() == nil {
			var ready []int
			for _, d := range n.dependents {
				if ru.waiting[d]--; ru.waiting[d] > 0 {
					continue
				}
				if skip := ru.missingInput(d); skip != "" {
					ru.results[d] = result{state: stSkipped, err: skip, out: []byte("null"), httpCode: http.StatusBadGateway}
					queue = append(queue, d)
					continue
				}
				ready = append(ready, d)
			}
			ru.startAll(ready)
		}
		if ru.failed < 0 && ru.critical == ru.p.critical {
			ans.node(i)
		}
	}
}

// missingInput says why node d must be skipped ("" to run it): an input is
// missing and d does not take nulls.
func (ru *run) missingInput(d int) string {
	n := ru.p.nodes[d]
	if n.nullInputs {
		return ""
	}
	for _, dep := range n.deps {
		if st := ru.results[dep].state; !st.available() {
			return fmt.Sprintf("skipped: its input %q %s", ru.p.nodes[dep].name, verb(st))
		}
	}
	return ""
}

func verb(st state) string {
	switch st {
	case stSkipped:
		return "was skipped"
	case stCanceled:
		return "was canceled"
	}
	return "failed"
}

func (ru *run) startAll(ready []int) {
	for _, i := range ready {
		ru.running++
		ru.results[i].started = true
		go ru.call(i)
	}
}

// call makes node i's upstream call, through the upstream's compartment,
// and reports. It runs in its own goroutine and always reports once.
func (ru *run) call(i int) {
	n := ru.p.nodes[i]
	res := &ru.results[i]
	start := time.Now()
	defer func() {
		if v := recover(); v != nil {
			// ReverseProxy aborts a body it could not copy (the node's
			// answer broke off, or was too large) with ErrAbortHandler.
			if v != http.ErrAbortHandler {
				panic(v)
			}
			*res = result{state: stFailed, err: "the upstream's answer broke off or exceeded " + strconv.Itoa(maxNodeBody) + " bytes", httpCode: http.StatusBadGateway}
		}
		res.took = time.Since(start)
		res.started = true
		if res.out == nil {
			res.out = []byte("null")
		}
		ru.events <- i
	}()
	ctx := ru.ctx
	if n.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, n.timeout)
		defer cancel()
	}
	req, err := ru.request(ctx, n)
	if err != nil {
		code := http.StatusBadGateway
		var te *template.Error
		if errors.As(err, &te) && strings.HasPrefix(te.Ref, "request.") {
			code = http.StatusBadRequest // the composite request lacks what the template needs
		}
		*res = result{state: stFailed, err: err.Error(), httpCode: code}
		return
	}
	rec := &recorder{header: http.Header{}}
	n.handler.ServeHTTP(rec, req)
	*res = ru.judge(n, ctx, rec)
}

// request renders node n's templates into its request.
func (ru *run) request(ctx context.Context, n *node) (*http.Request, error) {
	resolve := ru.resolver(n)
	path, err := n.path.Render(resolve)
	if err != nil {
		return nil, fmt.Errorf("path: %w", err)
	}
	var body io.Reader
	if n.body != nil {
		b, err := n.body.Render(resolve)
		if err != nil {
			return nil, fmt.Errorf("body: %w", err)
		}
		body = strings.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, n.method, path, body)
	if err != nil {
		return nil, fmt.Errorf("path: %q: %w", path, err)
	}
	for _, h := range passedHeaders {
		if v := ru.header.Values(h); len(v) > 0 {
			req.Header[h] = v
		}
	}
	if n.body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for _, h := range n.headers {
		v, err := h.t.Render(resolve)
		if err != nil {
			return nil, fmt.Errorf("headers.%s: %w", h.name, err)
		}
		req.Header.Set(h.name, v)
	}
	// The composite's deadline, as the compartment reads a caller's: the
	// node's own deadline is the smaller of it and the upstream's timeout,
	// and the upstream is told what is left.
	if dl, ok := ctx.Deadline(); ok {
		left := time.Until(dl)
		if left <= 0 {
			return nil, context.DeadlineExceeded
		}
		req.Header.Set(headerTimeout, strconv.FormatInt(max(left.Milliseconds(), 1), 10)+"ms")
	}
	return req, nil
}

// resolver gives node n's templates their values.
func (ru *run) resolver(n *node) template.Resolver {
	return func(r *template.Ref) (any, error) {
		if r.Node == "" {
			switch r.Part {
			case template.PartQuery:
				if v, ok := ru.query[r.Name]; ok && len(v) > 0 {
					return v[0], nil
				}
				return nil, fmt.Errorf("the request has no query parameter %q", r.Name)
			case template.PartHeader:
				if v := ru.header.Values(r.Name); len(v) > 0 {
					return v[0], nil
				}
				return nil, fmt.Errorf("the request has no header %q", r.Name)
			case template.PartPath:
				return ru.params[r.Name], nil
			default:
				if ru.bodyErr != nil {
					return nil, ru.bodyErr
				}
				return template.Walk(ru.reqBody, r.Steps, "the request body")
			}
		}
		dep := ru.p.nodeNamed(r.Node)
		res := &ru.results[dep]
		if !res.state.available() {
			if n.nullInputs {
				return nil, nil
			}
			return nil, fmt.Errorf("node %q %s", r.Node, verb(res.state))
		}
		switch r.Part {
		case template.PartStatus:
			return json.Number(strconv.Itoa(res.status)), nil
		case template.PartHeader:
			if v := res.header.Values(r.Name); len(v) > 0 {
				return v[0], nil
			}
			return nil, fmt.Errorf("node %q's answer has no header %q", r.Node, r.Name)
		default:
			return template.Walk(res.body, r.Steps, r.Node+"'s body")
		}
	}
}

func (p *Plan) nodeNamed(name string) int {
	for _, n := range p.nodes {
		if n.name == name {
			return n.index
		}
	}
	return -1 // Compile guarantees every reference
}

// judge reads what the compartment answered for node n.
func (ru *run) judge(n *node, ctx context.Context, rec *recorder) result {
	res := result{status: rec.status(), header: rec.header}
	switch {
	case rec.header.Get(headerFallback) != "":
		res.state, res.cause = stDegraded, rec.header.Get(headerFallback)
		if n.critical {
			res.err = "the upstream's fallback answered (" + res.cause + "); a critical node is never degraded"
		}
	case rec.header.Get(headerReason) != "":
		res.state, res.cause = stFailed, rec.header.Get(headerReason)
		res.err = strings.TrimSpace(rec.body.String())
	case res.status >= 400:
		res.state = stFailed
		res.err = "the upstream answered " + strconv.Itoa(res.status) + " " + http.StatusText(res.status)
	case rec.overflow:
		res.state = stFailed
		res.err = "the upstream's answer exceeded " + strconv.Itoa(maxNodeBody) + " bytes"
	default:
		res.state = stOK
	}
	if ctx.Err() != nil && res.state == stFailed {
		// The composite or the node ran out of time, or the client left:
		// say that, not what the cut-off call looked like.
		switch {
		case ru.ctx.Err() != nil && !errors.Is(ru.ctx.Err(), context.DeadlineExceeded):
			res.state = stCanceled
			res.err = "canceled: " + ru.endReasonNow()
		case errors.Is(ctx.Err(), context.DeadlineExceeded):
			res.cause = "timeout"
			res.err = "timeout: the node's time ran out"
		}
	}
	switch {
	case res.cause == "timeout" || res.status == http.StatusGatewayTimeout:
		res.httpCode = http.StatusGatewayTimeout
	case res.status >= 400 && res.status < 500:
		res.httpCode = res.status // a business answer: the composite's too
	default:
		res.httpCode = http.StatusBadGateway
	}
	if res.state.available() { // a failed node is null
		res.out, res.body = bodyValue(rec)
	}
	return res
}

// endReasonNow is why the composite ended while a node was in flight. The
// coordinator may not know yet (it reads ru.failed), so say what the
// context says.
func (ru *run) endReasonNow() string {
	if errors.Is(context.Cause(ru.ctx), context.DeadlineExceeded) {
		return "the composite's deadline passed"
	}
	return "the composite ended (a critical node failed, or the client went away)"
}

// bodyValue is a node's answer as JSON: the body itself when it is JSON,
// else the body as a JSON string (empty: null).
func bodyValue(rec *recorder) ([]byte, any) {
	b := rec.body.Bytes()
	if len(strings.TrimSpace(string(b))) == 0 {
		return []byte("null"), nil
	}
	if v, err := decodeJSON(b); err == nil {
		return compact(b), v
	}
	s := string(b)
	out, _ := json.Marshal(s)
	return out, s
}

func decodeJSON(b []byte) (any, error) {
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, errors.New("more than one JSON value")
	}
	return v, nil
}
