package xds

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	leastrequestv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/least_request/v3"
	randomv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/random/v3"
	roundrobinv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/round_robin/v3"
	rawbufferv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/watertight/watertight/config"
)

// Model translates xDS resources into a config, defaults set and validated.
//
// Standard fields come first, so that any control plane can drive the
// sidecar with Envoy's resources alone; our metadata (see the package
// comment) then adds what they cannot say. Where Envoy's default and ours
// differ, the resource's absence of a field means ours: no route timeout is
// our 15s (Envoy's too), no protocol options is protocol auto, no
// max_pending_requests is no queue. lb_policy is an enum whose zero is
// ROUND_ROBIN, so a cluster that does not set it gets round robin, as in
// Envoy. With no Runtime resource the budget is config.DefaultBudget plus the
// clusters' max_requests: Envoy's max_requests are limits of their own, not
// shares of one budget.
//
// Clusters may be EDS (endpoints from the ClusterLoadAssignment named by
// eds_cluster_config.service_name or the cluster's name), or STATIC,
// STRICT_DNS or LOGICAL_DNS with their load_assignment inline (the sidecar
// resolves names itself). Endpoints that are UNHEALTHY, DRAINING or TIMEOUT
// are left out, as are localities of a priority above 0. Listeners are the
// socket listeners with an HttpConnectionManager; API listeners are gRPC's
// and are skipped. A listener whose route configuration has a single
// virtual host matching "*" is in mode upstream; otherwise it routes by
// host, each virtual host's domains being hosts of the cluster its first
// route goes to.
//
// The warnings name each field that is set but not supported and was
// ignored, one per field; the caller logs them. The error, an *Error, lists
// what makes no sense (a route to a missing cluster, an unparsable duration,
// an endpoint without an address, ...), each naming the resource and field:
// the reason to NACK with.
func Model(r *Resources) (*config.Config, []string, error) {
	m := &modeler{res: r, ups: map[string]*upstreamState{}, claims: map[string]claim{}, xdsListener: map[string]string{}}
	cfg := m.model()
	if len(m.problems) > 0 {
		return nil, m.warnings, &Error{Problems: m.problems}
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, m.warnings, m.validationError(cfg, err)
	}
	return cfg, m.warnings, nil
}

// Error is what makes no sense in a set of xDS resources.
type Error struct {
	// Problems each name a resource and a field.
	Problems []string
	err      error // config validation's, when the problems come from it
}

func (e *Error) Error() string { return "invalid xDS resources: " + strings.Join(e.Problems, "; ") }

// Unwrap gives the *config.ValidationError behind the problems, if any.
func (e *Error) Unwrap() error { return e.err }

type modeler struct {
	res                *Resources
	warnings, problems []string

	ups         map[string]*upstreamState // by cluster name
	upOrder     []*upstreamState
	claims      map[string]claim  // host key → who claimed it
	xdsListener map[string]string // config listener name → xDS name
	budgetSet   bool
	order       order
	composites  []config.Composite // from the listeners' metadata
}

type upstreamState struct {
	u *config.Upstream
	c *clusterv3.Cluster

	badType   bool    // a type the sidecar cannot serve, already reported
	budget    float64 // from retry_budget, for when the upstream turns out to retry
	hasBudget bool
	// routeFrom is the route whose timeout and retry policy the upstream
	// took; routeKey those parts of it, to compare with other routes.
	routeFrom string
	routeKey  *routev3.RouteAction
}

type claim struct {
	cluster string
	where   string
}

// at is a place in a resource, for warnings and problems.
type at struct{ res, path string }

func (a at) field(f string) at {
	if a.path == "" {
		return at{a.res, f}
	}
	return at{a.res, a.path + "." + f}
}

func (a at) index(i int) at { return at{a.res, fmt.Sprintf("%s[%d]", a.path, i)} }

func (a at) String() string {
	if a.path == "" {
		return a.res
	}
	return a.res + ": " + a.path
}

func (m *modeler) warn(where at, format string, args ...any) {
	m.warnings = append(m.warnings, where.String()+": "+fmt.Sprintf(format, args...))
}

func (m *modeler) fail(where at, format string, args ...any) {
	m.problems = append(m.problems, where.String()+": "+fmt.Sprintf(format, args...))
}

// unsupported warns once for every field set in msg that is not known.
func (m *modeler) unsupported(where at, msg proto.Message, known ...string) {
	var names []string
	msg.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		if name := string(fd.Name()); !slices.Contains(known, name) {
			names = append(names, name)
		}
		return true
	})
	slices.Sort(names) // Range's order is undefined
	for _, n := range names {
		m.warn(where.field(n), "not supported, ignored")
	}
}

func (m *modeler) model() *config.Config {
	cfg := &config.Config{}
	m.runtime(cfg)
	clusters := slices.SortedFunc(slices.Values(m.res.Clusters), func(a, b *clusterv3.Cluster) int {
		return cmp.Compare(a.GetName(), b.GetName())
	})
	for _, c := range clusters {
		if _, dup := m.ups[c.GetName()]; dup {
			m.fail(at{res: fmt.Sprintf("cluster %q", c.GetName())}, "is defined twice")
			continue
		}
		st := m.cluster(c)
		m.ups[c.GetName()] = st
		m.upOrder = append(m.upOrder, st)
	}
	m.endpoints()
	listeners := m.socketListeners()
	m.routes(listeners)
	caps := 0
	for _, st := range m.upOrder {
		m.clusterMetadata(st)
		caps += st.u.Bulkhead.MaxConcurrent
		cfg.Upstreams = append(cfg.Upstreams, *st.u)
	}
	if !m.budgetSet && caps > 0 {
		cfg.Budget = config.DefaultBudget + caps
	}
	for _, sl := range listeners {
		if l, ok := m.listener(sl); ok {
			cfg.Listeners = append(cfg.Listeners, l)
		}
	}
	cfg.Composites = m.composites
	sortBy(cfg.Listeners, m.order.Listeners, func(l config.Listener) string { return l.Name })
	sortBy(cfg.Composites, m.order.Composites, func(c config.Composite) string { return c.Name })
	sortBy(cfg.Upstreams, m.order.Upstreams, func(u config.Upstream) string { return u.Name })
	return cfg
}

