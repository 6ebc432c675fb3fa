package h2conn_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/watertight/watertight/proxy/h2conn"
)

// rawGet is a RawRequest for GET path with fields (name, value pairs).
func rawGet(path string, fields ...string) *h2conn.RawRequest {
	return &h2conn.RawRequest{
		Method: http.MethodGet, Authority: "raw.example", Path: path,
		Fields: func(e h2conn.Encoder) {
			for i := 0; i+1 < len(fields); i += 2 {
				e.Encode(fields[i], fields[i+1])
			}
		},
	}
}

func rawCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), waitLimit)
	t.Cleanup(cancel)
	return ctx
}

// TestRoundTripRaw: a request made of fields reaches the upstream as
// those fields, and the answer comes back as the fields it was sent with,
// its length, its body and its trailers; Response makes of it what
// RoundTrip returns.
func TestRoundTripRaw(t *testing.T) {
	s := newH2Server(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header()["X-Got"] = []string{fmt.Sprintf("%s %s %s %s ua=%q a=%q", r.Method, r.Host, r.RequestURI, r.Proto, r.Header["User-Agent"], r.Header["Accept"])}
		switch r.URL.Path {
		case "/sized":
			w.Header().Set("Content-Type", "text/plain")
			w.Header().Set("Content-Length", "5")
			_, _ = io.WriteString(w, "sized")
		case "/trailers":
			w.Header().Set("Trailer", "X-T")
			_, _ = io.WriteString(w, "body")
			w.(http.Flusher).Flush()
			w.Header().Set("X-T", "v")
			w.Header().Set(http.TrailerPrefix+"X-Late", "1")
		case "/empty":
			w.WriteHeader(http.StatusNoContent)
		}
	})
	tr, _ := newTransport(t)

	a, err := tr.RoundTripRaw(rawCtx(t), s.addr, rawGet("/sized?q=1", "accept", "a", "accept", "b"))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, hf := range a.Fields() {
		if hf.Name != "date" {
			got = append(got, hf.Name+": "+hf.Value)
		}
	}
	want := []string{`content-length: 5`, `content-type: text/plain`, `x-got: GET raw.example /sized?q=1 HTTP/2.0 ua=[] a=["a" "b"]`}
	slices.Sort(got)
	if a.Status() != 200 || a.Length() != 5 || !slices.Equal(got, want) {
		t.Errorf("status %d, length %d, fields %q; want 200, 5, %q", a.Status(), a.Length(), got, want)
	}
	body := a.Body()
	b, err := io.ReadAll(body)
	_ = body.Close()
	if string(b) != "sized" || err != nil || len(a.Trailers()) != 0 {
		t.Errorf("body %q (%v), trailers %v; want sized, none", b, err, a.Trailers())
	}

	// Trailers, announced and not, once the body has ended.
	a, err = tr.RoundTripRaw(rawCtx(t), s.addr, rawGet("/trailers"))
	if err != nil {
		t.Fatal(err)
	}
	if a.Length() != -1 {
		t.Errorf("length %d of a streamed answer, want -1", a.Length())
	}
	body = a.Body()
	b, _ = io.ReadAll(body)
	_ = body.Close()
	var trailers []string
	for _, hf := range a.Trailers() {
		trailers = append(trailers, hf.Name+": "+hf.Value)
	}
	slices.Sort(trailers)
	if string(b) != "body" || !slices.Equal(trailers, []string{"x-late: 1", "x-t: v"}) {
		t.Errorf("body %q, trailers %q", b, trailers)
	}

	// An answer without a body.
	a, err = tr.RoundTripRaw(rawCtx(t), s.addr, rawGet("/empty"))
	if err != nil {
		t.Fatal(err)
	}
	if a.Status() != http.StatusNoContent || a.Body() != http.NoBody {
		t.Errorf("status %d, body %T; want 204 and none", a.Status(), a.Body())
	}

	// Response is what RoundTrip returns for the same request.
	for _, path := range []string{"/sized", "/trailers", "/empty"} {
		req := newRequest(t, http.MethodGet, s.url+path, nil)
		req.Host = "raw.example"
		req.Header["User-Agent"] = []string{""}
		std, stdBody := fetch(t, tr, req)
		a, err := tr.RoundTripRaw(rawCtx(t), s.addr, rawGet(path))
		if err != nil {
			t.Fatal(err)
		}
		res := a.Response(req)
		b, _ := io.ReadAll(res.Body)
		_ = res.Body.Close()
		for _, r := range []*http.Response{std, res} {
			r.Header.Del("Date")
			r.Body = nil
		}
		if !reflect.DeepEqual(std, res) || stdBody != string(b) {
			t.Errorf("%s: Response made\n%+v %q\nand RoundTrip\n%+v %q", path, res, b, std, stdBody)
		}
	}
}

