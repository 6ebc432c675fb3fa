package proxy

// Hot-path benchmarks: one small GET through a proxy.Server (a listener in
// mode upstream, the whole compartment path) and, for comparison, through a
// bare httputil.ReverseProxy set up the way bench/revproxy is, to the same
// in-process upstream with the same client.
//
// ns/op and allocs/op include the client and the upstream, which are the
// same on both sides: the difference between BenchmarkProxyX and
// BenchmarkBareReverseProxyX is what Watertight adds per request.
//
//	go test -run x -bench . -benchmem ./proxy/ ./bulkhead/
//
// The whole-process comparison (with HAProxy, load tools and CPU pinning)
// is bench/run.sh; see docs/benchmarks.md.

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/watertight/watertight/config"
	"github.com/watertight/watertight/metrics"
)

func BenchmarkProxyHTTP1(b *testing.B) {
	benchRequests(b, startBenchWatertight(b, startBenchUpstream(b)), false)
}

func BenchmarkProxyH2C(b *testing.B) {
	benchRequests(b, startBenchWatertight(b, startBenchUpstream(b)), true)
}

// BenchmarkProxyH2CToHTTP1 is h2c in, HTTP/1.1 out (protocol: http1), as
// nginx's proxy_pass does with an h2c client.
func BenchmarkProxyH2CToHTTP1(b *testing.B) {
	benchRequests(b, startBenchWatertightProtocol(b, startBenchUpstream(b), config.ProtocolHTTP1), true)
}

func BenchmarkBareReverseProxyHTTP1(b *testing.B) {
	benchRequests(b, startBenchBareProxy(b, startBenchUpstream(b)), false)
}

func BenchmarkBareReverseProxyH2C(b *testing.B) {
	benchRequests(b, startBenchBareProxy(b, startBenchUpstream(b)), true)
}

// benchH1H2C is HTTP/1.1 plus h2c with prior knowledge, as the sidecar's
// listeners speak.
func benchH1H2C() *http.Protocols {
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	return &p
}

// startBenchUpstream is the origin: a 64-byte answer over HTTP/1.1 or h2c.
func startBenchUpstream(b *testing.B) string {
	b.Helper()
	body := []byte(strings.Repeat("x", 64))
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		h := w.Header()
		h["Content-Type"] = []string{"text/plain"}
		h["Content-Length"] = []string{"64"}
		_, _ = w.Write(body)
	}))
	srv.Config.Protocols = benchH1H2C()
	srv.Start()
	b.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// startBenchWatertight runs a proxy.Server with one mode-upstream listener
// to the origin, protocol auto, and a budget the benchmark never exhausts.
func startBenchWatertight(b *testing.B, upstream string) string {
	b.Helper()
	return startBenchWatertightProtocol(b, upstream, config.ProtocolAuto)
}

// startBenchWatertightProtocol is startBenchWatertight with the upstream's
// protocol given.
func startBenchWatertightProtocol(b *testing.B, upstream string, protocol string) string {
	b.Helper()
	cfg := &config.Config{
		Budget: 4096,
		Listeners: []config.Listener{
			{Name: "bench", Address: "127.0.0.1:0", Mode: config.ModeUpstream, Upstream: "bench"},
		},
		Upstreams: []config.Upstream{{
			Name:      "bench",
			Hosts:     []string{"bench"},
			Protocol:  protocol,
			Endpoints: []config.Endpoint{{Address: upstream}},
		}},
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		b.Fatalf("benchmark config invalid: %v", err)
	}
	s := NewServer(Options{Logger: slog.New(slog.DiscardHandler), Metrics: metrics.New(), UpstreamHTTP1: *upstreamHTTP1, UpstreamHTTP2: *upstreamHTTP2, DownstreamHTTP1: *downstreamHTTP1, DownstreamHTTP2: *downstreamHTTP2, Lane: *laneOn})
	if err := s.Apply(cfg); err != nil {
		b.Fatalf("apply: %v", err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			b.Errorf("shutdown: %v", err)
		}
	})
	addr, ok := s.Addr("bench")
	if !ok {
		b.Fatal("listener bench not found")
	}
	return addr.String()
}

