package xds

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	runtimev3 "github.com/envoyproxy/go-control-plane/envoy/service/runtime/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/watertight/watertight/config"
)

// everyField sets every field of the schema, most to a value that is not
// the default, and takes the translation's special paths: an upstream-mode
// listener named like an upstream, an upstream whose name is not one of its
// hosts, an address Envoy's form cannot hold (":9003", a port with a leading
// 0), retry conditions Envoy cannot say or order, a budget that is not exact
// in percent, retries with 0 attempts, a backoff and an outlier interval of
// 0, TLS without a CA file.
const everyField = `
admin: {address: 127.0.0.1:15999}
budget: 500
unknownHosts: passthrough
isolation: shared
passthroughConnections: 77
listeners:
  - {name: outbound, address: 127.0.0.1:15001, mode: proxy, accessLog: {sample: 0.25}}
  - {name: payments, address: 127.0.0.1:9002, mode: upstream, upstream: payments}
  - {name: all, address: ":9003", mode: proxy}
upstreams:
  - name: payments
    hosts: [pay.shop.svc, "Pay.Example.com:8443"]
    addresses: ["10.96.0.12:443", "[fd00::12]:443"]
    protocol: http2
    tls: {sni: pay.shop.svc, caFile: /etc/watertight/ca.pem}
    endpoints: ["10.0.0.1:8443", {address: "pay-1.internal:08443", weight: 7}]
    loadBalancer: random
    bulkhead: {weight: 3, maxConcurrent: 40, minConcurrent: 2, maxQueue: 10, maxWait: 50ms}
    timeout: 2s
    failureStatuses: [500, 502, 503, 429]
    retry:
      attempts: 3
      perTryTimeout: 500ms
      on: [timeout, "502", reset, "503", unavailable]
      budget: 0.07
      bufferLimit: 1024
      backoff: {base: 10ms, max: 1s}
    hedge: {delay: 20ms, percentile: 95, maxHedges: 2}
    circuitBreaker: {failureRate: 0.25, minRequests: 10, consecutiveFailures: 7, window: 30s, openFor: 15s,
                     halfOpenRequests: 2, slowCall: 800ms, slowCallRate: 0.6}
    warmup: 20s
    outlierDetection: {consecutiveFailures: 3, interval: 5s, baseEjectionTime: 15s, maxEjectionTime: 2m, maxEjectionPercent: 40}
    rateLimit: {rps: 250.5, burst: 20}
    fallback:
      - {on: [bulkhead_full, circuit_open], status: 503, headers: {content-type: application/json, retry-after: "1"},
         body: '{"error":"busy"}'}
      - {on: [timeout], grpcStatus: UNAVAILABLE, grpcMessage: try later, grpcBody: CgJvaw==}
  - name: inventory
    hosts: [inventory]
    protocol: http1
    tls: {}
    endpoints: [127.0.0.1:8081]
    loadBalancer: round_robin
    timeout: 0s
    retry: {attempts: 0, backoff: {base: 0s, max: 0s}}
    outlierDetection: {interval: 0s}
  - name: search
    protocol: auto
    http2: {maxConcurrentStreams: 16}
    endpoints: ["[::1]:8082"]
    loadBalancer: least_request
    retry: {attempts: 1, perTryTimeout: 0s, on: ["503", "504", reset]}
composites:
  - name: checkout
    listener: payments
    path: /checkout/{uid}
    deadline: 800ms
    nodes:
      - {name: pay, upstream: payments, method: PUT, path: "/pay/{{request.path.uid}}", critical: true,
         headers: {x-user: "{{request.header.x-user}}"}, body: '{"sku": {{nodes.stock.body.items[0].sku}}}', timeout: 300ms,
         onMissingInput: "null"}
      - {name: stock, upstream: inventory, path: /stock}
  - name: home
    listener: outbound
    path: /home
    nodes:
      - {name: s, upstream: search, path: "/q?u={{request.query.uid}}"}
`

// TestEveryFieldIsSet keeps the round trip honest: a field added to the
// config and not to everyField fails here, and once in everyField, fails
// the round trip until the translation carries it.
func TestEveryFieldIsSet(t *testing.T) {
	var raw config.Config // as written, before defaults
	if err := yaml.Unmarshal([]byte(everyField), &raw); err != nil {
		t.Fatal(err)
	}
	set := map[string]bool{}
	markSet(reflect.ValueOf(raw), "", set)
	for _, path := range fieldPaths(reflect.TypeFor[config.Config](), "") {
		if !set[path] {
			t.Errorf("everyField never sets %s to a non-zero value: set it, and make sure the xDS translation carries it", path)
		}
	}
}

// fieldPaths lists every exported leaf field of t ("upstreams[].retry.on").
func fieldPaths(t reflect.Type, prefix string) []string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t == reflect.TypeFor[config.Duration]():
		return []string{prefix}
	case t.Kind() == reflect.Struct:
		var out []string
		for i := range t.NumField() {
			if f := t.Field(i); f.IsExported() {
				out = append(out, fieldPaths(f.Type, join(prefix, f.Name))...)
			}
		}
		return out
	case t.Kind() == reflect.Slice && t.Elem().Kind() != reflect.Uint8:
		if e := t.Elem(); e.Kind() == reflect.Struct {
			return fieldPaths(e, prefix+"[]")
		}
	}
	return []string{prefix}
}

