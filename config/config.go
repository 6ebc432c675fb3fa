// Package config is the sidecar's configuration model: the YAML schema of
// DESIGN.md, its defaults and its validation. xDS translates into the same
// model, so everything downstream of this package sees one shape.
package config

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"

	"go.yaml.in/yaml/v3"
)

// Config is one complete, immutable configuration of the sidecar.
type Config struct {
	Admin Admin `yaml:"admin" json:"admin"`
	// Budget is the pod's number of concurrent upstream requests, shared by
	// weight among the upstreams' pools.
	Budget int `yaml:"budget" json:"budget"`
	// UnknownHosts says what happens to a request for a host no upstream
	// claims: "reject" (404 no_route) or "passthrough" (forwarded untouched).
	UnknownHosts string `yaml:"unknownHosts" json:"unknownHosts"`
	// Isolation is "per-upstream" (the default: a pool per upstream) or
	// "shared" (one pool of the whole budget for every upstream). Shared exists
	// to show, in the demo and the benchmarks, what compartments prevent.
	Isolation string `yaml:"isolation,omitempty" json:"isolation,omitempty"`
	// PassthroughConnections bounds the connections a transparent listener
	// passes through untouched to any one destination (unknownHosts:
	// passthrough), so an app cannot exhaust the sidecar through it.
	PassthroughConnections int        `yaml:"passthroughConnections,omitempty" json:"passthroughConnections,omitempty"`
	Listeners              []Listener `yaml:"listeners" json:"listeners"`
	Upstreams              []Upstream `yaml:"upstreams" json:"upstreams"`
	// Composites are composite calls the sidecar answers itself by calling
	// several upstreams (docs/composite.md).
	Composites []Composite `yaml:"composites,omitempty" json:"composites,omitempty"`
}

// Admin is the admin HTTP server (/metrics /ready /healthz /config_dump).
type Admin struct {
	Address string `yaml:"address" json:"address"`
}

// Listener modes.
const (
	ModeUpstream    = "upstream"
	ModeProxy       = "proxy"
	ModeTransparent = "transparent"
)

// Listener is one port the app sends requests to.
type Listener struct {
	Name    string `yaml:"name" json:"name"`
	Address string `yaml:"address" json:"address"`
	Mode    string `yaml:"mode" json:"mode"`
	// Upstream is the target of every request in mode "upstream".
	Upstream string `yaml:"upstream,omitempty" json:"upstream,omitempty"`
	// AccessLog, when set, writes one JSON line per request to stdout.
	AccessLog *AccessLog `yaml:"accessLog,omitempty" json:"accessLog,omitempty"`
}

// AccessLog of a listener.
type AccessLog struct {
	// Sample is the share of requests logged, from 0 to 1 (default 1).
	Sample float64 `yaml:"sample,omitempty" json:"sample,omitempty"`
}

// Upstream protocols.
const (
	ProtocolHTTP1 = "http1"
	ProtocolHTTP2 = "http2"
	ProtocolAuto  = "auto"
)

// Load-balancing policies.
const (
	LBRoundRobin   = "round_robin"
	LBLeastRequest = "least_request"
	LBRandom       = "random"
)

