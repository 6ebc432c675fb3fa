package proxy

import (
	"bytes"
	"context"
	"net/http"
	"net/textproto"
	"slices"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2/hpack"

	"github.com/watertight/watertight/proxy/h1conn"
	"github.com/watertight/watertight/proxy/h2conn"
	"github.com/watertight/watertight/proxy/h2serve"
	"github.com/watertight/watertight/proxy/internal/h1head"
)

// The lane over h2c (docs/forwarding-path.md, step 10): a bodiless h2c
// request whose fields are plain (h2serve offers only those) to a
// compartment with a cleartext upstream goes through the compartment's
// steps (runLane) as its decoded fields: edited as relay edits the
// request's header, encoded by h2conn for an h2c upstream or written as an
// HTTP/1.1 head for h1conn, and its answer's fields passed back as they
// came when the answer is plain. No http.Request, header map, URL or
// http.Response is made for it; whatever is not plain goes to net/http's
// types where it stands, as on HTTP/1.1 (lane.go). Written by hand for
// lane.go's reason: no library's codec shares net/http's types and the
// compartments.

// h2Lane is the listener as h2serve's Lane (h1serve's has the name
// ServeLane already).
type h2Lane struct{ l *listener }

// ServeLane routes as ServeHTTP routes, then offers x to the
// compartment's lane.
func (h h2Lane) ServeLane(x *h2serve.Exchange) bool {
	c := h.l.laneRoute(x.Context().Value, x.Authority())
	return c != nil && h.l.took(c.lane2(x))
}

// lane2Transport is the compartment's client for an HTTP/2 request, as
// forRequest picks it, when the lane may use it (laneTransport's rules):
// h2conn to an h2c upstream, or h1conn to an HTTP/1.1 one.
func (c *compartment) lane2Transport() http.RoundTripper {
	if !c.laneServes() {
		return nil
	}
	if c.transports.auto {
		return c.transports.h2
	}
	return c.transports.h1
}

// lane2 serves x, or declines it (false) before anything is done.
func (c *compartment) lane2(x *h2serve.Exchange) bool {
	rt := c.lane2Transport()
	if rt == nil {
		return false
	}
	q, ok := lane2Request(x)
	if !ok || q.grpc && c.retry != nil {
		return false
	}
	side := h2Side{c: c, x: x}
	switch t := rt.(type) {
	case *h2conn.Transport:
		runLane(c, h2Call{h2Side: side, t: t, grpc: q.grpc}, q.caller, q.callerOK, q.grpc)
	case *h1conn.Transport:
		if q.grpc || !plainAuthority(x.Authority()) { // a gRPC call alone has a body
			return false
		}
		runLane(c, h21Call{side, t}, q.caller, q.callerOK, false)
	default:
		return false
	}
	return true
}

// laneRequest2 is what lane2Request learned of a request: the time the
// app gave it, and whether it is a gRPC call.
type laneRequest2 struct {
	caller   time.Duration
	callerOK bool
	grpc     bool
}

// lane2Request checks that relay would send x as the lane does (relayable
// and what h2conn's RoundTrip takes), and reads the time the app gave it as
// callerTimeout does: the first grpc-timeout of a gRPC call, the first
// X-Request-Timeout of another request. A request with a body is the
// lane's only as a gRPC call (step 14), and a gRPC call only to a
// compartment without retries, which would replay the body and judge the
// attempts by their gRPC status (retries, replay).
func lane2Request(x *h2serve.Exchange) (q laneRequest2, ok bool) {
	if !plainTarget(x.Path()) || !httpguts.ValidHostHeader(x.Authority()) {
		return q, false
	}
	tes := 0
	var timeout, grpcTimeout string
	typed, timed, grpcTimed := false, false, false // the first of each counts, as Header.Get reads it
	fields := x.Fields()
	for i := range fields {
		hf := &fields[i]
		switch hf.Name {
		case "te": // h2serve let through "trailers" alone
			if tes++; tes > 1 {
				return q, false // relay passes one TE, ReverseProxy any other
			}
		case "proxy-authorization", "proxy-authenticate":
			return q, false
		case "content-type":
			if !typed {
				q.grpc, typed = isGRPCType(hf.Value), true
			}
		case "x-request-timeout":
			if !timed {
				timeout, timed = hf.Value, true
			}
		case "grpc-timeout":
			if !grpcTimed {
				grpcTimeout, grpcTimed = hf.Value, true
			}
		}
	}
	switch hasBody := x.Body() != nil; {
	case q.grpc && (x.Method() != http.MethodPost || !hasBody):
		return q, false // not a call: relay answers what gRPC would make of it
	case q.grpc:
		q.caller, q.callerOK = parseGRPCTimeout(grpcTimeout)
	case hasBody:
		return q, false
	default:
		q.caller, q.callerOK = requestTimeout(timeout)
	}
	return q, true
}

