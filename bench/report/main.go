// Command report turns the raw outputs of bench/run.sh (fortio JSON files and
// h2load text) into the results table: medians of the repetitions, and
// ratios against the baselines measured in the same run.
//
// Every number in the tables is the median of the repetitions, and every
// ratio is a ratio of those medians, taken against baselines (direct,
// revproxy, HAProxy) measured in the same run, interleaved with the target.
// Per-repetition ratios were tried first: with 2 shared cores a single noisy
// repetition of the baseline (direct slower than a proxy, say) makes a
// per-repetition difference of latencies meaningless, while the median of
// each series shrugs it off. The raw per-repetition numbers are kept in
// results.json.
//
// Usage: report -runs DIR -out DIR [-meta FILE]
package main

import (
	"bufio"
	"encoding/csv"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Targets, in table order, and the baselines ratios are taken against.
var targetOrder = []string{"direct", "watertight", "watertight-proxy", "revproxy", "haproxy"}

const (
	baseDirect   = "direct"
	baseRevproxy = "revproxy"
	baseHAProxy  = "haproxy"
)

// watertightTargets are the ones the goal is judged on.
var watertightTargets = []string{"watertight", "watertight-proxy"}

// Goal from the issue: ≥ 90% of the bare ReverseProxy's throughput, ≤ 1.1×
// its added p50.
const (
	goalThroughput = 0.90
	goalAddedP50   = 1.10
)

// run is one measurement (one tool invocation).
type run struct {
	Scenario string  `json:"scenario"`
	Target   string  `json:"target"`
	Rep      int     `json:"rep"`
	Tool     string  `json:"tool"`
	QPS      float64 `json:"qps"`
	// Latencies in seconds; h2load reports only the mean, so for it the
	// percentiles are NaN (written as null).
	Mean, P50, P90, P99, P999 float64
	Requests, Errors          int64
	File                      string `json:"file"`
	// Noise is the share of the server core (in %) that processes other than
	// the benchmark's used during the measurement; NaN if not measured.
	Noise float64
}

func (r run) MarshalJSON() ([]byte, error) {
	type plain struct {
		Scenario string   `json:"scenario"`
		Target   string   `json:"target"`
		Rep      int      `json:"rep"`
		Tool     string   `json:"tool"`
		QPS      float64  `json:"qps"`
		MeanUS   *float64 `json:"mean_us"`
		P50US    *float64 `json:"p50_us"`
		P90US    *float64 `json:"p90_us"`
		P99US    *float64 `json:"p99_us"`
		P999US   *float64 `json:"p999_us"`
		Requests int64    `json:"requests"`
		Errors   int64    `json:"errors"`
		File     string   `json:"file"`
		Noise    *float64 `json:"foreign_cpu_pct"`
	}
	return json.Marshal(plain{r.Scenario, r.Target, r.Rep, r.Tool, r.QPS,
		us(r.Mean), us(r.P50), us(r.P90), us(r.P99), us(r.P999), r.Requests, r.Errors, r.File, ptr(r.Noise)})
}

// us converts seconds to microseconds, nil for NaN.
func us(s float64) *float64 {
	if math.IsNaN(s) {
		return nil
	}
	v := math.Round(s*1e7) / 10
	return &v
}

// summary is one target in one scenario: medians over the repetitions.
type summary struct {
	Scenario string `json:"scenario"`
	Target   string `json:"target"`
	Reps     int    `json:"reps"`
	QPS      float64
	QPSMin   float64
	QPSMax   float64
	Mean     float64
	P50      float64
	P90      float64
	P99      float64
	Errors   int64   `json:"errors"` // summed over the repetitions
	Noise    float64 // median foreign CPU share of the server core, %
	// Ratios of medians (NaN when a baseline is missing, or for added
	// latency when the baseline proxy added none: the run was too noisy).
	QPSvsDirect, QPSvsRevproxy, QPSvsHAProxy float64
	AddedP50                                 float64 // seconds over direct
	AddedP50vsRevproxy, AddedP50vsHAProxy    float64
}

func (s summary) MarshalJSON() ([]byte, error) {
	type plain struct {
		Scenario           string   `json:"scenario"`
		Target             string   `json:"target"`
		Reps               int      `json:"reps"`
		QPS                float64  `json:"qps_median"`
		QPSMin             float64  `json:"qps_min"`
		QPSMax             float64  `json:"qps_max"`
		MeanUS             *float64 `json:"mean_us_median"`
		P50US              *float64 `json:"p50_us_median"`
		P90US              *float64 `json:"p90_us_median"`
		P99US              *float64 `json:"p99_us_median"`
		Errors             int64    `json:"errors"`
		QPSvsDirect        *float64 `json:"qps_vs_direct"`
		QPSvsRevproxy      *float64 `json:"qps_vs_revproxy"`
		QPSvsHAProxy       *float64 `json:"qps_vs_haproxy"`
		AddedP50US         *float64 `json:"added_p50_us"`
		AddedP50vsRevproxy *float64 `json:"added_p50_vs_revproxy"`
		AddedP50vsHAProxy  *float64 `json:"added_p50_vs_haproxy"`
		Noise              *float64 `json:"foreign_cpu_pct_median"`
	}
	return json.Marshal(plain{s.Scenario, s.Target, s.Reps, round(s.QPS, 1), round(s.QPSMin, 1), round(s.QPSMax, 1),
		us(s.Mean), us(s.P50), us(s.P90), us(s.P99), s.Errors,
		ptr(round(s.QPSvsDirect, 3)), ptr(round(s.QPSvsRevproxy, 3)), ptr(round(s.QPSvsHAProxy, 3)),
		us(s.AddedP50), ptr(round(s.AddedP50vsRevproxy, 3)), ptr(round(s.AddedP50vsHAProxy, 3)), ptr(round(s.Noise, 1))})
}

func round(v float64, digits int) float64 {
	p := math.Pow(10, float64(digits))
	return math.Round(v*p) / p
}

func ptr(v float64) *float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return nil
	}
	return &v
}

