package proxy

import (
	"context"
	"net/http"
	"net/netip"
	"net/textproto"
	"strconv"
	"time"

	"golang.org/x/net/http2/hpack"

	"github.com/watertight/watertight/config"
	"github.com/watertight/watertight/proxy/h1conn"
	"github.com/watertight/watertight/proxy/h1serve"
	"github.com/watertight/watertight/proxy/h2conn"
	"github.com/watertight/watertight/proxy/internal/h1head"
)

// The lane: the hot case below net/http's types (docs/forwarding-path.md,
// step 9). A plain bodiless HTTP/1.1 request (h1serve offers only those)
// to a compartment with a cleartext HTTP/1.1 upstream goes through the
// compartment's own steps (begin, admit, finish: the deadline, breaker,
// rate limit, bulkhead, endpoint, outlier detection, metrics) as the bytes
// of its head: edited as relay edits the request's header, sent by h1conn,
// and its answer copied back as bytes when it is plain. Whatever the lane
// does not carry as bytes it hands to net/http's types where it stands:
// before anything is done (ServeLane declines, and relay serves), or once
// the answer is not plain or the sidecar answers itself (Materialize, then
// deliver or serveError, as relay would). Measured before it was built
// (docs/benchmarks.md, runs 50 and 51): a prototype took the sidecar from
// 19 to 12.6 µs of CPU a request at HTTP/1.1 max load. Written by hand
// because it is what a proxy's own codec is; no library has one that
// net/http's types and the compartments can share.

// The values of Options.Lane.
const (
	LaneOn  = "on"
	LaneOff = "off"
)

// ServeLane is h1serve's Lane: routing, as ServeHTTP routes, then the
// compartment's lane.
func (l *listener) ServeLane(x *h1serve.Exchange) bool {
	c := l.laneRoute(x.ConnValue, string(x.Host()))
	return c != nil && l.took(c.lane(x))
}

// laneRoute is the compartment ServeHTTP would send a request to, by its
// connection's values (value) and its authority; nil when there is none,
// or routing is not the lane's to do: the access record and the
// composites want the request.
func (l *listener) laneRoute(value func(key any) any, authority string) *compartment {
	rt := l.routes.Load()
	if rt.accessLog != nil || rt.composites != nil {
		return nil
	}
	if rt.mode == config.ModeUpstream {
		return rt.upstream
	}
	dst, ok := value(origDstKey{}).(netip.AddrPort)
	return rt.routeTo(dst, ok, authority)
}

// took counts a request the lane took (Options.laneTaken).
func (l *listener) took(taken bool) bool {
	if taken && l.laneTaken != nil {
		l.laneTaken()
	}
	return taken
}

// laneTransport is the compartment's HTTP/1.1 client when the lane may
// use it: h1conn to a cleartext upstream, and no policy that needs the
// request as net/http's (a hedge races copies of it, a fallback and the
// access log read it).
func (c *compartment) laneTransport() *h1conn.Transport {
	if !c.laneServes() {
		return nil
	}
	t, _ := c.transports.h1.(*h1conn.Transport)
	return t
}

// laneServes: the compartment's upstream is cleartext, and it has no
// policy that needs the request as net/http's (a hedge races copies of it,
// a fallback and the access log read it). Both lanes ask; so a lane's
// attempt has no hedge latency to record, as attempt does.
func (c *compartment) laneServes() bool {
	return c.hedge == nil && len(c.fallbacks) == 0 && !c.accessLog && c.transports.scheme() == "http"
}

// pathByte: the bytes net/url keeps as they are in an escaped path
// (validEncoded with encodePath): the unreserved ones, the sub-delimiters,
// ':', '@', '/', and '%' (requestLine let only valid escapes through
// parseSimple's url.ParseRequestURI, which Materialize repeats).
var pathByte = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for _, c := range "-._~!$&'()*+,;=:@/%" {
		t[c] = true
	}
	return t
}()

// plainTarget: the target goes as the app wrote it; relay sends the path
// as net/url escapes it (URL.EscapedPath) and the query as it came, if
// queryIsClean. The two agree when every byte of the path is one net/url
// leaves as it is.
func plainTarget[T string | []byte](target T) bool {
	for i := 0; i < len(target); i++ {
		ch := target[i]
		if ch == '?' {
			return queryIsClean(string(target[i+1:]))
		}
		if !pathByte[ch] {
			return false
		}
	}
	return true
}

