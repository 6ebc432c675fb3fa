package reqctx

import (
	"context"
	"errors"
	"net/http/httptrace"
	"net/textproto"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

type key struct{}

// base is what the servers hand a request: values, no end.
func base() context.Context {
	return context.WithValue(context.Background(), key{}, "v")
}

// ended waits for ctx to end, or fails.
func ended(t *testing.T, ctx context.Context) {
	t.Helper()
	select {
	case <-ctx.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("context did not end")
	}
}

func TestCancel(t *testing.T) {
	c := New(base(), time.Time{}, nil)
	done := c.Done()
	if c.Err() != nil {
		t.Fatalf("Err before Cancel = %v", c.Err())
	}
	if _, ok := c.Deadline(); ok {
		t.Fatal("a context without a deadline reports one")
	}
	if v := c.Value(key{}); v != "v" {
		t.Fatalf("Value = %v, want the parent's", v)
	}
	c.Cancel()
	c.Cancel() // a second Cancel is harmless
	<-done
	if !errors.Is(c.Err(), context.Canceled) {
		t.Fatalf("Err = %v, want Canceled", c.Err())
	}
	if c.Done() != done {
		t.Fatal("Done changed after the end")
	}
	if got := context.Cause(c); !errors.Is(got, context.Canceled) {
		t.Fatalf("Cause = %v", got)
	}
}

func TestDoneAfterEnd(t *testing.T) {
	c := New(base(), time.Time{}, nil)
	c.Cancel() // before anyone asked for Done
	select {
	case <-c.Done():
	default:
		t.Fatal("Done of an ended context is not closed")
	}
}

func TestDeadline(t *testing.T) {
	dl := time.Now().Add(20 * time.Millisecond)
	c := New(base(), dl, nil)
	defer c.Cancel()
	if got, ok := c.Deadline(); !ok || !got.Equal(dl) {
		t.Fatalf("Deadline = %v, %v; want %v", got, ok, dl)
	}
	ended(t, c)
	if !errors.Is(c.Err(), context.DeadlineExceeded) {
		t.Fatalf("Err = %v, want DeadlineExceeded", c.Err())
	}
	if time.Now().Before(dl) {
		t.Fatal("ended before its deadline")
	}
}

// A deadline's timer is pooled once stopped: the next context's deadline
// must still fire, and only for that context.
func TestDeadlineTimerReused(t *testing.T) {
	for i := range 20 {
		first := New(base(), time.Now().Add(time.Hour), nil)
		pooled := first.timer
		first.Cancel() // stops its timer in time: back to the pool
		second := New(base(), time.Now().Add(time.Millisecond), nil)
		ended(t, second)
		if !errors.Is(second.Err(), context.DeadlineExceeded) {
			t.Fatalf("round %d: Err = %v, want DeadlineExceeded", i, second.Err())
		}
		if !errors.Is(first.Err(), context.Canceled) {
			t.Fatalf("round %d: the first context's Err became %v", i, first.Err())
		}
		if second.timer != nil || pooled.target.Load() != nil && pooled.target.Load() != second {
			t.Fatalf("round %d: a timer still points at an ended context", i)
		}
	}
}

func TestDeadlinePassed(t *testing.T) {
	c := New(base(), time.Now().Add(-time.Second), nil)
	if !errors.Is(c.Err(), context.DeadlineExceeded) {
		t.Fatalf("Err = %v, want DeadlineExceeded at once", c.Err())
	}
}

func TestParentDeadlineFirst(t *testing.T) {
	pdl := time.Now().Add(time.Hour)
	parent, cancel := context.WithDeadline(base(), pdl)
	defer cancel()
	c := New(parent, pdl.Add(time.Hour), nil)
	defer c.Cancel()
	if got, ok := c.Deadline(); !ok || !got.Equal(pdl) {
		t.Fatalf("Deadline = %v, %v; want the parent's %v", got, ok, pdl)
	}
	if c.timer != nil {
		t.Fatal("a context the parent ends first started a timer of its own")
	}

	// And a *Context parent's deadline, likewise.
	p2 := New(base(), pdl, nil)
	defer p2.Cancel()
	c2 := New(p2, pdl.Add(time.Hour), nil)
	defer c2.Cancel()
	if got, ok := c2.Deadline(); !ok || !got.Equal(pdl) || c2.timer != nil {
		t.Fatalf("Deadline = %v, %v (timer %v); want the parent's %v and no timer", got, ok, c2.timer != nil, pdl)
	}
}

func TestChildOfContext(t *testing.T) {
	p := New(base(), time.Time{}, nil)
	c := New(p, time.Now().Add(time.Hour), nil)
	if c.Value(key{}) != "v" {
		t.Fatal("the child lost the parent's values")
	}
	p.Cancel()
	ended(t, c)
	if !errors.Is(c.Err(), context.Canceled) {
		t.Fatalf("child's Err = %v, want the parent's Canceled", c.Err())
	}

	// A child that ends first leaves its parent.
	p = New(base(), time.Time{}, nil)
	defer p.Cancel()
	c = New(p, time.Time{}, nil)
	if len(p.subs) != 1 {
		t.Fatalf("parent holds %d subs, want 1", len(p.subs))
	}
	c.Cancel()
	if len(p.subs) != 0 {
		t.Fatalf("parent holds %d subs after the child ended, want 0", len(p.subs))
	}
	if p.Err() != nil {
		t.Fatal("a child's end ended its parent")
	}

	// A child of an ended parent is born ended.
	c = New(c, time.Time{}, nil)
	if !errors.Is(c.Err(), context.Canceled) {
		t.Fatalf("child of an ended context: Err = %v", c.Err())
	}
}

func TestChildOfStdlib(t *testing.T) {
	cause := errors.New("the client went")
	parent, cancel := context.WithCancelCause(base())
	c := New(parent, time.Time{}, nil)
	cancel(cause)
	ended(t, c)
	if !errors.Is(c.Err(), context.Canceled) {
		t.Fatalf("Err = %v, want the parent's Canceled", c.Err())
	}
	if got := context.Cause(c); got != cause {
		t.Fatalf("Cause = %v, want the parent's cause", got)
	}

	// Ending first unregisters from the parent: no goroutine or callback
	// is left behind (goleak checks the goroutines).
	parent, cancel2 := context.WithCancel(base())
	defer cancel2()
	c = New(parent, time.Time{}, nil)
	c.Cancel()
	if c.unlink != nil {
		t.Fatal("the parent's registration outlived the child")
	}

	// An ended parent ends the child at once.
	c = New(parent, time.Time{}, nil)
	cancel2()
	ended(t, c)
	c = New(parent, time.Time{}, nil)
	if c.Err() == nil {
		t.Fatal("child of an ended context is not ended")
	}
}

// Contexts the standard library derives from a Context register through
// its AfterFunc method rather than a goroutine of their own.
func TestStdlibChild(t *testing.T) {
	c := New(base(), time.Time{}, nil)
	child, cancel := context.WithTimeout(c, time.Hour)
	defer cancel()
	if len(c.subs) != 1 || c.subs[0].f == nil {
		t.Fatalf("the derived context did not register an after-function (subs %d)", len(c.subs))
	}
	cancel()
	if len(c.subs) != 0 {
		t.Fatalf("the derived context's end left %d subs", len(c.subs))
	}

	child, cancel = context.WithCancel(c)
	defer cancel()
	c.Cancel()
	ended(t, child)
	if !errors.Is(child.Err(), context.Canceled) {
		t.Fatalf("derived context's Err = %v", child.Err())
	}
}

func TestAfterFunc(t *testing.T) {
	c := New(base(), time.Time{}, nil)
	ran := make(chan struct{})
	stop := c.AfterFunc(func() { close(ran) })
	stopped := c.AfterFunc(func() { t.Error("a stopped after-function ran") })
	if !stopped() {
		t.Fatal("stop before the end = false")
	}
	if stopped() {
		t.Fatal("a second stop = true")
	}
	c.Cancel()
	<-ran
	if stop() {
		t.Fatal("stop after the function ran = true")
	}

	// On an ended context it runs at once.
	ran2 := make(chan struct{})
	if c.AfterFunc(func() { close(ran2) })() {
		t.Fatal("stop on an ended context = true")
	}
	<-ran2

	// Through context.AfterFunc, too.
	c = New(base(), time.Time{}, nil)
	ran3 := make(chan struct{})
	context.AfterFunc(c, func() { close(ran3) })
	c.Cancel()
	<-ran3
}

// AfterFunc and New see through contexts that only add values to the
// *Context under them, but not through one that ends on its own or never.
func TestOwner(t *testing.T) {
	c := New(base(), time.Time{}, nil)
	defer c.Cancel()
	valued := context.WithValue(c, key{}, "w")
	reg := Register(valued, func() {})
	if len(c.subs) != 1 || c.subs[0].f == nil || reg.c != c {
		t.Fatal("Register through a value context did not register with the Context")
	}
	reg.Stop()
	child := New(valued, time.Time{}, nil)
	if child.up != c || child.unlink != nil {
		t.Fatal("New through a value context did not link to the Context")
	}
	child.Cancel()

	// A cancelable context between: its own end must reach f.
	mid, cancel := context.WithCancel(c)
	ran := make(chan struct{})
	Register(context.WithValue(mid, key{}, "w"), func() { close(ran) })
	cancel()
	<-ran
	if c.Err() != nil {
		t.Fatal("the middle context's end ended the Context")
	}
	child = New(context.WithValue(mid, key{}, "w"), time.Time{}, nil)
	if child.up == c || child.Err() == nil {
		t.Fatal("New linked past a cancelable context to the Context")
	}

	// WithoutCancel between: the Context's end must not reach f.
	free := context.WithoutCancel(c)
	child = New(free, time.Time{}, nil)
	if child.up != nil || child.unlink != nil {
		t.Fatal("New linked past WithoutCancel")
	}
	child.Cancel()
}

// A trace is carried as httptrace.WithClientTrace carries it, composed
// with the parent's, and the context stays a *Context.
func TestTrace(t *testing.T) {
	var got []string
	outer := &httptrace.ClientTrace{Got1xxResponse: func(int, textproto.MIMEHeader) error {
		got = append(got, "outer")
		return nil
	}}
	inner := &httptrace.ClientTrace{Got1xxResponse: func(int, textproto.MIMEHeader) error {
		got = append(got, "inner")
		return nil
	}}
	p := New(httptrace.WithClientTrace(base(), outer), time.Time{}, nil)
	defer p.Cancel()
	c := New(p, time.Time{}, inner)
	defer c.Cancel()
	if c.up != p {
		t.Fatal("a traced context did not link to its parent Context")
	}
	tr := httptrace.ContextClientTrace(c)
	if tr == nil {
		t.Fatal("no trace in the context")
	}
	if err := tr.Got1xxResponse(103, nil); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0] != "inner" || got[1] != "outer" {
		t.Fatalf("hooks called: %v, want inner then outer", got)
	}
	if c.Value(key{}) != "v" {
		t.Fatal("the trace hid the parent's values")
	}
}

