package h1conn

import (
	"context"
	"time"
)

// get takes the newest idle connection to addr that is still alive, or
// dials one. Newest first (LIFO) keeps the pool small under falling load:
// the oldest connections age out instead of being kept warm by rotation.
func (t *Transport) get(ctx context.Context, addr string) (*conn, error) {
	now := time.Now()
	for {
		t.mu.Lock()
		idle := t.pools[addr]
		if len(idle) == 0 {
			t.mu.Unlock()
			break
		}
		c := idle[len(idle)-1]
		idle[len(idle)-1] = nil
		t.pools[addr] = idle[:len(idle)-1]
		t.mu.Unlock()
		if now.Sub(c.idleSince) < t.idleTimeout() && c.alive() {
			c.reused = true
			return c, nil
		}
		c.close()
	}
	return t.dial(ctx, addr)
}

// put makes c idle, or closes it if its endpoint has MaxIdlePerHost idle
// already.
func (t *Transport) put(c *conn) {
	c.idleSince = time.Now()
	t.mu.Lock()
	idle := t.pools[c.addr]
	if len(idle) >= t.MaxIdlePerHost {
		t.mu.Unlock()
		c.close()
		return
	}
	if t.pools == nil {
		t.pools = make(map[string][]*conn)
	}
	t.pools[c.addr] = append(idle, c)
	if t.sweeper == nil {
		// A timer, not a goroutine: idle connections cost nothing to
		// watch, and nothing runs while none are idle.
		t.sweeper = time.AfterFunc(t.idleTimeout(), t.sweep)
	}
	t.mu.Unlock()
}

// sweep closes the connections idle for longer than IdleTimeout, and
// forgets endpoints with none left (an endpoint removed from the upstream
// leaves no trace).
func (t *Transport) sweep() {
	now := time.Now()
	var expired []*conn
	t.mu.Lock()
	oldest := now
	for addr, idle := range t.pools {
		kept := idle[:0]
		for _, c := range idle {
			if now.Sub(c.idleSince) >= t.idleTimeout() {
				expired = append(expired, c)
				continue
			}
			kept = append(kept, c)
			oldest = minTime(oldest, c.idleSince)
		}
		clear(idle[len(kept):])
		if len(kept) == 0 {
			delete(t.pools, addr)
		} else {
			t.pools[addr] = kept
		}
	}
	if len(t.pools) == 0 {
		t.sweeper = nil
	} else {
		t.sweeper.Reset(oldest.Add(t.idleTimeout()).Sub(now))
	}
	t.mu.Unlock()
	for _, c := range expired {
		c.close()
	}
}

// CloseIdleConnections closes the idle connections, this transport's and
// Fallback's. Connections in use go back to the pool when their request
// ends, as with net/http's Transport.
func (t *Transport) CloseIdleConnections() {
	t.mu.Lock()
	pools := t.pools
	t.pools = nil
	if t.sweeper != nil {
		t.sweeper.Stop()
		t.sweeper = nil
	}
	t.mu.Unlock()
	for _, idle := range pools {
		for _, c := range idle {
			c.close()
		}
	}
	if ci, ok := t.Fallback.(interface{ CloseIdleConnections() }); ok {
		ci.CloseIdleConnections()
	}
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
