// Package sidecar assembles the running process: the config source, the data
// plane (proxy), the admin port, reloads and the graceful stop.
package sidecar

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/watertight/watertight/admin"
	"github.com/watertight/watertight/config"
	"github.com/watertight/watertight/metrics"
	"github.com/watertight/watertight/proxy"
	"github.com/watertight/watertight/xds"
)

// Options configure a sidecar.
type Options struct {
	// ConfigPath is the YAML file to run and watch. Config, if set instead,
	// is run as given (the demo's embedded config) and never reloaded.
	// XDSAddress, if set instead, is the ADS control plane to take the
	// config from, as NodeID.
	ConfigPath string
	Config     *config.Config
	XDSAddress string
	NodeID     string
	// AdminAddress overrides admin.address from the config.
	AdminAddress string
	// DrainTimeout bounds the graceful stop (default 15s).
	DrainTimeout time.Duration
	// UpstreamHTTP1 is the HTTP/1.1 client for cleartext upstreams
	// (proxy.Options.UpstreamHTTP1).
	UpstreamHTTP1 string
	// UpstreamHTTP2 is the h2c client for cleartext upstreams
	// (proxy.Options.UpstreamHTTP2).
	UpstreamHTTP2 string
	// DownstreamHTTP1 is the app-side HTTP/1.1 server
	// (proxy.Options.DownstreamHTTP1).
	DownstreamHTTP1 string
	// DownstreamHTTP2 is the app-side h2c server
	// (proxy.Options.DownstreamHTTP2).
	DownstreamHTTP2 string
	// Lane is proxy.Options.Lane.
	Lane   string
	Logger *slog.Logger
}

// Sidecar is a running sidecar.
type Sidecar struct {
	opts    Options
	log     *slog.Logger
	metrics *metrics.Registry
	proxy   *proxy.Server
	admin   *admin.Server

	reloadMu sync.Mutex // one reload at a time
	mu       sync.Mutex
	applied  applied

	stopWatch context.CancelFunc
	watchDone chan struct{}
}

type applied struct {
	cfg     *config.Config
	version string
	source  string
	at      time.Time
}

// Start loads the config, starts the listeners and the admin port, and (for
// a config file) starts watching the file. A config that does not load is an
// error here: at start there is no last good config to keep.
func Start(o Options) (*Sidecar, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.DrainTimeout == 0 {
		o.DrainTimeout = 15 * time.Second
	}
	cfg, source := o.Config, "embedded"
	switch {
	case o.XDSAddress != "":
		if o.NodeID == "" {
			return nil, errors.New("starting sidecar: --xds needs --node-id")
		}
		cfg, source = nil, "xds:"+o.XDSAddress
	case o.ConfigPath != "":
		var err error
		if cfg, err = config.Load(o.ConfigPath); err != nil {
			return nil, err
		}
		source = "file:" + o.ConfigPath
	case cfg == nil:
		return nil, errors.New("starting sidecar: no config (give --config FILE or --xds ADDR)")
	}
	s := &Sidecar{opts: o, log: o.Logger, metrics: metrics.New(), watchDone: make(chan struct{})}
	s.proxy = proxy.NewServer(proxy.Options{
		Logger: o.Logger, Metrics: s.metrics, DrainTimeout: o.DrainTimeout, UpstreamHTTP1: o.UpstreamHTTP1, UpstreamHTTP2: o.UpstreamHTTP2, DownstreamHTTP1: o.DownstreamHTTP1, DownstreamHTTP2: o.DownstreamHTTP2, Lane: o.Lane,
	})
	adminAddr := config.DefaultAdminAddress
	if cfg != nil {
		// From xDS the config arrives later: until it does, /ready says no.
		if err := s.apply(cfg, source); err != nil {
			return nil, err
		}
		adminAddr = cfg.Admin.Address
	}
	if o.AdminAddress != "" {
		adminAddr = o.AdminAddress
	}
	var err error
	if s.admin, err = admin.Start(adminAddr, admin.Handler(s.metrics.Prometheus(), s)); err != nil {
		_ = s.proxy.Shutdown(context.Background())
		return nil, err
	}
	s.log.Info("admin listening", "address", s.admin.Addr().String())
	ctx, cancel := context.WithCancel(context.Background())
	s.stopWatch = cancel
	switch {
	case o.XDSAddress != "":
		client := xds.NewClient(xds.ClientOptions{
			Address:    o.XDSAddress,
			NodeID:     o.NodeID,
			Apply:      func(cfg *config.Config) error { return s.applyIfChanged(cfg, source) },
			Logger:     o.Logger,
			Registerer: s.metrics.Prometheus(),
		})
		go func() {
			defer close(s.watchDone)
			_ = client.Run(ctx)
		}()
	case o.ConfigPath != "":
		go s.watch(ctx)
	default:
		close(s.watchDone)
	}
	return s, nil
}

