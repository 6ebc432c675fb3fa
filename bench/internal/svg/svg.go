// Package svg draws the benchmark's few pictures: grouped bar charts and
// line charts, as plain SVG text.
//
// Why hand-written: the harness needs a handful of bars and polylines with
// axes and a legend, nothing a charting library would add value to, and the
// main module must not grow a dependency for pictures. SVG is text, renders
// on GitHub and in any browser, and diffs reasonably in review.
package svg

import (
	"fmt"
	"html"
	"math"
	"os"
	"strings"
	"unicode/utf8"
)

// Palette: colour-blind-safe (Okabe–Ito), in series order.
var palette = []string{"#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"}

// Colour returns the i-th palette colour.
func Colour(i int) string { return palette[i%len(palette)] }

// Bars is a grouped bar chart: one group per category, one bar per series.
type Bars struct {
	Title, YLabel string
	Categories    []string
	Series        []BarSeries
	// YMax fixes the top of the axis (0: from the data).
	YMax float64
	// Labels writes each bar's value above it, with this format (e.g. "%.0f").
	Labels string
}

// BarSeries is one bar per category; NaN draws no bar.
type BarSeries struct {
	Name   string
	Values []float64
}

// Lines is a line chart over a numeric x axis.
type Lines struct {
	Title, XLabel, YLabel string
	Series                []LineSeries
	XMin, XMax            float64 // 0, 0: from the data
	YMin, YMax            float64 // 0, 0: from the data
	// Shade marks an x range (e.g. "upstream slow") with a grey band.
	ShadeFrom, ShadeTo float64
	ShadeLabel         string
}

// LineSeries is one polyline; points with NaN y break the line.
type LineSeries struct {
	Name   string
	X, Y   []float64
	Dashed bool
}

const (
	width, height                  = 760, 420
	marginL, marginR, marginT, mgB = 70, 20, 40, 110
)

type canvas struct{ b strings.Builder }

func (c *canvas) f(format string, a ...any) { fmt.Fprintf(&c.b, format, a...) }

