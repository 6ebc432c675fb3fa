package h2serve_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/watertight/watertight/proxy/h2serve"
)

// laneFunc is a Lane made of a function.
type laneFunc func(x *h2serve.Exchange) bool

func (f laneFunc) ServeLane(x *h2serve.Exchange) bool { return f(x) }

// dumpRequest is what a Handler sees of a request, for comparing the
// request a declined lane made with the one the reader makes.
func dumpRequest(r *http.Request) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %q %s host %q url %#v\n", r.Method, r.RequestURI, r.Proto, r.Host, *r.URL)
	fmt.Fprintf(&b, "length %d nobody %v trailer %v remote %v\n", r.ContentLength, r.Body == http.NoBody, r.Trailer, r.RemoteAddr != "")
	fmt.Fprintf(&b, "conn value %v server %v\n", r.Context().Value(connKey{}), r.Context().Value(http.ServerContextKey) != nil)
	keys := slices.Sorted(func(yield func(string) bool) {
		for k := range r.Header {
			if !yield(k) {
				return
			}
		}
	})
	for _, k := range keys {
		fmt.Fprintf(&b, "%s: %q\n", k, r.Header[k])
	}
	return b.String()
}

// TestLaneOffers: which requests the lane is offered, and that one it
// declines reaches the Handler as the request it would have been without
// a lane: same method, target, URL, header and context.
func TestLaneOffers(t *testing.T) {
	var mu sync.Mutex
	var offered []string
	var handled string
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		handled = dumpRequest(r) + "body " + string(b)
		mu.Unlock()
		io.WriteString(w, "handled")
	})
	connCtx := func(s *h2serve.Server) { s.ConnContext = withConnValue }
	withLane := serve(t, handler, connCtx, func(s *h2serve.Server) {
		s.Lane = laneFunc(func(x *h2serve.Exchange) bool {
			var fields []string
			for _, hf := range x.Fields() {
				fields = append(fields, hf.Name+"="+hf.Value)
			}
			mu.Lock()
			offered = append(offered, fmt.Sprintf("%s %s %s %v %v", x.Method(), x.Authority(), x.Path(), fields, x.Context().Value(connKey{})))
			mu.Unlock()
			return false
		})
	})
	without := serve(t, handler, connCtx)

	req := func(method, path string, extra ...string) []string {
		return append([]string{":method", method, ":scheme", "http", ":authority", "h2serve.test", ":path", path}, extra...)
	}
	cases := []struct {
		name    string
		fields  []string
		body    bool
		offered string // what the lane saw, "" if it was not offered the request, "reset" if it is malformed
	}{
		{"plain", req("GET", "/a?b=c", "user-agent", "x", "accept", "1", "accept", "2"), false,
			"GET h2serve.test /a?b=c [user-agent=x accept=1 accept=2] conn"},
		{"escapes", req("GET", "/a%2Fb"), false, "GET h2serve.test /a%2Fb [] conn"},
		{"one cookie", req("GET", "/", "cookie", "a=1"), false, "GET h2serve.test / [cookie=a=1] conn"},
		{"te trailers", req("GET", "/", "te", "trailers"), false, "GET h2serve.test / [te=trailers] conn"},
		{"post without a body", req("POST", "/"), false, "POST h2serve.test / [] conn"},
		{"many fields", req("GET", "/", strings.Split(strings.Repeat("x-f,v,", 20), ",")[:40]...), false,
			"GET h2serve.test / [" + strings.TrimSpace(strings.Repeat("x-f=v ", 20)) + "] conn"},
		{"a body", req("POST", "/", "content-type", "application/grpc"), true, "POST h2serve.test / [content-type=application/grpc] conn"},
		{"a body and its length", req("POST", "/", "content-length", "4"), true, ""},
		{"a length", req("GET", "/", "content-length", "0"), false, ""},
		{"a host field", req("GET", "/", "host", "h2serve.test"), false, ""},
		{"cookie crumbs", req("GET", "/", "cookie", "a=1", "cookie", "b=2"), false, ""},
		{"a trailer field", req("GET", "/", "trailer", "x-t"), false, ""},
		{"expect", req("GET", "/", "expect", "100-continue"), false, ""},
		{"https", []string{":method", "GET", ":scheme", "https", ":authority", "h2serve.test", ":path", "/"}, false, ""},
		{"no authority", []string{":method", "GET", ":scheme", "http", ":path", "/"}, false, ""},
		{"asterisk", req("OPTIONS", "*"), false, ""},
		{"a space in the path", req("GET", "/a b"), false, ""},
		{"a bad escape", req("GET", "/a%zz"), false, "reset"},
		{"a bad escape in the query", req("GET", "/a?%zz"), false, "GET h2serve.test /a?%zz [] conn"}, // not url's to check
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			send := func(s *testServer) string {
				mu.Lock()
				offered, handled = nil, ""
				mu.Unlock()
				rc := dialRaw(t, s.addr)
				rc.headers(1, !c.body, c.fields...)
				if c.body {
					rc.data(1, true, []byte("body"))
				}
				if c.offered == "reset" {
					rc.expectReset(1, http2.ErrCodeProtocol)
					return ""
				}
				if r := rc.response(1); r.status != "200" || string(r.body) != "handled" {
					t.Fatalf("answer %s %q, want 200 handled", r.status, r.body)
				}
				mu.Lock()
				defer mu.Unlock()
				return handled
			}
			plain := send(without)
			declined := send(withLane)
			if declined != plain {
				t.Errorf("the Handler saw, after the lane declined\n%s\nand without a lane\n%s", declined, plain)
			}
			mu.Lock()
			defer mu.Unlock()
			got, want := "", strings.TrimPrefix(c.offered, "reset")
			if len(offered) > 0 {
				got = offered[0]
			}
			if got != want {
				t.Errorf("the lane was offered %q, want %q", got, c.offered)
			}
		})
	}
}

