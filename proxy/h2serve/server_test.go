package h2serve_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/watertight/watertight/internal/poll"
	"github.com/watertight/watertight/proxy/h2serve"
	"github.com/watertight/watertight/proxy/internal/writertest"
)

// waitLimit bounds every wait in these tests: long next to what a loaded
// CI machine needs, short enough that a hang fails rather than stalls.
const waitLimit = 10 * time.Second

// testServer is an h2serve.Server behind a loopback listener.
type testServer struct {
	*h2serve.Server
	addr string // host:port
	url  string // http://host:port
}

// serve starts s on a loopback listener. Cleanup closes the listener and
// the server and waits for the accept loop and every ServeConn, so that
// goleak sees only what a test really left behind.
func serve(t *testing.T, h http.Handler, tune ...func(*h2serve.Server)) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &h2serve.Server{Handler: h, HTTPServer: &http.Server{}}
	for _, f := range tune {
		f(s)
	}
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
		s.Close()
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(waitLimit):
			t.Errorf("ServeConn still running %v after Close", waitLimit)
		}
	})
	return &testServer{Server: s, addr: ln.Addr().String(), url: "http://" + ln.Addr().String()}
}

// recv takes a value from ch, failing the test if none comes in time.
func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitLimit):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// h2Client is golang.org/x/net/http2's client speaking h2c with prior
// knowledge. Compression is off so that tests see answers as sent.
func h2Client(t *testing.T) *http.Client {
	tr := &http2.Transport{
		AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
		DisableCompression: true,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: waitLimit}
}

// stdClient is net/http's own client, HTTP/2 over cleartext only: it is
// the one that honours ExpectContinueTimeout.
func stdClient(t *testing.T, tune func(*http.Transport)) *http.Client {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &p, DisableCompression: true}
	if tune != nil {
		tune(tr)
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: waitLimit}
}

func get(t *testing.T, c *http.Client, url string) (*http.Response, string) {
	t.Helper()
	res, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("reading the body of %s: %v", url, err)
	}
	return res, string(b)
}

// payload is n reproducible bytes that differ per seed, so that a body
// cut, doubled or swapped with another stream's shows.
func payload(seed byte, n int) []byte {
	b := make([]byte, n)
	_, _ = rand.NewChaCha8([32]byte{seed}).Read(b)
	return b
}

func digest(b []byte) string {
	return fmt.Sprintf("%d %x", len(b), sha256.Sum256(b))
}

// hashBody answers the request body's length and SHA-256.
func hashBody(w http.ResponseWriter, r *http.Request) {
	h := sha256.New()
	n, err := io.Copy(h, r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	fmt.Fprintf(w, "%d %x", n, h.Sum(nil))
}

type connKey struct{}

func TestGet(t *testing.T) {
	hs := &http.Server{}
	type seen struct {
		proto, host, path, query, uri, remote string
		server, conn, local                   any
	}
	seenCh := make(chan seen, 1)
	srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seenCh <- seen{
			proto: r.Proto, host: r.Host, path: r.URL.Path, query: r.URL.RawQuery, uri: r.RequestURI,
			remote: r.RemoteAddr,
			server: r.Context().Value(http.ServerContextKey),
			conn:   r.Context().Value(connKey{}),
			local:  r.Context().Value(http.LocalAddrContextKey),
		}
		w.Header().Set("X-Answer", "42")
		w.Header().Add("X-Multi", "a")
		w.Header().Add("X-Multi", "b")
		io.WriteString(w, "hello, h2")
	}), func(s *h2serve.Server) {
		s.HTTPServer = hs
		// The value names the connection, so that the test sees it is
		// this connection's.
		s.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, "conn "+c.RemoteAddr().String())
		}
	})
	var clientAddr string
	ctx := httptrace.WithClientTrace(t.Context(), &httptrace.ClientTrace{
		GotConn: func(i httptrace.GotConnInfo) { clientAddr = i.Conn.LocalAddr().String() },
	})
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.url+"/some/path?q=1&r=two", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = "app.example:8080"
	res, err := h2Client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != http.StatusOK || string(body) != "hello, h2" || res.Proto != "HTTP/2.0" {
		t.Errorf("got %s %s %q, want HTTP/2.0 200 %q", res.Proto, res.Status, body, "hello, h2")
	}
	if got := res.Header.Get("X-Answer"); got != "42" {
		t.Errorf("X-Answer = %q, want 42", got)
	}
	if got := res.Header.Values("X-Multi"); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("X-Multi = %q, want [a b]", got)
	}
	if got := res.Header.Get("Content-Type"); got != "text/plain; charset=utf-8" {
		t.Errorf("sniffed Content-Type = %q", got)
	}
	if res.Header.Get("Date") == "" {
		t.Error("no Date header")
	}

	s := recv(t, seenCh, "the handler")
	if s.proto != "HTTP/2.0" || s.host != "app.example:8080" || s.path != "/some/path" || s.query != "q=1&r=two" || s.uri != "/some/path?q=1&r=two" {
		t.Errorf("request seen as %+v", s)
	}
	if s.remote != clientAddr {
		t.Errorf("RemoteAddr = %q, want the client's address %q", s.remote, clientAddr)
	}
	if s.server != hs {
		t.Errorf("http.ServerContextKey holds %v, want the configured HTTPServer", s.server)
	}
	if want := "conn " + clientAddr; s.conn != want {
		t.Errorf("ConnContext's value = %v, want %q", s.conn, want)
	}
	if a, ok := s.local.(net.Addr); !ok || a.String() != srv.addr {
		t.Errorf("http.LocalAddrContextKey holds %v, want %s", s.local, srv.addr)
	}
}

// A proxy's handler can hand the writer an upstream's header whole, while
// the writer's own is empty; after that, or once a field is set, it cannot.
func TestAdoptHeader(t *testing.T) {
	h, wait := writertest.AdoptHeader(t)
	srv := serve(t, h)
	res, err := h2Client(t).Get(srv.url + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	writertest.CheckAdopted(t, res)
	wait()
}

func TestContentLength(t *testing.T) {
	release := make(chan struct{})
	srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/whole":
			w.Write(bytes.Repeat([]byte("x"), 3000))
			w.Write(bytes.Repeat([]byte("y"), 1000))
		case "/streamed":
			io.WriteString(w, "first part|")
			w.(http.Flusher).Flush()
			select {
			case <-release:
			case <-r.Context().Done():
				return
			}
			io.WriteString(w, "second part")
		}
	}))
	c := h2Client(t)

	res, body := get(t, c, srv.url+"/whole")
	if res.ContentLength != 4000 || res.Header.Get("Content-Length") != "4000" || len(body) != 4000 {
		t.Errorf("an answer finished before any flush: ContentLength %d, header %q, %d bytes; want 4000",
			res.ContentLength, res.Header.Get("Content-Length"), len(body))
	}

	res, err := c.Get(srv.url + "/streamed")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.ContentLength != -1 || res.Header.Get("Content-Length") != "" {
		t.Errorf("a flushed answer has ContentLength %d (header %q), want unknown", res.ContentLength, res.Header.Get("Content-Length"))
	}
	// The handler is still held: this part arrives only if the flush sent it.
	first := make([]byte, len("first part|"))
	if _, err := io.ReadFull(res.Body, first); err != nil || string(first) != "first part|" {
		t.Fatalf("first part: %q, %v", first, err)
	}
	close(release)
	rest, err := io.ReadAll(res.Body)
	if err != nil || string(rest) != "second part" {
		t.Errorf("rest: %q, %v", rest, err)
	}
}

func TestLargeUpload(t *testing.T) {
	lengths := make(chan int64, 1)
	srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		lengths <- r.ContentLength
		hashBody(w, r)
	}))
	data := payload(1, 5<<20) // five times the server's windows
	res, err := h2Client(t).Post(srv.url+"/upload", "application/octet-stream", bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	got, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != digest(data) {
		t.Errorf("server read %s, want %s", got, digest(data))
	}
	if n := recv(t, lengths, "the handler"); n != int64(len(data)) {
		t.Errorf("r.ContentLength = %d, want %d", n, len(data))
	}
}

