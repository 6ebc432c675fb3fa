package xds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/watertight/watertight/config"
)

// ClientOptions configure an ADS client.
type ClientOptions struct {
	// Address of the control plane (host:port).
	Address string
	// NodeID names this sidecar to the control plane.
	NodeID string
	// Apply makes a complete config the one in force. An error NACKs the
	// update that brought it, and the config in force stays.
	Apply  func(cfg *config.Config) error
	Logger *slog.Logger
	// Registerer takes the client's metrics (nil: none).
	Registerer prometheus.Registerer
	// DialOptions replace the default (plaintext) dial options.
	DialOptions []grpc.DialOption
}

// The resource types the sidecar subscribes to, in the order it asks for
// them: the top-level settings first, so that the first complete config
// has them.
var subscribed = []struct {
	url   string
	label string // for metrics
	all   bool   // wildcard subscription (the others name what they want)
}{
	{resourcev3.RuntimeType, "rtds", false},
	{resourcev3.ListenerType, "lds", true},
	{resourcev3.ClusterType, "cds", true},
	{resourcev3.RouteType, "rds", false},
	{resourcev3.EndpointType, "eds", false},
}

// Client is the sidecar's ADS client (state of the world): it subscribes to
// listeners, route configurations, clusters, load assignments and the
// watertight Runtime, turns each complete set into a config, and ACKs or
// NACKs every response as the xDS protocol says. While the control plane is
// away the last config applied keeps serving; the client reconnects with
// jittered backoff.
type Client struct {
	o       ClientOptions
	log     *slog.Logger
	metrics *clientMetrics

	mu     sync.Mutex
	types  map[string]*typeState // by type URL; kept across reconnects
	warned map[string]bool       // unsupported fields already logged
}

// typeState is what the client knows of one resource type.
type typeState struct {
	url, label string
	all        bool
	names      []string        // subscribed names (sorted); unused when all
	version    string          // last accepted version
	received   bool            // a response has been accepted (maybe empty)
	nonce      string          // nonce of the last response on this stream
	resources  []proto.Message // last accepted resources
	nacks      int             // NACKs in a row, for backoff
}

// NewClient makes a client; Run connects it.
func NewClient(o ClientOptions) *Client {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	c := &Client{o: o, log: o.Logger.With("xds", o.Address), metrics: newClientMetrics(o.Registerer),
		types: map[string]*typeState{}, warned: map[string]bool{}}
	for _, s := range subscribed {
		ts := &typeState{url: s.url, label: s.label, all: s.all}
		if s.url == resourcev3.RuntimeType {
			ts.names = []string{RuntimeName}
		}
		c.types[s.url] = ts
	}
	return c
}

