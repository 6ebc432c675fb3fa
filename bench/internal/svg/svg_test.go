package svg

import (
	"encoding/xml"
	"io"
	"math"
	"strings"
	"testing"
)

// wellFormed parses b as XML to the end.
func wellFormed(t *testing.T, b []byte) {
	t.Helper()
	d := xml.NewDecoder(strings.NewReader(string(b)))
	for {
		if _, err := d.Token(); err == io.EOF {
			return
		} else if err != nil {
			t.Fatalf("not well-formed XML: %v\n%s", err, b)
		}
	}
}

func TestBarsAndLinesAreWellFormed(t *testing.T) {
	bars := Bars{Title: `p50 & p99 <ms>`, YLabel: "ms", Categories: []string{"a", "b"},
		Series: []BarSeries{{Name: "p50", Values: []float64{1, math.NaN()}}, {Name: "p99", Values: []float64{3, 4}}}, Labels: "%.1f"}
	b := bars.SVG()
	wellFormed(t, b)
	if got := strings.Count(string(b), "<rect "); got != 1+3 { // background + 3 bars (NaN draws none)
		t.Errorf("%d rects, want 4", got)
	}
	lines := Lines{Title: "t", Series: []LineSeries{{Name: "x", X: []float64{0, 1, 2, 3}, Y: []float64{0, math.NaN(), 50, 100}}},
		YMin: 0, YMax: 100, ShadeFrom: 1, ShadeTo: 3, ShadeLabel: "slow"}
	l := lines.SVG()
	wellFormed(t, l)
	if got := strings.Count(string(l), "<polyline"); got != 2 { // NaN breaks the line in two
		t.Errorf("%d polylines, want 2", got)
	}
}

func TestNiceMax(t *testing.T) {
	for _, c := range []struct{ in, want float64 }{{0.9, 1}, {691, 800}, {1100, 1200}, {43, 50}, {0, 1}} {
		if got := niceMax(c.in); got != c.want {
			t.Errorf("niceMax(%v) = %v, want %v", c.in, got, c.want)
		}
	}
}