func TestLargeDownloadToASlowReader(t *testing.T) {
	const clientWindow = 4 << 20 // x/net's client's stream window
	data := payload(2, 5<<20)
	var sent atomic.Int64
	srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for p := data; len(p) > 0; {
			n := min(len(p), 32<<10)
			if _, err := w.Write(p[:n]); err != nil {
				return
			}
			sent.Add(int64(n))
			p = p[n:]
		}
	}))
	res, err := h2Client(t).Get(srv.url + "/download")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	// Not reading yet: the server fills the client's window and must stop
	// there until the client reads.
	poll.Until(t, waitLimit, "the server to fill most of the client's window", func() bool {
		return sent.Load() >= clientWindow*3/4
	})
	if n := sent.Load(); n > clientWindow {
		t.Fatalf("the handler wrote %d bytes to a client that read none and gave a %d-byte window", n, clientWindow)
	}
	// Slowly at first: small reads give the window back in small steps.
	h := sha256.New()
	var n int64
	buf := make([]byte, 1<<10)
	for n < 256<<10 {
		k, err := res.Body.Read(buf)
		h.Write(buf[:k])
		n += int64(k)
		if err != nil {
			t.Fatalf("after %d bytes: %v", n, err)
		}
	}
	k, err := io.Copy(h, res.Body)
	if err != nil {
		t.Fatalf("after %d bytes: %v", n+k, err)
	}
	if got := fmt.Sprintf("%d %x", n+k, h.Sum(nil)); got != digest(data) {
		t.Errorf("client read %s, want %s", got, digest(data))
	}
}

func TestManyStreamsOnOneConnection(t *testing.T) {
	const streams, size = 50, 200 << 10
	var remotes sync.Map
	srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		remotes.Store(r.RemoteAddr, true)
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		slices.Reverse(b) // an answer that depends on every byte received
		w.Write(b)
	}))
	c := h2Client(t)
	errs := make(chan error, streams)
	for i := range streams {
		go func() {
			errs <- func() error {
				up := payload(byte(10+i), size)
				res, err := c.Post(srv.url+"/echo", "application/octet-stream", bytes.NewReader(up))
				if err != nil {
					return err
				}
				defer res.Body.Close()
				down, err := io.ReadAll(res.Body)
				if err != nil {
					return fmt.Errorf("stream %d: %w", i, err)
				}
				slices.Reverse(down)
				if !bytes.Equal(up, down) {
					return fmt.Errorf("stream %d: sent %s, got back %s reversed", i, digest(up), digest(down))
				}
				return nil
			}()
		}()
	}
	for range streams {
		if err := recv(t, errs, "a stream"); err != nil {
			t.Error(err)
		}
	}
	n := 0
	remotes.Range(func(any, any) bool { n++; return true })
	if n != 1 {
		t.Errorf("the streams came over %d connections, want 1", n)
	}
}

func TestRequestTrailers(t *testing.T) {
	type seen struct {
		before, after http.Header
		body          string
		err           error
	}
	seenCh := make(chan seen, 1)
	srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s := seen{before: r.Trailer.Clone()}
		b, err := io.ReadAll(r.Body)
		s.body, s.err, s.after = string(b), err, r.Trailer.Clone()
		seenCh <- s
	}))
	pr, pw := io.Pipe()
	req, err := http.NewRequest(http.MethodPost, srv.url+"/trailers", pr)
	if err != nil {
		t.Fatal(err)
	}
	req.Trailer = http.Header{"X-Checksum": nil, "X-Count": nil}
	go func() {
		io.WriteString(pw, "some ")
		io.WriteString(pw, "body")
		// The client reads the trailers once the body ends.
		req.Trailer.Set("X-Checksum", "abc123")
		req.Trailer.Set("X-Count", "2")
		pw.Close()
	}()
	res, err := h2Client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	s := recv(t, seenCh, "the handler")
	if s.err != nil || s.body != "some body" {
		t.Errorf("body %q, %v", s.body, s.err)
	}
	if want := (http.Header{"X-Checksum": nil, "X-Count": nil}); !equalHeaders(s.before, want) {
		t.Errorf("r.Trailer before the body's end = %v, want the announced keys %v", s.before, want)
	}
	if want := (http.Header{"X-Checksum": {"abc123"}, "X-Count": {"2"}}); !equalHeaders(s.after, want) {
		t.Errorf("r.Trailer after the body's end = %v, want %v", s.after, want)
	}
}

func equalHeaders(a, b http.Header) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		w, ok := b[k]
		if !ok || !slices.Equal(v, w) {
			return false
		}
	}
	return true
}

func TestResponseTrailers(t *testing.T) {
	srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/announced":
			w.Header().Set("Trailer", "X-Announced")
			io.WriteString(w, "body")
			w.(http.Flusher).Flush()
			w.Header().Set("X-Announced", "late value")
			w.Header().Set(http.TrailerPrefix+"X-Prefixed", "unannounced")
		case "/grpc":
			// The shape of a gRPC answer: a framed message, then the status
			// in the trailers.
			w.Header().Set("Content-Type", "application/grpc")
			w.Header().Set("Trailer", "Grpc-Status, Grpc-Message")
			w.Write([]byte{0, 0, 0, 0, 3, 'a', 'b', 'c'})
			w.Header().Set("Grpc-Status", "0")
			w.Header().Set("Grpc-Message", "fine")
		case "/grpc-no-message":
			// No body at all: HEADERS, then the trailers' HEADERS.
			w.Header().Set("Content-Type", "application/grpc")
			w.Header().Set(http.TrailerPrefix+"Grpc-Status", "12")
		}
	}))
	c := h2Client(t)
	for _, tc := range []struct {
		path, body      string
		announced, want http.Header
	}{
		{"/announced", "body", http.Header{"X-Announced": nil}, http.Header{"X-Announced": {"late value"}, "X-Prefixed": {"unannounced"}}},
		{"/grpc", "\x00\x00\x00\x00\x03abc", http.Header{"Grpc-Status": nil, "Grpc-Message": nil}, http.Header{"Grpc-Status": {"0"}, "Grpc-Message": {"fine"}}},
		{"/grpc-no-message", "", http.Header{}, http.Header{"Grpc-Status": {"12"}}},
	} {
		t.Run(tc.path[1:], func(t *testing.T) {
			req, err := http.NewRequest(http.MethodPost, srv.url+tc.path, strings.NewReader("\x00\x00\x00\x00\x00"))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/grpc")
			req.Header.Set("Te", "trailers")
			res, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			if tc.path != "/announced" && res.Header.Get("Content-Type") != "application/grpc" {
				t.Errorf("Content-Type = %q", res.Header.Get("Content-Type"))
			}
			if announced := res.Trailer.Clone(); !equalHeaders(announced, tc.announced) && !(len(announced) == 0 && len(tc.announced) == 0) {
				t.Errorf("res.Trailer before the body = %v, want %v", announced, tc.announced)
			}
			body, err := io.ReadAll(res.Body)
			if err != nil || string(body) != tc.body {
				t.Errorf("body %q, %v; want %q", body, err, tc.body)
			}
			if !equalHeaders(res.Trailer, tc.want) {
				t.Errorf("res.Trailer = %v, want %v", res.Trailer, tc.want)
			}
		})
	}
}

func TestEarlyHints(t *testing.T) {
	const link = "</style.css>; rel=preload; as=style"
	srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", link)
		w.WriteHeader(http.StatusEarlyHints)
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, "final")
	}))
	type interim struct {
		code int
		h    http.Header
	}
	var got []interim
	ctx := httptrace.WithClientTrace(t.Context(), &httptrace.ClientTrace{
		Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
			got = append(got, interim{code, http.Header(h).Clone()})
			return nil
		},
	})
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.url+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := h2Client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil || res.StatusCode != http.StatusOK || string(body) != "final" {
		t.Errorf("final answer %s %q, %v", res.Status, body, err)
	}
	if len(got) != 1 || got[0].code != http.StatusEarlyHints || got[0].h.Get("Link") != link {
		t.Errorf("1xx answers seen: %+v, want one 103 with Link %q", got, link)
	}
}