// startBenchBareProxy is bench/revproxy in process: a bare ReverseProxy with
// the upstream protocol following the client's, a large idle pool, no
// compression, pooled copy buffers.
func startBenchBareProxy(b *testing.B, upstream string) string {
	b.Helper()
	mk := func(h2c bool) (*httputil.ReverseProxy, *http.Transport) {
		var p http.Protocols
		if h2c {
			p.SetUnencryptedHTTP2(true)
		} else {
			p.SetHTTP1(true)
		}
		t := &http.Transport{
			Protocols:           &p,
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConnsPerHost: 4096,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
		}
		return &httputil.ReverseProxy{
			Rewrite: func(pr *httputil.ProxyRequest) {
				pr.Out.URL.Scheme = "http"
				pr.Out.URL.Host = upstream
			},
			Transport:  t,
			BufferPool: bufferPool{},
		}, t
	}
	rp1, t1 := mk(false)
	rp2, t2 := mk(true)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 2 {
			rp2.ServeHTTP(w, r)
			return
		}
		rp1.ServeHTTP(w, r)
	}))
	srv.Config.Protocols = benchH1H2C()
	srv.Start()
	b.Cleanup(func() {
		srv.Close()
		t1.CloseIdleConnections()
		t2.CloseIdleConnections()
	})
	return srv.Listener.Addr().String()
}

// benchRequests sends b.N GETs to addr one after another over one kept-alive
// connection (HTTP/1.1) or one h2c connection, reading every body to its end.
func benchRequests(b *testing.B, addr string, h2c bool) {
	b.Helper()
	var p http.Protocols
	if h2c {
		p.SetUnencryptedHTTP2(true)
	} else {
		p.SetHTTP1(true)
	}
	tr := &http.Transport{Protocols: &p, MaxIdleConnsPerHost: 16, DisableCompression: true}
	b.Cleanup(tr.CloseIdleConnections)
	c := &http.Client{Transport: tr}
	url := "http://" + addr + "/"
	get := func() {
		resp, err := c.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
	get() // connections up before the clock starts
	b.ReportAllocs()
	for b.Loop() {
		get()
	}
}

// BenchmarkProxyGRPC is a unary gRPC call (gRPC's health check, gRPC-Go's
// client and server) through the sidecar: the lane's since step 14, relay's
// with -lane=off.
func BenchmarkProxyGRPC(b *testing.B) {
	benchGRPC(b, startBenchWatertight(b, startBenchGRPCUpstream(b)))
}

// BenchmarkDirectGRPC is the same call without a proxy: what the client and
// the server cost, for subtracting.
func BenchmarkDirectGRPC(b *testing.B) {
	benchGRPC(b, startBenchGRPCUpstream(b))
}

func BenchmarkBareReverseProxyGRPC(b *testing.B) {
	benchGRPC(b, startBenchBareProxy(b, startBenchGRPCUpstream(b)))
}

// startBenchGRPCUpstream is a gRPC server with the health service.
func startBenchGRPCUpstream(b *testing.B) string {
	b.Helper()
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	return serveGRPCServer(b, gs)
}

// benchGRPC makes b.N health checks to addr one after another on one
// connection.
func benchGRPC(b *testing.B, addr string) {
	b.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = conn.Close() })
	client := healthpb.NewHealthClient(conn)
	ctx := b.Context()
	check := func() {
		res, err := client.Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			b.Fatal(err)
		}
		if res.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			b.Fatalf("status %v", res.GetStatus())
		}
	}
	check() // the connections up before the clock starts
	b.ReportAllocs()
	for b.Loop() {
		check()
	}
}
