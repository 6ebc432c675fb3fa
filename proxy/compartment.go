package proxy

import (
	"context"
	"errors"
	"log"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/watertight/watertight/breaker"
	"github.com/watertight/watertight/bulkhead"
	"github.com/watertight/watertight/config"
	"github.com/watertight/watertight/metrics"
	"github.com/watertight/watertight/outlier"
)

// compartment is everything one upstream owns in one config snapshot,
// shared with no other upstream. What must survive a config change (pool,
// breaker, rate limiter, retry budget, endpoint state, connection pools,
// metrics) lives in the upstream and the pool; the rest is rebuilt, and
// requests finish on the compartment they started on.
type compartment struct {
	name string
	up   *upstream // for its atomics only: its other fields change on reload
	// The upstream's policies as of this snapshot.
	transports  *transports
	metrics     *metrics.Upstream
	breaker     *breaker.Breaker // nil: none
	limiter     *rate.Limiter    // nil: none
	budget      retryBudget      // nil: no retries
	pool        *bulkhead.Pool
	limit       int          // the pool's configured limit, for warm-up after the breaker closes
	shared      bool         // the pool is every upstream's (isolation: shared)
	inflight    atomic.Int64 // this upstream's share of a shared pool
	balancer    *balancer
	outliers    *outlier.Detector // nil: no outlier detection
	timeout     time.Duration     // 0: none
	retry       *retryPolicy      // nil: no retries
	hedge       *hedgePolicy      // nil: no hedging
	fallbacks   config.Fallbacks
	failures    *statusSet // HTTP statuses that are failures; nil: 5xx
	warmup      time.Duration
	accessLog   bool   // some listener logs requests: look for their records
	hostRewrite string // Host for requests addressed to the listener itself
	proxy       *httputil.ReverseProxy
}

