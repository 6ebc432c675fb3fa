// Package xds translates between the sidecar's config model (package config)
// and Envoy's v3 xDS resources, both ways: FromConfig is what the control
// plane serves, Model is what the sidecar makes of what it receives, from our
// control plane or any other.
//
// The resources for one config:
//
//   - A Listener per config listener, named "listener/<name>" (ListenerName):
//     gRPC's proxyless clients look listeners up by the name they dial, which
//     is an upstream's name or host, and the DESIGN.md example itself has a
//     listener and an upstream both called "inventory", so the sidecar's own
//     listeners live under a prefix no upstream name or host can contain.
//     Its HttpConnectionManager takes its routes over RDS from ADS; mode
//     proxy and transparent use the route configuration "hosts", mode
//     upstream the route configuration "upstream/<upstream>"; transparent
//     sets use_original_dst.
//   - An API listener for gRPC-Go's proxyless client per upstream host and
//     per upstream name (a host wins when an upstream's name is another
//     upstream's host, as it does when the sidecar routes by Host). A host's
//     listener, and a name's when the name is also one of its upstream's
//     hosts, use "hosts", where gRPC finds the virtual host by the authority
//     it dialed; any other name uses "upstream/<upstream>", whose one virtual
//     host matches every authority.
//   - RouteConfiguration "hosts": a virtual host per upstream, named after
//     it, whose domains are its hosts, with one route for every path to the
//     upstream's cluster (timeout, retry_policy, and max_stream_duration so
//     that grpc-timeout is honoured up to the timeout, in Envoy and gRPC
//     alike). RouteConfiguration "upstream/<upstream>": the same route in a
//     virtual host whose only domain is "*". Each exists only when a listener
//     uses it.
//   - A Cluster per upstream (EDS over ADS) and its ClusterLoadAssignment:
//     one locality {region: "default"} with weight 1 (gRPC-Go rejects
//     localities without an ID and ignores those without a weight).
//   - A Runtime resource named "watertight" whose layer holds the settings
//     that have no place in Envoy's resources (admin, budget, unknownHosts,
//     isolation) and the order of listeners and upstreams, which the
//     snapshot cache and the wire do not keep. Envoy and gRPC ignore a
//     runtime layer they did not ask for.
//
// What Envoy's fields cannot say travels in metadata.filter_metadata
// ["watertight"], written as in the YAML: on a Cluster, weight,
// minConcurrent, maxWait, failureStatuses, hedge, circuitBreaker, warmup,
// rateLimit, fallback, and of retry and outlierDetection the parts Envoy
// cannot express; on a Listener or an endpoint, the address when
// Envoy's socket address would not give it back as written; on a Listener,
// its access log and the composites it serves.
package xds

import (
	"cmp"
	"fmt"
	"log/slog"
	"math"
	"net"
	"reflect"
	"slices"
	"strconv"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	randomv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/random/v3"
	roundrobinv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/round_robin/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	runtimev3 "github.com/envoyproxy/go-control-plane/envoy/service/runtime/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/watertight/watertight/config"
)

// Names the two directions agree on.
const (
	// Namespace is our key in metadata.filter_metadata.
	Namespace = "watertight"
	// RuntimeName names the Runtime resource with the top-level settings.
	RuntimeName = "watertight"
	// HostsRoute names the route configuration that maps every upstream's
	// hosts to its cluster.
	HostsRoute = "hosts"

	listenerPrefix      = "listener/"
	upstreamRoutePrefix = "upstream/"
	localityRegion      = "default"
	// minRetryConcurrency is the floor of retries the budget always allows
	// (config.Retry.Budget: "at least 3"), Envoy's default too.
	minRetryConcurrency = 3
	httpOptionsKey      = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
)

// ListenerName is the xDS name of the sidecar listener called name.
func ListenerName(name string) string { return listenerPrefix + name }

// UpstreamRoute names the route configuration that sends every request,
// whatever its host, to upstream.
func UpstreamRoute(upstream string) string { return upstreamRoutePrefix + upstream }

// Resources is one node's set of xDS resources, in a stable order.
type Resources struct {
	Listeners []*listenerv3.Listener
	Routes    []*routev3.RouteConfiguration
	Clusters  []*clusterv3.Cluster
	Endpoints []*endpointv3.ClusterLoadAssignment
	Runtimes  []*runtimev3.Runtime
}

// FromConfig translates a config (defaults set, as config.Parse returns it)
// into xDS resources. Every resource is validated.
func FromConfig(cfg *config.Config) (*Resources, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("translating config to xDS: %w", err)
	}
	b := &builder{cfg: cfg, res: &Resources{}, routes: map[string]bool{}}
	if err := b.build(); err != nil {
		return nil, fmt.Errorf("translating config to xDS: %w", err)
	}
	if err := b.res.Validate(); err != nil {
		return nil, fmt.Errorf("translating config to xDS: %w", err)
	}
	return b.res, nil
}