// markSet records the paths that are non-zero in v (for lists, in any
// element).
func markSet(v reflect.Value, prefix string, set map[string]bool) {
	for v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return
		}
		v = v.Elem()
	}
	switch {
	case v.Type() == reflect.TypeFor[config.Duration]():
		d := v.Interface().(config.Duration)
		set[prefix] = set[prefix] || d.Duration != 0
	case v.Kind() == reflect.Struct:
		for i := range v.NumField() {
			if f := v.Type().Field(i); f.IsExported() {
				markSet(v.Field(i), join(prefix, f.Name), set)
			}
		}
	case v.Kind() == reflect.Slice && v.Type().Elem().Kind() == reflect.Struct:
		for i := range v.Len() {
			markSet(v.Index(i), prefix+"[]", set)
		}
	default:
		set[prefix] = set[prefix] || !v.IsZero()
	}
}

func join(prefix, name string) string {
	if prefix == "" {
		return name
	}
	return prefix + "." + name
}

func parse(t *testing.T, yamlText string) *config.Config {
	t.Helper()
	cfg, err := config.Parse([]byte(yamlText))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func designExample(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../config/testdata/design.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestRoundTrip(t *testing.T) {
	for name, text := range map[string]string{"every field": everyField, "design example": designExample(t)} {
		t.Run(name, func(t *testing.T) {
			want := parse(t, text)
			res, err := FromConfig(want)
			if err != nil {
				t.Fatal(err)
			}
			got, warnings, err := Model(res)
			if err != nil {
				t.Fatal(err)
			}
			if len(warnings) > 0 {
				t.Errorf("warnings for our own resources:\n%s", strings.Join(warnings, "\n"))
			}
			assertSame(t, got, want)

			// Through the snapshot cache and the wire: its maps lose the
			// order, Anys carry the resources.
			snap, err := res.Snapshot("v1")
			if err != nil {
				t.Fatal(err)
			}
			wire := &Resources{}
			for _, typ := range []string{resourcev3.ListenerType, resourcev3.RouteType, resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.RuntimeType} {
				for _, r := range snap.GetResources(typ) {
					a, err := anypb.New(r)
					if err != nil {
						t.Fatal(err)
					}
					if err := wire.Add(a); err != nil {
						t.Fatal(err)
					}
				}
			}
			got, _, err = Model(wire)
			if err != nil {
				t.Fatal(err)
			}
			assertSame(t, got, want)
		})
	}
}

// assertSame compares exactly (durations' "was it written" bit included)
// and names the first difference.
func assertSame(t *testing.T, got, want *config.Config) {
	t.Helper()
	if reflect.DeepEqual(got, want) {
		return
	}
	t.Errorf("the model differs from the original at %s", firstDiff(reflect.ValueOf(got), reflect.ValueOf(want), "config"))
}

func firstDiff(a, b reflect.Value, path string) string {
	if a.Kind() != b.Kind() {
		return path
	}
	switch a.Kind() {
	case reflect.Pointer:
		if a.IsNil() || b.IsNil() {
			return fmt.Sprintf("%s: got nil=%v, want nil=%v", path, a.IsNil(), b.IsNil())
		}
		return firstDiff(a.Elem(), b.Elem(), path)
	case reflect.Struct:
		for i := range a.NumField() {
			if !reflect.DeepEqual(fieldValue(a, i), fieldValue(b, i)) {
				return firstDiff(a.Field(i), b.Field(i), path+"."+a.Type().Field(i).Name)
			}
		}
	case reflect.Slice:
		if a.Len() != b.Len() {
			return fmt.Sprintf("%s: got %d items, want %d", path, a.Len(), b.Len())
		}
		for i := range a.Len() {
			if !reflect.DeepEqual(a.Index(i).Interface(), b.Index(i).Interface()) {
				return firstDiff(a.Index(i), b.Index(i), fmt.Sprintf("%s[%d]", path, i))
			}
		}
	}
	if a.CanInterface() {
		return fmt.Sprintf("%s: got %#v, want %#v", path, a.Interface(), b.Interface())
	}
	return fmt.Sprintf("%s (unexported): got %v, want %v", path, a, b)
}

func fieldValue(v reflect.Value, i int) any {
	f := v.Field(i)
	if f.CanInterface() {
		return f.Interface()
	}
	return fmt.Sprint(f) // unexported: compare as printed
}

func TestResourcesValidateAndSnapshotConsistent(t *testing.T) {
	res, err := FromConfig(parse(t, everyField))
	if err != nil {
		t.Fatal(err)
	}
	if err := res.Validate(); err != nil {
		t.Fatal(err)
	}
	if _, err := res.Snapshot("1"); err != nil {
		t.Fatal(err)
	}

	// A cluster whose endpoints are missing is inconsistent.
	broken := *res
	broken.Endpoints = broken.Endpoints[1:]
	if _, err := broken.Snapshot("2"); err == nil || !strings.Contains(err.Error(), "inconsistent") {
		t.Errorf("snapshot without a ClusterLoadAssignment: err = %v, want an inconsistency", err)
	}
	// As is a route configuration nothing uses.
	broken = *res
	broken.Routes = append(slices.Clone(res.Routes), &routev3.RouteConfiguration{Name: "orphan"})
	if _, err := broken.Snapshot("3"); err == nil {
		t.Error("snapshot with an orphan route configuration: no error")
	}
}

// TestWhatGRPCNeeds checks what gRPC-Go's xDS client requires of the
// resources (internal/xds/xdsclient/xdsresource in grpc-go).
func TestWhatGRPCNeeds(t *testing.T) {
	cfg := parse(t, everyField)
	res, err := FromConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	routes := map[string]*routev3.RouteConfiguration{}
	for _, rc := range res.Routes {
		routes[rc.GetName()] = rc
	}
	api := map[string]*listenerv3.Listener{}
	for _, l := range res.Listeners {
		if l.GetApiListener() != nil {
			api[l.GetName()] = l
		}
	}
	for _, u := range cfg.Upstreams {
		// xds:///<name or host> finds a listener of that name, and in its
		// route configuration a virtual host for that authority, which
		// goes to the upstream's cluster.
		for _, authority := range append([]string{u.Name}, u.Hosts...) {
			l := api[authority]
			if l == nil {
				t.Errorf("no API listener %q", authority)
				continue
			}
			hcm := &hcmv3.HttpConnectionManager{}
			if err := l.GetApiListener().GetApiListener().UnmarshalTo(hcm); err != nil {
				t.Fatal(err)
			}
			if hcm.GetRds().GetConfigSource().GetAds() == nil {
				t.Errorf("API listener %q: RDS is not over ADS", authority)
			}
			if n := len(hcm.GetHttpFilters()); n == 0 || hcm.GetHttpFilters()[n-1].GetName() != "envoy.filters.http.router" {
				t.Errorf("API listener %q: the router is not the last HTTP filter", authority)
			}
			rc := routes[hcm.GetRds().GetRouteConfigName()]
			if got := vhostCluster(rc, authority); got != u.Name {
				t.Errorf("xds:///%s reaches cluster %q, want %q", authority, got, u.Name)
			}
		}
	}
	for _, c := range res.Clusters {
		if c.GetLbPolicy() != clusterv3.Cluster_ROUND_ROBIN && c.GetLbPolicy() != clusterv3.Cluster_LEAST_REQUEST {
			t.Errorf("cluster %q: gRPC-Go rejects lb_policy %s", c.GetName(), c.GetLbPolicy())
		}
	}
	for _, la := range res.Endpoints {
		for _, loc := range la.GetEndpoints() {
			if loc.GetLocality() == nil || loc.GetLoadBalancingWeight().GetValue() == 0 {
				t.Errorf("%q: gRPC-Go rejects a locality without an ID and ignores one without a weight", la.GetClusterName())
			}
		}
	}
	for _, rc := range res.Routes {
		for _, vh := range rc.GetVirtualHosts() {
			for _, r := range vh.GetRoutes() {
				if p := r.GetRoute().GetRetryPolicy(); p != nil && p.GetNumRetries().GetValue() < 1 {
					t.Errorf("route config %q: gRPC-Go rejects num_retries 0", rc.GetName())
				}
			}
		}
	}
}

// vhostCluster matches as gRPC-Go does, for the domains we write: exact
// (case-insensitively) beats "*".
func vhostCluster(rc *routev3.RouteConfiguration, authority string) string {
	var star string
	for _, vh := range rc.GetVirtualHosts() {
		for _, d := range vh.GetDomains() {
			switch {
			case strings.EqualFold(d, authority):
				return vh.GetRoutes()[0].GetRoute().GetCluster()
			case d == "*":
				star = vh.GetRoutes()[0].GetRoute().GetCluster()
			}
		}
	}
	return star
}

func TestStandardFields(t *testing.T) {
	res, err := FromConfig(parse(t, everyField))
	if err != nil {
		t.Fatal(err)
	}
	c := find(res.Clusters, "payments")
	th := c.GetCircuitBreakers().GetThresholds()[0]
	if th.GetMaxRequests().GetValue() != 40 || th.GetMaxPendingRequests().GetValue() != 10 ||
		th.GetRetryBudget().GetBudgetPercent().GetValue() != 7.000000000000001 || th.GetRetryBudget().GetMinRetryConcurrency().GetValue() != 3 {
		t.Errorf("payments thresholds = %v", th)
	}
	if od := c.GetOutlierDetection(); od.GetConsecutive_5Xx().GetValue() != 3 || od.GetMaxEjectionTime().AsDuration() != 2*time.Minute {
		t.Errorf("payments outlier_detection = %v", od)
	}
	md := c.GetMetadata().GetFilterMetadata()["watertight"].AsMap()
	if md["weight"] != 3.0 || md["maxWait"] != "50ms" || md["circuitBreaker"].(map[string]any)["slowCall"] != "800ms" {
		t.Errorf("payments metadata = %v", md)
	}
	if th := find(res.Clusters, "search").GetCircuitBreakers().GetThresholds()[0]; th.GetMaxRequests() != nil {
		t.Errorf("search has max_requests %v without maxConcurrent", th.GetMaxRequests())
	}
	hosts := find(res.Routes, HostsRoute)
	r := hosts.GetVirtualHosts()[0].GetRoutes()[0].GetRoute()
	if r.GetCluster() != "payments" || r.GetTimeout().AsDuration() != 2*time.Second ||
		r.GetRetryPolicy().GetRetryOn() != "retriable-status-codes,reset,unavailable" ||
		!slices.Equal(r.GetRetryPolicy().GetRetriableStatusCodes(), []uint32{502, 503}) ||
		r.GetRetryPolicy().GetNumRetries().GetValue() != 3 || r.GetRetryPolicy().GetPerTryTimeout().AsDuration() != 500*time.Millisecond {
		t.Errorf("payments route = %v", r)
	}
	if !slices.Equal(hosts.GetVirtualHosts()[0].GetDomains(), []string{"pay.shop.svc", "Pay.Example.com:8443"}) {
		t.Errorf("payments domains = %v", hosts.GetVirtualHosts()[0].GetDomains())
	}
	if l := find(res.Listeners, "listener/payments"); l.GetAddress().GetSocketAddress().GetPortValue() != 9002 {
		t.Errorf("listener/payments = %v", l)
	}
}

func find[T interface{ GetName() string }](items []T, name string) T {
	for _, x := range items {
		if x.GetName() == name {
			return x
		}
	}
	var zero T
	return zero
}

func TestTransparentListener(t *testing.T) {
	b := &builder{routes: map[string]bool{}}
	l, err := b.socketListener(config.Listener{Name: "t", Address: "127.0.0.1:15001", Mode: config.ModeTransparent})
	if err != nil {
		t.Fatal(err)
	}
	if !l.GetUseOriginalDst().GetValue() || !b.routes[HostsRoute] {
		t.Fatalf("transparent listener: use_original_dst %v, routes %v", l.GetUseOriginalDst(), b.routes)
	}
	res := &Resources{
		Listeners: []*listenerv3.Listener{l},
		Routes:    []*routev3.RouteConfiguration{{Name: HostsRoute}},
	}
	cfg, _, err := Model(res)
	switch {
	case err == nil && cfg.Listeners[0].Mode != config.ModeTransparent:
		t.Errorf("mode = %q, want transparent", cfg.Listeners[0].Mode)
	case err != nil && !strings.Contains(err.Error(), `listener "listener/t": mode: "transparent"`):
		// Until the proxy supports it, validation refuses it by name.
		t.Errorf("err = %v", err)
	}
}

// standardOnly is what a control plane that knows nothing of us sends.
func standardOnly(t *testing.T) *Resources {
	t.Helper()
	anyOf := func(m proto.Message) *anypb.Any {
		a, err := anypb.New(m)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	ads := &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}
	hcm := func(rs *hcmv3.HttpConnectionManager) *listenerv3.Filter {
		rs.StatPrefix = "http"
		return &listenerv3.Filter{
			Name:       "envoy.filters.network.http_connection_manager",
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: anyOf(rs)},
		}
	}
	addr := func(host string, port uint32) *corev3.Address {
		return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
		}}}
	}
	lbEndpoint := func(host string, port uint32, hs corev3.HealthStatus, weight uint32) *endpointv3.LbEndpoint {
		e := &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: addr(host, port)}},
			HealthStatus:   hs,
		}
		if weight > 0 {
			e.LoadBalancingWeight = wrapperspb.UInt32(weight)
		}
		return e
	}
	toCluster := func(c string) *routev3.Route {
		return &routev3.Route{
			Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: c}}},
		}
	}
	inv := toCluster("inventory")
	inv.GetRoute().RetryPolicy = &routev3.RetryPolicy{RetryOn: "5xx,connect-failure", NumRetries: wrapperspb.UInt32(2)}
	pay := toCluster("payments")
	pay.GetRoute().Timeout = durationpb.New(2 * time.Second)
	return &Resources{
		Listeners: []*listenerv3.Listener{
			{
				Name:    "outbound",
				Address: addr("0.0.0.0", 15001),
				FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{hcm(&hcmv3.HttpConnectionManager{
					RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{ConfigSource: ads, RouteConfigName: "outbound"}},
				})}}},
			},
			{
				Name:    "payments-port",
				Address: addr("127.0.0.1", 9002),
				FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{hcm(&hcmv3.HttpConnectionManager{
					RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{
						VirtualHosts: []*routev3.VirtualHost{{Name: "all", Domains: []string{"*"}, Routes: []*routev3.Route{pay}}},
					}},
				})}}},
			},
		},
		Routes: []*routev3.RouteConfiguration{{
			Name: "outbound",
			VirtualHosts: []*routev3.VirtualHost{
				{Name: "inventory", Domains: []string{"inventory.shop.svc.cluster.local", "inventory"}, Routes: []*routev3.Route{inv}},
				{Name: "payments", Domains: []string{"payments.shop.svc"}, Routes: []*routev3.Route{pay}},
			},
		}},
		Clusters: []*clusterv3.Cluster{
			{
				Name:                 "payments",
				ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STRICT_DNS},
				LbPolicy:             clusterv3.Cluster_LEAST_REQUEST,
				LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: "payments", Endpoints: []*endpointv3.LocalityLbEndpoints{{
					LbEndpoints: []*endpointv3.LbEndpoint{lbEndpoint("payments.example.com", 443, corev3.HealthStatus_UNKNOWN, 0)},
				}}},
				TransportSocket: &corev3.TransportSocket{
					Name:       "envoy.transport_sockets.tls",
					ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: anyOf(&tlsv3.UpstreamTlsContext{Sni: "payments.example.com"})},
				},
				TypedExtensionProtocolOptions: map[string]*anypb.Any{
					"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": anyOf(&httpv3.HttpProtocolOptions{
						UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
							ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}},
						}},
					}),
				},
			},
			{
				Name:                 "inventory",
				ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
				EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: ads},
				CircuitBreakers: &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
					MaxRequests: wrapperspb.UInt32(100),
					RetryBudget: &clusterv3.CircuitBreakers_Thresholds_RetryBudget{BudgetPercent: &typev3.Percent{Value: 25}},
				}}},
				OutlierDetection: &clusterv3.OutlierDetection{Consecutive_5Xx: wrapperspb.UInt32(3)},
			},
		},
		Endpoints: []*endpointv3.ClusterLoadAssignment{{
			ClusterName: "inventory",
			Endpoints: []*endpointv3.LocalityLbEndpoints{{
				Locality: &corev3.Locality{Zone: "a"},
				LbEndpoints: []*endpointv3.LbEndpoint{
					lbEndpoint("10.0.0.1", 8080, corev3.HealthStatus_HEALTHY, 3),
					lbEndpoint("10.0.0.2", 8080, corev3.HealthStatus_UNHEALTHY, 0),
					lbEndpoint("10.0.0.3", 8080, corev3.HealthStatus_DRAINING, 0),
					lbEndpoint("10.0.0.5", 8080, corev3.HealthStatus_TIMEOUT, 0),
					lbEndpoint("10.0.0.4", 8080, corev3.HealthStatus_UNKNOWN, 0),
				},
			}},
		}},
	}
}

