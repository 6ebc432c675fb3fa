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
// Besides the tables it draws the pictures (-img DIR): latency percentiles
// per proxy at each fixed rate, and max throughput.
//
// Usage: report -runs DIR -out DIR [-meta FILE] [-img DIR]
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

	"github.com/watertight/watertight/bench/internal/svg"
)

// Targets, in table order, and the baselines ratios are taken against.
var targetOrder = []string{"direct", "watertight", "watertight-proxy", "watertight-h1conn", "watertight-nethttp", "watertight-h1serve", "watertight-h1up", "watertight-h2cap", "revproxy", "gofloor-raw", "gofloor-std", "gofloor-srv", "gofloor-rp", "gofloor-h2c", "caddy", "haproxy", "nginx", "nginx-h2up"}

const (
	baseDirect   = "direct"
	baseRevproxy = "revproxy"
	baseHAProxy  = "haproxy"
)

// watertightTargets are the ones the goals are judged on.
var watertightTargets = []string{"watertight", "watertight-proxy", "watertight-h1conn", "watertight-nethttp", "watertight-h1serve", "watertight-h1up", "watertight-h2cap"}

// Goals from issue 7: ahead of every Go peer (bare ReverseProxy, Caddy) on
// throughput and added latency; then within 1.5× of HAProxy's and nginx's
// added p50 and at least 0.7× their throughput.
var (
	goPeers = []string{"revproxy", "caddy"}
	cPeers  = []string{"haproxy", "nginx", "nginx-h2up"} // nginx-h2up: nginx passing h2c on as h2c (h2c rows only)
)

