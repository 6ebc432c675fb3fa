package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2/hpack"

	"github.com/watertight/watertight/breaker"
	"github.com/watertight/watertight/metrics"
	"github.com/watertight/watertight/proxy/h2conn"
	"github.com/watertight/watertight/proxy/internal/reqctx"
)

var (
	errNoEndpoint  = errors.New("no endpoint to send to")
	errCircuitOpen = errors.New("circuit breaker is open")
	errRateLimited = errors.New("rate limit reached")
)

func errFailedAnswer(resp *http.Response) error {
	if v := resp.Header.Get("Grpc-Status"); v != "" {
		return fmt.Errorf("upstream answered grpc-status %s", v)
	}
	return fmt.Errorf("upstream answered %s", resp.Status)
}

// request is one app request through a compartment, across its attempts:
// its deadline, and what the metrics say of it once it ends.
type request struct {
	c      *compartment
	start  time.Time
	parent context.Context // the app's request
	ctx    context.Context // with the request's deadline and the client trace
	own    reqctx.Context  // ctx, when it needs one of its own (a deadline, a trace)
	grpc   bool
	rec    *accessRecord // nil unless this request is access-logged
	done   atomic.Bool
	first  exchange // the first attempt's, allocated with the request
}

// finish records the request's result, once.
func (r *request) finish(res metrics.Result) {
	if r.done.Swap(true) {
		return
	}
	r.own.Cancel() // harmless on one never started
	if r.c.budget != nil {
		r.c.budget.ReleaseExecution()
	}
	r.c.metrics.Request(res, time.Since(r.start))
	if r.rec != nil {
		r.rec.finish(r.c.name, res.String())
	}
}

// exchange is one attempt's hold on its compartment, from the slot it took
// to the end of the response body. It stands in for the response body so
// that the slot is held for as long as the upstream is still sending (a gRPC
// stream holds its slot for the whole stream) and so that the result is
// judged on the whole answer: for gRPC the status comes in the trailers.
// The breaker and outlier detection hear of every attempt; the metrics of
// the request hear of the attempt the app got (handedOver).
type exchange struct {
	r      *request
	ep     *endpoint
	retry  bool            // a retry: holds a permit of the retry budget
	permit bool            // holds a breaker permit
	start  time.Time       // when the attempt got its slot
	ctx    context.Context // with the per-try timeout, if any
	cancel context.CancelFunc

	resp   *http.Response
	status int // the answer's status when the lane took it as bytes (resp is nil)
	// A gRPC call's answer the lane took as fields (resp is nil), and the
	// trailers its deadline ended it with, if it did.
	raw          h2conn.RawAnswer
	lateTrailers []hpack.HeaderField
	body         io.ReadCloser
	sawEOF       bool
	readErr      error
	handedOver   bool // the app got this attempt's answer
	done         atomic.Bool
}

func (x *exchange) Read(p []byte) (int, error) {
	n, err := x.body.Read(p)
	if err != nil {
		if err == io.EOF {
			x.sawEOF = true
		} else if x.readErr == nil {
			x.readErr = err
			if x.r.grpc && x.r.parent.Err() == nil && deadlinePassed(x.ctx) {
				x.timeoutTrailers(err)
				return n, io.EOF
			}
		}
	}
	return n, err
}

// timeoutTrailers ends a gRPC response that the deadline cut off after it
// began. It can no longer be a local reply, but its status is still to come,
// so it ends with the trailers of one (DEADLINE_EXCEEDED, reason timeout)
// rather than the reset a broken copy gives, which gRPC clients report as
// INTERNAL. The ReverseProxy sends resp.Trailer once the body ends; the
// lane, lateTrailers.
func (x *exchange) timeoutTrailers(err error) {
	lr := &localReply{result: metrics.Timeout, upstream: x.r.c.name, err: err}
	status, msg := strconv.Itoa(reasonTimeout.grpcCode), grpcEncodeMessage(lr.Error())
	if x.resp == nil {
		x.lateTrailers = []hpack.HeaderField{
			{Name: "grpc-status", Value: status}, {Name: "grpc-message", Value: msg},
			{Name: headerReasonField, Value: reasonTimeout.name},
		}
		return
	}
	if x.resp.Trailer == nil {
		x.resp.Trailer = http.Header{}
	}
	x.resp.Trailer.Set("Grpc-Status", status)
	x.resp.Trailer.Set("Grpc-Message", msg)
	x.resp.Trailer.Set(HeaderReason, reasonTimeout.name)
}

// rawTrailers is what ends the answer the lane took as fields, once its
// body has: the trailers of its deadline if that cut it, else the
// upstream's.
func (x *exchange) rawTrailers() []hpack.HeaderField {
	if x.lateTrailers != nil {
		return x.lateTrailers
	}
	return x.raw.Trailers()
}