type builder struct {
	cfg    *config.Config
	res    *Resources
	routes map[string]bool // route configurations some listener uses
}

func (b *builder) build() error {
	rt, err := runtimeResource(b.cfg)
	if err != nil {
		return err
	}
	b.res.Runtimes = append(b.res.Runtimes, rt)
	for i := range b.cfg.Upstreams {
		u := &b.cfg.Upstreams[i]
		c, err := cluster(u)
		if err != nil {
			return fmt.Errorf("upstream %q: cluster: %w", u.Name, err)
		}
		b.res.Clusters = append(b.res.Clusters, c)
		la, err := loadAssignment(u)
		if err != nil {
			return fmt.Errorf("upstream %q: endpoints: %w", u.Name, err)
		}
		b.res.Endpoints = append(b.res.Endpoints, la)
	}
	for _, l := range b.cfg.Listeners {
		sl, err := b.socketListener(l)
		if err != nil {
			return fmt.Errorf("listener %q: %w", l.Name, err)
		}
		b.res.Listeners = append(b.res.Listeners, sl)
	}
	if err := b.apiListeners(); err != nil {
		return err
	}
	return b.routeConfigs()
}

func (b *builder) socketListener(l config.Listener) (*listenerv3.Listener, error) {
	route := HostsRoute
	if l.Mode == config.ModeUpstream {
		route = UpstreamRoute(l.Upstream)
	}
	b.routes[route] = true
	filter, err := typedFilter(connectionManager(l.Name, route))
	if err != nil {
		return nil, err
	}
	addr, exact, err := socketAddress(l.Address)
	if err != nil {
		return nil, err
	}
	out := &listenerv3.Listener{
		Name:    ListenerName(l.Name),
		Address: addr,
		FilterChains: []*listenerv3.FilterChain{{
			Filters: []*listenerv3.Filter{filter},
		}},
	}
	if l.Mode == config.ModeTransparent {
		out.UseOriginalDst = wrapperspb.Bool(true)
	}
	meta := listenerMeta{AccessLog: l.AccessLog}
	meta.Composites = b.compositesOf(l.Name)
	if !exact || meta.AccessLog != nil || len(meta.Composites) > 0 {
		if !exact {
			meta.Address = &l.Address
		}
		md, err := metadata(meta)
		if err != nil {
			return nil, err
		}
		out.Metadata = md
	}
	return out, nil
}

// compositesOf are the composites the named listener serves.
func (b *builder) compositesOf(listener string) []config.Composite {
	if b.cfg == nil {
		return nil
	}
	var out []config.Composite
	for _, c := range b.cfg.Composites {
		if c.Listener == listener {
			out = append(out, c)
		}
	}
	return out
}

// apiListeners adds gRPC-Go's listeners: hosts first, so that a host keeps
// its listener when it is also another upstream's name.
func (b *builder) apiListeners() error {
	taken := map[string]string{} // listener name → upstream
	add := func(name, upstream, route string) error {
		b.routes[route] = true
		l, err := apiListener(name, route)
		if err != nil {
			return fmt.Errorf("upstream %q: API listener %q: %w", upstream, name, err)
		}
		taken[name] = upstream
		b.res.Listeners = append(b.res.Listeners, l)
		return nil
	}
	for _, u := range b.cfg.Upstreams {
		for _, h := range u.Hosts {
			if _, ok := taken[h]; ok {
				continue // the same host written twice; validation allows no other repeat
			}
			if err := add(h, u.Name, HostsRoute); err != nil {
				return err
			}
		}
	}
	for _, u := range b.cfg.Upstreams {
		if owner, ok := taken[u.Name]; ok {
			if owner != u.Name {
				slog.Warn("xds: an upstream's name is another upstream's host; gRPC clients dialing it reach the host's upstream",
					"upstream", u.Name, "host_of", owner)
			}
			continue
		}
		// Not one of its hosts (those have their listener already), so
		// "hosts" has no virtual host for the authority gRPC will send.
		if err := add(u.Name, u.Name, UpstreamRoute(u.Name)); err != nil {
			return err
		}
	}
	return nil
}

func apiListener(name, route string) (*listenerv3.Listener, error) {
	hcm := connectionManager(name, route)
	if err := hcm.Validate(); err != nil {
		return nil, err
	}
	a, err := anypb.New(hcm)
	if err != nil {
		return nil, err
	}
	return &listenerv3.Listener{Name: name, ApiListener: &listenerv3.ApiListener{ApiListener: a}}, nil
}

