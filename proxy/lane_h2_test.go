package proxy

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/watertight/watertight/config"
)

// TestLane2MatchesRelay is TestLaneMatchesRelay over h2c: the same
// requests, as HEADERS frames written field by field, to a proxy with the
// lane and one without, compared on what the upstream received (over h2c,
// and over HTTP/1.1 from an upstream set to protocol http1) and on what
// the app got: every answer's fields but date, the body, the trailers,
// and how the stream ended.
func TestLane2MatchesRelay(t *testing.T) {
	f := newLaneFixture(t)
	for _, protocol := range []string{config.ProtocolAuto, config.ProtocolHTTP1} {
		t.Run("upstream "+protocol, func(t *testing.T) { lane2MatchesRelay(t, f, protocol) })
	}
}

// lane2MatchesRelay runs TestLane2MatchesRelay's cases with every upstream
// set to protocol: auto (h2c, as the app speaks) or http1.
func lane2MatchesRelay(t *testing.T, f *laneFixture, protocol string) {
	var taken atomic.Int64
	opts := func(lane string) func(*Options) {
		return func(o *Options) {
			o.DownstreamHTTP1, o.DownstreamHTTP2 = HTTP1Watertight, HTTP1Watertight
			o.UpstreamHTTP1, o.UpstreamHTTP2 = HTTP1Watertight, HTTP1Watertight
			o.Lane = lane
			if lane == LaneOn {
				o.laneTaken = func() { taken.Add(1) }
			}
		}
	}
	cfg := func() *config.Config {
		c := f.config()
		for i := range c.Upstreams {
			c.Upstreams[i].Protocol = protocol
		}
		return c
	}
	lane := startProxyWith(t, cfg(), opts(LaneOn))
	relay := startProxyWith(t, cfg(), opts(LaneOff))

	type field = hpack.HeaderField
	get := func(path string, fields ...string) []field {
		out := []field{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "http"}, {Name: ":authority", Value: "u.example"}, {Name: ":path", Value: path}}
		for i := 0; i+1 < len(fields); i += 2 {
			out = append(out, field{Name: fields[i], Value: fields[i+1]})
		}
		return out
	}
	with := func(fs []field, name, value string) []field {
		for i := range fs {
			if fs[i].Name == name {
				fs[i].Value = value
			}
		}
		return fs
	}
	// A gRPC call: POST, its type, TE, and a message in one DATA frame.
	call := func(path string, fields ...string) []field {
		return with(get(path, append([]string{"content-type", "application/grpc", "te", "trailers"}, fields...)...), ":method", "POST")
	}
	const msg = "\x00\x00\x00\x00\x05hello"
	grpcLane := protocol != config.ProtocolHTTP1
	many := []string{}
	for i := range 20 {
		many = append(many, fmt.Sprintf("x-field-%02d", i), fmt.Sprint(i))
	}
	cases := []struct {
		name     string
		listener string
		fields   []field
		body     string // sent in a DATA frame after the HEADERS
		lane     bool
	}{
		{"plain", "app", get("/plain", "user-agent", "app/1"), "", true},
		{"no user agent", "app", get("/plain"), "", true},
		{"empty user agent", "app", get("/plain", "user-agent", ""), "", true},
		{"two user agents", "app", get("/plain", "user-agent", "a/1", "user-agent", "b/2"), "", true},
		{"local authority", "app", with(get("/plain"), ":authority", "127.0.0.1:9001"), "", true},
		{"IPv6 literal authority", "app", with(get("/plain"), ":authority", "[::1]:9001"), "", protocol != config.ProtocolHTTP1}, // h1conn would strip a zone
		{"query", "app", get("/plain?a=1&b=%20x&c"), "", true},
		{"escapes in the path", "app", get("/pl%61in"), "", true},
		{"sub-delimiters in the path", "app", get("/plain;v=1,2@x:y"), "", true},
		{"a byte net/url escapes", "app", get("/pl|ain"), "", false},
		{"forwarding fields", "app", get("/plain", "x-forwarded-for", "10.0.0.1", "forwarded", "for=10.0.0.1"), "", true},
		{"te trailers", "app", get("/plain", "te", "trailers"), "", true},
		{"te twice", "app", get("/plain", "te", "trailers", "te", "trailers"), "", false},
		{"one cookie", "app", get("/plain", "cookie", "a=1; b=2"), "", true},
		{"cookie crumbs", "app", get("/plain", "cookie", "a=1", "cookie", "b=2"), "", false},
		{"caller's timeout", "app", get("/plain", "x-request-timeout", "5s"), "", true},
		{"caller's timeout passes", "app", get("/hang", "x-request-timeout", "50ms"), "", true},
		{"repeated fields both ways", "app", get("/multi", "accept", "a", "accept", "b"), "", true},
		{"many fields", "app", get("/plain", many...), "", true},
		{"head", "app", with(get("/plain"), ":method", "HEAD"), "", true},
		{"delete", "app", with(get("/plain"), ":method", "DELETE"), "", true},
		{"post without a body", "app", with(get("/echo"), ":method", "POST"), "", true},
		{"event stream", "app", get("/sse"), "", true},
		{"large", "app", get("/large"), "", true},
		{"failure status", "app", get("/fail"), "", true},
		{"status without text", "app", get("/status-600"), "", true},
		{"empty answer", "app", get("/empty"), "", true},
		{"answer without a type", "app", get("/notype"), "", true},
		{"hop-by-hop answer", "app", get("/hop-plain"), "", true},
		{"hop-by-hop answer named by Connection", "app", get("/hop"), "", true},
		{"cut answer", "app", get("/cut"), "", true},
		{"cut answer with a type", "app", get("/cut-typed"), "", true},
		{"streamed answer", "app", get("/stream"), "", true},
		{"announced trailers", "app", get("/trailers"), "", true},
		{"prefixed trailers", "app", get("/prefixed-trailer"), "", true},
		{"early hints", "app", get("/early"), "", true},
		{"no content", "app", get("/nocontent"), "", true},
		{"not modified", "app", get("/notmodified"), "", true},
		{"not found", "app", get("/nowhere"), "", true},
		{"refused", "dead", with(get("/"), ":authority", "d.example"), "", true},
		{"by authority", "proxy", get("/plain"), "", true},
		{"unknown authority", "proxy", with(get("/"), ":authority", "nowhere.example"), "", false},
		{"retried failure", "retry", get("/flaky"), "", true},
		{"retried failure, then an answer that is not plain", "retry", get("/flaky-chunked"), "", true},
		{"retries run out", "retry", get("/down"), "", true},
		{"retried refusal", "retry-dead", get("/"), "", true},
		{"retry policy, plain answer", "retry", get("/plain"), "", true},
		{"post", "app", with(get("/echo", "content-type", "text/plain"), ":method", "POST"), "hello", false},
		{"empty post with a length", "app", with(get("/echo", "content-length", "0"), ":method", "POST"), "", false},
		{"host field", "app", get("/plain", "host", "u.example"), "", false},
		{"proxy authorization", "app", get("/plain", "proxy-authorization", "Basic x"), "", false},
		{"query relay re-encodes", "app", get("/plain?a=1;b=2"), "", false},
		{"grpc type without a body", "app", get("/plain", "content-type", "application/grpc"), "", false},
		{"grpc call", "app", call("/grpc.Test/Echo", "user-agent", "grpc-go/1"), msg, grpcLane},
		{"grpc call with a deadline", "app", call("/grpc.Test/Echo", "grpc-timeout", "5S", "x-request-timeout", "1s"), msg, grpcLane},
		{"grpc call failed", "app", call("/grpc.Test/Fail"), msg, grpcLane},
		{"grpc call, trailers announced", "app", call("/grpc.Test/Announced"), msg, grpcLane},
		{"grpc call, trailers only", "app", call("/grpc.Test/NotFound"), msg, grpcLane},
		{"grpc call past its deadline", "app", call("/hang", "grpc-timeout", "50m"), msg, grpcLane},
		{"grpc call cut by its deadline", "app", call("/grpc.Test/Late", "grpc-timeout", "50m"), msg, grpcLane},
		{"grpc call refused", "dead", with(call("/grpc.Test/Echo"), ":authority", "d.example"), msg, grpcLane},
		{"grpc call with retries", "retry", call("/grpc.Test/Echo"), msg, false},
		{"grpc call with a subtype", "app", with(call("/grpc.Test/Echo"), "content-type", "application/grpc+proto"), msg, grpcLane},
		{"expect", "app", get("/plain", "expect", "100-continue"), "", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			gotL := f.compare(t, &taken, lane, relay, c.lane, func(p *testProxy) string {
				return h2Exchange(t, strings.TrimPrefix(p.url(t, c.listener), "http://"), c.fields, c.body)
			})
			if !strings.Contains(gotL, ":status") && !strings.Contains(gotL, "reset") {
				t.Errorf("no answer to compare: %s", gotL)
			}
			for _, want := range grpcStatusWanted[c.name] {
				if protocol != config.ProtocolHTTP1 && !strings.Contains(gotL, want) {
					t.Errorf("the app got\n%s\nwant %s in it", gotL, want)
				}
			}
		})
	}
	f.compareCounts(t, lane, relay)
}

