package proxy

import (
	"log/slog"
	"reflect"
	"sync/atomic"
	"time"

	"github.com/failsafe-go/failsafe-go/budget"
	"golang.org/x/time/rate"

	"github.com/watertight/watertight/breaker"
	"github.com/watertight/watertight/config"
	"github.com/watertight/watertight/metrics"
	"github.com/watertight/watertight/outlier"
)

// upstream is the part of a compartment that outlives config changes, so a
// reload neither closes an open breaker, refills a rate limiter, forgets an
// ejection nor drops warm connections. Each policy is rebuilt only when its
// own config changed.
type upstream struct {
	name       string
	transports *transports
	metrics    *metrics.Upstream
	endpoints  map[string]*endpointState // by address

	breakerCfg *config.CircuitBreaker
	breaker    *breaker.Breaker // nil: none configured
	limiter    *rate.Limiter    // nil: none configured
	budgetRate float64
	budget     retryBudget // nil: no retries
	// closedAt is when the breaker last closed (unix nanoseconds), for the
	// warm-up of the pool's limit; 0 when not warming.
	closedAt atomic.Int64
	// deadline is the X-Request-Timeout value last sent (see propagateDeadline).
	deadline atomic.Pointer[deadlineField]
}

// retryBudget is failsafe-go's budget as its retry executor uses it: every
// request in flight is an execution, every retry in flight holds a permit.
type retryBudget interface {
	RecordExecution()
	ReleaseExecution()
	TryAcquirePermit() bool
	ReleasePermit()
}

// update brings the upstream's policies in line with u, keeping the state of
// every policy whose config did not change.
func (up *upstream) update(u *config.Upstream, log *slog.Logger) {
	if !reflect.DeepEqual(up.breakerCfg, u.CircuitBreaker) {
		up.breakerCfg, up.breaker = u.CircuitBreaker, nil
		if cb := u.CircuitBreaker; cb != nil {
			name := up.name
			up.breaker = breaker.New(*cb, func(from, to breaker.State) {
				if from == breaker.HalfOpen && to == breaker.Closed {
					up.closedAt.Store(time.Now().UnixNano())
				}
				log.Warn("circuit breaker changed state", "upstream", name,
					"from", breaker.StateName(from), "to", breaker.StateName(to))
			})
		}
	}
	switch rl := u.RateLimit; {
	case rl == nil:
		up.limiter = nil
	case up.limiter == nil:
		up.limiter = rate.NewLimiter(rate.Limit(rl.RPS), rl.Burst)
	default: // keep the tokens saved up; change the rate in place
		now := time.Now()
		up.limiter.SetLimitAt(now, rate.Limit(rl.RPS))
		up.limiter.SetBurstAt(now, rl.Burst)
	}
	// Retries and hedges share one budget.
	rateWanted := 0.0
	switch {
	case u.Retry != nil && u.Retry.Attempts > 0:
		rateWanted = u.Retry.Budget
	case u.Hedge != nil:
		rateWanted = 0.2 // the retry default: hedges alone spend at most this
	}
	switch {
	case rateWanted == 0:
		up.budget, up.budgetRate = nil, 0
	case up.budget == nil || up.budgetRate != rateWanted:
		up.budgetRate = rateWanted
		up.budget = budget.NewBuilder().WithMaxRate(rateWanted).WithMinConcurrency(3).Build().(retryBudget)
	}
	// Endpoints keep their outlier state and load across reloads; those
	// that join a running upstream warm up.
	first := up.endpoints == nil
	eps := make(map[string]*endpointState, len(u.Endpoints))
	for _, e := range u.Endpoints {
		st, ok := up.endpoints[e.Address]
		if !ok {
			st = &endpointState{}
			if !first {
				st.joined.Store(time.Now().UnixNano())
			}
		}
		eps[e.Address] = st
	}
	up.endpoints = eps
}

// snapshotEndpoints are u's endpoints, in config order, over their state.
func (up *upstream) snapshotEndpoints(u *config.Upstream) []*endpoint {
	eps := make([]*endpoint, len(u.Endpoints))
	for i, e := range u.Endpoints {
		eps[i] = &endpoint{addr: e.Address, weight: e.Weight, endpointState: up.endpoints[e.Address]}
	}
	return eps
}

// outlierEndpoints lists the endpoints' outlier states for a detector.
func outlierEndpoints(eps []*endpoint) []*outlier.Endpoint {
	out := make([]*outlier.Endpoint, len(eps))
	for i, e := range eps {
		out[i] = &e.out
	}
	return out
}
