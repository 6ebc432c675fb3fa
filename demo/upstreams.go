package demo

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"
)

// upstream is one in-process dependency: a real HTTP server on a loopback
// port that answers after the latency its scenario step says, or not at all.
type upstream struct {
	spec  *upstreamSpec
	run   time.Duration // the run's length, which the steps are fractions of
	addr  string
	srv   *http.Server
	start atomic.Pointer[time.Time] // when the load began; nil: not yet
	quit  chan struct{}             // closed on shutdown, to free hung handlers
	done  chan struct{}             // closed when Serve has returned
}

// startUpstreams starts one server per scenario upstream. On error, the ones
// already started are closed.
func startUpstreams(run time.Duration, log *slog.Logger) ([]*upstream, error) {
	ups := make([]*upstream, 0, len(scenario))
	for i := range scenario {
		u, err := startUpstream(&scenario[i], run, log)
		if err != nil {
			closeUpstreams(context.Background(), ups)
			return nil, err
		}
		ups = append(ups, u)
	}
	return ups, nil
}

func startUpstream(spec *upstreamSpec, run time.Duration, log *slog.Logger) (*upstream, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("starting upstream %s: %w", spec.name, err)
	}
	u := &upstream{
		spec: spec,
		run:  run,
		addr: ln.Addr().String(),
		quit: make(chan struct{}),
		done: make(chan struct{}),
	}
	u.srv = &http.Server{
		Handler:           u,
		ReadHeaderTimeout: 5 * time.Second,
		// The sidecar cutting off a hung request shows up here as a broken
		// connection; that is the scenario, not something to warn about.
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	go func() {
		defer close(u.done)
		if err := u.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("demo upstream stopped", "upstream", spec.name, "error", err)
		}
	}()
	return u, nil
}

// begin starts the upstream's timeline: its steps count from t.
func (u *upstream) begin(t time.Time) { u.start.Store(&t) }

// elapsed is how far into its timeline the upstream is.
func (u *upstream) elapsed() time.Duration {
	if t := u.start.Load(); t != nil {
		return time.Since(*t)
	}
	return 0
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, st := u.spec.stepAt(u.elapsed(), u.run)
	if st.hang {
		// Never answer: hold the request until the caller gives up, as a
		// dependency stuck on a lock or a dead database does.
		select {
		case <-r.Context().Done():
		case <-u.quit:
			http.Error(w, "upstream shutting down", http.StatusServiceUnavailable)
		}
		return
	}
	took := withJitter(st.latency)
	t := time.NewTimer(took)
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.Context().Done():
		return
	case <-u.quit:
		http.Error(w, "upstream shutting down", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = fmt.Fprintf(w, "{\"upstream\":%q,\"tookMs\":%d}\n", u.spec.name, took.Milliseconds())
}

// closeUpstreams stops the servers: hung handlers are released first so that
// the graceful shutdown does not wait for them.
func closeUpstreams(ctx context.Context, ups []*upstream) {
	for _, u := range ups {
		close(u.quit)
	}
	for _, u := range ups {
		if err := u.srv.Shutdown(ctx); err != nil {
			_ = u.srv.Close()
		}
		<-u.done
	}
}

// upstreamAddrs maps each upstream's name to its address, for the config.
func upstreamAddrs(ups []*upstream) map[string]string {
	m := make(map[string]string, len(ups))
	for _, u := range ups {
		m[u.spec.name] = u.addr
	}
	return m
}
