// Package outlier ejects the endpoints of an upstream that fail in a row, as
// Envoy's outlier detection does: an endpoint with consecutiveFailures system
// failures is taken out of load balancing for baseEjectionTime × the number
// of times it has been ejected (capped at maxEjectionTime), never more than
// maxEjectionPercent of the endpoints at once (but always at least one), and
// comes back by itself when its time is up.
//
// Written by hand: failsafe-go's policies guard one call path, not a set of
// endpoints chosen between per request.
package outlier

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/watertight/watertight/config"
)

// Endpoint is one endpoint's outlier state. The zero value is in service.
type Endpoint struct {
	consecutive  atomic.Int32
	ejectedUntil atomic.Int64 // unix nanoseconds; 0 or past: in service
	// Under the detector's lock.
	times    int       // ejections, less one for each interval in service
	returned time.Time // when the last ejection ended
}

// Available says whether the endpoint is in service at now (unix nanoseconds).
func (e *Endpoint) Available(now int64) bool { return e.ejectedUntil.Load() <= now }

// EjectedUntilNano is the end of the last ejection in unix nanoseconds, 0 if
// never ejected.
func (e *Endpoint) EjectedUntilNano() int64 { return e.ejectedUntil.Load() }

// EjectedUntil is the end of the last ejection, or the zero time.
func (e *Endpoint) EjectedUntil() time.Time {
	if n := e.ejectedUntil.Load(); n > 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// Detector watches the endpoints of one upstream.
type Detector struct {
	cfg       config.OutlierDetection
	mu        sync.Mutex
	endpoints []*Endpoint
	// OnEject, if set, hears each ejection (for logs).
	OnEject func(e *Endpoint, d time.Duration)
}

// New makes a detector for endpoints (config with defaults set).
func New(cfg config.OutlierDetection, endpoints []*Endpoint) *Detector {
	return &Detector{cfg: cfg, endpoints: endpoints}
}

// Record reports how a request to e ended: failed is a system failure as the
// failure classification says (the sidecar's own rejections never count).
func (d *Detector) Record(e *Endpoint, failed bool, now time.Time) {
	if !failed {
		if e.consecutive.Load() != 0 {
			e.consecutive.Store(0)
		}
		return
	}
	if int(e.consecutive.Add(1)) >= d.cfg.ConsecutiveFailures {
		d.eject(e, now)
	}
}

func (d *Detector) eject(e *Endpoint, now time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	nowNano := now.UnixNano()
	if !e.Available(nowNano) {
		return // a request that started before the ejection
	}
	ejected := 0
	for _, o := range d.endpoints {
		if !o.Available(nowNano) {
			ejected++
		}
	}
	if ejected >= max(1, len(d.endpoints)*d.cfg.MaxEjectionPercent/100) {
		return // keep enough endpoints in service; the count goes on
	}
	e.consecutive.Store(0)
	// Time in service since the last ejection earns forgiveness.
	if d.cfg.Interval.Duration > 0 && !e.returned.IsZero() {
		e.times -= int(now.Sub(e.returned) / d.cfg.Interval.Duration)
	}
	e.times = max(e.times, 0) + 1
	dur := min(time.Duration(e.times)*d.cfg.BaseEjectionTime.Duration, d.cfg.MaxEjectionTime.Duration)
	until := now.Add(dur)
	e.returned = until
	e.ejectedUntil.Store(until.UnixNano())
	if d.OnEject != nil {
		d.OnEject(e, dur)
	}
}
