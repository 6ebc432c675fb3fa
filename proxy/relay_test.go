package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/watertight/watertight/config"
	"github.com/watertight/watertight/proxy/h1serve"
)

// TestRelayMatchesReverseProxy sends the same requests through the hot
// path (relay) and through the compartment's ReverseProxy, behind both
// app-side servers, and compares what the upstream received and what the
// app got back, byte for byte but for Date and the deadline's milliseconds.
func TestRelayMatchesReverseProxy(t *testing.T) {
	f := newRelayFixture(t)
	c := f.c

	hot := func(w http.ResponseWriter, r *http.Request) {
		if !relayable(r) {
			t.Errorf("%s %s: not relayable, the comparison would compare ReverseProxy with itself", r.Method, r.URL)
		}
		host, target := r.Host, r.URL.String()
		c.relay(w, r)
		// The access log reads the app's request after the handler.
		if r.Host != host || r.URL.String() != target {
			t.Errorf("relay changed the app's request: Host %q, URL %q; was %q, %q", r.Host, r.URL, host, target)
		}
	}
	viaRP := func(w http.ResponseWriter, r *http.Request) { c.proxy.ServeHTTP(w, r) }

	requests := []struct{ name, raw string }{
		{"plain", "GET /plain HTTP/1.1\r\nHost: u.example\r\nUser-Agent: app/1\r\n\r\n"},
		{"no user agent", "GET /plain HTTP/1.1\r\nHost: u.example\r\n\r\n"},
		{"local authority", "GET /plain HTTP/1.1\r\nHost: 127.0.0.1:9001\r\n\r\n"},
		{"query", "GET /plain?a=1&b=%20x&c HTTP/1.1\r\nHost: u.example\r\n\r\n"},
		{"forwarding fields", "GET /plain HTTP/1.1\r\nHost: u.example\r\nX-Forwarded-For: 10.0.0.1\r\nForwarded: for=10.0.0.1\r\nX-Forwarded-Proto: https\r\n\r\n"},
		{"head", "HEAD /plain HTTP/1.1\r\nHost: u.example\r\n\r\n"},
		{"keep-alive fields", "GET /plain HTTP/1.1\r\nHost: u.example\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nProxy-Connection: Keep-Alive\r\n\r\n"},
		{"post", "POST /echo HTTP/1.1\r\nHost: u.example\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello there"},
		{"empty post", "POST /echo HTTP/1.1\r\nHost: u.example\r\nContent-Length: 0\r\n\r\n"},
		{"streamed answer", "GET /stream HTTP/1.1\r\nHost: u.example\r\n\r\n"},
		{"event stream", "GET /sse HTTP/1.1\r\nHost: u.example\r\n\r\n"},
		{"announced trailers", "GET /trailers HTTP/1.1\r\nHost: u.example\r\n\r\n"},
		{"prefixed trailers", "GET /prefixed-trailer HTTP/1.1\r\nHost: u.example\r\n\r\n"},
		{"early hints", "GET /early HTTP/1.1\r\nHost: u.example\r\n\r\n"},
		{"no content", "GET /nocontent HTTP/1.1\r\nHost: u.example\r\n\r\n"},
		{"not modified", "GET /notmodified HTTP/1.1\r\nHost: u.example\r\n\r\n"},
		{"hop-by-hop answer", "GET /hop HTTP/1.1\r\nHost: u.example\r\n\r\n"},
		{"repeated fields", "GET /multi HTTP/1.1\r\nHost: u.example\r\n\r\n"},
		{"large", "GET /large HTTP/1.1\r\nHost: u.example\r\n\r\n"},
		{"failure status", "GET /fail HTTP/1.1\r\nHost: u.example\r\n\r\n"},
		{"cut answer", "GET /cut HTTP/1.1\r\nHost: u.example\r\n\r\n"},
		{"unasked switch", "GET /switch HTTP/1.1\r\nHost: u.example\r\n\r\n"},
	}
	servers := []struct {
		name  string
		serve func(t *testing.T, h http.HandlerFunc) string
	}{
		{"net/http", httptestAddr},
		{"h1serve", serveH1},
	}
	for _, srv := range servers {
		t.Run(srv.name, func(t *testing.T) {
			fast, slow := srv.serve(t, hot), srv.serve(t, viaRP)
			for _, rq := range requests {
				t.Run(rq.name, func(t *testing.T) {
					exchange := func(addr string) (string, string) {
						f.reset()
						got := rawExchange(t, addr, rq.raw)
						return f.last(), got
					}
					seenRP, gotRP := exchange(slow)
					seenF, gotF := exchange(fast)
					if seenF != seenRP {
						t.Errorf("the upstream received\n%s\nthrough relay, and through ReverseProxy\n%s", seenF, seenRP)
					}
					if gotF != gotRP {
						t.Errorf("the app got\n%s\nthrough relay, and through ReverseProxy\n%s", gotF, gotRP)
					}
					if gotF == "" || (seenF == "" && !strings.Contains(rq.name, "switch")) {
						t.Errorf("nothing to compare: answer %q, upstream saw %q", gotF, seenF)
					}
				})
			}
		})
	}
}

