// Package proxy is the data plane: the app-facing listeners and, per
// upstream, the compartment every request to it passes through.
//
// The request path, top to bottom: listener.ServeHTTP (route by listener or
// Host) → compartment.relay for a plain HTTP/1.1 or HTTP/2 request (gRPC
// included), ReverseProxy for the rest (upgrades, Expect, chunked uploads,
// other hop-by-hop fields) → compartment.RoundTrip (deadline → bulkhead → endpoint → forward) →
// exchange (holds the slot until the response body ends, then judges it).
package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/watertight/watertight/bulkhead"
	"github.com/watertight/watertight/composite"
	"github.com/watertight/watertight/config"
	"github.com/watertight/watertight/metrics"
)

// Options configure a Server.
type Options struct {
	Logger  *slog.Logger
	Metrics *metrics.Registry
	// DrainTimeout bounds how long a listener removed by a config change
	// keeps serving its in-flight requests.
	DrainTimeout time.Duration
	// AccessLog receives the listeners' access logs (default: stdout).
	AccessLog io.Writer
	// UpstreamHTTP1 is the HTTP/1.1 client for cleartext upstreams:
	// HTTP1Watertight or HTTP1NetHTTP (default DefaultUpstreamHTTP1).
	UpstreamHTTP1 string
	// UpstreamHTTP2 is the h2c client for cleartext upstreams:
	// HTTP1Watertight (proxy/h2conn) or HTTP1NetHTTP (default
	// DefaultUpstreamHTTP2).
	UpstreamHTTP2 string
	// DownstreamHTTP1 is the HTTP/1.1 server on the app side:
	// HTTP1Watertight (proxy/h1serve, handing what it does not serve to
	// net/http's server) or HTTP1NetHTTP (default DefaultDownstreamHTTP1).
	DownstreamHTTP1 string
	// DownstreamHTTP2 is the h2c server on the app side: HTTP1Watertight
	// (proxy/h2serve) or HTTP1NetHTTP (default DefaultDownstreamHTTP2).
	// It takes effect behind the watertight HTTP/1.1 server only.
	DownstreamHTTP2 string
	// Lane is LaneOn (the default) or LaneOff: whether the plainest
	// bodiless HTTP/1.1 and h2c requests are served below net/http's
	// types, behind the watertight servers (lane.go, lane_h2.go).
	Lane string

	laneTaken func() // told of each request the lane takes (tests)
}

// Server runs the listeners and compartments of the config in force.
// Apply swaps in a new config without dropping a request.
type Server struct {
	log      *slog.Logger
	access   *accessLogger
	metrics  *metrics.Registry
	errorLog *log.Logger
	drain    time.Duration
	pass     http.Handler
	http1    string // the HTTP/1.1 client for cleartext upstreams
	http2    string // the h2c client
	serve1   string // the HTTP/1.1 server on the app side
	serve2   string // the h2c server on the app side
	lane     bool   // the lane (Options.Lane)
	laneTold func() // Options.laneTaken

	mu           sync.Mutex
	cfg          *config.Config
	listeners    map[string]*listener      // by configured address
	pools        map[string]*bulkhead.Pool // by upstream name, or sharedPool
	upstreams    map[string]*upstream      // by upstream name
	compartments []*compartment            // in config order
	retiring     sync.WaitGroup            // listeners draining after a change
	closed       bool
}

const sharedPool = "\x00shared"

