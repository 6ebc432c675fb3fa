// Package h1conn is the sidecar's HTTP/1.1 client for cleartext upstreams:
// an http.RoundTripper that writes the request and reads the response head
// on the calling goroutine, over a per-endpoint pool of idle connections.
//
// Why by hand: net/http's Transport runs a read and a write goroutine per
// connection and hands every request and every response across channels
// between them and the caller. On a 2-core box that handoff (selectgo, the
// scheduler, the wantConn bookkeeping) is a large share of a proxied
// request's CPU (docs/forwarding-path.md). No maintained library offers an
// HTTP/1.1 client without it that speaks net/http's types (fasthttp has its
// own Request and Response, which httputil.ReverseProxy and the compartment
// code cannot use). The wire format stays net/http's own: Request.Write
// writes the request and http.ReadResponse parses the answer, so framing,
// chunking, trailers and header validation are the standard library's.
//
// What it does not carry, it hands to Fallback (a net/http Transport):
// TLS, protocol upgrades, Expect: 100-continue, and request bodies of
// unknown or large length, which need the request written while the
// response is read.
package h1conn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/watertight/watertight/proxy/internal/reqctx"
)

// MaxInlineBody is the largest request body written on the calling
// goroutine before the response is read. Up to this size the upstream's
// socket buffer takes the whole body even if the upstream answers without
// reading it, so writing first cannot deadlock.
const MaxInlineBody = 64 << 10

const (
	defaultIdleTimeout   = 90 * time.Second
	defaultMaxHeaderSize = 1<<20 + 4096 // as net/http's server accepts
	max1xxResponses      = 10
)

// Transport is an HTTP/1.1 RoundTripper over pooled connections. The zero
// value is not usable: DialContext and Fallback are required.
type Transport struct {
	// DialContext makes a new connection to an endpoint.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// Fallback carries the requests this transport does not (see the
	// package comment).
	Fallback http.RoundTripper
	// MaxIdlePerHost bounds the idle connections kept per endpoint; zero
	// keeps none.
	MaxIdlePerHost int
	// IdleTimeout closes connections idle for longer (default 90 s).
	IdleTimeout time.Duration
	// MaxResponseHeaderBytes bounds a response head, 1xx heads included
	// (default 1 MiB + 4 KiB).
	MaxResponseHeaderBytes int64

	mu      sync.Mutex
	pools   map[string][]*conn // idle connections by endpoint, newest last
	sweeper *time.Timer        // closes expired idle connections; nil when none are idle
}

// Handles says whether RoundTrip carries req itself rather than handing it
// to Fallback.
func Handles(req *http.Request) bool {
	if req.URL == nil || req.URL.Scheme != "http" || len(req.TransferEncoding) > 0 {
		return false
	}
	if _, up := req.Header["Upgrade"]; up {
		return false
	}
	if _, expect := req.Header["Expect"]; expect {
		return false
	}
	if req.Body == nil || req.Body == http.NoBody {
		return true
	}
	return req.ContentLength > 0 && req.ContentLength <= MaxInlineBody
}

// RoundTrip sends req and reads the response head. Its body is read from
// the connection, which goes back to the pool when the body is read to the
// end and is closed if the body is closed before, or req's context ends.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if !Handles(req) {
		return t.Fallback.RoundTrip(req)
	}
	if err := validate(req); err != nil {
		closeBody(req)
		return nil, err
	}
	ctx := req.Context()
	addr := canonicalAddr(req.URL.Host)
	for retried := false; ; retried = true {
		c, err := t.get(ctx, addr)
		if err != nil {
			closeBody(req)
			return nil, err
		}
		resp, err := t.exchange(ctx, c, req)
		if err == nil {
			return resp, nil
		}
		// A pooled connection the upstream had already closed: the
		// request never reached it, so it may go again on a new one,
		// as net/http's Transport does.
		if !retried && c.reused && errors.Is(err, errStale) && replayable(req) && ctx.Err() == nil {
			continue
		}
		closeBody(req)
		return nil, err
	}
}

// errStale: the connection ended before any byte of the answer came.
var errStale = errors.New("upstream closed the connection before answering")

// exchange writes req on c and reads the response head. On error, c is
// closed.
func (t *Transport) exchange(ctx context.Context, c *conn, req *http.Request) (*http.Response, error) {
	stop := reqctx.Register(ctx, c.abort)

	c.written = 0
	// Request.Write hides a failing body's error in a type without Unwrap;
	// a copy of the request reads its body through a recorder instead, so
	// that the app's own error (a client gone mid-body) comes back as is.
	w := req
	var rb *recordingBody
	if req.Body != nil && req.Body != http.NoBody {
		rb = &recordingBody{ReadCloser: req.Body}
		r2 := *req
		r2.Body = rb
		w = &r2
	}
	var err error
	if rb != nil || !writeHead(c.bw, req) {
		err = w.Write(c.bw)
	}
	if rb != nil && rb.err != nil {
		return nil, t.fail(ctx, c, stop, "reading the request body for", rb.err)
	}
	if err == nil {
		err = c.flush()
	}
	if err != nil {
		if c.written == 0 && rb == nil { // a body's fault is the request's, not the connection's
			err = fmt.Errorf("%w: %w", errStale, err)
		}
		return nil, t.fail(ctx, c, stop, "writing request to", err)
	}
	var got1xx func(int, textproto.MIMEHeader) error
	if trace := httptrace.ContextClientTrace(ctx); trace != nil {
		got1xx = trace.Got1xxResponse
	}
	return t.receive(ctx, c, req, stop, got1xx)
}