func main() {
	runsDir := flag.String("runs", "bench/out/runs", "directory of raw results (manifest.tsv and the files it names)")
	outDir := flag.String("out", "bench/out", "where to write results.json, results.csv and results.md")
	metaFile := flag.String("meta", "", "JSON file with run metadata to embed in results.json")
	flag.Parse()

	runs, scenarios, err := readRuns(*runsDir)
	if err != nil {
		log.Fatal(err)
	}
	var sums []summary
	for _, sc := range scenarios {
		sums = append(sums, summarize(sc.name, runs)...)
	}

	var md strings.Builder
	writeMarkdown(&md, scenarios, sums)
	fmt.Print(md.String())

	if err := os.WriteFile(filepath.Join(*outDir, "results.md"), []byte(md.String()), 0o644); err != nil {
		log.Fatal(err)
	}
	var meta any
	if *metaFile != "" {
		if b, err := os.ReadFile(*metaFile); err == nil {
			_ = json.Unmarshal(b, &meta)
		}
	}
	out := map[string]any{"meta": meta, "scenarios": scenarios, "summary": sums, "runs": runs}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(*outDir, "results.json"), append(b, '\n'), 0o644); err != nil {
		log.Fatal(err)
	}
	if err := writeCSV(filepath.Join(*outDir, "results.csv"), sums); err != nil {
		log.Fatal(err)
	}
}

// scenario is one row group of the table, as listed in the manifest.
type scenario struct {
	name, kind, desc string // kind: "max" (throughput) or "rate" (latency at a fixed rate)
}

func (s scenario) MarshalJSON() ([]byte, error) {
	return json.Marshal(map[string]string{"name": s.name, "kind": s.kind, "description": s.desc})
}

// readRuns reads manifest.tsv: one line per measurement,
// "scenario<TAB>kind<TAB>description<TAB>target<TAB>rep<TAB>tool<TAB>file[<TAB>noise%]".
func readRuns(dir string) ([]run, []scenario, error) {
	f, err := os.Open(filepath.Join(dir, "manifest.tsv"))
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	var runs []run
	var scenarios []scenario
	seen := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), "\t")
		if len(fields) < 7 {
			continue
		}
		name, kind, desc, target, repS, tool, file := fields[0], fields[1], fields[2], fields[3], fields[4], fields[5], fields[6]
		if !seen[name] {
			seen[name] = true
			scenarios = append(scenarios, scenario{name, kind, desc})
		}
		rep, _ := strconv.Atoi(repS)
		r := run{Scenario: name, Target: target, Rep: rep, Tool: tool, File: file, Noise: math.NaN()}
		if len(fields) > 7 && fields[7] != "" {
			r.Noise, _ = strconv.ParseFloat(fields[7], 64)
		}
		path := filepath.Join(dir, file)
		switch tool {
		case "fortio":
			err = parseFortio(path, &r)
		case "h2load":
			err = parseH2load(path, &r)
		default:
			err = fmt.Errorf("unknown tool %q", tool)
		}
		if err != nil {
			log.Printf("skipping %s: %v", path, err)
			continue
		}
		runs = append(runs, r)
	}
	return runs, scenarios, sc.Err()
}

