package proxy

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/watertight/watertight/config"
)

// echoProto answers with the protocol the upstream saw and the Host.
var echoProto = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Upstream-Proto", r.Proto)
	w.Header().Set("X-Upstream-Host", r.Host)
	_, _ = io.WriteString(w, "ok")
})

func TestHTTP1AndH2CBothWays(t *testing.T) {
	addr := startUpstream(t, echoProto)
	for _, proto := range []string{config.ProtocolHTTP1, config.ProtocolHTTP2, config.ProtocolAuto} {
		for _, h2c := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/client-h2c=%v", proto, h2c), func(t *testing.T) {
				u := upstreamCfg("u", addr, config.Bulkhead{})
				u.Protocol = proto
				p := startProxy(t, &config.Config{Listeners: proxyListener(), Upstreams: []config.Upstream{u}})
				resp, body := get(t, client(h2c), p.url(t, "out"), "u", "/")
				if resp.StatusCode != 200 || body != "ok" {
					t.Fatalf("%d %q", resp.StatusCode, body)
				}
				if want := map[bool]int{false: 1, true: 2}[h2c]; resp.ProtoMajor != want {
					t.Errorf("client got HTTP/%d, want HTTP/%d", resp.ProtoMajor, want)
				}
				want := map[string]string{config.ProtocolHTTP1: "HTTP/1.1", config.ProtocolHTTP2: "HTTP/2.0"}[proto]
				if proto == config.ProtocolAuto {
					want = map[bool]string{false: "HTTP/1.1", true: "HTTP/2.0"}[h2c]
				}
				if got := resp.Header.Get("X-Upstream-Proto"); got != want {
					t.Errorf("upstream saw %s, want %s", got, want)
				}
			})
		}
	}
}

// TestBodiesStreamBothWays sends and receives 16 MiB and checks that neither
// direction is buffered whole: the first response bytes arrive while the
// request body is still being written.
func TestBodiesStreamBothWays(t *testing.T) {
	const size = 16 << 20
	firstChunkSeen := make(chan struct{})
	addr := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Echo as we read, with a digest of what came in as a trailer.
		w.Header().Set("Trailer", "X-Sha256")
		h := sha256.New()
		buf := make([]byte, 64<<10)
		rc := http.NewResponseController(w)
		_ = rc.EnableFullDuplex()
		for {
			n, err := r.Body.Read(buf)
			if n > 0 {
				h.Write(buf[:n])
				if _, werr := w.Write(buf[:n]); werr != nil {
					return
				}
				_ = rc.Flush()
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				return
			}
		}
		w.Header().Set("X-Sha256", fmt.Sprintf("%x", h.Sum(nil)))
	}))
	for _, h2c := range []bool{false, true} {
		t.Run(fmt.Sprintf("h2c=%v", h2c), func(t *testing.T) {
			p := startProxy(t, &config.Config{Listeners: proxyListener(), Upstreams: []config.Upstream{upstreamCfg("u", addr, config.Bulkhead{})}})
			pr, pw := io.Pipe()
			sent := sha256.New()
			go func() {
				chunk := bytes.Repeat([]byte("watertight"), 6554)[:64<<10]
				// The first chunk, then wait until it has come back through
				// the proxy: only a streaming proxy gets us past this point.
				sent.Write(chunk)
				if _, err := pw.Write(chunk); err != nil {
					return
				}
				select {
				case <-firstChunkSeen:
				case <-time.After(10 * time.Second):
					pw.CloseWithError(fmt.Errorf("first chunk never echoed: request or response is buffered"))
					return
				}
				for written := len(chunk); written < size; written += len(chunk) {
					sent.Write(chunk)
					if _, err := pw.Write(chunk); err != nil {
						return
					}
				}
				pw.Close()
			}()
			req, _ := http.NewRequest("POST", p.url(t, "out")+"/echo", pr)
			req.Host = "u"
			resp, err := client(h2c).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			got := sha256.New()
			first := make([]byte, 64<<10)
			if _, err := io.ReadFull(resp.Body, first); err != nil {
				t.Fatalf("first chunk: %v", err)
			}
			got.Write(first)
			close(firstChunkSeen)
			n, err := io.Copy(got, resp.Body)
			if err != nil {
				t.Fatalf("reading the echo: %v", err)
			}
			if total := n + int64(len(first)); total != size {
				t.Fatalf("echoed %d bytes, want %d", total, size)
			}
			want := fmt.Sprintf("%x", sent.Sum(nil))
			if fmt.Sprintf("%x", got.Sum(nil)) != want {
				t.Fatal("echoed bytes differ from sent bytes")
			}
			if tr := resp.Trailer.Get("X-Sha256"); tr != want {
				t.Fatalf("trailer X-Sha256 = %q, want the upstream's digest %q", tr, want)
			}
		})
		firstChunkSeen = make(chan struct{})
	}
}