// h2Side is an h2c request (h2serve's) in the lane.
type h2Side struct {
	c *compartment
	x *h2serve.Exchange
}

func (l h2Side) context() context.Context { return l.x.Context() }

func (l h2Side) materialize() (http.ResponseWriter, *http.Request) { return l.x.Materialize() }

func (l h2Side) method() string { return l.x.Method() }

func (l h2Side) materialized() bool { return l.x.Materialized() }

// h2Call is an h2c request to an h2c upstream (h2conn): bodiless, or a
// gRPC call with its body.
type h2Call struct {
	h2Side
	t    *h2conn.Transport
	grpc bool
}

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
		// The app's body as it is: no wrapper to keep the upstream client
		// from closing it, as relay's keeps ReverseProxy (noopClose). That
		// is h2serve's Close, which only stops the body (what comes after
		// is discarded) and lets a blocked read go; the lane sends it
		// once, and the stream closes it when the lane returns.
		Body: l.x.Body(),
	}
	ans, err := l.t.RoundTripRaw(ex.ctx, ex.ep.addr, &req)
	if err != nil {
		return c.laneFailed(r, ex, err)
	}
	if !x.Materialized() && plainAnswer(x.Method(), ans) {
		ex.status, ex.raw = ans.Status(), ans
		return laneTry{ex: ex, raw: ans}
	}
	_, hr := x.Materialize()
	return laneResponse(ex, ans.Response(hr))
}

