// Command isolation is the benchmark's isolation experiment: upstreams one of
// which turns slow on command, a load driver that behaves like a real app,
// and the report (tables and pictures) over the runs.
//
//	isolation upstreams -addrs A,B,C -delays 10ms,10ms,10ms
//	    upstreams on A, B, C answering after their delay, HTTP/1.1 and h2c
//	    (prior knowledge) on the same ports. POST /_control/slow?on=1 on an
//	    upstream's own port makes it hang (until the caller or proxy gives
//	    up, whichever protocol); on=0 makes it healthy again. GET /_proto
//	    echoes the protocol a request arrived with (for sanity checks).
//	isolation load -name NAME -urls U1,U2,U3 -rate 300 -workers 60 [-proto h1|h2c] ...
//	    one run against one target; writes a JSON result. -proto h2c makes
//	    the app speak h2c with prior knowledge, its calls to one address
//	    multiplexed on a connection, as gRPC clients do.
//	isolation report -in DIR -img DIR -md FILE
//	    medians over the repetitions, markdown tables and SVG pictures.
//
// The caller is modelled as real services are: a fixed pool of workers
// (threads, connections, a goroutine limit) shared by all its outbound calls
// (-callers shared), or one pool per upstream (-callers independent). Calls
// are scheduled open loop at a constant total rate, round robin over the
// upstreams, whatever happens to them; a call's latency counts from the time
// it was due, so the time it waited for a free worker is part of it. Every
// call carries the app's own deadline (-client-timeout from the due time): a
// call still waiting for a worker when its deadline passes fails without
// being sent, as it would in an app with request contexts.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: isolation upstreams|load|report [flags]")
		os.Exit(2)
	}
	args := os.Args[2:]
	switch os.Args[1] {
	case "upstreams":
		upstreams(args)
	case "load":
		load(args)
	case "report":
		report(args)
	default:
		fmt.Fprintf(os.Stderr, "unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
}

// --- upstreams ---------------------------------------------------------------

func upstreams(args []string) {
	fs := flag.NewFlagSet("upstreams", flag.ExitOnError)
	addrs := fs.String("addrs", "127.0.0.1:18200,127.0.0.1:18201,127.0.0.1:18202", "listen addresses, comma-separated")
	delays := fs.String("delays", "10ms,10ms,10ms", "answer delay of each upstream")
	maxHang := fs.Duration("max-hang", 60*time.Second, "longest a slow upstream hangs if nobody gives up")
	_ = fs.Parse(args)

	as := strings.Split(*addrs, ",")
	ds := strings.Split(*delays, ",")
	if len(ds) != len(as) {
		log.Fatalf("-delays needs one value per address (%d), got %d", len(as), len(ds))
	}
	body := []byte(strings.Repeat("x", 64))
	errc := make(chan error, len(as))
	for i, a := range as {
		d, err := time.ParseDuration(ds[i])
		if err != nil {
			log.Fatalf("-delays: %v", err)
		}
		var slow atomic.Bool
		mux := http.NewServeMux()
		mux.HandleFunc("POST /_control/slow", func(w http.ResponseWriter, r *http.Request) {
			slow.Store(r.URL.Query().Get("on") == "1")
			fmt.Fprintf(w, "slow=%v\n", slow.Load())
		})
		mux.HandleFunc("GET /_proto", func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, r.Proto)
		})
		mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			if slow.Load() {
				// Hang until whoever is in front gives up: the proxy's
				// timeout closes the HTTP/1.1 connection or resets the
				// h2 stream, and either cancels r.Context.
				t := time.NewTimer(*maxHang)
				select {
				case <-r.Context().Done():
				case <-t.C:
				}
				t.Stop()
				return
			}
			if d > 0 {
				time.Sleep(d)
			}
			h := w.Header()
			h["Content-Type"] = []string{"text/plain"}
			h["Content-Length"] = []string{"64"}
			_, _ = w.Write(body)
		})
		srv := &http.Server{Addr: a, Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Hour,
			Protocols: serverProtocols(),
			// Far above any proxy's concurrency here, so a hanging
			// upstream never refuses streams itself: only the proxy in
			// front limits them.
			HTTP2: &http.HTTP2Config{MaxConcurrentStreams: 4096}}
		go func() { errc <- srv.ListenAndServe() }()
		log.Printf("upstream %d on %s, delay %s", i, a, d)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	select {
	case err := <-errc:
		log.Fatal(err)
	case <-sig:
	}
}

// serverProtocols is HTTP/1.1 and h2c with prior knowledge on one port, as
// the proxies under test serve them.
func serverProtocols() *http.Protocols {
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	return &p
}

// --- load --------------------------------------------------------------------

// Result is one run against one target, as written to JSON.
type Result struct {
	Name       string    `json:"name"`       // the target (e.g. "watertight")
	Experiment string    `json:"experiment"` // isolation | weights
	Callers    string    `json:"callers"`    // shared | independent
	Proto      string    `json:"proto"`      // the app's protocol: h1 | h2c (absent in old results: h1)
	Rep        int       `json:"rep"`        // repetition number
	Upstreams  []string  `json:"upstreams"`  // names, in -urls order
	Slow       int       `json:"slow"`       // index of the upstream that turns slow, -1: none
	SlowAtS    float64   `json:"slow_at_s"`  // when it turns slow, seconds into the run
	DurationS  float64   `json:"duration_s"`
	Rate       float64   `json:"rate"`
	Workers    int       `json:"workers"`
	TargetsMS  []float64 `json:"targets_ms"` // latency target per upstream
	Calls      []Call    `json:"calls"`
}