func TestExpectContinue(t *testing.T) {
	reached := make(chan struct{}, 1)
	release := make(chan struct{})
	srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/refuse" {
			http.Error(w, "not that body", http.StatusForbidden) // never reads it
			return
		}
		reached <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		hashBody(w, r)
	}))
	// net/http's client waits for the 100 before it sends the body; the
	// timeout is past the test's, so that a missing 100 fails the test.
	c := stdClient(t, func(tr *http.Transport) { tr.ExpectContinueTimeout = time.Minute })
	do := func(path string, body []byte, got100 *atomic.Bool) (*http.Response, error) {
		ctx := httptrace.WithClientTrace(t.Context(), &httptrace.ClientTrace{
			Got100Continue: func() { got100.Store(true) },
		})
		req, err := http.NewRequestWithContext(ctx, http.MethodPut, srv.url+path, bytes.NewReader(body))
		if err != nil {
			return nil, err
		}
		req.Header.Set("Expect", "100-continue")
		return c.Do(req)
	}

	t.Run("sent at the first read", func(t *testing.T) {
		var got100 atomic.Bool
		data := payload(3, 100<<10)
		type result struct {
			body string
			err  error
		}
		results := make(chan result, 1)
		go func() {
			res, err := do("/read", data, &got100)
			if err != nil {
				results <- result{err: err}
				return
			}
			defer res.Body.Close()
			b, err := io.ReadAll(res.Body)
			results <- result{string(b), err}
		}()
		recv(t, reached, "the handler")
		if got100.Load() {
			t.Error("100 Continue sent before the handler read the body")
		}
		close(release)
		r := recv(t, results, "the answer")
		if r.err != nil || r.body != digest(data) {
			t.Errorf("answer %q, %v; want %s", r.body, r.err, digest(data))
		}
		if !got100.Load() {
			t.Error("no 100 Continue")
		}
	})

	t.Run("not sent when the body is not read", func(t *testing.T) {
		var got100 atomic.Bool
		res, err := do("/refuse", []byte("unwanted"), &got100)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusForbidden {
			t.Errorf("status %s", res.Status)
		}
		// A 100 would have come before the final answer on the same stream.
		if got100.Load() {
			t.Error("100 Continue sent for a body the handler never read")
		}
	})
}

func TestBodylessAnswers(t *testing.T) {
	type writeResult struct {
		path string
		n    int
		err  error
	}
	results := make(chan writeResult, 1)
	srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var n int
		var err error
		switch r.URL.Path {
		case "/small":
			n, err = w.Write([]byte("eleven char"))
		case "/large":
			n, err = w.Write(make([]byte, 10000))
		case "/204":
			w.WriteHeader(http.StatusNoContent)
			n, err = w.Write([]byte("x"))
		case "/304":
			w.WriteHeader(http.StatusNotModified)
			n, err = w.Write([]byte("x"))
		case "/declared":
			w.Header().Set("Content-Length", "5")
			if _, err := io.WriteString(w, "hello"); err != nil {
				results <- writeResult{r.URL.Path, 0, err}
				return
			}
			n, err = io.WriteString(w, "!")
		}
		results <- writeResult{r.URL.Path, n, err}
	}))
	c := h2Client(t)

	t.Run("HEAD", func(t *testing.T) {
		for _, tc := range []struct {
			path    string
			length  int64
			written int
		}{{"/small", 11, 11}, {"/large", -1, 10000}} {
			res, err := c.Head(srv.url + tc.path)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			if res.ContentLength != tc.length {
				t.Errorf("HEAD %s: ContentLength %d, want %d", tc.path, res.ContentLength, tc.length)
			}
			if r := recv(t, results, "the handler"); r.err != nil || r.n != tc.written {
				t.Errorf("HEAD %s: Write = %d, %v; want %d, nil", tc.path, r.n, r.err, tc.written)
			}
		}
		// On the wire: no body byte, even for a body past the held 4 KiB.
		rc := dialRaw(t, srv.addr)
		for i, path := range []string{"/small", "/large"} {
			id := uint32(2*i + 1)
			rc.request(id, http.MethodHead, path, true)
			r := rc.response(id)
			if len(r.body) != 0 {
				t.Errorf("HEAD %s: %d body bytes sent", path, len(r.body))
			}
			recv(t, results, "the handler")
		}
	})

	for _, path := range []string{"/204", "/304"} {
		t.Run(path[1:], func(t *testing.T) {
			res, body := get(t, c, srv.url+path)
			if strconv.Itoa(res.StatusCode) != path[1:] || body != "" {
				t.Errorf("got %s with %q", res.Status, body)
			}
			if r := recv(t, results, "the handler"); !errors.Is(r.err, http.ErrBodyNotAllowed) || r.n != 0 {
				t.Errorf("Write on a %s = %d, %v; want http.ErrBodyNotAllowed", path[1:], r.n, r.err)
			}
		})
	}

	t.Run("past Content-Length", func(t *testing.T) {
		res, body := get(t, c, srv.url+"/declared")
		if body != "hello" || res.ContentLength != 5 {
			t.Errorf("got %q with ContentLength %d", body, res.ContentLength)
		}
		if r := recv(t, results, "the handler"); !errors.Is(r.err, http.ErrContentLength) || r.n != 0 {
			t.Errorf("Write past Content-Length = %d, %v; want http.ErrContentLength", r.n, r.err)
		}
	})
}

func TestClientResetCancelsTheRequest(t *testing.T) {
	started := make(chan struct{}, 1)
	ended := make(chan error, 1)
	srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/flushed" {
			w.(http.Flusher).Flush()
		}
		started <- struct{}{}
		<-r.Context().Done()
		ended <- r.Context().Err()
	}))
	c := h2Client(t)

	t.Run("request context canceled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.url+"/", nil)
		if err != nil {
			t.Fatal(err)
		}
		errs := make(chan error, 1)
		go func() {
			res, err := c.Do(req)
			if err == nil {
				res.Body.Close()
			}
			errs <- err
		}()
		recv(t, started, "the handler")
		cancel()
		if err := recv(t, ended, "the handler to see its context end"); !errors.Is(err, context.Canceled) {
			t.Errorf("the request's context ended with %v", err)
		}
		if err := recv(t, errs, "the client"); !errors.Is(err, context.Canceled) {
			t.Errorf("client: %v", err)
		}
	})

	t.Run("body closed", func(t *testing.T) {
		res, err := c.Get(srv.url + "/flushed")
		if err != nil {
			t.Fatal(err)
		}
		recv(t, started, "the handler")
		res.Body.Close() // mid-answer: the client resets the stream
		if err := recv(t, ended, "the handler to see its context end"); !errors.Is(err, context.Canceled) {
			t.Errorf("the request's context ended with %v", err)
		}
	})
}

func TestPanicResetsTheStream(t *testing.T) {
	var remotes sync.Map
	srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		remotes.Store(r.RemoteAddr, true)
		switch r.URL.Path {
		case "/ok":
			io.WriteString(w, "ok")
			return
		case "/held":
			io.WriteString(w, "partial") // held, never flushed
		default:
			io.WriteString(w, "partial")
			w.(http.Flusher).Flush()
		}
		if strings.HasSuffix(r.URL.Path, "abort") {
			panic(http.ErrAbortHandler)
		}
		panic("handler failed on purpose")
	}))
	c := h2Client(t)
	for _, path := range []string{"/string", "/abort", "/held"} {
		t.Run(path[1:], func(t *testing.T) {
			res, err := c.Get(srv.url + path)
			if err == nil {
				defer res.Body.Close()
				var b []byte
				b, err = io.ReadAll(res.Body)
				if err == nil {
					t.Fatalf("the client read %s %q to its end, want a reset stream", res.Status, b)
				}
			}
			var se http2.StreamError
			if !errors.As(err, &se) || se.Code != http2.ErrCodeInternal {
				t.Errorf("got %v, want a stream error INTERNAL_ERROR", err)
			}
			res, body := get(t, c, srv.url+"/ok")
			if res.StatusCode != http.StatusOK || body != "ok" {
				t.Errorf("the next request got %s %q", res.Status, body)
			}
		})
	}
	n := 0
	remotes.Range(func(any, any) bool { n++; return true })
	if n != 1 {
		t.Errorf("the requests came over %d connections, want 1: a panic must not cost the connection", n)
	}
}

// hold is a handler whose requests wait until the test lets them go (or
// they end), telling the test each time one starts.
type hold struct {
	started chan string // each request's path as it starts
	release chan struct{}
}

func newHold() *hold { return &hold{started: make(chan string, 16), release: make(chan struct{})} }

func (h *hold) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/quick" {
		io.WriteString(w, "quick")
		return
	}
	h.started <- r.URL.Path
	select {
	case <-h.release:
		io.WriteString(w, "released "+r.URL.Path)
	case <-r.Context().Done():
	}
}