// laneRequest checks that relay would send x as it is but for the edits
// the lane makes (relayable), and reads what begin needs: the first
// X-Request-Timeout value, as Header.Get reads it (nil for none).
func laneRequest(x *h1serve.Exchange) (timeout []byte, ok bool) {
	if !plainTarget(x.Target()) {
		return nil, false
	}
	if host := x.Host(); len(host) > 0 && host[0] == '[' {
		return nil, false // an IPv6 literal: Request.Write drops a zone from it
	}
	tes := 0
	for rest := x.Fields(); len(rest) > 0; {
		l, r, _ := h1head.CutLine(rest)
		rest = r
		name, value := h1head.Split(l)
		switch {
		case h1head.Is(name, "Te"):
			// relay passes "TE: trailers" alone, ReverseProxy any other.
			if tes++; tes > 1 || string(value) != "trailers" {
				return nil, false
			}
		case h1head.Is(name, "Proxy-Authorization"), h1head.Is(name, "Proxy-Authenticate"),
			h1head.Is(name, "Trailer"), h1head.Is(name, "Upgrade"), h1head.Is(name, "Expect"):
			return nil, false
		case h1head.Is(name, "Content-Type"):
			if isGRPCType(string(value)) {
				return nil, false
			}
		case h1head.Is(name, headerRequestTimeout):
			if timeout == nil {
				timeout = value // non-nil, even when empty
			}
		}
	}
	return timeout, true
}

// laneCall is what the lane's steps need of one request: its app-side
// exchange and the upstream client it goes with. The steps are written
// once (runLane); each pairing of an app-side server and an upstream
// client is a laneCall (h1Call here, h2Call in lane_h2.go).
type laneCall interface {
	// context is the request's.
	context() context.Context
	// materialize makes net/http's request and writer for it: once
	// called, the answer is theirs.
	materialize() (http.ResponseWriter, *http.Request)
	// send makes the attempt ex (admitted) and begins its answer.
	send(r *request, ex *exchange) laneTry
	// answer answers the app with try's plain answer, and closes ex.
	answer(ex *exchange, try laneTry)
}

// lane serves x, or declines it (false) before anything is done.
func (c *compartment) lane(x *h1serve.Exchange) bool {
	t := c.laneTransport()
	if t == nil {
		return false
	}
	timeout, ok := laneRequest(x)
	if !ok {
		return false
	}
	caller, callerOK := requestTimeout(string(timeout))
	runLane(c, h1Call{c: c, x: x, t: t}, caller, callerOK, false)
	return true
}

// runLane is the request's path through the compartment, as send and
// retries take it, for a request the lane took: caller is the time the app
// gave it (if callerOK), grpc says it is a gRPC call. A type parameter
// rather than an interface value, so that the call is made without an
// allocation and its methods are called directly.
func runLane[L laneCall](c *compartment, l L, caller time.Duration, callerOK, grpc bool) {
	r := new(request)
	if lr := c.beginWith(r, l.context(), grpc, caller, callerOK, nil); lr != nil {
		laneRefuse(c, l, lr)
		return
	}
	// The attempts, as retries makes them (a request the lane takes with
	// a body goes to a compartment without retries: one without can
	// always go again).
	for n := 0; ; n++ {
		var try laneTry
		if ex, lr := c.admit(r, r.ctx, noCancel, n > 0); lr != nil {
			try = laneTry{lr: lr}
		} else {
			try = l.send(r, ex)
		}
		if !c.laneWanted(n, try, r) || !c.budget.TryAcquirePermit() {
			laneAnswer(c, l, r, try)
			return
		}
		try.discard()
		if !sleep(r.ctx, c.retry.backoff(n)) {
			c.budget.ReleasePermit()
			res := classifyError(r.parent, r.ctx, r.ctx.Err())
			r.finish(res)
			laneRefuse(c, l, &localReply{result: res, upstream: c.name, err: r.ctx.Err()})
			return
		}
		c.metrics.Retry()
	}
}

// laneTry is one attempt: a refusal or failure (lr), or an answer, plain
// (whose status is ex.status: ans's over HTTP/1.1, raw's over HTTP/2) or
// read by net/http's rules (resp).
type laneTry struct {
	ex     *exchange
	lr     *localReply
	resp   *http.Response
	ans    *h1conn.RawAnswer
	length int64
	fields []byte
	answer answerFields
	raw    h2conn.RawAnswer // the plain answer over h2c, if not zero

	h2fields []hpack.HeaderField // ans's fields, for an h2c request
}

// h1Call is an HTTP/1.1 request (h1serve's) to an HTTP/1.1 upstream
// (h1conn).
type h1Call struct {
	c *compartment
	x *h1serve.Exchange
	t *h1conn.Transport
}

func (l h1Call) context() context.Context { return l.x.Context() }

func (l h1Call) materialize() (http.ResponseWriter, *http.Request) { return l.x.Materialize() }

func (l h1Call) method() string { return l.x.Method() }

func (l h1Call) materialized() bool { return l.x.Materialized() }