func connectionManager(statPrefix, route string) *hcmv3.HttpConnectionManager {
	router, _ := anypb.New(&routerv3.Router{}) // an empty message always marshals
	return &hcmv3.HttpConnectionManager{
		CodecType:  hcmv3.HttpConnectionManager_AUTO,
		StatPrefix: statPrefix,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource:    adsSource(),
			RouteConfigName: route,
		}},
		HttpFilters: []*hcmv3.HttpFilter{{
			Name:       wellknown.Router,
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router},
		}},
	}
}

func typedFilter(hcm *hcmv3.HttpConnectionManager) (*listenerv3.Filter, error) {
	if err := hcm.Validate(); err != nil {
		return nil, err
	}
	a, err := anypb.New(hcm)
	if err != nil {
		return nil, err
	}
	return &listenerv3.Filter{
		Name:       wellknown.HTTPConnectionManager,
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: a},
	}, nil
}

func adsSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
		ResourceApiVersion:    corev3.ApiVersion_V3,
	}
}

// socketAddress splits host:port; exact says whether Envoy's form gives addr
// back as written (":9001" and "h:08081" do not).
func socketAddress(addr string) (*corev3.Address, bool, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, false, fmt.Errorf("address %q: %w", addr, err)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return nil, false, fmt.Errorf("address %q: port: %w", addr, err)
	}
	sa := &corev3.SocketAddress{
		Address:       host,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(n)},
	}
	if host == "" {
		// Go listens on every address, IPv4 and IPv6, for an empty host.
		sa.Address, sa.Ipv4Compat = "::", true
	}
	exact := host != "" && net.JoinHostPort(host, strconv.FormatUint(n, 10)) == addr
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: sa}}, exact, nil
}

func (b *builder) routeConfigs() error {
	if b.routes[HostsRoute] {
		rc := &routev3.RouteConfiguration{Name: HostsRoute}
		for i := range b.cfg.Upstreams {
			u := &b.cfg.Upstreams[i]
			r, err := routeTo(u)
			if err != nil {
				return fmt.Errorf("upstream %q: route: %w", u.Name, err)
			}
			rc.VirtualHosts = append(rc.VirtualHosts, &routev3.VirtualHost{
				Name:    u.Name,
				Domains: slices.Clone(u.Hosts),
				Routes:  []*routev3.Route{r},
			})
		}
		b.res.Routes = append(b.res.Routes, rc)
	}
	for i := range b.cfg.Upstreams {
		u := &b.cfg.Upstreams[i]
		name := UpstreamRoute(u.Name)
		if !b.routes[name] {
			continue
		}
		r, err := routeTo(u)
		if err != nil {
			return fmt.Errorf("upstream %q: route: %w", u.Name, err)
		}
		b.res.Routes = append(b.res.Routes, &routev3.RouteConfiguration{
			Name: name,
			VirtualHosts: []*routev3.VirtualHost{{
				Name:    u.Name,
				Domains: []string{"*"},
				Routes:  []*routev3.Route{r},
			}},
		})
	}
	return nil
}

// routeTo is the one route of an upstream's virtual host: every path to its
// cluster.
func routeTo(u *config.Upstream) (*routev3.Route, error) {
	timeout := durationpb.New(u.Timeout.Duration)
	action := &routev3.RouteAction{
		ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: u.Name},
		Timeout:          timeout,
		// The caller's grpc-timeout counts, capped by ours (0: uncapped, as
		// a route timeout of 0 is no timeout): DESIGN.md's deadline rule.
		// gRPC-Go reads only this field, not timeout.
		MaxStreamDuration: &routev3.RouteAction_MaxStreamDuration{GrpcTimeoutHeaderMax: timeout},
	}
	if r := u.Retry; r != nil && r.Attempts > 0 {
		p, err := retryPolicy(r)
		if err != nil {
			return nil, err
		}
		action.RetryPolicy = p
	}
	return &routev3.Route{
		Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		Action: &routev3.Route_Route{Route: action},
	}, nil
}

// retryPolicy is only for Attempts > 0: gRPC-Go rejects num_retries 0, and
// without a policy Envoy does not retry.
func retryPolicy(r *config.Retry) (*routev3.RetryPolicy, error) {
	n, err := u32(r.Attempts, "retry.attempts")
	if err != nil {
		return nil, err
	}
	names, codes := envoyRetryOn(r.On)
	p := &routev3.RetryPolicy{
		RetryOn:              strings.Join(names, ","),
		NumRetries:           wrapperspb.UInt32(n),
		RetriableStatusCodes: codes,
	}
	if r.PerTryTimeout.IsSet() {
		p.PerTryTimeout = durationpb.New(r.PerTryTimeout.Duration)
	}
	if r.Backoff.Base.Duration > 0 { // Envoy and gRPC-Go require a positive base (and max ≥ base)
		p.RetryBackOff = &routev3.RetryPolicy_RetryBackOff{
			BaseInterval: durationpb.New(r.Backoff.Base.Duration),
			MaxInterval:  durationpb.New(r.Backoff.Max.Duration),
		}
	}
	return p, nil
}

