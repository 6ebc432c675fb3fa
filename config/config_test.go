package config

import (
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestDesignExampleParses(t *testing.T) {
	c, err := Load("testdata/design.yaml")
	if err != nil {
		t.Fatal(err)
	}
	u := c.Upstream("inventory")
	if u == nil {
		t.Fatal("upstream inventory missing")
	}
	if u.Bulkhead.Weight != 5 || u.Bulkhead.MaxQueue != 64 || u.Bulkhead.MaxWait.Duration != 25*time.Millisecond {
		t.Errorf("bulkhead = %+v", u.Bulkhead)
	}
	if u.Timeout.Duration != 300*time.Millisecond || u.Retry.PerTryTimeout.Duration != 100*time.Millisecond {
		t.Errorf("timeout %v, perTryTimeout %v", u.Timeout, u.Retry.PerTryTimeout)
	}
	if len(u.Endpoints) != 2 || u.Endpoints[1].Address != "127.0.0.1:8082" || u.Endpoints[1].Weight != 1 {
		t.Errorf("endpoints = %+v", u.Endpoints)
	}
	if len(u.Fallback) != 1 || u.Fallback[0].Body != `{"items":[]}` || u.Fallback[0].Headers["content-type"] != "application/json" {
		t.Errorf("fallback = %+v", u.Fallback)
	}
	if c.Listeners[1].Upstream != "inventory" || c.Listeners[0].Mode != ModeProxy {
		t.Errorf("listeners = %+v", c.Listeners)
	}
}

const minimal = `
listeners: [{name: out, address: "127.0.0.1:15001"}]
upstreams: [{name: inv, endpoints: ["127.0.0.1:8081"]}]
`

func TestDefaults(t *testing.T) {
	c, err := Parse([]byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	if c.Admin.Address != "127.0.0.1:15000" || c.Budget != 1024 || c.UnknownHosts != "reject" || c.Isolation != "per-upstream" {
		t.Errorf("top-level defaults: %+v", c)
	}
	if c.Listeners[0].Mode != ModeProxy {
		t.Errorf("listener mode default = %q", c.Listeners[0].Mode)
	}
	u := c.Upstreams[0]
	if u.Protocol != "auto" || u.LoadBalancer != "least_request" || u.Timeout.Duration != 15*time.Second {
		t.Errorf("upstream defaults: %+v", u)
	}
	if u.Bulkhead.Weight != 1 || u.Bulkhead.MinConcurrent != 1 || u.Bulkhead.MaxQueue != 0 {
		t.Errorf("bulkhead defaults: %+v", u.Bulkhead)
	}
	if u.Bulkhead.MaxWait.Duration != u.Timeout.Duration {
		t.Errorf("maxWait default %v, want the timeout %v", u.Bulkhead.MaxWait, u.Timeout)
	}
	if len(u.Hosts) != 1 || u.Hosts[0] != "inv" {
		t.Errorf("hosts default to the name: %v", u.Hosts)
	}
	// A listener with an upstream defaults to mode upstream.
	c, err = Parse([]byte(`
listeners: [{name: l, address: "127.0.0.1:9001", upstream: inv}]
upstreams: [{name: inv, endpoints: ["127.0.0.1:8081"]}]`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Listeners[0].Mode != ModeUpstream {
		t.Errorf("mode with upstream set = %q", c.Listeners[0].Mode)
	}
	// "0s" is a timeout of none, not "use the default".
	c, err = Parse([]byte(`
listeners: [{name: l, address: "127.0.0.1:9001"}]
upstreams: [{name: inv, endpoints: ["127.0.0.1:8081"], timeout: 0s}]`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Upstreams[0].Timeout.Duration != 0 {
		t.Errorf("explicit 0s timeout became %v", c.Upstreams[0].Timeout)
	}
}

func TestPolicyDefaults(t *testing.T) {
	c, err := Parse([]byte(`
upstreams:
  - name: a
    endpoints: ["h:1"]
    retry: {attempts: 2}
    circuitBreaker: {}
    outlierDetection: {}
    rateLimit: {rps: 45}
    fallback: [{on: [timeout], body: "{}"}, {on: [bulkhead_full], grpcStatus: unavailable}]`))
	if err != nil {
		t.Fatal(err)
	}
	u := c.Upstreams[0]
	if r := u.Retry; r.Budget != 0.2 || r.BufferLimit != 64<<10 || r.Backoff.Base.Duration != 25*time.Millisecond || r.Backoff.Max.Duration != 250*time.Millisecond || len(r.On) == 0 {
		t.Errorf("retry defaults: %+v", r)
	}
	if cb := u.CircuitBreaker; cb.FailureRate != 0.5 || cb.MinRequests != 20 || cb.Window.Duration != 10*time.Second || cb.OpenFor.Duration != 5*time.Second || cb.HalfOpenRequests != 3 {
		t.Errorf("breaker defaults: %+v", cb)
	}
	if od := u.OutlierDetection; od.ConsecutiveFailures != 5 || od.BaseEjectionTime.Duration != 30*time.Second || od.MaxEjectionPercent != 10 || od.MaxEjectionTime.Duration != 300*time.Second {
		t.Errorf("outlier defaults: %+v", od)
	}
	if u.RateLimit.Burst != 5 {
		t.Errorf("rate limit burst default: %d, want a tenth of a second's worth (5)", u.RateLimit.Burst)
	}
	if f := u.Fallback.For("timeout"); f == nil || f.Body != "{}" {
		t.Errorf("fallback for timeout: %+v", f)
	}
	if f := u.Fallback.For("bulkhead_full"); f == nil || f.GRPCStatus != "unavailable" {
		t.Errorf("fallback for bulkhead_full: %+v", f)
	}
	if u.Fallback.For("circuit_open") != nil {
		t.Error("fallback for a cause nobody listed")
	}
	if code, ok := GRPCCode("resource-exhausted"); !ok || code != 8 {
		t.Errorf("GRPCCode(resource-exhausted) = %d, %v", code, ok)
	}
}

func TestEndpointLongForm(t *testing.T) {
	c, err := Parse([]byte(`
listeners: [{name: l, address: "127.0.0.1:9001"}]
upstreams: [{name: inv, endpoints: ["127.0.0.1:1", {address: "127.0.0.1:2", weight: 3}]}]`))
	if err != nil {
		t.Fatal(err)
	}
	if e := c.Upstreams[0].Endpoints; e[0].Weight != 1 || e[1].Address != "127.0.0.1:2" || e[1].Weight != 3 {
		t.Errorf("endpoints = %+v", e)
	}
}

// TestValidationRules has one case per rule: the config is minimal but for
// one bad field, and the error must name that field's path and its value.
func TestValidationRules(t *testing.T) {
	cases := []struct {
		name, yaml, path, value string
	}{
		{"unknown top-level field", `budgett: 5`, "budgett", "unknown field"},
		{"unknown nested field", `upstreams: [{name: a, endpoints: ["h:1"], bulkhead: {wieght: 2}}]`, "upstreams[0].bulkhead.wieght", "known fields: weight"},
		{"integer field holds text", `budget: lots`, "budget", `"lots" is not a whole number`},
		{"mapping where a list goes", `listeners: {name: x}`, "listeners", "must be a list"},
		{"bad duration", `upstreams: [{name: a, endpoints: ["h:1"]}, {name: b, endpoints: ["h:2"], bulkhead: {maxWait: fast}}]`, "upstreams[1].bulkhead.maxWait", `"fast" is not a duration`},
		{"duration without unit", `upstreams: [{name: a, endpoints: ["h:1"], timeout: "300"}]`, "upstreams[0].timeout", `"300" is not a duration`},
		{"negative duration", `upstreams: [{name: a, endpoints: ["h:1"], timeout: -1s}]`, "upstreams[0].timeout", `"-1s" must not be negative`},
		{"budget below 1", `budget: -3`, "budget", "-3 must be at least 1"},
		{"unknownHosts value", `unknownHosts: allow`, "unknownHosts", `"allow" is not one of reject, passthrough`},
		{"isolation value", `isolation: none`, "isolation", `"none" is not one of`},
		{"admin address", `admin: {address: "localhost"}`, "admin.address", `"localhost" is not host:port`},
		{"listener name missing", `listeners: [{address: "127.0.0.1:1"}]`, "listeners[0].name", "is required"},
		{"listener name twice", `listeners: [{name: a, address: "127.0.0.1:1"}, {name: a, address: "127.0.0.1:2"}]`, "listeners[1].name", `"a" is also the name of listeners[0]`},
		{"listener address twice", `listeners: [{name: a, address: "127.0.0.1:1"}, {name: b, address: "127.0.0.1:1"}]`, "listeners[1].address", "is also the address of listeners[0]"},
		{"listener port out of range", `listeners: [{name: a, address: "127.0.0.1:70000"}]`, "listeners[0].address", `port "70000"`},
		{"listener mode", `listeners: [{name: a, address: "127.0.0.1:1", mode: sideways}]`, "listeners[0].mode", `"sideways" is not one of`},
		{"transparent with an upstream", `listeners: [{name: a, address: "127.0.0.1:1", mode: transparent, upstream: x}]`, "listeners[0].upstream", "only allowed in mode"},
		{"access log sample", `listeners: [{name: a, address: "127.0.0.1:1", accessLog: {sample: 2}}]`, "listeners[0].accessLog.sample", "2 must be between 0 and 1"},
		{"upstream address", `upstreams: [{name: a, addresses: ["svc:80"], endpoints: ["h:1"]}]`, "upstreams[0].addresses[0]", `"svc:80" is not an IP:port`},
		{"passthrough connections", `passthroughConnections: -1`, "passthroughConnections", "-1 must be at least 1"},
		{"upstream mode without upstream", `listeners: [{name: a, address: "127.0.0.1:1", mode: upstream}]`, "listeners[0].upstream", "is required in mode"},
		{"upstream mode to unknown upstream", `listeners: [{name: a, address: "127.0.0.1:1", upstream: ghost}]`, "listeners[0].upstream", `"ghost" is not the name of any upstream`},
		{"proxy mode with upstream", `listeners: [{name: a, address: "127.0.0.1:1", mode: proxy, upstream: x}]`, "listeners[0].upstream", "only allowed in mode"},
		{"upstream name missing", `upstreams: [{endpoints: ["h:1"]}]`, "upstreams[0].name", "is required"},
		{"upstream name characters", `upstreams: [{name: "a b", endpoints: ["h:1"]}]`, "upstreams[0].name", `"a b" may hold only`},
		{"upstream name twice", `upstreams: [{name: a, endpoints: ["h:1"]}, {name: a, hosts: [z], endpoints: ["h:1"]}]`, "upstreams[1].name", `"a" is also the name of upstreams[0]`},
		{"host claimed twice", `upstreams: [{name: a, hosts: [shop], endpoints: ["h:1"]}, {name: b, hosts: [SHOP.], endpoints: ["h:1"]}]`, "upstreams[1].hosts[0]", "already claimed by upstreams[0].hosts[0]"},
		{"host with scheme", `upstreams: [{name: a, hosts: ["http://shop"], endpoints: ["h:1"]}]`, "upstreams[0].hosts[0]", "is not a host name"},
		{"protocol", `upstreams: [{name: a, endpoints: ["h:1"], protocol: http3}]`, "upstreams[0].protocol", `"http3" is not one of http1, http2, auto`},
		{"endpoint twice", `upstreams: [{name: a, endpoints: ["h:1", "h:2", "h:1"]}]`, "upstreams[0].endpoints[2]", `"h:1" is also upstreams[0].endpoints[0]`},
		{"wildcard host", `upstreams: [{name: a, hosts: ["*.shop"], endpoints: ["h:1"]}]`, "upstreams[0].hosts[0]", "is a wildcard"},
		{"endpoint without port", `upstreams: [{name: a, endpoints: ["h"]}]`, "upstreams[0].endpoints[0]", `"h" is not host:port`},
		{"endpoint without host", `upstreams: [{name: a, endpoints: [":80"]}]`, "upstreams[0].endpoints[0]", "needs a host"},
		{"endpoint port 0", `upstreams: [{name: a, endpoints: ["h:0"]}]`, "upstreams[0].endpoints[0]", `port "0"`},
		{"endpoint weight", `upstreams: [{name: a, endpoints: [{address: "h:1", weight: -2}]}]`, "upstreams[0].endpoints[0].weight", "-2 must not be negative"},
		{"endpoint unknown field", `upstreams: [{name: a, endpoints: [{addr: "h:1"}]}]`, "upstreams[0].endpoints[0].addr", "unknown field"},
		{"load balancer", `upstreams: [{name: a, endpoints: ["h:1"], loadBalancer: fastest}]`, "upstreams[0].loadBalancer", `"fastest" is not one of round_robin, least_request, random`},
		{"weight", `upstreams: [{name: a, endpoints: ["h:1"], bulkhead: {weight: -1}}]`, "upstreams[0].bulkhead.weight", "-1 must be at least 1"},
		{"maxConcurrent", `upstreams: [{name: a, endpoints: ["h:1"], bulkhead: {maxConcurrent: -1}}]`, "upstreams[0].bulkhead.maxConcurrent", "-1 must be at least 0"},
		{"minConcurrent", `upstreams: [{name: a, endpoints: ["h:1"], bulkhead: {minConcurrent: -1}}]`, "upstreams[0].bulkhead.minConcurrent", "-1 must be at least 0"},
		{"maxQueue", `upstreams: [{name: a, endpoints: ["h:1"], bulkhead: {maxQueue: -5}}]`, "upstreams[0].bulkhead.maxQueue", "-5 must be at least 0"},
		{"caps over budget", "budget: 10\nupstreams: [{name: a, endpoints: [\"h:1\"], bulkhead: {maxConcurrent: 8}}, {name: b, endpoints: [\"h:1\"], bulkhead: {maxConcurrent: 8}}]", "upstreams", "add up to 16, more than the budget of 10"},
		{"retry attempts", `upstreams: [{name: a, endpoints: ["h:1"], retry: {attempts: -1}}]`, "upstreams[0].retry.attempts", "-1 must be at least 0"},
		{"retry condition", `upstreams: [{name: a, endpoints: ["h:1"], retry: {attempts: 1, on: [sometimes]}}]`, "upstreams[0].retry.on[0]", `"sometimes" is not a retry condition`},
		{"retry status out of range", `upstreams: [{name: a, endpoints: ["h:1"], retry: {attempts: 1, on: ["999"]}}]`, "upstreams[0].retry.on[0]", `"999" is not a retry condition`},
		{"retry budget", `upstreams: [{name: a, endpoints: ["h:1"], retry: {attempts: 1, budget: 1.5}}]`, "upstreams[0].retry.budget", "1.5 must be between 0 and 1"},
		{"retry perTryTimeout", `upstreams: [{name: a, endpoints: ["h:1"], retry: {attempts: 1, perTryTimeout: soon}}]`, "upstreams[0].retry.perTryTimeout", `"soon" is not a duration`},
		{"breaker failure rate", `upstreams: [{name: a, endpoints: ["h:1"], circuitBreaker: {failureRate: 2}}]`, "upstreams[0].circuitBreaker.failureRate", "2 must be between 0 and 1"},
		{"breaker slow call rate", `upstreams: [{name: a, endpoints: ["h:1"], circuitBreaker: {slowCallRate: -0.1}}]`, "upstreams[0].circuitBreaker.slowCallRate", "must be between 0 and 1"},
		{"breaker minRequests", `upstreams: [{name: a, endpoints: ["h:1"], circuitBreaker: {minRequests: -1}}]`, "upstreams[0].circuitBreaker.minRequests", "must be at least 0"},
		{"breaker consecutive", `upstreams: [{name: a, endpoints: ["h:1"], circuitBreaker: {consecutiveFailures: -1}}]`, "upstreams[0].circuitBreaker.consecutiveFailures", "must be at least 0"},
		{"breaker half-open", `upstreams: [{name: a, endpoints: ["h:1"], circuitBreaker: {halfOpenRequests: -1}}]`, "upstreams[0].circuitBreaker.halfOpenRequests", "must be at least 0"},
		{"breaker window", `upstreams: [{name: a, endpoints: ["h:1"], circuitBreaker: {window: x}}]`, "upstreams[0].circuitBreaker.window", `"x" is not a duration`},
		{"breaker openFor", `upstreams: [{name: a, endpoints: ["h:1"], circuitBreaker: {openFor: x}}]`, "upstreams[0].circuitBreaker.openFor", `"x" is not a duration`},
		{"breaker slowCall", `upstreams: [{name: a, endpoints: ["h:1"], circuitBreaker: {slowCall: x}}]`, "upstreams[0].circuitBreaker.slowCall", `"x" is not a duration`},
		{"warmup", `upstreams: [{name: a, endpoints: ["h:1"], warmup: later}]`, "upstreams[0].warmup", `"later" is not a duration`},
		{"outlier consecutive", `upstreams: [{name: a, endpoints: ["h:1"], outlierDetection: {consecutiveFailures: -1}}]`, "upstreams[0].outlierDetection.consecutiveFailures", "must be at least 0"},
		{"outlier percent", `upstreams: [{name: a, endpoints: ["h:1"], outlierDetection: {maxEjectionPercent: 101}}]`, "upstreams[0].outlierDetection.maxEjectionPercent", "101 must be between 0 and 100"},
		{"outlier interval", `upstreams: [{name: a, endpoints: ["h:1"], outlierDetection: {interval: x}}]`, "upstreams[0].outlierDetection.interval", `"x" is not a duration`},
		{"outlier ejection time", `upstreams: [{name: a, endpoints: ["h:1"], outlierDetection: {baseEjectionTime: x}}]`, "upstreams[0].outlierDetection.baseEjectionTime", `"x" is not a duration`},
		{"rate limit rps", `upstreams: [{name: a, endpoints: ["h:1"], rateLimit: {rps: 0}}]`, "upstreams[0].rateLimit.rps", "0 must be more than 0"},
		{"rate limit burst", `upstreams: [{name: a, endpoints: ["h:1"], rateLimit: {rps: 1, burst: -1}}]`, "upstreams[0].rateLimit.burst", "-1 must be at least 0"},
		{"fallback without causes", `upstreams: [{name: a, endpoints: ["h:1"], fallback: {status: 200}}]`, "upstreams[0].fallback.on", "name at least one cause"},
		{"fallback cause", `upstreams: [{name: a, endpoints: ["h:1"], fallback: {on: [meltdown]}}]`, "upstreams[0].fallback.on[0]", `"meltdown" is not one of`},
		{"fallback status", `upstreams: [{name: a, endpoints: ["h:1"], fallback: {on: [timeout], status: 42}}]`, "upstreams[0].fallback.status", "42 is not an HTTP status"},
		{"fallback cause twice", `upstreams: [{name: a, endpoints: ["h:1"], fallback: [{on: [timeout]}, {on: [bulkhead_full, timeout]}]}]`, "upstreams[0].fallback[1].on[1]", `"timeout" already has a fallback at upstreams[0].fallback[0].on[0]`},
		{"fallback list unknown field", `upstreams: [{name: a, endpoints: ["h:1"], fallback: [{on: [timeout], stauts: 200}]}]`, "upstreams[0].fallback[0].stauts", "unknown field"},
		{"fallback header name", `upstreams: [{name: a, endpoints: ["h:1"], fallback: {on: [timeout], headers: {"bad header": x}}}]`, "upstreams[0].fallback.headers", `"bad header" is not a valid header name`},
		{"fallback grpc status", `upstreams: [{name: a, endpoints: ["h:1"], fallback: {on: [timeout], grpcStatus: SO_SO}}]`, "upstreams[0].fallback.grpcStatus", `"SO_SO" is not a gRPC status`},
		{"fallback grpc status number", `upstreams: [{name: a, endpoints: ["h:1"], fallback: {on: [timeout], grpcStatus: "17"}}]`, "upstreams[0].fallback.grpcStatus", `"17" is not a gRPC status`},
		{"fallback grpc body", `upstreams: [{name: a, endpoints: ["h:1"], fallback: {on: [timeout], grpcBody: "not base64!"}}]`, "upstreams[0].fallback.grpcBody", "is not base64"},
		{"retry buffer limit", `upstreams: [{name: a, endpoints: ["h:1"], retry: {attempts: 1, bufferLimit: -1}}]`, "upstreams[0].retry.bufferLimit", "-1 must be at least 0"},
		{"retry backoff order", `upstreams: [{name: a, endpoints: ["h:1"], retry: {attempts: 1, backoff: {base: 1s, max: 10ms}}}]`, "upstreams[0].retry.backoff.max", `"10ms" is less than backoff.base "1s"`},
		{"retry backoff duration", `upstreams: [{name: a, endpoints: ["h:1"], retry: {attempts: 1, backoff: {base: x}}}]`, "upstreams[0].retry.backoff.base", `"x" is not a duration`},
		{"failure status", `upstreams: [{name: a, endpoints: ["h:1"], failureStatuses: [503, 200]}]`, "upstreams[0].failureStatuses[1]", "200 is not a 4xx or 5xx status"},
		{"hedge delay", `upstreams: [{name: a, endpoints: ["h:1"], hedge: {delay: x}}]`, "upstreams[0].hedge.delay", `"x" is not a duration`},
		{"hedge percentile", `upstreams: [{name: a, endpoints: ["h:1"], hedge: {percentile: 100}}]`, "upstreams[0].hedge.percentile", "100 must be from 0 to below 100"},
		{"hedge count", `upstreams: [{name: a, endpoints: ["h:1"], hedge: {maxHedges: 9}}]`, "upstreams[0].hedge.maxHedges", "9 must be from 1 to 3"},
		{"outlier max ejection time", `upstreams: [{name: a, endpoints: ["h:1"], outlierDetection: {maxEjectionTime: x}}]`, "upstreams[0].outlierDetection.maxEjectionTime", `"x" is not a duration`},
		{"http2 streams negative", `upstreams: [{name: a, endpoints: ["h:1"], http2: {maxConcurrentStreams: -1}}]`, "upstreams[0].http2.maxConcurrentStreams", "-1 is not between 0"},
		{"http2 streams too many", `upstreams: [{name: a, endpoints: ["h:1"], http2: {maxConcurrentStreams: 2147483648}}]`, "upstreams[0].http2.maxConcurrentStreams", "2147483648 is not between 0"},
		{"http2 streams over http1", `upstreams: [{name: a, endpoints: ["h:1"], protocol: http1, http2: {maxConcurrentStreams: 8}}]`, "upstreams[0].http2.maxConcurrentStreams", "protocol is http1"},
		{"http2 streams over tls", `upstreams: [{name: a, endpoints: ["h:1"], protocol: http2, tls: {sni: a}, http2: {maxConcurrentStreams: 8}}]`, "upstreams[0].http2.maxConcurrentStreams", "only cleartext (h2c)"},
		{"http2 unknown field", `upstreams: [{name: a, endpoints: ["h:1"], http2: {maxStreams: 8}}]`, "upstreams[0].http2.maxStreams", "known fields: maxConcurrentStreams"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(c.yaml))
			if err == nil {
				t.Fatalf("config accepted:\n%s", c.yaml)
			}
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("error %v (%T) has no FieldError", err, err)
			}
			msg := err.Error()
			if !strings.Contains(msg, c.path+": ") || !strings.Contains(msg, c.value) {
				t.Fatalf("error %q\nwant path %q and %q", msg, c.path, c.value)
			}
		})
	}
}

func TestEveryProblemIsReported(t *testing.T) {
	_, err := Parse([]byte(`
budget: 0.5
upstreams: [{name: a, endpoints: ["h:1"], timeout: soon, bulkhead: {maxWait: later}}]`))
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("got %v", err)
	}
	// The shape check stops before validation, so only the type error shows;
	// once fixed, both bad durations are reported together.
	if len(ve.Errors) != 1 || ve.Errors[0].Path != "budget" {
		t.Fatalf("errors = %v", ve.Errors)
	}
	_, err = Parse([]byte(`
upstreams: [{name: a, endpoints: ["h:1"], timeout: soon, bulkhead: {maxWait: later}}]`))
	if !errors.As(err, &ve) || len(ve.Errors) != 2 {
		t.Fatalf("want both durations reported, got %v", err)
	}
}

func TestMalformedYAML(t *testing.T) {
	for name, doc := range map[string]string{
		"syntax":        "listeners: [",
		"two documents": "budget: 1\n---\nbudget: 2\n",
		"duplicate key": "budget: 1\nbudget: 2\n",
	} {
		if _, err := Parse([]byte(doc)); err == nil {
			t.Errorf("%s: accepted %q", name, doc)
		}
	}
}

func TestEmptyConfigIsValid(t *testing.T) {
	c, err := Parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Budget != DefaultBudget {
		t.Fatalf("defaults not set on an empty config: %+v", c)
	}
}

func TestLoadNamesTheFile(t *testing.T) {
	path := t.TempDir() + "/bad.yaml"
	if err := os.WriteFile(path, []byte("budget: x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(path)
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "budget") {
		t.Fatalf("got %v", err)
	}
	if _, err := Load(t.TempDir() + "/missing.yaml"); err == nil || !strings.Contains(err.Error(), "reading config") {
		t.Fatalf("missing file: %v", err)
	}
}

func TestVersionFollowsContent(t *testing.T) {
	a, _ := Parse([]byte(minimal))
	b, _ := Parse([]byte("# same, other formatting\n" + strings.ReplaceAll(minimal, "127.0.0.1:8081", "127.0.0.1:8081")))
	c, _ := Parse([]byte(strings.ReplaceAll(minimal, "8081", "8082")))
	if a.Version() != b.Version() {
		t.Errorf("same config, versions %s and %s", a.Version(), b.Version())
	}
	if a.Version() == c.Version() {
		t.Errorf("different configs share version %s", a.Version())
	}
}

func TestHostKey(t *testing.T) {
	for in, want := range map[string]string{
		"Shop.Example.": "shop.example",
		"shop:8080":     "shop:8080",
		"SHOP.:8080":    "shop:8080",
		"[::1]:80":      "[::1]:80",
		"10.0.0.1":      "10.0.0.1",
	} {
		got, err := HostKey(in)
		if err != nil || got != want {
			t.Errorf("HostKey(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "http://x", "a b", "x:port", "x:0"} {
		if _, err := HostKey(bad); err == nil {
			t.Errorf("HostKey(%q) accepted", bad)
		}
	}
}

func TestCloneIsDeep(t *testing.T) {
	c, err := Decode([]byte(`
upstreams:
  - name: a
    endpoints: ["h:1"]
    retry: {attempts: 1}
    fallback: {on: [timeout], headers: {x: y}}`))
	if err != nil {
		t.Fatal(err)
	}
	d := c.Clone()
	d.SetDefaults()
	d.Upstreams[0].Fallback[0].Headers["x"] = "changed"
	if c.Upstreams[0].Retry.Budget != 0 || c.Upstreams[0].Timeout.IsSet() || c.Upstreams[0].Fallback[0].Headers["x"] != "y" {
		t.Fatalf("defaults or edits on the clone reached the original: %+v", c.Upstreams[0])
	}
	if !reflect.DeepEqual(c, c.Clone()) {
		t.Fatal("a clone differs from its original")
	}
}