func TestRegister(t *testing.T) {
	c := New(base(), time.Time{}, nil)
	ran := make(chan struct{})
	r := Register(c, func() { close(ran) })
	stopped := Register(c, func() { t.Error("a stopped registration ran") })
	if !stopped.Stop() || stopped.Stop() {
		t.Fatal("Stop before the end: want true once, then false")
	}
	c.Cancel()
	<-ran
	if r.Stop() {
		t.Fatal("Stop after the function ran = true")
	}
	ran2 := make(chan struct{})
	if Register(c, func() { close(ran2) }).Stop() {
		t.Fatal("Stop of a registration on an ended context = true")
	}
	<-ran2

	// Another kind of context: through context.AfterFunc.
	std, cancel := context.WithCancel(base())
	ran3 := make(chan struct{})
	Register(std, func() { close(ran3) })
	if Register(std, func() { t.Error("a stopped registration ran") }).Stop() != true {
		t.Fatal("Stop on a standard context = false")
	}
	cancel()
	<-ran3

	if (Registration{}).Stop() {
		t.Fatal("the zero Registration's Stop = true")
	}
	// A context that never ends: nothing to register, nothing to stop.
	if r := Register(base(), func() { t.Error("ran for a context that never ends") }); r.c != nil || r.stop != nil || r.Stop() {
		t.Fatal("Register on a context that never ends registered something")
	}
}

