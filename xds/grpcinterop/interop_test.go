// Package grpcinterop_test drives gRPC-Go's proxyless xDS client with the
// watertight control plane: a real grpc-go client dials xds:///<upstream>
// and xds:///<host>, gets its listener, route, cluster and endpoints from a
// real xds.ControlPlane over ADS, reaches a real grpc-go server, and is
// limited by the cluster's circuit_breakers max_requests (bulkhead
// maxConcurrent). It is a package of its own so that gRPC's xDS machinery
// lives in a test binary of its own.
package grpcinterop_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
	grpcxds "google.golang.org/grpc/xds" // registers the xds resolver and balancers

	"github.com/watertight/watertight/internal/testlog"
	"github.com/watertight/watertight/internal/testmetrics"
	"github.com/watertight/watertight/sidecar"
	"github.com/watertight/watertight/xds"
)

// TestMain checks for leaked goroutines. Nothing is ignored: each ClientConn
// below gets an xDS client of its own (see dial), which closes with the
// ClientConn, so gRPC's process-wide default xDS client pool, the only part
// of gRPC's xDS machinery that would outlive a test, is never used.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	wait   = 15 * time.Second
	nodeID = "shop-7f9c" // the gRPC client's and the sidecar's
)

// backend is the upstream: grpc-go's interop TestService. A UnaryCall whose
// payload is "block" waits until release is closed (or its context ends).
type backend struct {
	testgrpc.UnimplementedTestServiceServer
	entered chan struct{} // one value per blocking call that has arrived
	release chan struct{}
}