// relayFixture is a proxy with one upstream u answering relayCase, and
// what that upstream last received.
type relayFixture struct {
	c    *compartment
	mu   sync.Mutex
	seen string
}

func newRelayFixture(t *testing.T) *relayFixture {
	f := &relayFixture{}
	upstream := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.seen = dumpSeen(r, body)
		f.mu.Unlock()
		relayCase(w, r, body)
	}))
	cfg := &config.Config{
		Listeners: []config.Listener{{Name: "app", Address: "127.0.0.1:0", Mode: config.ModeUpstream, Upstream: "u"}},
		Upstreams: []config.Upstream{{Name: "u", Hosts: []string{"u.example"}, Endpoints: []config.Endpoint{{Address: upstream}}}},
	}
	p := startProxy(t, cfg)
	p.mu.Lock()
	f.c = p.compartments[0]
	p.mu.Unlock()
	return f
}

func (f *relayFixture) reset() {
	f.mu.Lock()
	f.seen = ""
	f.mu.Unlock()
}

func (f *relayFixture) last() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.seen
}

// relayCase is the upstream's answer for each path of the test above.
func relayCase(w http.ResponseWriter, r *http.Request, body []byte) {
	h := w.Header()
	switch r.URL.Path {
	case "/plain":
		h.Set("Content-Type", "text/plain")
		_, _ = io.WriteString(w, "hello")
	case "/echo":
		h.Set("Content-Type", r.Header.Get("Content-Type"))
		_, _ = w.Write(body)
	case "/stream":
		for i := range 3 {
			fmt.Fprintf(w, "part %d\n", i)
			w.(http.Flusher).Flush()
		}
	case "/sse":
		h.Set("Content-Type", "text/event-stream; charset=utf-8")
		h.Set("Content-Length", "12")
		_, _ = io.WriteString(w, "data: hi\n\n\n\n")
	case "/trailers":
		h.Set("Trailer", "X-Checksum")
		_, _ = io.WriteString(w, "body")
		h.Set("X-Checksum", "abc")
	case "/prefixed-trailer":
		_, _ = io.WriteString(w, "body")
		w.(http.Flusher).Flush()
		h.Set(http.TrailerPrefix+"X-Late", "1")
	case "/early":
		h.Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		h.Del("Link")
		_, _ = io.WriteString(w, "after hints")
	case "/nocontent":
		w.WriteHeader(http.StatusNoContent)
	case "/notmodified":
		h.Set("Etag", `"v1"`)
		w.WriteHeader(http.StatusNotModified)
	case "/hop":
		h.Set("Connection", "X-Hop")
		h.Set("X-Hop", "only for the next hop")
		h.Set("Keep-Alive", "timeout=5")
		h.Set("Proxy-Authenticate", "Basic")
		h.Set("X-End", "end to end")
		_, _ = io.WriteString(w, "hop")
	case "/multi":
		h.Add("Set-Cookie", "a=1")
		h.Add("Set-Cookie", "b=2")
		h.Add("Vary", "Accept")
		h.Add("Vary", "Origin")
		_, _ = io.WriteString(w, "multi")
	case "/large":
		h.Set("Content-Length", "100000")
		_, _ = w.Write(bytes.Repeat([]byte("0123456789"), 10000))
	case "/fail":
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, "down")
	case "/cut":
		h.Set("Content-Length", "100")
		_, _ = io.WriteString(w, "ten bytes.")
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	case "/switch":
		h.Set("Connection", "Upgrade")
		h.Set("Upgrade", "websocket")
		w.WriteHeader(http.StatusSwitchingProtocols)
	default:
		http.NotFound(w, r)
	}
}