// Run keeps a stream to the control plane open until ctx ends, reconnecting
// with jittered exponential backoff (100ms to 30s, reset once a stream has
// delivered something).
func (c *Client) Run(ctx context.Context) error {
	opts := c.o.DialOptions
	if opts == nil {
		opts = []grpc.DialOption{
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			// gRPC redials on its own schedule (1s to 120s by default), and
			// the stream below cannot open before it has: keep it to ours.
			grpc.WithConnectParams(grpc.ConnectParams{
				Backoff: grpcbackoff.Config{
					BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 30 * time.Second,
				},
				MinConnectTimeout: 20 * time.Second, // gRPC's default; 0 would cut each dial to the backoff delay
			}),
		}
	}
	conn, err := grpc.NewClient(c.o.Address, opts...)
	if err != nil {
		return fmt.Errorf("xds: connecting to %q: %w", c.o.Address, err)
	}
	defer conn.Close()
	ads := discoveryv3.NewAggregatedDiscoveryServiceClient(conn)
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		delivered, err := c.stream(ctx, ads)
		c.metrics.connected.Set(0)
		if ctx.Err() != nil {
			break
		}
		if delivered {
			backoff = 100 * time.Millisecond
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		c.log.Warn("xDS stream ended; the config in force keeps serving", "error", err, "retry_in", wait)
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
	return nil
}

// stream runs one ADS stream; delivered says whether it got any response.
func (c *Client) stream(ctx context.Context, ads discoveryv3.AggregatedDiscoveryServiceClient) (delivered bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := ads.StreamAggregatedResources(ctx)
	if err != nil {
		return false, fmt.Errorf("opening ADS stream: %w", err)
	}
	node := &corev3.Node{Id: c.o.NodeID, UserAgentName: "watertight"}
	first := true
	send := func(req *discoveryv3.DiscoveryRequest) error {
		if first {
			req.Node, first = node, false
		}
		return st.Send(req)
	}
	c.mu.Lock()
	for _, s := range subscribed {
		ts := c.types[s.url]
		ts.nonce = "" // nonces belong to a stream
		if !ts.all && len(ts.names) == 0 {
			continue // nothing to ask for yet
		}
		if err := send(ts.request()); err != nil {
			c.mu.Unlock()
			return false, fmt.Errorf("subscribing: %w", err)
		}
	}
	c.mu.Unlock()
	c.metrics.connected.Set(1)
	c.log.Info("xDS stream open", "node", c.o.NodeID)
	for {
		resp, err := st.Recv()
		if err != nil {
			return delivered, fmt.Errorf("receiving: %w", err)
		}
		delivered = true
		reqs, wait := c.handle(resp)
		if wait > 0 {
			// A NACK repeated: do not let a control plane that resends the
			// same bad update at once spin us (or itself).
			select {
			case <-ctx.Done():
				return delivered, ctx.Err()
			case <-time.After(wait):
			}
		}
		for _, req := range reqs {
			if err := send(req); err != nil {
				return delivered, fmt.Errorf("sending: %w", err)
			}
		}
	}
}

func (ts *typeState) request() *discoveryv3.DiscoveryRequest {
	req := &discoveryv3.DiscoveryRequest{TypeUrl: ts.url, VersionInfo: ts.version, ResponseNonce: ts.nonce}
	if !ts.all {
		req.ResourceNames = slices.Clone(ts.names)
	}
	return req
}

// handle takes one response: it ACKs or NACKs it, applies the config when
// the set it completes is whole, and says which requests to send (the ACK
// or NACK, and new subscriptions) and how long to wait before sending.
func (c *Client) handle(resp *discoveryv3.DiscoveryResponse) ([]*discoveryv3.DiscoveryRequest, time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ts, ok := c.types[resp.GetTypeUrl()]
	if !ok {
		c.log.Warn("ignoring a response of a type the sidecar did not ask for", "type", resp.GetTypeUrl())
		return nil, 0
	}
	ts.nonce = resp.GetNonce()
	msgs, err := decode(resp)
	if err == nil {
		err = c.tryApply(ts, msgs)
	}
	if err != nil {
		ts.nacks++
		c.metrics.updates.WithLabelValues(ts.label, "nack").Inc()
		c.log.Error("rejecting xDS update (NACK); the config in force keeps serving",
			"type", ts.label, "version", resp.GetVersionInfo(), "error", err)
		nack := ts.request() // with the last accepted version
		nack.ErrorDetail = &status.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}
		wait := time.Duration(0)
		if ts.nacks > 1 {
			wait = min(100*time.Millisecond<<min(ts.nacks-2, 8), 30*time.Second)
		}
		return []*discoveryv3.DiscoveryRequest{nack}, wait
	}
	ts.nacks = 0
	ts.version, ts.resources, ts.received = resp.GetVersionInfo(), msgs, true
	c.metrics.updates.WithLabelValues(ts.label, "ack").Inc()
	reqs := []*discoveryv3.DiscoveryRequest{ts.request()}
	// A NACK blames the response that completed a set, which may not be
	// the one at fault (a listener that cannot bind arrives by LDS, but
	// its set may be completed by RDS). Now that something else changed,
	// ask again for what was rejected: a control plane holding it (as
	// ours does) sends it again, to be judged with the new company.
	for _, s := range subscribed {
		if other := c.types[s.url]; other != ts && other.nacks > 0 && (other.all || len(other.names) > 0) {
			reqs = append(reqs, other.request())
		}
	}
	// New listeners or clusters may want route configs or load
	// assignments the client has not asked for yet.
	routes, endpoints := dependencies(c.types[resourcev3.ListenerType].resources, c.types[resourcev3.ClusterType].resources)
	for url, names := range map[string][]string{resourcev3.RouteType: routes, resourcev3.EndpointType: endpoints} {
		dep := c.types[url]
		if !slices.Equal(dep.names, names) {
			dep.names = names
			reqs = append(reqs, dep.request())
		}
	}
	return reqs, 0
}

