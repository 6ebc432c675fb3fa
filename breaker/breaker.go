// Package breaker is an upstream's circuit breaker: it opens on a failure
// rate over a time window (with a minimum number of requests), on N
// consecutive failures, or on a rate of slow calls, stays open for a while,
// then lets a few probes through (half-open) and closes when they succeed.
//
// The state machine and the failure-rate window are failsafe-go's. failsafe-go
// opens on one condition only and knows nothing of slow calls, so the other
// two conditions are failsafe-go breakers too, used as tripwires: they only
// count, and when one trips it opens the main breaker and is reset.
package breaker

import (
	"math"
	"sync/atomic"
	"time"

	"github.com/failsafe-go/failsafe-go/circuitbreaker"

	"github.com/watertight/watertight/config"
)

// State of a breaker.
type State = circuitbreaker.State

// States, as the watertight_circuit_state label spells them.
const (
	Closed   = circuitbreaker.ClosedState
	Open     = circuitbreaker.OpenState
	HalfOpen = circuitbreaker.HalfOpenState
)

// StateName is the label value of a state.
func StateName(s State) string {
	switch s {
	case Open:
		return "open"
	case HalfOpen:
		return "half_open"
	default:
		return "closed"
	}
}

// Breaker guards one upstream.
type Breaker struct {
	main        circuitbreaker.CircuitBreaker[any]
	slow        circuitbreaker.CircuitBreaker[any] // tripwire on the slow-call rate, or nil
	consecutive circuitbreaker.CircuitBreaker[any] // tripwire on consecutive failures, or nil
	slowCall    time.Duration
	// state mirrors main's state, kept by its listener, so that the request
	// path asks an atomic rather than failsafe-go's mutex.
	state atomic.Int32
}

// New builds a breaker from its config (defaults set). onChange, if not nil,
// hears every state change.
func New(c config.CircuitBreaker, onChange func(from, to State)) *Breaker {
	b := &Breaker{slowCall: c.SlowCall.Duration}
	mb := circuitbreaker.NewBuilder[any]().
		WithDelay(c.OpenFor.Duration).
		WithJitterFactor(0.1). // pods whose breakers opened together must not probe in lockstep
		WithSuccessThreshold(uint(max(c.HalfOpenRequests, 1))).
		OnStateChanged(func(e circuitbreaker.StateChangedEvent) {
			b.state.Store(int32(e.NewState))
			if e.NewState == Closed {
				// Start the tripwires' counts afresh, or the calls that
				// opened the breaker would open it again at once.
				b.resetTripwires()
			}
			if onChange != nil {
				onChange(e.OldState, e.NewState)
			}
		})
	switch {
	case c.FailureRate > 0:
		mb = mb.WithFailureRateThreshold(c.FailureRate, uint(max(c.MinRequests, 1)), c.Window.Duration)
		if c.ConsecutiveFailures > 0 {
			b.consecutive = tripwire().WithFailureThreshold(uint(c.ConsecutiveFailures)).Build()
		}
	case c.ConsecutiveFailures > 0:
		mb = mb.WithFailureThreshold(uint(c.ConsecutiveFailures))
	default:
		// Only slow calls open this breaker.
		mb = mb.WithFailureThreshold(math.MaxUint32)
	}
	if b.slowCall > 0 {
		b.slow = tripwire().WithFailureRateThreshold(c.SlowCallRate, uint(max(c.MinRequests, 1)), c.Window.Duration).Build()
	}
	b.main = mb.Build()
	return b
}

func tripwire() circuitbreaker.Builder[any] {
	return circuitbreaker.NewBuilder[any]().WithDelay(time.Hour)
}

// Rejecting says whether the breaker is open and would refuse a request now.
// It takes no permit, so it can run before the rate limiter and the bulkhead.
func (b *Breaker) Rejecting() bool {
	return State(b.state.Load()) == Open && b.main.RemainingDelay() > 0
}

// Acquire asks for permission to send one request: always granted when
// closed, granted to at most halfOpenRequests probes when half-open. Every
// true must be followed by one Record.
func (b *Breaker) Acquire() bool { return b.main.TryAcquirePermit() }

// Outcome is how a permitted request ended, for the breaker.
type Outcome uint8

const (
	Success Outcome = iota // including business errors (4xx, most gRPC codes)
	Failure                // a system failure, as the failure classification says
	Unknown                // the app went away first: says nothing of the upstream
)

// Record reports how a permitted request ended and how long it took.
func (b *Breaker) Record(o Outcome, took time.Duration) {
	slow := b.slowCall > 0 && took >= b.slowCall
	failed := o == Failure
	if State(b.state.Load()) == HalfOpen {
		// A probe that fails, or is slow, sends the breaker back to open;
		// so does one that proves nothing, since its permit must be spent.
		if failed || slow || o == Unknown {
			b.main.RecordFailure()
		} else {
			b.main.RecordSuccess()
		}
		return
	}
	if o == Unknown {
		return // a closed breaker needs no permit back
	}
	record(b.main, failed)
	if trip(b.consecutive, failed) || trip(b.slow, slow) {
		b.main.Open()
	}
}

// trip records one outcome on a tripwire and says whether it tripped.
func trip(t circuitbreaker.CircuitBreaker[any], failed bool) bool {
	if t == nil {
		return false
	}
	record(t, failed)
	if t.IsOpen() {
		t.Close()
		return true
	}
	return false
}

func record(cb circuitbreaker.CircuitBreaker[any], failed bool) {
	if failed {
		cb.RecordFailure()
	} else {
		cb.RecordSuccess()
	}
}

// resetTripwires empties the tripwires' counts. failsafe-go resets counts on
// a transition only, so a closed tripwire is opened and closed again.
func (b *Breaker) resetTripwires() {
	for _, t := range []circuitbreaker.CircuitBreaker[any]{b.slow, b.consecutive} {
		if t != nil {
			t.Open()
			t.Close()
		}
	}
}

// State is the breaker's state now. An open breaker whose openFor has passed
// reports open until a request asks (Acquire) and turns it half-open.
func (b *Breaker) State() State { return State(b.state.Load()) }
