package proxy

import (
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/watertight/watertight/config"
)

func weightedConfig(a, b, c string) *config.Config {
	return &config.Config{
		Budget:    40,
		Listeners: proxyListener(),
		Upstreams: []config.Upstream{
			upstreamCfg("a", a, config.Bulkhead{MaxConcurrent: 8}),
			upstreamCfg("b", b, config.Bulkhead{Weight: 1}),
			upstreamCfg("c", c, config.Bulkhead{Weight: 1}),
		},
	}
}

func limits(p *testProxy) [3]int {
	return [3]int{p.pool("a").Limit, p.pool("b").Limit, p.pool("c").Limit}
}

func TestWeightedLimits(t *testing.T) {
	addr := startUpstream(t, http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	cfg := weightedConfig(addr, addr, addr)
	p := startProxy(t, cfg)
	if got := limits(p); got != [3]int{8, 16, 16} {
		t.Fatalf("limits = %v, want DESIGN.md's 8, 16, 16", got)
	}
	// minConcurrent lifts a small weighted share; maxConcurrent is exact.
	cfg = weightedConfig(addr, addr, addr)
	cfg.Upstreams[1].Bulkhead = config.Bulkhead{Weight: 31}
	cfg.Upstreams[2].Bulkhead = config.Bulkhead{Weight: 1, MinConcurrent: 5}
	cfg.SetDefaults()
	if err := p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	if got := limits(p); got != [3]int{8, 31, 5} {
		t.Fatalf("limits = %v, want 8, 31 (floor 32*31/32), 5 (minConcurrent)", got)
	}
	if st := p.pool("c"); st.QueueCapacity != 0 {
		t.Fatalf("queue capacity = %d", st.QueueCapacity)
	}
}

// TestReloadResizesInPlaceWithoutLosingRequests holds requests in flight
// across config changes that grow and shrink their pool: none is lost, and
// the new limit is honoured for new requests.
func TestReloadResizesInPlaceWithoutLosingRequests(t *testing.T) {
	g := newGate()
	defer g.open()
	gated := startUpstream(t, g)
	cfg := weightedConfig(gated, gated, gated)
	p := startProxy(t, cfg)
	base := p.url(t, "out")
	c := client(false)

	statuses := make(chan int, 64)
	send := func(n int) *sync.WaitGroup {
		var wg sync.WaitGroup
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				req, _ := http.NewRequest("GET", base+"/", nil)
				req.Host = "b"
				resp, err := c.Do(req)
				if err != nil {
					t.Errorf("request: %v", err)
					statuses <- 0
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				statuses <- resp.StatusCode
			}()
		}
		return &wg
	}
	inFlight := send(10)
	eventually(t, "10 requests in flight", func() bool { return p.pool("b").Active == 10 })

	// Grow b: weight 3 of the 32 left → 24.
	cfg = weightedConfig(gated, gated, gated)
	cfg.Upstreams[1].Bulkhead.Weight = 3
	cfg.SetDefaults()
	if err := p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	if got := limits(p); got != [3]int{8, 24, 8} {
		t.Fatalf("after growing b: limits %v, want 8, 24, 8", got)
	}
	if st := p.pool("b"); st.Active != 10 {
		t.Fatalf("resize lost track of in-flight requests: %+v", st)
	}

	// Shrink b to 2 while 10 are in flight: they keep their slots, new
	// requests are refused until fewer than 2 are active.
	cfg = weightedConfig(gated, gated, gated)
	cfg.Upstreams[1].Bulkhead = config.Bulkhead{MaxConcurrent: 2}
	cfg.SetDefaults()
	if err := p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	if got := p.pool("b"); got.Limit != 2 || got.Active != 10 {
		t.Fatalf("after shrinking b: %+v, want limit 2 with 10 still active", got)
	}
	resp, _ := get(t, c, base, "b", "/")
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get(HeaderReason) != "bulkhead_full" {
		t.Fatalf("new request over the shrunk limit: %d %s", resp.StatusCode, resp.Header.Get(HeaderReason))
	}

	g.open()
	inFlight.Wait()
	for range 10 {
		if s := <-statuses; s != 200 {
			t.Fatalf("an in-flight request ended %d across the reloads", s)
		}
	}
	eventually(t, "b's slots to come back", func() bool { return p.pool("b").Active == 0 })

	// The new limit holds: of 5 concurrent hanging requests, 2 are admitted.
	g2 := newGate()
	defer g2.open()
	cfg = weightedConfig(gated, startUpstream(t, g2), gated)
	cfg.Upstreams[1].Bulkhead = config.Bulkhead{MaxConcurrent: 2}
	cfg.SetDefaults()
	if err := p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	more := send(5)
	refused := 0
	for range 3 {
		if s := <-statuses; s == http.StatusServiceUnavailable {
			refused++
		}
	}
	if refused != 3 || p.pool("b").Active != 2 {
		t.Fatalf("with limit 2: %d refused, pool %+v; want 3 refused, 2 active", refused, p.pool("b"))
	}
	g2.open()
	more.Wait()
	for range 2 {
		if s := <-statuses; s != 200 {
			t.Fatalf("admitted request ended %d", s)
		}
	}
}