// TestStandardOnly drives the sidecar with Envoy's fields alone: our
// defaults fill the rest, exactly as for the same YAML.
func TestStandardOnly(t *testing.T) {
	got, warnings, err := Model(standardOnly(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) > 0 {
		t.Errorf("warnings:\n%s", strings.Join(warnings, "\n"))
	}
	want := parse(t, `
budget: 1124 # the default plus inventory's max_requests, there being no runtime layer
listeners:
  - {name: outbound, address: 0.0.0.0:15001, mode: proxy}
  - {name: payments-port, address: 127.0.0.1:9002, mode: upstream, upstream: payments}
upstreams:
  - name: inventory
    hosts: [inventory.shop.svc.cluster.local, inventory]
    endpoints: [{address: 10.0.0.1:8080, weight: 3}, 10.0.0.4:8080]
    loadBalancer: round_robin
    bulkhead: {maxConcurrent: 100}
    retry: {attempts: 2, on: [5xx, connect-failure], budget: 0.25}
    outlierDetection: {consecutiveFailures: 3}
  - name: payments
    hosts: [payments.shop.svc]
    protocol: http2
    tls: {sni: payments.example.com}
    endpoints: [payments.example.com:443]
    timeout: 2s
`)
	assertSame(t, got, want)
}

func TestNonsenseIsRefused(t *testing.T) {
	base := `
listeners: [{name: outbound, address: 127.0.0.1:15001}]
upstreams:
  - name: inventory
    endpoints: [127.0.0.1:8081]
    retry: {attempts: 2}
`
	meta := func(r *Resources) *structpb.Struct {
		return r.Clusters[0].GetMetadata().GetFilterMetadata()["watertight"]
	}
	cases := []struct {
		name  string
		spoil func(*Resources)
		want  []string // all in one problem
	}{
		{"route to a missing cluster", func(r *Resources) {
			find(r.Routes, HostsRoute).GetVirtualHosts()[0].GetRoutes()[0].GetRoute().ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: "nope"}
		}, []string{`route config "hosts": virtual_hosts[0].routes[0].route.cluster`, `"nope" does not exist`}},
		{"negative limit in metadata", func(r *Resources) {
			meta(r).Fields["weight"] = structpb.NewNumberValue(-1)
		}, []string{`cluster "inventory": bulkhead.weight`, "-1 must be at least 1"}},
		{"negative retry budget", func(r *Resources) {
			r.Clusters[0].GetCircuitBreakers().GetThresholds()[0].GetRetryBudget().BudgetPercent.Value = -5
		}, []string{`cluster "inventory": circuit_breakers.thresholds[0].retry_budget.budget_percent`, "-5"}},
		{"max_requests 0", func(r *Resources) {
			r.Clusters[0].GetCircuitBreakers().GetThresholds()[0].MaxRequests = wrapperspb.UInt32(0)
		}, []string{`cluster "inventory": circuit_breakers.thresholds[0].max_requests`, "refuse every request"}},
		{"unparsable duration in metadata", func(r *Resources) {
			meta(r).Fields["maxWait"] = structpb.NewStringValue("fast")
		}, []string{`cluster "inventory": metadata.filter_metadata["watertight"].maxWait`, `"fast" is not a duration`}},
		{"unparsable nested duration in metadata", func(r *Resources) {
			meta(r).Fields["circuitBreaker"] = structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{
				"window": structpb.NewStringValue("10"),
			}})
		}, []string{`metadata.filter_metadata["watertight"].circuitBreaker.window`, `"10" is not a duration`}},
		{"wrong type in metadata", func(r *Resources) {
			meta(r).Fields["minConcurrent"] = structpb.NewStringValue("two")
		}, []string{`cluster "inventory": metadata.filter_metadata["watertight"].minConcurrent`, "string", "int"}},
		{"negative route timeout", func(r *Resources) {
			find(r.Routes, HostsRoute).GetVirtualHosts()[0].GetRoutes()[0].GetRoute().Timeout = durationpb.New(-time.Second)
		}, []string{`route config "hosts": virtual_hosts[0].routes[0].route.timeout`, "must not be negative"}},
		{"endpoint without an address", func(r *Resources) {
			r.Endpoints[0].GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().Address = nil
		}, []string{`cluster load assignment "inventory": endpoints[0].lb_endpoints[0].endpoint.address`, "is missing"}},
		{"endpoint without a port", func(r *Resources) {
			r.Endpoints[0].GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().PortSpecifier = &corev3.SocketAddress_NamedPort{NamedPort: "http"}
		}, []string{`cluster load assignment "inventory": endpoints[0].lb_endpoints[0].endpoint.address.socket_address`, "port_value"}},
		{"missing load assignment", func(r *Resources) {
			r.Endpoints = nil
		}, []string{`cluster "inventory"`, `no ClusterLoadAssignment "inventory"`}},
		{"missing route config", func(r *Resources) {
			r.Routes = slices.DeleteFunc(r.Routes, func(rc *routev3.RouteConfiguration) bool { return rc.GetName() == HostsRoute })
		}, []string{`listener "listener/outbound"`, `route config "hosts" does not exist`}},
		{"unsupported cluster type", func(r *Resources) {
			r.Clusters[0].ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST}
		}, []string{`cluster "inventory": type`, "ORIGINAL_DST is not supported"}},
		{"transport socket we cannot honour", func(r *Resources) {
			a, _ := anypb.New(&structpb.Struct{})
			r.Clusters[0].TransportSocket = &corev3.TransportSocket{Name: "envoy.transport_sockets.alts", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: a}}
		}, []string{`cluster "inventory": transport_socket`, `"envoy.transport_sockets.alts"`, "not supported"}},
		{"host claimed twice", func(r *Resources) {
			rc := find(r.Routes, HostsRoute)
			vh := proto.Clone(rc.GetVirtualHosts()[0]).(*routev3.VirtualHost)
			vh.Name = "again"
			vh.GetRoutes()[0].GetRoute().ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: "other"}
			r.Routes = append(r.Routes, &routev3.RouteConfiguration{Name: "more", VirtualHosts: []*routev3.VirtualHost{vh}})
			other := proto.Clone(r.Clusters[0]).(*clusterv3.Cluster)
			other.Name = "other"
			r.Clusters = append(r.Clusters, other)
			la := proto.Clone(r.Endpoints[0]).(*endpointv3.ClusterLoadAssignment)
			la.ClusterName = "other"
			r.Endpoints = append(r.Endpoints, la)
		}, []string{`route config "more": virtual_hosts[0].domains[0]`, `"inventory" routes to cluster "other"`, `cluster "inventory"`}},
		{"bad top-level setting", func(r *Resources) {
			r.Runtimes[0].GetLayer().Fields["unknownHosts"] = structpb.NewStringValue("allow")
		}, []string{`runtime "watertight": unknownHosts`, `"allow"`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res, err := FromConfig(parse(t, base))
			if err != nil {
				t.Fatal(err)
			}
			c.spoil(res)
			_, _, err = Model(res)
			var xe *Error
			if !errors.As(err, &xe) {
				t.Fatalf("err = %v, want an *xds.Error", err)
			}
			for _, p := range xe.Problems {
				if containsAll(p, c.want) {
					return
				}
			}
			t.Errorf("no problem mentions all of %q:\n%s", c.want, strings.Join(xe.Problems, "\n"))
		})
	}
}