// sortBy puts items in the order the runtime layer gave; the others (all of
// them, for a control plane that does not say) keep their order by name.
func sortBy[T any](items []T, names []string, name func(T) string) {
	// Ranks looked up once per item: a search per comparison made this
	// quadratic in the number of upstreams.
	pos := make(map[string]int, len(names))
	for i, n := range names {
		if _, dup := pos[n]; !dup {
			pos[n] = i
		}
	}
	type ranked struct {
		rank int
		item T
	}
	rs := make([]ranked, len(items))
	for i, t := range items {
		r, ok := pos[name(t)]
		if !ok {
			r = len(names)
		}
		rs[i] = ranked{r, t}
	}
	slices.SortStableFunc(rs, func(a, b ranked) int { return cmp.Compare(a.rank, b.rank) })
	for i := range rs {
		items[i] = rs[i].item
	}
}

func (m *modeler) runtime(cfg *config.Config) {
	var found *structpb.Struct
	for _, rt := range m.res.Runtimes {
		if rt.GetName() != RuntimeName {
			continue // a layer for Envoy, not ours
		}
		if found != nil {
			m.fail(at{res: fmt.Sprintf("runtime %q", RuntimeName)}, "is defined twice")
			return
		}
		found = rt.GetLayer()
		if found == nil {
			found = &structpb.Struct{}
		}
	}
	if found == nil {
		return
	}
	layer := runtimeLayer{
		Admin:        &cfg.Admin,
		Budget:       &cfg.Budget,
		UnknownHosts: &cfg.UnknownHosts,
		Isolation:    &cfg.Isolation,
		Passthrough:  &cfg.PassthroughConnections,
		Order:        &m.order,
	}
	m.overlay(at{res: fmt.Sprintf("runtime %q", RuntimeName), path: "layer"}, found, &layer)
	m.budgetSet = found.GetFields()["budget"] != nil
}

func (m *modeler) cluster(c *clusterv3.Cluster) *upstreamState {
	where := at{res: fmt.Sprintf("cluster %q", c.GetName())}
	m.unsupported(where, c, "name", "type", "eds_cluster_config", "load_assignment", "lb_policy",
		"load_balancing_policy", "circuit_breakers", "outlier_detection", "transport_socket",
		"typed_extension_protocol_options", "metadata", "http2_protocol_options", "protocol_selection")
	u := &config.Upstream{Name: c.GetName()}
	st := &upstreamState{u: u, c: c}
	switch t := c.GetClusterDiscoveryType().(type) {
	case nil, *clusterv3.Cluster_Type:
		switch c.GetType() {
		case clusterv3.Cluster_EDS, clusterv3.Cluster_STATIC, clusterv3.Cluster_STRICT_DNS, clusterv3.Cluster_LOGICAL_DNS:
		default:
			m.fail(where.field("type"), "%s is not supported (EDS, STATIC, STRICT_DNS or LOGICAL_DNS)", c.GetType())
			st.badType = true
		}
	case *clusterv3.Cluster_ClusterType:
		m.fail(where.field("cluster_type"), "%q is not supported (EDS, STATIC, STRICT_DNS or LOGICAL_DNS)", t.ClusterType.GetName())
		st.badType = true
	}
	u.LoadBalancer = m.loadBalancer(where, c)
	m.circuitBreakers(where.field("circuit_breakers"), c.GetCircuitBreakers(), st)
	u.OutlierDetection = m.outlierDetection(where.field("outlier_detection"), c.GetOutlierDetection())
	u.TLS = m.tls(where.field("transport_socket"), c.GetTransportSocket())
	proto, h2, h2w := m.protocol(where, c)
	u.Protocol = proto
	u.HTTP2 = m.http2Options(h2w, h2, u.TLS != nil)
	return st
}

func (m *modeler) loadBalancer(where at, c *clusterv3.Cluster) string {
	// load_balancing_policy supersedes lb_policy (Envoy and gRPC agree), and
	// its first policy the sidecar knows wins.
	if lbp := c.GetLoadBalancingPolicy(); lbp != nil {
		for _, p := range lbp.GetPolicies() {
			tc := p.GetTypedExtensionConfig().GetTypedConfig()
			switch {
			case tc.MessageIs(&randomv3.Random{}):
				return config.LBRandom
			case tc.MessageIs(&roundrobinv3.RoundRobin{}):
				return config.LBRoundRobin
			case tc.MessageIs(&leastrequestv3.LeastRequest{}):
				return config.LBLeastRequest
			}
		}
		m.warn(where.field("load_balancing_policy"), "has no policy the sidecar knows (RoundRobin, LeastRequest, Random), lb_policy is used")
	}
	switch c.GetLbPolicy() {
	case clusterv3.Cluster_ROUND_ROBIN:
		return config.LBRoundRobin
	case clusterv3.Cluster_LEAST_REQUEST:
		return config.LBLeastRequest
	case clusterv3.Cluster_RANDOM:
		return config.LBRandom
	}
	m.warn(where.field("lb_policy"), "%s is not supported, %s is used", c.GetLbPolicy(), config.LBLeastRequest)
	return ""
}

