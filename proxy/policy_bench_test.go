package proxy

import (
	"errors"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/watertight/watertight/breaker"
	"github.com/watertight/watertight/config"
)

// BenchmarkPolicyChain is one GET through the sidecar with the bulkhead
// alone and with every policy configured (breaker with a slow-call
// tripwire, rate limit, retry with its budget and a replayable body, outlier
// detection, fallbacks), none of which trips: the difference is what the
// policies cost a request that passes.
//
//	go test -run x -bench PolicyChain -benchmem -count 6 ./proxy/
func BenchmarkPolicyChain(b *testing.B) {
	origin := startBenchUpstream(b)
	for _, tc := range []struct {
		name string
		edit func(*config.Upstream)
	}{
		{"bulkhead-only", func(*config.Upstream) {}},
		{"all-policies", func(u *config.Upstream) {
			u.CircuitBreaker = &config.CircuitBreaker{FailureRate: 0.5, ConsecutiveFailures: 5, SlowCall: config.D(time.Second)}
			u.RateLimit = &config.RateLimit{RPS: 1e9, Burst: 1e6}
			u.Retry = &config.Retry{Attempts: 2}
			u.OutlierDetection = &config.OutlierDetection{}
			u.Fallback = config.Fallbacks{{On: []string{"timeout", "bulkhead_full"}, Body: "{}"}}
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			u := config.Upstream{Name: "bench", Endpoints: []config.Endpoint{{Address: origin}}}
			tc.edit(&u)
			p := startProxy(b, &config.Config{Budget: 4096,
				Listeners: []config.Listener{{Name: "bench", Address: "127.0.0.1:0", Mode: config.ModeUpstream, Upstream: "bench"}},
				Upstreams: []config.Upstream{u}})
			a, _ := p.Addr("bench")
			benchRequests(b, a.String(), false)
		})
	}
}

// BenchmarkBreakerOpenRejects is the time an open breaker takes to refuse a
// request: the compartment's whole path up to the local reply, no network.
func BenchmarkBreakerOpenRejects(b *testing.B) {
	u := config.Upstream{Name: "bench", Endpoints: []config.Endpoint{{Address: deadAddress(b)}},
		CircuitBreaker: &config.CircuitBreaker{ConsecutiveFailures: 1, OpenFor: config.D(time.Hour)}}
	p := startProxy(b, &config.Config{Listeners: proxyListener(), Upstreams: []config.Upstream{u}})
	c := p.compartments[0]
	c.breaker.Acquire()
	c.breaker.Record(breaker.Failure, 0) // one failure opens it
	req := httptest.NewRequest("GET", "http://bench/", nil)
	b.ReportAllocs()
	for b.Loop() {
		_, err := c.RoundTrip(req)
		var lr *localReply
		if !errors.As(err, &lr) || lr.result.String() != "circuit_open" {
			b.Fatalf("got %v", err)
		}
	}
}
