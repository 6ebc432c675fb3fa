package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"mime"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/net/http/httpguts"

	"github.com/watertight/watertight/proxy/internal/h1head"
)

// The hot case past ReverseProxy (docs/forwarding-path.md, step 2b).
//
// Most of what the app sends is a plain HTTP/1.1 or HTTP/2 request (a gRPC
// call among them): no upgrade, no Expect, no hop-by-hop fields but those
// that only say keep-alive or TE: trailers, a query ReverseProxy would leave
// as it is.
// For those, relay does what httputil.ReverseProxy.ServeHTTP does, in the
// same order and with the same error handling, minus the work that only the
// general case needs: the request is not cloned (the server made it for this
// handler and nobody reads it after; relay gives the transport a shallow
// copy with its own URL and context and edits the header in place), the
// hop-by-hop fields are known, and the answer's header
// moves to the ResponseWriter without being copied value by value. Run 8
// priced ReverseProxy at 10-25 µs per request; this is written by hand
// because no library offers ReverseProxy's behaviour without its clone.
// Every other request, and every composite's node call, goes through the
// compartment's ReverseProxy as before. The proxy's whole test suite runs
// through both (relayable decides), and relay_test.go compares them.

// relayable says whether relay serves r exactly as ReverseProxy would.
func relayable(r *http.Request) bool {
	if !(r.ProtoMajor == 1 && r.ProtoMinor == 1 || r.ProtoMajor == 2) || r.Close || len(r.TransferEncoding) > 0 || r.Trailer != nil {
		return false
	}
	h := r.Header
	for _, k := range hopHeaders {
		if _, ok := h[k]; ok && !droppable(h, k) {
			return false
		}
	}
	if _, ok := h["Expect"]; ok {
		return false
	}
	return queryIsClean(r.URL.RawQuery)
}

// droppable: a hop-by-hop field many clients send on every request, which
// ReverseProxy would only remove: Connection naming nothing but keep-alive
// (the default of HTTP/1.1; Java's, Node's and Python's clients send it),
// Keep-Alive, and Proxy-Connection (curl's, through a proxy), which relay
// removes too (dropHopByHop); and TE: trailers, which ReverseProxy passes on.
func droppable(h http.Header, k string) bool {
	switch k {
	case "Keep-Alive", "Proxy-Connection":
		return true
	case "Te":
		// gRPC's clients say "TE: trailers"; ReverseProxy removes TE and
		// puts exactly that back, so it passes as it is.
		v := h[k]
		return len(v) == 1 && v[0] == "trailers"
	case "Connection":
		return h1head.OnlyKeepAlive(h[k])
	}
	return false
}

// dropHopByHop removes the hop-by-hop fields relayable let through. They are
// the app's request's own: nobody reads them after the handler.
func dropHopByHop(h http.Header) {
	// TE: trailers stays (see droppable).
	delete(h, "Connection")
	delete(h, "Keep-Alive")
	delete(h, "Proxy-Connection")
}

// hopHeaders are the fields ReverseProxy removes as hop-by-hop, in
// canonical form.
var hopHeaders = [...]string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// queryIsClean: ReverseProxy (Rewrite mode) would send the query as it is,
// not re-encoded for a ';', a bad escape or too many parameters.
func queryIsClean(q string) bool {
	if strings.Count(q, "&") >= maxQueryParams {
		return false
	}
	for i := 0; i < len(q); {
		switch q[i] {
		case ';':
			return false
		case '%':
			if i+2 >= len(q) || !ishex(q[i+1]) || !ishex(q[i+2]) {
				return false
			}
			i += 3
		default:
			i++
		}
	}
	return true
}

// maxQueryParams is net/url's (and ReverseProxy's) default limit.
const maxQueryParams = 10000

func ishex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// emptyUserAgent keeps the transport from sending Go's own User-Agent for an
// app that sent none, as ReverseProxy does.
var emptyUserAgent = []string{""}

// relaying is one relayed request's own state, in one allocation: with
// the compartment's request (rq).
type relaying struct {
	rq    request
	req   http.Request
	url   url.URL
	body  noopClose
	trace httptrace.ClientTrace
	w     http.ResponseWriter

	mu         sync.Mutex
	roundTrips bool // RoundTrip has not returned: 1xx answers may still be passed on
}

