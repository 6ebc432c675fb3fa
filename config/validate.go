package config

import (
	"encoding/base64"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// FieldError is one problem in a config, at a field path such as
// "upstreams[1].bulkhead.maxWait".
type FieldError struct {
	Path string
	Msg  string
}

func (e *FieldError) Error() string {
	if e.Path == "" {
		return e.Msg
	}
	return e.Path + ": " + e.Msg
}

// ValidationError lists every problem found in one config.
type ValidationError struct {
	Errors []*FieldError
}

func (e *ValidationError) Error() string {
	msgs := make([]string, len(e.Errors))
	for i, fe := range e.Errors {
		msgs[i] = fe.Error()
	}
	return "invalid config: " + strings.Join(msgs, "; ")
}

// Unwrap lets errors.As find each FieldError.
func (e *ValidationError) Unwrap() []error {
	errs := make([]error, len(e.Errors))
	for i, fe := range e.Errors {
		errs[i] = fe
	}
	return errs
}

type validator struct{ errs []*FieldError }

func (v *validator) add(path, format string, args ...any) {
	v.errs = append(v.errs, &FieldError{Path: path, Msg: fmt.Sprintf(format, args...)})
}

// name checks the name of item i of list, at path p: present, allowed by
// valid (nil: any name, else rule says what is allowed), and not the name
// of an earlier item, which seen remembers.
func (v *validator) name(seen map[string]int, list string, i int, p, name string, valid func(string) bool, rule string) {
	switch {
	case name == "":
		v.add(p+".name", "is required")
	case valid != nil && !valid(name):
		v.add(p+".name", "%q %s", name, rule)
	case seen[name] > 0:
		v.add(p+".name", "%q is also the name of %s[%d]", name, list, seen[name]-1)
	default:
		seen[name] = i + 1
	}
}

// nameRule is what validName allows, for messages.
const nameRule = "may hold only letters, digits, '.', '_' and '-'"

func (v *validator) err() error {
	if len(v.errs) == 0 {
		return nil
	}
	return &ValidationError{Errors: v.errs}
}

// Causes a fallback can replace (the local replies an upstream can cause).
var FallbackCauses = []string{
	"bulkhead_full", "queue_timeout", "circuit_open", "rate_limited",
	"timeout", "upstream_error", "upstream_unavailable",
}

// Retry conditions besides HTTP status codes (as Envoy's retry_on names them).
var retryConditions = []string{
	"connect-failure", "reset", "timeout", "refused-stream", "5xx", "gateway-error",
	"cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
}

// Validate checks a config that has had its defaults set.
func (c *Config) Validate() error {
	v := &validator{}
	if _, _, err := splitListenAddr(c.Admin.Address); err != nil {
		v.add("admin.address", "%q %v", c.Admin.Address, err)
	}
	if c.Budget < 1 {
		v.add("budget", "%d must be at least 1", c.Budget)
	}
	oneOf(v, "unknownHosts", c.UnknownHosts, UnknownHostsReject, UnknownHostsPass)
	oneOf(v, "isolation", c.Isolation, IsolationPerUpstream, IsolationShared)
	atLeast(v, "passthroughConnections", c.PassthroughConnections, 1)
	c.validateListeners(v)
	c.validateUpstreams(v)
	c.validateComposites(v)
	return v.err()
}

func (c *Config) validateListeners(v *validator) {
	names := map[string]int{}
	addrs := map[string]int{}
	for i, l := range c.Listeners {
		p := fmt.Sprintf("listeners[%d]", i)
		v.name(names, "listeners", i, p, l.Name, nil, "")
		if _, _, err := splitListenAddr(l.Address); err != nil {
			v.add(p+".address", "%q %v", l.Address, err)
		} else if j := addrs[l.Address]; j > 0 {
			v.add(p+".address", "%q is also the address of listeners[%d]", l.Address, j-1)
		} else {
			addrs[l.Address] = i + 1
		}
		if l.AccessLog != nil {
			ratio(v, p+".accessLog.sample", l.AccessLog.Sample)
		}
		switch l.Mode {
		case ModeUpstream:
			if l.Upstream == "" {
				v.add(p+".upstream", "is required in mode %q", ModeUpstream)
			} else if c.Upstream(l.Upstream) == nil {
				v.add(p+".upstream", "%q is not the name of any upstream", l.Upstream)
			}
		case ModeProxy:
			if l.Upstream != "" {
				v.add(p+".upstream", "%q is only allowed in mode %q (mode %q routes by Host)", l.Upstream, ModeUpstream, l.Mode)
			}
		case ModeTransparent:
			if l.Upstream != "" {
				v.add(p+".upstream", "%q is only allowed in mode %q (mode %q maps the original destination)", l.Upstream, ModeUpstream, l.Mode)
			}
		default:
			v.add(p+".mode", "%q is not one of %s, %s, %s", l.Mode, ModeUpstream, ModeProxy, ModeTransparent)
		}
	}
}

func (c *Config) validateUpstreams(v *validator) {
	names := map[string]int{}
	hosts := map[string]string{} // host → path of the first claim
	capped := 0
	for i := range c.Upstreams {
		u := &c.Upstreams[i]
		p := fmt.Sprintf("upstreams[%d]", i)
		v.name(names, "upstreams", i, p, u.Name, validName, nameRule)
		for j, h := range u.Hosts {
			hp := fmt.Sprintf("%s.hosts[%d]", p, j)
			key, err := HostKey(h)
			if err != nil {
				v.add(hp, "%q %v", h, err)
				continue
			}
			if prev, ok := hosts[key]; ok {
				v.add(hp, "%q is already claimed by %s", h, prev)
				continue
			}
			hosts[key] = hp
		}
		for j, a := range u.Addresses {
			if _, err := netip.ParseAddrPort(a); err != nil {
				v.add(fmt.Sprintf("%s.addresses[%d]", p, j), "%q is not an IP:port (the address the app dials, such as a Service's cluster IP)", a)
			}
		}
		oneOf(v, p+".protocol", u.Protocol, ProtocolHTTP1, ProtocolHTTP2, ProtocolAuto)
		u.validateHTTP2(v, p)
		// No endpoints is allowed: EDS sends none during a rollout or a scale
		// to zero, and the sidecar answers 503 upstream_unavailable itself.
		seenEP := map[string]int{}
		for j, e := range u.Endpoints {
			ep := fmt.Sprintf("%s.endpoints[%d]", p, j)
			if h, _, err := splitHostPort(e.Address); err != nil {
				v.add(ep, "%q %v", e.Address, err)
			} else if h == "" {
				v.add(ep, "%q needs a host", e.Address)
			}
			if e.Weight < 0 {
				v.add(ep+".weight", "%d must not be negative", e.Weight)
			}
			if k := seenEP[e.Address]; k > 0 {
				v.add(ep, "%q is also %s.endpoints[%d]", e.Address, p, k-1)
			} else {
				seenEP[e.Address] = j + 1
			}
		}
		oneOf(v, p+".loadBalancer", u.LoadBalancer, LBRoundRobin, LBLeastRequest, LBRandom)
		u.Timeout.check(v, p+".timeout")
		for j, code := range u.FailureStatuses {
			if code < 400 || code > 599 {
				v.add(fmt.Sprintf("%s.failureStatuses[%d]", p, j), "%d is not a 4xx or 5xx status", code)
			}
		}
		u.Warmup.check(v, p+".warmup")
		b := u.Bulkhead
		bp := p + ".bulkhead"
		atLeast(v, bp+".weight", b.Weight, 1)
		atLeast(v, bp+".maxConcurrent", b.MaxConcurrent, 0)
		atLeast(v, bp+".minConcurrent", b.MinConcurrent, 0)
		atLeast(v, bp+".maxQueue", b.MaxQueue, 0)
		b.MaxWait.check(v, bp+".maxWait")
		if b.MaxConcurrent > 0 {
			capped += b.MaxConcurrent
		}
		u.validatePolicies(v, p)
	}
	if c.Isolation == IsolationPerUpstream && capped > c.Budget {
		v.add("upstreams", "the explicit bulkhead.maxConcurrent caps add up to %d, more than the budget of %d", capped, c.Budget)
	}
}

func (u *Upstream) validateHTTP2(v *validator, p string) {
	h := u.HTTP2
	if h == nil {
		return
	}
	hp := p + ".http2.maxConcurrentStreams"
	switch n := h.MaxConcurrentStreams; {
	case n < 0 || n > MaxHTTP2Streams:
		v.add(hp, "%d is not between 0 (the endpoint's own limit) and %d", n, MaxHTTP2Streams)
	case n == 0: // the endpoint's own limit, whatever the protocol
	case u.Protocol == ProtocolHTTP1:
		v.add(hp, "%d is set, but protocol is http1: no HTTP/2 connection is made", n)
	case u.TLS != nil:
		// net/http's HTTP/2 client, which TLS upstreams use, has no cap of
		// its own: refused rather than ignored.
		v.add(hp, "%d is set, but only cleartext (h2c) connections take a cap; over TLS the endpoint's own limit applies", n)
	}
}

func (u *Upstream) validatePolicies(v *validator, p string) {
	if r := u.Retry; r != nil {
		rp := p + ".retry"
		atLeast(v, rp+".attempts", r.Attempts, 0)
		r.PerTryTimeout.check(v, rp+".perTryTimeout")
		for j, cond := range r.On {
			if slices.Contains(retryConditions, cond) {
				continue
			}
			if code, err := strconv.Atoi(cond); err == nil && code >= 100 && code <= 599 {
				continue
			}
			v.add(fmt.Sprintf("%s.on[%d]", rp, j), "%q is not a retry condition (an HTTP status, or one of %s)", cond, strings.Join(retryConditions, ", "))
		}
		if r.Budget < 0 || r.Budget > 1 {
			v.add(rp+".budget", "%v must be between 0 and 1", r.Budget)
		}
		atLeast(v, rp+".bufferLimit", r.BufferLimit, 0)
		r.Backoff.Base.check(v, rp+".backoff.base")
		r.Backoff.Max.check(v, rp+".backoff.max")
		if r.Backoff.Max.Duration < r.Backoff.Base.Duration {
			v.add(rp+".backoff.max", "%q is less than backoff.base %q", r.Backoff.Max.String(), r.Backoff.Base.String())
		}
	}
	if h := u.Hedge; h != nil {
		hp := p + ".hedge"
		h.Delay.check(v, hp+".delay")
		if h.Percentile < 0 || h.Percentile >= 100 {
			v.add(hp+".percentile", "%v must be from 0 to below 100", h.Percentile)
		}
		if h.MaxHedges < 1 || h.MaxHedges > 3 {
			v.add(hp+".maxHedges", "%d must be from 1 to 3", h.MaxHedges)
		}
	}
	if cb := u.CircuitBreaker; cb != nil {
		cp := p + ".circuitBreaker"
		ratio(v, cp+".failureRate", cb.FailureRate)
		ratio(v, cp+".slowCallRate", cb.SlowCallRate)
		atLeast(v, cp+".minRequests", cb.MinRequests, 0)
		atLeast(v, cp+".consecutiveFailures", cb.ConsecutiveFailures, 0)
		atLeast(v, cp+".halfOpenRequests", cb.HalfOpenRequests, 0)
		cb.Window.check(v, cp+".window")
		cb.OpenFor.check(v, cp+".openFor")
		cb.SlowCall.check(v, cp+".slowCall")
	}
	if od := u.OutlierDetection; od != nil {
		op := p + ".outlierDetection"
		atLeast(v, op+".consecutiveFailures", od.ConsecutiveFailures, 0)
		od.Interval.check(v, op+".interval")
		od.BaseEjectionTime.check(v, op+".baseEjectionTime")
		od.MaxEjectionTime.check(v, op+".maxEjectionTime")
		if od.MaxEjectionPercent < 0 || od.MaxEjectionPercent > 100 {
			v.add(op+".maxEjectionPercent", "%d must be between 0 and 100", od.MaxEjectionPercent)
		}
	}
	if rl := u.RateLimit; rl != nil {
		if rl.RPS <= 0 {
			v.add(p+".rateLimit.rps", "%v must be more than 0", rl.RPS)
		}
		atLeast(v, p+".rateLimit.burst", rl.Burst, 0)
	}
	seen := map[string]string{}
	for i, fb := range u.Fallback {
		fp := p + ".fallback"
		if len(u.Fallback) > 1 {
			fp = fmt.Sprintf("%s.fallback[%d]", p, i)
		}
		if len(fb.On) == 0 {
			v.add(fp+".on", "name at least one cause (%s)", strings.Join(FallbackCauses, ", "))
		}
		for j, cause := range fb.On {
			cp := fmt.Sprintf("%s.on[%d]", fp, j)
			if !slices.Contains(FallbackCauses, cause) {
				v.add(cp, "%q is not one of %s", cause, strings.Join(FallbackCauses, ", "))
			} else if prev, ok := seen[cause]; ok {
				v.add(cp, "%q already has a fallback at %s", cause, prev)
			} else {
				seen[cause] = cp
			}
		}
		if fb.Status != 0 && (fb.Status < 100 || fb.Status > 599) {
			v.add(fp+".status", "%d is not an HTTP status", fb.Status)
		}
		for name, value := range fb.Headers {
			if !httpguts.ValidHeaderFieldName(name) {
				v.add(fp+".headers", "%q is not a valid header name", name)
			} else if !httpguts.ValidHeaderFieldValue(value) {
				v.add(fp+".headers."+name, "%q is not a valid header value", value)
			}
		}
		if fb.GRPCStatus != "" {
			if _, ok := GRPCCode(fb.GRPCStatus); !ok {
				v.add(fp+".grpcStatus", "%q is not a gRPC status (a name such as UNAVAILABLE, or 0 to 16)", fb.GRPCStatus)
			}
		}
		if fb.GRPCBody != "" {
			if _, err := base64.StdEncoding.DecodeString(fb.GRPCBody); err != nil {
				v.add(fp+".grpcBody", "is not base64: %v", err)
			}
		}
	}
}

// grpcCodes are gRPC's status codes by name.
var grpcCodes = []string{
	"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
	"ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
	"ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
	"UNAUTHENTICATED",
}

// GRPCCode reads a gRPC status given by name (any case, - or _) or number.
func GRPCCode(s string) (int, bool) {
	if n, err := strconv.Atoi(s); err == nil {
		return n, n >= 0 && n < len(grpcCodes)
	}
	name := strings.ToUpper(strings.ReplaceAll(s, "-", "_"))
	i := slices.Index(grpcCodes, name)
	return i, i >= 0
}

// HostKey is the form a host is matched in: lower case, no trailing dot,
// with its port if it has one. It rejects what cannot be a Host header.
func HostKey(h string) (string, error) {
	if h == "" {
		return "", fmt.Errorf("is empty")
	}
	if strings.ContainsAny(h, "*") {
		return "", fmt.Errorf("is a wildcard; hosts are matched exactly")
	}
	if strings.ContainsAny(h, "/ \t@?#") {
		return "", fmt.Errorf("is not a host name (no scheme, path or spaces)")
	}
	host, port := h, ""
	if hh, pp, err := net.SplitHostPort(h); err == nil {
		host, port = hh, pp
		if _, err := parsePort(port); err != nil {
			return "", err
		}
	}
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if host == "" {
		return "", fmt.Errorf("has no host name")
	}
	if port != "" {
		return net.JoinHostPort(host, port), nil
	}
	return host, nil
}

func splitHostPort(addr string) (string, int, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("is not host:port")
	}
	n, err := parsePort(port)
	return host, n, err
}

// splitListenAddr is splitHostPort for addresses to listen on, where port 0
// asks the kernel for a free port (tests and the demo use it).
func splitListenAddr(addr string) (string, int, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("is not host:port")
	}
	if port == "0" {
		return host, 0, nil
	}
	n, err := parsePort(port)
	return host, n, err
}

func parsePort(port string) (int, error) {
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("has port %q, not a number from 1 to 65535", port)
	}
	return n, nil
}

func validName(s string) bool {
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

func oneOf(v *validator, path, got string, allowed ...string) {
	if !slices.Contains(allowed, got) {
		v.add(path, "%q is not one of %s", got, strings.Join(allowed, ", "))
	}
}

func atLeast(v *validator, path string, got, min int) {
	if got < min {
		v.add(path, "%d must be at least %d", got, min)
	}
}

func ratio(v *validator, path string, got float64) {
	if got < 0 || got > 1 {
		v.add(path, "%v must be between 0 and 1", got)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