func (m *modeler) circuitBreakers(where at, cb *clusterv3.CircuitBreakers, st *upstreamState) {
	if cb == nil {
		return
	}
	m.unsupported(where, cb, "thresholds")
	seen := false
	for i, th := range cb.GetThresholds() {
		tw := where.field("thresholds").index(i)
		if th.GetPriority() != corev3.RoutingPriority_DEFAULT {
			m.warn(tw.field("priority"), "%s is not supported, this threshold is ignored", th.GetPriority())
			continue
		}
		if seen {
			m.warn(tw, "a second DEFAULT threshold, ignored")
			continue
		}
		seen = true
		m.unsupported(tw, th, "priority", "max_requests", "max_pending_requests", "retry_budget")
		if v := th.GetMaxRequests(); v != nil {
			if v.GetValue() == 0 {
				m.fail(tw.field("max_requests"), "0 would refuse every request")
			}
			st.u.Bulkhead.MaxConcurrent = int(v.GetValue())
		}
		if v := th.GetMaxPendingRequests(); v != nil {
			st.u.Bulkhead.MaxQueue = int(v.GetValue())
		}
		if rb := th.GetRetryBudget(); rb != nil {
			bw := tw.field("retry_budget")
			m.unsupported(bw, rb, "budget_percent", "min_retry_concurrency")
			if p := rb.GetBudgetPercent(); p != nil {
				if p.GetValue() < 0 || p.GetValue() > 100 {
					m.fail(bw.field("budget_percent"), "%v must be from 0 to 100", p.GetValue())
				}
				st.budget, st.hasBudget = budgetFromPercent(p.GetValue()), true
			}
			if mc := rb.GetMinRetryConcurrency(); mc != nil && mc.GetValue() != minRetryConcurrency {
				m.warn(bw.field("min_retry_concurrency"), "%d is not supported (always %d), ignored", mc.GetValue(), minRetryConcurrency)
			}
		}
	}
}

func budgetFromPercent(p float64) float64 { return p / 100 }

func (m *modeler) outlierDetection(where at, od *clusterv3.OutlierDetection) *config.OutlierDetection {
	if od == nil {
		return nil
	}
	m.unsupported(where, od, "consecutive_5xx", "interval", "base_ejection_time", "max_ejection_time",
		"max_ejection_percent", "enforcing_success_rate")
	if v := od.GetEnforcingSuccessRate(); v != nil && v.GetValue() > 0 {
		m.warn(where.field("enforcing_success_rate"), "success-rate ejection is not supported, ignored")
	}
	out := &config.OutlierDetection{}
	if v := od.GetConsecutive_5Xx(); v != nil {
		out.ConsecutiveFailures = int(v.GetValue())
	}
	if v := od.GetMaxEjectionPercent(); v != nil {
		out.MaxEjectionPercent = int(v.GetValue())
	}
	out.Interval = m.dur(where.field("interval"), od.GetInterval())
	out.BaseEjectionTime = m.dur(where.field("base_ejection_time"), od.GetBaseEjectionTime())
	out.MaxEjectionTime = m.dur(where.field("max_ejection_time"), od.GetMaxEjectionTime())
	return out
}

// dur reads a duration field: absent is unset (a default applies).
func (m *modeler) dur(where at, d *durationpb.Duration) config.Duration {
	if d == nil {
		return config.Duration{}
	}
	if err := d.CheckValid(); err != nil {
		m.fail(where, "%v", err)
		return config.Duration{}
	}
	if d.AsDuration() < 0 {
		m.fail(where, "%s must not be negative", d.AsDuration())
	}
	return config.D(d.AsDuration())
}

// tls refuses a transport socket it cannot honour: ignoring one could send
// in cleartext what was meant to be encrypted.
func (m *modeler) tls(where at, ts *corev3.TransportSocket) *config.TLS {
	if ts == nil {
		return nil
	}
	tc := ts.GetTypedConfig()
	switch {
	case tc.MessageIs(&rawbufferv3.RawBuffer{}),
		tc == nil && ts.GetName() == "envoy.transport_sockets.raw_buffer":
		return nil
	case tc == nil && ts.GetName() == wellknown.TransportSocketTLS:
		return &config.TLS{}
	case !tc.MessageIs(&tlsv3.UpstreamTlsContext{}):
		m.fail(where, "%q (%s) is not supported (only tls and raw_buffer)", ts.GetName(), tc.GetTypeUrl())
		return nil
	}
	ctx := &tlsv3.UpstreamTlsContext{}
	if err := tc.UnmarshalTo(ctx); err != nil {
		m.fail(where.field("typed_config"), "%v", err)
		return nil
	}
	where = where.field("typed_config")
	m.unsupported(where, ctx, "sni", "common_tls_context")
	out := &config.TLS{SNI: ctx.GetSni()}
	cc := ctx.GetCommonTlsContext()
	if cc == nil {
		return out
	}
	cw := where.field("common_tls_context")
	m.unsupported(cw, cc, "validation_context")
	vc := cc.GetValidationContext()
	if vc == nil {
		return out
	}
	vw := cw.field("validation_context")
	m.unsupported(vw, vc, "trusted_ca", "system_root_certs")
	if ca := vc.GetTrustedCa(); ca != nil {
		if f := ca.GetFilename(); f != "" {
			out.CAFile = f
		} else {
			m.warn(vw.field("trusted_ca"), "only a filename is supported, the system roots are used")
		}
	}
	return out
}

