package proxy

import (
	"context"
	"math"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/watertight/watertight/config"
	"github.com/watertight/watertight/metrics"
)

// hedgePolicy sends extra attempts of a slow idempotent request.
//
// Written by hand rather than with failsafe-go's hedge policy: each hedge
// must go through the upstream's own breaker, rate limiter and bulkhead as an
// attempt of its own, and the winner is chosen on the response head.
type hedgePolicy struct {
	floor      time.Duration
	percentile float64 // 0: always the fixed delay
	max        int
	latency    *latencyTracker
}

func newHedgePolicy(h *config.Hedge) *hedgePolicy {
	if h == nil {
		return nil
	}
	p := &hedgePolicy{floor: h.Delay.Duration, percentile: h.Percentile, max: h.MaxHedges}
	if p.percentile > 0 {
		p.latency = &latencyTracker{}
	}
	return p
}

// applies: only requests that are safe to send twice at once are hedged:
// idempotent methods with no body, and no protocol upgrade.
func (p *hedgePolicy) applies(req *http.Request) bool {
	if p == nil || (req.Body != nil && req.Body != http.NoBody) || req.Header.Get("Upgrade") != "" {
		return false
	}
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	return false
}

func (p *hedgePolicy) delay() time.Duration {
	if p.latency == nil {
		return p.floor
	}
	return max(p.floor, p.latency.quantile(p.percentile/100))
}

// observe records the time an answer took, for the percentile delay.
func (p *hedgePolicy) observe(d time.Duration) {
	if p != nil && p.latency != nil {
		p.latency.record(d)
	}
}

// hedged runs one try as a race: the attempt, then a hedge each time the
// delay passes without a good answer (as the retry budget allows). The first
// good answer wins; the others are cancelled. If none is good, the last to
// finish is the answer.
func (c *compartment) hedged(r *request, req *http.Request, retry bool) (*exchange, error) {
	type outcome struct {
		x   *exchange
		err error
		i   int // which launch
	}
	results := make(chan outcome, 1+c.hedge.max)
	cancels := make([]context.CancelFunc, 0, 1+c.hedge.max)
	launch := func(req *http.Request, retry bool) {
		ctx, cancel := context.WithCancel(r.ctx)
		i := len(cancels)
		cancels = append(cancels, cancel)
		go func() {
			x, err := c.attempt(r, ctx, cancel, req, retry)
			if x == nil {
				cancel() // refused before it held anything that would
			}
			results <- outcome{x, err, i}
		}()
	}
	// Hedges are copied from a pristine copy: the first attempt addresses
	// req while they would be copying it.
	pristine := req.Clone(req.Context())
	launch(req, retry)
	pending, hedges := 1, 0
	timer := time.NewTimer(c.hedge.delay())
	defer timer.Stop()
	var last outcome
	for {
		select {
		case o := <-results:
			pending--
			good := o.err == nil && classifyHead(o.x.resp, r.grpc, c.failures) == metrics.OK
			if !good && pending > 0 {
				discard(last.x)
				last = o
				continue
			}
			discard(last.x)
			if pending > 0 {
				// Cancel the losers; whatever they still bring is closed.
				for i, cancel := range cancels {
					if i != o.i {
						cancel()
					}
				}
				go func(n int) {
					for range n {
						discard((<-results).x)
					}
				}(pending)
			}
			return o.x, o.err
		case <-timer.C:
			if hedges < c.hedge.max && c.budget.TryAcquirePermit() {
				hedges++
				pending++
				c.metrics.Retry()
				launch(pristine.Clone(pristine.Context()), true)
				if hedges < c.hedge.max {
					timer.Reset(c.hedge.delay())
				}
			}
		}
	}
}

func discard(x *exchange) {
	if x != nil {
		x.resp.Body.Close()
	}
}

// latencyTracker keeps a decaying histogram of recent answer times: log
// buckets from 100µs growing by 30%, halved every 1024 answers so it follows
// the upstream as it changes. Recording is one atomic add.
type latencyTracker struct {
	buckets [48]atomic.Int64
	seen    atomic.Int64
}

const (
	latencyBase   = 100 * time.Microsecond
	latencyGrowth = 1.3
)

func (t *latencyTracker) record(d time.Duration) {
	i := 0
	if d > latencyBase {
		i = min(int(math.Log(float64(d)/float64(latencyBase))/math.Log(latencyGrowth))+1, len(t.buckets)-1)
	}
	t.buckets[i].Add(1)
	if t.seen.Add(1)%1024 == 0 {
		for j := range t.buckets {
			t.buckets[j].Store(t.buckets[j].Load() / 2)
		}
	}
}

// quantile is the upper bound of the bucket holding quantile q, or 0 before
// there are enough answers to say.
func (t *latencyTracker) quantile(q float64) time.Duration {
	var counts [48]int64
	total := int64(0)
	for i := range counts {
		counts[i] = t.buckets[i].Load()
		total += counts[i]
	}
	if total < 20 {
		return 0
	}
	want := int64(math.Ceil(q * float64(total)))
	sum := int64(0)
	for i, n := range counts {
		sum += n
		if sum >= want {
			return time.Duration(float64(latencyBase) * math.Pow(latencyGrowth, float64(i)))
		}
	}
	return time.Duration(float64(latencyBase) * math.Pow(latencyGrowth, float64(len(counts)-1)))
}