func TestMaxConcurrentStreams(t *testing.T) {
	h := newHold()
	srv := serve(t, h, func(s *h2serve.Server) { s.MaxConcurrentStreams = 2 })
	rc := dialRaw(t, srv.addr)
	if got := rc.settings[http2.SettingMaxConcurrentStreams]; got != 2 {
		t.Errorf("SETTINGS_MAX_CONCURRENT_STREAMS = %d, want 2", got)
	}
	rc.request(1, http.MethodGet, "/one", true)
	rc.request(3, http.MethodGet, "/three", true)
	recv(t, h.started, "the first handler")
	recv(t, h.started, "the second handler")
	rc.request(5, http.MethodGet, "/five", true)
	f := rc.nextSignificant()
	if rst, ok := f.(*http2.RSTStreamFrame); !ok || rst.StreamID != 5 ||
		rst.ErrCode != http2.ErrCodeRefusedStream && rst.ErrCode != http2.ErrCodeProtocol {
		t.Fatalf("the third stream got %s, want RST_STREAM REFUSED_STREAM", describe(f))
	}
	close(h.release)
	for id, r := range rc.responses(1, 3) {
		if r.status != "200" || !strings.HasPrefix(string(r.body), "released") {
			t.Errorf("stream %d: %s %q", id, r.status, r.body)
		}
	}
	rc.request(7, http.MethodGet, "/quick", true)
	if r := rc.response(7); r.status != "200" || string(r.body) != "quick" {
		t.Errorf("after the release: %s %q", r.status, r.body)
	}
}

// A stream stops counting against SETTINGS_MAX_CONCURRENT_STREAMS once both
// ends have sent END_STREAM (RFC 9113, 5.1.2), so a client that opens the
// next stream as soon as it reads the previous answer's end is within the
// limit and must be served.
func TestStreamSlotFreedWithTheAnswersEnd(t *testing.T) {
	srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}), func(s *h2serve.Server) { s.MaxConcurrentStreams = 1 })
	rc := dialRaw(t, srv.addr)
	refused := 0
	const n = 1000
	for i := range n {
		id := uint32(2*i + 1)
		rc.request(id, http.MethodGet, "/", true)
		for {
			f := rc.nextSignificant()
			if rst, ok := f.(*http2.RSTStreamFrame); ok && rst.StreamID == id {
				refused++
				break
			}
			if f.Header().StreamID == id && f.Header().Flags.Has(http2.FlagDataEndStream) {
				break
			}
		}
	}
	if refused > 0 {
		t.Errorf("%d of %d requests, each sent after the previous answer ended, were refused with a limit of 1 stream", refused, n)
	}
}

// Answers are encoded with a small table (h2wire.SmallTable): the first
// block tells the client its size, and a client that then allows no table
// at all (SETTINGS_HEADER_TABLE_SIZE 0) reads every answer, long fields
// and trailers included.
func TestAnswersSmallTable(t *testing.T) {
	long := strings.Repeat("v", 300)
	srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("X-Long", long)
		w.Header().Set("Trailer", "X-Done")
		_, _ = io.WriteString(w, "ok")
		w.Header().Set("X-Done", "yes")
	}))
	rc := dialRaw(t, srv.addr)
	// The first answer's block, as it is on the wire.
	dec := rc.fr.ReadMetaHeaders
	rc.fr.ReadMetaHeaders = nil
	rc.request(1, http.MethodGet, "/", true)
	hf, ok := rc.nextSignificant().(*http2.HeadersFrame)
	if !ok {
		t.Fatal("no HEADERS first")
	}
	if frag := hf.HeaderBlockFragment(); !bytes.HasPrefix(frag, []byte{0x3f, 0xe1, 0x03}) {
		t.Fatalf("the first block starts % x, want a dynamic table size update to 512 (3f e1 03)", frag[:min(len(frag), 4)])
	}
	rc.fr.ReadMetaHeaders = dec
	for f := rc.next(); ; f = rc.next() { // the rest of stream 1
		if h, ok := f.(*http2.MetaHeadersFrame); ok && h.StreamEnded() {
			break
		}
	}
	if err := rc.fr.WriteSettings(http2.Setting{ID: http2.SettingHeaderTableSize, Val: 0}); err != nil {
		t.Fatal(err)
	}
	dec.SetAllowedMaxDynamicTableSize(0)
	for id := uint32(3); id <= 7; id += 2 {
		rc.request(id, http.MethodGet, "/", true)
		var head, trailers *http2.MetaHeadersFrame
		for trailers == nil {
			switch f := rc.nextSignificant().(type) {
			case *http2.MetaHeadersFrame:
				if head == nil {
					head = f
					if got := f.PseudoValue("status"); got != "200" {
						t.Fatalf("stream %d: status %q", id, got)
					}
					var gotLong bool
					for _, hf := range f.RegularFields() {
						gotLong = gotLong || hf.Name == "x-long" && hf.Value == long
					}
					if !gotLong {
						t.Errorf("stream %d: X-Long did not arrive whole", id)
					}
				} else {
					trailers = f
				}
			case *http2.DataFrame:
			default:
				t.Fatalf("stream %d: got %s", id, describe(f))
			}
		}
		if v := trailers.RegularFields(); len(v) != 1 || v[0].Name != "x-done" || v[0].Value != "yes" {
			t.Errorf("stream %d: trailers %+v", id, v)
		}
	}
}

// HEADERS on a stream both ends have closed is a connection error
// STREAM_CLOSED (RFC 9113, 5.1; h2spec http2/5.1/12), however soon it
// follows the answer's END_STREAM.
func TestHeadersOnAClosedStream(t *testing.T) {
	srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}))
	const n = 500
	var wrong []string
	for range n {
		rc := dialRaw(t, srv.addr)
		rc.request(1, http.MethodGet, "/", true)
		rc.response(1)
		rc.request(1, http.MethodGet, "/", true)
		f := rc.nextSignificant()
		if ga, ok := f.(*http2.GoAwayFrame); !ok || ga.ErrCode != http2.ErrCodeStreamClosed {
			wrong = append(wrong, describe(f))
		}
		rc.nc.Close()
	}
	if len(wrong) > 0 {
		t.Errorf("%d of %d HEADERS sent on a closed stream got something else than GOAWAY STREAM_CLOSED, first %s", len(wrong), n, wrong[0])
	}
}