// grpcStatusWanted is what lane2MatchesRelay's gRPC cases must answer
// (both ways alike is not enough: both could be wrong).
var grpcStatusWanted = map[string][]string{
	"grpc call":                     {"grpc-status: \"0\"", "body \"\\x00\\x00\\x00\\x00\\x05hello\"\nend"},
	"grpc call failed":              {"grpc-status: \"14\""},
	"grpc call, trailers announced": {"trailer: \"Grpc-Status\"", "grpc-status: \"0\""},
	"grpc call, trailers only":      {"grpc-status: \"5\""},
	"grpc call past its deadline":   {"grpc-status: \"4\""},
	"grpc call cut by its deadline": {"grpc-status: \"4\"", "x-watertight-reason: \"timeout\"", "body \"\\x00\\x00\\x00\\x00\\x05hello\"\nend"},
	"grpc call refused":             {"grpc-status: \"14\""},
}

// h2Exchange sends one request on a new h2c connection to addr, its
// HEADERS frame made of fields as they are (ending the stream unless a
// body follows in one DATA frame), and returns what came back on its
// stream: each header block's fields, sorted, without date; the body; and
// how the stream ended.
func h2Exchange(t *testing.T, addr string, fields []hpack.HeaderField, body string) string {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := nc.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(nc, nc)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, hf := range fields {
		_ = enc.WriteField(hf)
	}
	err = fr.WriteSettings()
	if err == nil {
		err = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block.Bytes(), EndStream: body == "", EndHeaders: true})
	}
	if err == nil && body != "" {
		err = fr.WriteData(1, true, []byte(body))
	}
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	var data []byte
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			fmt.Fprintf(&b, "body %q\nerror reading: %v", data, err)
			return b.String()
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = fr.WriteSettingsAck()
			}
		case *http2.MetaHeadersFrame:
			if f.StreamID != 1 {
				continue
			}
			var lines []string
			for _, hf := range f.Fields {
				if hf.Name != "date" {
					lines = append(lines, fmt.Sprintf("  %s: %q", hf.Name, hf.Value))
				}
			}
			slices.Sort(lines)
			fmt.Fprintf(&b, "headers:\n%s\n", strings.Join(lines, "\n"))
			if f.StreamEnded() {
				fmt.Fprintf(&b, "body %q\nend", data)
				return b.String()
			}
		case *http2.DataFrame:
			if f.StreamID != 1 {
				continue
			}
			data = append(data, f.Data()...)
			if n := uint32(len(f.Data())); n > 0 {
				_ = fr.WriteWindowUpdate(0, n)
				_ = fr.WriteWindowUpdate(1, n)
			}
			if f.StreamEnded() {
				fmt.Fprintf(&b, "body %q\nend", data)
				return b.String()
			}
		case *http2.RSTStreamFrame:
			if f.StreamID == 1 {
				fmt.Fprintf(&b, "body %q\nreset %v", data, f.ErrCode)
				return b.String()
			}
		case *http2.GoAwayFrame:
			fmt.Fprintf(&b, "body %q\ngoaway %v", data, f.ErrCode)
			return b.String()
		}
	}
}

