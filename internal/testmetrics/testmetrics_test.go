package testmetrics

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestFindAndSumMatchEveryGivenLabel(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "calls_total", Help: "h"}, []string{"upstream", "result"})
	reg.MustRegister(c)
	c.WithLabelValues("a", "ok").Add(2)
	c.WithLabelValues("a", "error").Add(3)
	c.WithLabelValues("b", "ok").Add(5)

	if got := Sum(t, reg, "calls_total", map[string]string{"upstream": "a"}); got != 5 {
		t.Errorf("Sum{upstream=a} = %v, want 5", got)
	}
	if got := Sum(t, reg, "calls_total", nil); got != 10 {
		t.Errorf("Sum{} = %v, want 10", got)
	}
	if m := Find(t, reg, "calls_total", map[string]string{"upstream": "b", "result": "ok"}); m.GetCounter().GetValue() != 5 {
		t.Errorf("Find{b,ok} = %v, want 5", m)
	}
	// A label the series does not have, or another value, matches nothing.
	if m := Find(t, reg, "calls_total", map[string]string{"upstream": "a", "zone": "x"}); m != nil {
		t.Errorf("Find with a label no series has = %v, want nil", m)
	}
	if m := Find(t, reg, "calls_total", map[string]string{"upstream": "c"}); m != nil {
		t.Errorf("Find{upstream=c} = %v, want nil", m)
	}
}