// dumpSeen is what the upstream received, with the deadline the sidecar
// passed reduced to its presence (its milliseconds differ by run).
func dumpSeen(r *http.Request, body []byte) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %s\nHost: %s\n", r.Method, r.RequestURI, r.Proto, r.Host)
	for _, k := range slices.Sorted(func(yield func(string) bool) {
		for k := range r.Header {
			if !yield(k) {
				return
			}
		}
	}) {
		v := r.Header[k]
		if k == headerRequestTimeout || k == headerGRPCTimeout {
			v = []string{"(set)"}
		}
		fmt.Fprintf(&b, "%s: %q\n", k, v)
	}
	fmt.Fprintf(&b, "body %q", body)
	return b.String()
}

// rawExchange sends raw on a new connection and returns what came back,
// answer by answer (1xx included), without Date; a connection cut before
// the answer ended shows as such.
func rawExchange(t *testing.T, addr, raw string) string {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(nc, raw); err != nil {
		t.Fatal(err)
	}
	req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(nc)
	var b strings.Builder
	for {
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			fmt.Fprintf(&b, "error reading the answer: %v", err)
			return b.String()
		}
		resp.Header.Del("Date")
		fmt.Fprintf(&b, "%s %s, length %d, chunked %v\n", resp.Proto, resp.Status, resp.ContentLength, resp.TransferEncoding)
		writeSorted(&b, resp.Header)
		if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			continue
		}
		body, err := io.ReadAll(resp.Body)
		fmt.Fprintf(&b, "body %q", body)
		if err != nil {
			fmt.Fprintf(&b, " cut: %v", err)
		}
		b.WriteString("\ntrailer:\n")
		writeSorted(&b, resp.Trailer)
		return b.String()
	}
}

func writeSorted(b *strings.Builder, h http.Header) {
	var keys []string
	for k := range h {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(b, "  %s: %q\n", k, h[k])
	}
}

// serveH1 serves h through the app-side loop on a loopback port; every
// request of the test above is one the loop serves itself.
func serveH1(t *testing.T, h http.HandlerFunc) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &h1serve.Server{Handler: h, HandOff: func(c net.Conn) {
		t.Errorf("the app-side loop handed a connection off")
		_ = c.Close()
	}, HTTPServer: &http.Server{}}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { s.ServeConn(c) })
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		_ = s.Shutdown(t.Context())
		wg.Wait()
	})
	return ln.Addr().String()
}

// TestRelayStreams: an answer of unknown length, and an event stream,
// reach the app as the upstream sends them, not when they end: the
// upstream waits for the app to have each part before it sends the next.
func TestRelayStreams(t *testing.T) {
	got := make(chan struct{})
	upstream := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/sse" {
			w.Header().Set("Content-Type", "text/event-stream")
		}
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		for _, part := range []string{"", "first\n"} {
			_, _ = io.WriteString(w, part)
			w.(http.Flusher).Flush()
			select {
			case <-got:
			case <-r.Context().Done():
				return
			}
		}
		_, _ = io.WriteString(w, "second\n")
	}))
	cfg := &config.Config{
		Listeners: []config.Listener{{Name: "app", Address: "127.0.0.1:0", Mode: config.ModeUpstream, Upstream: "u"}},
		Upstreams: []config.Upstream{{Name: "u", Endpoints: []config.Endpoint{{Address: upstream}}}},
	}
	p := startProxy(t, cfg)
	p.mu.Lock()
	c := p.compartments[0]
	p.mu.Unlock()
	hot := func(w http.ResponseWriter, r *http.Request) { c.relay(w, r) }
	for _, srv := range []struct {
		name string
		addr string
	}{{"net/http", httptestAddr(t, hot)}, {"h1serve", serveH1(t, hot)}} {
		for _, path := range []string{"/stream", "/sse"} {
			t.Run(srv.name+path, func(t *testing.T) {
				nc, err := net.Dial("tcp", srv.addr)
				if err != nil {
					t.Fatal(err)
				}
				defer nc.Close()
				_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
				fmt.Fprintf(nc, "GET %s HTTP/1.1\r\nHost: u\r\n\r\n", path)
				br := bufio.NewReader(nc)
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("the header did not come before the body: %v", err)
				}
				got <- struct{}{}
				line, err := bufio.NewReader(resp.Body).ReadString('\n')
				if err != nil || line != "first\n" {
					t.Fatalf("the first part did not come before the upstream ended: %q, %v", line, err)
				}
				got <- struct{}{}
			})
		}
	}
}

