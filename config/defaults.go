package config

import (
	"math"
	"time"
)

// Defaults, as DESIGN.md and the README's config reference state them.
const (
	DefaultAdminAddress  = "127.0.0.1:15000"
	DefaultBudget        = 1024
	DefaultTimeout       = 15 * time.Second
	DefaultWeight        = 1
	DefaultMinConcurrent = 1
	// DefaultPassthroughConnections per destination.
	DefaultPassthroughConnections = 256
	UnknownHostsReject            = "reject"
	UnknownHostsPass              = "passthrough"
	IsolationPerUpstream          = "per-upstream"
	IsolationShared               = "shared"
)

// SetDefaults fills every field the config left out. It is idempotent.
func (c *Config) SetDefaults() {
	if c.Admin.Address == "" {
		c.Admin.Address = DefaultAdminAddress
	}
	if c.Budget == 0 {
		c.Budget = DefaultBudget
	}
	if c.UnknownHosts == "" {
		c.UnknownHosts = UnknownHostsReject
	}
	if c.Isolation == "" {
		c.Isolation = IsolationPerUpstream
	}
	if c.PassthroughConnections == 0 {
		c.PassthroughConnections = DefaultPassthroughConnections
	}
	for i := range c.Listeners {
		l := &c.Listeners[i]
		if l.Mode == "" {
			l.Mode = ModeProxy
			if l.Upstream != "" {
				l.Mode = ModeUpstream
			}
		}
		if l.AccessLog != nil && l.AccessLog.Sample == 0 {
			l.AccessLog.Sample = 1
		}
	}
	for i := range c.Upstreams {
		c.Upstreams[i].setDefaults()
	}
	for i := range c.Composites {
		c.Composites[i].setDefaults()
	}
}

func (u *Upstream) setDefaults() {
	if len(u.Hosts) == 0 && u.Name != "" {
		u.Hosts = []string{u.Name}
	}
	if u.Protocol == "" {
		u.Protocol = ProtocolAuto
	}
	if u.LoadBalancer == "" {
		u.LoadBalancer = LBLeastRequest
	}
	if !u.Timeout.IsSet() {
		u.Timeout = D(DefaultTimeout)
	}
	b := &u.Bulkhead
	if b.Weight == 0 {
		b.Weight = DefaultWeight
	}
	if b.MinConcurrent == 0 {
		b.MinConcurrent = DefaultMinConcurrent
	}
	if !b.MaxWait.IsSet() {
		b.MaxWait = u.Timeout
	}
	for i := range u.Endpoints {
		if u.Endpoints[i].Weight == 0 {
			u.Endpoints[i].Weight = 1
		}
	}
	u.setPolicyDefaults()
}

// Policy defaults follow Envoy's where it has one.
func (u *Upstream) setPolicyDefaults() {
	if r := u.Retry; r != nil {
		if len(r.On) == 0 {
			r.On = []string{"connect-failure", "refused-stream", "reset", "503", "unavailable"}
		}
		if r.Budget == 0 {
			r.Budget = 0.2
		}
		if r.BufferLimit == 0 {
			r.BufferLimit = 64 << 10
		}
		defaultDuration(&r.Backoff.Base, 25*time.Millisecond)
		defaultDuration(&r.Backoff.Max, max(250*time.Millisecond, r.Backoff.Base.Duration))
	}
	if h := u.Hedge; h != nil {
		if h.MaxHedges == 0 {
			h.MaxHedges = 1
		}
		defaultDuration(&h.Delay, 10*time.Millisecond)
	}
	if cb := u.CircuitBreaker; cb != nil {
		if cb.FailureRate == 0 && cb.ConsecutiveFailures == 0 && cb.SlowCall.Duration == 0 {
			cb.FailureRate = 0.5
		}
		if cb.MinRequests == 0 {
			cb.MinRequests = 20
		}
		if cb.HalfOpenRequests == 0 {
			cb.HalfOpenRequests = 3
		}
		if cb.SlowCall.Duration > 0 && cb.SlowCallRate == 0 {
			cb.SlowCallRate = 1
		}
		defaultDuration(&cb.Window, 10*time.Second)
		defaultDuration(&cb.OpenFor, 5*time.Second)
	}
	if od := u.OutlierDetection; od != nil {
		if od.ConsecutiveFailures == 0 {
			od.ConsecutiveFailures = 5
		}
		if od.MaxEjectionPercent == 0 {
			od.MaxEjectionPercent = 10
		}
		defaultDuration(&od.Interval, 10*time.Second)
		defaultDuration(&od.BaseEjectionTime, 30*time.Second)
		defaultDuration(&od.MaxEjectionTime, max(300*time.Second, od.BaseEjectionTime.Duration))
	}
	if rl := u.RateLimit; rl != nil && rl.Burst == 0 {
		rl.Burst = max(1, int(math.Ceil(rl.RPS/10))) // a tenth of a second's worth
	}
}

func defaultDuration(d *Duration, def time.Duration) {
	if !d.IsSet() {
		*d = D(def)
	}
}
