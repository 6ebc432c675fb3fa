// Package metrics defines the sidecar's Prometheus metrics, with the names
// and labels DESIGN.md fixes. Label values come from config (upstream names)
// and from fixed enumerations, never from request data, so cardinality is
// bounded by the config.
package metrics

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/watertight/watertight/bulkhead"
)

// Result is how a request through an upstream compartment ended.
type Result uint8

// Results, as the `result` label spells them. Canceled (the app went away
// before the answer) is neither the upstream's fault nor a rejection.
const (
	OK Result = iota
	UpstreamError
	Timeout
	BulkheadFull
	QueueTimeout
	CircuitOpen
	RateLimited
	UpstreamUnavailable
	Canceled
	numResults
)

var resultNames = [numResults]string{
	"ok", "upstream_error", "timeout", "bulkhead_full", "queue_timeout",
	"circuit_open", "rate_limited", "upstream_unavailable", "canceled",
}

func (r Result) String() string { return resultNames[r] }

// LatencyBuckets resolve 100µs to 10s. Native histograms are exported too,
// for scrapers that ask for them.
var LatencyBuckets = []float64{
	.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10,
}

func histogramOpts(name, help string) prometheus.HistogramOpts {
	return prometheus.HistogramOpts{
		Name:                            name,
		Help:                            help,
		Buckets:                         LatencyBuckets,
		NativeHistogramBucketFactor:     1.1,
		NativeHistogramMaxBucketNumber:  160,
		NativeHistogramMinResetDuration: time.Hour,
	}
}

// Registry holds every metric the sidecar exports.
type Registry struct {
	reg        *prometheus.Registry
	requests   *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	queueWait  *prometheus.HistogramVec
	reloads    *prometheus.CounterVec
	configInfo *prometheus.GaugeVec
	retries    *prometheus.CounterVec
	fallbacks  *prometheus.CounterVec
	composite  *compositeMetrics

	mu        sync.Mutex
	upstreams map[string]*Upstream
	pools     func() []PoolReading
	version   [2]string // labels of the config_info series in force
}

// PoolReading is one upstream's pool, breaker and endpoints, read at scrape time.
type PoolReading struct {
	Upstream string
	Stats    bulkhead.Stats
	// Circuit is the breaker's state: closed, open or half_open ("" leaves
	// it out).
	Circuit   string
	Endpoints []EndpointReading
}

// EndpointReading is one endpoint's outlier state.
type EndpointReading struct {
	Address string
	Ejected bool
}

// CircuitStates are the values of watertight_circuit_state's state label.
var CircuitStates = []string{"closed", "open", "half_open"}

// New makes a registry with the process and Go collectors and every
// watertight_* metric.
func New() *Registry {
	r := &Registry{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "watertight_requests_total",
			Help: "Requests through an upstream compartment, by how they ended (ok, upstream_error, timeout, bulkhead_full, queue_timeout, circuit_open, rate_limited, upstream_unavailable, canceled).",
		}, []string{"upstream", "result"}),
		duration: prometheus.NewHistogramVec(histogramOpts(
			"watertight_request_duration_seconds",
			"Time from the request's arrival at the sidecar to the end of its response, including queueing and local replies.",
		), []string{"upstream"}),
		queueWait: prometheus.NewHistogramVec(histogramOpts(
			"watertight_bulkhead_queue_wait_seconds",
			"Time requests that found the pool full spent in its queue, whether they then got a slot or not.",
		), []string{"upstream"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "watertight_config_reloads_total",
			Help: "Attempts to apply a new config from the file, by result (success, failure). On failure the last good config keeps serving.",
		}, []string{"result"}),
		configInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "watertight_config_info",
			Help: "1 for the config in force: its version and where it came from.",
		}, []string{"version", "source"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "watertight_retries_total",
			Help: "Retries sent to an upstream (attempts after the first), within its retry budget.",
		}, []string{"upstream"}),
		fallbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "watertight_fallbacks_total",
			Help: "Requests answered with the upstream's configured fallback instead of a local reply, by cause.",
		}, []string{"upstream", "cause"}),
		upstreams: map[string]*Upstream{},
		composite: newCompositeMetrics(),
	}
	r.reg.MustRegister(r.composite.collectors()...)
	r.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		r.requests, r.duration, r.queueWait, r.reloads, r.configInfo, r.retries, r.fallbacks,
		poolCollector{r},
	)
	r.reloads.WithLabelValues("success")
	r.reloads.WithLabelValues("failure")
	return r
}

// Prometheus is the underlying registry, to serve and to register more metrics on.
func (r *Registry) Prometheus() *prometheus.Registry { return r.reg }

// SetPoolSource tells the registry how to read the pools at scrape time.
// Reading at scrape time keeps the gauges off the request path.
func (r *Registry) SetPoolSource(read func() []PoolReading) {
	r.mu.Lock()
	r.pools = read
	r.mu.Unlock()
}

// ConfigApplied records the config in force.
func (r *Registry) ConfigApplied(version, source string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.version[0] != "" {
		r.configInfo.DeleteLabelValues(r.version[0], r.version[1])
	}
	r.version = [2]string{version, source}
	r.configInfo.WithLabelValues(version, source).Set(1)
}

