package proxy

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/watertight/watertight/metrics"
)

var errNoEndpoint = errors.New("no endpoint to send to")

func asLocalReply(err error, target **localReply) bool { return errors.As(err, target) }

// exchange is one request's hold on its compartment, from the slot it took
// to the end of the response body. It stands in for the response body so
// that the slot is held for as long as the upstream is still sending (a gRPC
// stream holds its slot for the whole stream) and so that the result is
// judged on the whole answer: for gRPC the status comes in the trailers.
type exchange struct {
	c      *compartment
	ep     *endpoint
	start  time.Time
	parent context.Context // the app's request
	ctx    context.Context // with the compartment's deadline
	cancel context.CancelFunc
	grpc   bool

	resp    *http.Response
	body    io.ReadCloser
	sawEOF  bool
	readErr error
	done    atomic.Bool
}

func (x *exchange) Read(p []byte) (int, error) {
	n, err := x.body.Read(p)
	if err != nil {
		if err == io.EOF {
			x.sawEOF = true
		} else if x.readErr == nil {
			x.readErr = err
			if x.grpc && x.parent.Err() == nil && deadlinePassed(x.ctx) {
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
// INTERNAL. The ReverseProxy sends resp.Trailer once the body ends.
func (x *exchange) timeoutTrailers(err error) {
	if x.resp.Trailer == nil {
		x.resp.Trailer = http.Header{}
	}
	lr := &localReply{result: metrics.Timeout, upstream: x.c.name, err: err}
	x.resp.Trailer.Set("Grpc-Status", strconv.Itoa(reasonTimeout.grpcCode))
	x.resp.Trailer.Set("Grpc-Message", grpcEncodeMessage(lr.Error()))
	x.resp.Trailer.Set(HeaderReason, reasonTimeout.name)
}

func (x *exchange) Close() error {
	err := x.body.Close()
	x.finish(x.result())
	return err
}

// result judges how the exchange ended.
func (x *exchange) result() metrics.Result {
	switch {
	case x.sawEOF:
		res := classifyResponse(x.resp, x.grpc)
		if res == metrics.UpstreamError && deadlinePassed(x.ctx) {
			// The upstream gave up on the deadline it was passed
			// (DEADLINE_EXCEEDED) just before the sidecar did.
			return metrics.Timeout
		}
		return res
	case x.parent.Err() != nil:
		return metrics.Canceled
	case deadlinePassed(x.ctx):
		return metrics.Timeout
	case x.readErr != nil:
		return metrics.UpstreamError
	default:
		// Closed before the end without a read error: the app stopped
		// reading. Judge what the upstream did send.
		return classifyResponse(x.resp, x.grpc)
	}
}

// finish gives back everything the exchange held, once.
func (x *exchange) finish(res metrics.Result) {
	if x.done.Swap(true) {
		return
	}
	if x.ep != nil {
		x.ep.active.Add(-1)
	}
	x.c.pool.Release()
	if x.c.shared {
		x.c.inflight.Add(-1)
	}
	x.cancel()
	x.c.metrics.Request(res, time.Since(x.start))
}

// upgraded wraps the connection of a 101 Switching Protocols answer. The
// ReverseProxy needs it writable, and on some of its error paths it never
// closes it, so the exchange also finishes when the app's request ends.
func (x *exchange) upgraded() io.ReadCloser {
	rwc, ok := x.body.(io.ReadWriteCloser)
	if !ok {
		return x // ReverseProxy will report the non-writable body
	}
	context.AfterFunc(x.parent, func() { x.finish(metrics.OK) })
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