func TestTrailersPassThrough(t *testing.T) {
	addr := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Checksum")
		_, _ = io.WriteString(w, "body")
		w.Header().Set("X-Checksum", "abc123")
		// An unannounced trailer, as gRPC servers send.
		w.Header().Set(http.TrailerPrefix+"X-Late", "late")
	}))
	for _, h2c := range []bool{false, true} {
		u := upstreamCfg("u", addr, config.Bulkhead{})
		p := startProxy(t, &config.Config{Listeners: proxyListener(), Upstreams: []config.Upstream{u}})
		req, _ := http.NewRequest("GET", p.url(t, "out")+"/", nil)
		req.Host = "u"
		resp, err := client(h2c).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.Trailer.Get("X-Checksum") != "abc123" || resp.Trailer.Get("X-Late") != "late" {
			t.Errorf("h2c=%v: trailers = %v", h2c, resp.Trailer)
		}
	}
}

// TestUpgradePassesThrough: a WebSocket-style Upgrade gets its 101 and a raw
// two-way byte stream, which outlives the upstream's request timeout and
// holds its bulkhead slot until it closes.
func TestUpgradePassesThrough(t *testing.T) {
	addr := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "websocket" {
			http.Error(w, "want upgrade", 400)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		_ = brw.Flush()
		for {
			line, err := brw.ReadString('\n')
			if err != nil {
				return
			}
			_, _ = brw.WriteString("echo " + line)
			_ = brw.Flush()
		}
	}))
	u := upstreamCfg("ws", addr, config.Bulkhead{})
	u.Timeout = config.D(100 * time.Millisecond)
	p := startProxy(t, &config.Config{Listeners: proxyListener(), Upstreams: []config.Upstream{u}})
	conn, err := net.Dial("tcp", strings.TrimPrefix(p.url(t, "out"), "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, _ = io.WriteString(conn, "GET /chat HTTP/1.1\r\nHost: ws\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Upgrade") != "websocket" {
		t.Fatalf("got %d %v", resp.StatusCode, resp.Header)
	}
	say := func(msg string) {
		t.Helper()
		_, _ = io.WriteString(conn, msg+"\n")
		line, err := br.ReadString('\n')
		if err != nil || line != "echo "+msg+"\n" {
			t.Fatalf("echo of %q: %q, %v", msg, line, err)
		}
	}
	say("hello")
	if st := p.pool("ws"); st.Active != 1 {
		t.Fatalf("upgraded connection does not hold its slot: %+v", st)
	}
	// Outlive the 100ms request timeout: it bounds the wait for the 101,
	// not the life of the upgraded stream.
	<-time.After(300 * time.Millisecond)
	say("still there")
	conn.Close()
	eventually(t, "the slot to come back after close", func() bool { return p.pool("ws").Active == 0 })
}