// NewServer makes a server with no config; nothing listens until Apply.
func NewServer(o Options) *Server {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Metrics == nil {
		o.Metrics = metrics.New()
	}
	if o.DrainTimeout == 0 {
		o.DrainTimeout = 15 * time.Second
	}
	errorLog := slog.NewLogLogger(o.Logger.Handler(), slog.LevelWarn)
	if o.AccessLog == nil {
		o.AccessLog = os.Stdout
	}
	// Callers check flags; this only keeps a server from starting without
	// a client or server.
	o.UpstreamHTTP1 = http1Choice(o.Logger, "upstream HTTP/1.1 client", o.UpstreamHTTP1, DefaultUpstreamHTTP1)
	o.UpstreamHTTP2 = http1Choice(o.Logger, "upstream h2c client", o.UpstreamHTTP2, DefaultUpstreamHTTP2)
	o.DownstreamHTTP1 = http1Choice(o.Logger, "app-side HTTP/1.1 server", o.DownstreamHTTP1, DefaultDownstreamHTTP1)
	o.DownstreamHTTP2 = http1Choice(o.Logger, "app-side h2c server", o.DownstreamHTTP2, DefaultDownstreamHTTP2)
	s := &Server{
		http1:     o.UpstreamHTTP1,
		http2:     o.UpstreamHTTP2,
		serve1:    o.DownstreamHTTP1,
		serve2:    o.DownstreamHTTP2,
		lane:      o.Lane != LaneOff,
		laneTold:  o.laneTaken,
		log:       o.Logger,
		access:    newAccessLogger(o.AccessLog),
		metrics:   o.Metrics,
		errorLog:  errorLog,
		drain:     o.DrainTimeout,
		pass:      newPassthrough(errorLog),
		listeners: map[string]*listener{},
		pools:     map[string]*bulkhead.Pool{},
		upstreams: map[string]*upstream{},
	}
	o.Metrics.SetPoolSource(s.Pools)
	return s
}

func http1Choice(log *slog.Logger, what, v, def string) string {
	switch v {
	case HTTP1NetHTTP, HTTP1Watertight:
		return v
	case "":
		return def
	}
	log.Error("unknown "+what+", using the default", "choice", v, "default", def)
	return def
}