// TestLaneAnswers: an answer made of fields goes out as a Handler's would:
// status, fields but the connection-specific ones, the Content-Length
// given, a date, the body and the trailers; a field the lane got never
// indexed is sent never indexed.
func TestLaneAnswers(t *testing.T) {
	s := serve(t, http.NotFoundHandler(), func(s *h2serve.Server) {
		s.Lane = laneFunc(func(x *h2serve.Exchange) bool {
			fields := []hpack.HeaderField{
				{Name: "content-type", Value: "text/plain"}, {Name: "x-a", Value: "1"}, {Name: "x-a", Value: "2"},
				{Name: "connection", Value: "close"}, {Name: "content-length", Value: "999"},
				{Name: "x-secret", Value: "s", Sensitive: true},
			}
			if err := x.AnswerHead(201, fields, 5); err != nil {
				t.Error(err)
			}
			if err := x.AnswerBody(strings.NewReader("hello")); err != nil {
				t.Error(err)
			}
			if x.Path() == "/trailers" {
				x.AnswerTrailers([]hpack.HeaderField{{Name: "x-t", Value: "v"}})
			}
			return true
		})
	})
	for _, path := range []string{"/", "/trailers"} {
		rc := dialRaw(t, s.addr)
		rc.request(1, "GET", path, true)
		var got []string
		var body []byte
		for done := false; !done; {
			switch f := rc.nextSignificant().(type) {
			case *http2.MetaHeadersFrame:
				for _, hf := range f.Fields {
					if hf.Name == "date" {
						hf.Value = "(set)"
					}
					got = append(got, fmt.Sprintf("%s=%s%s", hf.Name, hf.Value, map[bool]string{true: " (never indexed)"}[hf.Sensitive]))
				}
				done = f.StreamEnded()
			case *http2.DataFrame:
				body = append(body, f.Data()...)
				done = f.StreamEnded()
			default:
				t.Fatalf("got %s", describe(f))
			}
		}
		want := []string{":status=201", "content-type=text/plain", "x-a=1", "x-a=2", "x-secret=s (never indexed)", "content-length=5", "date=(set)"}
		if path == "/trailers" {
			want = append(want, "x-t=v")
		}
		if !slices.Equal(got, want) || string(body) != "hello" {
			t.Errorf("%s: fields %q, body %q; want %q, hello", path, got, body, want)
		}
	}
}

// TestLaneMaterialize: a lane that hands a request to net/http's types
// after taking it answers through the writer, 1xx answers before the
// final one pass, and those after it do not.
func TestLaneMaterialize(t *testing.T) {
	s := serve(t, http.NotFoundHandler(), func(s *h2serve.Server) {
		s.Lane = laneFunc(func(x *h2serve.Exchange) bool {
			x.Informational(http.StatusEarlyHints, []hpack.HeaderField{{Name: "link", Value: "</a>"}, {Name: "content-length", Value: "1"}})
			w, r := x.Materialize()
			if x.Materialized() != true || r.URL.Path != "/m" || r.Method != "GET" {
				t.Errorf("Materialize made %s %v (materialized %v)", r.Method, r.URL, x.Materialized())
			}
			x.Informational(http.StatusEarlyHints, []hpack.HeaderField{{Name: "link", Value: "</late>"}})
			if err := x.AnswerHead(200, nil, 0); err == nil {
				t.Error("AnswerHead after Materialize: no error")
			}
			w.Header().Set("X-Made", "1")
			w.WriteHeader(http.StatusAccepted)
			io.WriteString(w, "made")
			return true
		})
	})
	rc := dialRaw(t, s.addr)
	rc.request(1, "GET", "/m", true)
	var got []string
	for done := false; !done; {
		switch f := rc.nextSignificant().(type) {
		case *http2.MetaHeadersFrame:
			for _, hf := range f.Fields {
				if hf.Name != "date" {
					got = append(got, hf.Name+"="+hf.Value)
				}
			}
			done = f.StreamEnded()
		case *http2.DataFrame:
			got = append(got, "data="+string(f.Data()))
			done = f.StreamEnded()
		default:
			t.Fatalf("got %s", describe(f))
		}
	}
	want := []string{":status=103", "link=</a>", ":status=202", "x-made=1", "content-type=text/plain; charset=utf-8", "content-length=4", "data=made"}
	if !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

// TestLaneCutAnswer: a body that fails midway resets the stream, as a
// Handler's abort does: the client must not take the answer for whole.
func TestLaneCutAnswer(t *testing.T) {
	s := serve(t, http.NotFoundHandler(), func(s *h2serve.Server) {
		s.Lane = laneFunc(func(x *h2serve.Exchange) bool {
			_ = x.AnswerHead(200, []hpack.HeaderField{{Name: "content-type", Value: "text/plain"}}, 100)
			if err := x.AnswerBody(io.MultiReader(strings.NewReader("ten bytes."), errReader{})); err == nil {
				t.Error("AnswerBody: no error from a failing body")
			}
			return true
		})
	})
	rc := dialRaw(t, s.addr)
	rc.request(1, "GET", "/", true)
	rc.expectReset(1, http2.ErrCodeInternal)
}

// withConnValue is a ConnContext that marks each connection's context.
func withConnValue(ctx context.Context, _ net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, "conn")
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("upstream went away") }