// headerReasonField is HeaderReason as an HTTP/2 field name.
var headerReasonField = strings.ToLower(HeaderReason)

// readier is a body that can tell whether a Read would wait (h2conn's
// answers, h2serve's requests).
type readier interface{ Ready() bool }

// ready says whether a Read of r now would return without waiting; false
// when r cannot tell. The wrappers of a body pass it on with it.
func ready(r io.Reader) bool {
	x, ok := r.(readier)
	return ok && x.Ready()
}

// Ready says whether a Read now would return without waiting.
func (x *exchange) Ready() bool { return ready(x.body) }

func (x *exchange) Close() error {
	err := x.body.Close()
	x.finish(x.result())
	return err
}

// result judges how the exchange ended.
func (x *exchange) result() metrics.Result {
	switch {
	case x.sawEOF:
		res := x.judge(true)
		if res == metrics.UpstreamError && deadlinePassed(x.ctx) {
			// The upstream gave up on the deadline it was passed
			// (DEADLINE_EXCEEDED) just before the sidecar did.
			return metrics.Timeout
		}
		return res
	case x.r.parent.Err() != nil:
		return metrics.Canceled
	case deadlinePassed(x.ctx):
		return metrics.Timeout
	case errors.Is(x.ctx.Err(), context.Canceled):
		return metrics.Canceled // a hedge that lost the race
	case x.readErr != nil:
		return metrics.UpstreamError
	default:
		// Closed before the end without a read error: the app stopped
		// reading, or a retry discarded the answer. Judge what the
		// upstream did send.
		return x.judge(false)
	}
}

// judge classifies the answer by its head, and by its trailers once it was
// read whole; an answer the lane took as bytes, by its status, or a gRPC
// call's by its fields as classifyResponse and classifyHead judge a
// response.
func (x *exchange) judge(whole bool) metrics.Result {
	switch {
	case x.resp == nil && x.r.grpc:
		var trailers []hpack.HeaderField
		if whole {
			trailers = x.rawTrailers()
		}
		return classifyFields(x.status, x.raw.Fields(), trailers, whole, x.r.c.failures)
	case x.resp == nil:
		if x.r.c.failures.has(x.status) {
			return metrics.UpstreamError
		}
		return metrics.OK
	case whole:
		return classifyResponse(x.resp, x.r.grpc, x.r.c.failures)
	}
	return classifyHead(x.resp, x.r.grpc, x.r.c.failures)
}

// handOver marks the exchange as the request's answer: when it ends, so
// does the request.
func (x *exchange) handOver() { x.handedOver = true }

// finish gives back everything the attempt held, tells the breaker and the
// outlier detector how it went, and ends the request if the app got this
// attempt. Once.
func (x *exchange) finish(res metrics.Result) {
	if x.done.Swap(true) {
		return
	}
	c := x.r.c
	took := time.Since(x.start)
	failed := res == metrics.UpstreamError || res == metrics.Timeout || res == metrics.UpstreamUnavailable
	if x.ep != nil {
		x.ep.active.Add(-1)
		if c.outliers != nil && res != metrics.Canceled {
			c.outliers.Record(&x.ep.out, failed, time.Now())
		}
	}
	if x.permit {
		outcome := breaker.Success
		switch {
		case failed:
			outcome = breaker.Failure
		case res == metrics.Canceled:
			outcome = breaker.Unknown
		}
		c.breaker.Record(outcome, took)
	}
	c.pool.Release()
	if c.shared {
		c.inflight.Add(-1)
	}
	if x.retry {
		c.budget.ReleasePermit()
	}
	x.cancel()
	if x.handedOver {
		x.r.finish(res)
	}
}

// upgraded wraps the connection of a 101 Switching Protocols answer. The
// ReverseProxy needs it writable, and on some of its error paths it never
// closes it, so the exchange also finishes when the app's request ends.
func (x *exchange) upgraded() io.ReadCloser {
	rwc, ok := x.body.(io.ReadWriteCloser)
	if !ok {
		return x // ReverseProxy will report the non-writable body
	}
	context.AfterFunc(x.r.parent, func() { x.finish(metrics.OK) })
	return &upgradedConn{x: x, rwc: rwc}
}

type upgradedConn struct {
	x   *exchange
	rwc io.ReadWriteCloser
}

func (u *upgradedConn) Read(p []byte) (int, error)  { return u.rwc.Read(p) }
func (u *upgradedConn) Write(p []byte) (int, error) { return u.rwc.Write(p) }
func (u *upgradedConn) Close() error {
	err := u.rwc.Close()
	u.x.finish(metrics.OK)
	return err
}