func TestWireErrors(t *testing.T) {
	h := newHold()
	srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/read":
			hashBody(w, r)
		case "/hold":
			h.ServeHTTP(w, r)
		default:
			io.WriteString(w, "ok")
		}
	}), func(s *h2serve.Server) { s.MaxHeaderBytes = 1024 })

	goAway := func(t *testing.T, rc *rawConn, code http2.ErrCode) {
		t.Helper()
		rc.expectGoAway(code)
		rc.expectClosed()
	}
	stillServes := func(t *testing.T, rc *rawConn, id uint32) {
		t.Helper()
		rc.request(id, http.MethodGet, "/", true)
		if r := rc.response(id); r.status != "200" || string(r.body) != "ok" {
			t.Errorf("the next request got %s %q", r.status, r.body)
		}
	}

	t.Run("HEADERS on an even stream", func(t *testing.T) {
		rc := dialRaw(t, srv.addr)
		rc.request(2, http.MethodGet, "/", true)
		goAway(t, rc, http2.ErrCodeProtocol)
	})
	t.Run("DATA on an idle stream", func(t *testing.T) {
		rc := dialRaw(t, srv.addr)
		rc.data(1, true, []byte("x"))
		goAway(t, rc, http2.ErrCodeProtocol)
	})
	t.Run("frame past SETTINGS_MAX_FRAME_SIZE", func(t *testing.T) {
		rc := dialRaw(t, srv.addr)
		rc.request(1, http.MethodPost, "/read", false)
		rc.data(1, true, make([]byte, 16385))
		goAway(t, rc, http2.ErrCodeFrameSize)
	})
	t.Run("invalid preface", func(t *testing.T) {
		// h2spec's http2/3.5/2, with its bytes: longer than the preface, so
		// that a server closing with them unread resets the connection.
		c, err := net.Dial("tcp", srv.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(waitLimit))
		if _, err := io.WriteString(c, "INVALID CONNECTION PREFACE\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		// Closed, and cleanly: a reset can make a client drop what the
		// server sent before it (a GOAWAY, which the server may send).
		if _, err := io.ReadAll(c); err != nil {
			t.Errorf("after an invalid preface: %v, want the connection closed with FIN", err)
		}
	})
	t.Run("first frame not SETTINGS", func(t *testing.T) {
		rc := dialRawNoSettings(t, srv.addr)
		if err := rc.fr.WritePing(false, [8]byte{1}); err != nil {
			t.Fatal(err)
		}
		goAway(t, rc, http2.ErrCodeProtocol)
	})
	t.Run("connection-specific header", func(t *testing.T) {
		rc := dialRaw(t, srv.addr)
		rc.request(1, http.MethodGet, "/", true, "connection", "keep-alive")
		rc.expectReset(1, http2.ErrCodeProtocol)
		stillServes(t, rc, 3)
	})
	t.Run("te other than trailers", func(t *testing.T) {
		rc := dialRaw(t, srv.addr)
		rc.request(1, http.MethodGet, "/", true, "te", "gzip")
		rc.expectReset(1, http2.ErrCodeProtocol)
		stillServes(t, rc, 3)
	})
	t.Run("DATA shorter than content-length", func(t *testing.T) {
		rc := dialRaw(t, srv.addr)
		rc.request(1, http.MethodPost, "/read", false, "content-length", "10")
		rc.data(1, true, []byte("abc"))
		rc.expectReset(1, http2.ErrCodeProtocol)
		stillServes(t, rc, 3)
	})
	t.Run("DATA longer than content-length", func(t *testing.T) {
		rc := dialRaw(t, srv.addr)
		rc.request(1, http.MethodPost, "/read", false, "content-length", "2")
		rc.data(1, true, []byte("abc"))
		rc.expectReset(1, http2.ErrCodeProtocol)
		stillServes(t, rc, 3)
	})
	t.Run("header list past MaxHeaderBytes", func(t *testing.T) {
		rc := dialRaw(t, srv.addr)
		if got := rc.settings[http2.SettingMaxHeaderListSize]; got != 1024 {
			t.Errorf("SETTINGS_MAX_HEADER_LIST_SIZE = %d, want 1024", got)
		}
		rc.request(1, http.MethodGet, "/", true, bigHeaders()...)
		if r := rc.response(1); r.status != "431" {
			t.Errorf("got %s, want 431", r.status)
		}
		stillServes(t, rc, 3)
	})
	t.Run("header list past MaxHeaderBytes with a body to come", func(t *testing.T) {
		rc := dialRaw(t, srv.addr)
		rc.request(1, http.MethodPost, "/read", false, bigHeaders()...)
		// The 431 is a complete answer: its HEADERS end the stream (RFC
		// 9113, 8.1); the server may then reset the stream with NO_ERROR
		// so that the client stops sending.
		f := rc.nextSignificant()
		mh, ok := f.(*http2.MetaHeadersFrame)
		if !ok || mh.StreamID != 1 || mh.PseudoValue("status") != "431" {
			t.Fatalf("got %s, want a 431", describe(f))
		}
		if !mh.StreamEnded() {
			t.Errorf("the 431's HEADERS do not end the stream: a client reading the answer sees it cut short by the reset that follows")
		}
		rc.request(3, http.MethodGet, "/", true)
		for {
			switch f := rc.nextSignificant().(type) {
			case *http2.RSTStreamFrame:
				if f.StreamID != 1 || f.ErrCode != http2.ErrCodeNo {
					t.Fatalf("got %s", describe(f))
				}
				continue
			case *http2.MetaHeadersFrame:
				if f.StreamID != 3 || f.PseudoValue("status") != "200" {
					t.Fatalf("got %s, want the next request's 200", describe(f))
				}
			default:
				t.Fatalf("got %s, want the next request's 200", describe(f))
			}
			break
		}
	})
	t.Run("PING", func(t *testing.T) {
		rc := dialRaw(t, srv.addr)
		data := [8]byte{1, 2, 3, 4, 5, 6, 7, 8}
		if err := rc.fr.WritePing(false, data); err != nil {
			t.Fatal(err)
		}
		f := rc.nextSignificant()
		if p, ok := f.(*http2.PingFrame); !ok || !p.IsAck() || p.Data != data {
			t.Errorf("got %s, want a PING ack of %v", describe(f), data)
		}
	})
	t.Run("send window past 2^31-1", func(t *testing.T) {
		rc := dialRaw(t, srv.addr)
		if err := rc.fr.WriteWindowUpdate(0, 1<<31-1); err != nil {
			t.Fatal(err)
		}
		goAway(t, rc, http2.ErrCodeFlowControl)
	})
	t.Run("DATA past the connection window", func(t *testing.T) {
		// Two streams whose handlers read nothing, each within its own
		// 1 MiB window, and together past the connection's 1 MiB.
		rc := dialRaw(t, srv.addr)
		rc.request(1, http.MethodPost, "/hold", false)
		rc.request(3, http.MethodPost, "/hold", false)
		recv(t, h.started, "the first handler")
		recv(t, h.started, "the second handler")
		chunk := make([]byte, 16384)
		sent := 0
		for range 40 {
			rc.data(1, false, chunk)
			rc.data(3, false, chunk)
			sent += 2 * len(chunk)
		}
		// The PING's ack comes after the server read all the DATA.
		if err := rc.fr.WritePing(false, [8]byte{9}); err != nil {
			t.Fatal(err)
		}
		f := rc.nextSignificant()
		if ga, ok := f.(*http2.GoAwayFrame); !ok || ga.ErrCode != http2.ErrCodeFlowControl {
			t.Errorf("after %d bytes of DATA against a connection window of %d the server sent %s, want GOAWAY FLOW_CONTROL_ERROR",
				sent, 1<<20, describe(f))
		}
	})
}

// bigHeaders is a header list of 2000 bytes in fields of 200: past a
// MaxHeaderBytes of 1024, though no field is. (A single field past the
// limit is an HPACK string the Framer refuses with a connection error
// before any size accounting.)
func bigHeaders() []string {
	var fields []string
	for i := range 10 {
		fields = append(fields, fmt.Sprintf("x-big-%d", i), strings.Repeat("b", 200))
	}
	return fields
}

func TestShutdown(t *testing.T) {
	t.Run("graceful", func(t *testing.T) {
		h := newHold()
		srv := serve(t, h)
		rc := dialRaw(t, srv.addr)
		rc.request(1, http.MethodGet, "/in-flight", true)
		recv(t, h.started, "the handler")
		done := make(chan error, 1)
		go func() { done <- srv.Shutdown(t.Context()) }()
		ga := rc.expectGoAway(http2.ErrCodeNo)
		if ga.LastStreamID != 1 {
			t.Errorf("GOAWAY's last stream is %d, want 1", ga.LastStreamID)
		}
		// A stream past the GOAWAY's last is refused or ignored (RFC 9113,
		// 6.8); the PING's ack marks where the server's answer to it ends.
		rc.request(3, http.MethodGet, "/too-late", true)
		if err := rc.fr.WritePing(false, [8]byte{3}); err != nil {
			t.Fatal(err)
		}
		for acked := false; !acked; {
			switch f := rc.nextSignificant().(type) {
			case *http2.RSTStreamFrame:
				if f.StreamID != 3 || f.ErrCode != http2.ErrCodeRefusedStream {
					t.Fatalf("got %s, want stream 3 refused", describe(f))
				}
			case *http2.PingFrame:
				acked = true
			default:
				t.Fatalf("got %s, want stream 3 refused or ignored", describe(f))
			}
		}
		select {
		case err := <-done:
			t.Fatalf("Shutdown returned %v with a request in flight", err)
		default:
		}
		close(h.release)
		if r := rc.response(1); r.status != "200" || string(r.body) != "released /in-flight" {
			t.Errorf("the in-flight request got %s %q", r.status, r.body)
		}
		rc.expectClosed()
		rc.nc.Close() // as a client does once the server closed
		if err := recv(t, done, "Shutdown"); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		select {
		case path := <-h.started:
			t.Errorf("%s was served after the GOAWAY", path)
		default:
		}
	})

	t.Run("context ends first", func(t *testing.T) {
		h := newHold()
		canceled := make(chan struct{})
		srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			h.ServeHTTP(w, r)
			if r.Context().Err() != nil {
				close(canceled)
			}
		}))
		rc := dialRaw(t, srv.addr)
		rc.request(1, http.MethodGet, "/stuck", true)
		recv(t, h.started, "the handler")
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- srv.Shutdown(ctx) }()
		rc.expectGoAway(http2.ErrCodeNo)
		cancel()
		if err := recv(t, done, "Shutdown"); !errors.Is(err, context.Canceled) {
			t.Errorf("Shutdown = %v, want context.Canceled", err)
		}
		recv(t, canceled, "the handler's context to end")
		rc.expectClosed()
		// A server shut down takes no new connections.
		c, err := net.Dial("tcp", srv.addr)
		if err == nil {
			defer c.Close()
			c.Write([]byte(h2serve.ClientPreface))
			c.SetReadDeadline(time.Now().Add(waitLimit))
			if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil {
				t.Errorf("a new connection after Shutdown read %d bytes, %v", n, err)
			}
		}
	})
}