func containsAll(s string, parts []string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}

func TestUnsupportedFieldsWarnOnce(t *testing.T) {
	res := standardOnly(t)
	inv := find(res.Clusters, "inventory")
	inv.HealthChecks = []*corev3.HealthCheck{{}}
	inv.ConnectTimeout = durationpb.New(time.Second)
	inv.GetOutlierDetection().EnforcingSuccessRate = wrapperspb.UInt32(100)
	inv.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"watertight": {Fields: map[string]*structpb.Value{
		"weight":        structpb.NewNumberValue(2),
		"fromTheFuture": structpb.NewBoolValue(true),
	}}}}
	outbound := res.Routes[0]
	regex := outbound.GetVirtualHosts()[0].GetRoutes()[0]
	regex.Match = &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_SafeRegex{}}
	regex.GetRoute().HashPolicy = []*routev3.RouteAction_HashPolicy{{}}
	outbound.GetVirtualHosts()[1].Domains = append(outbound.GetVirtualHosts()[1].Domains, "*.shop.svc")
	res.Listeners[0].GetFilterChains()[0].Filters = append([]*listenerv3.Filter{{Name: "envoy.filters.network.rbac"}},
		res.Listeners[0].GetFilterChains()[0].GetFilters()...)

	cfg, warnings, err := Model(res)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`cluster "inventory": health_checks: not supported, ignored`,
		`cluster "inventory": connect_timeout: not supported, ignored`,
		`cluster "inventory": outlier_detection.enforcing_success_rate: success-rate ejection is not supported, ignored`,
		`cluster "inventory": metadata.filter_metadata["watertight"].fromTheFuture: not known to this sidecar, ignored`,
		`route config "outbound": virtual_hosts[0].routes[0].match: only whole hosts are routed`,
		`route config "outbound": virtual_hosts[0].routes[0].route.hash_policy: not supported, ignored`,
		`route config "outbound": virtual_hosts[1].domains[1]: wildcard domain "*.shop.svc" is not supported`,
		`listener "outbound": filter_chains[0].filters[0]: "envoy.filters.network.rbac" is not supported, ignored`,
	} {
		n := 0
		for _, w := range warnings {
			if strings.HasPrefix(w, want) {
				n++
			}
		}
		if n != 1 {
			t.Errorf("warning %q appears %d times, want once; warnings:\n%s", want, n, strings.Join(warnings, "\n"))
		}
	}
	if len(warnings) != 8 {
		t.Errorf("%d warnings, want 8:\n%s", len(warnings), strings.Join(warnings, "\n"))
	}
	// What is supported still came through.
	if u := cfg.Upstream("inventory"); u.Bulkhead.Weight != 2 || u.Retry.Attempts != 2 {
		t.Errorf("inventory = %+v", u)
	}
}