// protocol reads the cluster's upstream protocol, and the HTTP/2 settings
// that go with it (nil when none are sent) with where they were: the
// explicit HTTP/2 config, the HTTP/2 half of the downstream-following or
// ALPN config, or the older cluster-level field.
func (m *modeler) protocol(where at, c *clusterv3.Cluster) (string, *corev3.Http2ProtocolOptions, at) {
	for _, key := range slices.Sorted(maps.Keys(c.GetTypedExtensionProtocolOptions())) {
		a := c.GetTypedExtensionProtocolOptions()[key]
		kw := where.field(fmt.Sprintf("typed_extension_protocol_options[%q]", key))
		if !a.MessageIs(&httpv3.HttpProtocolOptions{}) {
			m.warn(kw, "not supported, ignored")
			continue
		}
		opts := &httpv3.HttpProtocolOptions{}
		if err := a.UnmarshalTo(opts); err != nil {
			m.fail(kw, "%v", err)
			return "", nil, at{}
		}
		m.unsupported(kw, opts, "explicit_http_config", "use_downstream_protocol_config", "auto_config")
		explicit := opts.GetExplicitHttpConfig()
		switch {
		case explicit.GetHttpProtocolOptions() != nil:
			return config.ProtocolHTTP1, nil, at{}
		case explicit.GetHttp2ProtocolOptions() != nil:
			return config.ProtocolHTTP2, explicit.GetHttp2ProtocolOptions(), kw.field("explicit_http_config.http2_protocol_options")
		case explicit.GetHttp3ProtocolOptions() != nil:
			m.warn(kw.field("explicit_http_config.http3_protocol_options"), "HTTP/3 is not supported, protocol auto is used")
		case opts.GetAutoConfig() != nil:
			m.warn(kw.field("auto_config"), "ALPN selection is read as protocol auto (the app's protocol)")
			return config.ProtocolAuto, opts.GetAutoConfig().GetHttp2ProtocolOptions(), kw.field("auto_config.http2_protocol_options")
		}
		return config.ProtocolAuto, opts.GetUseDownstreamProtocolConfig().GetHttp2ProtocolOptions(), kw.field("use_downstream_protocol_config.http2_protocol_options")
	}
	// The cluster-level fields older control planes still send.
	h2, h2w := c.GetHttp2ProtocolOptions(), where.field("http2_protocol_options")
	switch {
	case c.GetProtocolSelection() == clusterv3.Cluster_USE_DOWNSTREAM_PROTOCOL:
		return config.ProtocolAuto, h2, h2w
	case h2 != nil:
		return config.ProtocolHTTP2, h2, h2w
	}
	return "", nil, at{} // auto, the default (Envoy's would be HTTP/1.1)
}

// http2Options reads the settings protocol found at where.
func (m *modeler) http2Options(where at, h2 *corev3.Http2ProtocolOptions, tls bool) *config.HTTP2 {
	mcs := h2.GetMaxConcurrentStreams()
	if mcs == nil {
		return nil
	}
	fw := where.field("max_concurrent_streams")
	switch n := mcs.GetValue(); {
	case n < 1 || n > config.MaxHTTP2Streams:
		m.fail(fw, "%d is not between 1 and %d", n, config.MaxHTTP2Streams)
	case tls:
		m.warn(fw, "only cleartext (h2c) connections take a cap; over TLS the endpoint's own limit applies, ignored")
	default:
		return &config.HTTP2{MaxConcurrentStreams: int(n)}
	}
	return nil
}

func (m *modeler) endpoints() {
	clas := map[string]*endpointv3.ClusterLoadAssignment{}
	for _, la := range m.res.Endpoints {
		if _, dup := clas[la.GetClusterName()]; dup {
			m.fail(at{res: fmt.Sprintf("cluster load assignment %q", la.GetClusterName())}, "is defined twice")
		}
		clas[la.GetClusterName()] = la
	}
	used := map[string]bool{}
	for _, st := range m.upOrder {
		if st.badType {
			continue
		}
		c := st.c
		where := at{res: fmt.Sprintf("cluster %q", c.GetName())}
		var la *endpointv3.ClusterLoadAssignment
		var lw at
		if c.GetType() == clusterv3.Cluster_EDS {
			eds := c.GetEdsClusterConfig()
			m.unsupported(where.field("eds_cluster_config"), eds, "eds_config", "service_name")
			if src := eds.GetEdsConfig(); src != nil && src.GetAds() == nil && src.GetSelf() == nil {
				m.warn(where.field("eds_cluster_config.eds_config"), "only ADS is supported, read from ADS")
			}
			if c.GetLoadAssignment() != nil {
				m.warn(where.field("load_assignment"), "an EDS cluster's endpoints come from EDS, ignored")
			}
			name := cmp.Or(eds.GetServiceName(), c.GetName())
			if la = clas[name]; la == nil {
				m.fail(where, "no ClusterLoadAssignment %q for this EDS cluster", name)
				continue
			}
			used[name] = true
			lw = at{res: fmt.Sprintf("cluster load assignment %q", name)}
		} else {
			if la = c.GetLoadAssignment(); la == nil {
				m.fail(where.field("load_assignment"), "is required for a %s cluster", c.GetType())
				continue
			}
			lw = where.field("load_assignment")
		}
		st.u.Endpoints = m.lbEndpoints(lw, la)
	}
	for _, la := range m.res.Endpoints {
		if !used[la.GetClusterName()] {
			m.warn(at{res: fmt.Sprintf("cluster load assignment %q", la.GetClusterName())}, "no EDS cluster uses it, ignored")
		}
	}
}

func (m *modeler) lbEndpoints(where at, la *endpointv3.ClusterLoadAssignment) []config.Endpoint {
	m.unsupported(where, la, "cluster_name", "endpoints")
	var out []config.Endpoint
	weights := map[uint32]bool{}
	for i, loc := range la.GetEndpoints() {
		lw := where.field("endpoints").index(i)
		m.unsupported(lw, loc, "locality", "lb_endpoints", "load_balancing_weight", "priority")
		if loc.GetPriority() > 0 {
			m.warn(lw.field("priority"), "%d: only priority 0 is used, this locality is ignored", loc.GetPriority())
			continue
		}
		weights[loc.GetLoadBalancingWeight().GetValue()] = true
		for j, lb := range loc.GetLbEndpoints() {
			ew := lw.field("lb_endpoints").index(j)
			m.unsupported(ew, lb, "endpoint", "health_status", "load_balancing_weight", "metadata")
			switch lb.GetHealthStatus() {
			case corev3.HealthStatus_UNHEALTHY, corev3.HealthStatus_DRAINING, corev3.HealthStatus_TIMEOUT:
				continue
			}
			ep := lb.GetEndpoint()
			if ep == nil {
				m.fail(ew.field("endpoint"), "is missing: an endpoint needs an address (endpoint_name is not supported)")
				continue
			}
			m.unsupported(ew.field("endpoint"), ep, "address")
			addr, ok := m.address(ew.field("endpoint.address"), ep.GetAddress())
			var meta endpointMeta
			if s := lb.GetMetadata().GetFilterMetadata()[Namespace]; s != nil &&
				m.overlay(ew.field(`metadata.filter_metadata["watertight"]`), s, &meta) && meta.Address != nil {
				addr, ok = *meta.Address, true
			}
			if !ok {
				continue
			}
			out = append(out, config.Endpoint{Address: addr, Weight: int(lb.GetLoadBalancingWeight().GetValue())})
		}
	}
	if len(weights) > 1 {
		m.warn(where.field("endpoints"), "locality weights are not supported; endpoints are balanced by their own weights")
	}
	return out
}