func TestHopByHopHeaders(t *testing.T) {
	var seen http.Header
	addr := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = r.Header.Clone()
		w.Header().Set("Connection", "X-Upstream-Private")
		w.Header().Set("X-Upstream-Private", "secret")
		w.Header().Set("Keep-Alive", "timeout=5")
		w.Header().Set("X-End-To-End", "kept")
	}))
	p := startProxy(t, &config.Config{Listeners: proxyListener(), Upstreams: []config.Upstream{upstreamCfg("u", addr, config.Bulkhead{})}})
	resp, _ := get(t, client(false), p.url(t, "out"), "u", "/",
		"Connection", "X-Private", "X-Private", "drop me", "Proxy-Authorization", "Basic x",
		"Te", "trailers", "X-Forwarded-For", "10.1.2.3", "X-App", "kept")
	for _, h := range []string{"X-Private", "Proxy-Authorization", "Connection"} {
		if v := seen.Get(h); v != "" {
			t.Errorf("hop-by-hop request header %s reached the upstream: %q", h, v)
		}
	}
	if seen.Get("Te") != "trailers" || seen.Get("X-App") != "kept" || seen.Get("X-Forwarded-For") != "10.1.2.3" {
		t.Errorf("end-to-end request headers lost: %v", seen)
	}
	if resp.Header.Get("X-Upstream-Private") != "" || resp.Header.Get("Keep-Alive") != "" {
		t.Errorf("hop-by-hop response headers reached the app: %v", resp.Header)
	}
	if resp.Header.Get("X-End-To-End") != "kept" {
		t.Errorf("end-to-end response header lost")
	}
}

func TestRouting(t *testing.T) {
	a := startUpstream(t, echoProto)
	u := upstreamCfg("inventory", a, config.Bulkhead{})
	u.Hosts = []string{"inventory", "inventory.shop.svc.cluster.local", "pinned:8080"}
	cfg := &config.Config{
		Listeners: []config.Listener{
			{Name: "out", Address: "127.0.0.1:0", Mode: config.ModeProxy},
			{Name: "inv", Address: "127.0.0.2:0", Mode: config.ModeUpstream, Upstream: "inventory"},
		},
		Upstreams: []config.Upstream{u},
	}
	p := startProxy(t, cfg)
	c := client(false)
	base := p.url(t, "out")
	for _, host := range []string{"inventory", "INVENTORY:9999", "inventory.shop.svc.cluster.local.", "inventory.shop.svc.cluster.local:80", "pinned:8080"} {
		if resp, _ := get(t, c, base, host, "/"); resp.StatusCode != 200 {
			t.Errorf("Host %q: %d, want routed", host, resp.StatusCode)
		}
	}
	for _, host := range []string{"pinned", "pinned:8081", "inventory.shop", "evil.example.com"} {
		resp, body := get(t, c, base, host, "/")
		if resp.StatusCode != 404 || resp.Header.Get(HeaderReason) != "no_route" || !strings.Contains(body, "no upstream") {
			t.Errorf("Host %q: %d %q %q, want 404 no_route", host, resp.StatusCode, resp.Header.Get(HeaderReason), body)
		}
	}
	// As HTTP_PROXY: absolute-form request URIs.
	proxied := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(mustURL(t, base))}}
	resp, err := proxied.Get("http://inventory/items?sku=1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("X-Upstream-Host") != "inventory" {
		t.Errorf("HTTP_PROXY-style request: %d, upstream saw Host %q", resp.StatusCode, resp.Header.Get("X-Upstream-Host"))
	}
	// Mode upstream: everything goes to the one upstream; a Host that names
	// the listener itself becomes the upstream's name, a real name stays.
	inv := p.url(t, "inv")
	if resp, _ := get(t, c, inv, "", "/"); resp.Header.Get("X-Upstream-Host") != "inventory" {
		t.Errorf("mode upstream: upstream saw Host %q, want inventory", resp.Header.Get("X-Upstream-Host"))
	}
	if resp, _ := get(t, c, inv, "api.example.com", "/"); resp.StatusCode != 200 || resp.Header.Get("X-Upstream-Host") != "api.example.com" {
		t.Errorf("mode upstream with the app's own Host: %d %q", resp.StatusCode, resp.Header.Get("X-Upstream-Host"))
	}
	// CONNECT is refused: the sidecar is not a tunnel.
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, _ = io.WriteString(conn, "CONNECT inventory:443 HTTP/1.1\r\nHost: inventory:443\r\n\r\n")
	cr, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: "CONNECT"})
	if err != nil {
		t.Fatal(err)
	}
	if cr.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("CONNECT: %d, want 405", cr.StatusCode)
	}
}

