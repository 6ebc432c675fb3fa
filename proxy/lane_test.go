package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/watertight/watertight/config"
)

// TestLaneMatchesRelay sends the same requests to a proxy with the lane and
// to one without (relay, or ReverseProxy for what relay does not take), and
// compares what the upstream received and what the app got back: the
// request line, Host and every field (the deadline's milliseconds reduced
// to their presence), the status, every answer field but Date, the body,
// the trailers, and where an answer was cut. Each case also says whether
// the lane must take it, so that the comparison cannot pass by comparing
// relay with itself.
func TestLaneMatchesRelay(t *testing.T) {
	f := newLaneFixture(t)
	cfg := f.config
	var taken atomic.Int64
	lane := startProxyWith(t, cfg(), func(o *Options) {
		o.DownstreamHTTP1 = HTTP1Watertight
		o.UpstreamHTTP1 = HTTP1Watertight
		o.Lane = LaneOn
		o.laneTaken = func() { taken.Add(1) }
	})
	relay := startProxyWith(t, cfg(), func(o *Options) {
		o.DownstreamHTTP1 = HTTP1Watertight
		o.UpstreamHTTP1 = HTTP1Watertight
		o.Lane = LaneOff
	})

	get := func(path string, fields ...string) string {
		return "GET " + path + " HTTP/1.1\r\nHost: u.example\r\n" + strings.Join(fields, "") + "\r\n"
	}
	cases := []struct {
		name     string
		listener string
		raw      string
		lane     bool // the lane takes it
	}{
		{"plain", "app", get("/plain", "User-Agent: app/1\r\n"), true},
		{"no user agent", "app", get("/plain"), true},
		{"lower-case names", "app", get("/plain", "user-agent: app/1\r\nx-trace-id: abc\r\n"), true},
		{"local authority", "app", "GET /plain HTTP/1.1\r\nHost: 127.0.0.1:9001\r\n\r\n", true},
		{"query", "app", get("/plain?a=1&b=%20x&c"), true},
		{"escapes in the path", "app", get("/pl%61in"), true},
		{"sub-delimiters in the path", "app", get("/plain;v=1,2@x:y"), true},
		{"a byte net/url escapes", "app", get("/pl|ain"), false},
		{"IPv6 literal host", "app", "GET /plain HTTP/1.1\r\nHost: [::1]:9001\r\n\r\n", false},
		{"forwarding fields", "app", get("/plain", "X-Forwarded-For: 10.0.0.1\r\nForwarded: for=10.0.0.1\r\n"), true},
		{"keep-alive fields", "app", get("/plain", "Connection: keep-alive\r\nKeep-Alive: timeout=5\r\nProxy-Connection: Keep-Alive\r\n"), true},
		{"te trailers", "app", get("/plain", "TE: trailers\r\n"), true},
		{"caller's timeout", "app", get("/plain", "X-Request-Timeout: 5s\r\n"), true},
		{"caller's timeout passes", "app", get("/hang", "X-Request-Timeout: 50ms\r\n"), true},
		{"repeated fields both ways", "app", get("/multi", "Accept: a\r\nAccept: b\r\n"), true},
		{"head", "app", "HEAD /plain HTTP/1.1\r\nHost: u.example\r\n\r\n", true},
		{"delete", "app", "DELETE /plain HTTP/1.1\r\nHost: u.example\r\n\r\n", true},
		{"event stream", "app", get("/sse"), true},
		{"large", "app", get("/large"), true},
		{"failure status", "app", get("/fail"), true},
		{"status without text", "app", get("/status-600"), true},
		{"empty answer", "app", get("/empty"), true},
		{"answer's own field names", "app", get("/lowercase"), true},
		{"hop-by-hop answer, plain", "app", get("/hop-plain"), true},
		{"hop-by-hop answer named by Connection", "app", get("/hop"), true},
		{"answer without a type", "app", get("/notype"), true},
		{"cut answer", "app", get("/cut"), true},
		{"cut answer with a type", "app", get("/cut-typed"), true},
		{"chunked answer", "app", get("/stream"), true},
		{"announced trailers", "app", get("/trailers"), true},
		{"prefixed trailers", "app", get("/prefixed-trailer"), true},
		{"early hints", "app", get("/early"), true},
		{"no content", "app", get("/nocontent"), true},
		{"not modified", "app", get("/notmodified"), true},
		{"unasked switch", "app", get("/switch"), true},
		{"not found", "app", get("/nowhere"), true},
		{"refused", "dead", "GET / HTTP/1.1\r\nHost: d.example\r\n\r\n", true},
		{"by host", "proxy", get("/plain"), true},
		{"unknown host", "proxy", "GET / HTTP/1.1\r\nHost: nowhere.example\r\n\r\n", false},
		{"retried failure", "retry", get("/flaky"), true},
		{"retried failure, then an answer that is not plain", "retry", get("/flaky-chunked"), true},
		{"retries run out", "retry", get("/down"), true},
		{"retried refusal", "retry-dead", get("/"), true},
		{"retry policy, plain answer", "retry", get("/plain"), true},
		{"post", "app", "POST /echo HTTP/1.1\r\nHost: u.example\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello", false},
		{"empty post", "app", "POST /echo HTTP/1.1\r\nHost: u.example\r\nContent-Length: 0\r\n\r\n", false},
		{"connection close", "app", get("/plain", "Connection: close\r\n"), false},
		{"te other", "app", get("/plain", "TE: deflate\r\n"), false},
		{"te twice", "app", get("/plain", "TE: trailers\r\nTE: trailers\r\n"), false},
		{"proxy authorization", "app", get("/plain", "Proxy-Authorization: Basic x\r\n"), false},
		{"query relay re-encodes", "app", get("/plain?a=1;b=2"), false},
		{"grpc type", "app", get("/plain", "Content-Type: application/grpc\r\n"), false},
		{"http/1.0", "app", "GET /plain HTTP/1.0\r\nHost: u.example\r\n\r\n", false},
		{"absolute form", "app", "GET http://u.example/plain HTTP/1.1\r\nHost: u.example\r\n\r\n", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			gotL := f.compare(t, &taken, lane, relay, c.lane, func(p *testProxy) string {
				return rawExchange(t, strings.TrimPrefix(p.url(t, c.listener), "http://"), c.raw)
			})
			if gotL == "" {
				t.Error("nothing to compare")
			}
		})
	}
	f.compareCounts(t, lane, relay)
}

