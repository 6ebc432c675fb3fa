package proxy

import (
	"context"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"sync"
	"sync/atomic"
	"time"

	"github.com/watertight/watertight/bulkhead"
	"github.com/watertight/watertight/config"
	"github.com/watertight/watertight/metrics"
)

// compartment is everything one upstream owns, built from one config
// snapshot and shared with no other upstream. The pool, the transports (while
// their settings hold) and the metrics outlive snapshots; the rest is
// rebuilt on every change, and requests finish on the compartment they
// started on.
type compartment struct {
	name        string
	pool        *bulkhead.Pool
	shared      bool         // the pool is every upstream's (isolation: shared)
	inflight    atomic.Int64 // this upstream's share of a shared pool
	transports  *transports
	balancer    balancer
	timeout     time.Duration // 0: none
	metrics     *metrics.Upstream
	hostRewrite string // Host for requests addressed to the listener itself
	proxy       *httputil.ReverseProxy
}

func newCompartment(u *config.Upstream, pool *bulkhead.Pool, shared bool, t *transports,
	m *metrics.Upstream, errorLog *log.Logger) *compartment {
	eps := make([]*endpoint, len(u.Endpoints))
	for i, e := range u.Endpoints {
		eps[i] = &endpoint{addr: e.Address, weight: e.Weight}
	}
	c := &compartment{
		name:       u.Name,
		pool:       pool,
		shared:     shared,
		transports: t,
		balancer:   newBalancer(u.LoadBalancer, eps),
		timeout:    u.Timeout.Duration,
		metrics:    m,
	}
	if len(u.Hosts) > 0 {
		c.hostRewrite = u.Hosts[0]
	}
	c.proxy = &httputil.ReverseProxy{
		Rewrite:      c.rewrite,
		Transport:    c,
		BufferPool:   bufferPool{},
		ErrorHandler: c.serveError,
		ErrorLog:     errorLog,
	}
	return c
}

// RoundTrip is the upstream's request path, outer to inner:
// deadline → bulkhead → pick an endpoint → forward. Every way out either
// hands the response body (which owns the slot until it is closed) to the
// caller or returns a *localReply.
func (c *compartment) RoundTrip(req *http.Request) (*http.Response, error) {
	start := time.Now()
	grpc := isGRPC(req)
	parent := req.Context()

	// Timeout: the smaller of the upstream's and the caller's, counted from
	// arrival, so time spent queued comes out of it.
	ctx, cancel := c.deadline(parent, req, grpc, start)

	// Bulkhead: a slot in this upstream's own pool, or a fast refusal.
	waited, err := c.pool.Acquire(ctx)
	if waited > 0 {
		c.metrics.QueueWait(waited)
	}
	if err != nil {
		cancel()
		res := metrics.BulkheadFull
		switch {
		case parent.Err() != nil:
			res = metrics.Canceled
		case err == bulkhead.ErrQueueTimeout:
			res = metrics.QueueTimeout
		}
		c.metrics.Request(res, time.Since(start))
		return nil, &localReply{result: res, upstream: c.name, err: err}
	}
	if c.shared {
		c.inflight.Add(1)
	}
	x := &exchange{c: c, start: start, parent: parent, ctx: ctx, cancel: cancel, grpc: grpc}

	// Load balancing.
	x.ep = c.balancer.pick()
	if x.ep == nil {
		x.finish(metrics.UpstreamUnavailable)
		return nil, &localReply{result: metrics.UpstreamUnavailable, upstream: c.name, err: errNoEndpoint}
	}
	x.ep.active.Add(1)

	// Forward. req is the ReverseProxy's own copy, so it is ours to address.
	req.URL.Scheme = c.transports.scheme()
	req.URL.Host = x.ep.addr
	if dl, ok := ctx.Deadline(); ok {
		propagateDeadline(req.Header, grpc, time.Until(dl))
	}
	resp, err := c.transports.forRequest(req, grpc).RoundTrip(req.WithContext(ctx))
	if err != nil {
		res := classifyError(parent, ctx, err)
		x.finish(res)
		return nil, &localReply{result: res, upstream: c.name, err: err}
	}
	x.resp = resp
	x.body = resp.Body
	if resp.StatusCode == http.StatusSwitchingProtocols {
		resp.Body = x.upgraded()
	} else {
		resp.Body = x
	}
	return resp, nil
}

func (c *compartment) deadline(parent context.Context, r *http.Request, grpc bool, start time.Time) (context.Context, context.CancelFunc) {
	d := c.timeout
	if t, ok := callerTimeout(r, grpc); ok && (d == 0 || t < d) {
		d = t
	}
	if d == 0 {
		return parent, func() {}
	}
	return context.WithDeadline(parent, start.Add(d))
}

// forwardingHeaders are the app's to set: ReverseProxy's Rewrite mode strips
// them from the outgoing request, and a sidecar must not.
var forwardingHeaders = [...]string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"}

func (c *compartment) rewrite(pr *httputil.ProxyRequest) {
	for _, h := range forwardingHeaders {
		if v, ok := pr.In.Header[h]; ok {
			pr.Out.Header[h] = v
		}
	}
	// An app calling 127.0.0.1:9001 (mode upstream) sends that as its Host;
	// the upstream expects its own name. A real name the app chose stays.
	if c.hostRewrite != "" && isLocalAuthority(pr.In.Host) {
		pr.Out.Host = c.hostRewrite
	}
}

// isLocalAuthority: the Host names the sidecar's own listener (an IP literal
// or localhost), not a service.
func isLocalAuthority(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	if host == "localhost" || host == "" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && (ip.IsLoopback() || ip.IsUnspecified())
}

func (c *compartment) serveError(w http.ResponseWriter, r *http.Request, err error) {
	var lr *localReply
	if !asLocalReply(err, &lr) {
		// ReverseProxy's own failures (a bad upgrade answer, say).
		lr = &localReply{result: metrics.UpstreamError, upstream: c.name, err: err}
	}
	writeLocalReply(w, r, reasonFor[lr.result], lr.Error())
}

// stats is this upstream's view of its pool.
func (c *compartment) stats() bulkhead.Stats {
	s := c.pool.Stats()
	if c.shared {
		s.Active = int(c.inflight.Load())
	}
	return s
}

// bufferPool recycles ReverseProxy's copy buffers, which it would otherwise
// allocate (32 KiB) for every response.
type bufferPool struct{}

var buffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (bufferPool) Get() []byte  { return *(buffers.Get().(*[]byte)) }
func (bufferPool) Put(b []byte) { buffers.Put(&b) }