// address reads a socket address as host:port.
func (m *modeler) address(where at, a *corev3.Address) (string, bool) {
	sa := a.GetSocketAddress()
	if sa == nil {
		if a == nil {
			m.fail(where, "is missing")
		} else {
			m.fail(where, "only a socket address (host and port) is supported")
		}
		return "", false
	}
	m.unsupported(where.field("socket_address"), sa, "address", "port_value", "ipv4_compat")
	port, ok := sa.GetPortSpecifier().(*corev3.SocketAddress_PortValue)
	if !ok {
		m.fail(where.field("socket_address"), "needs a port_value (named_port is not supported)")
		return "", false
	}
	if sa.GetAddress() == "" {
		m.fail(where.field("socket_address.address"), "is empty")
		return "", false
	}
	return net.JoinHostPort(sa.GetAddress(), strconv.FormatUint(uint64(port.PortValue), 10)), true
}

// socketListener is a listener's connection manager, found before routes
// are read because it may hold its route configuration inline.
type socketListener struct {
	l     *listenerv3.Listener
	where at
	rds   string       // the route configuration's name, over RDS
	rc    *routeConfig // inline, or once found by name
}

// routeConfig is a route configuration as the listeners see it.
type routeConfig struct {
	rc    *routev3.RouteConfiguration
	where at
	// catchAll is the cluster of a configuration whose one virtual host
	// matches every host: a listener using it is in mode upstream.
	catchAll string
}

func (m *modeler) socketListeners() []*socketListener {
	ls := slices.SortedFunc(slices.Values(m.res.Listeners), func(a, b *listenerv3.Listener) int {
		return cmp.Compare(a.GetName(), b.GetName())
	})
	var out []*socketListener
	for _, l := range ls {
		if l.GetApiListener() != nil {
			continue // gRPC's, saying nothing the route configurations do not
		}
		where := at{res: fmt.Sprintf("listener %q", l.GetName())}
		m.unsupported(where, l, "name", "address", "filter_chains", "default_filter_chain", "use_original_dst", "metadata")
		hcm, hw := m.connectionManager(where, l)
		if hcm == nil {
			m.warn(where, "has no HttpConnectionManager (only HTTP listeners are supported), ignored")
			continue
		}
		m.unsupported(hw, hcm, "codec_type", "stat_prefix", "rds", "route_config", "http_filters")
		for i, f := range hcm.GetHttpFilters() {
			if f.GetName() == wellknown.Router || f.GetTypedConfig().MessageIs(&routerv3.Router{}) {
				continue
			}
			m.warn(hw.field("http_filters").index(i), "%q is not supported, ignored", f.GetName())
		}
		sl := &socketListener{l: l, where: where}
		switch {
		case hcm.GetRds() != nil:
			rds := hcm.GetRds()
			if src := rds.GetConfigSource(); src != nil && src.GetAds() == nil && src.GetSelf() == nil {
				m.warn(hw.field("rds.config_source"), "only ADS is supported, read from ADS")
			}
			if sl.rds = rds.GetRouteConfigName(); sl.rds == "" {
				m.fail(hw.field("rds.route_config_name"), "is empty")
				continue
			}
		case hcm.GetRouteConfig() != nil:
			sl.rc = &routeConfig{rc: hcm.GetRouteConfig(), where: hw.field("route_config")}
		default:
			m.warn(hw, "has neither rds nor route_config (scoped routes are not supported), ignored")
			continue
		}
		out = append(out, sl)
	}
	return out
}

// connectionManager finds the listener's HttpConnectionManager: in the first
// filter chain that has one, the others being ignored.
func (m *modeler) connectionManager(where at, l *listenerv3.Listener) (*hcmv3.HttpConnectionManager, at) {
	type chain struct {
		fc    *listenerv3.FilterChain
		where at
	}
	var chains []chain
	for i, fc := range l.GetFilterChains() {
		chains = append(chains, chain{fc, where.field("filter_chains").index(i)})
	}
	if fc := l.GetDefaultFilterChain(); fc != nil {
		chains = append(chains, chain{fc, where.field("default_filter_chain")})
	}
	var found *hcmv3.HttpConnectionManager
	var hw at
	var others []at
	for _, c := range chains {
		filters := c.fc.GetFilters()
		i := slices.IndexFunc(filters, func(f *listenerv3.Filter) bool {
			return f.GetTypedConfig().MessageIs(&hcmv3.HttpConnectionManager{})
		})
		if found != nil || i < 0 {
			others = append(others, c.where)
			continue
		}
		hcm := &hcmv3.HttpConnectionManager{}
		if err := filters[i].GetTypedConfig().UnmarshalTo(hcm); err != nil {
			m.fail(c.where.field("filters").index(i).field("typed_config"), "%v", err)
			return nil, at{}
		}
		m.unsupported(c.where, c.fc, "filters", "name")
		for j, f := range filters {
			if j != i {
				m.warn(c.where.field("filters").index(j), "%q is not supported, ignored", f.GetName())
			}
		}
		found, hw = hcm, c.where.field("filters").index(i).field("typed_config")
	}
	if found != nil {
		for _, o := range others {
			m.warn(o, "only one HTTP filter chain is supported, ignored")
		}
	}
	return found, hw
}