// tryApply checks a response against everything else accepted: if the set
// makes no sense, the response is rejected; if it is whole (every route
// config and load assignment referenced has arrived), it is applied.
func (c *Client) tryApply(ts *typeState, msgs []proto.Message) error {
	res := &Resources{}
	for _, s := range subscribed {
		ms := c.types[s.url].resources
		if s.url == ts.url {
			ms = msgs
		}
		if err := res.Add(ms...); err != nil {
			return err
		}
	}
	routes, endpoints := dependencies(protos(res.Listeners), protos(res.Clusters))
	// Whole means: the listeners and the clusters have come (even as an
	// empty set), and everything they refer to. The Runtime is optional: a
	// control plane that is not ours never sends one.
	complete := true
	for _, url := range []string{resourcev3.ListenerType, resourcev3.ClusterType} {
		if url != ts.url && !c.types[url].received {
			complete = false
		}
	}
	for _, name := range routes {
		if !slices.ContainsFunc(protos(res.Routes), func(r proto.Message) bool { return nameOf(r) == name }) {
			complete = false
		}
	}
	for _, name := range endpoints {
		if !slices.ContainsFunc(protos(res.Endpoints), func(e proto.Message) bool { return nameOf(e) == name }) {
			complete = false
		}
	}
	// A control plane removing an upstream sends the clusters without it
	// before the route configs that stop referring to it (go-control-plane's
	// snapshot cache sends clusters first, and Envoy takes that). Until
	// those route configs come the set is warming, not wrong. Route configs
	// that themselves refer to a missing cluster are wrong: when they are
	// what this response brings, the model refuses them below.
	if missing := missingClusters(res, ts.url); len(missing) > 0 {
		c.log.Info("route configs still refer to clusters that are gone; waiting for new route configs", "clusters", missing)
		complete = false
	}
	if !complete {
		// Warming, as Envoy says: take what is valid, apply when whole.
		return res.Validate()
	}
	cfg, warnings, err := Model(res)
	for _, w := range warnings {
		if !c.warned[w] { // one line per field, not one per update
			c.warned[w] = true
			c.log.Warn("xDS field not supported, ignored", "detail", w)
		}
	}
	if err != nil {
		return err
	}
	if err := c.o.Apply(cfg); err != nil {
		return err // the sidecar's error says what it was applying
	}
	return nil
}

// missingClusters are the clusters that route configs send to (the first
// route to a cluster of each virtual host, the one the model takes) and that
// are not among the clusters, sorted. The route configs are those over RDS
// and those inline in socket listeners, but not those of the type of the
// response being judged (typeURL).
func missingClusters(res *Resources, typeURL string) []string {
	have := map[string]bool{}
	for _, cl := range res.Clusters {
		have[cl.GetName()] = true
	}
	var rcs []*routev3.RouteConfiguration
	if typeURL != resourcev3.RouteType {
		rcs = append(rcs, res.Routes...)
	}
	if typeURL != resourcev3.ListenerType {
		for _, l := range res.Listeners {
			if rc := inlineRouteConfig(l); rc != nil {
				rcs = append(rcs, rc)
			}
		}
	}
	var missing []string
	for _, rc := range rcs {
		for _, vh := range rc.GetVirtualHosts() {
			for _, r := range vh.GetRoutes() {
				if name := r.GetRoute().GetCluster(); name != "" {
					if !have[name] {
						missing = append(missing, name)
					}
					break
				}
			}
		}
	}
	slices.Sort(missing)
	return slices.Compact(missing)
}

