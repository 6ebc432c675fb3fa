// Package h2conn is the sidecar's HTTP/2 client for cleartext (h2c, prior
// knowledge) upstreams: the upstream half of docs/forwarding-path.md,
// step 3.
//
// Why by hand: net/http's HTTP/2 Transport sends each request from a
// goroutine of its own and hands the answer over from the connection's read
// loop through channels and a select, and flushes every request's HEADERS
// by itself. Here the caller writes its HEADERS into the connection's
// buffer under a lock (requests that arrive together leave in one write),
// and the read loop hands the answer over by closing one channel. The wire
// work is golang.org/x/net/http2's Framer and hpack.
//
// It takes the requests a proxy sends in the hot case: http URLs, with or
// without a body, trailers both ways, 1xx answers through
// httptrace.ClientTrace. Expect: 100-continue, CONNECT and anything not
// http go to Fallback (net/http's Transport).
package h2conn

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"
)

// Transport is an http.RoundTripper over pooled h2c connections.
type Transport struct {
	// DialContext opens a connection to an upstream.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// Fallback takes the requests this client does not (see the package
	// comment). Required.
	Fallback http.RoundTripper
	// IdleTimeout closes a connection without streams for that long; 0
	// keeps it.
	IdleTimeout time.Duration
	// ReadIdleTimeout: a connection with streams that has read nothing
	// for that long is pinged, and closed if PingTimeout passes without
	// an answer. 0 turns the check off.
	ReadIdleTimeout time.Duration
	PingTimeout     time.Duration
	// MaxConcurrentStreams caps the streams on one connection; past it a
	// request takes another connection, opening one if need be. 0 leaves
	// the upstream's SETTINGS_MAX_CONCURRENT_STREAMS as the only limit.
	//
	// Why a cap below the upstream's: one connection funnels every stream
	// through the upstream's one reader and writer for it, and an upstream
	// with more cores serves more connections at once. Whether spreading
	// pays depends on the upstream: against a fresh Go HTTP/2 server it cut
	// the p50 at 2,000 req/s, against the benchmark's warm one it did not
	// (docs/benchmarks.md, runs 53 and 54). Envoy's max_concurrent_streams;
	// its default, like ours, is the upstream's limit.
	MaxConcurrentStreams uint32

	mu      sync.Mutex
	conns   map[string][]*clientConn
	dialing map[string]*dial
	closed  bool
}

// dial is a connection being opened; requests for the same address wait
// for it rather than each opening their own.
type dial struct {
	done chan struct{}
	err  error
}

// maxRetries bounds how often a request refused before it was processed
// (REFUSED_STREAM, or beyond a GOAWAY) is sent again on another connection.
const maxRetries = 6

// RoundTrip sends req and returns the answer once its header has arrived.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if !takes(req) {
		return t.Fallback.RoundTrip(req)
	}
	if req.URL.Host == "" {
		closeBody(req)
		return nil, errors.New("h2conn: no Host in request URL")
	}
	addr := hostPort(req.URL.Host)
	for try := 0; ; try++ {
		cc, err := t.conn(req.Context(), addr)
		if err != nil {
			closeBody(req)
			return nil, err
		}
		res, err := cc.roundTrip(req)
		var ref refusedError
		if err != nil && errors.As(err, &ref) && try < maxRetries && req.Context().Err() == nil {
			// Never processed: safe to send again, with the body from
			// the start (the first try may have read some of it).
			if again, ok := rewound(req); ok {
				req = again
				continue
			}
		}
		return res, err
	}
}

// rewound is req ready to be sent again: as it is without a body, with a
// fresh body from GetBody, or not at all.
func rewound(req *http.Request) (*http.Request, bool) {
	if req.Body == nil || req.Body == http.NoBody {
		return req, true
	}
	if req.GetBody == nil {
		return nil, false
	}
	body, err := req.GetBody()
	if err != nil {
		return nil, false
	}
	again := *req
	again.Body = body
	return &again, true
}

// takes says whether this client serves req.
func takes(req *http.Request) bool {
	if req.URL == nil || req.URL.Scheme != "http" || req.Method == http.MethodConnect {
		return false
	}
	_, expect := req.Header["Expect"]
	return !expect
}

func hostPort(host string) string {
	if _, _, err := net.SplitHostPort(host); err == nil {
		return host
	}
	return net.JoinHostPort(stripBrackets(host), "80")
}

