package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/watertight/watertight/bench/internal/svg"
)

// summary is what the report says about one run.
type summary struct {
	Name, Callers, Experiment string
	Proto                     string // h1 | h2c
	Rep                       int
	// Healthy upstreams while the slow one is slow.
	HealthyCalls int
	HealthyOK    float64 // share answered 200 within the target
	HealthyP50MS float64
	HealthyP99MS float64
	HealthyOKPre float64 // the same before the slow phase
	// The slow upstream while slow: its calls that failed, and how fast.
	SlowCalls      int
	SlowFailed     int
	SlowRefused    int     // answered by the proxy with a status (not a hang cut by the app)
	RefuseAnswerMS float64 // median send → answer of the refused calls
	SlowFailCallMS float64 // median due → failure of the failed calls (the caller's view)
	SlowReasons    map[string]int
	// Weights: successful calls (200 within target) per upstream and total.
	OKPerUpstream []int
	CallsPerUp    []int
	OKTotal       int
	// Series: success share per second, healthy upstreams and slow upstream.
	SeriesX, SeriesHealthy, SeriesSlow []float64
}

func (s summary) line() string {
	if s.Experiment == "weights" {
		return fmt.Sprintf("%s: ok per upstream %v of %v, total ok %d", s.Name, s.OKPerUpstream, s.CallsPerUp, s.OKTotal)
	}
	callers := s.Callers
	if s.Proto != protoH1 {
		callers += ", " + s.Proto
	}
	return fmt.Sprintf("%s (%s callers): healthy ok %.2f%% (before %.2f%%), p99 %.1f ms; slow upstream: %d/%d failed, %d refused, refusal answered in %.2f ms (median), caller learns in %.1f ms",
		s.Name, callers, 100*s.HealthyOK, 100*s.HealthyOKPre, s.HealthyP99MS, s.SlowFailed, s.SlowCalls, s.SlowRefused, s.RefuseAnswerMS, s.SlowFailCallMS)
}

func summarize(r *Result) summary {
	s := summary{Name: r.Name, Callers: r.Callers, Experiment: r.Experiment, Proto: r.proto(), Rep: r.Rep, SlowReasons: map[string]int{}}
	n := len(r.Upstreams)
	s.OKPerUpstream = make([]int, n)
	s.CallsPerUp = make([]int, n)
	ok := func(c Call) bool {
		return c.Status == 200 && c.LatMS <= r.TargetsMS[c.Up]
	}
	var hLat, refuse, failLat []float64
	var hOK, hPre, hPreOK int
	secs := int(math.Ceil(r.DurationS))
	bucketH, bucketHOK := make([]int, secs), make([]int, secs)
	bucketS, bucketSOK := make([]int, secs), make([]int, secs)
	for _, c := range r.Calls {
		s.CallsPerUp[c.Up]++
		if ok(c) {
			s.OKPerUpstream[c.Up]++
			s.OKTotal++
		}
		b := min(int(c.DueS), secs-1)
		slowPhase := r.Slow >= 0 && c.DueS >= r.SlowAtS
		if c.Up != r.Slow {
			bucketH[b]++
			if ok(c) {
				bucketHOK[b]++
			}
			if slowPhase {
				s.HealthyCalls++
				hLat = append(hLat, c.LatMS)
				if ok(c) {
					hOK++
				}
			} else {
				hPre++
				if ok(c) {
					hPreOK++
				}
			}
			continue
		}
		bucketS[b]++
		if ok(c) {
			bucketSOK[b]++
		}
		if !slowPhase {
			continue
		}
		s.SlowCalls++
		if c.Status == 200 {
			continue
		}
		s.SlowFailed++
		failLat = append(failLat, c.LatMS)
		reason := c.Reason
		if c.Status != 0 {
			s.SlowRefused++
			if reason == "" {
				reason = fmt.Sprint(c.Status)
			} else {
				reason = fmt.Sprintf("%d %s", c.Status, reason)
			}
			if c.WaitMS >= 0 {
				refuse = append(refuse, c.LatMS-c.WaitMS)
			}
		}
		s.SlowReasons[reason]++
	}
	s.HealthyOK = ratio(hOK, s.HealthyCalls)
	s.HealthyOKPre = ratio(hPreOK, hPre)
	s.HealthyP50MS = percentile(hLat, 50)
	s.HealthyP99MS = percentile(hLat, 99)
	s.RefuseAnswerMS = percentile(refuse, 50)
	s.SlowFailCallMS = percentile(failLat, 50)
	for b := 0; b < secs; b++ {
		s.SeriesX = append(s.SeriesX, float64(b)+0.5)
		s.SeriesHealthy = append(s.SeriesHealthy, 100*ratio(bucketHOK[b], bucketH[b]))
		s.SeriesSlow = append(s.SeriesSlow, 100*ratio(bucketSOK[b], bucketS[b]))
	}
	return s
}