// TestEdgeShapes round-trips configs at the edges of the naming scheme:
// no socket listener at all (route configurations only gRPC's API listeners
// use, which go-control-plane's Consistent does not see), no upstream, and
// an upstream whose name is another upstream's host.
func TestEdgeShapes(t *testing.T) {
	for name, text := range map[string]string{
		"gRPC only": `
upstreams:
  - {name: payments, hosts: [pay.svc], endpoints: ["10.0.0.1:443"]}
  - {name: inventory, endpoints: ["10.0.0.2:80"]}
`,
		"no upstream": `listeners: [{name: outbound, address: "127.0.0.1:15001"}]`,
		"name is another's host": `
listeners: [{name: outbound, address: "127.0.0.1:15001"}]
upstreams:
  - {name: a, hosts: [a.svc], endpoints: ["10.0.0.1:80"]}
  - {name: b, hosts: [a], endpoints: ["10.0.0.2:80"]}
`,
	} {
		t.Run(name, func(t *testing.T) {
			want := parse(t, text)
			res, err := FromConfig(want)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := res.Snapshot("1"); err != nil {
				t.Fatal(err)
			}
			got, warnings, err := Model(res)
			if err != nil {
				t.Fatal(err)
			}
			if len(warnings) > 0 {
				t.Errorf("warnings:\n%s", strings.Join(warnings, "\n"))
			}
			assertSame(t, got, want)
		})
	}
}