// Shutdown as the last answer ends: the answer and the GOAWAY both reach
// the client before the connection closes. Without the GOAWAY the client
// cannot tell whether a request it sent meanwhile was seen (RFC 9113, 6.8).
func TestShutdownRacingTheLastAnswer(t *testing.T) {
	const n = 300
	lostAnswer, lostGoAway := 0, 0
	for range n {
		h := newHold()
		srv := serve(t, h)
		rc := dialRaw(t, srv.addr)
		rc.request(1, http.MethodGet, "/last", true)
		recv(t, h.started, "the handler")
		done := make(chan error, 1)
		go func() { done <- srv.Shutdown(t.Context()) }()
		close(h.release)
		sawGoAway, answered := false, false
		for {
			f, err := rc.fr.ReadFrame()
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
					t.Fatalf("reading: %v", err)
				}
				break
			}
			switch f := f.(type) {
			case *http2.GoAwayFrame:
				if f.ErrCode != http2.ErrCodeNo || f.LastStreamID != 1 {
					t.Fatalf("got %s", describe(f))
				}
				sawGoAway = true
			case *http2.DataFrame:
				answered = answered || f.StreamEnded()
			}
		}
		if !answered {
			lostAnswer++
		}
		if !sawGoAway {
			lostGoAway++
		}
		rc.nc.Close() // as a client does once the server closed
		if err := recv(t, done, "Shutdown"); err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
	}
	if lostAnswer+lostGoAway > 0 {
		t.Errorf("of %d connections shut down as their last answer ended, %d closed before that answer was sent whole, %d before the GOAWAY was",
			n, lostAnswer, lostGoAway)
	}
}

// A client that says GOAWAY and then, before it sees the server close, a
// last PING (h2spec's generic/3.8/1 and http2/7/1) must see the connection
// end cleanly: a server that closes with the client's bytes unread, or
// arriving after it closed, makes the kernel reset the connection, and a
// reset can make the client lose what the server sent before it.
func TestClientGoAwayEndsTheConnectionCleanly(t *testing.T) {
	srv := serve(t, http.NotFoundHandler())
	const n = 500
	resets := 0
	for range n {
		rc := dialRaw(t, srv.addr)
		if err := rc.fr.WriteGoAway(0, http2.ErrCodeNo, []byte("done")); err != nil {
			t.Fatal(err)
		}
		// The PING may find the connection closed: a write error is not
		// the test's concern, what the client then reads is.
		_ = rc.fr.WritePing(false, [8]byte{'l', 'a', 's', 't'})
		for {
			f, err := rc.fr.ReadFrame()
			if err == nil {
				if p, ok := f.(*http2.PingFrame); !ok || !p.IsAck() {
					t.Fatalf("got %s", describe(f))
				}
				continue
			}
			if errors.Is(err, syscall.ECONNRESET) {
				resets++
			} else if !errors.Is(err, io.EOF) {
				t.Fatalf("reading: %v", err)
			}
			break
		}
		rc.nc.Close()
	}
	if resets > 0 {
		t.Errorf("%d of %d connections ended with a reset after the client's GOAWAY", resets, n)
	}
}

// readingConn tells when the server first reads from it: by then
// ServeConn has registered the connection with its server.
type readingConn struct {
	net.Conn
	reading chan struct{}
	once    sync.Once
}

func (c *readingConn) Read(p []byte) (int, error) {
	c.once.Do(func() { close(c.reading) })
	return c.Conn.Read(p)
}

// A connection shut down before its client's preface arrives still gets
// SETTINGS as the server's first frame (RFC 9113, 3.4), or no frame at all.
func TestShutdownBeforeThePreface(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	client.SetDeadline(time.Now().Add(waitLimit))
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	s := &h2serve.Server{Handler: http.NotFoundHandler()}
	rc := &readingConn{Conn: sc, reading: make(chan struct{})}
	served := make(chan struct{})
	go func() { defer close(served); s.ServeConn(rc) }()
	recv(t, rc.reading, "the server to read the preface")
	ctx, cancel := context.WithTimeout(t.Context(), waitLimit)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	recv(t, served, "ServeConn to return")
	fr := http2.NewFramer(io.Discard, client)
	f, err := fr.ReadFrame()
	if err == nil {
		if _, ok := f.(*http2.SettingsFrame); !ok {
			t.Errorf("the server's first frame is %s, want SETTINGS", describe(f))
		}
	}
}

func TestIdleTimeout(t *testing.T) {
	const idle = 200 * time.Millisecond
	srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/long" {
			// A request that runs for several idle timeouts.
			select {
			case <-time.After(3 * idle):
			case <-r.Context().Done():
				return
			}
		}
		io.WriteString(w, "done")
	}), func(s *h2serve.Server) { s.IdleTimeout = idle })

	t.Run("idle connection", func(t *testing.T) {
		start := time.Now()
		rc := dialRaw(t, srv.addr)
		rc.request(1, http.MethodGet, "/", true)
		rc.response(1)
		ended := time.Now()
		rc.expectGoAway(http2.ErrCodeNo)
		if d := time.Since(ended); d < idle-idle/10 {
			t.Errorf("GOAWAY %v after the last answer ended, want at least the idle timeout %v", d, idle)
		}
		rc.expectClosed()
		if d := time.Since(start); d > waitLimit/2 {
			t.Errorf("the idle connection took %v to close", d)
		}
	})

	t.Run("long request", func(t *testing.T) {
		rc := dialRaw(t, srv.addr)
		rc.request(1, http.MethodGet, "/long", true)
		// The answer must come whole before any GOAWAY: response fails on
		// a GOAWAY or a closed connection.
		if r := rc.response(1); r.status != "200" || string(r.body) != "done" {
			t.Errorf("got %s %q", r.status, r.body)
		}
		rc.expectGoAway(http2.ErrCodeNo)
		rc.expectClosed()
	})
}

// rawConn is an HTTP/2 client made of a Framer and an HPACK encoder, to
// send what real clients would not and check the exact frames that come
// back.
type rawConn struct {
	t        *testing.T
	nc       net.Conn
	fr       *http2.Framer
	enc      *hpack.Encoder
	hbuf     bytes.Buffer
	settings map[http2.SettingID]uint32 // the server's
}

// dialRawNoSettings connects and sends the preface's magic string only.
func dialRawNoSettings(t *testing.T, addr string) *rawConn {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	// One deadline for the whole conversation: every read and write fails
	// rather than hangs.
	nc.SetDeadline(time.Now().Add(waitLimit))
	if _, err := io.WriteString(nc, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	rc := &rawConn{t: t, nc: nc, fr: http2.NewFramer(nc, nc), settings: map[http2.SettingID]uint32{}}
	rc.fr.AllowIllegalWrites = true
	rc.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	rc.enc = hpack.NewEncoder(&rc.hbuf)
	return rc
}

// dialRaw connects and completes the handshake. Its windows are large, so
// that the server's answers never wait for this client's WINDOW_UPDATEs.
func dialRaw(t *testing.T, addr string) *rawConn {
	t.Helper()
	rc := dialRawNoSettings(t, addr)
	if err := rc.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 30}); err != nil {
		t.Fatal(err)
	}
	if err := rc.fr.WriteWindowUpdate(0, 1<<30); err != nil {
		t.Fatal(err)
	}
	gotSettings, gotAck := false, false
	for !gotSettings || !gotAck {
		switch f := rc.next().(type) {
		case *http2.SettingsFrame:
			if f.IsAck() {
				gotAck = true
				continue
			}
			gotSettings = true
			f.ForeachSetting(func(s http2.Setting) error { rc.settings[s.ID] = s.Val; return nil })
			if err := rc.fr.WriteSettingsAck(); err != nil {
				t.Fatal(err)
			}
		case *http2.WindowUpdateFrame:
		default:
			t.Fatalf("got %s during the handshake", describe(f))
		}
	}
	return rc
}

