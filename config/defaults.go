package config

import "time"

// Defaults, as DESIGN.md and the README's config reference state them.
const (
	DefaultAdminAddress  = "127.0.0.1:15000"
	DefaultBudget        = 1024
	DefaultTimeout       = 15 * time.Second
	DefaultWeight        = 1
	DefaultMinConcurrent = 1
	UnknownHostsReject   = "reject"
	UnknownHostsPass     = "passthrough"
	IsolationPerUpstream = "per-upstream"
	IsolationShared      = "shared"
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
	for i := range c.Listeners {
		l := &c.Listeners[i]
		if l.Mode == "" {
			l.Mode = ModeProxy
			if l.Upstream != "" {
				l.Mode = ModeUpstream
			}
		}
	}
	for i := range c.Upstreams {
		c.Upstreams[i].setDefaults()
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
}
