package proxy

import (
	"net/http"
	"strconv"
	"sync/atomic"
	"time"
)

// Deadline headers. grpc-timeout is gRPC's own; x-request-timeout carries the
// same for plain HTTP: a Go duration ("250ms", "1.5s") or a bare number of
// seconds. The sidecar writes the time left as milliseconds ("287ms").
const (
	headerGRPCTimeout    = "Grpc-Timeout"
	headerRequestTimeout = "X-Request-Timeout"
)

// callerTimeout is the time the caller gave the request, if it said.
// A malformed value is ignored (the upstream's own timeout still applies):
// refusing the request would turn a client's harmless mistake into an outage.
func callerTimeout(r *http.Request, grpc bool) (time.Duration, bool) {
	if grpc {
		if v := r.Header.Get(headerGRPCTimeout); v != "" {
			return parseGRPCTimeout(v)
		}
		return 0, false
	}
	return requestTimeout(r.Header.Get(headerRequestTimeout))
}

// requestTimeout reads an X-Request-Timeout value ("" for none).
func requestTimeout(v string) (time.Duration, bool) {
	if v == "" {
		return 0, false
	}
	if d, err := time.ParseDuration(v); err == nil && d > 0 {
		return d, true
	}
	if secs, err := strconv.ParseFloat(v, 64); err == nil && secs > 0 && secs < 1e9 {
		return time.Duration(secs * float64(time.Second)), true
	}
	return 0, false
}

// parseGRPCTimeout reads "TimeoutValue TimeoutUnit": at most 8 digits and one
// of H M S m u n.
func parseGRPCTimeout(v string) (time.Duration, bool) {
	if len(v) < 2 || len(v) > 9 {
		return 0, false
	}
	n, err := strconv.ParseInt(v[:len(v)-1], 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	var unit time.Duration
	switch v[len(v)-1] {
	case 'H':
		unit = time.Hour
	case 'M':
		unit = time.Minute
	case 'S':
		unit = time.Second
	case 'm':
		unit = time.Millisecond
	case 'u':
		unit = time.Microsecond
	case 'n':
		unit = time.Nanosecond
	default:
		return 0, false
	}
	return time.Duration(n) * unit, true
}

// formatGRPCTimeout writes d in the finest unit that fits gRPC's 8 digits,
// rounding down so the upstream never gets more time than is left.
func formatGRPCTimeout(d time.Duration) string {
	if d <= 0 {
		return "0n"
	}
	const maxValue = 99999999
	units := [...]struct {
		d time.Duration
		c byte
	}{{time.Nanosecond, 'n'}, {time.Microsecond, 'u'}, {time.Millisecond, 'm'}, {time.Second, 'S'}, {time.Minute, 'M'}, {time.Hour, 'H'}}
	for _, u := range units {
		if v := d / u.d; v <= maxValue {
			return strconv.FormatInt(int64(v), 10) + string(u.c)
		}
	}
	return "99999999H"
}

// propagateDeadline tells the upstream how much time is left. The header
// names are canonical already, so the map is written directly. The value is
// a new slice, never written into: an HTTP/1.1 value may be last's, which
// other requests share.
func propagateDeadline(h http.Header, grpc bool, left time.Duration, last *atomic.Pointer[deadlineField]) {
	if grpc {
		h[headerGRPCTimeout] = []string{formatGRPCTimeout(left)}
		return
	}
	h[headerRequestTimeout] = requestTimeoutValue(left, last)
}

// requestTimeoutValue is the X-Request-Timeout value for the time left.
func requestTimeoutValue(left time.Duration, last *atomic.Pointer[deadlineField]) []string {
	ms := max(left.Milliseconds(), 0)
	if f := last.Load(); f != nil && f.ms == ms {
		return f.value
	}
	var buf [24]byte
	f := &deadlineField{ms: ms, value: []string{string(append(strconv.AppendInt(buf[:0], ms, 10), 'm', 's'))}}
	last.Store(f)
	return f.value
}

// deadlineField is the X-Request-Timeout value last sent by a compartment.
// Under load most requests to an upstream leave within the same
// millisecond of their deadline, so they share it instead of formatting
// and allocating their own (two allocations per request).
type deadlineField struct {
	ms    int64
	value []string
}