// TestReloadChangesListenersAndDrainsRemovedOnes: a listener removed by a
// reload stops accepting but finishes its in-flight request; a new one
// starts serving; an upstream removed from the config stops routing.
func TestReloadChangesListenersAndDrainsRemovedOnes(t *testing.T) {
	g := newGate()
	defer g.open()
	addr := startUpstream(t, g)
	cfg := &config.Config{
		Listeners: []config.Listener{{Name: "old", Address: "127.0.0.1:0", Mode: config.ModeUpstream, Upstream: "u"}},
		Upstreams: []config.Upstream{upstreamCfg("u", addr, config.Bulkhead{}), upstreamCfg("gone", addr, config.Bulkhead{})},
	}
	p := startProxy(t, cfg)
	oldURL := p.url(t, "old")
	c := client(false)
	done := make(chan int, 1)
	go func() {
		resp, err := c.Get(oldURL + "/")
		if err != nil {
			t.Errorf("in-flight request on the removed listener: %v", err)
			done <- 0
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	<-g.entered

	// Listeners are known by their configured address; another loopback
	// address makes this one a different listener even with port 0.
	cfg2 := &config.Config{
		Listeners: []config.Listener{{Name: "new", Address: "127.0.0.2:0", Mode: config.ModeProxy}},
		Upstreams: []config.Upstream{upstreamCfg("u", addr, config.Bulkhead{})},
	}
	cfg2.SetDefaults()
	if err := p.Apply(cfg2); err != nil {
		t.Fatal(err)
	}
	if _, ok := p.Addr("old"); ok {
		t.Fatal("removed listener still listed")
	}
	g.open()
	if s := <-done; s != 200 {
		t.Fatalf("in-flight request on the removed listener ended %d", s)
	}
	newURL := p.url(t, "new")
	if resp, body := get(t, c, newURL, "u", "/"); resp.StatusCode != 200 || body != "released" {
		t.Fatalf("new listener: %d %q", resp.StatusCode, body)
	}
	if resp, _ := get(t, c, newURL, "gone", "/"); resp.StatusCode != 404 {
		t.Fatalf("removed upstream still routed: %d", resp.StatusCode)
	}
	if m := findMetric(t, p.reg, "watertight_requests_total", map[string]string{"upstream": "gone"}); m != nil {
		t.Fatal("removed upstream's series still exported")
	}
	eventually(t, "the old port to close", func() bool {
		_, err := http.Get(oldURL + "/")
		return err != nil
	})
}

// TestFailedApplyKeepsTheOldConfig: a config that cannot be applied (its
// port is taken) changes nothing.
func TestFailedApplyKeepsTheOldConfig(t *testing.T) {
	addr := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "v1") }))
	cfg := &config.Config{Listeners: proxyListener(), Upstreams: []config.Upstream{upstreamCfg("u", addr, config.Bulkhead{})}}
	p := startProxy(t, cfg)
	// The running listener's address is kept, not re-bound; the second
	// listener wants the upstream's port, which is taken.
	bad := &config.Config{
		Listeners: append(proxyListener(), config.Listener{Name: "clash", Address: addr, Mode: config.ModeProxy}),
		Upstreams: []config.Upstream{upstreamCfg("u", deadAddress(t), config.Bulkhead{MaxConcurrent: 1})},
	}
	bad.SetDefaults()
	err := p.Apply(bad)
	if err == nil || !strings.Contains(err.Error(), "listeners[1].address") {
		t.Fatalf("apply with a taken port: %v", err)
	}
	if p.Config() != cfg {
		t.Fatal("config in force changed after a failed apply")
	}
	if resp, body := get(t, client(false), p.url(t, "out"), "u", "/"); resp.StatusCode != 200 || body != "v1" {
		t.Fatalf("after failed apply: %d %q", resp.StatusCode, body)
	}
	if st := p.pool("u"); st.Limit != 1024 {
		t.Fatalf("failed apply resized the pool: %+v", st)
	}
}