// routes reads every route configuration: the hosts each cluster claims and
// the timeout and retry policy of its first route.
func (m *modeler) routes(listeners []*socketListener) {
	byName := map[string]*routeConfig{}
	var all []*routeConfig
	for _, rc := range slices.SortedFunc(slices.Values(m.res.Routes), func(a, b *routev3.RouteConfiguration) int {
		return cmp.Compare(a.GetName(), b.GetName())
	}) {
		r := &routeConfig{rc: rc, where: at{res: fmt.Sprintf("route config %q", rc.GetName())}}
		if _, dup := byName[rc.GetName()]; dup {
			m.fail(r.where, "is defined twice")
			continue
		}
		byName[rc.GetName()] = r
		all = append(all, r)
	}
	for _, sl := range listeners {
		if sl.rds == "" {
			all = append(all, sl.rc)
		}
	}
	for _, r := range all {
		m.routeConfig(r)
	}
	for _, sl := range listeners {
		if sl.rds == "" {
			continue
		}
		if sl.rc = byName[sl.rds]; sl.rc == nil {
			m.fail(sl.where, "its route config %q does not exist", sl.rds)
		}
	}
}

func (m *modeler) routeConfig(r *routeConfig) {
	rc := r.rc
	m.unsupported(r.where, rc, "name", "virtual_hosts")
	single := len(rc.GetVirtualHosts()) == 1
	for i, vh := range rc.GetVirtualHosts() {
		vw := r.where.field("virtual_hosts").index(i)
		m.unsupported(vw, vh, "name", "domains", "routes", "retry_policy")
		cluster, action, rw := m.pickRoute(vw, vh)
		if action == nil {
			continue
		}
		st := m.ups[cluster]
		if st == nil {
			m.fail(rw.field("route.cluster"), "cluster %q does not exist", cluster)
			continue
		}
		m.applyRoute(st, vw, rw, vh, action)
		for j, d := range vh.GetDomains() {
			dw := vw.field("domains").index(j)
			switch {
			case d == "*":
				if single {
					r.catchAll = cluster
				} else {
					m.warn(dw, `"*" next to other virtual hosts is not supported (unknown hosts follow unknownHosts), ignored`)
				}
			case strings.Contains(d, "*"):
				m.warn(dw, "wildcard domain %q is not supported (hosts match exactly), ignored", d)
			default:
				m.claim(dw, d, cluster)
			}
		}
	}
}

func (m *modeler) claim(where at, host, cluster string) {
	key, err := config.HostKey(host)
	if err != nil {
		m.fail(where, "%q %v", host, err)
		return
	}
	if prev, ok := m.claims[key]; ok {
		if prev.cluster != cluster {
			m.fail(where, "%q routes to cluster %q, but to cluster %q at %s", host, cluster, prev.cluster, prev.where)
		}
		return // the same host in several route configurations
	}
	m.claims[key] = claim{cluster: cluster, where: where.String()}
	st := m.ups[cluster]
	st.u.Hosts = append(st.u.Hosts, host)
}

// pickRoute finds the virtual host's first route to a cluster: the sidecar
// routes whole hosts, so it is taken for every path and the others are
// ignored.
func (m *modeler) pickRoute(where at, vh *routev3.VirtualHost) (string, *routev3.RouteAction, at) {
	var cluster string
	var action *routev3.RouteAction
	var found at
	for i, r := range vh.GetRoutes() {
		rw := where.field("routes").index(i)
		if action != nil {
			m.warn(rw, "only the first route to a cluster is used, ignored")
			continue
		}
		ra := r.GetRoute()
		if ra == nil {
			m.warn(rw, "only routes to a cluster are supported (not %s), ignored", oneofName(r, "action"))
			continue
		}
		if ra.GetCluster() == "" {
			m.warn(rw.field("route"), "only a single cluster is supported (not %s), ignored", oneofName(ra, "cluster_specifier"))
			continue
		}
		m.unsupported(rw, r, "name", "match", "route")
		if !matchesEverything(r.GetMatch()) {
			m.warn(rw.field("match"), "only whole hosts are routed, the route is taken for every request")
		}
		aw := rw.field("route")
		m.unsupported(aw, ra, "cluster", "timeout", "retry_policy", "max_stream_duration")
		if msd := ra.GetMaxStreamDuration(); msd != nil {
			m.unsupported(aw.field("max_stream_duration"), msd, "grpc_timeout_header_max")
		}
		cluster, action, found = ra.GetCluster(), ra, rw
	}
	if action == nil && len(vh.GetDomains()) > 0 {
		m.warn(where, "has no route to a cluster, its domains are not routed")
	}
	return cluster, action, found
}

func oneofName(msg proto.Message, oneof protoreflect.Name) string {
	r := msg.ProtoReflect()
	if fd := r.WhichOneof(r.Descriptor().Oneofs().ByName(oneof)); fd != nil {
		return string(fd.Name())
	}
	return "nothing"
}

func matchesEverything(rm *routev3.RouteMatch) bool {
	if rm == nil {
		return true
	}
	switch ps := rm.GetPathSpecifier().(type) {
	case nil:
	case *routev3.RouteMatch_Prefix:
		if ps.Prefix != "" && ps.Prefix != "/" {
			return false
		}
	default:
		return false
	}
	rest := proto.Clone(rm).(*routev3.RouteMatch)
	rest.PathSpecifier, rest.CaseSensitive = nil, nil
	return proto.Size(rest) == 0
}