func ratio(a, b int) float64 {
	if b == 0 {
		return math.NaN()
	}
	return float64(a) / float64(b)
}

func percentile(v []float64, p float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	xs := slices.Clone(v)
	slices.Sort(xs)
	i := int(math.Ceil(p/100*float64(len(xs)))) - 1
	return xs[max(0, min(i, len(xs)-1))]
}

func median(v []float64) float64 {
	var xs []float64
	for _, x := range v {
		if !math.IsNaN(x) {
			xs = append(xs, x)
		}
	}
	if len(xs) == 0 {
		return math.NaN()
	}
	slices.Sort(xs)
	if len(xs)%2 == 1 {
		return xs[len(xs)/2]
	}
	return (xs[len(xs)/2-1] + xs[len(xs)/2]) / 2
}

// group is the repetitions of one target in one experiment, callers model
// and app protocol. Runs over HTTP/1.1 and h2c are never pooled: a median
// over both would describe neither.
type group struct {
	experiment, proto, callers, name string

	runs      []summary
	upstreams []string
	duration  float64
	slowAt    float64
	rate      float64
	workers   int
	targets   []float64
}

// label is the target's name in tables, with the protocol when it is not
// the default one (weights tables have no per-protocol sections).
func (g *group) label() string {
	if g.proto == protoH1 {
		return g.name
	}
	return g.name + " (" + g.proto + ")"
}

func report(args []string) {
	fs := flag.NewFlagSet("report", flag.ExitOnError)
	in := fs.String("in", "bench/out/isolation", "directory of JSON results")
	img := fs.String("img", "", "directory for the SVG pictures (empty: none)")
	md := fs.String("md", "", "markdown file to write (also printed)")
	order := fs.String("order", "watertight,watertight-shared,haproxy,revproxy,weighted,equal", "target order in tables")
	_ = fs.Parse(args)

	files, _ := filepath.Glob(filepath.Join(*in, "*.json"))
	slices.Sort(files)
	var results []Result
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			log.Fatal(err)
		}
		var r Result
		if err := json.Unmarshal(b, &r); err != nil {
			log.Printf("skipping %s: %v", f, err)
			continue
		}
		results = append(results, r)
	}
	out, err := render(results, *img, strings.Split(*order, ","))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(out)
	if *md != "" {
		if err := os.WriteFile(*md, []byte(out), 0o644); err != nil {
			log.Fatal(err)
		}
	}
}

// groupRuns summarizes the runs and groups the repetitions, in table
// order: isolation before weights, HTTP/1.1 before h2c, shared before
// independent callers, then the targets in the given order.
func groupRuns(results []Result, order []string) []*group {
	byKey := map[string]*group{}
	var gs []*group
	for i := range results {
		r := &results[i]
		key := strings.Join([]string{r.Experiment, r.proto(), r.Callers, r.Name}, "|")
		g := byKey[key]
		if g == nil {
			g = &group{experiment: r.Experiment, proto: r.proto(), callers: r.Callers, name: r.Name,
				upstreams: r.Upstreams, duration: r.DurationS, slowAt: r.SlowAtS, rate: r.Rate, workers: r.Workers, targets: r.TargetsMS}
			byKey[key] = g
			gs = append(gs, g)
		}
		g.runs = append(g.runs, summarize(r))
	}
	rank := func(name string) int {
		if i := slices.Index(order, name); i >= 0 {
			return i
		}
		return 100
	}
	slices.SortStableFunc(gs, func(a, b *group) int {
		if c := strings.Compare(b.experiment, a.experiment); c != 0 {
			return c // isolation before weights
		}
		if c := strings.Compare(a.proto, b.proto); c != 0 {
			return c // h1 before h2c
		}
		if c := strings.Compare(b.callers, a.callers); c != 0 {
			return c // shared before independent
		}
		return rank(a.name) - rank(b.name)
	})
	return gs
}