func (l h1Call) send(r *request, ex *exchange) laneTry { return sendH1(l.c, l, l.t, r, ex) }

func (l h1Call) head(b []byte, dl time.Time, hasDeadline bool) []byte {
	return l.c.laneHead(b, l.x, dl, hasDeadline)
}

// plain takes the answer's field lines as they are, with a Content-Type
// (the app-side loop does not sniff one), less their hop-by-hop fields.
func (l h1Call) plain(fields []byte, length int64) (laneTry, bool) {
	answer, ok := answerFieldsOf(fields, length)
	return laneTry{fields: fields, answer: answer}, ok
}

// h1Upstream is a laneCall to an HTTP/1.1 upstream through h1conn, from
// either app side (h1Call, h21Call): what sendH1 asks of it.
type h1Upstream interface {
	method() string
	materialized() bool
	materialize() (http.ResponseWriter, *http.Request)
	// head appends the request's head to b, with the time left until dl
	// if hasDeadline.
	head(b []byte, dl time.Time, hasDeadline bool) []byte
	// plain is what the answer passes on of a plain answer's field lines,
	// or false for one this app side cannot pass on as they are. (A
	// value, not a *laneTry to fill: through the type parameter the
	// pointer would escape, an allocation a request.)
	plain(fields []byte, length int64) (laneTry, bool)
}

// sendH1 makes one attempt over h1conn, as attempt does: sent, its answer
// begun. An answer that is not plain, or any once the request has left
// the lane (Materialize), is read into net/http's types.
func sendH1[L h1Upstream](c *compartment, l L, t *h1conn.Transport, r *request, ex *exchange) laneTry {
	dl, hasDeadline := ex.ctx.Deadline()
	head := func(b []byte) []byte { return l.head(b, dl, hasDeadline) }
	ans, err := t.RoundTripRaw(ex.ctx, ex.ep.addr, l.method(), head)
	if err != nil {
		return c.laneFailed(r, ex, err)
	}
	if status, length, fields, plain := ans.Plain(); plain && !l.materialized() {
		if try, ok := l.plain(fields, length); ok {
			try.ex, try.ans, try.length = ex, ans, length
			ex.status = status
			return try
		}
	}
	w, req := l.materialize()
	resp, err := ans.Response(req, laneGot1xx(w))
	if err != nil {
		return c.laneFailed(r, ex, err)
	}
	return laneResponse(ex, resp)
}

// laneFailed is an attempt that failed with err, as attempt judges one.
func (c *compartment) laneFailed(r *request, ex *exchange, err error) laneTry {
	res := classifyError(r.parent, ex.ctx, err)
	ex.finish(res)
	return laneTry{lr: &localReply{result: res, upstream: c.name, err: err}}
}

// laneResponse is an attempt answered by resp, read by net/http's rules:
// the exchange reads its body, as attempt's does.
func laneResponse(ex *exchange, resp *http.Response) laneTry {
	ex.resp = resp
	ex.body = resp.Body
	resp.Body = ex
	return laneTry{ex: ex, resp: resp}
}

// answer writes the plain answer's bytes. The head is written before the
// body is taken: its fields are in the upstream connection's buffer, which
// an empty body gives back to the pool at once. The exchange reads the
// body, as it does relay's, and is judged by how that ended when it
// closes.
func (l h1Call) answer(ex *exchange, try laneTry) {
	err := l.x.AnswerHead(ex.status, try.answer.fields(try.fields), try.answer.hasDate)
	ex.body = try.ans.Body()
	if err == nil {
		_ = l.x.AnswerBody(ex, try.length)
	}
	_ = ex.Close()
}

// laneWanted is retryPolicy.wanted for a lane's attempt (never gRPC: the
// lane takes gRPC calls only to compartments without retries).
func (c *compartment) laneWanted(n int, try laneTry, r *request) bool {
	p := c.retry
	switch {
	case p == nil || n >= p.attempts || r.ctx.Err() != nil:
		return false
	case try.lr != nil:
		return p.wanted(n, nil, try.lr, r)
	case try.resp != nil:
		return p.retriesStatus(try.resp.StatusCode)
	}
	return p.retriesStatus(try.ex.status)
}

// discard gives up on an attempt's answer before a retry, as retries
// closes the body of one: the exchange is judged on what the upstream sent.
func (try laneTry) discard() {
	switch {
	case try.ans != nil:
		try.ex.body = try.ans.Body()
	case try.raw != h2conn.RawAnswer{}:
		try.ex.body = try.raw.Body()
	}
	if try.ex != nil {
		_ = try.ex.Close()
	}
}