// Reload counts an attempt to apply a config from the file.
func (r *Registry) Reload(ok bool) {
	if ok {
		r.reloads.WithLabelValues("success").Inc()
	} else {
		r.reloads.WithLabelValues("failure").Inc()
	}
}

// Upstream is one upstream's metrics, with every child resolved once so the
// request path does no label lookups.
type Upstream struct {
	results   [numResults]prometheus.Counter
	fallbacks [numResults]prometheus.Counter // by the cause replaced
	duration  prometheus.Observer
	queueWait prometheus.Observer
	retries   prometheus.Counter
}

// Upstream returns the metrics of the named upstream, creating them (every
// result at zero, so rates and alerts have series from the start).
func (r *Registry) Upstream(name string) *Upstream {
	r.mu.Lock()
	defer r.mu.Unlock()
	if u, ok := r.upstreams[name]; ok {
		return u
	}
	u := &Upstream{
		duration:  r.duration.WithLabelValues(name),
		queueWait: r.queueWait.WithLabelValues(name),
		retries:   r.retries.WithLabelValues(name),
	}
	for i := range u.results {
		u.results[i] = r.requests.WithLabelValues(name, Result(i).String())
		if res := Result(i); res != OK && res != Canceled {
			u.fallbacks[i] = r.fallbacks.WithLabelValues(name, res.String())
		}
	}
	r.upstreams[name] = u
	return u
}

// ForgetUpstream drops the series of an upstream that left the config.
func (r *Registry) ForgetUpstream(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.upstreams, name)
	l := prometheus.Labels{"upstream": name}
	r.requests.DeletePartialMatch(l)
	r.duration.DeletePartialMatch(l)
	r.queueWait.DeletePartialMatch(l)
	r.retries.DeletePartialMatch(l)
	r.fallbacks.DeletePartialMatch(l)
}

// Request records one finished request.
func (u *Upstream) Request(res Result, took time.Duration) {
	u.results[res].Inc()
	u.duration.Observe(took.Seconds())
}

// QueueWait records the time a request spent queued for a slot.
func (u *Upstream) QueueWait(d time.Duration) { u.queueWait.Observe(d.Seconds()) }

// Retry counts one retry.
func (u *Upstream) Retry() { u.retries.Inc() }

// Fallback counts a fallback served in place of the local reply for cause.
func (u *Upstream) Fallback(cause Result) {
	if c := u.fallbacks[cause]; c != nil {
		c.Inc()
	}
}

// poolCollector exports the pool gauges from a reading taken at scrape time.
type poolCollector struct{ r *Registry }

var (
	descActive = prometheus.NewDesc("watertight_bulkhead_active",
		"Requests holding a slot of the upstream's pool now.", []string{"upstream"}, nil)
	descQueued = prometheus.NewDesc("watertight_bulkhead_queued",
		"Requests waiting in the upstream's queue for a slot now.", []string{"upstream"}, nil)
	descLimit = prometheus.NewDesc("watertight_bulkhead_limit",
		"The upstream's pool size: its concurrency limit from budget and weight.", []string{"upstream"}, nil)
	descQueueCap = prometheus.NewDesc("watertight_bulkhead_queue_capacity",
		"How many requests the upstream's queue may hold (maxQueue).", []string{"upstream"}, nil)
	descCircuit = prometheus.NewDesc("watertight_circuit_state",
		"1 for the state the upstream's circuit breaker is in (closed, open, half_open), 0 for the others. Upstreams without a breaker are always closed.",
		[]string{"upstream", "state"}, nil)
	descEjected = prometheus.NewDesc("watertight_endpoint_ejected",
		"1 while outlier detection keeps the endpoint out of load balancing, else 0.", []string{"upstream", "endpoint"}, nil)
)

func (c poolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descActive
	ch <- descQueued
	ch <- descLimit
	ch <- descQueueCap
	ch <- descCircuit
	ch <- descEjected
}

func (c poolCollector) Collect(ch chan<- prometheus.Metric) {
	c.r.mu.Lock()
	read := c.r.pools
	c.r.mu.Unlock()
	if read == nil {
		return
	}
	for _, p := range read() {
		ch <- prometheus.MustNewConstMetric(descActive, prometheus.GaugeValue, float64(p.Stats.Active), p.Upstream)
		ch <- prometheus.MustNewConstMetric(descQueued, prometheus.GaugeValue, float64(p.Stats.Queued), p.Upstream)
		ch <- prometheus.MustNewConstMetric(descLimit, prometheus.GaugeValue, float64(p.Stats.Limit), p.Upstream)
		ch <- prometheus.MustNewConstMetric(descQueueCap, prometheus.GaugeValue, float64(p.Stats.QueueCapacity), p.Upstream)
		if p.Circuit != "" {
			for _, st := range CircuitStates {
				ch <- prometheus.MustNewConstMetric(descCircuit, prometheus.GaugeValue, b2f(st == p.Circuit), p.Upstream, st)
			}
		}
		for _, e := range p.Endpoints {
			ch <- prometheus.MustNewConstMetric(descEjected, prometheus.GaugeValue, b2f(e.Ejected), p.Upstream, e.Address)
		}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
