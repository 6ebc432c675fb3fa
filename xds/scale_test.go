package xds

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/watertight/watertight/config"
)

// The control plane at scale (the figures, reported in
// docs/benchmarks.md):
//
//	go test -run x -bench 'ControlPlane' -benchtime 5x ./xds/

// writeScaleConfig writes a default.yaml of n upstreams; weight varies the
// first upstream so each write is a new version.
func writeScaleConfig(tb testing.TB, dir string, n, weight int) {
	tb.Helper()
	var b strings.Builder
	b.WriteString("budget: 100000\nlisteners: [{name: out, address: \"127.0.0.1:15001\", mode: proxy}]\nupstreams:\n")
	for i := range n {
		w := 1
		if i == 0 {
			w = weight
		}
		fmt.Fprintf(&b, "  - {name: svc%d, hosts: [svc%d, svc%d.shop.svc.cluster.local], endpoints: [\"10.0.%d.%d:8080\", \"10.1.%d.%d:8080\"], "+
			"bulkhead: {weight: %d, maxQueue: 16, maxWait: 20ms}, timeout: 300ms, "+
			"retry: {attempts: 2, on: [reset, \"503\"]}, circuitBreaker: {failureRate: 0.5}}\n", i, i, i, i/250, i%250, i/250, i%250, w)
	}
	tmp := filepath.Join(dir, ".default.yaml")
	if err := os.WriteFile(tmp, []byte(b.String()), 0o600); err != nil {
		tb.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "default.yaml")); err != nil {
		tb.Fatal(err)
	}
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// BenchmarkControlPlaneSnapshots: 1,000 upstreams × 100 nodes. One op is a
// reload of the directory that changes every node's config: the control
// plane's CPU per reload, and the heap its snapshots hold.
func BenchmarkControlPlaneSnapshots(b *testing.B) {
	const upstreams, nodes = 1000, 100
	dir := b.TempDir()
	writeScaleConfig(b, dir, upstreams, 1)
	before := heapInUse()
	cp, err := NewControlPlane(ControlPlaneOptions{Listen: "127.0.0.1:0", ConfigDir: dir, Logger: quietLogger()})
	if err != nil {
		b.Fatal(err)
	}
	defer cp.ln.Close()
	cp.mu.Lock()
	for i := range nodes {
		cp.nodes[fmt.Sprintf("pod-%d.shop", i)] = true
	}
	cp.mu.Unlock()
	cp.Reload()
	heap := float64(heapInUse()-before) / (1 << 20)
	cpu := cpuTime()
	for i := 0; b.Loop(); i++ {
		writeScaleConfig(b, dir, upstreams, 2+i%2)
		cp.Reload()
	}
	b.ReportMetric(float64(cpuTime()-cpu)/float64(b.N)/1e6, "cpu-ms/reload")
	b.ReportMetric(heap, "MB-heap")
}

// BenchmarkControlPlanePush100Sidecars: from a change of default.yaml (50 or
// 1,000 upstreams) to the new config applied by 100 connected ADS clients,
// in process, over real gRPC on loopback. Everything shares this machine's
// 2 cores, so the time includes 100 clients decoding and translating the
// whole config each, which real sidecars do on their own CPUs.
func BenchmarkControlPlanePush100Sidecars(b *testing.B) {
	for _, upstreams := range []int{50, 1000} {
		b.Run(fmt.Sprintf("upstreams=%d", upstreams), func(b *testing.B) { benchPush(b, upstreams, 100) })
	}
}

func benchPush(b *testing.B, upstreams, nodes int) {
	dir := b.TempDir()
	writeScaleConfig(b, dir, upstreams, 1)
	cp, err := NewControlPlane(ControlPlaneOptions{Listen: "127.0.0.1:0", ConfigDir: dir, Logger: quietLogger()})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = cp.Run(ctx) }()
	defer func() { cancel(); wg.Wait() }()

	var mu sync.Mutex
	weights := make([]int, nodes)
	for i := range nodes {
		c := NewClient(ClientOptions{
			Address: cp.Addr().String(),
			NodeID:  fmt.Sprintf("pod-%d.shop", i),
			Logger:  quietLogger(),
			Apply: func(cfg *config.Config) error {
				mu.Lock()
				weights[i] = cfg.Upstreams[0].Bulkhead.Weight
				mu.Unlock()
				return nil
			},
		})
		wg.Add(1)
		go func() { defer wg.Done(); _ = c.Run(ctx) }()
	}
	waitAll := func(weight int) {
		deadline := time.Now().Add(2 * time.Minute)
		for {
			mu.Lock()
			done := 0
			for _, w := range weights {
				if w == weight {
					done++
				}
			}
			mu.Unlock()
			if done == nodes {
				return
			}
			if time.Now().After(deadline) {
				b.Fatalf("%d of %d clients applied weight %d in 2 minutes", done, nodes, weight)
			}
			time.Sleep(2 * time.Millisecond) // polling: the clients report through Apply
		}
	}
	waitAll(1)
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		w := 2 + i%2
		writeScaleConfig(b, dir, upstreams, w)
		waitAll(w)
	}
}

// BenchmarkModel1000Upstreams: what one sidecar pays to turn a whole
// snapshot of 1,000 upstreams back into its config, on every update.
func BenchmarkModel1000Upstreams(b *testing.B) {
	dir := b.TempDir()
	writeScaleConfig(b, dir, 1000, 1)
	cfg, err := config.Load(filepath.Join(dir, "default.yaml"))
	if err != nil {
		b.Fatal(err)
	}
	res, err := FromConfig(cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := Model(res); err != nil {
			b.Fatal(err)
		}
	}
}
