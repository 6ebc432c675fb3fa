package proxy

import (
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/watertight/watertight/config"
	"github.com/watertight/watertight/outlier"
)

// endpoint is one address of an upstream in one config snapshot.
type endpoint struct {
	addr   string
	weight int
	*endpointState
}

// endpointState is what an endpoint keeps across config changes.
type endpointState struct {
	active atomic.Int64 // requests in flight to it, for least_request
	out    outlier.Endpoint
	// joined is when the endpoint joined the upstream (unix nanoseconds),
	// 0 for endpoints that were there from the start: only latecomers and
	// endpoints back from ejection warm up.
	joined atomic.Int64
}

// policy picks an endpoint by its own rule, ignoring health.
type policy interface {
	pick() *endpoint
}

func newPolicy(name string, eps []*endpoint) policy {
	switch name {
	case config.LBRoundRobin:
		return newRoundRobin(eps)
	case config.LBRandom:
		return newRandom(eps)
	default:
		return &leastRequest{eps: eps, random: newRandom(eps)}
	}
}

// balancer picks the endpoint for one attempt: by its policy, among the
// endpoints in service, giving warming endpoints a share that grows over
// the warm-up time (Envoy's slow start). Safe for concurrent use; does not
// allocate.
type balancer struct {
	policy policy
	eps    []*endpoint
	warmup int64 // nanoseconds; 0: none
}

func newBalancer(name string, eps []*endpoint, warmup time.Duration) *balancer {
	return &balancer{policy: newPolicy(name, eps), eps: eps, warmup: int64(warmup)}
}

// minWarmShare is a warming endpoint's share at its start (Envoy's default
// min_weight_percent).
const minWarmShare = 0.1

func (b *balancer) pick(now int64) *endpoint {
	if len(b.eps) == 0 {
		return nil
	}
	var fallback *endpoint
	for range 4 {
		e := b.policy.pick()
		if !e.out.Available(now) {
			continue
		}
		if share := b.warmShare(e, now); share >= 1 || rand.Float64() < share {
			return e
		}
		if fallback == nil {
			fallback = e
		}
	}
	if fallback != nil {
		return fallback
	}
	for _, e := range b.eps {
		if e.out.Available(now) {
			return e
		}
	}
	// Every endpoint is ejected (one endpoint, or the detector let it
	// happen): trying one beats refusing everything (Envoy's panic mode).
	return b.policy.pick()
}

// warmShare is the share of its weight a warming endpoint gets at now.
func (b *balancer) warmShare(e *endpoint, now int64) float64 {
	if b.warmup == 0 {
		return 1
	}
	since := max(e.joined.Load(), e.out.EjectedUntilNano())
	if since == 0 || now-since >= b.warmup {
		return 1
	}
	return max(minWarmShare, float64(now-since)/float64(b.warmup))
}

// roundRobin walks a precomputed smooth weighted schedule (equal weights give
// the plain rotation), so a pick is one atomic add.
type roundRobin struct {
	schedule []*endpoint
	next     atomic.Uint64
}

func newRoundRobin(eps []*endpoint) *roundRobin {
	return &roundRobin{schedule: smoothSchedule(eps)}
}

func (b *roundRobin) pick() *endpoint {
	if len(b.schedule) == 0 {
		return nil
	}
	return b.schedule[(b.next.Add(1)-1)%uint64(len(b.schedule))]
}

// smoothSchedule is nginx's smooth weighted round robin unrolled over one
// period: weights 5,1,1 give a,a,b,a,c,a,a rather than a,a,a,a,a,b,c.
func smoothSchedule(eps []*endpoint) []*endpoint {
	if len(eps) == 0 {
		return nil
	}
	weights := make([]int, len(eps))
	g := 0
	for i, e := range eps {
		weights[i] = max(e.weight, 1)
		g = gcd(g, weights[i])
	}
	total := 0
	for i := range weights {
		weights[i] /= g
		total += weights[i]
	}
	// Bound the period: very uneven weights keep their proportions roughly.
	const maxPeriod = 4096
	if total > maxPeriod {
		scaled := 0
		for i := range weights {
			weights[i] = max(weights[i]*maxPeriod/total, 1)
			scaled += weights[i]
		}
		total = scaled
	}
	current := make([]int, len(eps))
	schedule := make([]*endpoint, 0, total)
	for range total {
		best := 0
		for i := range eps {
			current[i] += weights[i]
			if current[i] > current[best] {
				best = i
			}
		}
		current[best] -= total
		schedule = append(schedule, eps[best])
	}
	return schedule
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// random picks by weight.
type random struct {
	eps        []*endpoint
	cumulative []int // nil when all weights are equal
	total      int
}

func newRandom(eps []*endpoint) *random {
	b := &random{eps: eps}
	equal := true
	for _, e := range eps {
		b.total += max(e.weight, 1)
		b.cumulative = append(b.cumulative, b.total)
		equal = equal && e.weight == eps[0].weight
	}
	if equal {
		b.cumulative = nil
	}
	return b
}

func (b *random) pick() *endpoint {
	if len(b.eps) == 0 {
		return nil
	}
	return b.eps[b.index()]
}

func (b *random) index() int {
	if b.cumulative == nil {
		return rand.IntN(len(b.eps))
	}
	n := rand.IntN(b.total)
	lo, hi := 0, len(b.cumulative)-1
	for lo < hi {
		mid := (lo + hi) / 2
		if b.cumulative[mid] > n {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo
}

// leastRequest is the power of two choices: two different endpoints drawn by
// weight, the one with fewer requests in flight per unit of weight wins. It
// avoids the herd that "always the least loaded" causes when picks race.
type leastRequest struct {
	eps    []*endpoint
	random *random
}

func (b *leastRequest) pick() *endpoint {
	if len(b.eps) < 2 {
		return b.random.pick()
	}
	i, j := b.random.index(), b.random.index()
	for try := 0; i == j; try++ {
		if try == 3 { // a dominant weight: take the neighbour
			j = (i + 1) % len(b.eps)
			break
		}
		j = b.random.index()
	}
	a, c := b.eps[i], b.eps[j]
	// Compare active/weight without dividing: a.active*c.weight vs c.active*a.weight.
	if a.active.Load()*int64(max(c.weight, 1)) <= c.active.Load()*int64(max(a.weight, 1)) {
		return a
	}
	return c
}