// More subs than the inline room, removed out of order.
func TestManySubs(t *testing.T) {
	c := New(base(), time.Time{}, nil)
	var wg sync.WaitGroup
	var stops []func() bool
	for range 5 {
		wg.Add(1)
		stops = append(stops, c.AfterFunc(wg.Done))
	}
	children := []*Context{New(c, time.Time{}, nil), New(c, time.Time{}, nil), New(c, time.Time{}, nil)}
	children[1].Cancel()
	if !stops[3]() || !stops[0]() {
		t.Fatal("stop of a registered function = false")
	}
	wg.Add(-2)
	if len(c.subs) != 5 {
		t.Fatalf("subs = %d, want 5", len(c.subs))
	}
	c.Cancel()
	wg.Wait()
	for i, ch := range children {
		if ch.Err() == nil {
			t.Fatalf("child %d did not end", i)
		}
	}
}

// Every way to end, at once, under the race detector.
func TestConcurrentEnds(t *testing.T) {
	for range 200 {
		p := New(base(), time.Time{}, nil)
		c := New(p, time.Now().Add(time.Duration(time.Now().UnixNano()%50)*time.Microsecond), nil)
		var wg sync.WaitGroup
		ran := make(chan struct{}, 1)
		wg.Go(func() { p.Cancel() })
		wg.Go(func() { c.Cancel() })
		wg.Go(func() { <-c.Done() })
		var stop func() bool
		wg.Go(func() { stop = c.AfterFunc(func() { ran <- struct{}{} }) })
		wg.Wait()
		if !stop() {
			<-ran // not stopped: it runs
		}
		if c.Err() == nil || p.Err() == nil {
			t.Fatal("not ended")
		}
	}
}