func TestSnapshotRefusesTwoResourcesOfOneName(t *testing.T) {
	res, err := FromConfig(parse(t, designExample(t)))
	if err != nil {
		t.Fatal(err)
	}
	res.Clusters = append(res.Clusters, proto.Clone(res.Clusters[0]).(*clusterv3.Cluster))
	if _, err := res.Snapshot("1"); err == nil || !strings.Contains(err.Error(), `two envoy.config.cluster.v3.Cluster resources named "inventory"`) {
		t.Errorf("err = %v", err)
	}
}

// TestEmptyResourcesDoNotPanic: whatever arrives, the answer is a NACK
// reason, not a crash.
func TestEmptyResourcesDoNotPanic(t *testing.T) {
	empty := &Resources{
		Listeners: []*listenerv3.Listener{{}, {FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{}}}}}},
		Routes:    []*routev3.RouteConfiguration{{VirtualHosts: []*routev3.VirtualHost{{Routes: []*routev3.Route{{}}}}}},
		Clusters:  []*clusterv3.Cluster{{}, {Name: "x", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS}}},
		Endpoints: []*endpointv3.ClusterLoadAssignment{{}, {ClusterName: "x", Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{{}}}}}},
		Runtimes:  []*runtimev3.Runtime{{Name: RuntimeName}},
	}
	if _, _, err := Model(empty); err == nil {
		t.Error("no error for empty resources")
	}
	if _, _, err := Model(&Resources{}); err != nil {
		t.Errorf("no resources at all: %v", err)
	}
}