func (rc *rawConn) next() http2.Frame {
	rc.t.Helper()
	f, err := rc.fr.ReadFrame()
	if err != nil {
		rc.t.Fatalf("reading a frame: %v", err)
	}
	return f
}

// nextSignificant skips the frames that only keep the connection going.
func (rc *rawConn) nextSignificant() http2.Frame {
	rc.t.Helper()
	for {
		switch f := rc.next().(type) {
		case *http2.SettingsFrame, *http2.WindowUpdateFrame:
		default:
			return f
		}
	}
}

func (rc *rawConn) headers(id uint32, end bool, fields ...string) {
	rc.t.Helper()
	rc.hbuf.Reset()
	for i := 0; i+1 < len(fields); i += 2 {
		rc.enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	err := rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: rc.hbuf.Bytes(), EndStream: end, EndHeaders: true})
	if err != nil {
		rc.t.Fatal(err)
	}
}

func (rc *rawConn) request(id uint32, method, path string, end bool, extra ...string) {
	rc.t.Helper()
	rc.headers(id, end, append([]string{":method", method, ":scheme", "http", ":authority", "h2serve.test", ":path", path}, extra...)...)
}

func (rc *rawConn) data(id uint32, end bool, p []byte) {
	rc.t.Helper()
	if err := rc.fr.WriteData(id, end, p); err != nil {
		rc.t.Fatal(err)
	}
}

func (rc *rawConn) expectGoAway(code http2.ErrCode) *http2.GoAwayFrame {
	rc.t.Helper()
	f := rc.nextSignificant()
	ga, ok := f.(*http2.GoAwayFrame)
	if !ok || ga.ErrCode != code {
		rc.t.Fatalf("got %s, want GOAWAY %v", describe(f), code)
	}
	return ga
}

func (rc *rawConn) expectReset(id uint32, code http2.ErrCode) {
	rc.t.Helper()
	f := rc.nextSignificant()
	if rst, ok := f.(*http2.RSTStreamFrame); !ok || rst.StreamID != id || rst.ErrCode != code {
		rc.t.Fatalf("got %s, want RST_STREAM %v on stream %d", describe(f), code, id)
	}
}

// expectClosed reads until the server's end of the connection closes.
func (rc *rawConn) expectClosed() {
	rc.t.Helper()
	f, err := rc.fr.ReadFrame()
	if err == nil {
		rc.t.Fatalf("got %s, want the connection closed", describe(f))
	}
	if !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
		rc.t.Fatalf("got %v, want the connection closed", err)
	}
}

// rawResponse is one answer as the raw client saw it.
type rawResponse struct {
	status string // the final one
	body   []byte
}

func (rc *rawConn) response(id uint32) *rawResponse {
	rc.t.Helper()
	return rc.responses(id)[id]
}

// responses reads the answers of streams ids, failing on a reset or a
// GOAWAY.
func (rc *rawConn) responses(ids ...uint32) map[uint32]*rawResponse {
	rc.t.Helper()
	out := map[uint32]*rawResponse{}
	for _, id := range ids {
		out[id] = &rawResponse{}
	}
	for open := len(ids); open > 0; {
		f := rc.nextSignificant()
		r := out[f.Header().StreamID]
		if r == nil {
			rc.t.Fatalf("got %s while reading the answers of streams %v", describe(f), ids)
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			// 1xx answers come before the final one, trailers after it.
			if status := f.PseudoValue("status"); r.status == "" && !strings.HasPrefix(status, "1") {
				r.status = status
			}
		case *http2.DataFrame:
			r.body = append(r.body, f.Data()...)
		default:
			rc.t.Fatalf("got %s while reading the answers of streams %v", describe(f), ids)
		}
		if f.Header().Flags.Has(http2.FlagDataEndStream) {
			open--
		}
	}
	return out
}

func describe(f http2.Frame) string {
	switch f := f.(type) {
	case *http2.GoAwayFrame:
		return fmt.Sprintf("GOAWAY %v last stream %d %q", f.ErrCode, f.LastStreamID, f.DebugData())
	case *http2.RSTStreamFrame:
		return fmt.Sprintf("RST_STREAM %v on stream %d", f.ErrCode, f.StreamID)
	case *http2.MetaHeadersFrame:
		return fmt.Sprintf("%v %v", f.Header(), f.Fields)
	}
	return fmt.Sprint(f.Header())
}