// compare sends one case (send) to the proxy without the lane and then to
// the one with it, and compares what the upstream received and what the
// app got, and whether the lane took it; it returns what the app got
// through the lane.
func (f *laneFixture) compare(t *testing.T, taken *atomic.Int64, lane, relay *testProxy, wantLane bool, send func(*testProxy) string) string {
	t.Helper()
	exchange := func(p *testProxy) (string, string) {
		f.mu.Lock()
		f.seen, f.attempts = "", 0
		f.mu.Unlock()
		got := send(p)
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.seen, got
	}
	seenR, gotR := exchange(relay)
	before := taken.Load()
	seenL, gotL := exchange(lane)
	if tookIt := taken.Load() > before; tookIt != wantLane {
		t.Errorf("the lane took the request: %v, want %v", tookIt, wantLane)
	}
	if seenL != seenR {
		t.Errorf("the upstream received\n%s\nthrough the lane, and without it\n%s", seenL, seenR)
	}
	if gotL != gotR {
		t.Errorf("the app got\n%s\nthrough the lane, and without it\n%s", gotL, gotR)
	}
	return gotL
}

// compareCounts: the metrics count the same results and retries both
// ways, once every case has run.
func (f *laneFixture) compareCounts(t *testing.T, lane, relay *testProxy) {
	t.Helper()
	for _, res := range []string{"ok", "upstream_error", "timeout", "upstream_unavailable"} {
		for _, up := range []string{"u", "d", "r", "rd"} {
			if l, r := lane.count(t, up, res), relay.count(t, up, res); l != r {
				t.Errorf("watertight_requests_total{upstream=%q, result=%q}: %v through the lane, %v without it", up, res, l, r)
			}
		}
	}
	retries := func(p *testProxy, up string) float64 {
		m := findMetric(t, p.reg, "watertight_retries_total", map[string]string{"upstream": up})
		if m == nil {
			return 0
		}
		return m.GetCounter().GetValue()
	}
	for _, up := range []string{"r", "rd"} {
		if l, r := retries(lane, up), retries(relay, up); l != r || l == 0 {
			t.Errorf("watertight_retries_total{upstream=%q}: %v through the lane, %v without it (want the same, and some)", up, l, r)
		}
	}
}

// TestLaneClientGone: an app that hangs up on a request the lane is
// waiting on cancels it: the upstream's request ends, and the slot is
// given back.
func TestLaneClientGone(t *testing.T) {
	started, ended := make(chan struct{}), make(chan struct{})
	upstream := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-r.Context().Done()
		close(ended)
	}))
	p, taken, nc := startLaneProxy(t, upstream)
	fmt.Fprint(nc, "GET /slow HTTP/1.1\r\nHost: u\r\n\r\n")
	<-started
	_ = nc.Close()
	laneCanceled(t, ended, p, taken)
}

// laneCanceled waits for the upstream's request to end (ended) after the
// app gave up on it, and for its slot and its count as canceled.
func laneCanceled(t *testing.T, ended <-chan struct{}, p *testProxy, taken *atomic.Int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	select {
	case <-ended:
	case <-ctx.Done():
		t.Fatal("the upstream's request did not end after the app gave up on it")
	}
	eventually(t, "the slot given back and the request counted as canceled", func() bool {
		return p.pool("u").Active == 0 && p.count(t, "u", "canceled") == 1 && taken.Load() == 1
	})
}

