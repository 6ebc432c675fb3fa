package xds

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	sotwv3 "github.com/envoyproxy/go-control-plane/pkg/server/sotw/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"

	"github.com/watertight/watertight/config"
	"github.com/watertight/watertight/internal/dirwatch"
)

// ControlPlaneOptions configure a control plane.
type ControlPlaneOptions struct {
	// Listen is the ADS address (host:port; port 0 picks one).
	Listen    string
	ConfigDir string
	Logger    *slog.Logger
	// Registerer takes the control plane's metrics (nil: none).
	Registerer prometheus.Registerer
}

// ControlPlane serves the config directory over ADS (state of the world and
// delta) from go-control-plane's snapshot cache: what to serve (the cache,
// filled from the directory) is kept apart from how (go-control-plane's
// server). It serves the sidecar and gRPC-Go's proxyless xDS client alike.
type ControlPlane struct {
	o       ControlPlaneOptions
	log     *slog.Logger
	cache   cachev3.SnapshotCache // ADS: for nodes that take every listener and cluster (the sidecar, Envoy)
	named   cachev3.SnapshotCache // for nodes that name the listeners they want (gRPC); see cacheFor
	metrics *cpMetrics
	ln      net.Listener
	grpc    *grpc.Server
	// stopStreams ends every ADS stream (see Run).
	stopStreams context.CancelFunc

	mu       sync.Mutex
	dir      *dirState
	nodes    map[string]bool              // every node that has connected
	versions map[string]string            // node → version of its snapshot
	built    map[string]*cachev3.Snapshot // by version: nodes with one config share one snapshot
	sent     map[sentKey]sent             // the last response per node and type, to hold NACKed ones
	namers   map[namer]bool               // clients that name the listeners or clusters they want
}

type sentKey struct{ node, typeURL string }

// namer is a client: its node ID and user agent (a pod's sidecar and its
// gRPC clients may share a node ID).
type namer struct{ node, userAgent string }
type sent struct{ nonce, version string }

// NewControlPlane reads the config directory and binds the ADS port. A
// default.yaml that does not load is an error here: there is nothing to
// serve yet. Later, a bad file only keeps the last good snapshots.
func NewControlPlane(o ControlPlaneOptions) (*ControlPlane, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	cp := &ControlPlane{
		o: o, log: o.Logger, metrics: newCPMetrics(o.Registerer),
		nodes: map[string]bool{}, versions: map[string]string{}, sent: map[sentKey]sent{}, namers: map[namer]bool{},
		built: map[string]*cachev3.Snapshot{},
	}
	cp.cache = cachev3.NewSnapshotCache(true, cachev3.IDHash{}, goControlPlaneLog{o.Logger})
	cp.named = cachev3.NewSnapshotCache(false, cachev3.IDHash{}, goControlPlaneLog{o.Logger})
	cp.dir = ConfigDir{o.ConfigDir}.read()
	if cp.dir.baseError != nil {
		return nil, fmt.Errorf("control plane: %w", cp.dir.baseError)
	}
	if _, _, err := cp.dir.forNode(o.ConfigDir, ""); err != nil {
		return nil, fmt.Errorf("control plane: %w", err)
	}
	for id, err := range cp.dir.nodeErrs {
		cp.log.Error("node config does not load; that node gets the default until it is fixed", "node", id, "error", err)
	}
	ln, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return nil, fmt.Errorf("control plane: listening on %q: %w", o.Listen, err)
	}
	cp.ln = ln
	// Ordered: responses leave in the order the cache answers, clusters and
	// their endpoints before the listeners and route configs that use them,
	// as the xDS protocol asks ("eventual consistency considerations").
	// Without it the server picks among pending responses at random, and a
	// client can get a route to a cluster it has not been sent yet.
	// The server's context ends its streams: Run cancels it so that a stop
	// does not wait for nodes that never hang up.
	var serverCtx context.Context
	serverCtx, cp.stopStreams = context.WithCancel(context.Background())
	srv := serverv3.NewServer(serverCtx, holdNACKed{cp.cache, cp}, serverv3.CallbackFuncs{
		StreamOpenFunc:          cp.onOpen,
		StreamClosedFunc:        cp.onClosed,
		StreamRequestFunc:       cp.onRequest,
		StreamResponseFunc:      cp.onResponse,
		DeltaStreamOpenFunc:     cp.onOpen,
		DeltaStreamClosedFunc:   cp.onClosed,
		StreamDeltaRequestFunc:  cp.onDeltaRequest,
		StreamDeltaResponseFunc: cp.onDeltaResponse,
	}, sotwv3.WithOrderedADS())
	cp.grpc = grpc.NewServer(
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(cp.grpc, srv)
	return cp, nil
}