func parseFortio(path string, r *run) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var d struct {
		ActualQPS         float64
		DurationHistogram struct {
			Count       int64
			Avg         float64
			Percentiles []struct{ Percentile, Value float64 }
		}
		RetCodes map[string]int64
	}
	if err := json.Unmarshal(b, &d); err != nil {
		return err
	}
	r.QPS = d.ActualQPS
	r.Mean = d.DurationHistogram.Avg
	r.Requests = d.DurationHistogram.Count
	r.P50, r.P90, r.P99, r.P999 = math.NaN(), math.NaN(), math.NaN(), math.NaN()
	for _, p := range d.DurationHistogram.Percentiles {
		switch p.Percentile {
		case 50:
			r.P50 = p.Value
		case 90:
			r.P90 = p.Value
		case 99:
			r.P99 = p.Value
		case 99.9:
			r.P999 = p.Value
		}
	}
	var ok int64
	for code, n := range d.RetCodes {
		if strings.HasPrefix(code, "2") {
			ok += n
		}
	}
	r.Errors = r.Requests - ok
	return nil
}

var (
	reFinished = regexp.MustCompile(`finished in [^,]+, ([0-9.]+) req/s`)
	reRequests = regexp.MustCompile(`requests: (\d+) total, \d+ started, \d+ done, \d+ succeeded, (\d+) failed, \d+ errored, (\d+) timeout`)
	reStatus   = regexp.MustCompile(`status codes: \d+ 2xx, \d+ 3xx, (\d+) 4xx, (\d+) 5xx`)
	reReqTime  = regexp.MustCompile(`time for request:\s+(\S+)\s+(\S+)\s+(\S+)`)
)

func parseH2load(path string, r *run) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	s := string(b)
	m := reFinished.FindStringSubmatch(s)
	if m == nil {
		return fmt.Errorf("no 'finished in' line")
	}
	r.QPS, _ = strconv.ParseFloat(m[1], 64)
	r.P50, r.P90, r.P99, r.P999 = math.NaN(), math.NaN(), math.NaN(), math.NaN()
	r.Mean = math.NaN()
	if m := reReqTime.FindStringSubmatch(s); m != nil {
		r.Mean = parseH2loadDuration(m[3])
	}
	// Errors: failed requests (which include error statuses) and timeouts.
	// h2load's status counts straddle the warm-up boundary, so they are
	// only a floor for the error statuses, not a total to subtract from.
	if m := reRequests.FindStringSubmatch(s); m != nil {
		r.Requests, _ = strconv.ParseInt(m[1], 10, 64)
		failed, _ := strconv.ParseInt(m[2], 10, 64)
		timeout, _ := strconv.ParseInt(m[3], 10, 64)
		r.Errors = failed + timeout
	}
	if m := reStatus.FindStringSubmatch(s); m != nil {
		c4, _ := strconv.ParseInt(m[1], 10, 64)
		c5, _ := strconv.ParseInt(m[2], 10, 64)
		r.Errors = max(r.Errors, c4+c5)
	}
	return nil
}

// parseH2loadDuration reads h2load's "123us", "1.23ms", "2.00s".
func parseH2loadDuration(s string) float64 {
	for _, u := range []struct {
		suffix string
		scale  float64
	}{{"us", 1e-6}, {"ms", 1e-3}, {"s", 1}} {
		if v, ok := strings.CutSuffix(s, u.suffix); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return math.NaN()
			}
			return f * u.scale
		}
	}
	return math.NaN()
}

