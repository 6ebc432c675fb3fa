package bulkhead

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestLimitsFromBudgetAndWeights(t *testing.T) {
	cases := []struct {
		name   string
		budget int
		shares []Share
		want   []int
	}{
		{"design example: cap 8, two weight 1", 40,
			[]Share{{MaxConcurrent: 8}, {Weight: 1, Min: 1}, {Weight: 1, Min: 1}}, []int{8, 16, 16}},
		{"weights 5:3:2", 100,
			[]Share{{Weight: 5, Min: 1}, {Weight: 3, Min: 1}, {Weight: 2, Min: 1}}, []int{50, 30, 20}},
		{"floor, not round", 10,
			[]Share{{Weight: 1, Min: 1}, {Weight: 1, Min: 1}, {Weight: 1, Min: 1}}, []int{3, 3, 3}},
		{"minConcurrent lifts a small weight", 20,
			[]Share{{Weight: 19, Min: 1}, {Weight: 1, Min: 4}}, []int{19, 4}},
		{"caps exhaust the budget: mins still apply", 10,
			[]Share{{MaxConcurrent: 10}, {Weight: 1, Min: 2}}, []int{10, 2}},
		{"all capped", 10, []Share{{MaxConcurrent: 3}, {MaxConcurrent: 7}}, []int{3, 7}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := Limits(c.budget, c.shares)
			for i := range c.want {
				if got[i] != c.want[i] {
					t.Fatalf("Limits(%d, %+v) = %v, want %v", c.budget, c.shares, got, c.want)
				}
			}
		})
	}
}

func TestAcquireUpToLimitThenFull(t *testing.T) {
	p := New(2, 0, 0)
	ctx := context.Background()
	for range 2 {
		if _, err := p.Acquire(ctx); err != nil {
			t.Fatalf("acquire within limit: %v", err)
		}
	}
	if _, err := p.Acquire(ctx); !errors.Is(err, ErrFull) {
		t.Fatalf("third acquire with no queue: got %v, want ErrFull", err)
	}
	if p.TryAcquire() {
		t.Fatal("TryAcquire succeeded on a full pool")
	}
	p.Release()
	if !p.TryAcquire() {
		t.Fatal("TryAcquire failed after a release")
	}
	if s := p.Stats(); s.Active != 2 || s.Limit != 2 {
		t.Fatalf("stats = %+v", s)
	}
}

// waitQueued polls until the pool reports n waiters.
func waitQueued(t *testing.T, p *Pool, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for p.Stats().Queued != n {
		if time.Now().After(deadline) {
			t.Fatalf("queued = %d, want %d", p.Stats().Queued, n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestQueueIsFIFOAndBounded(t *testing.T) {
	p := New(1, 3, time.Minute)
	ctx := context.Background()
	if _, err := p.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	order := make(chan int, 3)
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := p.Acquire(ctx); err != nil {
				t.Errorf("waiter %d: %v", i, err)
				return
			}
			order <- i
			p.Release()
		}()
		waitQueued(t, p, i+1) // enqueue strictly in order
	}
	if _, err := p.Acquire(ctx); !errors.Is(err, ErrFull) {
		t.Fatalf("acquire with a full queue: got %v, want ErrFull", err)
	}
	p.Release()
	wg.Wait()
	close(order)
	want := 0
	for got := range order {
		if got != want {
			t.Fatalf("waiter %d got the slot, want %d (FIFO)", got, want)
		}
		want++
	}
	if s := p.Stats(); s.Active != 0 || s.Queued != 0 {
		t.Fatalf("after all released: %+v", s)
	}
}

func TestQueueWaitBoundedByMaxWaitAndDeadline(t *testing.T) {
	p := New(1, 10, 20*time.Millisecond)
	if _, err := p.Acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	waited, err := p.Acquire(context.Background())
	if !errors.Is(err, ErrQueueTimeout) || waited < 20*time.Millisecond {
		t.Fatalf("maxWait: got %v after %v, want ErrQueueTimeout after >= 20ms", err, waited)
	}
	p.Resize(1, 10, time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if _, err := p.Acquire(ctx); !errors.Is(err, ErrQueueTimeout) {
		t.Fatalf("deadline while queued: got %v, want ErrQueueTimeout", err)
	}
	ctx2, cancel2 := context.WithCancel(context.Background())
	go func() { waitQueued(t, p, 1); cancel2() }()
	if _, err := p.Acquire(ctx2); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled while queued: got %v, want context.Canceled", err)
	}
	if s := p.Stats(); s.Queued != 0 || s.Active != 1 {
		t.Fatalf("abandoned waiters left state behind: %+v", s)
	}
}

func TestResizeInPlace(t *testing.T) {
	p := New(2, 5, time.Minute)
	ctx := context.Background()
	for range 2 {
		if _, err := p.Acquire(ctx); err != nil {
			t.Fatal(err)
		}
	}
	got := make(chan error, 2)
	for range 2 {
		go func() { _, err := p.Acquire(ctx); got <- err }()
	}
	waitQueued(t, p, 2)
	// Growing hands the new slots to the waiters at once.
	p.Resize(4, 5, time.Minute)
	for range 2 {
		if err := <-got; err != nil {
			t.Fatal(err)
		}
	}
	if s := p.Stats(); s.Active != 4 || s.Limit != 4 {
		t.Fatalf("after growing: %+v", s)
	}
	// Shrinking below active keeps every holder; new requests wait until
	// active is under the new limit.
	p.Resize(1, 5, time.Minute)
	go func() { _, err := p.Acquire(ctx); got <- err }()
	waitQueued(t, p, 1)
	for range 3 {
		p.Release() // 4 → 1 active: still at the limit
	}
	if s := p.Stats(); s.Queued != 1 || s.Active != 1 {
		t.Fatalf("after shrinking and three releases: %+v (the waiter must still wait)", s)
	}
	p.Release() // now the slot passes to the waiter
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	if s := p.Stats(); s.Active != 1 || s.Queued != 0 {
		t.Fatalf("final: %+v", s)
	}
	p.Release()
}

func TestConcurrentUseNeverExceedsLimit(t *testing.T) {
	const limit = 4
	p := New(limit, 1000, time.Minute)
	var mu sync.Mutex
	inFlight, peak := 0, 0
	var wg sync.WaitGroup
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				if _, err := p.Acquire(context.Background()); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				inFlight++
				peak = max(peak, inFlight)
				mu.Unlock()
				mu.Lock()
				inFlight--
				mu.Unlock()
				p.Release()
			}
		}()
	}
	wg.Wait()
	if peak > limit {
		t.Fatalf("peak in flight %d > limit %d", peak, limit)
	}
	if s := p.Stats(); s.Active != 0 || s.Queued != 0 {
		t.Fatalf("after the storm: %+v", s)
	}
}

func BenchmarkAcquireRelease(b *testing.B) {
	p := New(1<<20, 0, 0)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := p.Acquire(ctx); err != nil {
			b.Fatal(err)
		}
		p.Release()
	}
}

func BenchmarkAcquireReleaseParallel(b *testing.B) {
	p := New(1<<20, 0, 0)
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := p.Acquire(ctx); err != nil {
				b.Fatal(err)
			}
			p.Release()
		}
	})
}