func (c *canvas) open(title string) {
	c.f(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", width, height, width, height)
	c.f(`<rect width="100%%" height="100%%" fill="white"/>` + "\n")
	c.f(`<text x="10" y="22" font-size="%.1f" font-weight="bold">%s</text>`+"\n", titleSize(title), esc(title))
}

// titleSize shrinks a long title's font so that it fits the width: a bold
// sans-serif character is about 0.65 em wide.
func titleSize(title string) float64 {
	n := float64(utf8.RuneCountInString(title))
	return math.Min(15, float64(width-20)/(0.65*math.Max(n, 1)))
}

func (c *canvas) close() []byte {
	c.f("</svg>\n")
	return []byte(c.b.String())
}

func esc(s string) string { return html.EscapeString(s) }

// niceMax rounds v up to a round number (1, 1.2, 1.5, 2, ... 8 times a power of ten).
func niceMax(v float64) float64 {
	if v <= 0 || math.IsNaN(v) {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}

func fmtTick(v float64) string {
	if v == math.Trunc(v) && math.Abs(v) < 1e9 {
		return fmt.Sprintf("%.0f", v)
	}
	return strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.3f", v), "0"), ".")
}

// yAxis draws horizontal grid lines and tick labels from lo to hi.
func (c *canvas) yAxis(lo, hi float64, label string) {
	plotH := float64(height - marginT - mgB)
	for i := 0; i <= 5; i++ {
		v := lo + (hi-lo)*float64(i)/5
		y := float64(height-mgB) - plotH*float64(i)/5
		c.f(`<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>`+"\n", marginL, y, width-marginR, y)
		c.f(`<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", marginL-6, y+4, fmtTick(v))
	}
	c.f(`<text transform="translate(16 %d) rotate(-90)" text-anchor="middle">%s</text>`+"\n", marginT+(height-marginT-mgB)/2, esc(label))
	c.f(`<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", marginL, height-mgB, width-marginR, height-mgB)
}

// legend draws the series names in a row under the plot.
func (c *canvas) legend(names []string, dashed []bool) {
	x, y := marginL, height-22
	for i, n := range names {
		dash := ""
		if dashed != nil && dashed[i] {
			dash = ` stroke-dasharray="6 3"`
		}
		c.f(`<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="4"%s/>`+"\n", x, y-4, x+18, y-4, Colour(i), dash)
		c.f(`<text x="%d" y="%d">%s</text>`+"\n", x+22, y, esc(n))
		x += 40 + 7*len(n)
		if x > width-120 {
			x, y = marginL, y+16
		}
	}
}

// SVG renders the bar chart.
func (b Bars) SVG() []byte {
	var c canvas
	c.open(b.Title)
	top := b.YMax
	if top == 0 {
		for _, s := range b.Series {
			for _, v := range s.Values {
				if !math.IsNaN(v) && !math.IsInf(v, 0) {
					top = math.Max(top, v)
				}
			}
		}
		top = niceMax(top * 1.08)
	}
	c.yAxis(0, top, b.YLabel)
	plotW := float64(width - marginL - marginR)
	plotH := float64(height - marginT - mgB)
	n := max(len(b.Categories), 1)
	groupW := plotW / float64(n)
	barW := groupW * 0.8 / float64(max(len(b.Series), 1))
	for gi, cat := range b.Categories {
		gx := float64(marginL) + groupW*float64(gi) + groupW*0.1
		for si, s := range b.Series {
			if gi >= len(s.Values) {
				continue
			}
			v := s.Values[gi]
			if math.IsNaN(v) || math.IsInf(v, 0) {
				continue
			}
			h := plotH * math.Min(v, top) / top
			x := gx + barW*float64(si)
			y := float64(height-mgB) - h
			c.f(`<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s %s: %s</title></rect>`+"\n",
				x, y, barW*0.92, h, Colour(si), esc(cat), esc(s.Name), fmtTick(v))
			if b.Labels != "" {
				c.f(`<text x="%.1f" y="%.1f" text-anchor="middle" font-size="9">%s</text>`+"\n", x+barW*0.46, y-3, esc(fmt.Sprintf(b.Labels, v)))
			}
		}
		c.f(`<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", float64(marginL)+groupW*(float64(gi)+0.5), height-mgB+16, esc(cat))
	}
	names := make([]string, len(b.Series))
	for i, s := range b.Series {
		names[i] = s.Name
	}
	c.legend(names, nil)
	return c.close()
}

// SVG renders the line chart.
func (l Lines) SVG() []byte {
	var c canvas
	c.open(l.Title)
	xmin, xmax, ymin, ymax := l.XMin, l.XMax, l.YMin, l.YMax
	if xmin == 0 && xmax == 0 {
		xmin, xmax = math.Inf(1), math.Inf(-1)
		for _, s := range l.Series {
			for _, x := range s.X {
				xmin, xmax = math.Min(xmin, x), math.Max(xmax, x)
			}
		}
		if math.IsInf(xmin, 0) {
			xmin, xmax = 0, 1
		}
	}
	if ymin == 0 && ymax == 0 {
		for _, s := range l.Series {
			for _, y := range s.Y {
				if !math.IsNaN(y) {
					ymax = math.Max(ymax, y)
				}
			}
		}
		ymax = niceMax(ymax * 1.05)
	}
	if xmax == xmin {
		xmax = xmin + 1
	}
	plotW := float64(width - marginL - marginR)
	plotH := float64(height - marginT - mgB)
	px := func(x float64) float64 { return float64(marginL) + plotW*(x-xmin)/(xmax-xmin) }
	py := func(y float64) float64 {
		y = math.Max(ymin, math.Min(ymax, y))
		return float64(height-mgB) - plotH*(y-ymin)/(ymax-ymin)
	}
	if l.ShadeTo > l.ShadeFrom {
		x0, x1 := px(math.Max(l.ShadeFrom, xmin)), px(math.Min(l.ShadeTo, xmax))
		c.f(`<rect x="%.1f" y="%d" width="%.1f" height="%.1f" fill="#eee"/>`+"\n", x0, marginT, x1-x0, plotH)
		c.f(`<text x="%.1f" y="%d" fill="#666">%s</text>`+"\n", x0+4, marginT+14, esc(l.ShadeLabel))
	}
	c.yAxis(ymin, ymax, l.YLabel)
	for i := 0; i <= 10; i++ {
		v := xmin + (xmax-xmin)*float64(i)/10
		c.f(`<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", px(v), height-mgB+16, fmtTick(math.Round(v*10)/10))
	}
	c.f(`<text x="%d" y="%d" text-anchor="middle">%s</text>`+"\n", marginL+int(plotW/2), height-mgB+34, esc(l.XLabel))
	names := make([]string, len(l.Series))
	dashed := make([]bool, len(l.Series))
	for i, s := range l.Series {
		names[i], dashed[i] = s.Name, s.Dashed
		dash := ""
		if s.Dashed {
			dash = ` stroke-dasharray="6 3"`
		}
		var pts []string
		flush := func() {
			if len(pts) > 0 {
				// Earlier series are drawn wider, underneath: where two
				// lines coincide (two targets both at 100 %) both colours
				// still show.
				c.f(`<polyline fill="none" stroke="%s" stroke-width="%d"%s points="%s"/>`+"\n", Colour(i), 2+2*(len(l.Series)-1-i), dash, strings.Join(pts, " "))
			}
			pts = pts[:0]
		}
		for j := range s.X {
			if j >= len(s.Y) || math.IsNaN(s.Y[j]) {
				flush()
				continue
			}
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(s.X[j]), py(s.Y[j])))
		}
		flush()
	}
	c.legend(names, dashed)
	return c.close()
}

// Write writes an SVG to path.
func Write(path string, b []byte) error { return os.WriteFile(path, b, 0o644) }