// Apply makes cfg (validated, with defaults set) the config in force. What
// can fail (reading TLS files, binding new ports) happens first; if it does,
// the previous config keeps serving untouched. Pools are resized in place,
// unchanged connection pools are kept, requests in flight finish on the
// compartment they started on, and removed listeners drain.
func (s *Server) Apply(cfg *config.Config) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("applying config: server is shut down")
	}

	// Prepare: everything that can fail.
	ts := make(map[string]*transports, len(cfg.Upstreams))
	var created []*transports
	undo := func() {
		for _, t := range created {
			t.closeIdle()
		}
	}
	for i := range cfg.Upstreams {
		u := &cfg.Upstreams[i]
		k := keyOf(u, cfg.Budget, s.http1, s.http2)
		if up, ok := s.upstreams[u.Name]; ok && up.transports.key == k {
			ts[u.Name] = up.transports
			continue
		}
		t, err := newTransports(k)
		if err != nil {
			undo()
			return fmt.Errorf("applying config: upstreams[%d].%w", i, err)
		}
		ts[u.Name], created = t, append(created, t)
	}
	opened := map[string]net.Listener{}
	for i, l := range cfg.Listeners {
		if _, ok := s.listeners[l.Address]; ok {
			continue
		}
		ln, err := net.Listen("tcp", l.Address)
		if err != nil {
			for _, o := range opened {
				_ = o.Close()
			}
			undo()
			return fmt.Errorf("applying config: listeners[%d].address: %w", i, err)
		}
		if l.Mode == config.ModeTransparent && !hasListenerOn(cfg, "::1", l.Address) {
			ln = withLoopback6(ln)
		}
		opened[l.Address] = ln
	}

	// Composites compile now, so that the commit below cannot fail on them.
	// Each node call goes through its upstream's compartment of this
	// snapshot, by the same handler the listener uses for the app's own
	// requests; comps is filled by the commit, before any request can reach
	// a plan (the routes that lead to them are published after it).
	comps := make(map[string]*compartment, len(cfg.Upstreams))
	plans := map[string][]*composite.Plan{}
	through := func(name string) http.Handler {
		if cfg.Upstream(name) == nil {
			return nil
		}
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { comps[name].proxy.ServeHTTP(w, r) })
	}
	for i := range cfg.Composites {
		p, err := composite.Compile(&cfg.Composites[i], through, s.metrics)
		if err != nil {
			for _, o := range opened {
				_ = o.Close()
			}
			undo()
			return fmt.Errorf("applying config: composites[%d]: %w", i, err)
		}
		plans[p.Listener()] = append(plans[p.Listener()], p)
	}

	// Commit: nothing below fails.
	pools, limits := s.resizePools(cfg)
	logging := slices.ContainsFunc(cfg.Listeners, func(l config.Listener) bool { return l.AccessLog != nil })
	ups := make(map[string]*upstream, len(cfg.Upstreams))
	order := make([]*compartment, 0, len(cfg.Upstreams))
	hosts := map[string]*compartment{}
	addrs := map[netip.AddrPort][]*compartment{} // for transparent listeners
	for i := range cfg.Upstreams {
		u := &cfg.Upstreams[i]
		up, ok := s.upstreams[u.Name]
		if !ok {
			up = &upstream{name: u.Name, metrics: s.metrics.Upstream(u.Name)}
		}
		if up.transports != nil && up.transports != ts[u.Name] {
			up.transports.closeIdle() // in-flight requests keep their connections
		}
		up.transports = ts[u.Name]
		up.update(u, s.log)
		ups[u.Name] = up
		pool, shared := pools[u.Name], false
		if cfg.Isolation == config.IsolationShared {
			pool, shared = pools[sharedPool], true
		}
		c := newCompartment(u, up, pool, limits[u.Name], shared, s.errorLog)
		c.accessLog = logging
		comps[u.Name] = c
		order = append(order, c)
		for _, h := range u.Hosts {
			if k, err := config.HostKey(h); err == nil {
				hosts[k] = c
			}
		}
		for _, a := range u.Addresses {
			if ap, err := netip.ParseAddrPort(a); err == nil {
				addrs[ap] = append(addrs[ap], c)
			}
		}
		for _, e := range u.Endpoints {
			// The app may dial an endpoint itself (a headless Service).
			if ap, err := netip.ParseAddrPort(e.Address); err == nil && !slices.Contains(addrs[ap], c) {
				addrs[ap] = append(addrs[ap], c)
			}
		}
	}
	live := map[string]bool{}
	for _, lc := range cfg.Listeners {
		rt := &routes{mode: lc.Mode, hosts: hosts, addrs: addrs, accessLog: lc.AccessLog,
			passthrough: cfg.UnknownHosts == config.UnknownHostsPass, passthroughLimit: cfg.PassthroughConnections,
			composites: composite.NewRouter(plans[lc.Name])}
		if lc.Mode == config.ModeUpstream {
			rt.upstream = comps[lc.Upstream]
		}
		l, ok := s.listeners[lc.Address]
		if !ok {
			l = newListener(lc.Name, opened[lc.Address], s.pass, s.access, s.errorLog, s.serve1, s.serve2, s.lane)
			l.laneTaken = s.laneTold
			s.listeners[lc.Address] = l
		}
		l.name = lc.Name
		l.routes.Store(rt)
		if !ok {
			l.start()
			s.log.Info("listening", "listener", lc.Name, "address", l.addr.String(), "mode", lc.Mode)
		}
		live[lc.Address] = true
	}
	for addr, l := range s.listeners {
		if !live[addr] {
			delete(s.listeners, addr)
			s.retire(l)
		}
	}
	for name, up := range s.upstreams {
		if _, ok := ups[name]; !ok {
			up.transports.closeIdle()
			s.metrics.ForgetUpstream(name)
		}
	}
	if s.cfg != nil {
		for _, old := range s.cfg.Composites {
			if !slices.ContainsFunc(cfg.Composites, func(c config.Composite) bool { return c.Name == old.Name }) {
				s.metrics.ForgetComposite(old.Name)
			}
		}
	}
	s.upstreams, s.compartments, s.cfg = ups, order, cfg
	return nil
}