// inlineRouteConfig is the route_config of a socket listener's
// HttpConnectionManager, the first one as the model finds it (nil: none).
func inlineRouteConfig(l *listenerv3.Listener) *routev3.RouteConfiguration {
	if l.GetApiListener() != nil {
		return nil
	}
	chains := l.GetFilterChains()
	if d := l.GetDefaultFilterChain(); d != nil {
		chains = append(slices.Clip(chains), d)
	}
	for _, fc := range chains {
		for _, f := range fc.GetFilters() {
			h := &hcmv3.HttpConnectionManager{}
			if f.GetTypedConfig().MessageIs(h) {
				if f.GetTypedConfig().UnmarshalTo(h) != nil {
					return nil
				}
				return h.GetRouteConfig()
			}
		}
	}
	return nil
}

func decode(resp *discoveryv3.DiscoveryResponse) ([]proto.Message, error) {
	msgs := make([]proto.Message, 0, len(resp.GetResources()))
	for i, a := range resp.GetResources() {
		if a.GetTypeUrl() != resp.GetTypeUrl() {
			return nil, fmt.Errorf("resource %d is a %s in a %s response", i, a.GetTypeUrl(), resp.GetTypeUrl())
		}
		m, err := anypb.UnmarshalNew(a, proto.UnmarshalOptions{})
		if err != nil {
			return nil, fmt.Errorf("decoding resource %d: %w", i, err)
		}
		msgs = append(msgs, m)
	}
	return msgs, nil
}

// dependencies are the route configs the listeners read over RDS and the
// load assignments the EDS clusters read, sorted.
func dependencies(listeners, clusters []proto.Message) (routes, endpoints []string) {
	for _, m := range listeners {
		l, ok := m.(*listenerv3.Listener)
		if !ok {
			continue
		}
		var hcms []*hcmv3.HttpConnectionManager
		if a := l.GetApiListener().GetApiListener(); a != nil {
			h := &hcmv3.HttpConnectionManager{}
			if a.UnmarshalTo(h) == nil {
				hcms = append(hcms, h)
			}
		}
		chains := l.GetFilterChains()
		if d := l.GetDefaultFilterChain(); d != nil {
			chains = append(slices.Clip(chains), d)
		}
		for _, fc := range chains {
			for _, f := range fc.GetFilters() {
				h := &hcmv3.HttpConnectionManager{}
				if f.GetTypedConfig().MessageIs(h) && f.GetTypedConfig().UnmarshalTo(h) == nil {
					hcms = append(hcms, h)
				}
			}
		}
		for _, h := range hcms {
			if name := h.GetRds().GetRouteConfigName(); name != "" {
				routes = append(routes, name)
			}
		}
	}
	for _, m := range clusters {
		if cl, ok := m.(*clusterv3.Cluster); ok && cl.GetType() == clusterv3.Cluster_EDS {
			name := cl.GetEdsClusterConfig().GetServiceName()
			if name == "" {
				name = cl.GetName()
			}
			endpoints = append(endpoints, name)
		}
	}
	slices.Sort(routes)
	slices.Sort(endpoints)
	return slices.Compact(routes), slices.Compact(endpoints)
}

func protos[T proto.Message](s []T) []proto.Message {
	out := make([]proto.Message, len(s))
	for i, m := range s {
		out[i] = m
	}
	return out
}

func nameOf(m proto.Message) string {
	switch x := m.(type) {
	case interface{ GetClusterName() string }:
		return x.GetClusterName()
	case interface{ GetName() string }:
		return x.GetName()
	}
	return ""
}

// clientMetrics are DESIGN.md's watertight_xds_* metrics.
type clientMetrics struct {
	connected prometheus.Gauge
	updates   *prometheus.CounterVec
}

func newClientMetrics(reg prometheus.Registerer) *clientMetrics {
	m := &clientMetrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "watertight_xds_connected",
			Help: "1 while the sidecar has a stream open to its xDS control plane.",
		}),
		updates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "watertight_xds_updates_total",
			Help: "xDS responses by resource type (lds, rds, cds, eds, rtds) and result: ack (accepted) or nack (rejected; the config in force stays).",
		}, []string{"type", "result"}),
	}
	for _, s := range subscribed {
		m.updates.WithLabelValues(s.label, "ack")
		m.updates.WithLabelValues(s.label, "nack")
	}
	if reg != nil {
		if err := errors.Join(reg.Register(m.connected), reg.Register(m.updates)); err != nil {
			slog.Warn("xds client metrics not registered", "error", err)
		}
	}
	return m
}