func httptestAddr(t *testing.T, h http.HandlerFunc) string {
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return s.Listener.Addr().String()
}

// TestRelayable: what is not plain goes through ReverseProxy, which
// handles it (upgrades, Expect, hop-by-hop fields, queries it re-encodes,
// chunked bodies, HTTP/2 and HTTP/1.0).
func TestRelayable(t *testing.T) {
	cases := []struct {
		raw  string
		want bool
	}{
		{"GET / HTTP/1.1\r\nHost: a\r\n\r\n", true},
		{"GET /?a=1&b=%20&c HTTP/1.1\r\nHost: a\r\n\r\n", true},
		{"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc", true},
		{"GET / HTTP/1.0\r\nHost: a\r\n\r\n", false},
		{"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", false},
		{"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", false},
		{"GET / HTTP/1.1\r\nHost: a\r\nTe: trailers\r\n\r\n", true},
		{"GET / HTTP/1.1\r\nHost: a\r\nTe: trailers, deflate\r\n\r\n", false},
		{"GET / HTTP/1.1\r\nHost: a\r\nTe: deflate\r\n\r\n", false},
		{"GET / HTTP/1.1\r\nHost: a\r\nKeep-Alive: 5\r\n\r\n", true},
		{"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n", true},
		{"GET / HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive, keep-alive\r\nConnection: keep-alive\r\n\r\n", true},
		{"GET / HTTP/1.1\r\nHost: a\r\nProxy-Connection: Keep-Alive\r\n\r\n", true},
		{"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n\r\n", false},
		{"GET / HTTP/1.1\r\nHost: a\r\nProxy-Authorization: Basic x\r\n\r\n", false},
		{"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc", false},
		{"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", false},
		{"GET /?a=1;b=2 HTTP/1.1\r\nHost: a\r\n\r\n", false},
		{"GET /?a=%zz HTTP/1.1\r\nHost: a\r\n\r\n", false},
		{"GET /?a=%2 HTTP/1.1\r\nHost: a\r\n\r\n", false},
		{"GET /?" + strings.Repeat("a&", maxQueryParams) + " HTTP/1.1\r\nHost: a\r\n\r\n", false},
	}
	for _, c := range cases {
		r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(c.raw)))
		if err != nil {
			t.Fatalf("%.40q: %v", c.raw, err)
		}
		if got := relayable(r); got != c.want {
			t.Errorf("relayable(%.60q) = %v, want %v", c.raw, got, c.want)
		}
	}
	h2 := httptest.NewRequest("POST", "/pkg.Svc/Call", nil)
	h2.ProtoMajor, h2.ProtoMinor, h2.ContentLength = 2, 0, -1
	h2.Header.Set("Te", "trailers")
	h2.Header.Set("Content-Type", "application/grpc")
	if !relayable(h2) {
		t.Error("a gRPC call over HTTP/2 is not relayable")
	}
}

