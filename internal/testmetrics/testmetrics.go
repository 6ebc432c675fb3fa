// Package testmetrics reads series out of a Prometheus registry in tests:
// the one place that walks gathered families and matches labels.
package testmetrics

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Find is the first series of name that has every one of labels (others
// may be there too), or nil.
func Find(t testing.TB, g prometheus.Gatherer, name string, labels map[string]string) *dto.Metric {
	t.Helper()
	var found *dto.Metric
	each(t, g, name, labels, func(m *dto.Metric) bool {
		found = m
		return false
	})
	return found
}

// Sum adds up the counter or gauge values of every series of name that has
// every one of labels.
func Sum(t testing.TB, g prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	sum := 0.0
	each(t, g, name, labels, func(m *dto.Metric) bool {
		sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		return true
	})
	return sum
}

// each calls f for the matching series until f says stop.
func each(t testing.TB, g prometheus.Gatherer, name string, labels map[string]string, f func(*dto.Metric) bool) {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatalf("gathering metrics: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if hasAll(m, labels) && !f(m) {
				return
			}
		}
	}
}

func hasAll(m *dto.Metric, labels map[string]string) bool {
	matched := 0
	for _, lp := range m.GetLabel() {
		if v, ok := labels[lp.GetName()]; ok {
			if v != lp.GetValue() {
				return false
			}
			matched++
		}
	}
	return matched == len(labels)
}