// envoyRetryNames are our retry conditions that Envoy's retry_on has under
// the same name (HTTP ones, then gRPC ones).
var envoyRetryNames = []string{
	"connect-failure", "reset", "refused-stream", "5xx", "gateway-error",
	"cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
}

// envoyRetryOn writes retry conditions as Envoy's retry_on does: its names
// where it has them, HTTP statuses as retriable-status-codes (at the first
// status's place). "timeout" has no equivalent and is left out.
func envoyRetryOn(on []string) (names []string, codes []uint32) {
	for _, c := range on {
		if slices.Contains(envoyRetryNames, c) {
			names = append(names, c)
			continue
		}
		if code, err := strconv.Atoi(c); err == nil && code >= 100 && code <= 599 {
			if len(codes) == 0 {
				names = append(names, "retriable-status-codes")
			}
			codes = append(codes, uint32(code))
		}
	}
	return names, codes
}

func cluster(u *config.Upstream) (*clusterv3.Cluster, error) {
	c := &clusterv3.Cluster{
		Name:                 u.Name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsSource()},
	}
	switch u.LoadBalancer {
	case config.LBRoundRobin:
		c.LbPolicy = clusterv3.Cluster_ROUND_ROBIN
	case config.LBLeastRequest:
		c.LbPolicy = clusterv3.Cluster_LEAST_REQUEST
	case config.LBRandom:
		// gRPC-Go rejects a cluster whose lb_policy is RANDOM, even with a
		// load_balancing_policy. It reads lb_policy ROUND_ROBIN, then takes
		// the first policy it knows from load_balancing_policy, which
		// Envoy honours ahead of lb_policy: random for Envoy (and us),
		// round robin for gRPC.
		lbp, err := loadBalancingPolicy(&randomv3.Random{}, &roundrobinv3.RoundRobin{})
		if err != nil {
			return nil, err
		}
		c.LbPolicy, c.LoadBalancingPolicy = clusterv3.Cluster_ROUND_ROBIN, lbp
	}
	th := &clusterv3.CircuitBreakers_Thresholds{Priority: corev3.RoutingPriority_DEFAULT}
	bh := u.Bulkhead
	if bh.MaxConcurrent > 0 {
		n, err := u32(bh.MaxConcurrent, "bulkhead.maxConcurrent")
		if err != nil {
			return nil, err
		}
		th.MaxRequests = wrapperspb.UInt32(n)
	}
	// Always written: absent, Envoy would allow 1024 pending requests where
	// we queue none.
	n, err := u32(bh.MaxQueue, "bulkhead.maxQueue")
	if err != nil {
		return nil, err
	}
	th.MaxPendingRequests = wrapperspb.UInt32(n)
	if u.Retry != nil {
		// Written even with 0 attempts: hedges spend the budget too.
		th.RetryBudget = &clusterv3.CircuitBreakers_Thresholds_RetryBudget{
			BudgetPercent:       &typev3.Percent{Value: u.Retry.Budget * 100},
			MinRetryConcurrency: wrapperspb.UInt32(minRetryConcurrency),
		}
	}
	c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{th}}
	if od := u.OutlierDetection; od != nil {
		c.OutlierDetection = &clusterv3.OutlierDetection{
			Consecutive_5Xx:    wrapperspb.UInt32(uint32(od.ConsecutiveFailures)),
			Interval:           positive(od.Interval),
			BaseEjectionTime:   positive(od.BaseEjectionTime),
			MaxEjectionTime:    positive(od.MaxEjectionTime),
			MaxEjectionPercent: wrapperspb.UInt32(uint32(od.MaxEjectionPercent)),
			// Ours only ejects on failures in a row; Envoy would also eject
			// on success rate unless told not to.
			EnforcingSuccessRate: wrapperspb.UInt32(0),
		}
	}
	if u.TLS != nil {
		ts, err := transportSocket(u.TLS)
		if err != nil {
			return nil, err
		}
		c.TransportSocket = ts
	}
	opts, err := protocolOptions(u)
	if err != nil {
		return nil, err
	}
	c.TypedExtensionProtocolOptions = map[string]*anypb.Any{httpOptionsKey: opts}
	md, err := clusterMetadata(u)
	if err != nil {
		return nil, err
	}
	c.Metadata = md
	return c, nil
}

func loadBalancingPolicy(policies ...proto.Message) (*clusterv3.LoadBalancingPolicy, error) {
	lbp := &clusterv3.LoadBalancingPolicy{}
	for _, p := range policies {
		a, err := anypb.New(p)
		if err != nil {
			return nil, err
		}
		name := strings.TrimPrefix(a.GetTypeUrl(), "type.googleapis.com/")
		lbp.Policies = append(lbp.Policies, &clusterv3.LoadBalancingPolicy_Policy{
			TypedExtensionConfig: &corev3.TypedExtensionConfig{Name: name, TypedConfig: a},
		})
	}
	return lbp, nil
}