func (b *backend) UnaryCall(ctx context.Context, req *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	if string(req.GetPayload().GetBody()) == "block" {
		b.entered <- struct{}{}
		select {
		case <-b.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return &testgrpc.SimpleResponse{Username: "echo"}, nil
}

func startBackend(t *testing.T) (*backend, string) {
	t.Helper()
	b := &backend{entered: make(chan struct{}, 16), release: make(chan struct{})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(srv, b)
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Stop(); <-done })
	return b, ln.Addr().String()
}

func writeConfig(t *testing.T, dir, endpoint string, maxConcurrent int) {
	t.Helper()
	doc := fmt.Sprintf(`
upstreams:
  - name: echo
    hosts: [echo.svc, echo.svc.cluster.local]
    protocol: http2
    loadBalancer: round_robin
    endpoints: [%q]
    bulkhead: {maxConcurrent: %d}
    timeout: 10s
`, endpoint, maxConcurrent)
	path := filepath.Join(dir, "default.yaml")
	if err := os.WriteFile(path+".tmp", []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

func startControlPlane(t *testing.T, dir string) *xds.ControlPlane {
	t.Helper()
	log, _ := testlog.New(t, "control plane", slog.LevelDebug)
	cp, err := xds.NewControlPlane(xds.ControlPlaneOptions{
		Listen: "127.0.0.1:0", ConfigDir: dir, Logger: log, Registerer: prometheus.NewRegistry(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cp.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("control plane Run: %v", err)
		}
	})
	return cp
}

// dial makes a ClientConn to target ("xds:///name") whose xDS client uses a
// bootstrap naming the control plane. gRPC reads GRPC_XDS_BOOTSTRAP_CONFIG
// once per process, when the package initialises, before a test could know
// the control plane's port; grpc/xds's NewXDSResolverWithConfigForTesting
// takes the bootstrap as an argument instead, and gives the ClientConn an
// xDS client (and pool) of its own that closes with it.
func dial(t *testing.T, cpAddr, target string) *grpc.ClientConn {
	t.Helper()
	bootstrap, err := json.Marshal(map[string]any{
		"xds_servers": []any{map[string]any{
			"server_uri":      cpAddr,
			"channel_creds":   []any{map[string]any{"type": "insecure"}},
			"server_features": []string{"xds_v3"},
		}},
		"node": map[string]any{"id": nodeID, "locality": map[string]any{"zone": "a"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	resolver, err := grpcxds.NewXDSResolverWithConfigForTesting(bootstrap)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithResolvers(resolver))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// startSidecar runs a sidecar with the gRPC client's node ID.
func startSidecar(t *testing.T, cpAddr string) *sidecar.Sidecar {
	t.Helper()
	s, err := sidecar.Start(sidecar.Options{
		XDSAddress: cpAddr, NodeID: nodeID, AdminAddress: "127.0.0.1:0",
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("sidecar shutdown: %v", err)
		}
	})
	return s
}

// limit is the sidecar's bulkhead limit for echo (-1: none yet).
func limit(s *sidecar.Sidecar) int {
	for _, p := range s.Proxy().Pools() {
		if p.Upstream == "echo" {
			return p.Stats.Limit
		}
	}
	return -1
}

// nacks sums the sidecar's watertight_xds_updates_total{result="nack"}.
func nacks(t *testing.T, s *sidecar.Sidecar) float64 {
	t.Helper()
	return testmetrics.Sum(t, s.Metrics().Prometheus(), "watertight_xds_updates_total", map[string]string{"result": "nack"})
}

func call(ctx context.Context, conn *grpc.ClientConn, body string) error {
	resp, err := testgrpc.NewTestServiceClient(conn).UnaryCall(ctx, &testgrpc.SimpleRequest{
		Payload: &testgrpc.Payload{Body: []byte(body)},
	})
	if err == nil && resp.GetUsername() != "echo" {
		return fmt.Errorf("answer %q, want echo", resp.GetUsername())
	}
	return err
}

// TestGRPCXDSClient: unary calls through xds:///<upstream> and
// xds:///<host>; then, with max_requests 2, a third concurrent RPC is
// refused by gRPC's circuit breaking (UNAVAILABLE) while two are in flight;
// then a max_requests raised to 3 in the config directory reaches the
// client and lets a third in. A sidecar with the same node ID (as in a pod
// whose sidecar and app share one) is served alongside and follows too.
func TestGRPCXDSClient(t *testing.T) {
	b, endpoint := startBackend(t)
	dir := t.TempDir()
	writeConfig(t, dir, endpoint, 2)
	cp := startControlPlane(t, dir)
	sc := startSidecar(t, cp.Addr().String())

	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	targets := []string{"xds:///echo", "xds:///echo.svc", "xds:///echo.svc.cluster.local"}
	conns := map[string]*grpc.ClientConn{}
	for _, target := range targets {
		conns[target] = dial(t, cp.Addr().String(), target)
		// The first RPC waits for the xDS resources (gRPC queues RPCs
		// while the resolver has produced nothing).
		if err := call(ctx, conns[target], "hello"); err != nil {
			t.Fatalf("%s: %v", target, err)
		}
	}
	conn := conns["xds:///echo"]

	// Two in flight take both slots.
	var inflight sync.WaitGroup
	errs := make(chan error, 8)
	block := func() {
		inflight.Go(func() { errs <- call(ctx, conn, "block") })
	}
	block()
	block()
	for range 2 {
		select {
		case <-b.entered:
		case <-ctx.Done():
			t.Fatal("the two blocking RPCs did not reach the server")
		}
	}
	err := call(ctx, conn, "hello")
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("third concurrent RPC: %v, want UNAVAILABLE (circuit breaking at max_requests 2)", err)
	}
	t.Logf("third concurrent RPC refused: %v", err)

	// max_requests 3: a third blocking RPC gets in once the client has the
	// new cluster. Until then each try is refused at once.
	writeConfig(t, dir, endpoint, 3)
	written := time.Now()
	for in := false; !in; {
		third := make(chan error, 1)
		go func() { third <- call(ctx, conn, "block") }()
		select {
		case <-b.entered:
			in = true
			inflight.Go(func() { errs <- <-third })
		case err := <-third:
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("third RPC while max_requests changes: %v, want UNAVAILABLE or in", err)
			}
			if time.Since(written) > wait {
				t.Fatalf("max_requests 3 did not reach the gRPC client in %v", wait)
			}
			time.Sleep(5 * time.Millisecond) // polling interval, not synchronisation
		}
	}
	t.Logf("max_requests 3 in force in the gRPC client %v after the file write", time.Since(written))
	for limit(sc) != 3 {
		if time.Since(written) > wait {
			t.Fatalf("the sidecar sharing the node ID has limit %d, want 3", limit(sc))
		}
		time.Sleep(5 * time.Millisecond) // polling interval, not synchronisation
	}
	if n := nacks(t, sc); n != 0 {
		t.Errorf("the sidecar sharing the node ID NACKed %v updates", n)
	}
	if err := call(ctx, conn, "hello"); status.Code(err) != codes.Unavailable {
		t.Errorf("fourth concurrent RPC: %v, want UNAVAILABLE (max_requests 3)", err)
	}

	close(b.release)
	inflight.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("a blocking RPC failed: %v", err)
		}
	}
	for _, target := range targets {
		if err := call(ctx, conns[target], "hello"); err != nil {
			t.Errorf("%s after the blocking RPCs: %v", target, err)
		}
	}
}
