package proxy

import (
	"net/http"
	"strconv"

	"github.com/watertight/watertight/metrics"
)

// Headers the sidecar adds to its own replies.
const (
	HeaderReason   = "X-Watertight-Reason"
	HeaderFallback = "X-Watertight-Fallback"
)

// gRPC status codes used by local replies.
const (
	grpcDeadlineExceeded  = 4
	grpcResourceExhausted = 8
	grpcUnimplemented     = 12
	grpcUnavailable       = 14
)

// reason is one row of DESIGN.md's local-reply table.
type reason struct {
	name     string // x-watertight-reason
	status   int    // HTTP status
	grpcCode int    // grpc-status, in an HTTP 200 trailers-only answer
}

var (
	reasonBulkheadFull        = reason{"bulkhead_full", http.StatusServiceUnavailable, grpcUnavailable}
	reasonQueueTimeout        = reason{"queue_timeout", http.StatusServiceUnavailable, grpcUnavailable}
	reasonCircuitOpen         = reason{"circuit_open", http.StatusServiceUnavailable, grpcUnavailable}
	reasonRateLimited         = reason{"rate_limited", http.StatusTooManyRequests, grpcResourceExhausted}
	reasonTimeout             = reason{"timeout", http.StatusGatewayTimeout, grpcDeadlineExceeded}
	reasonUpstreamUnavailable = reason{"upstream_unavailable", http.StatusServiceUnavailable, grpcUnavailable}
	reasonNoRoute             = reason{"no_route", http.StatusNotFound, grpcUnimplemented}
	// Not in DESIGN.md's table: the upstream broke the exchange (reset,
	// protocol error) after the connection was made. 502, as HTTP says of a
	// bad answer from upstream; UNAVAILABLE, as grpc-go reports a reset.
	reasonUpstreamError = reason{"upstream_error", http.StatusBadGateway, grpcUnavailable}
	// The sidecar does not tunnel CONNECT: it is not an open proxy.
	reasonConnect = reason{"connect_unsupported", http.StatusMethodNotAllowed, grpcUnimplemented}
	// A passthrough request came back to the sidecar.
	reasonLoop = reason{"loop_detected", http.StatusLoopDetected, grpcUnavailable}
)

// reasonFor maps a compartment's result to its local reply.
var reasonFor = [...]reason{
	metrics.BulkheadFull:        reasonBulkheadFull,
	metrics.QueueTimeout:        reasonQueueTimeout,
	metrics.CircuitOpen:         reasonCircuitOpen,
	metrics.RateLimited:         reasonRateLimited,
	metrics.Timeout:             reasonTimeout,
	metrics.UpstreamUnavailable: reasonUpstreamUnavailable,
	metrics.UpstreamError:       reasonUpstreamError,
	metrics.Canceled:            reasonUpstreamError, // nobody is left to read it
	metrics.OK:                  reasonUpstreamError, // never used
}

// localReply is the error a compartment returns when the sidecar answers
// instead of the upstream; the ReverseProxy's ErrorHandler writes it.
type localReply struct {
	result   metrics.Result
	upstream string
	err      error
}

func (e *localReply) Error() string {
	return "upstream " + e.upstream + ": " + e.result.String() + ": " + e.err.Error()
}

func (e *localReply) Unwrap() error { return e.err }

// writeLocalReply answers r in the form its client understands: gRPC
// clients get HTTP 200 with the status in trailers-only headers, everyone
// else gets the HTTP status and a one-line text body.
func writeLocalReply(w http.ResponseWriter, r *http.Request, rs reason, msg string) {
	h := w.Header()
	h.Set(HeaderReason, rs.name)
	if isGRPC(r) {
		h.Set("Content-Type", "application/grpc")
		h.Set("Grpc-Status", strconv.Itoa(rs.grpcCode))
		h.Set("Grpc-Message", grpcEncodeMessage(msg))
		w.WriteHeader(http.StatusOK)
		return
	}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(rs.status)
	_, _ = w.Write([]byte(msg + "\n"))
}

// grpcEncodeMessage percent-encodes a grpc-message as the gRPC HTTP/2
// protocol says: printable ASCII except '%' as is, every other byte as %XX.
func grpcEncodeMessage(s string) string {
	const hex = "0123456789ABCDEF"
	var b []byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c <= 0x7e && c != '%' {
			if b != nil {
				b = append(b, c)
			}
			continue
		}
		if b == nil {
			b = append(make([]byte, 0, len(s)+8), s[:i]...)
		}
		b = append(b, '%', hex[c>>4], hex[c&15])
	}
	if b == nil {
		return s
	}
	return string(b)
}

// isGRPC says whether the request is gRPC (over HTTP/2, any codec).
func isGRPC(r *http.Request) bool { return isGRPCType(r.Header.Get("Content-Type")) }

// isGRPCType is isGRPC for a Content-Type value.
func isGRPCType(ct string) bool {
	return len(ct) >= 16 && ct[:16] == "application/grpc" && (len(ct) == 16 || ct[16] == '+' || ct[16] == ';')
}