// What the request path pays: one allocation for a context, and for one with
// a deadline its timer and the timer's function; an after-function costs
// its stop.
func TestAllocations(t *testing.T) {
	b := base()
	dl := time.Now().Add(time.Hour)
	f := func() {}
	tr := &httptrace.ClientTrace{}
	for _, tc := range []struct {
		name string
		want float64
		run  func()
	}{
		{"New", 1, func() { New(b, time.Time{}, nil).Cancel() }},
		{"New with a deadline", 1, func() { New(b, dl, nil).Cancel() }},
		{"child", 2, func() {
			p := New(b, time.Time{}, nil)
			New(p, time.Time{}, nil).Cancel()
			p.Cancel()
		}},
		{"New with a trace", 2, func() { New(b, time.Time{}, tr).Cancel() }},
		{"Register", 1, func() {
			c := New(b, time.Time{}, nil)
			Register(c, f).Stop()
			c.Cancel()
		}},
		{"AfterFunc", 2, func() {
			c := New(b, time.Time{}, nil)
			c.AfterFunc(f)()
			c.Cancel()
		}},
	} {
		if got := testing.AllocsPerRun(100, tc.run); got > tc.want {
			t.Errorf("%s: %v allocations, want at most %v", tc.name, got, tc.want)
		}
	}
}

func BenchmarkRequest(b *testing.B) {
	// The request path's pattern: a server's context, the compartment's
	// with a deadline, a transport's after-function.
	bg := base()
	b.ReportAllocs()
	for b.Loop() {
		p := New(bg, time.Time{}, nil)
		c := New(p, time.Now().Add(time.Second), nil)
		stop := c.AfterFunc(func() {})
		stop()
		c.Cancel()
		p.Cancel()
	}
}

func BenchmarkStdlibRequest(b *testing.B) {
	bg := base()
	b.ReportAllocs()
	for b.Loop() {
		p, cancel := context.WithCancel(bg)
		c, cancel2 := context.WithDeadline(p, time.Now().Add(time.Second))
		stop := context.AfterFunc(c, func() {})
		stop()
		cancel2()
		cancel()
	}
}