func summarize(sc string, runs []run) []summary {
	byTarget := map[string]map[int]run{}
	for _, r := range runs {
		if r.Scenario != sc {
			continue
		}
		if byTarget[r.Target] == nil {
			byTarget[r.Target] = map[int]run{}
		}
		byTarget[r.Target][r.Rep] = r
	}
	var out []summary
	for _, t := range orderedTargets(byTarget) {
		reps := byTarget[t]
		var qps, mean, p50, p90, p99, noise []float64
		s := summary{Scenario: sc, Target: t, Reps: len(reps)}
		for _, r := range reps {
			noise = append(noise, r.Noise)
			qps = append(qps, r.QPS)
			mean = append(mean, r.Mean)
			p50 = append(p50, r.P50)
			p90 = append(p90, r.P90)
			p99 = append(p99, r.P99)
			s.Errors += r.Errors
		}
		s.QPS, s.QPSMin, s.QPSMax = median(qps), slices.Min(qps), slices.Max(qps)
		s.Mean, s.P50, s.P90, s.P99 = median(mean), median(p50), median(p90), median(p99)
		s.Noise = median(noise)
		out = append(out, s)
	}
	// Ratios of the medians against the baselines of the same run.
	base := func(name string) (summary, bool) {
		for _, s := range out {
			if s.Target == name {
				return s, true
			}
		}
		return summary{}, false
	}
	nan := math.NaN()
	for i := range out {
		s := &out[i]
		s.QPSvsDirect, s.QPSvsRevproxy, s.QPSvsHAProxy = nan, nan, nan
		s.AddedP50, s.AddedP50vsRevproxy, s.AddedP50vsHAProxy = nan, nan, nan
		d, okD := base(baseDirect)
		rp, okR := base(baseRevproxy)
		hp, okH := base(baseHAProxy)
		if okD {
			s.QPSvsDirect = s.QPS / d.QPS
			s.AddedP50 = s.P50 - d.P50
		}
		if okR {
			s.QPSvsRevproxy = s.QPS / rp.QPS
			if okD && rp.P50 > d.P50 {
				s.AddedP50vsRevproxy = s.AddedP50 / (rp.P50 - d.P50)
			}
		}
		if okH {
			s.QPSvsHAProxy = s.QPS / hp.QPS
			if okD && hp.P50 > d.P50 {
				s.AddedP50vsHAProxy = s.AddedP50 / (hp.P50 - d.P50)
			}
		}
	}
	return out
}

func orderedTargets(m map[string]map[int]run) []string {
	var ts []string
	for _, t := range targetOrder {
		if _, ok := m[t]; ok {
			ts = append(ts, t)
		}
	}
	var extra []string
	for t := range m {
		if !slices.Contains(targetOrder, t) {
			extra = append(extra, t)
		}
	}
	slices.Sort(extra)
	return append(ts, extra...)
}

// median of the values that are numbers; NaN if none.
func median(v []float64) float64 {
	var xs []float64
	for _, x := range v {
		if !math.IsNaN(x) && !math.IsInf(x, 0) {
			xs = append(xs, x)
		}
	}
	if len(xs) == 0 {
		return math.NaN()
	}
	slices.Sort(xs)
	n := len(xs)
	if n%2 == 1 {
		return xs[n/2]
	}
	return (xs[n/2-1] + xs[n/2]) / 2
}

func fmtUS(s float64) string {
	if math.IsNaN(s) {
		return "–"
	}
	return strconv.FormatFloat(s*1e6, 'f', 0, 64)
}

func fmtRatio(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "–"
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}

func fmtPct(v float64) string {
	if math.IsNaN(v) {
		return "–"
	}
	return strconv.FormatFloat(v, 'f', 0, 64)
}