// render is the markdown report (and the pictures, into img if set).
func render(results []Result, img string, order []string) (string, error) {
	gs := groupRuns(results, order)
	var w strings.Builder
	var protos []string
	for _, g := range gs {
		if g.experiment == "isolation" && !slices.Contains(protos, g.proto) {
			protos = append(protos, g.proto)
		}
	}
	for _, proto := range protos {
		for _, callers := range []string{"shared", "independent"} {
			var sel []*group
			for _, g := range gs {
				if g.experiment == "isolation" && g.proto == proto && g.callers == callers {
					sel = append(sel, g)
				}
			}
			if len(sel) == 0 {
				continue
			}
			if err := isolationTable(&w, sel, img, len(protos) > 1); err != nil {
				return "", err
			}
		}
	}
	var wg []*group
	for _, g := range gs {
		if g.experiment == "weights" {
			wg = append(wg, g)
		}
	}
	if len(wg) > 0 {
		if err := weightsTable(&w, wg, img); err != nil {
			return "", err
		}
	}
	return w.String(), nil
}

// isolationTable writes one section: the isolation runs of one protocol and
// callers model. HTTP/1.1 sections keep their old headings and picture
// names unless h2c runs are in the report too (then they say HTTP/1.1).
func isolationTable(w *strings.Builder, gs []*group, img string, manyProtos bool) error {
	g0 := gs[0]
	callers, proto := g0.callers, g0.proto
	heading, svgName, titleProto := "", "isolation-"+callers+"-callers.svg", ""
	switch {
	case proto != protoH1:
		heading, svgName, titleProto = ", "+proto, "isolation-"+proto+"-"+callers+"-callers.svg", ", "+proto
	case manyProtos:
		heading = ", HTTP/1.1"
	}
	fmt.Fprintf(w, "\n### Isolation, %s callers%s\n\n", callers, heading)
	fmt.Fprintf(w, "%d upstreams (%s), %.0f calls/s in total, round robin; %d app workers %s; upstream %s hangs from %.0f s to the end of the %.0f s run. "+
		"Latency target %.0f ms. Medians of %d repetitions; healthy = the other upstreams while it hangs.",
		len(g0.upstreams), strings.Join(g0.upstreams, ", "), g0.rate, g0.workers, map[string]string{"shared": "shared by all calls", "independent": "split evenly, one pool per upstream"}[callers],
		g0.upstreams[len(g0.upstreams)-1], g0.slowAt, g0.duration, g0.targets[0], len(g0.runs))
	if proto == protoH2C {
		fmt.Fprint(w, " The app speaks h2c (HTTP/2, prior knowledge): its calls to an upstream are streams multiplexed on one connection.")
	}
	fmt.Fprint(w, "\n\n")
	fmt.Fprintln(w, "| target | healthy ok % (min–max) | healthy ok % before | healthy p50 ms | healthy p99 ms | slow upstream failed | refused by the proxy | refusal answered in (median ms) | caller learns after (median ms) | how the slow calls ended (rep 1) |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
	var series []svg.LineSeries
	for i, g := range gs {
		col := func(f func(summary) float64) float64 {
			var v []float64
			for _, r := range g.runs {
				v = append(v, f(r))
			}
			return median(v)
		}
		minmax := func(f func(summary) float64) (float64, float64) {
			lo, hi := math.Inf(1), math.Inf(-1)
			for _, r := range g.runs {
				lo, hi = math.Min(lo, f(r)), math.Max(hi, f(r))
			}
			return lo, hi
		}
		ok := col(func(s summary) float64 { return 100 * s.HealthyOK })
		lo, hi := minmax(func(s summary) float64 { return 100 * s.HealthyOK })
		var reasons []string
		for k, v := range g.runs[0].SlowReasons {
			reasons = append(reasons, fmt.Sprintf("%s: %d", k, v))
		}
		slices.Sort(reasons)
		fmt.Fprintf(w, "| %s | **%s** (%s–%s) | %s | %s | **%s** | %s | %s | **%s** | %s | %s |\n", g.name,
			f2(ok), f2(lo), f2(hi), f2(col(func(s summary) float64 { return 100 * s.HealthyOKPre })),
			f1(col(func(s summary) float64 { return s.HealthyP50MS })), f1(col(func(s summary) float64 { return s.HealthyP99MS })),
			f0(col(func(s summary) float64 { return float64(s.SlowFailed) }))+" / "+f0(col(func(s summary) float64 { return float64(s.SlowCalls) })),
			f0(col(func(s summary) float64 { return float64(s.SlowRefused) })),
			f2(col(func(s summary) float64 { return s.RefuseAnswerMS })), f1(col(func(s summary) float64 { return s.SlowFailCallMS })),
			strings.Join(reasons, ", "))
		// The picture: per-second success of the healthy upstreams,
		// median over the repetitions.
		var x, y []float64
		for b := range g.runs[0].SeriesX {
			var v []float64
			for _, r := range g.runs {
				if b < len(r.SeriesHealthy) {
					v = append(v, r.SeriesHealthy[b])
				}
			}
			x = append(x, g.runs[0].SeriesX[b])
			y = append(y, median(v))
		}
		series = append(series, svg.LineSeries{Name: g.name, X: x, Y: y, Dashed: i%2 == 1 && strings.Contains(g.name, "shared")})
	}
	if img == "" {
		return nil
	}
	p := filepath.Join(img, svgName)
	chart := svg.Lines{
		Title:  fmt.Sprintf("Healthy upstreams' calls within %.0f ms, %s callers%s (%% per second, median of reps)", g0.targets[0], callers, titleProto),
		XLabel: "seconds into the run", YLabel: "healthy calls ok (%)",
		Series: series, XMin: 0, XMax: g0.duration, YMin: 0, YMax: 100,
		ShadeFrom: g0.slowAt, ShadeTo: g0.duration, ShadeLabel: g0.upstreams[len(g0.upstreams)-1] + " hangs",
	}
	if err := svg.Write(p, chart.SVG()); err != nil {
		return err
	}
	fmt.Fprintf(w, "\n![healthy calls over time, %s callers%s](img/%s)\n", callers, titleProto, svgName)
	return nil
}

// weightsTable writes the weights section.
func weightsTable(w *strings.Builder, wg []*group, img string) error {
	g0 := wg[0]
	fmt.Fprintf(w, "\n### Weights: %s at the same budget\n\n", strings.Join(names(wg), " vs "))
	fmt.Fprintf(w, "Upstreams %s, %.0f calls/s in total, %d independent workers (never the bottleneck), %.0f s. A call succeeds when answered 200 within its target (%s ms). Medians of %d repetitions.\n\n",
		strings.Join(g0.upstreams, ", "), g0.rate, g0.workers, g0.duration, strings.Trim(strings.Join(strings.Fields(fmt.Sprint(g0.targets)), ", "), "[]"), len(g0.runs))
	fmt.Fprint(w, "| pools |")
	for _, u := range g0.upstreams {
		fmt.Fprintf(w, " %s ok / calls |", u)
	}
	fmt.Fprintln(w, " total ok | total ok % |")
	fmt.Fprintln(w, "|---|"+strings.Repeat("---:|", len(g0.upstreams)+2))
	var bars []svg.BarSeries
	cats := append(slices.Clone(g0.upstreams), "total")
	for _, g := range wg {
		name := g.label()
		fmt.Fprintf(w, "| %s |", name)
		var vals []float64
		var calls float64
		for u := range g0.upstreams {
			okU := medianInt(g.runs, func(s summary) int { return s.OKPerUpstream[u] })
			cU := medianInt(g.runs, func(s summary) int { return s.CallsPerUp[u] })
			calls += cU
			vals = append(vals, okU)
			fmt.Fprintf(w, " %.0f / %.0f |", okU, cU)
		}
		tot := medianInt(g.runs, func(s summary) int { return s.OKTotal })
		vals = append(vals, tot)
		fmt.Fprintf(w, " **%.0f** | %.1f |\n", tot, 100*tot/calls)
		bars = append(bars, svg.BarSeries{Name: name, Values: vals})
	}
	if img == "" {
		return nil
	}
	p := filepath.Join(img, "weights.svg")
	chart := svg.Bars{Title: "Successful calls: weighted vs equal pools, same budget (median of reps)", YLabel: "calls answered 200 within target",
		Categories: cats, Series: bars, Labels: "%.0f"}
	if err := svg.Write(p, chart.SVG()); err != nil {
		return err
	}
	fmt.Fprintf(w, "\n![weighted vs equal pools](img/%s)\n", filepath.Base(p))
	return nil
}

func names(gs []*group) []string {
	var out []string
	for _, g := range gs {
		out = append(out, g.label()+" pools")
	}
	return out
}

func medianInt(rs []summary, f func(summary) int) float64 {
	var v []float64
	for _, r := range rs {
		v = append(v, float64(f(r)))
	}
	return median(v)
}

func fnum(v float64, prec int) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "–"
	}
	return fmt.Sprintf("%.*f", prec, v)
}

func f0(v float64) string { return fnum(v, 0) }
func f1(v float64) string { return fnum(v, 1) }
func f2(v float64) string { return fnum(v, 2) }