// Upstream is one dependency of the app and everything its compartment owns.
type Upstream struct {
	Name  string   `yaml:"name" json:"name"`
	Hosts []string `yaml:"hosts,omitempty" json:"hosts,omitempty"`
	// Addresses are the IP:port the app dials for this upstream besides its
	// endpoints (its Service's cluster IP): a transparent listener maps a
	// redirected connection's original destination to the upstream by them.
	Addresses []string `yaml:"addresses,omitempty" json:"addresses,omitempty"`
	// Protocol to the endpoints: http1, http2 (h2c with prior knowledge, or
	// h2 over TLS) or auto (the protocol the app used; gRPC always HTTP/2).
	Protocol string `yaml:"protocol" json:"protocol"`
	TLS      *TLS   `yaml:"tls,omitempty" json:"tls,omitempty"`
	// HTTP2 tunes the HTTP/2 connections to the endpoints.
	HTTP2        *HTTP2     `yaml:"http2,omitempty" json:"http2,omitempty"`
	Endpoints    []Endpoint `yaml:"endpoints" json:"endpoints"`
	LoadBalancer string     `yaml:"loadBalancer" json:"loadBalancer"`
	Bulkhead     Bulkhead   `yaml:"bulkhead" json:"bulkhead"`
	Timeout      Duration   `yaml:"timeout" json:"timeout"`
	// FailureStatuses are the HTTP statuses that count as the upstream's
	// failures for the breaker, outlier detection and metrics (default:
	// every 5xx). Others, 4xx above all, are business answers.
	FailureStatuses  []int             `yaml:"failureStatuses,omitempty" json:"failureStatuses,omitempty"`
	Retry            *Retry            `yaml:"retry,omitempty" json:"retry,omitempty"`
	Hedge            *Hedge            `yaml:"hedge,omitempty" json:"hedge,omitempty"`
	CircuitBreaker   *CircuitBreaker   `yaml:"circuitBreaker,omitempty" json:"circuitBreaker,omitempty"`
	Warmup           Duration          `yaml:"warmup,omitempty" json:"warmup,omitempty"`
	OutlierDetection *OutlierDetection `yaml:"outlierDetection,omitempty" json:"outlierDetection,omitempty"`
	RateLimit        *RateLimit        `yaml:"rateLimit,omitempty" json:"rateLimit,omitempty"`
	Fallback         Fallbacks         `yaml:"fallback,omitempty" json:"fallback,omitempty"`
}

// HTTP2 is an upstream's HTTP/2 connection settings (Envoy's
// http2_protocol_options for a cluster).
type HTTP2 struct {
	// MaxConcurrentStreams caps the streams the sidecar opens on one
	// connection to an endpoint; past it, it opens another connection.
	// 0: as many as the endpoint allows (its SETTINGS_MAX_CONCURRENT_STREAMS).
	MaxConcurrentStreams int `yaml:"maxConcurrentStreams,omitempty" json:"maxConcurrentStreams,omitempty"`
}

// MaxHTTP2Streams is the largest HTTP/2 stream cap (RFC 9113's 2^31-1
// stream identifiers, Envoy's bound on max_concurrent_streams).
const MaxHTTP2Streams = 1<<31 - 1

// TLS to the endpoints.
type TLS struct {
	SNI    string `yaml:"sni,omitempty" json:"sni,omitempty"`
	CAFile string `yaml:"caFile,omitempty" json:"caFile,omitempty"`
}

// Endpoint is one address of an upstream. In YAML it is either a plain
// "host:port" or {address: host:port, weight: N}.
type Endpoint struct {
	Address string `yaml:"address" json:"address"`
	// Weight for load balancing; 0 means 1.
	Weight int `yaml:"weight,omitempty" json:"weight,omitempty"`
}

// UnmarshalYAML accepts the short scalar form as well as the mapping.
func (e *Endpoint) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		*e = Endpoint{Address: n.Value}
		return nil
	}
	type plain Endpoint // no UnmarshalYAML, so no recursion
	var p plain
	if err := decodeStrict(n, &p); err != nil {
		return err
	}
	*e = Endpoint(p)
	return nil
}

// Bulkhead sizes the upstream's concurrency pool and queue.
type Bulkhead struct {
	// Weight shares the budget left after explicit caps among the upstreams
	// that have no MaxConcurrent.
	Weight int `yaml:"weight" json:"weight"`
	// MaxConcurrent, when > 0, is this upstream's limit exactly, taken out of
	// the budget before the weighted split.
	MaxConcurrent int `yaml:"maxConcurrent" json:"maxConcurrent"`
	MinConcurrent int `yaml:"minConcurrent" json:"minConcurrent"`
	// MaxQueue bounds the FIFO of requests waiting for a slot (0: refuse at once).
	MaxQueue int `yaml:"maxQueue" json:"maxQueue"`
	// MaxWait bounds the time in that queue (default: the upstream's timeout).
	MaxWait Duration `yaml:"maxWait" json:"maxWait"`
}