// TestHTTP2StreamCap reads http2.maxConcurrentStreams from each place an
// Envoy cluster can carry max_concurrent_streams, refuses a value Envoy
// would, and warns (not fails) where the sidecar cannot apply it.
func TestHTTP2StreamCap(t *testing.T) {
	base := func(t *testing.T) *Resources {
		res, err := FromConfig(parse(t, `
listeners: [{name: outbound, address: 127.0.0.1:15001}]
upstreams: [{name: inventory, protocol: http2, endpoints: [127.0.0.1:8081]}]
`))
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	withOptions := func(c *clusterv3.Cluster, o *httpv3.HttpProtocolOptions) {
		a, err := anypb.New(o)
		if err != nil {
			t.Fatal(err)
		}
		c.TypedExtensionProtocolOptions = map[string]*anypb.Any{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": a}
	}
	explicit := func(n uint32) *httpv3.HttpProtocolOptions {
		return &httpv3.HttpProtocolOptions{UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{
			ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
					Http2ProtocolOptions: &corev3.Http2ProtocolOptions{MaxConcurrentStreams: wrapperspb.UInt32(n)},
				},
			},
		}}
	}
	const field = `cluster "inventory": typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].explicit_http_config.http2_protocol_options.max_concurrent_streams`
	for _, c := range []struct {
		name     string
		spoil    func(*clusterv3.Cluster)
		protocol string
		want     int      // the cap read; 0: none
		warn     string   // a warning that must be given
		fail     []string // a refusal that must be given, all in one problem
	}{
		{"explicit HTTP/2", func(c *clusterv3.Cluster) { withOptions(c, explicit(5)) }, config.ProtocolHTTP2, 5, "", nil},
		{"the downstream's protocol", func(c *clusterv3.Cluster) {
			withOptions(c, &httpv3.HttpProtocolOptions{UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_UseDownstreamProtocolConfig{
				UseDownstreamProtocolConfig: &httpv3.HttpProtocolOptions_UseDownstreamHttpConfig{
					Http2ProtocolOptions: &corev3.Http2ProtocolOptions{MaxConcurrentStreams: wrapperspb.UInt32(6)},
				},
			}})
		}, config.ProtocolAuto, 6, "", nil},
		{"the cluster-level field", func(c *clusterv3.Cluster) {
			c.TypedExtensionProtocolOptions = nil
			c.Http2ProtocolOptions = &corev3.Http2ProtocolOptions{MaxConcurrentStreams: wrapperspb.UInt32(7)} //nolint:staticcheck // older control planes send it
		}, config.ProtocolHTTP2, 7, "", nil},
		{"no cap", func(c *clusterv3.Cluster) {}, config.ProtocolHTTP2, 0, "", nil},
		{"zero", func(c *clusterv3.Cluster) { withOptions(c, explicit(0)) }, "", 0, "", []string{field, "0 is not between 1 and 2147483647"}},
		{"beyond stream ids", func(c *clusterv3.Cluster) { withOptions(c, explicit(1<<31)) }, "", 0, "", []string{field, "2147483648 is not between 1"}},
		{"over TLS", func(c *clusterv3.Cluster) {
			withOptions(c, explicit(5))
			tc, err := anypb.New(&tlsv3.UpstreamTlsContext{Sni: "inventory"})
			if err != nil {
				t.Fatal(err)
			}
			c.TransportSocket = &corev3.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: tc}}
		}, config.ProtocolHTTP2, 0, field + ": only cleartext (h2c) connections take a cap", nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			res := base(t)
			c.spoil(res.Clusters[0])
			got, warnings, err := Model(res)
			if c.fail != nil {
				if err == nil {
					t.Fatalf("accepted, want a refusal with %q", c.fail)
				}
				var one bool
				for _, line := range strings.Split(err.Error(), "\n") {
					one = one || containsAll(line, c.fail)
				}
				if !one {
					t.Fatalf("refusal %q\nhas no problem with all of %q", err, c.fail)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			u := got.Upstreams[0]
			if u.Protocol != c.protocol {
				t.Errorf("protocol %q, want %q", u.Protocol, c.protocol)
			}
			var cap int
			if u.HTTP2 != nil {
				cap = u.HTTP2.MaxConcurrentStreams
			}
			if cap != c.want {
				t.Errorf("http2.maxConcurrentStreams %d, want %d", cap, c.want)
			}
			warned := c.warn == ""
			for _, w := range warnings {
				warned = warned || strings.Contains(w, c.warn)
			}
			if !warned {
				t.Errorf("warnings %q, want one with %q", warnings, c.warn)
			}
		})
	}
}