func stripBrackets(h string) string {
	if len(h) > 1 && h[0] == '[' && h[len(h)-1] == ']' {
		return h[1 : len(h)-1]
	}
	return h
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
}

// conn returns a connection to addr with a stream reserved on it, opening
// one if none has room.
func (t *Transport) conn(ctx context.Context, addr string) (*clientConn, error) {
	for {
		t.mu.Lock()
		if t.closed {
			t.mu.Unlock()
			return nil, errors.New("h2conn: transport closed")
		}
		for _, cc := range t.conns[addr] {
			if cc.reserve() {
				t.mu.Unlock()
				return cc, nil
			}
		}
		d := t.dialing[addr]
		if d == nil {
			d = &dial{done: make(chan struct{})}
			if t.dialing == nil {
				t.dialing = map[string]*dial{}
			}
			t.dialing[addr] = d
			t.mu.Unlock()
			var cc *clientConn
			cc, d.err = t.open(ctx, addr)
			t.mu.Lock()
			delete(t.dialing, addr)
			close(d.done)
			t.mu.Unlock()
			if d.err != nil {
				return nil, d.err
			}
			if cc != nil {
				return cc, nil
			}
			continue
		}
		t.mu.Unlock()
		select {
		case <-d.done:
			if d.err != nil {
				if ctx.Err() == nil && (errors.Is(d.err, context.Canceled) || errors.Is(d.err, context.DeadlineExceeded)) {
					continue // its dialer's request gave up, not ours: dial again
				}
				return nil, d.err // the upstream is not there: do not knock N times
			}
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}
}

// open dials addr and adds the connection to the pool, with a stream
// reserved on it for the request that dialled it if it has room for one
// (else it returns nil and the request looks again).
func (t *Transport) open(ctx context.Context, addr string) (*clientConn, error) {
	nc, err := t.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("h2conn: dialing %s: %w", addr, err)
	}
	cc, err := newClientConn(t, addr, nc)
	if err != nil {
		_ = nc.Close()
		return nil, err
	}
	// Into the pool once the upstream's SETTINGS have come (one round
	// trip): until then its stream limit is a guess, and a burst of
	// requests would overrun it and be refused.
	go cc.readLoop()
	select {
	case <-cc.settledc:
	case <-ctx.Done():
		cc.close(context.Cause(ctx))
		return nil, fmt.Errorf("h2conn: waiting for %s's SETTINGS: %w", addr, context.Cause(ctx))
	}
	cc.mu.Lock()
	broken := cc.broken
	cc.mu.Unlock()
	if broken != nil {
		return nil, fmt.Errorf("h2conn: starting HTTP/2 with %s: %w", addr, broken)
	}
	// The dialler's stream is reserved before the connection joins the
	// pool, so that the idle clock, started here for a connection
	// without one, cannot close it under the request that opened it.
	var mine *clientConn
	if cc.reserve() {
		mine = cc
	} else {
		cc.mu.Lock()
		cc.goIdle()
		cc.mu.Unlock()
	}
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		cc.close(errors.New("h2conn: transport closed"))
		return nil, errors.New("h2conn: transport closed")
	}
	if t.conns == nil {
		t.conns = map[string][]*clientConn{}
	}
	t.conns[addr] = append(t.conns[addr], cc)
	t.mu.Unlock()
	return mine, nil
}

// forget takes cc out of the pool: it takes no new streams.
func (t *Transport) forget(cc *clientConn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	list := t.conns[cc.addr]
	for i, c := range list {
		if c == cc {
			list = append(list[:i:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(t.conns, cc.addr)
	} else {
		t.conns[cc.addr] = list
	}
}

// CloseIdleConnections closes the connections without streams, and those
// of Fallback.
func (t *Transport) CloseIdleConnections() {
	t.mu.Lock()
	err := errors.New("h2conn: idle connection closed")
	var idle []*clientConn
	for _, list := range t.conns {
		for _, cc := range list {
			if cc.retireIfIdle(err) {
				idle = append(idle, cc)
			}
		}
	}
	t.mu.Unlock()
	for _, cc := range idle {
		cc.close(err)
	}
	if ic, ok := t.Fallback.(interface{ CloseIdleConnections() }); ok {
		ic.CloseIdleConnections()
	}
}