// proto is the app's protocol; results from before -proto existed are h1.
func (r *Result) proto() string {
	if r.Proto == "" {
		return protoH1
	}
	return r.Proto
}

// The app's protocols (-proto).
const (
	protoH1  = "h1"  // HTTP/1.1 keep-alive: one call per connection at a time
	protoH2C = "h2c" // HTTP/2 cleartext, prior knowledge: calls multiplexed
)

// Call is one outbound call.
type Call struct {
	Up     int     `json:"u"`
	DueS   float64 `json:"t"`           // due time, seconds into the run
	WaitMS float64 `json:"w"`           // due → sent (waiting for a worker), ms; -1: never sent
	LatMS  float64 `json:"l"`           // due → answered (the caller's latency), ms
	Status int     `json:"s"`           // HTTP status, 0 for a transport error or deadline
	Reason string  `json:"r,omitempty"` // x-watertight-reason, or the error kind
}

func load(args []string) {
	fs := flag.NewFlagSet("load", flag.ExitOnError)
	name := fs.String("name", "target", "target name for the result")
	experiment := fs.String("experiment", "isolation", "experiment name for the report: isolation | weights")
	urls := fs.String("urls", "", "one URL per upstream, comma-separated")
	names := fs.String("upstream-names", "a,b,c", "upstream names, comma-separated")
	hosts := fs.String("hosts", "", "Host header per upstream (empty: from the URL)")
	rate := fs.Float64("rate", 300, "total calls per second, spread round robin over the upstreams")
	weights := fs.String("mix", "", "share of the rate per upstream, e.g. 1,1,1 (default equal)")
	workers := fs.Int("workers", 60, "the app's workers (shared: in total; independent: split evenly)")
	callers := fs.String("callers", "shared", "shared: one worker pool for all upstreams; independent: one per upstream")
	proto := fs.String("proto", protoH1, "the app's protocol: h1 (HTTP/1.1 keep-alive) | h2c (HTTP/2 prior knowledge, multiplexed)")
	duration := fs.Duration("duration", 20*time.Second, "length of the run")
	slowIdx := fs.Int("slow", 2, "index of the upstream that turns slow (-1: none)")
	slowAt := fs.Duration("slow-at", 5*time.Second, "when it turns slow")
	control := fs.String("control", "", "URL to POST ?on=1/0 to make the slow upstream slow/healthy")
	clientTimeout := fs.Duration("client-timeout", time.Second, "the app's deadline per call, from its due time")
	targets := fs.String("targets", "100ms", "latency target per upstream (one value for all, or one each)")
	out := fs.String("out", "", "JSON result file")
	rep := fs.Int("rep", 1, "repetition number (recorded)")
	_ = fs.Parse(args)

	us := strings.Split(*urls, ",")
	n := len(us)
	upNames := strings.Split(*names, ",")
	if len(upNames) != n {
		log.Fatalf("-upstream-names needs %d names", n)
	}
	hostHdr := make([]string, n)
	if *hosts != "" {
		copy(hostHdr, strings.Split(*hosts, ","))
	}
	tgt := splitDurations(*targets, n)
	mix := make([]float64, n)
	for i := range mix {
		mix[i] = 1
	}
	if *weights != "" {
		for i, s := range strings.Split(*weights, ",") {
			_, _ = fmt.Sscan(s, &mix[i])
		}
	}

	client := &http.Client{Transport: appTransport(*proto, *workers)}

	// The schedule: calls due at a constant total rate, each assigned to an
	// upstream by smooth weighted round robin over -mix.
	total := int(*rate * duration.Seconds())
	interval := time.Duration(float64(time.Second) / *rate)
	calls := make([]Call, total)
	credit := make([]float64, n)
	var sum float64
	for _, m := range mix {
		sum += m
	}
	for i := range calls {
		best := 0
		for u := range credit {
			credit[u] += mix[u]
			if credit[u] > credit[best] {
				best = u
			}
		}
		credit[best] -= sum
		calls[i] = Call{Up: best, DueS: (time.Duration(i) * interval).Seconds(), WaitMS: -1}
	}

	// Queues: one for all (shared workers) or one per upstream.
	nq := 1
	if *callers == "independent" {
		nq = n
	} else if *callers != "shared" {
		log.Fatalf("-callers: %q is neither shared nor independent", *callers)
	}
	queues := make([]chan int, nq)
	for i := range queues {
		queues[i] = make(chan int, total)
	}
	queueOf := func(up int) chan int {
		if nq == 1 {
			return queues[0]
		}
		return queues[up]
	}

	// Make sure the slow upstream is healthy at the start, and healthy again
	// at the end whatever happens.
	setSlow := func(on bool) {
		if *control == "" || *slowIdx < 0 {
			return
		}
		v := "0"
		if on {
			v = "1"
		}
		resp, err := http.Post(*control+"?on="+v, "text/plain", nil)
		if err != nil {
			log.Printf("control: %v", err)
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	setSlow(false)
	defer setSlow(false)

	// Warm the connection pools a little, so connection set-up is not
	// counted against the first second, and make sure every target answers
	// in the app's protocol (a run that silently fell back to HTTP/1.1
	// would be labelled h2c but measure h1).
	wantMajor := map[string]int{protoH1: 1, protoH2C: 2}[*proto]
	for i := 0; i < n; i++ {
		for j := 0; j < 3; j++ {
			if resp, err := do(client, us[i], hostHdr[i], context.Background()); err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.ProtoMajor != wantMajor {
					log.Fatalf("%s answered in %s, not %s", us[i], resp.Proto, *proto)
				}
			}
		}
	}

	start := time.Now()
	var wg sync.WaitGroup
	work := func(q chan int) {
		defer wg.Done()
		for i := range q {
			c := &calls[i]
			due := start.Add(time.Duration(c.DueS * float64(time.Second)))
			deadline := due.Add(*clientTimeout)
			now := time.Now()
			if !now.Before(deadline) {
				c.LatMS = ms(now.Sub(due))
				c.Reason = "app_deadline_before_send"
				continue
			}
			c.WaitMS = ms(now.Sub(due))
			ctx, cancel := context.WithDeadline(context.Background(), deadline)
			resp, err := do(client, us[c.Up], hostHdr[c.Up], ctx)
			if err == nil {
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				c.Status = resp.StatusCode
				c.Reason = resp.Header.Get("X-Watertight-Reason")
				if err != nil {
					c.Status = 0
				}
			}
			if err != nil {
				c.Status = 0
				c.Reason = "error"
				if errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
					c.Reason = "app_deadline"
				}
			}
			cancel()
			c.LatMS = ms(time.Since(due))
		}
	}
	if nq == 1 {
		for w := 0; w < *workers; w++ {
			wg.Add(1)
			go work(queues[0])
		}
	} else {
		per := max(1, *workers/nq)
		for q := range queues {
			for w := 0; w < per; w++ {
				wg.Add(1)
				go work(queues[q])
			}
		}
	}

	// The scheduler: hand each call to its queue at its due time. The queues
	// hold every call, so the schedule never slows down (open loop).
	slowDone := *slowIdx < 0 || *control == ""
	for i := range calls {
		due := start.Add(time.Duration(calls[i].DueS * float64(time.Second)))
		if !slowDone && !due.Before(start.Add(*slowAt)) {
			setSlow(true)
			slowDone = true
		}
		if d := time.Until(due); d > 0 {
			time.Sleep(d) // the open-loop schedule itself, not synchronisation
		}
		queueOf(calls[i].Up) <- i
	}
	for _, q := range queues {
		close(q)
	}
	wg.Wait()
	setSlow(false)

	res := Result{Name: *name, Experiment: *experiment, Callers: *callers, Proto: *proto, Rep: *rep, Upstreams: upNames, Slow: *slowIdx,
		SlowAtS: slowAt.Seconds(), DurationS: duration.Seconds(), Rate: *rate, Workers: *workers, Calls: calls}
	for _, t := range tgt {
		res.TargetsMS = append(res.TargetsMS, ms(t))
	}
	if *control == "" {
		res.Slow = -1
	}
	b, err := json.Marshal(res)
	if err != nil {
		log.Fatal(err)
	}
	if *out != "" {
		if err := os.WriteFile(*out, b, 0o644); err != nil {
			log.Fatal(err)
		}
	}
	s := summarize(&res)
	fmt.Println(s.line())
}