// TestRoundTripRawInformational: 1xx answers go to Got1xx, before the
// final answer, which comes back as usual.
func TestRoundTripRawInformational(t *testing.T) {
	s := newH2Server(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</a>")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		_, _ = io.WriteString(w, "final")
	})
	tr, _ := newTransport(t)
	var hints []string
	req := rawGet("/")
	req.Got1xx = func(status int, fields []hpack.HeaderField) error {
		for _, hf := range fields {
			hints = append(hints, fmt.Sprintf("%d %s: %s", status, hf.Name, hf.Value))
		}
		return nil
	}
	a, err := tr.RoundTripRaw(rawCtx(t), s.addr, req)
	if err != nil {
		t.Fatal(err)
	}
	body := a.Body()
	b, _ := io.ReadAll(body)
	_ = body.Close()
	if !slices.Equal(hints, []string{"103 link: </a>"}) || a.Status() != 200 || string(b) != "final" {
		t.Errorf("hints %q, then %d %q", hints, a.Status(), b)
	}
}

// TestRoundTripRawRetriesRefused: a stream the upstream refused before
// processing it goes again, with the same fields.
func TestRoundTripRawRetriesRefused(t *testing.T) {
	var headers atomic.Int64
	var seen atomic.Value
	s := newRawServer(t, func(_ int64, c *rawConn) {
		h := c.firstRequest(t)
		if h == nil {
			return
		}
		headers.Add(1)
		_ = c.fr.WriteRSTStream(h.StreamID, http2.ErrCodeRefusedStream)
		h, err := c.headers()
		if err != nil {
			t.Errorf("waiting for the retry: %v", err)
			return
		}
		headers.Add(1)
		seen.Store(fmt.Sprint(h.Fields))
		_ = c.answer(h.StreamID, "second")
		_ = c.drain()
	})
	tr, _ := newTransport(t)
	a, err := tr.RoundTripRaw(rawCtx(t), strings.TrimPrefix(s.url, "http://"), rawGet("/r", "x-a", "1"))
	if err != nil {
		t.Fatal(err)
	}
	body := a.Body()
	b, _ := io.ReadAll(body)
	_ = body.Close()
	if string(b) != "second" || headers.Load() != 2 || !strings.Contains(fmt.Sprint(seen.Load()), `"x-a" = "1"`) {
		t.Errorf("body %q after %d HEADERS, the second %v; want second after 2, with x-a", b, headers.Load(), seen.Load())
	}
}