// TestLane2ClientGone: an app that resets a stream the lane is waiting on
// cancels it: the upstream's request ends, and the slot is given back.
func TestLane2ClientGone(t *testing.T) {
	started, ended := make(chan struct{}), make(chan struct{})
	upstream := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor != 2 {
			t.Errorf("the upstream got %s, want HTTP/2", r.Proto)
		}
		close(started)
		<-r.Context().Done()
		close(ended)
	}))
	p, taken := startLane2Proxy(t, upstream, config.ProtocolAuto)
	nc, err := net.Dial("tcp", strings.TrimPrefix(p.url(t, "app"), "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_, _ = nc.Write([]byte(http2.ClientPreface))
	fr := http2.NewFramer(nc, nc)
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, hf := range []hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "http"}, {Name: ":authority", Value: "u"}, {Name: ":path", Value: "/slow"}} {
		_ = enc.WriteField(hf)
	}
	_ = fr.WriteSettings()
	_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block.Bytes(), EndStream: true, EndHeaders: true})
	<-started
	_ = fr.WriteRSTStream(1, http2.ErrCodeCancel)
	laneCanceled(t, ended, p, taken)
}

// TestLane2Concurrent: many streams at once on one app connection, all
// through the lane, to an h2c upstream (one connection) and to an
// HTTP/1.1 one: each gets its own answer.
func TestLane2Concurrent(t *testing.T) {
	upstream := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("X-Path", r.URL.Path)
		w.Header().Set("X-Proto", r.Proto)
		if r.URL.Query().Has("empty") {
			w.Header().Set("Content-Length", "0")
			return
		}
		_, _ = w.Write(bytes.Repeat([]byte(r.URL.Path), 1000))
	}))
	for _, protocol := range []string{config.ProtocolAuto, config.ProtocolHTTP1} {
		t.Run("upstream "+protocol, func(t *testing.T) {
			p, taken := startLane2Proxy(t, upstream, protocol)
			app := client(true)
			defer app.CloseIdleConnections()
			base := p.url(t, "app")
			wantProto := map[string]string{config.ProtocolAuto: "HTTP/2.0", config.ProtocolHTTP1: "HTTP/1.1"}[protocol]
			var wg sync.WaitGroup
			for g := range 8 {
				wg.Go(func() {
					for i := range 50 {
						path := fmt.Sprintf("/g%d/r%d", g, i)
						query := ""
						if i%2 == 1 {
							query = "?empty"
						}
						resp, body := get(t, app, base, "u", path+query)
						want := ""
						if query == "" {
							want = strings.Repeat(path, 1000)
						}
						if got := resp.Header.Get("X-Path"); got != path || body != want || resp.ProtoMajor != 2 || resp.Header.Get("X-Proto") != wantProto {
							t.Errorf("%s: the answer says X-Path %q, X-Proto %q, %d bytes of body, over %s", path, got, resp.Header.Get("X-Proto"), len(body), resp.Proto)
							return
						}
					}
				})
			}
			wg.Wait()
			if taken.Load() != 400 {
				t.Errorf("the lane took %d of 400 requests", taken.Load())
			}
		})
	}
}