const (
	goalVsCThroughput = 0.70
	goalVsCAddedP50   = 1.50
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
	// CPU is the proxy process's CPU seconds during the measurement, and
	// CPUPer1k the same per 1000 requests (NaN for h2load, whose request
	// count leaves out its warm-up second while the CPU does not).
	CPU, CPUPer1k float64
	// RSSKB is the proxy process's peak RSS during the measurement.
	RSSKB float64
	// Switches counts the context switches of all the proxy's threads during
	// the measurement, voluntary and not; SwitchesPerReq the same per request
	// (NaN for h2load, as CPUPer1k).
	Switches, SwitchesPerReq float64
	// UserCPU is the user part of CPU, UserPer1k the same per 1000 requests:
	// the proxy's own code and runtime, which the host's steal inflates less
	// than the system part.
	UserCPU, UserPer1k float64
	// StealServer and StealLoad are the host's steal of the server core and
	// of the load generator's core during the measurement, in %.
	StealServer, StealLoad float64
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
		CPU      *float64 `json:"cpu_s"`
		CPUPer1k *float64 `json:"cpu_s_per_1000_req"`
		RSSKB    *float64 `json:"peak_rss_kb"`
		Switches *float64 `json:"context_switches"`
		SwPerReq *float64 `json:"context_switches_per_req"`
		UserCPU  *float64 `json:"user_cpu_s"`
		UserPer  *float64 `json:"user_cpu_s_per_1000_req"`
		StealSrv *float64 `json:"server_core_steal_pct"`
		StealLd  *float64 `json:"load_core_steal_pct"`
	}
	return json.Marshal(plain{r.Scenario, r.Target, r.Rep, r.Tool, r.QPS,
		us(r.Mean), us(r.P50), us(r.P90), us(r.P99), us(r.P999), r.Requests, r.Errors, r.File, ptr(r.Noise),
		ptr(r.CPU), ptr(round(r.CPUPer1k, 4)), ptr(r.RSSKB), ptr(r.Switches), ptr(round(r.SwitchesPerReq, 3)),
		ptr(r.UserCPU), ptr(round(r.UserPer1k, 4)), ptr(r.StealServer), ptr(r.StealLoad)})
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
	CPUPer1k float64 // median CPU seconds per 1000 requests of the proxy process
	RSSMB    float64 // median peak RSS, MB
	// SwitchesPerReq is the median of the proxy's context switches per request.
	SwitchesPerReq float64
	UserPer1k      float64 // median user CPU seconds per 1000 requests
	// StealServer and StealLoad are the medians of the host's steal of the
	// two cores, in %.
	StealServer, StealLoad float64
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
		CPUPer1k           *float64 `json:"cpu_s_per_1000_req_median"`
		RSSMB              *float64 `json:"peak_rss_mb_median"`
		SwitchesPerReq     *float64 `json:"context_switches_per_req_median"`
		UserPer1k          *float64 `json:"user_cpu_s_per_1000_req_median"`
		StealServer        *float64 `json:"server_core_steal_pct_median"`
		StealLoad          *float64 `json:"load_core_steal_pct_median"`
	}
	return json.Marshal(plain{s.Scenario, s.Target, s.Reps, round(s.QPS, 1), round(s.QPSMin, 1), round(s.QPSMax, 1),
		us(s.Mean), us(s.P50), us(s.P90), us(s.P99), s.Errors,
		ptr(round(s.QPSvsDirect, 3)), ptr(round(s.QPSvsRevproxy, 3)), ptr(round(s.QPSvsHAProxy, 3)),
		us(s.AddedP50), ptr(round(s.AddedP50vsRevproxy, 3)), ptr(round(s.AddedP50vsHAProxy, 3)), ptr(round(s.Noise, 1)),
		ptr(round(s.CPUPer1k, 4)), ptr(round(s.RSSMB, 1)), ptr(round(s.SwitchesPerReq, 3)),
		ptr(round(s.UserPer1k, 4)), ptr(round(s.StealServer, 1)), ptr(round(s.StealLoad, 1))})
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
	imgDir := flag.String("img", "", "directory for the SVG pictures (empty: none)")
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
	writeMarkdown(&md, scenarios, sums, runs)
	if *imgDir != "" {
		if err := writePictures(*imgDir, scenarios, sums, &md); err != nil {
			log.Fatal(err)
		}
	}
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
		r := run{Scenario: name, Target: target, Rep: rep, Tool: tool, File: file, Noise: math.NaN(),
			CPU: math.NaN(), CPUPer1k: math.NaN(), RSSKB: math.NaN(), Switches: math.NaN(), SwitchesPerReq: math.NaN(),
			UserCPU: math.NaN(), UserPer1k: math.NaN(), StealServer: math.NaN(), StealLoad: math.NaN()}
		if len(fields) > 7 && fields[7] != "" {
			r.Noise, _ = strconv.ParseFloat(fields[7], 64)
		}
		if len(fields) > 9 && fields[8] != "" && fields[9] != "" {
			r.CPU, _ = strconv.ParseFloat(fields[8], 64)
			r.RSSKB, _ = strconv.ParseFloat(fields[9], 64)
			if r.RSSKB == 0 {
				r.RSSKB = math.NaN()
			}
		}
		if len(fields) > 10 && fields[10] != "" {
			r.Switches, _ = strconv.ParseFloat(fields[10], 64)
		}
		if len(fields) > 11 && fields[11] != "" {
			r.UserCPU, _ = strconv.ParseFloat(fields[11], 64)
		}
		if len(fields) > 13 && fields[12] != "" && fields[13] != "" {
			r.StealServer, _ = strconv.ParseFloat(fields[12], 64)
			r.StealLoad, _ = strconv.ParseFloat(fields[13], 64)
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
		if tool == "fortio" && r.Requests > 0 && !math.IsNaN(r.CPU) {
			r.CPUPer1k = r.CPU / float64(r.Requests) * 1000
		}
		if tool == "fortio" && r.Requests > 0 && !math.IsNaN(r.Switches) {
			r.SwitchesPerReq = r.Switches / float64(r.Requests)
		}
		if tool == "fortio" && r.Requests > 0 && !math.IsNaN(r.UserCPU) {
			r.UserPer1k = r.UserCPU / float64(r.Requests) * 1000
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
		// HTTP's 2xx; a gRPC health check's answer (fortio -grpc counts
		// calls by the status they got back, failed ones as "ERROR").
		if strings.HasPrefix(code, "2") || code == "SERVING" {
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
		var qps, mean, p50, p90, p99, noise, cpu, rss, sw, user, stealS, stealL []float64
		s := summary{Scenario: sc, Target: t, Reps: len(reps)}
		for _, r := range reps {
			noise = append(noise, r.Noise)
			cpu = append(cpu, r.CPUPer1k)
			rss = append(rss, r.RSSKB/1024)
			sw = append(sw, r.SwitchesPerReq)
			user = append(user, r.UserPer1k)
			stealS, stealL = append(stealS, r.StealServer), append(stealL, r.StealLoad)
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
		s.CPUPer1k, s.RSSMB, s.SwitchesPerReq = median(cpu), median(rss), median(sw)
		s.UserPer1k, s.StealServer, s.StealLoad = median(user), median(stealS), median(stealL)
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

func writeMarkdown(w io.Writer, scenarios []scenario, sums []summary, runs []run) {
	fmt.Fprintln(w, "\nMedians of the repetitions; ratios are ratios of those medians, against baselines of the same run.")
	fmt.Fprintln(w, "CPU s/1k = CPU seconds of the proxy process (utime+stime) per 1000 requests (for direct: the upstream's own); RSS = its peak RSS during the measurement.")
	fmt.Fprintln(w, "sw/req = context switches of all the proxy process's threads (voluntary and not) per request: each is a trip through the kernel's scheduler on the shared server core.")
	fmt.Fprintln(w, "user s/1k = the user part of CPU s/1k: the proxy's own code and runtime. The system part swells with the host's steal.")
	fmt.Fprintln(w, "noise % = median share of the server core used by processes other than the benchmark's. steal % = the host's steal of the server core / of the load generator's core (medians). nginx passes h2c on as HTTP/1.1 (proxy_pass), as watertight-h1up does; nginx-h2up is the same nginx passing h2c on as h2c (grpc_pass).")
	for _, sc := range scenarios {
		fmt.Fprintf(w, "\n### %s: %s\n\n", sc.name, sc.desc)
		if sc.kind == "max" {
			fmt.Fprintln(w, "| target | req/s (median) | min–max | ×direct | ×haproxy | ×revproxy | mean µs | p50 µs | p99 µs | CPU s/1k | user s/1k | sw/req | RSS MB | errors | noise % | steal % |")
			fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
		} else {
			fmt.Fprintln(w, "| target | req/s | p50 µs | p90 µs | p99 µs | added p50 µs | added p50 ×haproxy | added p50 ×revproxy | CPU s/1k | user s/1k | CPU ×haproxy | sw/req | RSS MB | errors | noise % | steal % |")
			fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
		}
		hap, _ := find(sums, sc.name, baseHAProxy)
		for _, s := range sums {
			if s.Scenario != sc.name {
				continue
			}
			if sc.kind == "max" {
				fmt.Fprintf(w, "| %s | %.0f | %.0f–%.0f | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d | %s | %s |\n", s.Target, s.QPS, s.QPSMin, s.QPSMax,
					fmtRatio(s.QPSvsDirect), fmtRatio(s.QPSvsHAProxy), fmtRatio(s.QPSvsRevproxy),
					fmtUS(s.Mean), fmtUS(s.P50), fmtUS(s.P99), fmtCPU(s.CPUPer1k), fmtCPU(s.UserPer1k), fmtRatio(s.SwitchesPerReq), fmtMB(s.RSSMB), s.Errors,
					fmtPct(s.Noise), fmtSteal(s))
			} else {
				added, vsRev, vsHAP := fmtUS(s.AddedP50), fmtRatio(s.AddedP50vsRevproxy), fmtRatio(s.AddedP50vsHAProxy)
				if s.Target == baseDirect { // the baseline adds nothing by definition
					added, vsRev, vsHAP = "(baseline)", "–", "–"
				}
				fmt.Fprintf(w, "| %s | %.0f | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d | %s | %s |\n", s.Target, s.QPS,
					fmtUS(s.P50), fmtUS(s.P90), fmtUS(s.P99), added, vsHAP, vsRev,
					fmtCPU(s.CPUPer1k), fmtCPU(s.UserPer1k), fmtRatio(s.CPUPer1k/hap.CPUPer1k), fmtRatio(s.SwitchesPerReq), fmtMB(s.RSSMB), s.Errors,
					fmtPct(s.Noise), fmtSteal(s))
			}
		}
	}

	// The verdict against the goals, per watertight target.
	fmt.Fprintf(w, "\n### Goals: ahead of the Go peers (%s); within %.1f× of %s's added p50 and ≥ %.1f× their throughput\n\n",
		strings.Join(goPeers, ", "), goalVsCAddedP50, strings.Join(cPeers, " and "), goalVsCThroughput)
	fmt.Fprintln(w, "The value is the ratio of the medians; per rep is the median of the ratios within each repetition, whose targets ran minutes apart at most.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| target | scenario | measure | vs | value | per rep | goal | met |")
	fmt.Fprintln(w, "|---|---|---|---|---:|---:|---:|---|")
	for _, t := range watertightTargets {
		for _, sc := range scenarios {
			s, ok := find(sums, sc.name, t)
			if !ok {
				continue
			}
			d, _ := find(sums, sc.name, baseDirect)
			for _, peer := range append(slices.Clone(goPeers), cPeers...) {
				p, ok := find(sums, sc.name, peer)
				if !ok {
					continue
				}
				cPeer := slices.Contains(cPeers, peer)
				if sc.kind == "max" {
					v, goal := s.QPS/p.QPS, 1.0
					if cPeer {
						goal = goalVsCThroughput
					}
					fmt.Fprintf(w, "| %s | %s | throughput ratio | %s | %s | %s | ≥ %.2f | %s |\n", t, sc.name, peer,
						fmtRatio(v), fmtRatio(perRep(runs, sc.name, t, peer, qpsRatio)), goal, failedOr(s, p, verdict(v >= goal, v)))
				} else {
					v, goal := math.NaN(), 1.0
					if p.P50 > d.P50 {
						v = (s.P50 - d.P50) / (p.P50 - d.P50)
					}
					if cPeer {
						goal = goalVsCAddedP50
					}
					op := "≤"
					if !cPeer {
						op = "<"
					}
					fmt.Fprintf(w, "| %s | %s | added p50 ratio | %s | %s | %s | %s %.2f | %s |\n", t, sc.name, peer,
						fmtRatio(v), fmtRatio(perRep(runs, sc.name, t, peer, addedP50Ratio)), op, goal, failedOr(s, p, verdict(v <= goal, v)))
				}
			}
		}
	}
}

// perRep is the median over the repetitions of scenario sc of ratio(the
// target's run, the peer's, direct's) of that repetition: the targets of one
// repetition run back to back, so that slow swings of the host's speed,
// which move the medians of a whole run apart, cancel out. NaN where no
// repetition has both.
func perRep(runs []run, sc, target, peer string, ratio func(t, p, d run) float64) float64 {
	byRep := map[int]map[string]run{}
	for _, r := range runs {
		if r.Scenario == sc {
			if byRep[r.Rep] == nil {
				byRep[r.Rep] = map[string]run{}
			}
			byRep[r.Rep][r.Target] = r
		}
	}
	var vs []float64
	for _, rs := range byRep {
		t, ok1 := rs[target]
		p, ok2 := rs[peer]
		if !ok1 || !ok2 {
			continue
		}
		d, ok := rs[baseDirect]
		if !ok {
			d = run{P50: math.NaN()}
		}
		vs = append(vs, ratio(t, p, d))
	}
	return median(vs)
}

func qpsRatio(t, p, _ run) float64 { return t.QPS / p.QPS }

// addedP50Ratio is NaN when the peer added nothing over direct in that
// repetition (its baseline was inflated).
func addedP50Ratio(t, p, d run) float64 {
	if !(p.P50 > d.P50) {
		return math.NaN()
	}
	return (t.P50 - d.P50) / (p.P50 - d.P50)
}

func fmtSteal(s summary) string {
	if math.IsNaN(s.StealServer) || math.IsNaN(s.StealLoad) {
		return "–"
	}
	return fmt.Sprintf("%.0f / %.0f", s.StealServer, s.StealLoad)
}

func find(sums []summary, sc, target string) (summary, bool) {
	for _, s := range sums {
		if s.Scenario == sc && s.Target == target {
			return s, true
		}
	}
	nan := math.NaN()
	return summary{CPUPer1k: nan, QPS: nan, P50: nan}, false
}

func fmtCPU(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "–"
	}
	return strconv.FormatFloat(v, 'f', 3, 64)
}

func fmtMB(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "–"
	}
	return strconv.FormatFloat(v, 'f', 1, 64)
}

// writePictures draws, for each fixed-rate scenario, p50/p90/p99 per target,
// and one chart of max throughput per target and scenario.
func writePictures(dir string, scenarios []scenario, sums []summary, md io.Writer) error {
	fmt.Fprintln(md)
	var maxScen []scenario
	for _, sc := range scenarios {
		if sc.kind == "max" {
			maxScen = append(maxScen, sc)
			continue
		}
		var cats []string
		p50, p90, p99 := svg.BarSeries{Name: "p50"}, svg.BarSeries{Name: "p90"}, svg.BarSeries{Name: "p99"}
		for _, s := range sums {
			if s.Scenario != sc.name {
				continue
			}
			cats = append(cats, s.Target)
			p50.Values = append(p50.Values, s.P50*1e3)
			p90.Values = append(p90.Values, s.P90*1e3)
			p99.Values = append(p99.Values, s.P99*1e3)
		}
		file := "latency-" + sc.name + ".svg"
		chart := svg.Bars{Title: "Latency percentiles, " + sc.desc, YLabel: "ms (median of reps)",
			Categories: cats, Series: []svg.BarSeries{p50, p90, p99}, Labels: "%.2f"}
		if err := svg.Write(filepath.Join(dir, file), chart.SVG()); err != nil {
			return err
		}
		fmt.Fprintf(md, "![%s](img/%s)\n", sc.name, file)
	}
	if len(maxScen) == 0 {
		return nil
	}
	// Every target of any max scenario; where one was not measured (nginx
	// in the gRPC rows, nginx-h2up in the HTTP/1.1 ones) it has no bar,
	// not a bar at 0.
	var cats []string
	for _, t := range targetOrder {
		for _, sc := range maxScen {
			if _, ok := find(sums, sc.name, t); ok {
				cats = append(cats, t)
				break
			}
		}
	}
	var series []svg.BarSeries
	for _, sc := range maxScen {
		bs := svg.BarSeries{Name: sc.name}
		for _, t := range cats {
			v := math.NaN()
			if s, ok := find(sums, sc.name, t); ok {
				v = s.QPS
			}
			bs.Values = append(bs.Values, v)
		}
		series = append(series, bs)
	}
	chart := svg.Bars{Title: "Max throughput (req/s, median of reps; proxy and upstream share one core)", YLabel: "req/s",
		Categories: cats, Series: series, Labels: "%.0f"}
	if err := svg.Write(filepath.Join(dir, "throughput.svg"), chart.SVG()); err != nil {
		return err
	}
	fmt.Fprintln(md, "![max throughput](img/throughput.svg)")
	return nil
}

// failedOr is the verdict, unless the target or the peer failed requests
// in the scenario: fast failures make a proxy look quicker than it is, so
// such a ratio is no verdict (run 37: nginx failing 4–32 requests a run).
func failedOr(t, p summary, verdict string) string {
	if t.Errors > 0 || p.Errors > 0 {
		return fmt.Sprintf("n/a (failed: %d / %d)", t.Errors, p.Errors)
	}
	return verdict
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
		"foreign_cpu_pct_median", "cpu_s_per_1000_req", "peak_rss_mb", "context_switches_per_req",
		"user_cpu_s_per_1000_req", "server_core_steal_pct", "load_core_steal_pct"})
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
			num(s.Noise, 'f', 1), num(s.CPUPer1k, 'f', 4), num(s.RSSMB, 'f', 1), num(s.SwitchesPerReq, 'f', 3),
			num(s.UserPer1k, 'f', 4), num(s.StealServer, 'f', 1), num(s.StealLoad, 'f', 1)})
	}
	w.Flush()
	if err := w.Error(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
