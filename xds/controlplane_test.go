package xds

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/watertight/watertight/internal/testlog"
)

const oneUpstream = `
listeners: [{name: out, address: "127.0.0.1:15001", mode: proxy}]
upstreams: [{name: inventory, endpoints: ["10.0.0.1:8080"], bulkhead: {weight: 3}}]
`

func startCP(t *testing.T, files map[string]string) (*ControlPlane, *testlog.Buffer, string) {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	logs := &testlog.Buffer{}
	cp, err := NewControlPlane(ControlPlaneOptions{Listen: "127.0.0.1:0", ConfigDir: dir,
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = cp.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return cp, logs, dir
}

func adsClient(t *testing.T, cp *ControlPlane) discoveryv3.AggregatedDiscoveryServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(cp.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return discoveryv3.NewAggregatedDiscoveryServiceClient(conn)
}

func TestBadFileKeepsTheLastGoodSnapshot(t *testing.T) {
	cp, logs, dir := startCP(t, map[string]string{"default.yaml": oneUpstream})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := adsClient(t, cp).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "n1"}, TypeUrl: resourcev3.ClusterType}); err != nil {
		t.Fatal(err)
	}
	first, err := st.Recv()
	if err != nil || len(first.GetResources()) != 1 {
		t.Fatalf("first CDS response: %v %v", first, err)
	}
	good := cp.ConfigDump().(struct {
		ConfigDir string            `json:"configDir"`
		Nodes     map[string]string `json:"nodes"`
	}).Nodes["n1"]

	bad := strings.Replace(oneUpstream, "weight: 3", "weight: 3, maxWait: fast", 1)
	if err := os.WriteFile(filepath.Join(dir, "default.yaml"), []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	cp.Reload()
	if !strings.Contains(logs.String(), `upstreams[0].bulkhead.maxWait: \"fast\" is not a duration`) ||
		!strings.Contains(logs.String(), filepath.Join(dir, "default.yaml")) {
		t.Fatalf("the bad file is not reported with its path and field:\n%s", logs.String())
	}
	cp.mu.Lock()
	kept := cp.versions["n1"]
	cp.mu.Unlock()
	if kept != good || good == "" {
		t.Fatalf("node version after a bad file: %q, want the last good %q", kept, good)
	}

	// Fixed: the node gets the change.
	fixed := strings.Replace(oneUpstream, "weight: 3", "weight: 4", 1)
	if err := os.WriteFile(filepath.Join(dir, "default.yaml"), []byte(fixed), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, VersionInfo: first.GetVersionInfo(), ResponseNonce: first.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	cp.Reload()
	next, err := st.Recv()
	if err != nil || next.GetVersionInfo() == first.GetVersionInfo() {
		t.Fatalf("after the fix: %v %v", next.GetVersionInfo(), err)
	}
}

// TestDeltaADS: the control plane serves incremental xDS too.
func TestDeltaADS(t *testing.T) {
	cp, _, _ := startCP(t, map[string]string{"default.yaml": oneUpstream})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := adsClient(t, cp).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "delta"}, TypeUrl: resourcev3.ClusterType}); err != nil {
		t.Fatal(err)
	}
	resp, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetResources()) != 1 || resp.GetResources()[0].GetName() != "inventory" || resp.GetResources()[0].GetVersion() == "" {
		t.Fatalf("delta CDS: %v", resp)
	}
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: []string{"inventory"}}); err != nil {
		t.Fatal(err)
	}
	resp, err = st.Recv()
	if err != nil || len(resp.GetResources()) != 1 {
		t.Fatalf("delta EDS: %v %v", resp, err)
	}
}