// positive is d for Envoy's duration fields that must be more than 0; a zero
// travels in our metadata instead.
func positive(d config.Duration) *durationpb.Duration {
	if d.Duration <= 0 {
		return nil
	}
	return durationpb.New(d.Duration)
}

func transportSocket(t *config.TLS) (*corev3.TransportSocket, error) {
	vc := &tlsv3.CertificateValidationContext{}
	if t.CAFile != "" {
		vc.TrustedCa = &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: t.CAFile}}
	} else {
		// Without a CA file the sidecar verifies against the system roots.
		// Said explicitly: Envoy would otherwise not verify at all, and
		// gRPC-Go accepts this form (with GRPC_EXPERIMENTAL_XDS_SYSTEM_ROOT_CERTS).
		vc.SystemRootCerts = &tlsv3.CertificateValidationContext_SystemRootCerts{}
	}
	ctx := &tlsv3.UpstreamTlsContext{
		Sni: t.SNI,
		CommonTlsContext: &tlsv3.CommonTlsContext{
			ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: vc},
		},
	}
	if err := ctx.Validate(); err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	a, err := anypb.New(ctx)
	if err != nil {
		return nil, err
	}
	return &corev3.TransportSocket{
		Name:       wellknown.TransportSocketTLS,
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: a},
	}, nil
}

// protocolOptions writes even http1 explicitly, so that no options at all can
// mean our default (auto), not Envoy's (HTTP/1.1).
func protocolOptions(u *config.Upstream) (*anypb.Any, error) {
	o := &httpv3.HttpProtocolOptions{}
	var h2 *corev3.Http2ProtocolOptions // nil: HTTP/2 as the endpoint allows
	if u.HTTP2 != nil && u.HTTP2.MaxConcurrentStreams > 0 {
		h2 = &corev3.Http2ProtocolOptions{MaxConcurrentStreams: wrapperspb.UInt32(uint32(u.HTTP2.MaxConcurrentStreams))}
	}
	switch u.Protocol {
	case config.ProtocolHTTP1:
		o.UpstreamProtocolOptions = &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{
			ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions{
					HttpProtocolOptions: &corev3.Http1ProtocolOptions{},
				},
			},
		}
	case config.ProtocolHTTP2:
		o.UpstreamProtocolOptions = &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{
			ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
					Http2ProtocolOptions: cmp.Or(h2, &corev3.Http2ProtocolOptions{}),
				},
			},
		}
	default:
		o.UpstreamProtocolOptions = &httpv3.HttpProtocolOptions_UseDownstreamProtocolConfig{
			UseDownstreamProtocolConfig: &httpv3.HttpProtocolOptions_UseDownstreamHttpConfig{Http2ProtocolOptions: h2},
		}
	}
	if err := o.Validate(); err != nil {
		return nil, fmt.Errorf("protocol: %w", err)
	}
	return anypb.New(o)
}

func loadAssignment(u *config.Upstream) (*endpointv3.ClusterLoadAssignment, error) {
	loc := &endpointv3.LocalityLbEndpoints{
		Locality:            &corev3.Locality{Region: localityRegion},
		LoadBalancingWeight: wrapperspb.UInt32(1),
	}
	for i, e := range u.Endpoints {
		addr, exact, err := socketAddress(e.Address)
		if err != nil {
			return nil, fmt.Errorf("endpoints[%d]: %w", i, err)
		}
		w, err := u32(max(e.Weight, 1), fmt.Sprintf("endpoints[%d].weight", i))
		if err != nil {
			return nil, err
		}
		lb := &endpointv3.LbEndpoint{
			HostIdentifier:      &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: addr}},
			HealthStatus:        corev3.HealthStatus_HEALTHY,
			LoadBalancingWeight: wrapperspb.UInt32(w),
		}
		if !exact {
			md, err := metadata(endpointMeta{Address: &u.Endpoints[i].Address})
			if err != nil {
				return nil, fmt.Errorf("endpoints[%d]: %w", i, err)
			}
			lb.Metadata = md
		}
		loc.LbEndpoints = append(loc.LbEndpoints, lb)
	}
	return &endpointv3.ClusterLoadAssignment{
		ClusterName: u.Name,
		Endpoints:   []*endpointv3.LocalityLbEndpoints{loc},
	}, nil
}

func u32(n int, field string) (uint32, error) {
	if n < 0 || n > math.MaxUint32 {
		return 0, fmt.Errorf("%s: %d does not fit Envoy's 32-bit unsigned field", field, n)
	}
	return uint32(n), nil
}