func TestPassthroughForUnknownHosts(t *testing.T) {
	other := startUpstream(t, echoProto)
	cfg := &config.Config{
		UnknownHosts: config.UnknownHostsPass,
		Listeners:    proxyListener(),
		Upstreams:    []config.Upstream{upstreamCfg("u", deadAddress(t), config.Bulkhead{})},
	}
	p := startProxy(t, cfg)
	base := p.url(t, "out")
	resp, body := get(t, client(false), base, other, "/")
	if resp.StatusCode != 200 || body != "ok" || resp.Header.Get("X-Upstream-Host") != other {
		t.Fatalf("passthrough: %d %q host %q", resp.StatusCode, body, resp.Header.Get("X-Upstream-Host"))
	}
	// A Host naming the sidecar itself would loop; it is refused.
	resp, _ = get(t, client(false), base, strings.TrimPrefix(base, "http://"), "/")
	if resp.StatusCode != http.StatusLoopDetected {
		t.Fatalf("self-addressed passthrough: %d, want 508", resp.StatusCode)
	}
}

// TestMalformedRequestsGet4xx: what the app sends wrong is answered with a
// 4xx, and the listener keeps serving.
func TestMalformedRequestsGet4xx(t *testing.T) {
	p := startProxy(t, &config.Config{Listeners: proxyListener(), Upstreams: []config.Upstream{upstreamCfg("u", startUpstream(t, echoProto), config.Bulkhead{})}})
	addr := strings.TrimPrefix(p.url(t, "out"), "http://")
	cases := map[string]struct {
		raw  string
		want int
	}{
		"garbage request line": {"NOT HTTP AT ALL\r\n\r\n", 400},
		"bad header":           {"GET / HTTP/1.1\r\nHost: u\r\nBad Header\r\n\r\n", 400},
		"no Host on HTTP/1.1":  {"GET / HTTP/1.1\r\n\r\n", 400},
		"bad upgrade token":    {"GET / HTTP/1.1\r\nHost: u\r\nConnection: Upgrade\r\nUpgrade: \x01\r\n\r\n", 400},
		"headers too large":    {"GET / HTTP/1.1\r\nHost: u\r\nX-Big: " + strings.Repeat("a", 70<<10) + "\r\n\r\n", 431},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			_, _ = io.WriteString(conn, c.raw)
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatalf("no response: %v", err)
			}
			resp.Body.Close()
			if resp.StatusCode != c.want {
				t.Fatalf("got %d, want %d", resp.StatusCode, c.want)
			}
		})
	}
	if resp, _ := get(t, client(false), p.url(t, "out"), "u", "/"); resp.StatusCode != 200 {
		t.Fatalf("listener broken after malformed requests: %d", resp.StatusCode)
	}
}

func mustURL(t testing.TB, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// TestTransparentListenerServesDirectConnections: a connection that was not
// redirected (its original destination is the listener) is routed by Host,
// as in mode proxy. Redirected connections are tested with real iptables in
// network namespaces (see the iptables package's tests).
func TestTransparentListenerServesDirectConnections(t *testing.T) {
	u := upstreamCfg("inventory", startUpstream(t, echoProto), config.Bulkhead{})
	p := startProxy(t, &config.Config{
		Listeners: []config.Listener{{Name: "tp", Address: "127.0.0.1:0", Mode: config.ModeTransparent}},
		Upstreams: []config.Upstream{u},
	})
	for _, h2c := range []bool{false, true} {
		if resp, body := get(t, client(h2c), p.url(t, "tp"), "inventory", "/"); resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("h2c=%v: %d %q", h2c, resp.StatusCode, body)
		}
	}
	if resp, _ := get(t, client(false), p.url(t, "tp"), "nobody", "/"); resp.StatusCode != 404 {
		t.Fatalf("unknown host on a transparent listener: %d", resp.StatusCode)
	}
}