// TestRelayMatchesReverseProxyH2C is the same comparison for the app's
// HTTP/2 (h2c) requests, gRPC's shape among them, with Go's own HTTP/2
// client as the app.
func TestRelayMatchesReverseProxyH2C(t *testing.T) {
	f := newRelayFixture(t)
	c := f.c
	h2cServer := func(h http.HandlerFunc) string {
		s := httptest.NewUnstartedServer(h)
		s.Config.Protocols = new(http.Protocols)
		s.Config.Protocols.SetHTTP1(true)
		s.Config.Protocols.SetUnencryptedHTTP2(true)
		s.Start()
		t.Cleanup(s.Close)
		return "http://" + s.Listener.Addr().String()
	}
	fast := h2cServer(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor != 2 || !relayable(r) {
			t.Errorf("%s %s %s: not relayable", r.Proto, r.Method, r.URL)
		}
		c.relay(w, r)
	})
	slow := h2cServer(func(w http.ResponseWriter, r *http.Request) { c.proxy.ServeHTTP(w, r) })
	app := client(true)
	defer app.CloseIdleConnections()

	requests := []struct {
		name, method, path, body string
		header                   http.Header
	}{
		{"plain", "GET", "/plain", "", nil},
		{"grpc shape", "POST", "/echo", "\x00\x00\x00\x00\x02hi", http.Header{"Content-Type": {"application/grpc"}, "Te": {"trailers"}}},
		{"post", "POST", "/echo", "hello there", http.Header{"Content-Type": {"text/plain"}}},
		{"streamed answer", "GET", "/stream", "", nil},
		{"event stream", "GET", "/sse", "", nil},
		{"announced trailers", "GET", "/trailers", "", nil},
		{"prefixed trailers", "GET", "/prefixed-trailer", "", nil},
		{"early hints", "GET", "/early", "", nil},
		{"no content", "GET", "/nocontent", "", nil},
		{"not modified", "GET", "/notmodified", "", nil},
		{"hop-by-hop answer", "GET", "/hop", "", nil},
		{"repeated fields", "GET", "/multi", "", nil},
		{"large", "GET", "/large", "", nil},
		{"failure status", "GET", "/fail", "", nil},
		{"cut answer", "GET", "/cut", "", nil},
		{"unasked switch", "GET", "/switch", "", nil},
	}
	for _, rq := range requests {
		t.Run(rq.name, func(t *testing.T) {
			exchange := func(base string) (string, string) {
				f.reset()
				var body io.Reader
				if rq.body != "" {
					body = strings.NewReader(rq.body)
				}
				var b strings.Builder
				trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
					fmt.Fprintf(&b, "%d\n", code)
					writeSorted(&b, http.Header(h))
					return nil
				}}
				req, err := http.NewRequestWithContext(httptrace.WithClientTrace(t.Context(), trace), rq.method, base+rq.path, body)
				if err != nil {
					t.Fatal(err)
				}
				req.Host = "u.example"
				maps.Copy(req.Header, rq.header)
				resp, err := app.Do(req)
				if err != nil {
					fmt.Fprintf(&b, "error: %v", strings.ReplaceAll(err.Error(), base, "(app port)"))
				} else {
					got, err := io.ReadAll(resp.Body)
					resp.Body.Close()
					resp.Header.Del("Date")
					fmt.Fprintf(&b, "%s %s, length %d\n", resp.Proto, resp.Status, resp.ContentLength)
					writeSorted(&b, resp.Header)
					fmt.Fprintf(&b, "body %q cut %v\ntrailer:\n", got, err != nil)
					writeSorted(&b, resp.Trailer)
				}
				return f.last(), b.String()
			}
			seenRP, gotRP := exchange(slow)
			seenF, gotF := exchange(fast)
			if seenF != seenRP {
				t.Errorf("the upstream received\n%s\nthrough relay, and through ReverseProxy\n%s", seenF, seenRP)
			}
			if gotF != gotRP {
				t.Errorf("the app got\n%s\nthrough relay, and through ReverseProxy\n%s", gotF, gotRP)
			}
			if !strings.Contains(gotF, "HTTP/2.0") && rq.name != "cut answer" {
				t.Errorf("not an HTTP/2 answer: %s", gotF)
			}
		})
	}
}
