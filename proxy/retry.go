package proxy

import (
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/watertight/watertight/config"
	"github.com/watertight/watertight/metrics"
)

// retryPolicy decides which failed attempts are tried again.
//
// Written by hand rather than with failsafe-go's retry policy: the decision
// needs the attempt's response head and whether the request body can still
// be replayed, and when the budget says no the app must get the upstream's
// last answer, not an error; failsafe-go's executor sees none of that. Its
// retry budget is used as is.
type retryPolicy struct {
	attempts  int
	perTry    time.Duration
	base, max time.Duration
	limit     int // bytes of request body kept for replay
	onConnect bool
	onReset   bool
	onTimeout bool
	on5xx     bool
	onGateway bool
	statuses  []int
	grpcCodes []int
}

func newRetryPolicy(r *config.Retry) *retryPolicy {
	if r == nil || r.Attempts == 0 {
		return nil
	}
	p := &retryPolicy{
		attempts: r.Attempts,
		perTry:   r.PerTryTimeout.Duration,
		base:     r.Backoff.Base.Duration,
		max:      r.Backoff.Max.Duration,
		limit:    r.BufferLimit,
	}
	for _, cond := range r.On {
		switch cond {
		case "connect-failure":
			p.onConnect = true
		case "reset", "refused-stream":
			p.onReset = true
		case "timeout":
			p.onTimeout = true
		case "5xx":
			p.on5xx = true
		case "gateway-error":
			p.onGateway = true
		default:
			if code, err := strconv.Atoi(cond); err == nil {
				p.statuses = append(p.statuses, code)
			} else if code, ok := config.GRPCCode(cond); ok {
				p.grpcCodes = append(p.grpcCodes, code)
			}
		}
	}
	return p
}

// wanted says whether attempt n (0 is the first) should be followed by
// another, judging its answer x or its failure err.
func (p *retryPolicy) wanted(n int, x *exchange, err error, r *request) bool {
	if p == nil || n >= p.attempts || r.ctx.Err() != nil {
		return false
	}
	if err != nil {
		var lr *localReply
		if !errors.As(err, &lr) {
			return false
		}
		switch lr.result {
		case metrics.UpstreamUnavailable:
			return p.onConnect && !errors.Is(err, errNoEndpoint)
		case metrics.UpstreamError:
			return p.onReset
		case metrics.Timeout:
			return p.onTimeout // the per-try timeout: the request's own has not passed
		default:
			return false // the sidecar's own refusals are not retried
		}
	}
	if p.retriesStatus(x.resp.StatusCode) {
		return true
	}
	if len(p.grpcCodes) > 0 && r.grpc {
		// Only a trailers-only answer carries its status in the head; a
		// stream that has begun cannot be taken back.
		if code, err := strconv.Atoi(x.resp.Header.Get("Grpc-Status")); err == nil {
			return slices.Contains(p.grpcCodes, code)
		}
	}
	return false
}

// retriesStatus: an answer with this HTTP status is worth another attempt.
func (p *retryPolicy) retriesStatus(status int) bool {
	return p.on5xx && status >= 500 ||
		p.onGateway && (status == 502 || status == 503 || status == 504) ||
		slices.Contains(p.statuses, status)
}

// backoff before retry n+1: exponential from base, capped, fully jittered.
func (p *retryPolicy) backoff(n int) time.Duration {
	upper := p.max
	if n < 30 {
		upper = min(p.max, p.base<<n)
	}
	if upper <= 0 {
		return 0
	}
	return rand.N(upper)
}

// replayable prepares req's body to be sent again. Only a request whose body
// the sidecar can send whole again is retried: one with no body, or whose
// body stays within the buffer limit; for gRPC, one whose body is a single
// message (a unary call), never a stream that has sent messages.
func (p *retryPolicy) replayable(req *http.Request) *replay {
	if p == nil {
		return nil
	}
	if req.Body == nil || req.Body == http.NoBody {
		return &replay{eof: true}
	}
	rp := &replay{src: req.Body, limit: p.limit, grpc: isGRPC(req)}
	if req.ContentLength > int64(p.limit) {
		rp.overflow = true // too large to keep: streamed once, never retried
	}
	rp.cur = &replayReader{r: rp}
	req.Body = rp.cur
	return rp
}

// replay keeps what the attempts have read of the app's request body, so a
// retry can send it again while the body streams to the first attempt.
type replay struct {
	mu       sync.Mutex
	src      io.ReadCloser
	buf      []byte
	limit    int
	overflow bool
	eof      bool
	grpc     bool
	cur      *replayReader
}

// rewind says whether the body can be sent again.
func (b *replay) rewind() bool {
	if b == nil {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.overflow {
		return false
	}
	if b.grpc && len(b.buf) > 0 && !(b.eof && grpcMessages(b.buf) == 1) {
		return false
	}
	return true
}

// next is the request for the next attempt: the previous attempt's reader
// is cut off (its transport may still hold it), a new one starts from the
// beginning, and the URL is the retry's own to address.
func (b *replay) next(req *http.Request) *http.Request {
	r := req.WithContext(req.Context())
	u := *req.URL
	r.URL = &u
	if b.src == nil {
		return r
	}
	b.mu.Lock()
	b.cur.closed = true
	b.cur = &replayReader{r: b}
	r.Body = b.cur
	b.mu.Unlock()
	return r
}

var errReplayClosed = errors.New("request body taken over by a retry")

// replayReader is one attempt's view of the request body.
type replayReader struct {
	r      *replay
	off    int
	closed bool
}

func (rr *replayReader) Read(p []byte) (int, error) {
	b := rr.r
	b.mu.Lock()
	defer b.mu.Unlock()
	if rr.closed {
		return 0, errReplayClosed
	}
	if rr.off < len(b.buf) {
		n := copy(p, b.buf[rr.off:])
		rr.off += n
		return n, nil
	}
	if b.eof {
		return 0, io.EOF
	}
	n, err := b.src.Read(p)
	if n > 0 {
		if !b.overflow && len(b.buf)+n <= b.limit {
			b.buf = append(b.buf, p[:n]...)
		} else {
			b.overflow, b.buf = true, nil
		}
		rr.off += n
	}
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

func (rr *replayReader) Close() error { return nil } // the app's body is the server's to close

// Ready says whether a Read would not wait: what is kept is left to
// replay, or the end, or the app's body can tell it has more.
func (rr *replayReader) Ready() bool {
	b := rr.r
	b.mu.Lock()
	defer b.mu.Unlock()
	if rr.closed {
		return false
	}
	return rr.off < len(b.buf) || b.eof || ready(b.src)
}

// grpcMessages counts the length-prefixed messages in a gRPC request body.
func grpcMessages(b []byte) int {
	n := 0
	for len(b) >= 5 {
		size := int(binary.BigEndian.Uint32(b[1:5]))
		if size > len(b)-5 {
			return n + 1 // a message still arriving
		}
		b = b[5+size:]
		n++
	}
	if len(b) > 0 {
		n++
	}
	return n
}
