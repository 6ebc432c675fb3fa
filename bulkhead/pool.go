// Package bulkhead is the concurrency pool of one upstream compartment: a
// limit on requests in flight, a bounded FIFO queue in front of it with a
// maximum wait, and in-place resizing.
//
// Why not failsafe-go's bulkhead: it can neither be resized while requests
// hold slots nor report its queue, and DESIGN.md requires both (a reload
// resizes pools in place; operators watch active and queued work).
package bulkhead

import (
	"context"
	"errors"
	"sync"
	"time"
)

// Rejections. Neither is an upstream failure: the breaker and outlier
// detection must not count them.
var (
	// ErrFull: every slot is taken and the queue is full (or disabled).
	ErrFull = errors.New("bulkhead full")
	// ErrQueueTimeout: the request waited its maximum (or its deadline ran
	// out) without getting a slot.
	ErrQueueTimeout = errors.New("bulkhead queue wait expired")
)

// Pool is a resizable concurrency limit with a bounded FIFO wait queue.
// The zero value is not usable; call New.
type Pool struct {
	mu       sync.Mutex
	limit    int
	active   int
	maxQueue int
	maxWait  time.Duration
	// queue is an intrusive FIFO of waiters; queued counts it.
	head, tail *waiter
	queued     int
}

type waiter struct {
	ready      chan struct{} // closed when the slot is handed over
	granted    bool          // under mu: the slot is this waiter's
	prev, next *waiter
}

// Stats is a consistent reading of a pool.
type Stats struct {
	Active, Queued, Limit, QueueCapacity int
}

// New makes a pool with limit slots, a queue of maxQueue waiters and a
// maximum wait of maxWait (0: no bound but the caller's context).
func New(limit, maxQueue int, maxWait time.Duration) *Pool {
	return &Pool{limit: limit, maxQueue: maxQueue, maxWait: maxWait}
}

// TryAcquire takes a slot if one is free and nobody is queued before us.
// It does not allocate.
func (p *Pool) TryAcquire() bool {
	p.mu.Lock()
	ok := p.active < p.limit && p.queued == 0
	if ok {
		p.active++
	}
	p.mu.Unlock()
	return ok
}

// Acquire takes a slot, waiting in the queue if the pool is full. It returns
// how long it waited. The wait ends with ErrQueueTimeout at the pool's
// maxWait or at ctx's deadline, whichever is first, and with ctx.Err() if
// ctx is cancelled. With a free slot it returns at once without allocating.
// Every nil return must be paired with one Release.
func (p *Pool) Acquire(ctx context.Context) (time.Duration, error) {
	p.mu.Lock()
	if p.active < p.limit && p.queued == 0 {
		p.active++
		p.mu.Unlock()
		return 0, nil
	}
	if p.queued >= p.maxQueue {
		p.mu.Unlock()
		return 0, ErrFull
	}
	w := &waiter{ready: make(chan struct{})}
	p.push(w)
	maxWait := p.maxWait
	p.mu.Unlock()

	start := time.Now()
	var expired <-chan time.Time
	if maxWait > 0 {
		t := time.NewTimer(maxWait)
		defer t.Stop()
		expired = t.C
	}
	var err error
	select {
	case <-w.ready:
		return time.Since(start), nil
	case <-expired:
		err = ErrQueueTimeout
	case <-ctx.Done():
		err = ctx.Err()
		if errors.Is(err, context.DeadlineExceeded) {
			// The request's time ran out while it queued: that is the
			// queue's doing, not the upstream's.
			err = ErrQueueTimeout
		}
	}
	p.mu.Lock()
	if w.granted {
		// The slot arrived as we gave up: hand it on.
		p.mu.Unlock()
		p.Release()
		return time.Since(start), err
	}
	p.remove(w)
	p.mu.Unlock()
	return time.Since(start), err
}

// Release returns a slot. When a waiter is queued and the pool is not over
// its (possibly shrunk) limit, the slot passes straight to the oldest waiter.
func (p *Pool) Release() {
	p.mu.Lock()
	if p.active <= p.limit && p.head != nil {
		// active stays the same: the slot changes hands.
		p.grant(p.head)
	} else {
		p.active--
	}
	p.mu.Unlock()
}

// Resize changes the limit, the queue bound and the maximum wait in place.
// Requests holding slots keep them; if the limit shrank below the active
// count, no new request gets a slot until enough have been released. Waiters
// beyond a smaller maxQueue keep their place; only new arrivals are refused.
func (p *Pool) Resize(limit, maxQueue int, maxWait time.Duration) {
	p.mu.Lock()
	p.limit, p.maxQueue, p.maxWait = limit, maxQueue, maxWait
	for p.active < p.limit && p.head != nil {
		p.active++
		p.grant(p.head)
	}
	p.mu.Unlock()
}

// SetLimit changes the limit alone, as Resize does (for warm-up ramps).
func (p *Pool) SetLimit(limit int) {
	p.mu.Lock()
	if p.limit == limit {
		p.mu.Unlock()
		return
	}
	p.limit = limit
	for p.active < p.limit && p.head != nil {
		p.active++
		p.grant(p.head)
	}
	p.mu.Unlock()
}

// Stats reads the pool.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	s := Stats{Active: p.active, Queued: p.queued, Limit: p.limit, QueueCapacity: p.maxQueue}
	p.mu.Unlock()
	return s
}

// grant hands the slot to w and takes it off the queue. Called with mu held.
func (p *Pool) grant(w *waiter) {
	p.remove(w)
	w.granted = true
	close(w.ready)
}

func (p *Pool) push(w *waiter) {
	w.prev = p.tail
	if p.tail != nil {
		p.tail.next = w
	} else {
		p.head = w
	}
	p.tail = w
	p.queued++
}

func (p *Pool) remove(w *waiter) {
	if w.prev != nil {
		w.prev.next = w.next
	} else {
		p.head = w.next
	}
	if w.next != nil {
		w.next.prev = w.prev
	} else {
		p.tail = w.prev
	}
	w.prev, w.next = nil, nil
	p.queued--
}
