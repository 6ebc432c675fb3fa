package proxy

import (
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/watertight/watertight/config"
)

func endpoints(weights ...int) []*endpoint {
	eps := make([]*endpoint, len(weights))
	for i, w := range weights {
		eps[i] = &endpoint{addr: fmt.Sprint("e", i), weight: w, endpointState: &endpointState{}}
	}
	return eps
}

func TestRoundRobinIsSmoothAndWeighted(t *testing.T) {
	eps := endpoints(5, 1, 1)
	b := newPolicy(config.LBRoundRobin, eps)
	var seq string
	for range 14 {
		seq += b.pick().addr[1:]
	}
	// nginx's smooth weighted round robin: the heavy endpoint is spread out.
	if seq != "00102000010200" { // a a b a c a a, twice
		t.Fatalf("sequence %s, want 00102000010200", seq)
	}
	b = newPolicy(config.LBRoundRobin, endpoints(1, 1, 1))
	seq = ""
	for range 6 {
		seq += b.pick().addr[1:]
	}
	if seq != "012012" {
		t.Fatalf("equal weights: %s", seq)
	}
}

func TestRandomFollowsWeights(t *testing.T) {
	b := newPolicy(config.LBRandom, endpoints(3, 1))
	counts := map[string]int{}
	for range 40000 {
		counts[b.pick().addr]++
	}
	// 3:1 expected; allow a wide margin (the chance of failing is negligible).
	if r := float64(counts["e0"]) / float64(counts["e1"]); r < 2.6 || r > 3.4 {
		t.Fatalf("ratio %.2f, want about 3 (%v)", r, counts)
	}
}

func TestLeastRequestAvoidsTheBusyEndpoint(t *testing.T) {
	eps := endpoints(1, 1)
	b := newPolicy(config.LBLeastRequest, eps)
	eps[0].active.Store(10)
	for range 100 {
		if e := b.pick(); e != eps[1] {
			t.Fatalf("picked the busy endpoint")
		}
	}
	// With three endpoints, two choices never pick the single busiest.
	eps = endpoints(1, 1, 1)
	b = newPolicy(config.LBLeastRequest, eps)
	eps[2].active.Store(5)
	for range 1000 {
		if b.pick() == eps[2] {
			t.Fatal("power of two choices picked the busiest of three")
		}
	}
	// Weight scales the load an endpoint may carry: 4 in flight on weight 4
	// is lighter than 2 in flight on weight 1.
	eps = endpoints(4, 1)
	b = newPolicy(config.LBLeastRequest, eps)
	eps[0].active.Store(4)
	eps[1].active.Store(2)
	for range 100 {
		if b.pick() != eps[0] {
			t.Fatal("weighted comparison picked the more loaded endpoint")
		}
	}
}

// TestBalancingAcrossRealEndpoints spreads real requests over three servers.
func TestBalancingAcrossRealEndpoints(t *testing.T) {
	var mu sync.Mutex
	hits := map[string]int{}
	var addrs []config.Endpoint
	for i := range 3 {
		name := fmt.Sprint("s", i)
		addrs = append(addrs, config.Endpoint{Address: startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			hits[name]++
			mu.Unlock()
			_, _ = io.WriteString(w, name)
		}))})
	}
	for _, lb := range []string{config.LBRoundRobin, config.LBLeastRequest, config.LBRandom} {
		t.Run(lb, func(t *testing.T) {
			mu.Lock()
			clear(hits)
			mu.Unlock()
			u := config.Upstream{Name: "u", Endpoints: addrs, LoadBalancer: lb}
			p := startProxy(t, &config.Config{Listeners: proxyListener(), Upstreams: []config.Upstream{u}})
			c := client(false)
			for range 300 {
				if resp, _ := get(t, c, p.url(t, "out"), "u", "/"); resp.StatusCode != 200 {
					t.Fatalf("status %d", resp.StatusCode)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			for i := range 3 {
				n := hits[fmt.Sprint("s", i)]
				if lb == config.LBRoundRobin && n != 100 {
					t.Errorf("round robin: s%d got %d of 300", i, n)
				}
				if n < 50 {
					t.Errorf("%s: s%d got only %d of 300 (%v)", lb, i, n, hits)
				}
			}
		})
	}
}

func BenchmarkBalancers(b *testing.B) {
	for _, lb := range []string{config.LBRoundRobin, config.LBLeastRequest, config.LBRandom} {
		b.Run(lb, func(b *testing.B) {
			bal := newBalancer(lb, endpoints(1, 2, 3, 4), 0)
			now := time.Now().UnixNano()
			b.ReportAllocs()
			for b.Loop() {
				e := bal.pick(now)
				e.active.Add(1)
				e.active.Add(-1)
			}
		})
	}
}