// fail ends an exchange that went wrong: c is closed, and err says what
// was being done, or why the context ended.
func (t *Transport) fail(ctx context.Context, c *conn, stop reqctx.Registration, doing string, err error) error {
	stop.Stop()
	c.close()
	if ctx.Err() != nil {
		err = context.Cause(ctx)
	}
	return fmt.Errorf("%s %s: %w", doing, c.addr, err)
}

// receive reads the answer to req from c: informational answers go to
// got1xx (if any), the final one comes back with its body reading from c.
func (t *Transport) receive(ctx context.Context, c *conn, req *http.Request, stop reqctx.Registration, got1xx func(int, textproto.MIMEHeader) error) (*http.Response, error) {
	fail := func(doing string, err error) (*http.Response, error) {
		return nil, t.fail(ctx, c, stop, doing, err)
	}

	headLimit := t.maxHeaderBytes()
	c.limit = headLimit
	var resp *http.Response
	var b *body // room for the body's reader, if readResponse has some
	var err error
	for n := 0; ; n++ {
		resp, b, err = readResponse(c, req)
		if err != nil {
			// Not one byte of an answer came: the connection was stale.
			if c.limit == headLimit && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || isReset(err)) {
				err = fmt.Errorf("%w: %w", errStale, err)
			}
			return fail("reading response head from", err)
		}
		code := resp.StatusCode
		if code < 100 || code >= 200 {
			break
		}
		if code == http.StatusSwitchingProtocols {
			// Upgrade requests go to Fallback: this is no answer to ours.
			return fail("reading response head from", errors.New("101 Switching Protocols to a request that asked for no upgrade"))
		}
		if n == max1xxResponses {
			return fail("reading response head from", fmt.Errorf("more than %d informational responses", max1xxResponses))
		}
		// 1xx (103 Early Hints, 100 Continue): ReverseProxy passes them
		// on to the app through the client trace, as with net/http's.
		if got1xx != nil {
			if err := got1xx(code, textproto.MIMEHeader(resp.Header)); err != nil {
				return fail("passing on an informational response from", err)
			}
		}
	}
	c.limit = noLimit

	keep := !resp.Close && !req.Close
	if resp.Body == http.NoBody {
		// Nothing more to read: the connection is free now.
		t.release(c, stop, keep)
		return resp, nil
	}
	if b == nil {
		b = new(body)
	}
	*b = body{t: t, c: c, ctx: ctx, rc: resp.Body, stop: stop, keep: keep}
	if resp.Body == nil {
		b.remaining = resp.ContentLength // a plain answer: the body is the next bytes of c
	}
	resp.Body = b
	return resp, nil
}

// release ends a request's hold on c: back to the pool if it can carry
// another request, else closed.
func (t *Transport) release(c *conn, stop reqctx.Registration, keep bool) {
	// Stop reports false when the context's end already began to abort c.
	if stop.Stop() && keep && c.br.Buffered() == 0 {
		t.put(c)
		return
	}
	c.close()
}

func (t *Transport) maxHeaderBytes() int64 {
	if t.MaxResponseHeaderBytes > 0 {
		return t.MaxResponseHeaderBytes
	}
	return defaultMaxHeaderSize
}

func (t *Transport) idleTimeout() time.Duration {
	if t.IdleTimeout > 0 {
		return t.IdleTimeout
	}
	return defaultIdleTimeout
}

// validate refuses what net/http's Transport refuses before writing, since
// Request.Write alone does not check header names.
func validate(req *http.Request) error {
	if req.URL.Host == "" {
		return errors.New("h1conn: request has no host to send to")
	}
	if req.Method != "" && !httpguts.ValidHeaderFieldName(req.Method) { // a method is a token too
		return fmt.Errorf("h1conn: invalid method %q", req.Method)
	}
	for k, vv := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return fmt.Errorf("h1conn: invalid header field name %q", k)
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return fmt.Errorf("h1conn: invalid header field value for %q", k)
			}
		}
	}
	return nil
}

// replayable: the request can go again unchanged. Only bodiless requests
// with an idempotent method, as net/http's Transport decides for a request
// that reached a connection the server had closed.
func replayable(req *http.Request) bool {
	if req.Body != nil && req.Body != http.NoBody {
		return false
	}
	switch req.Method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	_, key := req.Header["Idempotency-Key"]
	_, xkey := req.Header["X-Idempotency-Key"]
	return key || xkey
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
}

// canonicalAddr adds the default port, so that "host" and "host:80" share
// a pool.
func canonicalAddr(host string) string {
	if h, port, err := net.SplitHostPort(host); err == nil {
		if port != "" {
			return host
		}
		host = h
	}
	return net.JoinHostPort(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"), "80")
}

// recordingBody keeps the error its body's Read returned.
type recordingBody struct {
	io.ReadCloser
	err error
}

func (b *recordingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		b.err = err
	}
	return n, err
}
