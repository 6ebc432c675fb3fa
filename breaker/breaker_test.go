package breaker

import (
	"sync"
	"testing"
	"time"

	"github.com/watertight/watertight/config"
)

func cfg(c config.CircuitBreaker) config.CircuitBreaker {
	u := config.Upstream{Name: "u", Endpoints: []config.Endpoint{{Address: "h:1"}}, CircuitBreaker: &c}
	(&config.Config{Upstreams: []config.Upstream{u}}).SetDefaults()
	return *u.CircuitBreaker
}

// recorder keeps the state changes a breaker reports.
type recorder struct {
	mu     sync.Mutex
	events []string
}

func (r *recorder) on(from, to State) {
	r.mu.Lock()
	r.events = append(r.events, StateName(from)+">"+StateName(to))
	r.mu.Unlock()
}

func (r *recorder) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := ""
	for _, e := range r.events {
		s += e + " "
	}
	return s
}

func call(b *Breaker, failed bool, took time.Duration) bool {
	if b.Rejecting() || !b.Acquire() {
		return false
	}
	o := Success
	if failed {
		o = Failure
	}
	b.Record(o, took)
	return true
}

func TestFailureRateOpensOnlyPastMinRequests(t *testing.T) {
	b := New(cfg(config.CircuitBreaker{FailureRate: 0.5, MinRequests: 10, Window: config.D(time.Minute), OpenFor: config.D(time.Hour)}), nil)
	for range 4 {
		call(b, true, 0)
	}
	for range 4 {
		call(b, false, 0)
	}
	if b.State() != Closed {
		t.Fatal("opened before minRequests")
	}
	call(b, false, 0) // 9 requests, 4 failed
	call(b, true, 0)  // 10 requests, 5 failed: 50%
	if b.State() != Open || !b.Rejecting() {
		t.Fatalf("state %s after 50%% failures over 10 requests", StateName(b.State()))
	}
	if call(b, false, 0) {
		t.Fatal("open breaker let a request through")
	}
}

func TestConsecutiveFailuresAlongsideTheRate(t *testing.T) {
	b := New(cfg(config.CircuitBreaker{FailureRate: 0.9, MinRequests: 100, ConsecutiveFailures: 3, OpenFor: config.D(time.Hour)}), nil)
	for range 20 {
		call(b, false, 0)
	}
	call(b, true, 0)
	call(b, true, 0)
	call(b, false, 0) // breaks the run
	call(b, true, 0)
	call(b, true, 0)
	if b.State() != Closed {
		t.Fatal("opened without 3 failures in a row")
	}
	call(b, true, 0)
	if b.State() != Open {
		t.Fatal("3 consecutive failures did not open it")
	}
}

func TestSlowCallRateOpensOnSuccessfulButSlowCalls(t *testing.T) {
	b := New(cfg(config.CircuitBreaker{SlowCall: config.D(100 * time.Millisecond), SlowCallRate: 0.8, MinRequests: 10, OpenFor: config.D(time.Hour)}), nil)
	for range 7 {
		call(b, false, 300*time.Millisecond)
	}
	for range 2 {
		call(b, false, time.Millisecond)
	}
	if b.State() != Closed {
		t.Fatal("opened before minRequests")
	}
	call(b, false, 300*time.Millisecond) // 8 of 10 slow
	if b.State() != Open {
		t.Fatal("80% slow calls did not open it")
	}
	// Failures alone never open a slow-call-only breaker.
	b = New(cfg(config.CircuitBreaker{SlowCall: config.D(time.Second), MinRequests: 5}), nil)
	for range 50 {
		call(b, true, time.Millisecond)
	}
	if b.State() != Closed {
		t.Fatal("a slow-call breaker opened on fast failures")
	}
}

func TestHalfOpenProbesCloseOrReopen(t *testing.T) {
	rec := &recorder{}
	b := New(cfg(config.CircuitBreaker{ConsecutiveFailures: 1, OpenFor: config.D(50 * time.Millisecond), HalfOpenRequests: 2}), rec.on)
	call(b, true, 0)
	if b.State() != Open {
		t.Fatal("not open")
	}
	deadline := time.Now().Add(5 * time.Second)
	for b.Rejecting() {
		if time.Now().After(deadline) {
			t.Fatal("still rejecting long after openFor")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Half-open: exactly two probes are let through at once.
	if !b.Acquire() || !b.Acquire() {
		t.Fatal("half-open refused its probes")
	}
	if b.State() != HalfOpen {
		t.Fatalf("state %s, want half_open", StateName(b.State()))
	}
	if b.Acquire() {
		t.Fatal("half-open let a third request through")
	}
	b.Record(Success, 0)
	b.Record(Failure, 0) // a failed probe re-opens
	if b.State() != Open {
		t.Fatalf("failed probe: state %s, want open", StateName(b.State()))
	}
	for b.Rejecting() {
		if time.Now().After(deadline) {
			t.Fatal("still rejecting long after openFor")
		}
		time.Sleep(5 * time.Millisecond)
	}
	for range 2 {
		if !b.Acquire() {
			t.Fatal("probe refused")
		}
		b.Record(Success, 0)
	}
	if b.State() != Closed {
		t.Fatalf("two good probes: state %s, want closed", StateName(b.State()))
	}
	if got, want := rec.String(), "closed>open open>half_open half_open>open open>half_open half_open>closed "; got != want {
		t.Fatalf("transitions %q, want %q", got, want)
	}
}

func TestClosingResetsTheTripwires(t *testing.T) {
	b := New(cfg(config.CircuitBreaker{FailureRate: 0.99, MinRequests: 1000, ConsecutiveFailures: 3, OpenFor: config.D(10 * time.Millisecond), HalfOpenRequests: 1}), nil)
	call(b, true, 0)
	call(b, true, 0)
	b.main.Open() // opened by something else, with two failures counted
	for b.Rejecting() {
		time.Sleep(2 * time.Millisecond)
	}
	call(b, false, 0) // the probe closes it
	if b.State() != Closed {
		t.Fatal("not closed")
	}
	call(b, true, 0) // one failure: with stale counts this would be the third
	if b.State() != Closed {
		t.Fatal("stale consecutive count survived the close")
	}
}

func BenchmarkClosedBreaker(b *testing.B) {
	br := New(cfg(config.CircuitBreaker{SlowCall: config.D(time.Second)}), nil)
	b.ReportAllocs()
	for b.Loop() {
		if br.Rejecting() || !br.Acquire() {
			b.Fatal("refused")
		}
		br.Record(Success, time.Millisecond)
	}
}

func BenchmarkOpenBreakerRejects(b *testing.B) {
	br := New(cfg(config.CircuitBreaker{ConsecutiveFailures: 1, OpenFor: config.D(time.Hour)}), nil)
	call(br, true, 0)
	b.ReportAllocs()
	for b.Loop() {
		if !br.Rejecting() {
			b.Fatal("not rejecting")
		}
	}
}