// headerAdopter is a ResponseWriter that can take an upstream's header as
// its own instead of a copy: one map fewer an answer.
type headerAdopter interface{ AdoptHeader(http.Header) bool }

// relay sends r (relayable) through the compartment and copies the
// answer back, as ReverseProxy.ServeHTTP does.
func (c *compartment) relay(w http.ResponseWriter, r *http.Request) {
	// One allocation for the request the transport gets (a shallow copy,
	// as Request.WithContext makes), its URL (the attempts address it) and
	// the client trace. The header is r's own: the server made it for this
	// handler and nobody reads it after.
	f := &relaying{req: *r, url: *r.URL, w: w, roundTrips: true}
	f.trace.Got1xxResponse = f.got1xx
	out := &f.req
	out.URL = &f.url
	out.Close = false
	if r.ContentLength == 0 {
		out.Body = nil
	} else if out.Body != nil {
		// The transport closes the body it was given when it fails; the
		// app's own must stay open for the server (ReverseProxy's
		// noopCloseReader, for the same reason).
		f.body.r = out.Body
		out.Body = &f.body
		defer f.body.Close()
	}
	h := out.Header
	if h == nil {
		h = http.Header{}
		out.Header = h
	}
	dropHopByHop(h)
	// The forwarding fields (Forwarded, X-Forwarded-*) stay: they are the
	// app's to set (see forwardingHeaders).
	if c.hostRewrite != "" && isLocalAuthority(r.Host) {
		out.Host = c.hostRewrite
	}
	if _, ok := h["User-Agent"]; !ok {
		h["User-Agent"] = emptyUserAgent
	}

	var res *http.Response
	var err error
	if lr := c.begin(&f.rq, out, &f.trace); lr != nil {
		err = lr
	} else {
		// The copy carries the request's own context (deadline, trace)
		// from here on, so that its attempts need no copy of their own
		// (attempt). The copy WithContext makes stays on the stack.
		f.req = *out.WithContext(f.rq.ctx)
		res, err = c.send(&f.rq, out)
	}
	f.mu.Lock()
	f.roundTrips = false
	f.mu.Unlock()
	if err != nil {
		c.serveError(w, out, err)
		return
	}
	c.deliver(w, r, res)
}

// deliver copies res, the answer to r (relayable), to the app, as
// ReverseProxy.ServeHTTP does once its transport has answered.
func (c *compartment) deliver(w http.ResponseWriter, r *http.Request, res *http.Response) {
	if res.StatusCode == http.StatusSwitchingProtocols {
		// Nothing was asked to switch (relayable has no Upgrade).
		res.Body.Close()
		c.serveError(w, r, fmt.Errorf("backend tried to switch protocol %q when %q was requested",
			upgradeType(res.Header), ""))
		return
	}
	removeHopByHop(res.Header)
	// The response is done with its header: the app's answer takes it
	// whole where the writer can (h1serve's, h2serve's), else field by
	// field.
	if a, ok := w.(headerAdopter); !ok || !a.AdoptHeader(res.Header) {
		dst := w.Header()
		for k, vv := range res.Header {
			if old, ok := dst[k]; ok {
				dst[k] = append(old, vv...)
			} else {
				dst[k] = vv
			}
		}
	}
	dst := w.Header()
	announced := len(res.Trailer)
	if announced > 0 {
		keys := make([]string, 0, announced)
		for k := range res.Trailer {
			keys = append(keys, k)
		}
		dst.Add("Trailer", strings.Join(keys, ", "))
	}
	w.WriteHeader(res.StatusCode)

	if err := c.copyBody(w, res); err != nil {
		defer res.Body.Close()
		if r.Context().Value(http.ServerContextKey) == nil {
			return // not under an HTTP server: nobody would recover the panic
		}
		panic(http.ErrAbortHandler) // the app must see the answer cut, not ended
	}
	res.Body.Close() // now, to have the trailers
	if len(res.Trailer) > 0 && r.ProtoMajor < 2 {
		// Chunked, so that the trailers can follow. HTTP/2's trailers
		// follow anyway: a gRPC answer that came whole leaves in one write.
		_ = http.NewResponseController(w).Flush()
	}
	if len(res.Trailer) == announced {
		for k, vv := range res.Trailer {
			dst[k] = append(dst[k], vv...)
		}
		return
	}
	for k, vv := range res.Trailer {
		k = http.TrailerPrefix + k
		for _, v := range vv {
			dst.Add(k, v)
		}
	}
}

