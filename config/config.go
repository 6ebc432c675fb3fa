// Package config is the sidecar's configuration model: the YAML schema of
// DESIGN.md, its defaults and its validation. xDS translates into the same
// model, so everything downstream of this package sees one shape.
package config

import (
	"fmt"

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
	Isolation string     `yaml:"isolation,omitempty" json:"isolation,omitempty"`
	Listeners []Listener `yaml:"listeners" json:"listeners"`
	Upstreams []Upstream `yaml:"upstreams" json:"upstreams"`
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
	// Protocol to the endpoints: http1, http2 (h2c with prior knowledge, or
	// h2 over TLS) or auto (the protocol the app used; gRPC always HTTP/2).
	Protocol         string            `yaml:"protocol" json:"protocol"`
	TLS              *TLS              `yaml:"tls,omitempty" json:"tls,omitempty"`
	Endpoints        []Endpoint        `yaml:"endpoints" json:"endpoints"`
	LoadBalancer     string            `yaml:"loadBalancer" json:"loadBalancer"`
	Bulkhead         Bulkhead          `yaml:"bulkhead" json:"bulkhead"`
	Timeout          Duration          `yaml:"timeout" json:"timeout"`
	Retry            *Retry            `yaml:"retry,omitempty" json:"retry,omitempty"`
	CircuitBreaker   *CircuitBreaker   `yaml:"circuitBreaker,omitempty" json:"circuitBreaker,omitempty"`
	Warmup           Duration          `yaml:"warmup,omitempty" json:"warmup,omitempty"`
	OutlierDetection *OutlierDetection `yaml:"outlierDetection,omitempty" json:"outlierDetection,omitempty"`
	RateLimit        *RateLimit        `yaml:"rateLimit,omitempty" json:"rateLimit,omitempty"`
	Fallback         *Fallback         `yaml:"fallback,omitempty" json:"fallback,omitempty"`
}

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

// Retry policy (enforced by the resilience policies).
type Retry struct {
	Attempts      int      `yaml:"attempts" json:"attempts"`
	PerTryTimeout Duration `yaml:"perTryTimeout,omitempty" json:"perTryTimeout,omitempty"`
	On            []string `yaml:"on,omitempty" json:"on,omitempty"`
	Budget        float64  `yaml:"budget,omitempty" json:"budget,omitempty"`
}

// CircuitBreaker policy (enforced by the resilience policies).
type CircuitBreaker struct {
	FailureRate         float64  `yaml:"failureRate,omitempty" json:"failureRate,omitempty"`
	MinRequests         int      `yaml:"minRequests,omitempty" json:"minRequests,omitempty"`
	ConsecutiveFailures int      `yaml:"consecutiveFailures,omitempty" json:"consecutiveFailures,omitempty"`
	Window              Duration `yaml:"window,omitempty" json:"window,omitempty"`
	OpenFor             Duration `yaml:"openFor,omitempty" json:"openFor,omitempty"`
	HalfOpenRequests    int      `yaml:"halfOpenRequests,omitempty" json:"halfOpenRequests,omitempty"`
	SlowCall            Duration `yaml:"slowCall,omitempty" json:"slowCall,omitempty"`
	SlowCallRate        float64  `yaml:"slowCallRate,omitempty" json:"slowCallRate,omitempty"`
}

// OutlierDetection ejects failing endpoints (enforced by the resilience policies).
type OutlierDetection struct {
	ConsecutiveFailures int      `yaml:"consecutiveFailures,omitempty" json:"consecutiveFailures,omitempty"`
	Interval            Duration `yaml:"interval,omitempty" json:"interval,omitempty"`
	BaseEjectionTime    Duration `yaml:"baseEjectionTime,omitempty" json:"baseEjectionTime,omitempty"`
	MaxEjectionPercent  int      `yaml:"maxEjectionPercent,omitempty" json:"maxEjectionPercent,omitempty"`
}

// RateLimit is a token bucket (enforced by the resilience policies).
type RateLimit struct {
	RPS   float64 `yaml:"rps" json:"rps"`
	Burst int     `yaml:"burst,omitempty" json:"burst,omitempty"`
}

// Fallback replaces local replies for the listed causes (enforced by the
// resilience policies).
type Fallback struct {
	On      []string          `yaml:"on" json:"on"`
	Status  int               `yaml:"status,omitempty" json:"status,omitempty"`
	Headers map[string]string `yaml:"headers,omitempty" json:"headers,omitempty"`
	Body    string            `yaml:"body,omitempty" json:"body,omitempty"`
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