// TestLanePipelined: requests a client sends before the previous answers
// came are answered in order, the lane's and relay's alike, on one
// connection.
func TestLanePipelined(t *testing.T) {
	upstream := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = io.WriteString(w, r.Method+" "+r.URL.Path)
	}))
	_, taken, nc := startLaneProxy(t, upstream)
	_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprint(nc, "GET /a HTTP/1.1\r\nHost: u\r\n\r\n"+
		"GET /b HTTP/1.1\r\nHost: u\r\n\r\n"+
		"POST /c HTTP/1.1\r\nHost: u\r\nContent-Length: 2\r\n\r\nhi"+
		"HEAD /d HTTP/1.1\r\nHost: u\r\n\r\n"+
		"GET /e HTTP/1.1\r\nHost: u\r\n\r\n")
	br := bufio.NewReader(nc)
	for _, want := range []struct{ method, body string }{{"GET", "GET /a"}, {"GET", "GET /b"}, {"POST", "POST /c"}, {"HEAD", ""}, {"GET", "GET /e"}} {
		resp, err := http.ReadResponse(br, &http.Request{Method: want.method})
		if err != nil {
			t.Fatalf("reading the answer to %s: %v", want.body, err)
		}
		body, err := io.ReadAll(resp.Body)
		if err != nil || string(body) != want.body || resp.StatusCode != http.StatusOK {
			t.Fatalf("answer %d %q (%v), want 200 %q", resp.StatusCode, body, err, want.body)
		}
	}
	if n := taken.Load(); n != 4 {
		t.Errorf("the lane took %d of the requests, want 4 (all but the POST)", n)
	}
}

// startLaneProxy is a proxy with the lane, listening in mode upstream for
// upstream, a count of the requests its lane took, and a connection to it.
func startLaneProxy(t *testing.T, upstream string) (*testProxy, *atomic.Int64, net.Conn) {
	taken := new(atomic.Int64)
	p := startProxyWith(t, laneConfig(upstream), func(o *Options) {
		o.DownstreamHTTP1, o.UpstreamHTTP1, o.Lane = HTTP1Watertight, HTTP1Watertight, LaneOn
		o.laneTaken = func() { taken.Add(1) }
	})
	nc, err := net.Dial("tcp", strings.TrimPrefix(p.url(t, "app"), "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nc.Close() })
	return p, taken, nc
}

// laneConfig is one listener in mode upstream for upstream.
func laneConfig(upstream string) *config.Config {
	return &config.Config{
		Listeners: []config.Listener{{Name: "app", Address: "127.0.0.1:0", Mode: config.ModeUpstream, Upstream: "u"}},
		Upstreams: []config.Upstream{{Name: "u", Endpoints: []config.Endpoint{{Address: upstream}}}},
	}
}

// TestLaneEmptyAnswersConcurrently: an answer without a body gives its
// connection back to the pool at once; its head, which the lane copies
// from that connection's buffer, must be copied before another request
// can take the connection and read into the buffer.
func TestLaneEmptyAnswersConcurrently(t *testing.T) {
	upstream := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("X-Path", r.URL.Path)
		w.Header().Set("Content-Length", "0")
	}))
	p, taken, _ := startLaneProxy(t, upstream)
	base := p.url(t, "app")
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			client := &http.Client{Transport: &http.Transport{}}
			defer client.CloseIdleConnections()
			for i := range 50 {
				path := fmt.Sprintf("/g%d/r%d", g, i)
				resp, err := client.Get(base + path)
				if err != nil {
					t.Errorf("%s: %v", path, err)
					return
				}
				_ = resp.Body.Close()
				if got := resp.Header.Get("X-Path"); got != path {
					t.Errorf("%s: the answer says X-Path %q", path, got)
					return
				}
			}
		})
	}
	wg.Wait()
	if taken.Load() != 400 {
		t.Errorf("the lane took %d of 400 requests", taken.Load())
	}
}

// laneFixture is the upstream the lane's comparisons send to, and what it
// last received.
type laneFixture struct {
	mu       sync.Mutex
	seen     string
	attempts int // of the request: /flaky fails the first, /down every one
	upstream string
	dead     string
}