// Addr is the ADS address.
func (cp *ControlPlane) Addr() net.Addr { return cp.ln.Addr() }

// Run serves ADS and watches the config directory until ctx ends.
func (cp *ControlPlane) Run(ctx context.Context) error {
	served := make(chan error, 1)
	go func() { served <- cp.grpc.Serve(cp.ln) }()
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		cp.watch(ctx)
	}()
	cp.log.Info("control plane serving ADS", "address", cp.ln.Addr().String(), "config_dir", cp.o.ConfigDir)
	var err error
	select {
	case <-ctx.Done():
	case err = <-served:
	}
	cp.stopStreams()
	stopped := make(chan struct{})
	go func() { cp.grpc.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(2 * time.Second):
		cp.grpc.Stop() // ADS streams never end by themselves
	}
	<-watched
	return err
}

// Reload reads the directory again and pushes every node whose config
// changed. A file that does not load is logged with its path and field, and
// the nodes it concerns keep their last good snapshot.
func (cp *ControlPlane) Reload() {
	st := ConfigDir{cp.o.ConfigDir}.read()
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if st.baseError != nil {
		cp.metrics.loads.WithLabelValues("failure").Inc()
		cp.log.Error("config does not load; every node keeps its last good snapshot", "error", st.baseError)
		return
	}
	cp.dir = st
	clear(cp.built)
	cp.metrics.loads.WithLabelValues("success").Inc()
	for id := range cp.nodes {
		cp.push(id)
	}
}

// push sets the node's snapshot from the current directory, if it changed.
// Called with mu held.
func (cp *ControlPlane) push(id string) {
	cfg, version, err := cp.dir.forNode(cp.o.ConfigDir, id)
	if err != nil {
		cp.log.Error("node config does not load; the node keeps its last good snapshot", "node", id, "error", err)
		return
	}
	if cp.versions[id] == version {
		return
	}
	snap, err := cp.snapshot(cfg, version)
	if err != nil {
		cp.log.Error("config does not translate to a valid snapshot; the node keeps its last good one", "node", id, "error", err)
		return
	}
	if err := cp.setSnapshot(id, snap); err != nil {
		cp.log.Error("setting snapshot", "node", id, "error", err)
		return
	}
	if old := cp.versions[id]; old != "" {
		cp.metrics.snapshotInfo.DeleteLabelValues(id, old)
	}
	cp.versions[id] = version
	cp.metrics.snapshotInfo.WithLabelValues(id, version).Set(1)
	cp.metrics.snapshots.Inc()
	cp.log.Info("snapshot pushed", "node", id, "version", version)
}

// snapshot translates and checks cfg once per version. Called with mu held.
func (cp *ControlPlane) snapshot(cfg *config.Config, version string) (*cachev3.Snapshot, error) {
	if snap := cp.built[version]; snap != nil {
		return snap, nil
	}
	res, err := FromConfig(cfg)
	if err != nil {
		return nil, err
	}
	snap, err := res.Snapshot(version)
	if err != nil {
		return nil, err
	}
	// Each type gets a version of its own content, so a change resends only
	// the types it touched: a weight change is one CDS response, not five
	// responses that each make every node rebuild its whole config.
	for t := range snap.Resources {
		if v, err := contentVersion(snap.Resources[t].Items); err == nil {
			snap.Resources[t].Version = v
		}
	}
	cp.built[version] = snap
	return snap, nil
}

