package demo

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/watertight/watertight/proxy"
)

// app is the service whose dependencies the sidecar protects. Like real
// services it has a fixed number of workers (threads, connections, a
// goroutine limit) shared by all its outbound calls, and its traffic does
// not slow down because a dependency did: calls arrive at a fixed rate
// (open loop), and a call's latency counts from the moment it was due, so
// time spent waiting for a free worker is part of it.
type app struct {
	specs   []upstreamSpec
	load    load
	urls    []string // per upstream, on the sidecar's listener
	log     *slog.Logger
	client  *http.Client
	rec     *recorder
	backlog chan call
}

// call is one outbound call the app has to make.
type call struct {
	up  int       // index into specs
	due time.Time // when the app wanted to send it
}

func newApp(specs []upstreamSpec, l load, sidecarAddr string, log *slog.Logger) *app {
	urls := make([]string, len(specs))
	for i, s := range specs {
		urls[i] = "http://" + sidecarAddr + "/" + s.name
	}
	return &app{
		specs: specs,
		load:  l,
		urls:  urls,
		log:   log,
		client: &http.Client{
			Timeout: clientTimeout,
			// Its own transport, so that the demo's connections are closed
			// with it and never shared with anything else in the process.
			Transport: &http.Transport{
				MaxIdleConns:        l.workers,
				MaxIdleConnsPerHost: l.workers,
				IdleConnTimeout:     30 * time.Second,
			},
		},
		rec:     newRecorder(specs),
		backlog: make(chan call, l.backlog),
	}
}

// run sends the scenario's load from start until ctx ends, then waits for
// every worker to stop. Calls cut off by the end of ctx are not counted: they
// say nothing about the upstream.
func (a *app) run(ctx context.Context, start time.Time) {
	var wg sync.WaitGroup
	for range a.load.workers {
		wg.Go(func() { a.work(ctx) })
	}
	a.schedule(ctx, start)
	wg.Wait()
	a.client.CloseIdleConnections()
}

// schedule emits every upstream's calls at its rate, each with the time it
// was due. A late wake-up catches up instead of slowing the load down.
func (a *app) schedule(ctx context.Context, start time.Time) {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	sent := make([]int, len(a.specs))
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		elapsed := time.Since(start)
		for i, rate := range a.load.rates {
			for due := int(elapsed.Seconds() * float64(rate)); sent[i] < due; sent[i]++ {
				c := call{up: i, due: start.Add(time.Duration(float64(sent[i]+1) * float64(time.Second) / float64(rate)))}
				select {
				case a.backlog <- c:
				default:
					// The app's own queue is full: the call is lost, as
					// when a real service rejects or times out work
					// it has no thread for.
					a.rec.record(i, outcomeDropped, 0)
				}
			}
		}
	}
}

func (a *app) work(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case c := <-a.backlog:
			a.send(ctx, c)
		}
	}
}

// send makes one call through the sidecar and records how it went.
func (a *app) send(ctx context.Context, c call) {
	if ctx.Err() != nil {
		return
	}
	a.rec.sending(c.up)
	defer a.rec.done(c.up)
	o := outcomeFailed
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.urls[c.up], nil)
	if err != nil {
		a.log.Error("demo app: building a request", "url", a.urls[c.up], "error", err)
		a.rec.record(c.up, o, time.Since(c.due))
		return
	}
	req.Host = a.specs[c.up].name // the sidecar's proxy listener routes by Host
	resp, err := a.client.Do(req)
	if err == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		switch {
		case err != nil:
		case resp.StatusCode == http.StatusOK && resp.Header.Get(proxy.HeaderReason) == "":
			o = outcomeOK
		case isRefusal(resp.Header.Get(proxy.HeaderReason)):
			o = outcomeRefused
		}
	}
	if ctx.Err() != nil {
		return // cut off by the end of the run
	}
	a.rec.record(c.up, o, time.Since(c.due))
}

// isRefusal: the sidecar answered instead of the upstream, without waiting
// for the upstream (the reason header of DESIGN.md's local replies).
func isRefusal(reason string) bool {
	switch reason {
	case "bulkhead_full", "queue_timeout", "circuit_open", "rate_limited":
		return true
	}
	return false
}

// backlogLen is how many calls wait for a free worker now.
func (a *app) backlogLen() int { return len(a.backlog) }
