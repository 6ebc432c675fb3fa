package proxy

import (
	"math/rand/v2"
	"sync/atomic"

	"github.com/watertight/watertight/config"
)

// endpoint is one address of an upstream, as the request path sees it.
type endpoint struct {
	addr   string
	weight int
	active atomic.Int64 // requests in flight to it, for least_request
}

// balancer picks the endpoint for one attempt. Implementations are safe for
// concurrent use and do not allocate.
type balancer interface {
	pick() *endpoint
}

func newBalancer(policy string, eps []*endpoint) balancer {
	switch policy {
	case config.LBRoundRobin:
		return newRoundRobin(eps)
	case config.LBRandom:
		return newRandom(eps)
	default:
		return &leastRequest{eps: eps, random: newRandom(eps)}
	}
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