// contentVersion is a short hash of a type's resources (deterministic
// encoding, in name order).
func contentVersion(items map[string]types.ResourceWithTTL) (string, error) {
	h := sha256.New()
	opts := proto.MarshalOptions{Deterministic: true}
	for _, name := range slices.Sorted(maps.Keys(items)) {
		b, err := opts.Marshal(items[name].Resource)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s\x00%d\x00", name, len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil)[:6]), nil
}

// setSnapshot gives a node its snapshot in both caches; it reads from one.
func (cp *ControlPlane) setSnapshot(id string, snap *cachev3.Snapshot) error {
	return errors.Join(cp.cache.SetSnapshot(context.Background(), id, snap),
		cp.named.SetSnapshot(context.Background(), id, snap))
}

// cacheFor picks the cache that serves a request's node. go-control-plane's
// ADS cache answers a request that names resources only if it names every
// resource of that type in the snapshot: right for Envoy and the sidecar,
// which take every listener and cluster and then name exactly the route
// configs and load assignments those use; never right for gRPC-Go, which
// names the listener it dials and what that one uses. A node that names
// listeners or clusters is served from the cache without that rule (and
// without ADS's ordering of responses, which gRPC does not need). gRPC asks
// for its listener first, before anything that could go to the wrong cache.
func (cp *ControlPlane) cacheFor(req *cachev3.Request) cachev3.SnapshotCache {
	who := namer{req.GetNode().GetId(), req.GetNode().GetUserAgentName()}
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if t := req.GetTypeUrl(); (t == resourcev3.ListenerType || t == resourcev3.ClusterType) && len(req.GetResourceNames()) > 0 {
		cp.namers[who] = true
	}
	if cp.namers[who] {
		return cp.named
	}
	return cp.cache
}

// watch pushes a new snapshot within a second of a change to the config
// directory or its nodes/ (which may appear later).
func (cp *ControlPlane) watch(ctx context.Context) {
	dirs := []string{cp.o.ConfigDir, filepath.Join(cp.o.ConfigDir, "nodes")}
	if err := dirwatch.Run(ctx, dirs, cp.log, cp.Reload); err != nil {
		cp.log.Warn("cannot watch the config directory; restart to reload", "error", err)
	}
}

func (cp *ControlPlane) onOpen(context.Context, int64, string) error {
	cp.metrics.streams.Inc()
	return nil
}

func (cp *ControlPlane) onClosed(int64, *corev3.Node) { cp.metrics.streams.Dec() }

// seen makes sure a node has a snapshot before its first request is served.
func (cp *ControlPlane) seen(node *corev3.Node) {
	id := node.GetId()
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if !cp.nodes[id] {
		cp.nodes[id] = true
		cp.push(id)
		if cp.versions[id] == "" {
			// Its own file is bad: serve it the default meanwhile.
			if cfg, version, err := cp.dir.forNode(cp.o.ConfigDir, ""); err == nil {
				if snap, err := cp.snapshot(cfg, version); err == nil && cp.setSnapshot(id, snap) == nil {
					cp.versions[id] = version
					cp.metrics.snapshotInfo.WithLabelValues(id, version).Set(1)
				}
			}
		}
	}
}

func (cp *ControlPlane) onRequest(_ int64, req *discoveryv3.DiscoveryRequest) error {
	cp.seen(req.GetNode())
	cp.countReply(req.GetNode().GetId(), req.GetTypeUrl(), req.GetResponseNonce(), req.GetErrorDetail().GetMessage())
	return nil
}

func (cp *ControlPlane) onDeltaRequest(_ int64, req *discoveryv3.DeltaDiscoveryRequest) error {
	cp.seen(req.GetNode())
	cp.countReply(req.GetNode().GetId(), req.GetTypeUrl(), req.GetResponseNonce(), req.GetErrorDetail().GetMessage())
	return nil
}

// countReply counts a client's ACK or NACK of an earlier response.
func (cp *ControlPlane) countReply(node, typeURL, nonce, nackReason string) {
	if nonce == "" {
		return // a subscription, not a reply
	}
	label := typeLabel(typeURL)
	if nackReason != "" {
		cp.metrics.replies.WithLabelValues(label, "nack").Inc()
		cp.log.Warn("node rejected an update (NACK); holding until the config changes", "node", node, "type", label, "reason", nackReason)
		return
	}
	cp.metrics.replies.WithLabelValues(label, "ack").Inc()
}

func (cp *ControlPlane) onResponse(_ context.Context, _ int64, req *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
	cp.metrics.pushes.WithLabelValues(typeLabel(resp.GetTypeUrl())).Inc()
	cp.mu.Lock()
	cp.sent[sentKey{req.GetNode().GetId(), resp.GetTypeUrl()}] = sent{resp.GetNonce(), resp.GetVersionInfo()}
	cp.mu.Unlock()
}

func (cp *ControlPlane) onDeltaResponse(_ int64, _ *discoveryv3.DeltaDiscoveryRequest, resp *discoveryv3.DeltaDiscoveryResponse) {
	cp.metrics.pushes.WithLabelValues(typeLabel(resp.GetTypeUrl())).Inc()
}

// holdNACKed keeps a NACKed response from being sent again at once.
// go-control-plane answers a NACK, whose version_info is the client's last
// accepted version, with the snapshot it just rejected, and again and again.
// Treating a NACK as if it carried the version it rejects makes the cache
// wait until the snapshot changes.
type holdNACKed struct {
	cachev3.SnapshotCache
	cp *ControlPlane
}

func (h holdNACKed) CreateWatch(req *cachev3.Request, sub cachev3.Subscription, ch chan cachev3.Response) (func(), error) {
	if req.GetErrorDetail() != nil {
		h.cp.mu.Lock()
		last, ok := h.cp.sent[sentKey{req.GetNode().GetId(), req.GetTypeUrl()}]
		h.cp.mu.Unlock()
		if ok && last.nonce == req.GetResponseNonce() {
			held := proto.Clone(req).(*cachev3.Request)
			held.VersionInfo = last.version
			req = held
		}
	}
	return h.cp.cacheFor(req).CreateWatch(req, sub, ch)
}

func typeLabel(typeURL string) string {
	for _, s := range subscribed {
		if s.url == typeURL {
			return s.label
		}
	}
	return "other"
}

// cpMetrics are the control plane's own metrics.
type cpMetrics struct {
	streams      prometheus.Gauge
	pushes       *prometheus.CounterVec
	replies      *prometheus.CounterVec
	snapshots    prometheus.Counter
	snapshotInfo *prometheus.GaugeVec
	loads        *prometheus.CounterVec
}

func newCPMetrics(reg prometheus.Registerer) *cpMetrics {
	m := &cpMetrics{
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "watertight_controlplane_connected_streams",
			Help: "ADS streams open from nodes (sidecars and gRPC clients).",
		}),
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "watertight_controlplane_pushes_total",
			Help: "xDS responses sent to nodes, by type (lds, rds, cds, eds, rtds).",
		}, []string{"type"}),
		replies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "watertight_controlplane_replies_total",
			Help: "Nodes' replies to responses, by type and result (ack, nack).",
		}, []string{"type", "result"}),
		snapshots: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "watertight_controlplane_snapshots_total",
			Help: "Snapshots set for nodes (one per node whose config changed).",
		}),
		snapshotInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "watertight_controlplane_snapshot_info",
			Help: "1 for the snapshot version each connected node is served (the content hash of its config).",
		}, []string{"node", "version"}),
		loads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "watertight_controlplane_config_loads_total",
			Help: "Readings of the config directory, by result (success, failure).",
		}, []string{"result"}),
	}
	// Every series from the start, so that the first failure is an increase.
	m.loads.WithLabelValues("success")
	m.loads.WithLabelValues("failure")
	for _, s := range subscribed {
		m.pushes.WithLabelValues(s.label)
		m.replies.WithLabelValues(s.label, "ack")
		m.replies.WithLabelValues(s.label, "nack")
	}
	if reg != nil {
		if err := errors.Join(reg.Register(m.streams), reg.Register(m.pushes), reg.Register(m.replies),
			reg.Register(m.snapshots), reg.Register(m.snapshotInfo), reg.Register(m.loads)); err != nil {
			slog.Warn("control plane metrics not registered", "error", err)
		}
	}
	return m
}

// goControlPlaneLog adapts slog to go-control-plane's logger.
type goControlPlaneLog struct{ l *slog.Logger }

func (g goControlPlaneLog) Debugf(format string, args ...any) {
	g.l.Debug(fmt.Sprintf(format, args...))
}
func (g goControlPlaneLog) Infof(format string, args ...any) { g.l.Debug(fmt.Sprintf(format, args...)) }
func (g goControlPlaneLog) Warnf(format string, args ...any) { g.l.Warn(fmt.Sprintf(format, args...)) }
func (g goControlPlaneLog) Errorf(format string, args ...any) {
	g.l.Error(fmt.Sprintf(format, args...))
}

// Ready implements admin.Source: the control plane serves once it is built.
func (cp *ControlPlane) Ready() bool { return true }

// ConfigDump implements admin.Source: each connected node's snapshot version.
func (cp *ControlPlane) ConfigDump() any {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	versions := make(map[string]string, len(cp.versions))
	for id, v := range cp.versions {
		versions[id] = v
	}
	return struct {
		ConfigDir string            `json:"configDir"`
		Nodes     map[string]string `json:"nodes"`
	}{cp.o.ConfigDir, versions}
}