func writeMarkdown(w io.Writer, scenarios []scenario, sums []summary) {
	fmt.Fprintln(w, "\nMedians of the repetitions; ratios are ratios of those medians, against baselines of the same run.")
	fmt.Fprintln(w, "noise % = median share of the server core used by processes other than the benchmark's.")
	for _, sc := range scenarios {
		fmt.Fprintf(w, "\n### %s: %s\n\n", sc.name, sc.desc)
		if sc.kind == "max" {
			fmt.Fprintln(w, "| target | req/s (median) | min–max | ×direct | ×revproxy | ×haproxy | mean µs | p50 µs | p99 µs | errors | noise % |")
			fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
		} else {
			fmt.Fprintln(w, "| target | req/s | p50 µs | p90 µs | p99 µs | added p50 µs | added p50 ×revproxy | added p50 ×haproxy | errors | noise % |")
			fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
		}
		for _, s := range sums {
			if s.Scenario != sc.name {
				continue
			}
			if sc.kind == "max" {
				fmt.Fprintf(w, "| %s | %.0f | %.0f–%.0f | %s | %s | %s | %s | %s | %s | %d | %s |\n", s.Target, s.QPS, s.QPSMin, s.QPSMax,
					fmtRatio(s.QPSvsDirect), fmtRatio(s.QPSvsRevproxy), fmtRatio(s.QPSvsHAProxy),
					fmtUS(s.Mean), fmtUS(s.P50), fmtUS(s.P99), s.Errors, fmtPct(s.Noise))
			} else {
				added, vsRev, vsHAP := fmtUS(s.AddedP50), fmtRatio(s.AddedP50vsRevproxy), fmtRatio(s.AddedP50vsHAProxy)
				if s.Target == baseDirect { // the baseline adds nothing by definition
					added, vsRev, vsHAP = "(baseline)", "–", "–"
				}
				fmt.Fprintf(w, "| %s | %.0f | %s | %s | %s | %s | %s | %s | %d | %s |\n", s.Target, s.QPS,
					fmtUS(s.P50), fmtUS(s.P90), fmtUS(s.P99), added, vsRev, vsHAP, s.Errors, fmtPct(s.Noise))
			}
		}
	}

	// The verdict against the goal, per watertight target.
	fmt.Fprintf(w, "\n### Goal: ≥ %.0f%% of the bare ReverseProxy's throughput, ≤ %.1f× its added p50\n\n", goalThroughput*100, goalAddedP50)
	fmt.Fprintln(w, "| target | scenario | measure | value | goal | met |")
	fmt.Fprintln(w, "|---|---|---|---:|---:|---|")
	for _, t := range watertightTargets {
		for _, sc := range scenarios {
			for _, s := range sums {
				if s.Scenario != sc.name || s.Target != t {
					continue
				}
				if sc.kind == "max" {
					fmt.Fprintf(w, "| %s | %s | throughput ×revproxy | %s | ≥ %.2f | %s |\n", t, sc.name,
						fmtRatio(s.QPSvsRevproxy), goalThroughput, verdict(s.QPSvsRevproxy >= goalThroughput, s.QPSvsRevproxy))
				} else {
					fmt.Fprintf(w, "| %s | %s | added p50 ×revproxy | %s | ≤ %.2f | %s |\n", t, sc.name,
						fmtRatio(s.AddedP50vsRevproxy), goalAddedP50, verdict(s.AddedP50vsRevproxy <= goalAddedP50, s.AddedP50vsRevproxy))
				}
			}
		}
	}
}

func verdict(ok bool, v float64) string {
	switch {
	case math.IsNaN(v) || math.IsInf(v, 0):
		return "n/a"
	case ok:
		return "yes"
	default:
		return "**no**"
	}
}

func writeCSV(path string, sums []summary) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := csv.NewWriter(f)
	_ = w.Write([]string{"scenario", "target", "reps", "qps_median", "qps_min", "qps_max", "mean_us", "p50_us", "p90_us", "p99_us",
		"errors", "qps_vs_direct", "qps_vs_revproxy", "qps_vs_haproxy", "added_p50_us", "added_p50_vs_revproxy", "added_p50_vs_haproxy",
		"foreign_cpu_pct_median"})
	num := func(v float64, f byte, prec int) string {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return ""
		}
		return strconv.FormatFloat(v, f, prec, 64)
	}
	for _, s := range sums {
		_ = w.Write([]string{s.Scenario, s.Target, strconv.Itoa(s.Reps),
			num(s.QPS, 'f', 1), num(s.QPSMin, 'f', 1), num(s.QPSMax, 'f', 1),
			num(s.Mean*1e6, 'f', 1), num(s.P50*1e6, 'f', 1), num(s.P90*1e6, 'f', 1), num(s.P99*1e6, 'f', 1),
			strconv.FormatInt(s.Errors, 10),
			num(s.QPSvsDirect, 'f', 3), num(s.QPSvsRevproxy, 'f', 3), num(s.QPSvsHAProxy, 'f', 3),
			num(s.AddedP50*1e6, 'f', 1), num(s.AddedP50vsRevproxy, 'f', 3), num(s.AddedP50vsHAProxy, 'f', 3),
			num(s.Noise, 'f', 1)})
	}
	w.Flush()
	if err := w.Error(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