func newCompartment(u *config.Upstream, up *upstream, pool *bulkhead.Pool, limit int, shared bool, errorLog *log.Logger) *compartment {
	eps := up.snapshotEndpoints(u)
	c := &compartment{
		name:       u.Name,
		up:         up,
		transports: up.transports,
		metrics:    up.metrics,
		breaker:    up.breaker,
		limiter:    up.limiter,
		budget:     up.budget,
		pool:       pool,
		limit:      limit,
		shared:     shared,
		balancer:   newBalancer(u.LoadBalancer, eps, u.Warmup.Duration),
		timeout:    u.Timeout.Duration,
		retry:      newRetryPolicy(u.Retry),
		hedge:      newHedgePolicy(u.Hedge),
		failures:   newStatusSet(u.FailureStatuses),
		fallbacks:  u.Fallback,
		warmup:     u.Warmup.Duration,
	}
	if od := u.OutlierDetection; od != nil {
		c.outliers = outlier.New(*od, outlierEndpoints(eps))
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

// RoundTrip is the upstream's request path, outer to inner, as DESIGN.md
// orders it:
//
//	deadline → fallback → retry → breaker → rate limit → bulkhead → per-try timeout → endpoint → forward
//
// The fallback is applied by serveError to the *localReply this returns.
// Every way out either hands the app a response whose body (an exchange)
// holds the attempt's slot until it is closed, or returns a *localReply.
func (c *compartment) RoundTrip(req *http.Request) (*http.Response, error) {
	return c.roundTrip(req, nil)
}

// roundTrip is RoundTrip with the client trace of the request's attempts
// (relay's, for 1xx answers; nil for none), added to the context the
// request makes anyway rather than to a copy of the request.
func (c *compartment) roundTrip(req *http.Request, trace *httptrace.ClientTrace) (*http.Response, error) {
	r := new(request)
	if lr := c.begin(r, req, trace); lr != nil {
		return nil, lr
	}
	return c.send(r, req)
}

// send is roundTrip once begun: the attempts, then the fallback.
func (c *compartment) send(r *request, req *http.Request) (*http.Response, error) {
	x, err := c.retries(r, req)
	if err != nil {
		var lr *localReply
		if !errors.As(err, &lr) {
			lr = &localReply{result: metrics.UpstreamError, upstream: c.name, err: err}
		}
		r.finish(lr.result)
		return nil, lr
	}
	if len(c.fallbacks) > 0 && classifyHead(x.resp, r.grpc, c.failures) == metrics.UpstreamError {
		// A weak dependency's failure answer is replaced by its fallback,
		// if it has one this client can take. Once the deadline passed, the
		// upstream gave up on the deadline it was passed: that is the
		// timeout (as the exchange judges it), whichever side noticed first.
		res := metrics.UpstreamError
		if deadlinePassed(x.ctx) {
			res = metrics.Timeout
		}
		if fb := c.fallbacks.For(reasonFor[res].name); fb != nil && fallbackServes(fb, r.grpc) {
			err := errFailedAnswer(x.resp)
			x.resp.Body.Close()
			r.finish(res)
			return nil, &localReply{result: res, upstream: c.name, err: err}
		}
	}
	x.handOver()
	return x.resp, nil
}

// begin starts the request in r (zero, and not to be copied after): its
// deadline is the smaller of the upstream's timeout and the caller's,
// counted from arrival, so queueing and every attempt come out of it. An
// open breaker refuses instead, before the request costs anything.
func (c *compartment) begin(r *request, req *http.Request, trace *httptrace.ClientTrace) *localReply {
	grpc := isGRPC(req)
	t, ok := callerTimeout(req, grpc)
	return c.beginWith(r, req.Context(), grpc, t, ok, trace)
}

// beginWith is begin for a request the caller has read: its context,
// whether it is gRPC, and the time its caller gave it, if any (callerOK).
func (c *compartment) beginWith(r *request, parent context.Context, grpc bool, caller time.Duration, callerOK bool, trace *httptrace.ClientTrace) *localReply {
	if c.breaker != nil && c.breaker.Rejecting() {
		c.metrics.Request(metrics.CircuitOpen, 0)
		return &localReply{result: metrics.CircuitOpen, upstream: c.name, err: errCircuitOpen}
	}
	*r = request{c: c, start: time.Now(), parent: parent, grpc: grpc}
	if c.accessLog {
		r.rec = accessRecordOf(r.parent)
	}
	d := c.timeout
	if callerOK && (d == 0 || caller < d) {
		d = caller
	}
	r.ctx = r.parent
	if d > 0 || trace != nil {
		var dl time.Time
		if d > 0 {
			dl = r.start.Add(d)
		}
		r.own.Start(r.parent, dl, trace)
		r.ctx = &r.own
	}
	if c.budget != nil {
		c.budget.RecordExecution()
	}
	return nil
}

// retries sends attempts until one is worth answering with: it succeeded,
// failed in a way the retry policy does not retry, or the attempts, the
// retry budget, the replayable body or the deadline ran out. A retry waits a
// jittered backoff and takes a slot of its own.
func (c *compartment) retries(r *request, req *http.Request) (*exchange, error) {
	body := c.retry.replayable(req)
	for n := 0; ; n++ {
		x, err := c.try(r, req, n > 0)
		if !c.retry.wanted(n, x, err, r) || !body.rewind() {
			return x, err
		}
		if !c.budget.TryAcquirePermit() {
			return x, err // the budget says enough: answer with what we have
		}
		if x != nil {
			x.resp.Body.Close()
		}
		if !sleep(r.ctx, c.retry.backoff(n)) {
			c.budget.ReleasePermit()
			res := classifyError(r.parent, r.ctx, r.ctx.Err())
			return nil, &localReply{result: res, upstream: c.name, err: r.ctx.Err()}
		}
		c.metrics.Retry()
		req = body.next(req)
	}
}

// try is one try of the request: one attempt, or for a hedged request a race
// of the attempt and its hedges.
func (c *compartment) try(r *request, req *http.Request, retry bool) (*exchange, error) {
	if c.hedge.applies(req) {
		return c.hedged(r, req, retry)
	}
	return c.attempt(r, r.ctx, noCancel, req, retry)
}

// attempt is one attempt: breaker → rate limit → bulkhead → per-try timeout
// → endpoint → forward, under ctx (the request's, or a hedge's own, which
// cancel ends once the attempt does). A refusal by the breaker, the rate
// limiter or the bulkhead is the sidecar's own doing: it counts as no
// upstream failure. A retry or hedge holds a permit of the retry budget,
// given back when it ends.
func (c *compartment) attempt(r *request, ctx context.Context, cancel context.CancelFunc, req *http.Request, retry bool) (*exchange, error) {
	x, lr := c.admit(r, ctx, cancel, retry)
	if lr != nil {
		return nil, lr
	}

	// Forward. req is the ReverseProxy's own copy (or the retry's), so it is
	// ours to address.
	req.URL.Scheme = c.transports.scheme()
	req.URL.Host = x.ep.addr
	if dl, ok := x.ctx.Deadline(); ok {
		propagateDeadline(req.Header, r.grpc, time.Until(dl), &c.up.deadline)
	}
	if req.Context() != x.ctx {
		req = req.WithContext(x.ctx) // a hedge's or a per-try timeout's, or a caller's request (not relay's)
	}
	resp, err := c.transports.forRequest(req, r.grpc).RoundTrip(req)
	if err != nil {
		res := classifyError(r.parent, x.ctx, err)
		x.finish(res)
		return nil, &localReply{result: res, upstream: c.name, err: err}
	}
	c.hedge.observe(time.Since(x.start))
	x.resp = resp
	x.body = resp.Body
	if resp.StatusCode == http.StatusSwitchingProtocols {
		resp.Body = x.upgraded()
	} else {
		resp.Body = x
	}
	return x, nil
}

// admit is an attempt up to the endpoint it goes to: breaker → rate limit
// → bulkhead → per-try timeout → endpoint. The exchange it returns holds
// what it took, until its finish.
func (c *compartment) admit(r *request, ctx context.Context, cancel context.CancelFunc, retry bool) (*exchange, *localReply) {
	// Breaker: an open breaker refuses in microseconds, before anything else.
	if c.breaker != nil && c.breaker.Rejecting() {
		return nil, c.refuse(retry, metrics.CircuitOpen, errCircuitOpen)
	}
	// Rate limit.
	if c.limiter != nil && !c.limiter.Allow() {
		return nil, c.refuse(retry, metrics.RateLimited, errRateLimited)
	}
	// Bulkhead: a slot in this upstream's own pool, or a fast refusal.
	c.warmLimit(r.start)
	waited, err := c.pool.Acquire(ctx)
	if waited > 0 {
		c.metrics.QueueWait(waited)
		if r.rec != nil {
			r.rec.waited(waited)
		}
	}
	if err != nil {
		res := metrics.BulkheadFull
		switch {
		case r.parent.Err() != nil:
			res = metrics.Canceled
		case err == bulkhead.ErrQueueTimeout:
			res = metrics.QueueTimeout
		}
		return nil, c.refuse(retry, res, err)
	}
	if c.shared {
		c.inflight.Add(1)
	}
	x := &r.first // only the first attempt is no retry, and it comes first
	if retry {
		x = &exchange{}
	}
	*x = exchange{r: r, retry: retry, ctx: ctx, cancel: cancel, start: r.start}
	if waited > 0 || retry {
		x.start = time.Now()
	}
	// The breaker's permit is taken only now that the request will really
	// be sent: failsafe-go cannot hand back a half-open probe's permit
	// unused, so a bulkhead refusal must not have taken one.
	if c.breaker != nil {
		if !c.breaker.Acquire() {
			x.finish(metrics.CircuitOpen)
			return nil, &localReply{result: metrics.CircuitOpen, upstream: c.name, err: errCircuitOpen}
		}
		x.permit = true
	}
	if c.retry != nil && c.retry.perTry > 0 {
		var perTry context.CancelFunc
		x.ctx, perTry = context.WithTimeout(ctx, c.retry.perTry)
		x.cancel = func() { perTry(); cancel() }
	}

	// Load balancing, among the endpoints in service.
	x.ep = c.balancer.pick(x.start.UnixNano())
	if x.ep == nil {
		x.finish(metrics.UpstreamUnavailable)
		return nil, &localReply{result: metrics.UpstreamUnavailable, upstream: c.name, err: errNoEndpoint}
	}
	x.ep.active.Add(1)
	if r.rec != nil {
		r.rec.attempt(x.ep.addr)
	}
	return x, nil
}

// refuse is the sidecar's own refusal of an attempt before it took a slot.
func (c *compartment) refuse(retry bool, res metrics.Result, err error) *localReply {
	if retry {
		c.budget.ReleasePermit()
	}
	return &localReply{result: res, upstream: c.name, err: err}
}

// warmLimit ramps the pool's limit up after the breaker closed, over the
// warm-up time, instead of letting the whole limit loose on an upstream
// that has just recovered.
func (c *compartment) warmLimit(now time.Time) {
	since := c.up.closedAt.Load()
	if since == 0 || c.shared || c.warmup == 0 {
		return
	}
	elapsed := now.UnixNano() - since
	if elapsed >= int64(c.warmup) {
		c.up.closedAt.CompareAndSwap(since, 0)
		c.pool.SetLimit(c.limit)
		return
	}
	share := max(minWarmShare, float64(elapsed)/float64(c.warmup))
	c.pool.SetLimit(max(1, int(float64(c.limit)*share)))
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
	// netip, not net.ParseIP: this runs per request, and net.IP is a
	// slice on the heap. A zone or a mapped IPv4 address changes nothing.
	ip, err := netip.ParseAddr(host)
	ip = ip.WithZone("").Unmap()
	return err == nil && (ip.IsLoopback() || ip.IsUnspecified())
}

// serveError answers a request the upstream did not: with the fallback
// configured for the cause, or with the local reply.
func (c *compartment) serveError(w http.ResponseWriter, r *http.Request, err error) {
	var lr *localReply
	if !errors.As(err, &lr) {
		// ReverseProxy's own failures (a bad upgrade answer, say).
		lr = &localReply{result: metrics.UpstreamError, upstream: c.name, err: err}
	}
	rs := reasonFor[lr.result]
	if fb := c.fallbacks.For(rs.name); fb != nil && writeFallback(w, r, fb, rs.name) {
		c.metrics.Fallback(lr.result)
		if rec := accessRecordOf(r.Context()); rec != nil {
			rec.mu.Lock()
			rec.fallback = rs.name
			rec.mu.Unlock()
		}
		return
	}
	writeLocalReply(w, r, rs, lr.Error())
}

// reading is this upstream's pool, breaker and endpoints, for metrics. In a
// shared pool, active is this upstream's share.
func (c *compartment) reading() metrics.PoolReading {
	s := c.pool.Stats()
	if c.shared {
		s.Active = int(c.inflight.Load())
	}
	circuit := breaker.StateName(breaker.Closed)
	if c.breaker != nil {
		circuit = breaker.StateName(c.breaker.State())
	}
	var eps []metrics.EndpointReading
	if c.outliers != nil {
		now := time.Now().UnixNano()
		eps = make([]metrics.EndpointReading, len(c.balancer.eps))
		for i, e := range c.balancer.eps {
			eps[i] = metrics.EndpointReading{Address: e.addr, Ejected: !e.out.Available(now)}
		}
	}
	return metrics.PoolReading{Upstream: c.name, Stats: s, Circuit: circuit, Endpoints: eps}
}

func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func noCancel() {}

// bufferPool recycles ReverseProxy's copy buffers, which it would otherwise
// allocate (32 KiB) for every response.
type bufferPool struct{}

var buffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (bufferPool) Get() []byte  { return *(buffers.Get().(*[]byte)) }
func (bufferPool) Put(b []byte) { buffers.Put(&b) }