// startLane2Proxy is a proxy with the lane over h2c, listening in mode
// upstream for upstream (set to protocol), and a count of the requests its
// lane took.
func startLane2Proxy(t *testing.T, upstream, protocol string) (*testProxy, *atomic.Int64) {
	taken := new(atomic.Int64)
	cfg := laneConfig(upstream)
	cfg.Upstreams[0].Protocol = protocol
	p := startProxyWith(t, cfg, func(o *Options) {
		o.DownstreamHTTP1, o.DownstreamHTTP2, o.Lane = HTTP1Watertight, HTTP1Watertight, LaneOn
		o.UpstreamHTTP1, o.UpstreamHTTP2 = HTTP1Watertight, HTTP1Watertight
		o.laneTaken = func() { taken.Add(1) }
	})
	return p, taken
}

// TestLaneNameCase: the lane's name conversions between HTTP/2's lower
// case and HTTP/1.1's canonical form are net/http's.
func TestLaneNameCase(t *testing.T) {
	for _, name := range []string{"a", "content-type", "x-forwarded-for", "te", "x--y", "-x", "x-", "x_y-z", "www-authenticate", "x-1a", "dnt", "etag"} {
		if got, want := string(appendCanonical(nil, name)), http.CanonicalHeaderKey(name); got != want {
			t.Errorf("appendCanonical(%q) = %q, want %q", name, got, want)
		}
		canonical := http.CanonicalHeaderKey(name)
		for _, in := range []string{name, canonical, strings.ToUpper(name)} {
			if got := lowerName(in); got != name {
				t.Errorf("lowerName(%q) = %q, want %q", in, got, name)
			}
		}
	}
}

// TestAnnounceTrailers: the lane announces an answer's trailers as relay
// does, and leaves fields that do so already as they are.
func TestAnnounceTrailers(t *testing.T) {
	f := func(kv ...string) []hpack.HeaderField {
		var out []hpack.HeaderField
		for i := 0; i+1 < len(kv); i += 2 {
			out = append(out, hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
		}
		return out
	}
	for _, c := range []struct {
		in, want []hpack.HeaderField
		same     bool // the fields as they came, not a copy
	}{
		{f("content-type", "application/grpc"), f("content-type", "application/grpc"), true},
		{f("trailer", "Grpc-Status, Grpc-Message", "x-a", "1"), f("trailer", "Grpc-Status, Grpc-Message", "x-a", "1"), true},
		{f("trailer", "Grpc-Status", "trailer", "Grpc-Message", "x-a", "1", "trailer", "grpc-status-details-bin"),
			f("x-a", "1", "trailer", "Grpc-Status, Grpc-Message, Grpc-Status-Details-Bin"), false},
		{f("trailer", "x-a,x-a , X-B"), f("trailer", "X-A, X-B"), false},
		{f("trailer", "Content-Length", "x-a", "1"), f("x-a", "1"), false},
	} {
		got := announceTrailers(c.in)
		if !slices.Equal(got, c.want) || (len(got) > 0 && &got[0] == &c.in[0]) != c.same {
			t.Errorf("announceTrailers(%v) = %v (the same slice: %v), want %v (%v)", c.in, got, len(got) > 0 && &got[0] == &c.in[0], c.want, c.same)
		}
	}
}