// appTransport is the app's HTTP client. h1: HTTP/1.1 keep-alive, one
// connection per call in flight (up to one per worker). h2c: HTTP/2 with
// prior knowledge only, so calls to one address multiplex as streams on one
// connection (a second only when the server's stream limit is reached), as
// a gRPC client's do.
func appTransport(proto string, workers int) *http.Transport {
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: time.Second}).DialContext,
		MaxIdleConns:        workers * 2,
		MaxIdleConnsPerHost: workers,
		IdleConnTimeout:     time.Minute,
		DisableCompression:  true,
	}
	switch proto {
	case protoH1:
		// net/http's default for http:// URLs: HTTP/1.1.
	case protoH2C:
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		tr.Protocols = &p
	default:
		log.Fatalf("-proto: %q is neither %s nor %s", proto, protoH1, protoH2C)
	}
	return tr
}

func do(client *http.Client, url, host string, ctx context.Context) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	if host != "" {
		req.Host = host
	}
	return client.Do(req)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func splitDurations(s string, n int) []time.Duration {
	parts := strings.Split(s, ",")
	out := make([]time.Duration, n)
	for i := range out {
		p := parts[min(i, len(parts)-1)]
		d, err := time.ParseDuration(p)
		if err != nil {
			log.Fatalf("bad duration %q: %v", p, err)
		}
		out[i] = d
	}
	return out
}