// TestRoundTripRawClose: giving up on an answer resets its stream, and
// the connection serves the next request.
func TestRoundTripRawClose(t *testing.T) {
	ended := make(chan error, 1)
	s := newH2Server(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/next" {
			_, _ = io.WriteString(w, "next")
			return
		}
		_, _ = io.WriteString(w, "first part")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
		ended <- r.Context().Err()
	})
	tr, _ := newTransport(t)
	a, err := tr.RoundTripRaw(rawCtx(t), s.addr, rawGet("/hang"))
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	if err := recv(t, ended, "the upstream's request to end"); err == nil {
		t.Error("the upstream's request did not end")
	}
	a, err = tr.RoundTripRaw(rawCtx(t), s.addr, rawGet("/next"))
	if err != nil {
		t.Fatal(err)
	}
	body := a.Body()
	b, _ := io.ReadAll(body)
	_ = body.Close()
	if string(b) != "next" || s.accepted.Load() != 1 {
		t.Errorf("body %q over %d connections, want next over 1", b, s.accepted.Load())
	}
}

// TestRoundTripRawBody: a raw request's body reaches the upstream whole,
// its length unknown (no Content-Length), when it had come with the
// request (sent with its HEADERS) and when it comes later (from a
// goroutine, while the caller waits for the answer); it is closed once
// sent.
func TestRoundTripRawBody(t *testing.T) {
	s := newH2Server(t, func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		_, _ = fmt.Fprintf(w, "%s %q %v length %d %q", r.Method, b, err, r.ContentLength, r.Header["Content-Length"])
	})
	tr, _ := newTransport(t)
	post := func(body io.ReadCloser) *h2conn.RawRequest {
		r := rawGet("/echo", "content-type", "application/grpc")
		r.Method, r.Body = http.MethodPost, body
		return r
	}
	pr, pw := io.Pipe()
	go func() {
		_, _ = io.WriteString(pw, "late ")
		_, _ = io.WriteString(pw, "message")
		_ = pw.Close()
	}()
	for name, c := range map[string]struct {
		body io.Reader
		want string
	}{
		"come":  {&readyBody{here: [][]byte{[]byte("mess"), []byte("age")}}, `POST "message" <nil> length -1 []`},
		"later": {pr, `POST "late message" <nil> length -1 []`},
	} {
		closed := &closeRecorder{Reader: c.body, closed: make(chan struct{})}
		a, err := tr.RoundTripRaw(rawCtx(t), s.addr, post(closed))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		body := a.Body()
		b, _ := io.ReadAll(body)
		_ = body.Close()
		if string(b) != c.want {
			t.Errorf("%s: the upstream saw %s, want %s", name, b, c.want)
		}
		recv(t, closed.closed, name+": the body to be closed")
	}
}

// TestRoundTripRawBodyNotSentTwice: a request whose body the upstream
// may have taken some of is not sent again when it refuses the stream
// (there is no second copy of the body); the caller gets the refusal, and
// the body is closed.
func TestRoundTripRawBodyNotSentTwice(t *testing.T) {
	var headers atomic.Int64
	s := newRawServer(t, func(_ int64, c *rawConn) {
		h := c.firstRequest(t)
		if h == nil {
			return
		}
		headers.Add(1)
		if _, err := c.body(h.StreamID); err != nil {
			t.Errorf("reading the body: %v", err)
		}
		_ = c.fr.WriteRSTStream(h.StreamID, http2.ErrCodeRefusedStream)
		for { // a request sent again is counted, and answered
			f, err := c.next()
			if err != nil {
				return
			}
			if h, ok := f.(*http2.MetaHeadersFrame); ok {
				headers.Add(1)
				_ = c.answer(h.StreamID, "again")
			}
		}
	})
	tr, _ := newTransport(t)
	r := rawGet("/r")
	closed := &closeRecorder{Reader: &readyBody{here: [][]byte{[]byte("message")}}, closed: make(chan struct{})}
	r.Method, r.Body = http.MethodPost, closed
	if _, err := tr.RoundTripRaw(rawCtx(t), strings.TrimPrefix(s.url, "http://"), r); err == nil {
		t.Fatal("a refused stream answered")
	}
	recv(t, closed.closed, "the body to be closed")
	if n := headers.Load(); n != 1 {
		t.Errorf("the upstream got %d HEADERS, want 1", n)
	}
}