func (s *Sidecar) apply(cfg *config.Config, source string) error {
	v := cfg.Version()
	// Held across the proxy's switch, so that whoever has seen the new
	// routes answer also reads the new version (config_dump, /ready).
	s.mu.Lock()
	if err := s.proxy.Apply(cfg); err != nil {
		s.mu.Unlock()
		return err
	}
	s.applied = applied{cfg: cfg, version: v, source: source, at: time.Now()}
	s.mu.Unlock()
	s.metrics.ConfigApplied(v, source)
	s.log.Info("config applied", "version", v, "source", source,
		"listeners", len(cfg.Listeners), "upstreams", len(cfg.Upstreams))
	for _, u := range cfg.Upstreams {
		if len(u.Endpoints) == 0 {
			s.log.Warn("upstream has no endpoints: its requests get 503 upstream_unavailable", "upstream", u.Name)
		}
	}
	return nil
}

// applyIfChanged applies cfg unless it is the config in force already.
func (s *Sidecar) applyIfChanged(cfg *config.Config, source string) error {
	if s.Version() == cfg.Version() {
		return nil
	}
	return s.apply(cfg, source)
}

// Reload reads the config file again and applies it. A file that fails to
// load or apply is logged and counted, and the config in force keeps serving.
func (s *Sidecar) Reload() error {
	if s.opts.ConfigPath == "" {
		return errors.New("reloading: the config is embedded, not a file")
	}
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	cfg, err := config.Load(s.opts.ConfigPath)
	if err == nil {
		s.mu.Lock()
		same := s.applied.version == cfg.Version()
		s.mu.Unlock()
		if same {
			return nil
		}
		err = s.apply(cfg, "file:"+s.opts.ConfigPath)
	}
	s.metrics.Reload(err == nil)
	if err != nil {
		s.log.Error("config reload failed; the last good config keeps serving",
			"file", s.opts.ConfigPath, "error", err, "version_in_force", s.Version())
		return fmt.Errorf("reloading config: %w", err)
	}
	return nil
}

// Version is the version of the config in force.
func (s *Sidecar) Version() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.applied.version
}

// Ready implements admin.Source.
func (s *Sidecar) Ready() bool { return s.proxy.Ready() && s.Version() != "" }

// ConfigDump implements admin.Source.
func (s *Sidecar) ConfigDump() any {
	s.mu.Lock()
	defer s.mu.Unlock()
	return struct {
		Version   string         `json:"version"`
		Source    string         `json:"source"`
		AppliedAt time.Time      `json:"appliedAt"`
		Config    *config.Config `json:"config"`
	}{s.applied.version, s.applied.source, s.applied.at, s.applied.cfg}
}

// Proxy is the data plane.
func (s *Sidecar) Proxy() *proxy.Server { return s.proxy }

// Metrics is the metrics registry.
func (s *Sidecar) Metrics() *metrics.Registry { return s.metrics }

// AdminAddr is the admin port's bound address.
func (s *Sidecar) AdminAddr() net.Addr { return s.admin.Addr() }

// Shutdown is the graceful stop: /ready turns 503 and the listeners stop
// accepting at once, in-flight requests get until ctx ends to finish, then
// the admin port closes.
func (s *Sidecar) Shutdown(ctx context.Context) error {
	s.stopWatch()
	<-s.watchDone
	err := s.proxy.Shutdown(ctx)
	if err != nil {
		s.log.Warn("drain timed out; closing the requests still in flight", "error", err)
	}
	actx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	return errors.Join(err, s.admin.Shutdown(actx))
}

// Run starts a sidecar and serves until ctx ends or SIGTERM/SIGINT arrives,
// reloading on SIGHUP; then it drains for up to DrainTimeout. A drain that
// runs out of time is logged, not an error: the process still exits 0.
func Run(ctx context.Context, o Options) error {
	// Signals first: once /ready answers, a SIGHUP must not kill the process.
	stop := make(chan os.Signal, 1)
	hup := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(stop)
	defer signal.Stop(hup)
	s, err := Start(o)
	if err != nil {
		return err
	}
	for waiting := true; waiting; {
		select {
		case <-ctx.Done():
			waiting = false
		case sig := <-stop:
			s.log.Info("stopping: draining in-flight requests", "signal", sig.String(), "drain_timeout", s.opts.DrainTimeout)
			waiting = false
		case <-hup:
			_ = s.Reload() // logged and counted by Reload
		}
	}
	dctx, cancel := context.WithTimeout(context.Background(), s.opts.DrainTimeout)
	defer cancel()
	if err := s.Shutdown(dctx); err != nil {
		s.log.Warn("stopped with requests cut off", "error", err)
	}
	s.log.Info("stopped")
	return nil
}