// got1xx passes an informational answer (103 Early Hints) on to the app
// while the request is still out.
func (f *relaying) got1xx(code int, header textproto.MIMEHeader) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.roundTrips {
		return nil // the final answer owns the header now
	}
	h := f.w.Header()
	for k, vv := range header {
		h[k] = append(h[k], vv...)
	}
	f.w.WriteHeader(code)
	clear(h) // a 1xx does not clear the writer's header itself
	return nil
}

// copyBody copies the answer's body to the app, flushing what it wrote
// when its length is unknown or it is an event stream, as ReverseProxy
// does; but where the body can tell (readier) and the writer can keep the
// length unknown without a flush (lengthKeeper: h2serve's), only before a
// read that would wait for the upstream. ReverseProxy flushes after every
// write, so a gRPC answer that came whole left in three writes (its
// HEADERS, its message, its trailers at the end) where one does: nothing
// written waits for the upstream either way.
func (c *compartment) copyBody(w http.ResponseWriter, res *http.Response) error {
	flush := res.ContentLength == -1
	if !flush {
		if ct := res.Header["Content-Type"]; len(ct) > 0 && strings.Contains(ct[0], "event-stream") {
			base, _, _ := mime.ParseMediaType(ct[0])
			flush = base == "text/event-stream"
		}
	}
	rc := http.NewResponseController(w)
	r, _ := res.Body.(readier)
	if k, ok := w.(lengthKeeper); flush && r != nil && ok {
		k.KeepLengthUnknown()
	} else {
		r = nil // flush every write
	}
	waits := func() bool { return r == nil || !r.Ready() }
	if flush && waits() {
		// The header goes out now, before the body has anything to say.
		_ = rc.Flush()
	}
	bp := buffers.Get().(*[]byte)
	defer buffers.Put(bp)
	buf := *bp
	for {
		n, rerr := res.Body.Read(buf)
		if rerr != nil && rerr != io.EOF && rerr != context.Canceled {
			c.logf("httputil: ReverseProxy read error during body copy: %v", rerr)
		}
		if n > 0 {
			m, werr := w.Write(buf[:n])
			if werr != nil {
				return werr
			}
			if m != n {
				return io.ErrShortWrite
			}
			if flush && waits() {
				if err := rc.Flush(); err != nil {
					return err
				}
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// lengthKeeper is an app-side writer that can leave an answer's length
// undeclared without a flush (h2serve's).
type lengthKeeper interface{ KeepLengthUnknown() }

// removeHopByHop removes the fields named by Connection and the known
// hop-by-hop fields, as ReverseProxy does with an answer's header.
func removeHopByHop(h http.Header) {
	for _, f := range h["Connection"] {
		for sf := range strings.SplitSeq(f, ",") {
			if sf = textproto.TrimString(sf); sf != "" {
				h.Del(sf)
			}
		}
	}
	for _, k := range hopHeaders {
		delete(h, k) // already canonical: no Del's canonicalising per name
	}
}

func upgradeType(h http.Header) string {
	if !httpguts.HeaderValuesContainsToken(h["Connection"], "Upgrade") {
		return ""
	}
	return h.Get("Upgrade")
}

// noopClose keeps the transport from closing the app's request body (it
// closes the body it was given when it fails) and, once the handler has
// returned, from reading it: ReverseProxy's noopCloseReader.
type noopClose struct {
	r      io.Reader
	closed atomic.Bool
}

var errBodyAfterHandler = errors.New("ReverseProxy: read from closed body")

// Ready passes the app's body's on (h2serve's: see readier).
func (b *noopClose) Ready() bool { return ready(b.r) }

func (b *noopClose) Read(p []byte) (int, error) {
	if b.closed.Load() {
		return 0, errBodyAfterHandler
	}
	return b.r.Read(p)
}

func (b *noopClose) Close() error { b.closed.Store(true); return nil }

func (c *compartment) logf(format string, args ...any) {
	if c.proxy.ErrorLog != nil {
		c.proxy.ErrorLog.Printf(format, args...)
		return
	}
	log.Printf(format, args...)
}