// The shapes of our metadata. Keys are the YAML's; Model decodes into the
// same types, so the two directions cannot drift apart.

// clusterMeta is a Cluster's filter_metadata["watertight"]. retry and
// outlierDetection carry only the parts Envoy's fields cannot; the rest
// carry whole sections.
type clusterMeta struct {
	Addresses        []string                 `json:"addresses,omitempty"`
	Weight           *int                     `json:"weight,omitempty"`
	MinConcurrent    *int                     `json:"minConcurrent,omitempty"`
	MaxWait          *config.Duration         `json:"maxWait,omitempty"`
	FailureStatuses  []int                    `json:"failureStatuses,omitempty"`
	Retry            *config.Retry            `json:"retry,omitempty"`
	Hedge            *config.Hedge            `json:"hedge,omitempty"`
	CircuitBreaker   *config.CircuitBreaker   `json:"circuitBreaker,omitempty"`
	Warmup           *config.Duration         `json:"warmup,omitempty"`
	OutlierDetection *config.OutlierDetection `json:"outlierDetection,omitempty"`
	RateLimit        *config.RateLimit        `json:"rateLimit,omitempty"`
	Fallback         config.Fallbacks         `json:"fallback,omitempty"`
}

// metaOf is the part of clusterMeta that both directions carry as it is,
// pointing into u: FromConfig writes it, Model overlays the metadata onto
// it. Retry, warm-up and outlier detection differ between the two (only
// Envoy's leftovers are written) and are each side's business.
func metaOf(u *config.Upstream) clusterMeta {
	return clusterMeta{
		Addresses:       u.Addresses,
		Weight:          &u.Bulkhead.Weight,
		MinConcurrent:   &u.Bulkhead.MinConcurrent,
		MaxWait:         &u.Bulkhead.MaxWait,
		FailureStatuses: u.FailureStatuses,
		Hedge:           u.Hedge,
		CircuitBreaker:  u.CircuitBreaker,
		RateLimit:       u.RateLimit,
		Fallback:        u.Fallback,
	}
}

// listenerMeta and endpointMeta carry an address as written when Envoy's
// socket address cannot.
//
// A listener's metadata also carries the composites it serves, whole and
// written as in the YAML (docs/composite.md): a composite is the listener's
// own answer, not a route to a cluster, and Envoy has no field for it.
type listenerMeta struct {
	Address    *string            `json:"address,omitempty"`
	AccessLog  *config.AccessLog  `json:"accessLog,omitempty"`
	Composites []config.Composite `json:"composites,omitempty"`
}

type endpointMeta struct {
	Address *string `json:"address,omitempty"`
}

// runtimeLayer is the Runtime resource's layer.
type runtimeLayer struct {
	Admin        *config.Admin `json:"admin,omitempty"`
	Budget       *int          `json:"budget,omitempty"`
	UnknownHosts *string       `json:"unknownHosts,omitempty"`
	Isolation    *string       `json:"isolation,omitempty"`
	Passthrough  *int          `json:"passthroughConnections,omitempty"`
	Order        *order        `json:"order,omitempty"`
}

type order struct {
	Listeners  []string `json:"listeners,omitempty"`
	Upstreams  []string `json:"upstreams,omitempty"`
	Composites []string `json:"composites,omitempty"`
}

func runtimeResource(cfg *config.Config) (*runtimev3.Runtime, error) {
	o := &order{}
	for _, l := range cfg.Listeners {
		o.Listeners = append(o.Listeners, l.Name)
	}
	for _, u := range cfg.Upstreams {
		o.Upstreams = append(o.Upstreams, u.Name)
	}
	for _, c := range cfg.Composites {
		o.Composites = append(o.Composites, c.Name)
	}
	layer, err := toStruct(runtimeLayer{
		Admin:        &cfg.Admin,
		Budget:       &cfg.Budget,
		UnknownHosts: &cfg.UnknownHosts,
		Isolation:    &cfg.Isolation,
		Passthrough:  &cfg.PassthroughConnections,
		Order:        o,
	})
	if err != nil {
		return nil, fmt.Errorf("runtime %q: %w", RuntimeName, err)
	}
	return &runtimev3.Runtime{Name: RuntimeName, Layer: layer}, nil
}

func clusterMetadata(u *config.Upstream) (*corev3.Metadata, error) {
	m := metaOf(u)
	if u.Warmup.IsSet() {
		m.Warmup = &u.Warmup
	}
	s, err := toStruct(m)
	if err != nil {
		return nil, err
	}
	if r := retryExtras(u.Retry); r != nil {
		s.Fields["retry"] = structpb.NewStructValue(r)
	}
	if od := odExtras(u.OutlierDetection); od != nil {
		s.Fields["outlierDetection"] = structpb.NewStructValue(od)
	}
	return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{Namespace: s}}, nil
}