// encode encodes the fields the upstream gets, as h2conn encodes the
// header relay leaves: the app's, less the caller's X-Request-Timeout (a
// gRPC call's grpc-timeout) where the time left replaces it
// (propagateDeadline), the first User-Agent only and not when empty, and
// for a bodiless request a Content-Length of 0 if its method has a body by
// its nature.
func (l h2Call) encode(e h2conn.Encoder, dl time.Time, hasDeadline bool) {
	ua := false
	fields := l.x.Fields()
	for i := range fields {
		hf := &fields[i]
		switch hf.Name {
		case "x-request-timeout":
			if !hasDeadline || l.grpc {
				e.EncodeLiteral(hf.Name, hf.Value)
			}
			continue
		case "grpc-timeout":
			if !hasDeadline || !l.grpc {
				e.EncodeLiteral(hf.Name, hf.Value)
			}
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
	switch {
	case hasDeadline && l.grpc:
		e.EncodeLiteral("grpc-timeout", formatGRPCTimeout(time.Until(dl)))
	case hasDeadline:
		e.EncodeLiteral("x-request-timeout", requestTimeoutValue(time.Until(dl), &l.c.up.deadline)[0])
	}
	if l.grpc { // a call, with its body
		return
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
// trailers after it: the upstream's, or those of a gRPC call's deadline
// that cut the body (exchange.Read). The exchange reads the body, as it
// does relay's, and is judged by how that ended when it closes.
func (l h2Call) answer(ex *exchange, try laneTry) {
	a := try.raw
	err := l.x.AnswerHead(ex.status, announceTrailers(a.Fields()), a.Length())
	ex.body = a.Body()
	if err == nil && l.x.AnswerBody(ex) == nil {
		if t := ex.rawTrailers(); len(t) > 0 {
			l.x.AnswerTrailers(t)
		}
	}
	_ = ex.Close()
}

// plainAnswer: an answer the app gets from the lane as relay would give it
// (deliver), its fields as they came (but for the trailers it announces:
// announceTrailers): a final answer to a method other than HEAD, with no
// hop-by-hop field for removeHopByHop to remove, not an event stream. One of unknown length (a gRPC call's) goes out as relay
// sends it to h2serve's writer (copyBody): its length kept unknown, what
// came flushed before a read that would wait (Exchange.AnswerBody).
func plainAnswer(method string, a h2conn.RawAnswer) bool {
	if method == http.MethodHead {
		return false
	}
	switch a.Status() {
	case http.StatusNoContent, http.StatusNotModified:
		return false
	}
	fields := a.Fields()
	for i := range fields {
		hf := &fields[i]
		switch hf.Name {
		case "connection", "proxy-connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
			"te", "transfer-encoding", "upgrade":
			return false
		case "content-type":
			if strings.Contains(hf.Value, "event-stream") {
				return false
			}
		}
	}
	return true
}

// announceTrailers is fields with the trailers they announce as relay
// announces them (deliver): one Trailer field naming each valid trailer
// once, in canonical form, joined with ", " (none if none is valid). An
// answer that announces its trailers so already (as gRPC's ServeHTTP
// does) keeps its fields as they are; the trailers themselves go as they
// come.
func announceTrailers(fields []hpack.HeaderField) []hpack.HeaderField {
	n, as := 0, -1
	for i := range fields {
		if fields[i].Name == "trailer" {
			n, as = n+1, i
		}
	}
	if n == 0 || n == 1 && announcedAsRelay(fields[as].Value) {
		return fields
	}
	out := make([]hpack.HeaderField, 0, len(fields))
	var keys []string
	for _, hf := range fields {
		if hf.Name != "trailer" {
			out = append(out, hf)
			continue
		}
		for k := range strings.SplitSeq(hf.Value, ",") {
			if k = http.CanonicalHeaderKey(textproto.TrimString(k)); k != "" && httpguts.ValidTrailerHeader(k) && !slices.Contains(keys, k) {
				keys = append(keys, k)
			}
		}
	}
	if len(keys) > 0 {
		out = append(out, hpack.HeaderField{Name: "trailer", Value: strings.Join(keys, ", ")})
	}
	return out
}

// announcedAsRelay: v names valid trailers, each once, in canonical form,
// joined with ", ".
func announcedAsRelay(v string) bool {
	var seen [8]string
	n := 0
	for k := range strings.SplitSeq(v, ", ") {
		if !httpguts.ValidHeaderFieldName(k) || http.CanonicalHeaderKey(k) != k || !httpguts.ValidTrailerHeader(k) ||
			n == len(seen) || slices.Contains(seen[:n], k) {
			return false
		}
		seen[n] = k
		n++
	}
	return true
}

// h21Call is an h2c request to an HTTP/1.1 upstream (h1conn): its head is
// written from the fields, as h1conn writes the head of the request relay
// leaves (writeHead), and a plain answer's field lines go back as HTTP/2
// fields.
type h21Call struct {
	h2Side
	t *h1conn.Transport
}

// plainAuthority: an authority h1conn's writeHead sends as it is
// (Request.Write would punycode, blank or strip a zone from others).
func plainAuthority(a string) bool {
	if a == "" || a[0] == '[' {
		return false
	}
	for i := 0; i < len(a); i++ {
		if a[i] < ' ' || a[i] > '~' {
			return false
		}
	}
	return true
}

func (l h21Call) send(r *request, ex *exchange) laneTry { return sendH1(l.c, l, l.t, r, ex) }

// plain takes the answer's field lines as HTTP/2 fields.
func (l h21Call) plain(fields []byte, _ int64) (laneTry, bool) {
	hf, ok := h2AnswerFields(fields)
	return laneTry{h2fields: hf}, ok
}

// head appends the head the upstream gets to b, as writeHead writes it
// for the request relay leaves: the request line, Host (relay's), the
// first User-Agent unless empty, a Content-Length of 0 for a method that
// has a body by its nature, the other fields in the order they came
// (canonical names, values without the spaces around them), the time left
// in place of the caller's X-Request-Timeout (propagateDeadline).
func (l h21Call) head(b []byte, dl time.Time, hasDeadline bool) []byte {
	x := l.x
	b = append(b, x.Method()...)
	b = append(b, ' ')
	b = append(b, x.Path()...)
	b = append(b, " HTTP/1.1\r\nHost: "...)
	if authority := x.Authority(); l.c.hostRewrite != "" && isLocalAuthority(authority) {
		b = append(b, l.c.hostRewrite...)
	} else {
		b = append(b, authority...)
	}
	b = append(b, "\r\n"...)
	fields := x.Fields()
	for i := range fields {
		hf := &fields[i]
		if hf.Name == "user-agent" {
			if hf.Value != "" { // tested before trimming, as writeHead does
				b = append(b, "User-Agent: "...)
				b = append(b, textproto.TrimString(hf.Value)...)
				b = append(b, "\r\n"...)
			}
			break
		}
	}
	switch x.Method() {
	case http.MethodPost, http.MethodPut, http.MethodPatch:
		b = append(b, "Content-Length: 0\r\n"...)
	}
	for i := range fields {
		hf := &fields[i]
		switch {
		case hf.Name == "user-agent", hasDeadline && hf.Name == "x-request-timeout":
			continue
		}
		b = appendCanonical(b, hf.Name)
		b = append(b, ": "...)
		b = append(b, textproto.TrimString(hf.Value)...)
		b = append(b, "\r\n"...)
	}
	if hasDeadline {
		b = appendTimeLeft(b, dl)
	}
	return append(b, "\r\n"...)
}

// appendCanonical appends name (an HTTP/2 field name: a token in lower
// case) in canonical form, as http.CanonicalHeaderKey would make it,
// without making a string of it.
func appendCanonical(b []byte, name string) []byte {
	upper := true
	for i := 0; i < len(name); i++ {
		ch := name[i]
		if upper && 'a' <= ch && ch <= 'z' {
			ch -= 'a' - 'A'
		}
		upper = ch == '-'
		b = append(b, ch)
	}
	return b
}

// answer sends the plain answer: its fields, then its body, which the
// exchange reads, as it does relay's, and is judged by when it closes.
func (l h21Call) answer(ex *exchange, try laneTry) {
	err := l.x.AnswerHead(ex.status, try.h2fields, try.length)
	ex.body = try.ans.Body()
	if err == nil {
		_ = l.x.AnswerBody(ex)
	}
	_ = ex.Close()
}

// h2AnswerFields is a plain HTTP/1.1 answer's field lines as HTTP/2 fields,
// names in lower case and values without the spaces around them, or false
// if one is hop-by-hop (removeHopByHop would remove it). Every value, and
// every name sent in lower case already, is cut from one string; the
// common names come from a table.
func h2AnswerFields(fields []byte) ([]hpack.HeaderField, bool) {
	s := string(fields)
	out := make([]hpack.HeaderField, 0, bytes.Count(fields, []byte("\n")))
	off := 0
	for rest := fields; len(rest) > 0; {
		l, r, _ := h1head.CutLine(rest)
		rest = r
		colon := bytes.IndexByte(l, ':')
		if isHopByHop(l[:colon]) {
			return nil, false
		}
		i, j := colon+1, len(l)
		for i < j && (l[i] == ' ' || l[i] == '\t') {
			i++
		}
		for j > i && (l[j-1] == ' ' || l[j-1] == '\t') {
			j--
		}
		out = append(out, hpack.HeaderField{Name: lowerName(s[off : off+colon]), Value: s[off+i : off+j]})
		off += len(l) + 2
	}
	return out, true
}

// lowerName is name in lower case: name itself, a common name from the
// table, or a new string.
func lowerName(name string) string {
	lower := true
	for i := 0; i < len(name); i++ {
		if 'A' <= name[i] && name[i] <= 'Z' {
			lower = false
			break
		}
	}
	if lower {
		return name
	}
	for _, k := range commonAnswerNames {
		if len(k) == len(name) && strings.EqualFold(k, name) {
			return k
		}
	}
	return strings.ToLower(name)
}

// commonAnswerNames are the field names answers most often carry.
var commonAnswerNames = [...]string{
	"content-type", "content-length", "date", "server", "cache-control", "etag", "last-modified",
	"vary", "set-cookie", "location", "expires", "content-encoding", "accept-ranges", "age", "link",
	"access-control-allow-origin", "x-content-type-options", "strict-transport-security",
	"x-frame-options", "content-language", "content-disposition", "x-request-id",
}