// hasListenerOn says whether cfg has a listener on host at addr's port (a
// configured [::1] twin of a transparent 127.0.0.1 listener).
func hasListenerOn(cfg *config.Config, host, addr string) bool {
	_, port, err := net.SplitHostPort(addr)
	if err != nil || port == "0" {
		return false
	}
	return slices.ContainsFunc(cfg.Listeners, func(l config.Listener) bool {
		h, p, err := net.SplitHostPort(l.Address)
		return err == nil && h == host && p == port
	})
}

// resizePools sizes every pool from the budget and weights, resizing the
// ones that exist in place. Called with mu held.
func (s *Server) resizePools(cfg *config.Config) (map[string]*bulkhead.Pool, map[string]int) {
	type size struct {
		limit, queue int
		wait         time.Duration
	}
	want := map[string]size{}
	if cfg.Isolation == config.IsolationShared {
		queue, wait := 0, time.Duration(0)
		for _, u := range cfg.Upstreams {
			queue += u.Bulkhead.MaxQueue
			wait = max(wait, u.Bulkhead.MaxWait.Duration)
		}
		want[sharedPool] = size{cfg.Budget, queue, wait}
	} else {
		shares := make([]bulkhead.Share, len(cfg.Upstreams))
		for i, u := range cfg.Upstreams {
			b := u.Bulkhead
			shares[i] = bulkhead.Share{Weight: b.Weight, Min: b.MinConcurrent, MaxConcurrent: b.MaxConcurrent}
		}
		for i, limit := range bulkhead.Limits(cfg.Budget, shares) {
			u := cfg.Upstreams[i]
			want[u.Name] = size{limit, u.Bulkhead.MaxQueue, u.Bulkhead.MaxWait.Duration}
		}
	}
	pools := make(map[string]*bulkhead.Pool, len(want))
	limits := make(map[string]int, len(want))
	for name, w := range want {
		limits[name] = w.limit
		if p, ok := s.pools[name]; ok {
			p.Resize(w.limit, w.queue, w.wait)
			pools[name] = p
		} else {
			pools[name] = bulkhead.New(w.limit, w.queue, w.wait)
		}
	}
	s.pools = pools
	return pools, limits
}

// retire lets a listener that left the config finish its requests.
func (s *Server) retire(l *listener) {
	s.retiring.Add(1)
	go func() {
		defer s.retiring.Done()
		ctx, cancel := context.WithTimeout(context.Background(), s.drain)
		defer cancel()
		if err := l.shutdown(ctx); err != nil {
			s.log.Warn("removed listener did not drain in time", "listener", l.name, "error", err)
		}
		s.log.Info("stopped listening", "listener", l.name, "address", l.addr.String())
	}()
}

// Shutdown stops accepting on every listener and waits for in-flight
// requests until ctx ends; then it closes what is left.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	ls := make([]*listener, 0, len(s.listeners))
	for _, l := range s.listeners {
		ls = append(ls, l)
	}
	s.listeners = map[string]*listener{}
	s.mu.Unlock()

	errs := make(chan error, len(ls))
	for _, l := range ls {
		go func() { errs <- l.shutdown(ctx) }()
	}
	var err error
	for range ls {
		err = errors.Join(err, <-errs)
	}
	s.retiring.Wait()
	s.mu.Lock()
	for _, up := range s.upstreams {
		up.transports.closeIdle()
	}
	s.mu.Unlock()
	return err
}

// Ready says whether a config is in force and the server is not stopping.
func (s *Server) Ready() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cfg != nil && !s.closed
}

// Config is the config in force (nil before the first Apply). Do not modify it.
func (s *Server) Config() *config.Config {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cfg
}

// Addr is the address the named listener is bound to (useful with port 0).
func (s *Server) Addr(name string) (net.Addr, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.listeners {
		if l.name == name {
			return l.addr, true
		}
	}
	return nil, false
}

// Pools reads every upstream's pool, in config order.
func (s *Server) Pools() []metrics.PoolReading {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]metrics.PoolReading, len(s.compartments))
	for i, c := range s.compartments {
		out[i] = c.reading()
	}
	return out
}