// retryExtras is what of r the route's retry_policy and the cluster's
// retry_budget cannot carry exactly; all of it when there is no retry_policy.
func retryExtras(r *config.Retry) *structpb.Struct {
	if r == nil {
		return nil
	}
	full, _ := plain(reflect.ValueOf(*r))
	m := full.(map[string]any)
	if budgetFromPercent(r.Budget*100) == r.Budget {
		delete(m, "budget")
	}
	if r.Attempts > 0 {
		names, codes := envoyRetryOn(r.On)
		if back, _ := ourRetryOn(strings.Join(names, ","), codes); slices.Equal(back, r.On) {
			delete(m, "on")
		}
		if r.Backoff.Base.Duration > 0 {
			delete(m, "backoff")
		}
		delete(m, "attempts")
		delete(m, "perTryTimeout")
	}
	s, err := structpb.NewStruct(m)
	if err != nil {
		panic(fmt.Sprintf("xds: retry metadata: %v", err)) // plain only makes what structpb takes
	}
	return s
}

// odExtras are the outlier detection durations of 0, which Envoy's fields
// (that must be more than 0) cannot carry.
func odExtras(od *config.OutlierDetection) *structpb.Struct {
	if od == nil {
		return nil
	}
	s := &structpb.Struct{Fields: map[string]*structpb.Value{}}
	for key, d := range map[string]config.Duration{
		"interval": od.Interval, "baseEjectionTime": od.BaseEjectionTime, "maxEjectionTime": od.MaxEjectionTime,
	} {
		if d.IsSet() && positive(d) == nil {
			s.Fields[key] = structpb.NewStringValue(d.String())
		}
	}
	if len(s.Fields) == 0 {
		return nil
	}
	return s
}

func metadata(v any) (*corev3.Metadata, error) {
	s, err := toStruct(v)
	if err != nil {
		return nil, err
	}
	return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{Namespace: s}}, nil
}

func toStruct(v any) (*structpb.Struct, error) {
	p, _ := plain(reflect.ValueOf(v))
	m, _ := p.(map[string]any)
	s, err := structpb.NewStruct(m)
	if err != nil {
		return nil, fmt.Errorf("metadata: %w", err)
	}
	return s, nil
}

var durationType = reflect.TypeFor[config.Duration]()

// plain turns a config value into the tree structpb takes, keyed by the json
// (= YAML) names. It leaves out what the YAML would: omitempty fields that
// are empty and durations never set, so that they read back unset.
func plain(v reflect.Value) (any, bool) {
	if v.Type() == durationType {
		d := v.Interface().(config.Duration)
		return d.String(), d.IsSet()
	}
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if v.IsNil() {
			return nil, false
		}
		return plain(v.Elem())
	case reflect.Struct:
		m := map[string]any{}
		t := v.Type()
		for i := range t.NumField() {
			f := t.Field(i)
			name, opts, _ := strings.Cut(f.Tag.Get("json"), ",")
			if !f.IsExported() || name == "-" {
				continue
			}
			if name == "" {
				name = f.Name
			}
			fv := v.Field(i)
			if strings.Contains(opts, "omitempty") && emptyJSON(fv) {
				continue
			}
			if x, ok := plain(fv); ok {
				m[name] = x
			}
		}
		return m, true
	case reflect.Slice, reflect.Array:
		if v.Kind() == reflect.Slice && v.IsNil() {
			return nil, false
		}
		l := make([]any, 0, v.Len())
		for i := range v.Len() {
			x, _ := plain(v.Index(i))
			l = append(l, x)
		}
		return l, true
	case reflect.Map:
		m := make(map[string]any, v.Len())
		for it := v.MapRange(); it.Next(); {
			if x, ok := plain(it.Value()); ok {
				m[fmt.Sprint(it.Key().Interface())] = x
			}
		}
		return m, true
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return v.Int(), true
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return v.Uint(), true
	case reflect.Float32, reflect.Float64:
		return v.Float(), true
	case reflect.Bool:
		return v.Bool(), true
	case reflect.String:
		return v.String(), true
	}
	panic(fmt.Sprintf("xds: metadata cannot hold a %s", v.Type()))
}

// emptyJSON is encoding/json's omitempty test, plus durations never set.
func emptyJSON(v reflect.Value) bool {
	if v.Type() == durationType {
		return !v.Interface().(config.Duration).IsSet()
	}
	switch v.Kind() {
	case reflect.Array, reflect.Map, reflect.Slice, reflect.String:
		return v.Len() == 0
	case reflect.Pointer, reflect.Interface:
		return v.IsNil()
	case reflect.Struct:
		return false
	}
	return v.IsZero()
}