// Retry re-sends a request that failed in a way worth another try.
type Retry struct {
	// Attempts is how many times a request may be retried after its first
	// attempt (Envoy's num_retries); 0 disables retries.
	Attempts      int      `yaml:"attempts" json:"attempts"`
	PerTryTimeout Duration `yaml:"perTryTimeout,omitempty" json:"perTryTimeout,omitempty"`
	// On lists the conditions to retry on: connect-failure, reset,
	// refused-stream, timeout (a per-try timeout), 5xx, gateway-error, HTTP
	// statuses such as "503", and gRPC statuses by Envoy's names
	// (unavailable, resource-exhausted, internal, deadline-exceeded, cancelled).
	On []string `yaml:"on,omitempty" json:"on,omitempty"`
	// Budget caps retries in flight at this share of the requests in flight
	// (at least 3), so retries cannot multiply load during an outage.
	Budget float64 `yaml:"budget,omitempty" json:"budget,omitempty"`
	// BufferLimit is how much of a request body the sidecar keeps to be able
	// to send it again (bytes). Larger bodies are streamed and not retried.
	BufferLimit int     `yaml:"bufferLimit,omitempty" json:"bufferLimit,omitempty"`
	Backoff     Backoff `yaml:"backoff,omitempty" json:"backoff,omitempty"`
}

// Hedge sends a second attempt of an idempotent request that has had no
// answer for Delay (or, with Percentile, for that percentile of the
// upstream's recent latency); the first good answer wins and the other
// attempt is cancelled. Hedges spend the retry budget.
type Hedge struct {
	Delay Duration `yaml:"delay,omitempty" json:"delay,omitempty"`
	// Percentile (e.g. 95): hedge after the upstream's observed latency at
	// this percentile, Delay being the floor (and the delay until enough
	// answers have been seen).
	Percentile float64 `yaml:"percentile,omitempty" json:"percentile,omitempty"`
	// MaxHedges is how many extra attempts one request may have (default 1).
	MaxHedges int `yaml:"maxHedges,omitempty" json:"maxHedges,omitempty"`
}

// Backoff between retries: exponential from Base, capped at Max, jittered.
type Backoff struct {
	Base Duration `yaml:"base,omitempty" json:"base,omitempty"`
	Max  Duration `yaml:"max,omitempty" json:"max,omitempty"`
}

// CircuitBreaker stops calling an upstream that is failing or slow.
type CircuitBreaker struct {
	// FailureRate opens the breaker when this share of the requests in the
	// last Window failed, once there were at least MinRequests.
	FailureRate float64 `yaml:"failureRate,omitempty" json:"failureRate,omitempty"`
	MinRequests int     `yaml:"minRequests,omitempty" json:"minRequests,omitempty"`
	// ConsecutiveFailures opens the breaker after this many failures in a row.
	ConsecutiveFailures int      `yaml:"consecutiveFailures,omitempty" json:"consecutiveFailures,omitempty"`
	Window              Duration `yaml:"window,omitempty" json:"window,omitempty"`
	OpenFor             Duration `yaml:"openFor,omitempty" json:"openFor,omitempty"`
	HalfOpenRequests    int      `yaml:"halfOpenRequests,omitempty" json:"halfOpenRequests,omitempty"`
	// SlowCall and SlowCallRate open the breaker when this share of the
	// requests in the window took SlowCall or longer, even if they succeeded.
	SlowCall     Duration `yaml:"slowCall,omitempty" json:"slowCall,omitempty"`
	SlowCallRate float64  `yaml:"slowCallRate,omitempty" json:"slowCallRate,omitempty"`
}