// applyRoute takes the timeout and retry policy of the first route to an
// upstream; others that differ are reported, not merged.
func (m *modeler) applyRoute(st *upstreamState, vw, where at, vh *routev3.VirtualHost, ra *routev3.RouteAction) {
	policy := ra.GetRetryPolicy()
	if policy == nil {
		policy = vh.GetRetryPolicy()
	}
	key := &routev3.RouteAction{Timeout: ra.GetTimeout(), MaxStreamDuration: ra.GetMaxStreamDuration(), RetryPolicy: policy}
	if st.routeKey != nil {
		if !proto.Equal(key, st.routeKey) {
			m.warn(where, "timeout or retry_policy differ from those at %s, which cluster %q keeps", st.routeFrom, st.u.Name)
		}
		return
	}
	st.routeKey, st.routeFrom = key, where.String()
	aw := where.field("route")
	st.u.Timeout = m.dur(aw.field("timeout"), ra.GetTimeout())
	if gm := ra.GetMaxStreamDuration().GetGrpcTimeoutHeaderMax(); gm != nil {
		gw := aw.field("max_stream_duration.grpc_timeout_header_max")
		switch d := m.dur(gw, gm); {
		case !st.u.Timeout.IsSet():
			// A gRPC-minded control plane's way to say the timeout.
			st.u.Timeout = d
		case d.Duration != st.u.Timeout.Duration:
			m.warn(gw, "differs from timeout, which also caps grpc-timeout")
		}
	}
	if policy != nil {
		pw := aw.field("retry_policy")
		if ra.GetRetryPolicy() == nil {
			pw = vw.field("retry_policy")
		}
		st.u.Retry = m.retry(pw, policy)
	}
}

func (m *modeler) retry(where at, p *routev3.RetryPolicy) *config.Retry {
	m.unsupported(where, p, "retry_on", "num_retries", "per_try_timeout", "retriable_status_codes", "retry_back_off")
	r := &config.Retry{Attempts: 1} // Envoy's default num_retries
	if n := p.GetNumRetries(); n != nil {
		r.Attempts = int(n.GetValue())
	}
	on, unknown := ourRetryOn(p.GetRetryOn(), p.GetRetriableStatusCodes())
	for _, u := range unknown {
		m.warn(where.field("retry_on"), "%q is not supported, ignored", u)
	}
	if len(p.GetRetriableStatusCodes()) > 0 && !slices.Contains(splitList(p.GetRetryOn()), "retriable-status-codes") {
		m.warn(where.field("retriable_status_codes"), "retry_on lacks retriable-status-codes, ignored")
	}
	r.On = on
	r.PerTryTimeout = m.dur(where.field("per_try_timeout"), p.GetPerTryTimeout())
	if b := p.GetRetryBackOff(); b != nil {
		bw := where.field("retry_back_off")
		m.unsupported(bw, b, "base_interval", "max_interval")
		r.Backoff.Base = m.dur(bw.field("base_interval"), b.GetBaseInterval())
		r.Backoff.Max = m.dur(bw.field("max_interval"), b.GetMaxInterval())
		if !r.Backoff.Max.IsSet() && r.Backoff.Base.IsSet() {
			r.Backoff.Max = config.D(10 * r.Backoff.Base.Duration) // Envoy's and gRPC's default
		}
	}
	return r
}

func splitList(s string) []string {
	var out []string
	for _, x := range strings.Split(s, ",") {
		if x = strings.TrimSpace(x); x != "" {
			out = append(out, x)
		}
	}
	return out
}

// ourRetryOn reads Envoy's retry_on (and its status codes) as our retry
// conditions, in order; unknown are the conditions we have no equivalent for.
func ourRetryOn(retryOn string, codes []uint32) (on, unknown []string) {
	for _, c := range splitList(retryOn) {
		switch {
		case slices.Contains(envoyRetryNames, c):
			on = append(on, c)
		case c == "retriable-status-codes":
			for _, code := range codes {
				on = append(on, strconv.Itoa(int(code)))
			}
		case c == "retriable-4xx": // Envoy's name for 409 alone
			on = append(on, "409")
		default:
			unknown = append(unknown, c)
		}
	}
	return on, unknown
}

// clusterMetadata lays our metadata over what the standard fields gave.
func (m *modeler) clusterMetadata(st *upstreamState) {
	u := st.u
	if st.hasBudget && u.Retry != nil {
		u.Retry.Budget = st.budget
	}
	if s := st.c.GetMetadata().GetFilterMetadata()[Namespace]; s != nil {
		meta := metaOf(u)
		meta.Retry, meta.Warmup, meta.OutlierDetection = u.Retry, &u.Warmup, u.OutlierDetection
		where := at{res: fmt.Sprintf("cluster %q", u.Name), path: `metadata.filter_metadata["watertight"]`}
		if m.overlay(where, s, &meta) {
			u.Addresses = meta.Addresses
			u.FailureStatuses, u.Hedge, u.CircuitBreaker = meta.FailureStatuses, meta.Hedge, meta.CircuitBreaker
			u.OutlierDetection, u.RateLimit, u.Fallback = meta.OutlierDetection, meta.RateLimit, meta.Fallback
			if meta.Retry != nil && u.Retry == nil && st.hasBudget {
				meta.Retry.Budget = cmp.Or(meta.Retry.Budget, st.budget)
			}
			u.Retry = meta.Retry
		}
	}
	if st.hasBudget && u.Retry == nil {
		m.warn(at{res: fmt.Sprintf("cluster %q", u.Name), path: "circuit_breakers.thresholds.retry_budget"},
			"no route retries to this cluster, ignored")
	}
}

// overlay decodes a Struct of ours onto dst, a pointer to one of the
// metadata shapes whose fields point into the config being built: keys
// present replace what the standard fields gave. Unknown keys are warnings
// (a newer control plane may know more); wrong types and bad durations are
// problems.
func (m *modeler) overlay(where at, s *structpb.Struct, dst any) bool {
	tree := s.AsMap()
	m.prune(where, tree, reflect.TypeOf(dst))
	b, err := json.Marshal(tree)
	if err != nil {
		m.fail(where, "%v", err)
		return false
	}
	if err := json.Unmarshal(b, dst); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			m.fail(where.field(te.Field), "a %s is not a valid %s", te.Value, te.Type)
		} else {
			m.fail(where, "%v", err)
		}
		return false
	}
	before := len(m.problems)
	m.badDurations(where, reflect.ValueOf(dst))
	return len(m.problems) == before
}