// newLaneFixture starts the upstream: relayCase's answers, and a few more
// for the lane's own cases.
func newLaneFixture(t *testing.T) *laneFixture {
	f := &laneFixture{}
	mu := &f.mu
	f.upstream = startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		f.seen = dumpSeen(r, body)
		f.attempts++
		n := f.attempts
		mu.Unlock()
		switch r.URL.Path {
		case "/flaky":
			w.Header().Set("Content-Type", "text/plain")
			if n == 1 {
				w.WriteHeader(http.StatusServiceUnavailable)
				_, _ = io.WriteString(w, "not yet")
				return
			}
			_, _ = fmt.Fprintf(w, "attempt %d", n)
			return
		case "/flaky-chunked":
			if n == 1 {
				w.WriteHeader(http.StatusBadGateway)
				w.(http.Flusher).Flush()
				_, _ = io.WriteString(w, "not yet")
				return
			}
			w.Header().Set("Content-Type", "text/plain")
			_, _ = fmt.Fprintf(w, "attempt %d", n)
			return
		case "/down":
			w.Header().Set("Content-Type", "text/plain")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = fmt.Fprintf(w, "attempt %d", n)
			return
		case "/hang":
			select {
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
			return
		case "/cut-typed":
			w.Header().Set("Content-Type", "text/plain")
			w.Header().Set("Content-Length", "100")
			_, _ = io.WriteString(w, "ten bytes.")
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		case "/notype":
			_, _ = io.WriteString(w, "<html>sniffed</html>")
			return
		case "/empty":
			w.Header().Set("Content-Length", "0")
			return
		case "/lowercase":
			w.Header()["x-lower"] = []string{"as sent"}
			w.Header().Set("Content-Type", "text/plain")
			_, _ = io.WriteString(w, "lower")
			return
		case "/hop-plain":
			w.Header().Set("Keep-Alive", "timeout=5")
			w.Header().Set("Proxy-Authenticate", "Basic")
			w.Header().Set("Upgrade", "h2c")
			w.Header().Set("Content-Type", "text/plain")
			_, _ = io.WriteString(w, "hop")
			return
		case "/grpc.Test/Echo", "/grpc.Test/Fail", "/grpc.Test/Late":
			// A gRPC answer: the message, then its status in the trailers.
			w.Header().Set("Content-Type", "application/grpc")
			_, _ = w.Write(body)
			code := map[string]string{"/grpc.Test/Echo": "0", "/grpc.Test/Fail": "14"}[r.URL.Path]
			if r.URL.Path == "/grpc.Test/Late" {
				// The message now, the status never: the caller's deadline
				// cuts the answer after it began.
				w.(http.Flusher).Flush()
				<-r.Context().Done()
				return
			}
			w.Header().Set(http.TrailerPrefix+"Grpc-Status", code)
			w.Header().Set(http.TrailerPrefix+"Grpc-Message", "as sent")
			return
		case "/grpc.Test/Announced":
			// As gRPC's ServeHTTP answers: its trailers announced.
			w.Header().Set("Trailer", "Grpc-Status")
			w.Header().Set("Content-Type", "application/grpc")
			_, _ = w.Write(body)
			w.Header().Set("Grpc-Status", "0")
			return
		case "/grpc.Test/NotFound":
			// Trailers-only: the status in the answer's head.
			w.Header().Set("Content-Type", "application/grpc")
			w.Header().Set("Grpc-Status", "5")
			return
		case "/status-600":
			w.Header().Set("Content-Type", "text/plain")
			w.WriteHeader(599)
			_, _ = io.WriteString(w, "odd")
			return
		}
		relayCase(w, r, body)
	}))
	f.dead = deadAddress(t)
	return f
}

// config is the proxies' configuration: the upstream behind a listener
// of each kind, a dead one, and both with retries.
func (f *laneFixture) config() *config.Config {
	upstream, dead := f.upstream, f.dead
	retry := &config.Retry{Attempts: 2, On: []string{"5xx", "connect-failure"},
		Backoff: config.Backoff{Base: config.Duration{Duration: time.Millisecond}, Max: config.Duration{Duration: 2 * time.Millisecond}}}
	return &config.Config{
		Listeners: []config.Listener{
			{Name: "app", Address: "127.0.0.1:0", Mode: config.ModeUpstream, Upstream: "u"},
			{Name: "dead", Address: "127.0.0.2:0", Mode: config.ModeUpstream, Upstream: "d"},
			{Name: "proxy", Address: "127.0.0.3:0", Mode: config.ModeProxy},
			{Name: "retry", Address: "127.0.0.4:0", Mode: config.ModeUpstream, Upstream: "r"},
			{Name: "retry-dead", Address: "127.0.0.5:0", Mode: config.ModeUpstream, Upstream: "rd"},
		},
		Upstreams: []config.Upstream{
			{Name: "u", Hosts: []string{"u.example"}, Endpoints: []config.Endpoint{{Address: upstream}}},
			{Name: "d", Hosts: []string{"d.example"}, Endpoints: []config.Endpoint{{Address: dead}}},
			{Name: "r", Endpoints: []config.Endpoint{{Address: upstream}}, Retry: retry},
			{Name: "rd", Endpoints: []config.Endpoint{{Address: dead}}, Retry: retry},
		},
	}
}