// OutlierDetection ejects endpoints that fail in a row.
type OutlierDetection struct {
	ConsecutiveFailures int `yaml:"consecutiveFailures,omitempty" json:"consecutiveFailures,omitempty"`
	// Interval: each interval an endpoint spends in service takes one off its
	// ejection count, so a long-healthy endpoint is ejected briefly again.
	Interval         Duration `yaml:"interval,omitempty" json:"interval,omitempty"`
	BaseEjectionTime Duration `yaml:"baseEjectionTime,omitempty" json:"baseEjectionTime,omitempty"`
	MaxEjectionTime  Duration `yaml:"maxEjectionTime,omitempty" json:"maxEjectionTime,omitempty"`
	// MaxEjectionPercent bounds the share of endpoints ejected at once (at
	// least one may always be ejected, as in Envoy).
	MaxEjectionPercent int `yaml:"maxEjectionPercent,omitempty" json:"maxEjectionPercent,omitempty"`
}

// RateLimit is a token bucket: RPS tokens a second, at most Burst saved up.
type RateLimit struct {
	RPS   float64 `yaml:"rps" json:"rps"`
	Burst int     `yaml:"burst,omitempty" json:"burst,omitempty"`
}

// Fallback is what the sidecar answers instead of a local reply for the
// causes in On. An upstream has one or several (one per set of causes); in
// YAML a single mapping or a list.
type Fallback struct {
	On []string `yaml:"on" json:"on"`
	// For HTTP requests (status 200 when only a body or headers are given).
	Status  int               `yaml:"status,omitempty" json:"status,omitempty"`
	Headers map[string]string `yaml:"headers,omitempty" json:"headers,omitempty"`
	Body    string            `yaml:"body,omitempty" json:"body,omitempty"`
	// For gRPC requests: a status (name such as "UNAVAILABLE", or number)
	// and message; or, with GRPCBody (base64 of a serialized protobuf
	// message), an OK answer carrying that message.
	GRPCStatus  string `yaml:"grpcStatus,omitempty" json:"grpcStatus,omitempty"`
	GRPCMessage string `yaml:"grpcMessage,omitempty" json:"grpcMessage,omitempty"`
	GRPCBody    string `yaml:"grpcBody,omitempty" json:"grpcBody,omitempty"`
}

// Fallbacks are an upstream's fallbacks.
type Fallbacks []Fallback

// UnmarshalYAML accepts one mapping as well as a list.
func (f *Fallbacks) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.MappingNode {
		var one Fallback
		if err := n.Decode(&one); err != nil {
			return err
		}
		*f = Fallbacks{one}
		return nil
	}
	var many []Fallback
	if err := n.Decode(&many); err != nil {
		return err
	}
	*f = many
	return nil
}

// UnmarshalJSON accepts one object as well as an array.
func (f *Fallbacks) UnmarshalJSON(b []byte) error {
	if t := bytes.TrimSpace(b); len(t) > 0 && t[0] == '{' {
		var one Fallback
		if err := json.Unmarshal(t, &one); err != nil {
			return err
		}
		*f = Fallbacks{one}
		return nil
	}
	var many []Fallback
	if err := json.Unmarshal(b, &many); err != nil {
		return err
	}
	*f = many
	return nil
}

// For returns the fallback for a cause, or nil.
func (f Fallbacks) For(cause string) *Fallback {
	for i := range f {
		if slices.Contains(f[i].On, cause) {
			return &f[i]
		}
	}
	return nil
}

// Upstream returns the upstream named name, or nil.
func (c *Config) Upstream(name string) *Upstream {
	for i := range c.Upstreams {
		if c.Upstreams[i].Name == name {
			return &c.Upstreams[i]
		}
	}
	return nil
}

// String is for logs.
func (l Listener) String() string { return fmt.Sprintf("%s(%s %s)", l.Name, l.Mode, l.Address) }
