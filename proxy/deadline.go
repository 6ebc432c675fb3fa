package proxy

import (
	"net/http"
	"strconv"
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
	v := r.Header.Get(headerRequestTimeout)
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
// names are canonical already, so the map is written directly; a value the
// caller sent is overwritten in place.
func propagateDeadline(h http.Header, grpc bool, left time.Duration) {
	key, value := headerRequestTimeout, ""
	if grpc {
		key, value = headerGRPCTimeout, formatGRPCTimeout(left)
	} else {
		var buf [24]byte
		value = string(append(strconv.AppendInt(buf[:0], max(left.Milliseconds(), 0), 10), 'm', 's'))
	}
	if v := h[key]; len(v) == 1 {
		v[0] = value
		return
	}
	h[key] = []string{value}
}
