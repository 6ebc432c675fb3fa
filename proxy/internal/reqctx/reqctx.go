// Package reqctx is the context of one proxied request: the server's (ended
// when the client goes or the request is done) and the compartment's (the
// same, with the request's deadline).
//
// Written by hand because the standard library's contexts cost a request
// about a dozen allocations in this proxy, a third of all it made on the
// HTTP/1.1 path: a cancelCtx and its lazily made channel per layer, a
// children map in each parent, a timerCtx, and for every context.AfterFunc
// a context of its own plus its closure. A Context is one allocation (its
// deadline's timer comes from a pool); its children and after-functions sit in a
// small array inside it; a child links to a parent Context without a map;
// and it implements the AfterFunc method that the context package looks
// for (its afterFuncer), so contexts the standard library derives from it
// (a hedge's, a per-try timeout's) register with it instead of starting a
// goroutine.
//
// It keeps the context package's contract: Done is closed once, Err is
// context.Canceled or context.DeadlineExceeded (or the parent's error),
// children are canceled with their parent, and an after-function runs in
// its own goroutine.
package reqctx

import (
	"context"
	"net/http/httptrace"
	"sync"
	"sync/atomic"
	"time"
)

// Context is a cancellable context, optionally with a deadline.
type Context struct {
	parent   context.Context // values, and the end it inherits (see New)
	deadline time.Time       // zero: the parent's, if any
	own      bool            // deadline is this context's own (it has a timer)

	mu     sync.Mutex
	done   chan struct{} // made by the first Done; closedChan if it ended before
	err    error
	timer  *deadlineTimer
	up     *Context    // the parent, when it is a *Context: it holds c in its subs
	unlink func() bool // ends the registration with a parent of another kind
	subs   []sub       // children and after-functions, in inline at first
	inline [2]sub      // room for the usual one or two
	nextID uint64      // names after-functions for their stop
}

// sub is a child context (id 0) or an after-function (child nil, id from
// nextID, never 0).
type sub struct {
	child *Context
	f     func()
	id    uint64
}

var closedChan = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

// New returns a context under parent that ends when parent does, when
// Cancel is called, or at deadline if it is not zero and earlier than
// parent's. With a trace, it carries it as httptrace.WithClientTrace
// would, and stays a *Context (a value context over it would cost every
// context the standard library derives from it a goroutine). Cancel must be
// called once the request is done, to release the timer and the parent's
// hold on it.
func New(parent context.Context, deadline time.Time, trace *httptrace.ClientTrace) *Context {
	c := new(Context)
	c.Start(parent, deadline, trace)
	return c
}

// Start readies a zero Context as New would: for one that is part of a
// larger allocation (a server's per-request state). It must not be copied
// after.
func (c *Context) Start(parent context.Context, deadline time.Time, trace *httptrace.ClientTrace) {
	c.parent = parent
	c.subs = c.inline[:0]
	if trace != nil {
		// Values only: the end is still parent's, linked below.
		c.parent = httptrace.WithClientTrace(parent, trace)
	}
	if pd, ok := parent.Deadline(); ok && (deadline.IsZero() || !pd.After(deadline)) {
		deadline = time.Time{} // the parent's comes first: it ends this one
	}
	if !deadline.IsZero() {
		c.deadline, c.own = deadline, true
	}
	c.link(parent)
	if c.own {
		d := time.Until(deadline)
		if d <= 0 {
			c.cancel(context.DeadlineExceeded)
			return
		}
		c.mu.Lock()
		if c.err == nil {
			c.timer = startTimer(c, d)
		}
		c.mu.Unlock()
	}
}

