package proxy

import (
	"context"
	"net/http"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2/hpack"

	"github.com/watertight/watertight/proxy/h2conn"
	"github.com/watertight/watertight/proxy/h2serve"
)

// The lane over h2c (docs/forwarding-path.md, step 10): a bodiless h2c
// request whose fields are plain (h2serve offers only those) to a
// compartment whose upstream is h2c goes through the compartment's steps
// (runLane) as its decoded fields: edited as relay edits the request's
// header, encoded by h2conn, and its answer's fields passed back as they
// came when the answer is plain. No http.Request, header map, URL or
// http.Response is made for it; whatever is not plain goes to net/http's
// types where it stands, as on HTTP/1.1 (lane.go).

// h2Lane is the listener as h2serve's Lane (h1serve's has the name
// ServeLane already).
type h2Lane struct{ l *listener }

// ServeLane routes as ServeHTTP routes, then offers x to the
// compartment's lane.
func (h h2Lane) ServeLane(x *h2serve.Exchange) bool {
	c := h.l.laneRoute(x.Context().Value, x.Authority())
	return c != nil && h.l.took(c.lane2(x))
}

// lane2Transport is the compartment's h2c client when the lane may use it
// (laneTransport's rules).
func (c *compartment) lane2Transport() *h2conn.Transport {
	if c.hedge != nil || len(c.fallbacks) > 0 || c.accessLog || c.transports.scheme() != "http" {
		return nil
	}
	rt := c.transports.h1 // forRequest's choice for an HTTP/2 request
	if c.transports.auto {
		rt = c.transports.h2
	}
	t, _ := rt.(*h2conn.Transport)
	return t
}

// lane2 serves x, or declines it (false) before anything is done.
func (c *compartment) lane2(x *h2serve.Exchange) bool {
	t := c.lane2Transport()
	if t == nil {
		return false
	}
	timeout, ok := lane2Request(x)
	if !ok {
		return false
	}
	runLane(c, h2Call{c: c, x: x, t: t}, timeout)
	return true
}

// lane2Request checks that relay would send x as the lane does (relayable
// and what h2conn's RoundTrip takes), and reads the first
// X-Request-Timeout value, as Header.Get reads it.
func lane2Request(x *h2serve.Exchange) (timeout string, ok bool) {
	if !plainTarget(x.Path()) || !httpguts.ValidHostHeader(x.Authority()) {
		return "", false
	}
	tes, timed := 0, false
	for _, hf := range x.Fields() {
		switch hf.Name {
		case "te": // h2serve let through "trailers" alone
			if tes++; tes > 1 {
				return "", false // relay passes one TE, ReverseProxy any other
			}
		case "proxy-authorization", "proxy-authenticate":
			return "", false
		case "content-type":
			if isGRPCType(hf.Value) {
				return "", false
			}
		case "x-request-timeout":
			if !timed {
				timeout, timed = hf.Value, true
			}
		}
	}
	return timeout, true
}

// h2Call is an h2c request (h2serve's) to an h2c upstream (h2conn).
type h2Call struct {
	c *compartment
	x *h2serve.Exchange
	t *h2conn.Transport
}

func (l h2Call) context() context.Context { return l.x.Context() }

func (l h2Call) materialize() (http.ResponseWriter, *http.Request) { return l.x.Materialize() }

// send makes one attempt, as attempt does: sent, its answer begun. An
// answer that is not plain, or any once the request has left the lane,
// is read into net/http's types.
func (l h2Call) send(r *request, ex *exchange) laneTry {
	c, x := l.c, l.x
	dl, hasDeadline := ex.ctx.Deadline()
	authority := x.Authority()
	if c.hostRewrite != "" && isLocalAuthority(authority) {
		authority = c.hostRewrite
	}
	req := h2conn.RawRequest{
		Method: x.Method(), Authority: authority, Path: x.Path(),
		Fields: func(e h2conn.Encoder) { l.encode(e, dl, hasDeadline) },
		Got1xx: l.got1xx,
	}
	ans, err := l.t.RoundTripRaw(ex.ctx, ex.ep.addr, &req)
	if err != nil {
		return c.laneFailed(r, ex, err)
	}
	c.hedge.observe(time.Since(ex.start))
	if !x.Materialized() && plainAnswer(x.Method(), ans) {
		ex.status = ans.Status()
		return laneTry{ex: ex, raw: ans, h2: true}
	}
	_, hr := x.Materialize()
	return laneResponse(ex, ans.Response(hr))
}

// encode encodes the fields the upstream gets, as h2conn encodes the
// header relay leaves: the app's, less the caller's X-Request-Timeout
// where the time left replaces it (propagateDeadline), the first
// User-Agent only and not when empty, and a Content-Length of 0 for a
// method that has a body by its nature.
func (l h2Call) encode(e h2conn.Encoder, dl time.Time, hasDeadline bool) {
	ua := false
	for _, hf := range l.x.Fields() {
		switch hf.Name {
		case "x-request-timeout":
			if !hasDeadline {
				e.EncodeLiteral(hf.Name, hf.Value)
			}
			continue
		case "grpc-timeout":
			e.EncodeLiteral(hf.Name, hf.Value)
			continue
		case "user-agent":
			if !ua && hf.Value != "" {
				e.Encode(hf.Name, hf.Value)
			}
			ua = true
			continue
		}
		if hf.Sensitive {
			// Never indexed by the app, never by us (RFC 7541, 7.1.3):
			// what a header map, and so relay, cannot keep.
			e.EncodeLiteral(hf.Name, hf.Value)
			continue
		}
		e.Encode(hf.Name, hf.Value)
	}
	if hasDeadline {
		e.EncodeLiteral("x-request-timeout", requestTimeoutValue(time.Until(dl), &l.c.up.deadline)[0])
	}
	switch l.x.Method() {
	case http.MethodPost, http.MethodPut, http.MethodPatch:
		e.Encode("content-length", "0")
	}
}

// got1xx passes an informational answer on to the app while the request
// is out, as relay's client trace does.
func (l h2Call) got1xx(status int, fields []hpack.HeaderField) error {
	l.x.Informational(status, fields)
	return nil
}

// answer sends the plain answer's fields as they came, its body and any
// trailers after it. The exchange reads the body, as it does relay's, and
// is judged by how that ended when it closes.
func (l h2Call) answer(ex *exchange, try laneTry) {
	a := try.raw
	err := l.x.AnswerHead(ex.status, a.Fields(), a.Length())
	ex.body = a.Body()
	if err == nil && l.x.AnswerBody(ex) == nil {
		if t := a.Trailers(); len(t) > 0 {
			l.x.AnswerTrailers(t)
		}
	}
	_ = ex.Close()
}

// plainAnswer: an answer the app gets from the lane as relay would give it
// (deliver), its fields as they came: a final answer with a body of known
// length, to a method other than HEAD, with no hop-by-hop field for
// removeHopByHop to remove, not an event stream (which relay flushes as it
// goes).
func plainAnswer(method string, a h2conn.RawAnswer) bool {
	if method == http.MethodHead || a.Length() < 0 {
		return false
	}
	switch a.Status() {
	case http.StatusNoContent, http.StatusNotModified:
		return false
	}
	for _, hf := range a.Fields() {
		switch hf.Name {
		case "connection", "proxy-connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
			"te", "trailer", "transfer-encoding", "upgrade":
			return false
		case "content-type":
			if strings.Contains(hf.Value, "event-stream") {
				return false
			}
		}
	}
	return true
}