// sameHandler answers the requests TestSameAnswersAsNetHTTP makes, each
// path one case of what a handler may do.
func sameHandler(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	switch r.URL.Path {
	case "/hello":
		io.WriteString(w, "hello")
	case "/echo":
		b, _ := io.ReadAll(r.Body)
		h.Set("Content-Type", "text/plain")
		fmt.Fprintf(w, "got %q", b)
	case "/request":
		// The request as the handler sees it.
		b, err := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %s %s %s\n", r.Method, r.Host, r.RequestURI, r.URL, r.Proto)
		fmt.Fprintf(w, "ContentLength %d TransferEncoding %q Close %v TLS %v\n", r.ContentLength, r.TransferEncoding, r.Close, r.TLS != nil)
		fmt.Fprintf(w, "body %q %v\n", b, err)
		for _, k := range slices.Sorted(maps.Keys(r.Header)) {
			fmt.Fprintf(w, "%s: %q\n", k, r.Header[k])
		}
		for _, k := range slices.Sorted(maps.Keys(r.Trailer)) {
			fmt.Fprintf(w, "trailer %s: %q\n", k, r.Trailer[k])
		}
	case "/204":
		w.WriteHeader(http.StatusNoContent)
	case "/304":
		h.Set("Etag", `"v1"`)
		w.WriteHeader(http.StatusNotModified)
	case "/304-with-length":
		// What ReverseProxy passes on from an upstream's 304: the length
		// the 200 would have had (RFC 9110, 8.6).
		h.Set("Etag", `"v1"`)
		h.Set("Content-Length", "1234")
		w.WriteHeader(http.StatusNotModified)
	case "/404":
		http.Error(w, "no such thing", http.StatusNotFound)
	case "/sniffed":
		io.WriteString(w, "<html><body>sniff me</body></html>")
	case "/sniffed-late":
		// The first write alone looks like text; the first 512 bytes do not.
		io.WriteString(w, "hello")
		w.Write(make([]byte, 5000))
	case "/no-type":
		h["Content-Type"] = nil
		io.WriteString(w, "<html><body>do not sniff</body></html>")
	case "/encoded":
		h.Set("Content-Encoding", "gzip")
		w.Write([]byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	case "/blank-encoding":
		h.Set("Content-Encoding", "")
		io.WriteString(w, "<html><body>sniff me</body></html>")
	case "/multi":
		h.Add("X-Multi", "one")
		h.Add("X-Multi", "two")
		http.SetCookie(w, &http.Cookie{Name: "a", Value: "1"})
		http.SetCookie(w, &http.Cookie{Name: "b", Value: "2", HttpOnly: true})
		io.WriteString(w, "multi")
	case "/invalid-fields":
		h.Set("X-Bad-Value", "a\nb")
		h["Bad Name"] = []string{"x"}
		h.Set("X-Good", "fine")
		io.WriteString(w, "fields")
	case "/connection-fields":
		h.Set("Keep-Alive", "timeout=5")
		h.Set("Proxy-Connection", "keep-alive")
		h.Set("Upgrade", "websocket")
		h.Set("Transfer-Encoding", "chunked")
		h.Set("Connection", "x-hop")
		io.WriteString(w, "hop")
	case "/trailers":
		h.Set("Trailer", "X-Announced")
		io.WriteString(w, "with trailers")
		h.Set("X-Announced", "a")
		h.Set(http.TrailerPrefix+"X-Prefixed", "p")
	case "/trailer-twice":
		h.Add("Trailer", "X-Twice")
		h.Add("Trailer", "X-Twice")
		io.WriteString(w, "body")
		h.Set("X-Twice", "once")
	case "/large":
		w.Write(payload(7, 100<<10))
	case "/flushed":
		io.WriteString(w, "before flush ")
		w.(http.Flusher).Flush()
		io.WriteString(w, "after flush")
	case "/empty":
	case "/declared":
		h.Set("Content-Length", "5")
		io.WriteString(w, "hello")
	case "/short":
		h.Set("Content-Length", "10")
		io.WriteString(w, "hello")
	case "/early-hints":
		h.Set("Link", "</a.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		io.WriteString(w, "hinted")
	case "/twice":
		w.WriteHeader(http.StatusCreated)
		w.WriteHeader(http.StatusInternalServerError)
	case "/changed-after-writeheader":
		h.Set("X-Early", "before")
		w.WriteHeader(http.StatusAccepted)
		h["X-Early"][0] = "after"
		h.Set("X-Late", "late")
		io.WriteString(w, "changed")
	default:
		http.NotFound(w, r)
	}
}

// serveNetHTTP serves h with net/http's own HTTP/2 server, h2c with prior
// knowledge only.
func serveNetHTTP(t *testing.T, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	hs := &http.Server{Handler: h, Protocols: &p, ErrorLog: log.New(io.Discard, "", 0)}
	served := make(chan struct{})
	go func() { defer close(served); _ = hs.Serve(ln) }()
	t.Cleanup(func() {
		hs.Close()
		<-served
	})
	return "http://" + ln.Addr().String()
}

// answer is a response as the comparison sees it: what a client can
// observe, less the Date.
func answer(res *http.Response) string {
	var b strings.Builder
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	fmt.Fprintf(&b, "%s %s\nContentLength %d\n", res.Proto, res.Status, res.ContentLength)
	for _, k := range slices.Sorted(maps.Keys(res.Header)) {
		if k != "Date" {
			fmt.Fprintf(&b, "%s: %q\n", k, res.Header[k])
		}
	}
	if len(body) > 200 {
		fmt.Fprintf(&b, "body %s\n", digest(body))
	} else {
		fmt.Fprintf(&b, "body %q\n", body)
	}
	fmt.Fprintf(&b, "body read fails: %v\n", err != nil)
	for _, k := range slices.Sorted(maps.Keys(res.Trailer)) {
		fmt.Fprintf(&b, "trailer %s: %q\n", k, res.Trailer[k])
	}
	return b.String()
}

func TestSameAnswersAsNetHTTP(t *testing.T) {
	h := http.HandlerFunc(sameHandler)
	fast, std := serve(t, h).url, serveNetHTTP(t, h)
	c := h2Client(t)
	for _, tc := range []struct {
		name, method, path, body string
		header                   http.Header
		trailer                  http.Header // the request's
		skip                     string      // why a difference is deliberate
	}{
		{name: "GET", method: "GET", path: "/hello"},
		{name: "POST with a body", method: "POST", path: "/echo", body: "posted body"},
		{name: "request as seen", method: "POST", path: "/request?q=1&r=%20x", body: "with a length",
			header: http.Header{"X-Multi": {"a", "b"}, "Accept": {"*/*"}}},
		{name: "request with trailers", method: "POST", path: "/request", body: "streamed",
			trailer: http.Header{"X-Req-Trailer": {"t"}}},
		{name: "cookies split by the client", method: "GET", path: "/request",
			header: http.Header{"Cookie": {"a=1; b=2", "c=3"}}},
		{name: "HEAD", method: "HEAD", path: "/hello"},
		{name: "HEAD of a large body", method: "HEAD", path: "/large"},
		{name: "204", method: "GET", path: "/204"},
		{name: "304", method: "GET", path: "/304"},
		{name: "304 with Content-Length", method: "GET", path: "/304-with-length",
			skip: "h2serve drops Content-Length from answers that have no body; net/http sends it, which RFC 9113 (8.1.1) allows, " +
				"but x/net's client then fails reading the empty body of that 304 (unexpected EOF), so dropping it is the safer side"},
		{name: "404 with a body", method: "GET", path: "/404"},
		{name: "sniffed Content-Type", method: "GET", path: "/sniffed"},
		{name: "sniffed past the first write", method: "GET", path: "/sniffed-late"},
		{name: "explicitly no Content-Type", method: "GET", path: "/no-type"},
		{name: "Content-Encoding stops sniffing", method: "GET", path: "/encoded"},
		{name: "blank Content-Encoding", method: "GET", path: "/blank-encoding"},
		{name: "multi-value fields and cookies", method: "GET", path: "/multi"},
		{name: "invalid fields dropped", method: "GET", path: "/invalid-fields"},
		{name: "connection-specific fields", method: "GET", path: "/connection-fields"},
		{name: "trailers", method: "GET", path: "/trailers"},
		{name: "a trailer announced twice", method: "GET", path: "/trailer-twice"},
		{name: "large body", method: "GET", path: "/large"},
		{name: "flushed", method: "GET", path: "/flushed"},
		{name: "empty", method: "GET", path: "/empty"},
		{name: "declared Content-Length", method: "GET", path: "/declared"},
		{name: "shorter than its Content-Length", method: "GET", path: "/short"},
		{name: "after a 103", method: "GET", path: "/early-hints"},
		{name: "WriteHeader twice", method: "GET", path: "/twice"},
		{name: "header changed after WriteHeader", method: "GET", path: "/changed-after-writeheader"},
		{name: "no such path", method: "GET", path: "/nowhere"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.skip != "" {
				t.Skip(tc.skip)
			}
			do := func(base string) string {
				t.Helper()
				var body io.Reader
				if tc.body != "" {
					body = strings.NewReader(tc.body)
				}
				if tc.trailer != nil {
					// A body of unknown length, ending with the trailers.
					pr, pw := io.Pipe()
					go func() { io.WriteString(pw, tc.body); pw.Close() }()
					body = pr
				}
				req, err := http.NewRequest(tc.method, base+tc.path, body)
				if err != nil {
					t.Fatal(err)
				}
				req.Host = "app.example"
				maps.Copy(req.Header, tc.header)
				req.Trailer = tc.trailer
				res, err := c.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				return answer(res)
			}
			if got, want := do(fast), do(std); got != want {
				t.Errorf("h2serve answered\n%s\nnet/http answered\n%s", got, want)
			}
		})
	}
}

// An answer that ends before its first flush gets a Content-Length, as
// net/http's servers give one, unless the handler kept its length unknown
// (a proxy passing on an upstream's answer without one).
func TestKeepLengthUnknown(t *testing.T) {
	srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/unknown" {
			w.(interface{ KeepLengthUnknown() }).KeepLengthUnknown()
		}
		w.Header().Set("Trailer", "Grpc-Status")
		_, _ = io.WriteString(w, "body")
		w.Header().Set("Grpc-Status", "0")
	}))
	c := h2Client(t)
	for path, want := range map[string]int64{"/counted": 4, "/unknown": -1} {
		res, body := get(t, c, srv.url+path)
		if res.ContentLength != want || body != "body" || res.Trailer.Get("Grpc-Status") != "0" {
			t.Errorf("%s: length %d, body %q, trailers %v; want length %d, body, Grpc-Status 0",
				path, res.ContentLength, body, res.Trailer, want)
		}
	}
}

// A request body is Ready when a Read would not wait for the client: not
// before any of it has come, but once some has, and once its end has.
func TestBodyReady(t *testing.T) {
	type readier interface{ Ready() bool }
	bodies := make(chan readier, 1)
	proceed := make(chan struct{})
	result := make(chan string, 1)
	srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b := r.Body.(readier)
		if b.Ready() {
			bodies <- nil
			return
		}
		w.WriteHeader(http.StatusOK)
		_ = http.NewResponseController(w).Flush() // the client may send now
		bodies <- b
		<-proceed // the test saw the body come
		got, err := io.ReadAll(r.Body)
		switch {
		case err != nil || string(got) != "body":
			result <- fmt.Sprintf("read %q, %v; want body", got, err)
		case !b.Ready():
			result <- "not Ready after its end"
		default:
			result <- ""
		}
	}))
	pr, pw := io.Pipe()
	req, err := http.NewRequest(http.MethodPost, srv.url+"/", pr)
	if err != nil {
		t.Fatal(err)
	}
	res, err := h2Client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b := recv(t, bodies, "the handler's body")
	if b == nil {
		t.Fatal("Ready before the client sent any of the body")
	}
	_, _ = io.WriteString(pw, "body")
	_ = pw.Close()
	poll.Until(t, waitLimit, "the body to come", b.Ready)
	close(proceed)
	if msg := recv(t, result, "the handler's verdict"); msg != "" {
		t.Error(msg)
	}
}