// Validate runs every resource's protoc-gen-validate rules.
func (r *Resources) Validate() error {
	type validating interface{ Validate() error }
	check := func(kind, name string, m validating) error {
		if err := m.Validate(); err != nil {
			return fmt.Errorf("%s %q: %w", kind, name, err)
		}
		return nil
	}
	for _, x := range r.Listeners {
		if err := check("listener", x.GetName(), x); err != nil {
			return err
		}
	}
	for _, x := range r.Routes {
		if err := check("route config", x.GetName(), x); err != nil {
			return err
		}
	}
	for _, x := range r.Clusters {
		if err := check("cluster", x.GetName(), x); err != nil {
			return err
		}
	}
	for _, x := range r.Endpoints {
		if err := check("cluster load assignment", x.GetClusterName(), x); err != nil {
			return err
		}
	}
	for _, x := range r.Runtimes {
		if err := check("runtime", x.GetName(), x); err != nil {
			return err
		}
	}
	return nil
}

// Add files resources by type, unwrapping them from an Any (as a
// DiscoveryResponse carries them).
func (r *Resources) Add(msgs ...proto.Message) error {
	for _, m := range msgs {
		if a, ok := m.(*anypb.Any); ok {
			u, err := a.UnmarshalNew()
			if err != nil {
				return fmt.Errorf("adding xDS resource of type %s: %w", a.GetTypeUrl(), err)
			}
			m = u
		}
		switch x := m.(type) {
		case *listenerv3.Listener:
			r.Listeners = append(r.Listeners, x)
		case *routev3.RouteConfiguration:
			r.Routes = append(r.Routes, x)
		case *clusterv3.Cluster:
			r.Clusters = append(r.Clusters, x)
		case *endpointv3.ClusterLoadAssignment:
			r.Endpoints = append(r.Endpoints, x)
		case *runtimev3.Runtime:
			r.Runtimes = append(r.Runtimes, x)
		default:
			return fmt.Errorf("adding xDS resource: %T is not a type the sidecar reads", m)
		}
	}
	return nil
}

func (r *Resources) byType() map[resourcev3.Type][]types.Resource {
	m := map[resourcev3.Type][]types.Resource{}
	for _, x := range r.Listeners {
		m[resourcev3.ListenerType] = append(m[resourcev3.ListenerType], x)
	}
	for _, x := range r.Routes {
		m[resourcev3.RouteType] = append(m[resourcev3.RouteType], x)
	}
	for _, x := range r.Clusters {
		m[resourcev3.ClusterType] = append(m[resourcev3.ClusterType], x)
	}
	for _, x := range r.Endpoints {
		m[resourcev3.EndpointType] = append(m[resourcev3.EndpointType], x)
	}
	for _, x := range r.Runtimes {
		m[resourcev3.RuntimeType] = append(m[resourcev3.RuntimeType], x)
	}
	return m
}

// Snapshot assembles the resources into a snapshot for go-control-plane's
// cache at version, once they validate and every reference resolves.
func (r *Resources) Snapshot(version string) (*cachev3.Snapshot, error) {
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("assembling xDS snapshot %s: %w", version, err)
	}
	// The snapshot indexes by name: a second resource of a name would
	// silently replace the first.
	for typ, items := range r.byType() {
		seen := map[string]bool{}
		for _, x := range items {
			name := cachev3.GetResourceName(x)
			if seen[name] {
				return nil, fmt.Errorf("assembling xDS snapshot %s: two %s resources named %q", version, strings.TrimPrefix(typ, resourcev3.APITypePrefix), name)
			}
			seen[name] = true
		}
	}
	snap, err := cachev3.NewSnapshot(version, r.byType())
	if err != nil {
		return nil, fmt.Errorf("assembling xDS snapshot %s: %w", version, err)
	}
	// Consistent follows route references through socket listeners' filter
	// chains only, so a route configuration that only gRPC's API listeners
	// use would look orphaned. Check a copy in which each API listener's
	// connection manager also sits in a filter chain; serve the original.
	check, err := cachev3.NewSnapshot(version, r.withAPIListenersAsChains().byType())
	if err != nil {
		return nil, fmt.Errorf("assembling xDS snapshot %s: %w", version, err)
	}
	if err := check.Consistent(); err != nil {
		return nil, fmt.Errorf("xDS snapshot %s is inconsistent: %w", version, err)
	}
	return snap, nil
}

func (r *Resources) withAPIListenersAsChains() *Resources {
	c := *r
	c.Listeners = nil
	for _, l := range r.Listeners {
		if a := l.GetApiListener().GetApiListener(); a != nil {
			l = &listenerv3.Listener{
				Name: l.Name,
				FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
					Name:       wellknown.HTTPConnectionManager,
					ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: a},
				}}}},
			}
		}
		c.Listeners = append(c.Listeners, l)
	}
	return &c
}