func TestLooksLikeHTTP(t *testing.T) {
	for in, want := range map[string]bool{
		"GET ": true, "POST": true, "PRI ": true, "OPTI": true, "HEAD": true,
		"\x16\x03\x01\x02": false, // TLS ClientHello
		"\x00\x00\x00\x08": false, // PostgreSQL startup
		"get ":             false, "G": false, "": false, " GET": false,
	} {
		if got := looksLikeHTTP([]byte(in)); got != want {
			t.Errorf("looksLikeHTTP(%q) = %v, want %v", in, got, want)
		}
	}
}

// TestTransparentLoopbackListensOnBothFamilies: REDIRECT sends IPv6 to ::1,
// so a transparent listener on 127.0.0.1 also takes [::1] on its port.
func TestTransparentLoopbackListensOnBothFamilies(t *testing.T) {
	if ln, err := net.Listen("tcp6", "[::1]:0"); err != nil {
		t.Skipf("no IPv6 loopback here: %v", err)
	} else {
		ln.Close()
	}
	u := upstreamCfg("inventory", startUpstream(t, echoProto), config.Bulkhead{})
	p := startProxy(t, &config.Config{
		Listeners: []config.Listener{{Name: "tp", Address: "127.0.0.1:0", Mode: config.ModeTransparent}},
		Upstreams: []config.Upstream{u},
	})
	a, _ := p.Addr("tp")
	port := a.(*net.TCPAddr).Port
	for _, base := range []string{fmt.Sprintf("http://127.0.0.1:%d", port), fmt.Sprintf("http://[::1]:%d", port)} {
		if resp, body := get(t, client(false), base, "inventory", "/"); resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("%s: %d %q", base, resp.StatusCode, body)
		}
	}
}

// TestHTTP2StreamCapApplies: an upstream's http2.maxConcurrentStreams
// reaches its h2c connections, and a reload that changes it builds the
// pool anew.
func TestHTTP2StreamCapApplies(t *testing.T) {
	if *upstreamHTTP2 != HTTP1Watertight {
		t.Skipf("-upstream-http2=%s: net/http's HTTP/2 client takes no cap of its own (sidecar run's flag says so)", *upstreamHTTP2)
	}
	const requests = 6
	var (
		mu      sync.Mutex
		conns   = map[string]bool{} // the proxy's connections the upstream saw, by remote address
		arrived int
		all     chan struct{}
	)
	addr := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		conns[r.RemoteAddr] = true
		if arrived++; arrived == requests {
			close(all)
		}
		wait := all
		mu.Unlock()
		select {
		case <-wait: // all in flight at once
		case <-r.Context().Done():
		}
		_, _ = io.WriteString(w, r.Proto)
	}))
	cfgWith := func(cap int) *config.Config {
		u := upstreamCfg("u", addr, config.Bulkhead{})
		u.Protocol = config.ProtocolHTTP2
		if cap > 0 {
			u.HTTP2 = &config.HTTP2{MaxConcurrentStreams: cap}
		}
		return &config.Config{Listeners: proxyListener(), Upstreams: []config.Upstream{u}}
	}
	batch := func(p *testProxy) int {
		mu.Lock()
		clear(conns)
		arrived, all = 0, make(chan struct{})
		mu.Unlock()
		c := client(true)
		var wg sync.WaitGroup
		for range requests {
			wg.Go(func() {
				req, err := http.NewRequest(http.MethodGet, p.url(t, "out")+"/", nil)
				if err != nil {
					t.Error(err)
					return
				}
				req.Host = "u"
				resp, err := c.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK || string(b) != "HTTP/2.0" {
					t.Errorf("%d %q, want 200 from HTTP/2", resp.StatusCode, b)
				}
			})
		}
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		return len(conns)
	}
	p := startProxy(t, cfgWith(2))
	if n := batch(p); n != requests/2 {
		t.Errorf("with a cap of 2: %d requests in flight over %d connections, want %d", requests, n, requests/2)
	}
	cfg := cfgWith(0)
	cfg.SetDefaults()
	if err := p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	if n := batch(p); n != 1 {
		t.Errorf("without a cap: %d requests in flight over %d connections, want 1", requests, n)
	}
}