// prune drops, with a warning each, the keys of v that t does not have.
func (m *modeler) prune(where at, v any, t reflect.Type) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t == durationType:
		return
	case t == reflect.TypeFor[config.Fallbacks]():
		if obj, ok := v.(map[string]any); ok { // the one-fallback short form
			m.prune(where, obj, reflect.TypeFor[config.Fallback]())
			return
		}
	}
	switch t.Kind() {
	case reflect.Struct:
		obj, ok := v.(map[string]any)
		if !ok {
			return // json reports the wrong type
		}
		fields := jsonFields(t)
		for _, k := range slices.Sorted(maps.Keys(obj)) {
			f, ok := fields[k]
			if !ok {
				m.warn(where.field(k), "not known to this sidecar, ignored")
				delete(obj, k)
				continue
			}
			m.prune(where.field(k), obj[k], f.Type)
		}
	case reflect.Slice:
		list, _ := v.([]any)
		for i, e := range list {
			m.prune(where.index(i), e, t.Elem())
		}
	}
}

// jsonFieldsOf caches jsonFields by type: every cluster's metadata walks
// the same few types, and building the map was a tenth of the translation.
var jsonFieldsOf sync.Map // reflect.Type → map[string]reflect.StructField (read-only once stored)

func jsonFields(t reflect.Type) map[string]reflect.StructField {
	if f, ok := jsonFieldsOf.Load(t); ok {
		return f.(map[string]reflect.StructField)
	}
	f, _ := jsonFieldsOf.LoadOrStore(t, buildJSONFields(t))
	return f.(map[string]reflect.StructField)
}

func buildJSONFields(t reflect.Type) map[string]reflect.StructField {
	out := map[string]reflect.StructField{}
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if f.IsExported() && name != "-" {
			out[cmp.Or(name, f.Name)] = f
		}
	}
	return out
}

// badDurations reports durations that did not parse: config.Duration keeps
// their text, which is all its String shows.
func (m *modeler) badDurations(where at, v reflect.Value) {
	if v.Type() == durationType {
		if d := v.Interface().(config.Duration); !d.Valid() {
			m.fail(where, "%q is not a duration (use Go syntax like \"250ms\" or \"2s\")", d.String())
		}
		return
	}
	switch v.Kind() {
	case reflect.Pointer:
		if !v.IsNil() {
			m.badDurations(where, v.Elem())
		}
	case reflect.Struct:
		for name, f := range jsonFields(v.Type()) {
			m.badDurations(where.field(name), v.FieldByIndex(f.Index))
		}
	case reflect.Slice:
		for i := range v.Len() {
			m.badDurations(where.index(i), v.Index(i))
		}
	}
}

func (m *modeler) listener(sl *socketListener) (config.Listener, bool) {
	l := sl.l
	name := strings.TrimPrefix(l.GetName(), listenerPrefix)
	out := config.Listener{Name: name}
	addr, ok := m.address(sl.where.field("address"), l.GetAddress())
	var meta listenerMeta
	if s := l.GetMetadata().GetFilterMetadata()[Namespace]; s != nil &&
		m.overlay(sl.where.field(`metadata.filter_metadata["watertight"]`), s, &meta) {
		if meta.Address != nil {
			addr, ok = *meta.Address, true
		}
		out.AccessLog = meta.AccessLog
	}
	if !ok || sl.rc == nil {
		if len(meta.Composites) > 0 {
			m.warn(sl.where.field(`metadata.filter_metadata["watertight"].composites`), "the listener is left out, and so are its composites")
		}
		return out, false
	}
	for _, c := range meta.Composites {
		c.Listener = name // the listener that carries it serves it
		m.composites = append(m.composites, c)
	}
	out.Address = addr
	switch {
	case l.GetUseOriginalDst().GetValue():
		out.Mode = config.ModeTransparent
	case sl.rc.catchAll != "":
		out.Mode, out.Upstream = config.ModeUpstream, sl.rc.catchAll
	default:
		out.Mode = config.ModeProxy
	}
	m.xdsListener[name] = l.GetName()
	return out, true
}

var fieldPath = regexp.MustCompile(`^(upstreams|listeners|composites)\[(\d+)\](?:\.(.*))?$`)

// validationError names, for each of the config's problems, the resource it
// came from.
func (m *modeler) validationError(cfg *config.Config, err error) error {
	var ve *config.ValidationError
	if !errors.As(err, &ve) {
		return &Error{Problems: []string{err.Error()}, err: err}
	}
	out := &Error{err: err}
	for _, fe := range ve.Errors {
		where := at{res: fmt.Sprintf("runtime %q", RuntimeName), path: fe.Path}
		if g := fieldPath.FindStringSubmatch(fe.Path); g != nil {
			i, _ := strconv.Atoi(g[2])
			switch g[1] {
			case "upstreams":
				where = at{res: fmt.Sprintf("cluster %q", cfg.Upstreams[i].Name), path: g[3]}
			case "listeners":
				name := cmp.Or(m.xdsListener[cfg.Listeners[i].Name], cfg.Listeners[i].Name)
				where = at{res: fmt.Sprintf("listener %q", name), path: g[3]}
			case "composites":
				c := cfg.Composites[i]
				name := cmp.Or(m.xdsListener[c.Listener], c.Listener)
				where = at{res: fmt.Sprintf("listener %q", name), path: fmt.Sprintf(`metadata.filter_metadata["watertight"].composites[name=%q]`, c.Name)}
				if g[3] != "" {
					where = where.field(g[3])
				}
			}
		} else if fe.Path == "upstreams" {
			where = at{res: "clusters"}
		}
		out.Problems = append(out.Problems, where.String()+": "+fe.Msg)
	}
	return out
}