// gatedReader yields first, then waits for the gate (not Ready meanwhile)
// and yields rest: an upstream's answer whose second part is still to come.
type gatedReader struct {
	first, rest string
	gate        chan struct{}
	state       int
}

func (g *gatedReader) Ready() bool {
	if g.state != 1 {
		return true
	}
	select {
	case <-g.gate:
		return true
	default:
		return false
	}
}

func (g *gatedReader) Read(p []byte) (int, error) {
	switch g.state {
	case 0:
		g.state = 1
		return copy(p, g.first), nil
	case 1:
		<-g.gate
		g.state = 2
		return copy(p, g.rest), nil
	}
	return 0, io.EOF
}

// TestLaneBodyAndAnswerOfUnknownLength: the lane gets a request's body
// (a gRPC call's message); an answer of unknown length keeps it unknown,
// and what the lane wrote leaves before a read that would wait, not
// before (an answer that has come whole leaves in one DATA frame), its
// trailers at the end.
func TestLaneBodyAndAnswerOfUnknownLength(t *testing.T) {
	gates := map[string]chan struct{}{"/whole": make(chan struct{}), "/waits": make(chan struct{})}
	close(gates["/whole"])
	bodies := make(chan string, 2)
	s := serve(t, http.NotFoundHandler(), func(s *h2serve.Server) {
		s.Lane = laneFunc(func(x *h2serve.Exchange) bool {
			b, err := io.ReadAll(x.Body())
			bodies <- fmt.Sprintf("%q %v", b, err)
			if err := x.AnswerHead(200, []hpack.HeaderField{{Name: "content-type", Value: "application/grpc"}}, -1); err != nil {
				t.Error(err)
			}
			if err := x.AnswerBody(&gatedReader{first: "one", rest: "two", gate: gates[x.Path()]}); err != nil {
				t.Error(err)
			}
			x.AnswerTrailers([]hpack.HeaderField{{Name: "grpc-status", Value: "0"}})
			return true
		})
	})
	for _, path := range []string{"/whole", "/waits"} {
		rc := dialRaw(t, s.addr)
		rc.request(1, "POST", path, false, "content-type", "application/grpc")
		rc.data(1, true, []byte("ping"))
		if got := recv(t, bodies, "the body the lane read"); got != `"ping" <nil>` {
			t.Errorf("%s: the lane read %s, want \"ping\" <nil>", path, got)
		}
		var frames []string
		for done := false; !done; {
			switch f := rc.nextSignificant().(type) {
			case *http2.MetaHeadersFrame:
				var fields []string
				for _, hf := range f.Fields {
					if hf.Name != "date" {
						fields = append(fields, hf.Name+"="+hf.Value)
					}
				}
				frames = append(frames, fmt.Sprintf("HEADERS %v", fields))
				done = f.StreamEnded()
			case *http2.DataFrame:
				frames = append(frames, fmt.Sprintf("DATA %q", f.Data()))
				if path == "/waits" && string(f.Data()) == "one" {
					close(gates[path]) // what came went out before the wait
				}
				done = f.StreamEnded()
			default:
				t.Fatalf("%s: got %s", path, describe(f))
			}
		}
		want := map[string][]string{
			"/whole": {`HEADERS [:status=200 content-type=application/grpc]`, `DATA "onetwo"`, `HEADERS [grpc-status=0]`},
			"/waits": {`HEADERS [:status=200 content-type=application/grpc]`, `DATA "one"`, `DATA "two"`, `HEADERS [grpc-status=0]`},
		}[path]
		if !slices.Equal(frames, want) {
			t.Errorf("%s: the client got\n%q\nwant\n%q", path, frames, want)
		}
	}
}