// link makes c end with parent.
func (c *Context) link(parent context.Context) {
	if p := owner(parent); p != nil {
		p.mu.Lock()
		if err := p.err; err != nil {
			p.mu.Unlock()
			c.cancel(err)
			return
		}
		p.subs = append(p.subs, sub{child: c})
		c.up = p
		p.mu.Unlock()
		return
	}
	if parent.Done() == nil {
		return // it never ends (a server's base context)
	}
	if err := parent.Err(); err != nil {
		c.cancel(err)
		return
	}
	stop := context.AfterFunc(parent, func() { c.cancel(parent.Err()) })
	c.mu.Lock()
	if c.err == nil {
		c.unlink = stop
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	stop()
}

// deadlineTimer ends its target at the deadline. Its function is made
// once and it is kept in a pool, so that a deadline costs a request no
// allocation (a timer and its function were two of every request's).
type deadlineTimer struct {
	t      *time.Timer
	target atomic.Pointer[Context]
}

var deadlineTimers sync.Pool

func (dt *deadlineTimer) fire() {
	if c := dt.target.Load(); c != nil {
		c.cancel(context.DeadlineExceeded)
	}
}

// startTimer ends c in d.
func startTimer(c *Context, d time.Duration) *deadlineTimer {
	dt, _ := deadlineTimers.Get().(*deadlineTimer)
	if dt == nil {
		dt = new(deadlineTimer)
		dt.target.Store(c)
		dt.t = time.AfterFunc(d, dt.fire)
		return dt
	}
	dt.target.Store(c)
	dt.t.Reset(d)
	return dt
}

// stop stops dt and, if that kept its function from running, pools it. A
// timer that fired, or is firing, is left to the garbage collector: its
// function may still hold its target.
func (dt *deadlineTimer) stop() {
	if dt.t.Stop() { // Go 1.23 on: a true Stop means fire will not run for this start
		dt.target.Store(nil)
		deadlineTimers.Put(dt)
	}
}

// Cancel ends the context with context.Canceled, if it has not ended.
func (c *Context) Cancel() { c.cancel(context.Canceled) }

func (c *Context) cancel(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	if c.done == nil {
		c.done = closedChan
	} else {
		close(c.done)
	}
	subs := c.subs
	c.subs = nil // later registrations see err instead
	timer, unlink, up := c.timer, c.unlink, c.up
	c.timer, c.unlink, c.up = nil, nil, nil
	c.mu.Unlock()

	if timer != nil {
		timer.stop()
	}
	if unlink != nil {
		unlink()
	}
	if up != nil {
		up.remove(sub{child: c})
	}
	for _, s := range subs {
		if s.child != nil {
			s.child.cancel(err)
		} else {
			go s.f()
		}
	}
}

// remove drops the sub that names (a child by its pointer, an
// after-function by its id), and says whether it found it.
func (c *Context) remove(name sub) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, s := range c.subs {
		if s.child == name.child && s.id == name.id {
			last := len(c.subs) - 1
			c.subs[i] = c.subs[last]
			c.subs[last] = sub{}
			c.subs = c.subs[:last]
			return true
		}
	}
	return false
}

// AfterFunc calls f in its own goroutine once c ends (at once if it has).
// stop unregisters f; it reports whether it kept f from running. It is the
// method context.AfterFunc and the context package's own derived contexts
// use when they find it, so that a context derived from c costs no
// goroutine.
func (c *Context) AfterFunc(f func()) (stop func() bool) {
	id := c.register(f)
	return func() bool { return c.unregister(id) }
}

// register is AfterFunc; it returns what unregister takes, 0 when f was
// started at once.
func (c *Context) register(f func()) uint64 {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		go f()
		return 0
	}
	c.nextID++
	id := c.nextID
	c.subs = append(c.subs, sub{f: f, id: id})
	c.mu.Unlock()
	return id
}

// unregister is AfterFunc's stop for register's id.
func (c *Context) unregister(id uint64) bool {
	return id != 0 && c.remove(sub{id: id})
}

// Deadline is the context's own deadline or, without one, its parent's.
func (c *Context) Deadline() (time.Time, bool) {
	if c.own {
		return c.deadline, true
	}
	return c.parent.Deadline()
}

// Done is closed when the context ends. The channel is made only when
// somebody asks for it.
func (c *Context) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done == nil {
		c.done = make(chan struct{})
	}
	return c.done
}

// Err is nil until the context ends, then why it did.
func (c *Context) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Value is the parent's: a Context carries no values of its own, but names
// itself to owner.
func (c *Context) Value(key any) any {
	if key == (ownerKey{}) {
		return c
	}
	return c.parent.Value(key)
}

func (c *Context) String() string { return "reqctx.Context" }

// A Registration is an after-function registered by Register: AfterFunc's
// stop as a value, which costs no closure when ctx is a *Context.
type Registration struct {
	c    *Context
	id   uint64
	stop func() bool // another kind of context's
}

// Register is context.AfterFunc with its stop as a Registration. For a
// *Context, or value contexts over one, f goes straight into its subs
// (context.AfterFunc would wrap it in a context of its own first); for a
// context that never ends, nothing is registered.
func Register(ctx context.Context, f func()) Registration {
	if c := owner(ctx); c != nil {
		return Registration{c: c, id: c.register(f)}
	}
	if ctx.Done() == nil {
		return Registration{}
	}
	return Registration{stop: context.AfterFunc(ctx, f)}
}

// Stop is AfterFunc's stop: it unregisters the function and reports whether
// that kept it from running. The zero Registration's is false.
func (r Registration) Stop() bool {
	switch {
	case r.c != nil:
		return r.c.unregister(r.id)
	case r.stop != nil:
		return r.stop()
	}
	return false
}

// ownerKey asks a chain of contexts for its nearest *Context.
type ownerKey struct{}

// owner is the *Context whose end is ctx's own: ctx itself, or the nearest
// *Context under contexts that only add values (a client trace). As the
// context package does for its own types, the Done channels tell whether
// anything between them ends ctx on its own (a cancelable context in
// between) or never (context.WithoutCancel).
func owner(ctx context.Context) *Context {
	if c, ok := ctx.(*Context); ok {
		return c
	}
	c, ok := ctx.Value(ownerKey{}).(*Context)
	if !ok || ctx.Done() != c.Done() {
		return nil
	}
	return c
}
