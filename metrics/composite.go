package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Composite results, as watertight_composite_requests_total's result label
// spells them.
const (
	CompositeOK       = "ok"       // every node answered
	CompositeDegraded = "degraded" // answered, some weak node failed or was skipped
	CompositeFailed   = "failed"   // a critical node failed, or the deadline passed before the core was done
	CompositeCanceled = "canceled" // the client went away
)

// Node results, as watertight_composite_node_results_total's result label
// spells them.
const (
	NodeOK       = "ok"
	NodeDegraded = "degraded" // the upstream's fallback answered
	NodeFailed   = "failed"
	NodeSkipped  = "skipped" // an input was missing (onMissingInput: skip)
	NodeCanceled = "canceled"
)

// SegmentArrivalBuckets are the background's marks for later segments:
// the share that arrives within 1 s, 3 s and 5 s of the request.
var SegmentArrivalBuckets = []float64{1, 3, 5}

// compositeMetrics are registered with the registry but have no series until
// a composite is configured and called: label values are composite and node
// names from the config.
type compositeMetrics struct {
	requests     *prometheus.CounterVec
	duration     *prometheus.HistogramVec
	nodeResults  *prometheus.CounterVec
	nodeDuration *prometheus.HistogramVec
	firstSegment *prometheus.HistogramVec
	laterSegment *prometheus.HistogramVec
}

func newCompositeMetrics() *compositeMetrics {
	return &compositeMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "watertight_composite_requests_total",
			Help: "Composite calls by how they ended (ok, degraded, failed, canceled).",
		}, []string{"composite", "result"}),
		duration: prometheus.NewHistogramVec(histogramOpts(
			"watertight_composite_duration_seconds",
			"Time from a composite call's arrival to its last node's end (or its failure).",
		), []string{"composite"}),
		nodeResults: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "watertight_composite_node_results_total",
			Help: "Nodes of composite calls by how they ended (ok, degraded, failed, skipped, canceled).",
		}, []string{"composite", "node", "result"}),
		nodeDuration: prometheus.NewHistogramVec(histogramOpts(
			"watertight_composite_node_duration_seconds",
			"Time a composite's node took, from its start (all its inputs done) to its answer.",
		), []string{"composite", "node"}),
		firstSegment: prometheus.NewHistogramVec(histogramOpts(
			"watertight_composite_first_segment_seconds",
			"Time from a composite call's arrival to its first (core) segment or single answer.",
		), []string{"composite"}),
		laterSegment: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "watertight_composite_segment_arrival_seconds",
			Help:    "Time from a composite call's arrival to each later (weak node) segment of a multi-segment answer; buckets 1, 3 and 5 s.",
			Buckets: SegmentArrivalBuckets,
		}, []string{"composite"}),
	}
}

func (m *compositeMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.requests, m.duration, m.nodeResults, m.nodeDuration, m.firstSegment, m.laterSegment}
}

// CompositeDone records a finished composite call.
func (r *Registry) CompositeDone(composite, result string, took time.Duration) {
	r.composite.requests.WithLabelValues(composite, result).Inc()
	r.composite.duration.WithLabelValues(composite).Observe(took.Seconds())
}

// CompositeNode records a finished node; took is 0 for a node never called
// (skipped, or not started when the composite ended), whose duration is not
// observed.
func (r *Registry) CompositeNode(composite, node, result string, took time.Duration) {
	r.composite.nodeResults.WithLabelValues(composite, node, result).Inc()
	if took > 0 {
		r.composite.nodeDuration.WithLabelValues(composite, node).Observe(took.Seconds())
	}
}

// CompositeFirstSegment records when the core answer went out.
func (r *Registry) CompositeFirstSegment(composite string, since time.Duration) {
	r.composite.firstSegment.WithLabelValues(composite).Observe(since.Seconds())
}

// CompositeLaterSegment records when a later segment went out.
func (r *Registry) CompositeLaterSegment(composite string, since time.Duration) {
	r.composite.laterSegment.WithLabelValues(composite).Observe(since.Seconds())
}

// ForgetComposite drops the series of a composite that left the config.
func (r *Registry) ForgetComposite(composite string) {
	l := prometheus.Labels{"composite": composite}
	for _, c := range []interface{ DeletePartialMatch(prometheus.Labels) int }{
		r.composite.requests, r.composite.duration, r.composite.nodeResults,
		r.composite.nodeDuration, r.composite.firstSegment, r.composite.laterSegment,
	} {
		c.DeletePartialMatch(l)
	}
}