// laneAnswer answers the app with the last attempt: its refusal or
// failure, its plain answer, or its answer through net/http's types as
// relay would.
func laneAnswer[L laneCall](c *compartment, l L, r *request, try laneTry) {
	if try.lr != nil {
		r.finish(try.lr.result)
		laneRefuse(c, l, try.lr)
		return
	}
	ex := try.ex
	ex.handOver()
	if try.resp != nil {
		w, req := l.materialize()
		c.deliver(w, req, try.resp)
		return
	}
	l.answer(ex, try)
}

// laneHead appends the head the upstream gets to b: the app's, less the
// hop-by-hop fields relay drops (dropHopByHop) and the caller's
// X-Request-Timeout, with the Host relay would send and the time left
// (propagateDeadline).
func (c *compartment) laneHead(b []byte, x *h1serve.Exchange, dl time.Time, hasDeadline bool) []byte {
	b = append(b, x.Method()...)
	b = append(b, ' ')
	b = append(b, x.Target()...)
	b = append(b, " HTTP/1.1\r\n"...)
	rewrite := c.hostRewrite != "" && isLocalAuthority(string(x.Host()))
	for rest := x.Fields(); len(rest) > 0; {
		l, r, _ := h1head.CutLine(rest)
		rest = r
		name, _ := h1head.Split(l)
		switch {
		case h1head.Is(name, "Connection"), h1head.Is(name, "Keep-Alive"), h1head.Is(name, "Proxy-Connection"):
			continue
		case hasDeadline && h1head.Is(name, headerRequestTimeout):
			continue
		case rewrite && h1head.Is(name, "Host"):
			b = append(b, "Host: "...)
			b = append(b, c.hostRewrite...)
			b = append(b, "\r\n"...)
			continue
		}
		b = append(b, l...)
		b = append(b, "\r\n"...)
	}
	if hasDeadline {
		b = appendTimeLeft(b, dl)
	}
	return append(b, "\r\n"...)
}

// appendTimeLeft appends the X-Request-Timeout field line that tells the
// upstream the time left until dl (propagateDeadline's, as bytes).
func appendTimeLeft(b []byte, dl time.Time) []byte {
	b = append(b, headerRequestTimeout+": "...)
	b = strconv.AppendInt(b, max(time.Until(dl).Milliseconds(), 0), 10)
	return append(b, "ms\r\n"...)
}

// answerFields is what the lane learned of a plain answer's fields.
type answerFields struct {
	hasDate bool
	hop     bool // it has hop-by-hop fields, which the app does not get
}

// answerFieldsOf reads a plain answer's fields, and reports false for one
// the app-side writer would change beyond its hop-by-hop fields: without a
// Content-Type, it would sniff one.
func answerFieldsOf(fields []byte, length int64) (answerFields, bool) {
	var a answerFields
	hasType := false
	for rest := fields; len(rest) > 0; {
		l, r, _ := h1head.CutLine(rest)
		rest = r
		name, value := h1head.Split(l)
		switch {
		case h1head.Is(name, "Date"):
			a.hasDate = true
		case h1head.Is(name, "Content-Type"):
			hasType = true
		case h1head.Is(name, "Content-Encoding"):
			hasType = hasType || len(value) > 0
		case isHopByHop(name):
			a.hop = true
		}
	}
	return a, hasType || length == 0
}

// fields is the answer's field lines as the app gets them: without the
// hop-by-hop ones, as removeHopByHop leaves them (a plain answer's
// Connection names nothing but keep-alive).
func (a answerFields) fields(fields []byte) []byte {
	if !a.hop {
		return fields
	}
	out := make([]byte, 0, len(fields))
	for rest := fields; len(rest) > 0; {
		l, r, _ := h1head.CutLine(rest)
		rest = r
		if name, _ := h1head.Split(l); isHopByHop(name) {
			continue
		}
		out = append(out, l...)
		out = append(out, "\r\n"...)
	}
	return out
}

func isHopByHop(name []byte) bool {
	for _, k := range hopHeaders {
		if h1head.Is(name, k) {
			return true
		}
	}
	return false
}

// laneGot1xx passes an attempt's informational answers on to the app, as
// relay's client trace does.
func laneGot1xx(w http.ResponseWriter) func(int, textproto.MIMEHeader) error {
	return func(code int, header textproto.MIMEHeader) error {
		h := w.Header()
		for k, vv := range header {
			h[k] = append(h[k], vv...)
		}
		w.WriteHeader(code)
		clear(h) // a 1xx does not clear the writer's header itself
		return nil
	}
}

// laneRefuse answers for the sidecar: the local reply of lr, or its
// fallback.
func laneRefuse[L laneCall](c *compartment, l L, lr *localReply) {
	w, req := l.materialize()
	c.serveError(w, req, lr)
}
