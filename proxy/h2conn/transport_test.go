package h2conn_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"runtime/metrics"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/watertight/watertight/internal/poll"
	"github.com/watertight/watertight/proxy/h2conn"
)

// waitLimit bounds every wait on another goroutine: long next to what a
// loaded machine needs, short enough that a hang fails instead of stalling.
const waitLimit = 10 * time.Second

func h2cOnly() *http.Protocols {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &p
}

// h2Server is net/http's own HTTP/2 server over cleartext, counting the
// connections it accepted and saw closed.
type h2Server struct {
	url      string // http://host:port
	addr     string // host:port
	accepted atomic.Int64
	closed   atomic.Int64
}

func newH2Server(t *testing.T, h http.HandlerFunc, tune ...func(*http.Server)) *h2Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &h2Server{url: "http://" + ln.Addr().String(), addr: ln.Addr().String()}
	srv := &http.Server{
		Handler:   h,
		Protocols: h2cOnly(),
		// The resets these tests provoke are logged; they are expected.
		ErrorLog: log.New(io.Discard, "", 0),
		ConnState: func(_ net.Conn, st http.ConnState) {
			switch st {
			case http.StateNew:
				s.accepted.Add(1)
			case http.StateClosed:
				s.closed.Add(1)
			}
		},
	}
	for _, f := range tune {
		f(srv)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
	})
	return s
}

func maxStreams(n int) func(*http.Server) {
	return func(s *http.Server) { s.HTTP2 = &http.HTTP2Config{MaxConcurrentStreams: n} }
}

// fallbackRT is the tests' Fallback: net/http's Transport speaking h2c, so
// that what h2conn hands over still reaches the test's server. It records
// the requests it is handed.
type fallbackRT struct {
	*http.Transport
	mu  sync.Mutex
	got []*http.Request
}

func (f *fallbackRT) RoundTrip(req *http.Request) (*http.Response, error) {
	f.mu.Lock()
	f.got = append(f.got, req)
	f.mu.Unlock()
	if req.URL.Scheme != "http" {
		// Nothing here speaks TLS; what matters is who was asked.
		closeRequestBody(req)
		return &http.Response{StatusCode: 299, Status: "299 fallback", Body: http.NoBody, Request: req}, nil
	}
	return f.Transport.RoundTrip(req)
}

func (f *fallbackRT) calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.got)
}

func closeRequestBody(req *http.Request) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
}

// newTransport makes the Transport under test. Its idle connections, and
// its Fallback's, are closed when the test ends, which ends their read
// loops before goleak looks.
func newTransport(t *testing.T, tune ...func(*h2conn.Transport)) (*h2conn.Transport, *fallbackRT) {
	t.Helper()
	fb := &fallbackRT{Transport: &http.Transport{Protocols: h2cOnly(), DisableCompression: true}}
	tr := &h2conn.Transport{DialContext: (&net.Dialer{}).DialContext, Fallback: fb}
	for _, f := range tune {
		f(tr)
	}
	t.Cleanup(tr.CloseIdleConnections)
	return tr, fb
}

// newRequest makes a request bounded by waitLimit, so that a hang in the
// Transport fails the test instead of stalling it.
func newRequest(t *testing.T, method, url string, body io.Reader) *http.Request {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitLimit)
	t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// fetch sends req and reads the whole answer.
func fetch(t *testing.T, rt http.RoundTripper, req *http.Request) (*http.Response, string) {
	t.Helper()
	res, err := rt.RoundTrip(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", req.Method, req.URL, err)
	}
	return res, string(b)
}

// bodyMustFail GETs url and fails the test if the answer's body reads to a
// clean end: a body that breaks its framing must end in an error. With
// headErrOK an error from RoundTrip is as good; without, it fails the test.
func bodyMustFail(t *testing.T, rt http.RoundTripper, url string, headErrOK bool) {
	t.Helper()
	res, err := rt.RoundTrip(newRequest(t, http.MethodGet, url, nil))
	if err != nil {
		if !headErrOK {
			t.Fatal(err)
		}
		return
	}
	defer res.Body.Close()
	if b, err := io.ReadAll(res.Body); err == nil {
		t.Errorf("read %q and a clean end of a body announced as %d bytes", b, res.ContentLength)
	}
}

func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitLimit):
		t.Fatalf("timed out after %v waiting for %s", waitLimit, what)
		var zero T
		return zero
	}
}

// rawServer speaks HTTP/2 frame by frame, for what net/http's server will
// not do (refuse, go away, lie about lengths, never answer).
type rawServer struct {
	url      string
	addr     string
	accepted atomic.Int64

	wg     sync.WaitGroup
	mu     sync.Mutex
	closed bool
	conns  []net.Conn
}

// newRawServer serves each connection with serve, given its number (from
// 1). Every connection is closed when serve returns, and all of them when
// the test ends; a deadline ends a serve that waits for too long.
func newRawServer(t *testing.T, serve func(n int64, c *rawConn)) *rawServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &rawServer{url: "http://" + ln.Addr().String(), addr: ln.Addr().String()}
	s.wg.Go(func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			n := s.accepted.Add(1)
			s.mu.Lock()
			if s.closed {
				s.mu.Unlock()
				_ = nc.Close()
				return
			}
			s.conns = append(s.conns, nc)
			_ = nc.SetDeadline(time.Now().Add(waitLimit))
			s.wg.Go(func() {
				defer nc.Close()
				serve(n, newRawConn(nc))
			})
			s.mu.Unlock()
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		s.mu.Lock()
		s.closed = true
		for _, nc := range s.conns {
			_ = nc.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

type rawConn struct {
	net.Conn
	fr       *http2.Framer
	enc      *hpack.Encoder
	hbuf     bytes.Buffer
	ackPings bool
	// autoWindow: DATA is given back its window at once.
	autoWindow bool
	pings      int // PINGs received
}

func newRawConn(nc net.Conn) *rawConn {
	c := &rawConn{Conn: nc, ackPings: true, autoWindow: true}
	c.fr = http2.NewFramer(nc, nc)
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.enc = hpack.NewEncoder(&c.hbuf)
	return c
}

// handshake reads the client preface and sends the server's SETTINGS.
func (c *rawConn) handshake(settings ...http2.Setting) error {
	buf := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != http2.ClientPreface {
		return fmt.Errorf("client preface %q", buf)
	}
	return c.fr.WriteSettings(settings...)
}

// next reads the next frame about a stream or the connection's end. It
// acks SETTINGS, and PINGs if ackPings, as a server must.
func (c *rawConn) next() (http2.Frame, error) {
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			return nil, err
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				if err := c.fr.WriteSettingsAck(); err != nil {
					return nil, err
				}
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				c.pings++
				if c.ackPings {
					if err := c.fr.WritePing(true, f.Data); err != nil {
						return nil, err
					}
				}
			}
		case *http2.WindowUpdateFrame:
		case *http2.DataFrame:
			// Read at once, as a server with room to buffer would.
			if n := f.Length; n > 0 && c.autoWindow {
				if err := c.fr.WriteWindowUpdate(0, n); err != nil {
					return nil, err
				}
				if err := c.fr.WriteWindowUpdate(f.StreamID, n); err != nil {
					return nil, err
				}
			}
			return f, nil
		default:
			return f, nil
		}
	}
}

// awaitPings reads frames, acking PINGs, until n PINGs have come.
func (c *rawConn) awaitPings(n int) error {
	for c.pings < n {
		f, err := c.fr.ReadFrame()
		if err != nil {
			return fmt.Errorf("after %d PINGs: %w", c.pings, err)
		}
		if p, ok := f.(*http2.PingFrame); ok && !p.IsAck() {
			c.pings++
			if err := c.fr.WritePing(true, p.Data); err != nil {
				return err
			}
		}
	}
	return nil
}

// headers reads up to the next HEADERS frame.
// roundTripAsync sends req on its own goroutine; the channel gets
// RoundTrip's error (the answer, if any, is closed unread).
func roundTripAsync(tr http.RoundTripper, req *http.Request) <-chan error {
	errc := make(chan error, 1)
	go func() {
		res, err := tr.RoundTrip(req)
		if err == nil {
			_ = res.Body.Close()
		}
		errc <- err
	}()
	return errc
}

// firstRequest does the handshake and reads the first request's HEADERS;
// nil, with the test failed, if either goes wrong.
func (c *rawConn) firstRequest(t *testing.T) *http2.MetaHeadersFrame {
	t.Helper()
	if err := c.handshake(); err != nil {
		t.Error(err)
		return nil
	}
	h, err := c.headers()
	if err != nil {
		t.Error(err)
		return nil
	}
	return h
}

func (c *rawConn) headers() (*http2.MetaHeadersFrame, error) {
	for {
		f, err := c.next()
		if err != nil {
			return nil, err
		}
		if h, ok := f.(*http2.MetaHeadersFrame); ok {
			return h, nil
		}
	}
}

// body reads stream id's request body, up to its END_STREAM.
func (c *rawConn) body(id uint32) ([]byte, error) {
	var b []byte
	for {
		f, err := c.next()
		if err != nil {
			return b, err
		}
		if f.Header().StreamID != id {
			continue
		}
		switch f := f.(type) {
		case *http2.DataFrame:
			b = append(b, f.Data()...)
			if f.StreamEnded() {
				return b, nil
			}
		case *http2.MetaHeadersFrame:
			if f.StreamEnded() {
				return b, nil
			}
		case *http2.RSTStreamFrame:
			return b, fmt.Errorf("the client reset stream %d: %v", id, f.ErrCode)
		}
	}
}

// drain reads until the client closes the connection.
func (c *rawConn) drain() error {
	for {
		if _, err := c.next(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

func (c *rawConn) writeHeaders(id uint32, end bool, kv ...string) error {
	c.hbuf.Reset()
	for i := 0; i+1 < len(kv); i += 2 {
		_ = c.enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	return c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.hbuf.Bytes(), EndStream: end, EndHeaders: true})
}

// answer sends a whole 200 answer with body on stream id.
func (c *rawConn) answer(id uint32, body string) error {
	if err := c.writeHeaders(id, false, ":status", "200", "content-length", strconv.Itoa(len(body))); err != nil {
		return err
	}
	return c.fr.WriteData(id, true, []byte(body))
}

// pattern is n bytes that differ with seed, so that a misplaced chunk
// changes the hash.
func pattern(seed byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i) + byte(i>>11)
	}
	return b
}

func TestGet(t *testing.T) {
	type seen struct {
		proto, method, host, uri string
		header                   http.Header
	}
	seenc := make(chan seen, 1)
	s := newH2Server(t, func(w http.ResponseWriter, r *http.Request) {
		seenc <- seen{r.Proto, r.Method, r.Host, r.RequestURI, r.Header.Clone()}
		w.Header().Add("X-Answer", "a")
		w.Header().Add("X-Answer", "b")
		w.Header().Set("Content-Length", "5")
		_, _ = io.WriteString(w, "hello")
	})
	tr, fb := newTransport(t)

	t.Run("answer and request", func(t *testing.T) {
		req := newRequest(t, http.MethodGet, s.url+"/p/a?x=1&y=%20z", nil)
		req.Header.Set("TE", "trailers")
		// Connection-specific fields are malformed in HTTP/2 (RFC 9113,
		// 8.2.2): net/http's server resets a request that has them.
		req.Header.Set("Connection", "keep-alive")
		req.Header.Set("Keep-Alive", "timeout=5")
		req.Header.Set("Transfer-Encoding", "chunked")
		req.Header["X-Multi"] = []string{"1", "2"}
		res, body := fetch(t, tr, req)
		if res.StatusCode != 200 || res.Status != "200 OK" || body != "hello" {
			t.Errorf("got %q %q, want 200 OK hello", res.Status, body)
		}
		if res.Proto != "HTTP/2.0" || res.ProtoMajor != 2 || res.ProtoMinor != 0 {
			t.Errorf("Proto %q %d.%d, want HTTP/2.0", res.Proto, res.ProtoMajor, res.ProtoMinor)
		}
		if res.ContentLength != 5 {
			t.Errorf("ContentLength %d, want 5", res.ContentLength)
		}
		if got := res.Header["X-Answer"]; !slices.Equal(got, []string{"a", "b"}) {
			t.Errorf("X-Answer %q, want [a b]", got)
		}
		got := recv(t, seenc, "the request")
		if got.proto != "HTTP/2.0" || got.method != "GET" {
			t.Errorf("server saw %s %s, want GET HTTP/2.0", got.method, got.proto)
		}
		if got.host != s.addr {
			t.Errorf(":authority %q, want the URL's %q", got.host, s.addr)
		}
		if got.uri != "/p/a?x=1&y=%20z" {
			t.Errorf(":path %q", got.uri)
		}
		if ua := got.header.Get("User-Agent"); ua != "Go-http-client/2.0" {
			t.Errorf("User-Agent %q, want net/http's default", ua)
		}
		if te := got.header["Te"]; !slices.Equal(te, []string{"trailers"}) {
			t.Errorf("TE %q, want [trailers]", te)
		}
		for _, k := range []string{"Connection", "Keep-Alive", "Transfer-Encoding"} {
			if v, ok := got.header[k]; ok {
				t.Errorf("%s %q was sent", k, v)
			}
		}
		if got := got.header["X-Multi"]; !slices.Equal(got, []string{"1", "2"}) {
			t.Errorf("X-Multi %q, want [1 2]", got)
		}
	})

	t.Run("header blocks bigger than a frame", func(t *testing.T) {
		// 40 KiB of one field: HEADERS and CONTINUATION frames, and an
		// hpack literal too big for the dynamic table.
		big := strings.Repeat("0123456789abcdef", 40<<10/16)
		req := newRequest(t, http.MethodGet, s.url+"/", nil)
		req.Header.Set("X-Big", big)
		fetch(t, tr, req)
		if got := recv(t, seenc, "the request"); got.header.Get("X-Big") != big {
			t.Errorf("X-Big arrived with %d bytes, want %d", len(got.header.Get("X-Big")), len(big))
		}
	})

	t.Run("Host overrides the URL", func(t *testing.T) {
		req := newRequest(t, http.MethodGet, s.url+"/", nil)
		req.Host = "example.test:8080"
		fetch(t, tr, req)
		if got := recv(t, seenc, "the request"); got.host != "example.test:8080" {
			t.Errorf(":authority %q, want example.test:8080", got.host)
		}
	})

	t.Run("User-Agent given", func(t *testing.T) {
		req := newRequest(t, http.MethodGet, s.url+"/", nil)
		req.Header.Set("User-Agent", "tester/1")
		fetch(t, tr, req)
		if got := recv(t, seenc, "the request"); !slices.Equal(got.header["User-Agent"], []string{"tester/1"}) {
			t.Errorf("User-Agent %q, want [tester/1]", got.header["User-Agent"])
		}
	})

	t.Run("User-Agent suppressed", func(t *testing.T) {
		req := newRequest(t, http.MethodGet, s.url+"/", nil)
		req.Header["User-Agent"] = []string{""}
		fetch(t, tr, req)
		if got := recv(t, seenc, "the request"); got.header["User-Agent"] != nil {
			t.Errorf("User-Agent %q sent, want none", got.header["User-Agent"])
		}
	})

	if n := fb.calls(); n != 0 {
		t.Errorf("%d requests went to Fallback", n)
	}
	if n := s.accepted.Load(); n != 1 {
		t.Errorf("%d connections for sequential requests, want 1", n)
	}
}

func TestLargeBodies(t *testing.T) {
	// Bigger than the server's stream window, and three of them bigger
	// than either side's connection window: WINDOW_UPDATEs must flow both
	// ways.
	const size = 5<<20 + 123
	reqBody, resBody := pattern(1, size), pattern(2, size)
	type seen struct {
		n             int
		sum           [32]byte
		contentLength int64
		header        string
	}
	seenc := make(chan seen, 1)
	s := newH2Server(t, func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("server reading the body: %v", err)
		}
		seenc <- seen{len(b), sha256.Sum256(b), r.ContentLength, r.Header.Get("Content-Length")}
		if r.URL.Path == "/big" {
			w.Header().Set("Content-Length", strconv.Itoa(size))
			_, _ = w.Write(resBody)
		}
	})
	tr, _ := newTransport(t)

	check := func(t *testing.T, req *http.Request, wantCL int64, wantHeader string) {
		t.Helper()
		res, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		// A slow reader first: the answer waits on the client's window.
		h := sha256.New()
		small := make([]byte, 1024)
		var n int64
		for n < 64<<10 {
			m, err := res.Body.Read(small)
			h.Write(small[:m])
			n += int64(m)
			if err != nil {
				t.Fatalf("reading the answer after %d bytes: %v", n, err)
			}
		}
		m, err := io.Copy(h, res.Body)
		if err != nil {
			t.Fatalf("reading the answer after %d bytes: %v", n+m, err)
		}
		if n+m != size || [32]byte(h.Sum(nil)) != sha256.Sum256(resBody) {
			t.Errorf("answer: %d bytes, or not the ones sent", n+m)
		}
		got := recv(t, seenc, "the request body")
		if got.n != size || got.sum != sha256.Sum256(reqBody) {
			t.Errorf("server got %d bytes, or not the ones sent", got.n)
		}
		if got.contentLength != wantCL || got.header != wantHeader {
			t.Errorf("server saw ContentLength %d, content-length %q; want %d, %q", got.contentLength, got.header, wantCL, wantHeader)
		}
	}

	t.Run("known length", func(t *testing.T) {
		check(t, newRequest(t, http.MethodPost, s.url+"/big", bytes.NewReader(reqBody)), size, strconv.Itoa(size))
	})
	t.Run("unknown length, ContentLength 0", func(t *testing.T) {
		pr, pw := io.Pipe()
		go func() {
			for p := reqBody; len(p) > 0; {
				n := min(len(p), 50000)
				if _, err := pw.Write(p[:n]); err != nil {
					return
				}
				p = p[n:]
			}
			_ = pw.Close()
		}()
		req := newRequest(t, http.MethodPost, s.url+"/big", pr)
		if req.ContentLength != 0 {
			t.Fatalf("ContentLength %d", req.ContentLength)
		}
		check(t, req, -1, "")
	})
	t.Run("unknown length, ContentLength -1", func(t *testing.T) {
		req := newRequest(t, http.MethodPut, s.url+"/big", io.MultiReader(bytes.NewReader(reqBody)))
		req.ContentLength = -1
		check(t, req, -1, "")
	})
	if n := s.accepted.Load(); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}

	t.Run("POST without a body", func(t *testing.T) {
		// net/http sends content-length: 0 for a POST without a body.
		res, _ := fetch(t, tr, newRequest(t, http.MethodPost, s.url+"/empty", nil))
		if res.StatusCode != 200 || res.ContentLength != 0 {
			t.Errorf("%d, ContentLength %d; want 200, 0", res.StatusCode, res.ContentLength)
		}
		got := recv(t, seenc, "the request")
		if got.n != 0 || got.contentLength != 0 || got.header != "0" {
			t.Errorf("server saw %d bytes, ContentLength %d, content-length %q; want 0, 0, \"0\"", got.n, got.contentLength, got.header)
		}
	})
}

func TestFullDuplex(t *testing.T) {
	s := newH2Server(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		rc := http.NewResponseController(w)
		_ = rc.Flush()
		buf := make([]byte, 1024)
		for {
			n, err := r.Body.Read(buf)
			if n > 0 {
				_, _ = w.Write(buf[:n])
				_ = rc.Flush()
			}
			if err != nil {
				return
			}
		}
	})
	tr, _ := newTransport(t)
	pr, pw := io.Pipe()
	defer pw.Close()
	req := newRequest(t, http.MethodPost, s.url+"/echo", pr)
	res, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	for _, part := range []string{"part one", "part two"} {
		if _, err := io.WriteString(pw, part); err != nil {
			t.Fatal(err)
		}
		// The echo of this part must come while the request is still
		// open: the next part is written only once it has.
		got := make([]byte, len(part))
		if _, err := io.ReadFull(res.Body, got); err != nil {
			t.Fatalf("reading the echo of %q: %v", part, err)
		}
		if string(got) != part {
			t.Fatalf("echo %q, want %q", got, part)
		}
	}
	_ = pw.Close()
	if rest, err := io.ReadAll(res.Body); err != nil || len(rest) != 0 {
		t.Errorf("after the request's end: %q, %v; want the body's end", rest, err)
	}
}

// trailerBody sets its request's trailers when it reaches EOF, as a proxy
// relaying a request does.
type trailerBody struct {
	r   io.Reader
	set func()
}

func (b *trailerBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err == io.EOF && b.set != nil {
		b.set()
		b.set = nil
	}
	return n, err
}

func (b *trailerBody) Close() error { return nil }

func TestTrailers(t *testing.T) {
	type seen struct {
		body    string
		trailer http.Header
	}
	seenc := make(chan seen, 1)
	s := newH2Server(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		seenc <- seen{string(b), r.Trailer.Clone()}
		w.Header().Set("Trailer", "X-Announced")
		w.WriteHeader(200)
		_, _ = io.WriteString(w, "body")
		_ = http.NewResponseController(w).Flush()
		w.Header().Set("X-Announced", "a")
		w.Header().Set(http.TrailerPrefix+"X-Late", "b")
	})
	tr, _ := newTransport(t)

	for _, cl := range []int64{4, -1} {
		t.Run(fmt.Sprintf("ContentLength %d", cl), func(t *testing.T) {
			req := newRequest(t, http.MethodPost, s.url+"/", nil)
			req.Trailer = http.Header{"X-Req-Trailer": nil}
			req.Body = &trailerBody{r: strings.NewReader("data"), set: func() { req.Trailer.Set("X-Req-Trailer", "rv") }}
			req.ContentLength = cl
			res, err := tr.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			if _, ok := res.Trailer["X-Announced"]; !ok || len(res.Header["Trailer"]) != 0 {
				t.Errorf("before the body: Trailer %v, Header %v; want X-Announced announced in Trailer only", res.Trailer, res.Header)
			}
			b, err := io.ReadAll(res.Body)
			if err != nil || string(b) != "body" {
				t.Fatalf("body %q, %v", b, err)
			}
			if res.Trailer.Get("X-Announced") != "a" || res.Trailer.Get("X-Late") != "b" {
				t.Errorf("answer's trailers %v, want X-Announced: a and X-Late: b", res.Trailer)
			}
			got := recv(t, seenc, "the request")
			if got.body != "data" || got.trailer.Get("X-Req-Trailer") != "rv" {
				t.Errorf("server got %q with trailers %v, want data and X-Req-Trailer: rv", got.body, got.trailer)
			}
		})
	}
}

func TestInformational(t *testing.T) {
	s := newH2Server(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</style.css>; rel=preload; as=style")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		_, _ = io.WriteString(w, "final")
	})
	tr, _ := newTransport(t)
	type info struct {
		code   int
		header textproto.MIMEHeader
	}
	var got []info
	req := newRequest(t, http.MethodGet, s.url+"/", nil)
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
		Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
			got = append(got, info{code, h})
			return nil
		},
	}))
	res, body := fetch(t, tr, req)
	if res.StatusCode != 200 || body != "final" {
		t.Errorf("final answer %d %q", res.StatusCode, body)
	}
	if len(got) != 1 || got[0].code != 103 || got[0].header.Get("Link") != "</style.css>; rel=preload; as=style" {
		t.Errorf("Got1xxResponse saw %v, want one 103 with the Link", got)
	}
	if res.Header.Get("Link") != "" {
		t.Errorf("the 103's Link is in the final answer: %v", res.Header)
	}
}

// blockingServer's handler writes "part" and flushes if the path says so,
// then waits for its request's context to end, and reports that on ended.
func blockingServer(t *testing.T) (s *h2Server, started, ended chan string) {
	started, ended = make(chan string, 8), make(chan string, 8)
	s = newH2Server(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/part" {
			w.WriteHeader(200)
			_, _ = io.WriteString(w, "part")
			_ = http.NewResponseController(w).Flush()
		}
		started <- r.URL.Path
		select {
		case <-r.Context().Done():
			ended <- r.URL.Path
		case <-time.After(waitLimit):
			ended <- "handler timed out"
		}
	})
	return s, started, ended
}

func TestCancel(t *testing.T) {
	s, started, ended := blockingServer(t)
	tr, _ := newTransport(t)

	t.Run("waiting for the answer", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		req := newRequest(t, http.MethodGet, s.url+"/wait", nil).WithContext(ctx)
		errc := roundTripAsync(tr, req)
		recv(t, started, "the handler")
		cancel()
		if err := recv(t, errc, "RoundTrip to return"); !errors.Is(err, context.Canceled) {
			t.Errorf("RoundTrip: %v, want context.Canceled", err)
		}
		if got := recv(t, ended, "the handler's context to end"); got != "/wait" {
			t.Errorf("handler: %s", got)
		}
	})

	t.Run("reading the body", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		req := newRequest(t, http.MethodGet, s.url+"/part", nil).WithContext(ctx)
		res, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		recv(t, started, "the handler")
		got := make([]byte, 4)
		if _, err := io.ReadFull(res.Body, got); err != nil || string(got) != "part" {
			t.Fatalf("%q, %v", got, err)
		}
		cancel()
		if _, err := res.Body.Read(got); !errors.Is(err, context.Canceled) {
			t.Errorf("Read after cancel: %v, want context.Canceled", err)
		}
		if got := recv(t, ended, "the handler's context to end"); got != "/part" {
			t.Errorf("handler: %s", got)
		}
	})

	t.Run("before sending", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		req := newRequest(t, http.MethodGet, s.url+"/wait", nil).WithContext(ctx)
		if res, err := tr.RoundTrip(req); err == nil {
			_ = res.Body.Close()
			t.Errorf("RoundTrip with a done context: %d, want an error", res.StatusCode)
		}
	})

	// The connection outlives its cancelled streams.
	if n := s.accepted.Load(); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
}

// closeRecorder is a request body that reports its Close.
type closeRecorder struct {
	io.Reader
	closed chan struct{}
	once   sync.Once
}

func (c *closeRecorder) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

// TestRequestBodyClosed: a RoundTripper must close the request body, on
// errors too (http.RoundTripper's contract), as net/http's does once the
// stream ends. A body that blocks is the case that matters: whatever
// writes it waits forever otherwise, and so does the goroutine reading it.
func TestRequestBodyClosed(t *testing.T) {
	// Closing is at once once the stream has ended; the wait is short so
	// that a Transport that never closes fails fast.
	const closeWait = 2 * time.Second
	t.Run("cancelled", func(t *testing.T) {
		s, started, ended := blockingServer(t)
		tr, _ := newTransport(t)
		pr, pw := io.Pipe()
		defer pw.Close() // ends the Transport's read of the body if it did not
		body := &closeRecorder{Reader: pr, closed: make(chan struct{})}
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		req := newRequest(t, http.MethodPost, s.url+"/upload", body).WithContext(ctx)
		req.ContentLength = -1
		errc := roundTripAsync(tr, req)
		recv(t, started, "the handler")
		cancel()
		if err := recv(t, errc, "RoundTrip to return"); !errors.Is(err, context.Canceled) {
			t.Errorf("RoundTrip: %v, want context.Canceled", err)
		}
		recv(t, ended, "the handler's context to end")
		select {
		case <-body.closed:
		case <-time.After(closeWait):
			t.Errorf("the request body was not closed %v after the request was cancelled", closeWait)
		}
	})

	t.Run("answered before the body's end", func(t *testing.T) {
		s := newH2Server(t, func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.WriteString(w, "no thanks")
		})
		tr, _ := newTransport(t)
		pr, pw := io.Pipe()
		defer pw.Close()
		body := &closeRecorder{Reader: pr, closed: make(chan struct{})}
		req := newRequest(t, http.MethodPost, s.url+"/", body)
		req.ContentLength = -1
		if _, b := fetch(t, tr, req); b != "no thanks" {
			t.Errorf("answer %q", b)
		}
		select {
		case <-body.closed:
		case <-time.After(closeWait):
			t.Errorf("the request body was not closed %v after the server ended the stream", closeWait)
		}
	})
}

func TestCloseBodyEarly(t *testing.T) {
	s, started, ended := blockingServer(t)
	tr, _ := newTransport(t)
	res, err := tr.RoundTrip(newRequest(t, http.MethodGet, s.url+"/part", nil))
	if err != nil {
		t.Fatal(err)
	}
	recv(t, started, "the handler")
	got := make([]byte, 2)
	if _, err := io.ReadFull(res.Body, got); err != nil {
		t.Fatal(err)
	}
	if err := res.Body.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if got := recv(t, ended, "the handler's context to end"); got != "/part" {
		t.Errorf("handler: %s", got)
	}
	if _, err := res.Body.Read(got); err == nil {
		t.Errorf("Read after Close succeeded")
	}

	// The reset concerned one stream: the connection serves on.
	res, err = tr.RoundTrip(newRequest(t, http.MethodGet, s.url+"/part", nil))
	if err != nil {
		t.Fatal(err)
	}
	recv(t, started, "the second handler")
	if _, err := io.ReadFull(res.Body, make([]byte, 4)); err != nil {
		t.Errorf("second request: %v", err)
	}
	_ = res.Body.Close()
	recv(t, ended, "the second handler's end")
	if n := s.accepted.Load(); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
}

// TestSendFlowControl: the client sends no more DATA than the server's
// windows allow, follows SETTINGS_INITIAL_WINDOW_SIZE changes on open
// streams, and goes on when the server gives window back.
func TestSendFlowControl(t *testing.T) {
	want := pattern(5, 1000)
	s := newRawServer(t, func(_ int64, c *rawConn) {
		c.autoWindow = false
		if err := c.handshake(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 10}); err != nil {
			t.Error(err)
			return
		}
		// A first request, so that the SETTINGS are known to have been
		// read when the second comes (they precede its answer).
		h, err := c.headers()
		if err != nil {
			t.Error(err)
			return
		}
		_ = c.answer(h.StreamID, "warm")
		if h, err = c.headers(); err != nil {
			t.Error(err)
			return
		}
		id := h.StreamID
		var got []byte
		// upTo reads DATA until the stream has sent n bytes, then makes
		// sure (with a PING's round trip) that nothing beyond follows.
		upTo := func(n int) bool {
			for len(got) < n {
				f, err := c.next()
				if err != nil {
					t.Errorf("after %d bytes: %v", len(got), err)
					return false
				}
				if d, ok := f.(*http2.DataFrame); ok && d.StreamID == id {
					got = append(got, d.Data()...)
				}
			}
			_ = c.fr.WritePing(false, [8]byte{1})
			for {
				f, err := c.fr.ReadFrame()
				if err != nil {
					t.Error(err)
					return false
				}
				switch f := f.(type) {
				case *http2.PingFrame:
					if f.IsAck() {
						if len(got) != n {
							t.Errorf("the client sent %d bytes on a window of %d", len(got), n)
							return false
						}
						return true
					}
				case *http2.DataFrame:
					got = append(got, f.Data()...)
				}
			}
		}
		if !upTo(10) {
			return
		}
		// Raising the initial window raises open streams' windows too
		// (RFC 9113, 6.9.2).
		if err := c.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 30}); err != nil {
			t.Error(err)
			return
		}
		if !upTo(30) {
			return
		}
		_ = c.fr.WriteWindowUpdate(id, uint32(len(want)-30))
		b, err := c.body(id)
		if err != nil {
			t.Error(err)
			return
		}
		got = append(got, b...)
		_ = c.answer(id, fmt.Sprintf("%x", sha256.Sum256(got)))
		_ = c.drain()
	})
	tr, _ := newTransport(t)
	fetch(t, tr, newRequest(t, http.MethodGet, s.url+"/", nil))
	_, body := fetch(t, tr, newRequest(t, http.MethodPost, s.url+"/", bytes.NewReader(want)))
	if w := fmt.Sprintf("%x", sha256.Sum256(want)); body != w {
		t.Errorf("the server got other bytes than were sent")
	}
}

// TestManyStreams: with the server taking 4 streams per connection, 40
// requests in flight at once need 10 connections. Each handler waits until
// all 40 have arrived, so queueing (or a request lost to a refusal) shows.
// Fresh Transports each round: the race is in a new connection's first
// moments, before the server's SETTINGS arrive.
func TestManyStreams(t *testing.T) {
	const (
		limit    = 4
		requests = 40
		rounds   = 5
	)
	var (
		mu       sync.Mutex
		inflight int
		all      chan struct{} // closed when every request of a round has arrived, or one failed
	)
	release := func() {
		select {
		case <-all:
		default:
			close(all)
		}
	}
	s := newH2Server(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		inflight++
		if inflight == requests {
			release()
		}
		wait := all
		mu.Unlock()
		select {
		case <-wait:
		case <-r.Context().Done():
		}
		_, _ = io.WriteString(w, r.URL.Path)
	}, maxStreams(limit))

	for round := range rounds {
		mu.Lock()
		inflight, all = 0, make(chan struct{})
		mu.Unlock()
		before := s.accepted.Load()
		tr, _ := newTransport(t)
		failed := getAll(t, tr, s.url, requests, func() {
			mu.Lock()
			release() // the others need not wait for it
			mu.Unlock()
		})
		conns := s.accepted.Load() - before
		if len(failed) > 0 {
			t.Fatalf("round %d: %d of %d requests failed, over %d connections; the first: %v", round, len(failed), requests, conns, failed[0])
		}
		if most := int64((requests + limit - 1) / limit); conns > most {
			t.Errorf("round %d: %d connections, want at most %d", round, conns, most)
		}
		tr.CloseIdleConnections()
	}
}

// TestStreamCap: with MaxConcurrentStreams set, no connection carries more
// streams at once than the lower of the cap and the server's limit, and the
// requests past it take new connections instead of waiting.
func TestStreamCap(t *testing.T) {
	const requests = 12
	for _, c := range []struct {
		name             string
		serverLimit, cap int
		want             int // streams a connection may carry
	}{
		{"cap below the server's limit", 250, 3, 3},
		{"the server's limit below the cap", 2, 3, 2},
		{"one stream a connection", 250, 1, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			var (
				mu      sync.Mutex
				now     = map[string]int{} // streams in the handler, by client address (connection)
				most    = map[string]int{}
				arrived int
				all     = make(chan struct{}) // closed when every request is in, so all are in flight together
			)
			s := newH2Server(t, func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				now[r.RemoteAddr]++
				most[r.RemoteAddr] = max(most[r.RemoteAddr], now[r.RemoteAddr])
				if arrived++; arrived == requests {
					close(all)
				}
				mu.Unlock()
				select {
				case <-all:
				case <-r.Context().Done():
				}
				mu.Lock()
				now[r.RemoteAddr]--
				mu.Unlock()
				_, _ = io.WriteString(w, r.URL.Path)
			}, maxStreams(c.serverLimit))
			tr, fb := newTransport(t, func(tr *h2conn.Transport) { tr.MaxConcurrentStreams = uint32(c.cap) })
			if failed := getAll(t, tr, s.url, requests, func() {}); len(failed) > 0 {
				t.Fatalf("%d of %d requests failed; the first: %v", len(failed), requests, failed[0])
			}
			if n := fb.calls(); n > 0 {
				t.Errorf("%d requests went to the fallback", n)
			}
			mu.Lock()
			defer mu.Unlock()
			for addr, n := range most {
				if n > c.want {
					t.Errorf("connection %s carried %d streams at once, want at most %d", addr, n, c.want)
				}
			}
			// All twelve were in flight at once (the handler held them until
			// the last came), so the connections are exactly enough for them.
			if got, want := s.accepted.Load(), int64((requests+c.want-1)/c.want); got != want {
				t.Errorf("%d connections for %d requests in flight, want %d", got, requests, want)
			}
		})
	}
}

// getAll sends GET base/0 .. base/n-1 at once through tr, each answered
// with its own path, and returns the failures; onFail runs as each fails.
func getAll(t *testing.T, tr *h2conn.Transport, base string, n int, onFail func()) []error {
	t.Helper()
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		req := newRequest(t, http.MethodGet, fmt.Sprintf("%s/%d", base, i), nil)
		wg.Go(func() {
			res, err := tr.RoundTrip(req)
			if err == nil {
				var b []byte
				b, err = io.ReadAll(res.Body)
				_ = res.Body.Close()
				if err == nil && string(b) != req.URL.Path {
					err = fmt.Errorf("%s answered %q", req.URL.Path, b)
				}
			}
			if err != nil {
				onFail()
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	var failed []error
	for err := range errs {
		if err != nil {
			failed = append(failed, err)
		}
	}
	return failed
}

// TestLateAnswers: a server answers streams the client has already reset
// (their RST_STREAM and the answer cross). The client must pass over them
// while new requests go on the same connection.
func TestLateAnswers(t *testing.T) {
	s := newRawServer(t, func(_ int64, c *rawConn) {
		if err := c.handshake(); err != nil {
			return // a dial its request's cancel ended
		}
		for {
			f, err := c.next()
			if err != nil {
				return
			}
			if h, ok := f.(*http2.MetaHeadersFrame); ok {
				// Answered whether or not the client has reset it since.
				if err := c.answer(h.StreamID, "ok"); err != nil {
					return
				}
			}
		}
	})
	tr, _ := newTransport(t)
	// Connected first: a cancel during the dial would end it, and the
	// count of connections below would mean nothing.
	fetch(t, tr, newRequest(t, http.MethodGet, s.url+"/", nil))
	var wg sync.WaitGroup
	var failed atomic.Int64
	for g := range 4 {
		wg.Go(func() {
			for range 300 {
				ctx, cancel := context.WithCancel(t.Context())
				req := newRequest(t, http.MethodGet, s.url+"/", nil).WithContext(ctx)
				cancelling := g%2 == 0
				if cancelling {
					go cancel()
				}
				res, err := tr.RoundTrip(req)
				if err == nil {
					_, err = io.ReadAll(res.Body)
					_ = res.Body.Close()
				}
				if err != nil && !cancelling && failed.Add(1) == 1 {
					t.Errorf("a request nobody cancelled: %v", err)
				}
				cancel()
			}
		})
	}
	wg.Wait()
	if n := s.accepted.Load(); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
}

func TestRetryRefused(t *testing.T) {
	t.Run("REFUSED_STREAM", func(t *testing.T) {
		var headers atomic.Int64
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
			_ = c.answer(h.StreamID, "second")
			_ = c.drain()
		})
		tr, _ := newTransport(t)
		_, body := fetch(t, tr, newRequest(t, http.MethodGet, s.url+"/", nil))
		if body != "second" || headers.Load() != 2 {
			t.Errorf("body %q after %d HEADERS, want second after 2", body, headers.Load())
		}
	})

	t.Run("GOAWAY", func(t *testing.T) {
		drained := make(chan error, 1) // the first connection's end, as its server saw it
		s := newRawServer(t, func(n int64, c *rawConn) {
			h := c.firstRequest(t)
			if h == nil {
				return
			}
			if n == 1 {
				// Nothing processed: the request may go again elsewhere.
				_ = c.fr.WriteGoAway(0, http2.ErrCodeNo, nil)
				drained <- c.drain()
				return
			}
			_ = c.answer(h.StreamID, fmt.Sprintf("connection %d", n))
			_ = c.drain()
		})
		tr, _ := newTransport(t)
		_, body := fetch(t, tr, newRequest(t, http.MethodGet, s.url+"/", nil))
		if body != "connection 2" {
			t.Errorf("body %q, want the second connection's answer", body)
		}
		// The client closes the first connection on its own goroutine: wait
		// for that before the server's cleanup closes it from this end.
		if err := <-drained; err != nil {
			t.Errorf("after GOAWAY: %v, want the client to close", err)
		}
	})

	t.Run("GOAWAY lets the streams below finish", func(t *testing.T) {
		drained := make(chan error, 1) // the first connection's end, as its server saw it
		s := newRawServer(t, func(n int64, c *rawConn) {
			h := c.firstRequest(t)
			if h == nil {
				return
			}
			if n == 1 {
				_ = c.fr.WriteGoAway(h.StreamID, http2.ErrCodeNo, nil)
			}
			_ = c.answer(h.StreamID, fmt.Sprintf("connection %d", n))
			err := c.drain()
			if n == 1 {
				drained <- err
			}
		})
		tr, _ := newTransport(t)
		for want := range 2 {
			_, body := fetch(t, tr, newRequest(t, http.MethodGet, s.url+"/", nil))
			if w := fmt.Sprintf("connection %d", want+1); body != w {
				t.Errorf("body %q, want %q", body, w)
			}
		}
		// The client closes the first connection once its last stream is
		// done, on its own goroutine: wait for that here, before the
		// server's cleanup closes it from this end.
		if err := <-drained; err != nil {
			t.Errorf("after GOAWAY and the last answer: %v, want the client to close", err)
		}
	})

	// A refused request's body went (partly) to the first stream: sending
	// it again must send all of it, as net/http does with Request.GetBody,
	// or fail; never a part of it, nor read it from two goroutines.
	t.Run("REFUSED_STREAM with a body", func(t *testing.T) {
		want := pattern(3, 100<<10)
		// Every other new stream is refused once some of its body has
		// come, as on a real network; the others are answered with what
		// their body was.
		s := newRawServer(t, func(_ int64, c *rawConn) {
			if err := c.handshake(); err != nil {
				t.Error(err)
				return
			}
			var last uint32
			for n := 0; ; n++ {
				var h *http2.MetaHeadersFrame
				for h == nil || h.StreamID <= last { // not trailers
					var err error
					if h, err = c.headers(); err != nil {
						return // the client is done
					}
				}
				last = h.StreamID
				if n%2 == 0 {
					if _, err := c.next(); err != nil {
						return
					}
					_ = c.fr.WriteRSTStream(h.StreamID, http2.ErrCodeRefusedStream)
					continue
				}
				b, err := c.body(h.StreamID)
				if err != nil {
					continue // the client gave up; it will see why
				}
				_ = c.answer(h.StreamID, fmt.Sprintf("%d %x", len(b), sha256.Sum256(b)))
			}
		})
		tr, _ := newTransport(t)
		whole := fmt.Sprintf("%d %x", len(want), sha256.Sum256(want))

		req := newRequest(t, http.MethodPost, s.url+"/", bytes.NewReader(want))
		if _, body := fetch(t, tr, req); body != whole {
			t.Errorf("the retry's body: %s; want %s", body, whole)
		}

		// Without GetBody the body cannot be had again: an error, not
		// what was left of it.
		req = newRequest(t, http.MethodPost, s.url+"/", bytes.NewReader(want))
		req.GetBody = nil
		res, err := tr.RoundTrip(req)
		if err == nil {
			defer res.Body.Close()
			if b, _ := io.ReadAll(res.Body); string(b) != whole {
				t.Errorf("without GetBody, the retry's body: %s; want %s or an error", b, whole)
			}
		}
	})
}

func TestErrors(t *testing.T) {
	t.Run("connection closed mid-answer", func(t *testing.T) {
		s := newRawServer(t, func(_ int64, c *rawConn) {
			h := c.firstRequest(t)
			if h == nil {
				return
			}
			_ = c.writeHeaders(h.StreamID, false, ":status", "200")
			_ = c.fr.WriteData(h.StreamID, false, []byte("part"))
			// A half-close: the client reads the end of the connection
			// after "part", not a reset that could overtake it.
			_ = c.Conn.(*net.TCPConn).CloseWrite()
			_ = c.drain()
		})
		tr, _ := newTransport(t)
		res, err := tr.RoundTrip(newRequest(t, http.MethodGet, s.url+"/", nil))
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, err := io.ReadAll(res.Body)
		if err == nil || string(b) != "part" {
			t.Errorf("read %q, %v; want part and an error", b, err)
		}
		// Callers that test with errors.Is would take a cut answer for a
		// whole one.
		if errors.Is(err, io.EOF) {
			t.Errorf("the error %q wraps io.EOF", err)
		}
	})

	t.Run("stream reset mid-answer", func(t *testing.T) {
		s := newRawServer(t, func(_ int64, c *rawConn) {
			h := c.firstRequest(t)
			if h == nil {
				return
			}
			_ = c.writeHeaders(h.StreamID, false, ":status", "200")
			_ = c.fr.WriteData(h.StreamID, false, []byte("part"))
			_ = c.fr.WriteRSTStream(h.StreamID, http2.ErrCodeInternal)
			_ = c.drain()
		})
		tr, _ := newTransport(t)
		res, err := tr.RoundTrip(newRequest(t, http.MethodGet, s.url+"/", nil))
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, err := io.ReadAll(res.Body)
		var se http2.StreamError
		if string(b) != "part" || !errors.As(err, &se) || se.Code != http2.ErrCodeInternal {
			t.Errorf("read %q, %v; want part and the stream's INTERNAL_ERROR", b, err)
		}
	})

	t.Run("request body read error", func(t *testing.T) {
		bodyErr := make(chan error, 1)
		s := newH2Server(t, func(w http.ResponseWriter, r *http.Request) {
			_, err := io.ReadAll(r.Body)
			bodyErr <- err
		})
		tr, _ := newTransport(t)
		broken := errors.New("disk on fire")
		req := newRequest(t, http.MethodPost, s.url+"/", io.MultiReader(strings.NewReader("some"), iotest.ErrReader(broken)))
		if res, err := tr.RoundTrip(req); err == nil {
			_ = res.Body.Close()
			t.Errorf("RoundTrip: %d, want an error", res.StatusCode)
		} else if !errors.Is(err, broken) {
			t.Errorf("RoundTrip: %v, want it to wrap the body's error", err)
		}
		if err := recv(t, bodyErr, "the handler"); err == nil {
			t.Errorf("the server read a clean end of a broken body")
		}
	})

	t.Run("body shorter than its content-length", func(t *testing.T) {
		s := newRawServer(t, func(_ int64, c *rawConn) {
			if err := c.handshake(); err != nil {
				t.Error(err)
				return
			}
			for {
				h, err := c.headers()
				if err != nil {
					return
				}
				_ = c.writeHeaders(h.StreamID, false, ":status", "200", "content-length", "10")
				_ = c.fr.WriteData(h.StreamID, true, []byte("12345"))
			}
		})
		tr, _ := newTransport(t)
		bodyMustFail(t, tr, s.url+"/", false)
	})

	t.Run("body longer than its content-length", func(t *testing.T) {
		s := newRawServer(t, func(_ int64, c *rawConn) {
			h := c.firstRequest(t)
			if h == nil {
				return
			}
			_ = c.writeHeaders(h.StreamID, false, ":status", "200", "content-length", "3")
			_ = c.fr.WriteData(h.StreamID, true, []byte("12345"))
			_ = c.drain()
		})
		tr, _ := newTransport(t)
		bodyMustFail(t, tr, s.url+"/", false)
	})

	t.Run("request body shorter than its ContentLength", func(t *testing.T) {
		bodyErr := make(chan error, 1)
		s := newH2Server(t, func(w http.ResponseWriter, r *http.Request) {
			_, err := io.ReadAll(r.Body)
			bodyErr <- err
		})
		tr, _ := newTransport(t)
		req := newRequest(t, http.MethodPost, s.url+"/", strings.NewReader("12345"))
		req.ContentLength = 10
		if res, err := tr.RoundTrip(req); err == nil {
			_ = res.Body.Close()
			t.Errorf("RoundTrip: %d, want an error", res.StatusCode)
		}
		if err := recv(t, bodyErr, "the handler"); err == nil {
			t.Errorf("the server read a clean end of a short body")
		}
	})

	t.Run("content-length but END_STREAM on HEADERS", func(t *testing.T) {
		// net/http's Transport answers io.ErrUnexpectedEOF here: the body
		// the header promised is missing.
		s := newRawServer(t, func(_ int64, c *rawConn) {
			h := c.firstRequest(t)
			if h == nil {
				return
			}
			_ = c.writeHeaders(h.StreamID, true, ":status", "200", "content-length", "10")
			_ = c.drain()
		})
		tr, _ := newTransport(t)
		bodyMustFail(t, tr, s.url+"/", true)
	})

	t.Run("invalid :status", func(t *testing.T) {
		s := newRawServer(t, func(_ int64, c *rawConn) {
			h := c.firstRequest(t)
			if h == nil {
				return
			}
			_ = c.writeHeaders(h.StreamID, true, ":status", "2xx")
			_ = c.drain()
		})
		tr, _ := newTransport(t)
		if res, err := tr.RoundTrip(newRequest(t, http.MethodGet, s.url+"/", nil)); err == nil {
			_ = res.Body.Close()
			t.Errorf("RoundTrip: %d, want an error", res.StatusCode)
		}
	})

	t.Run("dial failure", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		_ = ln.Close()
		tr, _ := newTransport(t)
		_, err = tr.RoundTrip(newRequest(t, http.MethodGet, "http://"+addr+"/", nil))
		if err == nil || !strings.Contains(err.Error(), addr) {
			t.Errorf("RoundTrip: %v, want an error naming %s", err, addr)
		}
	})

	t.Run("no host in the URL", func(t *testing.T) {
		// net/http refuses it ("no Host in request URL"); dialing ":80"
		// would reach whatever listens on this machine.
		var dialed atomic.Value
		tr, _ := newTransport(t, func(tr *h2conn.Transport) {
			tr.DialContext = func(_ context.Context, _, addr string) (net.Conn, error) {
				dialed.Store(addr)
				return nil, errors.New("not dialing in this test")
			}
		})
		req := newRequest(t, http.MethodGet, "http:///path", nil)
		req.Host = "example.test"
		if res, err := tr.RoundTrip(req); err == nil {
			_ = res.Body.Close()
			t.Errorf("RoundTrip: %d, want an error", res.StatusCode)
		}
		if addr := dialed.Load(); addr != nil {
			t.Errorf("dialed %q for a URL without a host", addr)
		}
	})

	t.Run("invalid header value", func(t *testing.T) {
		s := newH2Server(t, func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.WriteString(w, r.Header.Get("X-Ok"))
		})
		tr, _ := newTransport(t)
		req := newRequest(t, http.MethodGet, s.url+"/", nil)
		req.Header.Set("X-Ok", "before")
		fetch(t, tr, req)
		req = newRequest(t, http.MethodGet, s.url+"/", nil)
		req.Header.Set("X-Ok", "indexed")
		req.Header["X-Bad"] = []string{"a\nb"}
		if res, err := tr.RoundTrip(req); err == nil {
			_ = res.Body.Close()
			t.Errorf("RoundTrip with a newline in a value: %d, want an error", res.StatusCode)
		}
		// The encoder's table must still match the server's.
		req = newRequest(t, http.MethodGet, s.url+"/", nil)
		req.Header.Set("X-Ok", "after")
		if _, body := fetch(t, tr, req); body != "after" {
			t.Errorf("next request: %q", body)
		}
		if n := s.accepted.Load(); n != 1 {
			t.Errorf("%d connections, want 1", n)
		}
	})

	t.Run("invalid names and hosts", func(t *testing.T) {
		s := newH2Server(t, func(w http.ResponseWriter, r *http.Request) {})
		tr, _ := newTransport(t)
		for name, tune := range map[string]func(*http.Request){
			"space in a name":   func(r *http.Request) { r.Header["Bad Name"] = []string{"v"} },
			"pseudo-header":     func(r *http.Request) { r.Header[":path"] = []string{"/other"} },
			"space in the Host": func(r *http.Request) { r.Host = "bad host" },
			"NUL in a value":    func(r *http.Request) { r.Header.Set("X-Nul", "a\x00b") },
		} {
			req := newRequest(t, http.MethodGet, s.url+"/", nil)
			tune(req)
			if res, err := tr.RoundTrip(req); err == nil {
				_ = res.Body.Close()
				t.Errorf("%s: %d, want an error", name, res.StatusCode)
			}
		}
		fetch(t, tr, newRequest(t, http.MethodGet, s.url+"/", nil))
	})
}

// TestDialFailureShared: requests that wait on one dial share its failure,
// as net/http's do; only a dial that its own caller's cancel ended is tried
// again for the others. Dialing again per waiter, one after the other, makes
// the last of N requests to a dead upstream wait N dial timeouts.
func TestDialFailureShared(t *testing.T) {
	const requests = 5
	var dials atomic.Int64
	gate := make(chan struct{})
	tr, _ := newTransport(t, func(tr *h2conn.Transport) {
		tr.DialContext = func(ctx context.Context, _, addr string) (net.Conn, error) {
			dials.Add(1)
			select {
			case <-gate:
			case <-ctx.Done():
			}
			return nil, errors.New("no route to host")
		}
	})
	errs := make(chan error, requests)
	for range requests {
		req := newRequest(t, http.MethodGet, "http://upstream.test:8080/", nil)
		go func() {
			res, err := tr.RoundTrip(req)
			if err == nil {
				_ = res.Body.Close()
			}
			errs <- err
		}()
	}
	// Every request waits on the one dial before it fails.
	poll.Until(t, waitLimit, "every request to wait for the dial", func() bool {
		return dials.Load() == 1 && inTransportConn() == requests
	})
	close(gate)
	for range requests {
		if err := recv(t, errs, "RoundTrip to fail"); err == nil || !strings.Contains(err.Error(), "upstream.test:8080") {
			t.Errorf("RoundTrip: %v, want the dial's error naming the address", err)
		}
	}
	if n := dials.Load(); n != 1 {
		t.Errorf("%d dials for %d requests that waited on one failed dial, want 1", n, requests)
	}
}

// inTransportConn counts the goroutines inside the Transport's search for
// a connection: dialing, or waiting for another's dial.
func inTransportConn() int {
	var b strings.Builder
	_ = pprof.Lookup("goroutine").WriteTo(&b, 2)
	return strings.Count(b.String(), "h2conn.(*Transport).conn(")
}

func TestFallback(t *testing.T) {
	var h2 atomic.Int64
	s := newH2Server(t, func(w http.ResponseWriter, r *http.Request) {
		h2.Add(1)
		b, _ := io.ReadAll(r.Body)
		_, _ = w.Write(b)
	})
	tr, fb := newTransport(t)

	req := newRequest(t, http.MethodPost, s.url+"/", strings.NewReader("continue"))
	req.Header.Set("Expect", "100-continue")
	if _, body := fetch(t, tr, req); body != "continue" {
		t.Errorf("Expect: 100-continue: %q", body)
	}
	if fb.calls() != 1 {
		t.Errorf("Expect: 100-continue: Fallback called %d times, want 1", fb.calls())
	}

	for _, url := range []string{"https://" + s.addr + "/", "ws://" + s.addr + "/"} {
		res, err := tr.RoundTrip(newRequest(t, http.MethodGet, url, nil))
		if err != nil || res.StatusCode != 299 {
			t.Errorf("%s: %v, %v; want Fallback's 299", url, res, err)
		}
	}
	if fb.calls() != 3 {
		t.Errorf("Fallback called %d times, want 3", fb.calls())
	}

	fetch(t, tr, newRequest(t, http.MethodGet, s.url+"/", nil))
	if fb.calls() != 3 {
		t.Errorf("a plain http request went to Fallback")
	}
	if h2.Load() != 2 {
		t.Errorf("the server saw %d requests, want 2", h2.Load())
	}
}

// idleTimeout is the IdleTimeout of the tests that use one: long next to
// what a loaded machine under -race takes to run a request (tens of
// milliseconds, 130 ms seen), so that a test's checks of "not yet closed"
// are not lost to scheduling.
const idleTimeout = 300 * time.Millisecond

func TestIdleTimeout(t *testing.T) {
	const idle = idleTimeout
	s := newH2Server(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok")
	})
	tr, _ := newTransport(t, func(tr *h2conn.Transport) { tr.IdleTimeout = idle })
	start := time.Now()
	fetch(t, tr, newRequest(t, http.MethodGet, s.url+"/", nil))
	poll.Until(t, 5*time.Second, "the idle connection to close", func() bool { return s.closed.Load() == 1 })
	if d := time.Since(start); d < idle {
		t.Errorf("closed %v after the request started, before IdleTimeout %v", d, idle)
	}
	// The next request dials again.
	fetch(t, tr, newRequest(t, http.MethodGet, s.url+"/", nil))
	if n := s.accepted.Load(); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}
}

// TestBusyConnectionsStay: neither IdleTimeout nor CloseIdleConnections
// touches a connection with a stream open.
func TestBusyConnectionsStay(t *testing.T) {
	const idle = idleTimeout
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	s := newH2Server(t, func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		<-release
		_, _ = io.WriteString(w, "late")
	})
	tr, _ := newTransport(t, func(tr *h2conn.Transport) { tr.IdleTimeout = idle })
	type result struct {
		body string
		err  error
	}
	done := make(chan result, 1)
	req := newRequest(t, http.MethodGet, s.url+"/", nil)
	go func() {
		res, err := tr.RoundTrip(req)
		if err != nil {
			done <- result{err: err}
			return
		}
		defer res.Body.Close()
		b, err := io.ReadAll(res.Body)
		done <- result{string(b), err}
	}()
	select {
	case <-started:
	case r := <-done:
		close(release)
		t.Fatalf("the request ended before its handler started: %q, %v", r.body, r.err)
	case <-time.After(waitLimit):
		close(release)
		t.Fatalf("timed out after %v waiting for the handler", waitLimit)
	}
	tr.CloseIdleConnections()
	// Several IdleTimeouts with the stream open: what is measured, not a
	// wait for another goroutine. The idle timer fires at least three
	// times in it, however late this goroutine wakes.
	time.Sleep(4 * idle)
	// Asked before the stream ends: once it has, the connection is idle,
	// and closing it IdleTimeout later is right.
	closedBusy := s.closed.Load()
	close(release)
	if r := recv(t, done, "the answer"); r.err != nil || r.body != "late" {
		t.Errorf("%q, %v; want late", r.body, r.err)
	}
	if closedBusy != 0 {
		t.Errorf("the busy connection was closed")
	}
	if n := s.accepted.Load(); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
	// The idle timer was live all along: with the stream gone, it closes
	// the connection.
	poll.Until(t, waitLimit, "the connection, idle now, to close", func() bool { return s.closed.Load() == 1 })
}

// TestSlowSettingsOutlastIdleTimeout: an upstream slower to send its
// SETTINGS than IdleTimeout still answers the request that dialled it. The
// idle clock belongs to connections in the pool; before, it started at the
// dial and closed the connection as idle under its first request.
func TestSlowSettingsOutlastIdleTimeout(t *testing.T) {
	const idle = 50 * time.Millisecond
	s := newRawServer(t, func(_ int64, c *rawConn) {
		time.Sleep(3 * idle) // the slow upstream under test, not synchronisation
		h := c.firstRequest(t)
		if h == nil {
			return
		}
		_ = c.answer(h.StreamID, "ok")
		_ = c.drain()
	})
	tr, _ := newTransport(t, func(tr *h2conn.Transport) { tr.IdleTimeout = idle })
	if _, body := fetch(t, tr, newRequest(t, http.MethodGet, s.url+"/", nil)); body != "ok" {
		t.Errorf("%q; want ok", body)
	}
}

// TestCloseIdleConnectionsRacingRequests: a connection closed as idle is
// marked so in the same hold of its lock as the check, so a request never
// reserves a stream on a connection about to close under it; before, one
// in a few thousand such requests failed on a loaded machine.
func TestCloseIdleConnectionsRacingRequests(t *testing.T) {
	s := newH2Server(t, func(w http.ResponseWriter, r *http.Request) {})
	tr, _ := newTransport(t)
	var stop atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		for !stop.Load() {
			tr.CloseIdleConnections()
		}
	}()
	failed, first := 0, error(nil)
	for range 2000 {
		res, err := tr.RoundTrip(newRequest(t, http.MethodGet, s.url+"/", nil))
		if err != nil {
			if failed == 0 {
				first = err
			}
			failed++
			continue
		}
		res.Body.Close()
	}
	stop.Store(true)
	<-done
	if failed > 0 {
		t.Errorf("%d of 2000 requests failed while idle connections were being closed; first: %v", failed, first)
	}
}

func TestReadIdleTimeout(t *testing.T) {
	t.Run("dead upstream", func(t *testing.T) {
		pings := make(chan int, 1)
		s := newRawServer(t, func(_ int64, c *rawConn) {
			c.ackPings = false
			if err := c.handshake(); err != nil {
				t.Error(err)
				return
			}
			if _, err := c.headers(); err != nil {
				t.Error(err)
				return
			}
			err := c.drain()
			if err != nil {
				t.Errorf("waiting for the client to close: %v", err)
			}
			pings <- c.pings
		})
		// PingTimeout is long next to scheduling delay: the PING's timer
		// is armed before the PING is written, and a writer that wakes
		// late would see the connection closed before it pinged.
		tr, _ := newTransport(t, func(tr *h2conn.Transport) {
			tr.ReadIdleTimeout = 100 * time.Millisecond
			tr.PingTimeout = time.Second
		})
		start := time.Now()
		res, err := tr.RoundTrip(newRequest(t, http.MethodGet, s.url+"/", nil))
		if err == nil {
			_ = res.Body.Close()
			t.Fatal("RoundTrip succeeded on a connection that never answers")
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("RoundTrip failed after %v, want within a few seconds", d)
		}
		if errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("RoundTrip: %v: the request's own deadline, not the dead connection", err)
		}
		if n := recv(t, pings, "the client to close"); n < 1 {
			t.Errorf("the client closed the connection without a PING")
		}
	})

	t.Run("answered pings keep the connection", func(t *testing.T) {
		s := newRawServer(t, func(_ int64, c *rawConn) {
			h := c.firstRequest(t)
			if h == nil {
				return
			}
			// A slow answer: the client pings meanwhile, and must be
			// content with the acks. A second PING is a check that found
			// the first one answered: one not taken as the answer closes
			// the connection instead.
			if err := c.awaitPings(2); err != nil {
				t.Errorf("waiting for PINGs: %v", err)
				return
			}
			_ = c.answer(h.StreamID, "slow")
			_ = c.drain()
		})
		// The next check after a PING is PingTimeout later: long, so
		// that an ack held up by scheduling is still in time.
		tr, _ := newTransport(t, func(tr *h2conn.Transport) {
			tr.ReadIdleTimeout = 50 * time.Millisecond
			tr.PingTimeout = time.Second
		})
		if _, body := fetch(t, tr, newRequest(t, http.MethodGet, s.url+"/", nil)); body != "slow" {
			t.Errorf("body %q", body)
		}
	})
}

// TestReadIdleTimeoutIdleConnection: a connection without streams has
// nothing to ping for; its watch must not fire over and over meanwhile,
// nor close it. Each firing of a time.AfterFunc is a new goroutine, which
// is what this counts.
func TestReadIdleTimeoutIdleConnection(t *testing.T) {
	const readIdle = 20 * time.Millisecond
	s := newH2Server(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok")
	})
	tr, _ := newTransport(t, func(tr *h2conn.Transport) {
		tr.ReadIdleTimeout = readIdle
		tr.PingTimeout = time.Second
	})
	fetch(t, tr, newRequest(t, http.MethodGet, s.url+"/", nil))
	sample := []metrics.Sample{{Name: "/sched/goroutines-created:goroutines"}}
	metrics.Read(sample)
	before := sample[0].Value.Uint64()
	start := time.Now()
	// A measurement window, not synchronisation: 15 ReadIdleTimeouts of
	// an idle connection.
	time.Sleep(15 * readIdle)
	metrics.Read(sample)
	window := time.Since(start)
	created := sample[0].Value.Uint64() - before
	// A timer re-armed for ReadIdleTimeout fires at most once per
	// ReadIdleTimeout of the window as it was measured (longer than asked
	// for on a loaded machine); twice that, and 20 for the rest of the
	// process, is room. A timer re-armed for nothing fires thousands of
	// times.
	if limit := 2*uint64(window/readIdle) + 20; created > limit {
		t.Errorf("%d goroutines started in %v by an idle connection with ReadIdleTimeout %v, want at most %d: a timer spinning", created, window, readIdle, limit)
	}
	// Still open, and used again.
	if _, body := fetch(t, tr, newRequest(t, http.MethodGet, s.url+"/", nil)); body != "ok" {
		t.Errorf("body %q after the idle window", body)
	}
	if n, closed := s.accepted.Load(), s.closed.Load(); n != 1 || closed != 0 {
		t.Errorf("%d connections, %d closed; want the idle one kept and used again", n, closed)
	}
}

// received is what the differential test's server saw of a request.
type received struct {
	Method, URI, Host string
	ContentLength     int64
	Header            http.Header
	Body              string
	Trailer           http.Header
}

// answered is what a client saw of an answer.
type answered struct {
	StatusCode    int
	Status        string
	Header        http.Header
	Body          string
	Trailer       http.Header
	ContentLength int64
	Err           string
}

// TestDifferential sends the same requests through h2conn and through
// net/http's HTTP/2 Transport, to the same net/http server, and compares
// both what came back and what the server saw.
func TestDifferential(t *testing.T) {
	var mu sync.Mutex
	var last received
	s := newH2Server(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		last = received{r.Method, r.RequestURI, r.Host, r.ContentLength, r.Header.Clone(), summary(b), r.Trailer.Clone()}
		mu.Unlock()
		switch path := r.URL.Path; {
		case strings.HasPrefix(path, "/status/"):
			code, _ := strconv.Atoi(strings.TrimPrefix(path, "/status/"))
			w.Header().Set("X-Status", strconv.Itoa(code))
			w.WriteHeader(code)
			_, _ = io.WriteString(w, "status body")
		case path == "/missing":
			http.NotFound(w, r)
		case path == "/big":
			_, _ = w.Write(pattern(4, 1<<20+7))
		case path == "/sized":
			w.Header().Set("Content-Length", "5")
			_, _ = io.WriteString(w, "sized")
		case path == "/trailers":
			w.Header().Set("Trailer", "X-One, X-Never")
			_, _ = io.WriteString(w, "with trailers")
			w.Header().Set("X-One", "1")
			w.Header().Set(http.TrailerPrefix+"X-Two", "2")
		case path == "/multi":
			w.Header()["X-Multi"] = []string{"a", "b, c", ""}
			w.Header().Add("Set-Cookie", "s1=v1; Path=/")
			w.Header().Add("Set-Cookie", "s2=v2; HttpOnly")
			_, _ = io.WriteString(w, "multi")
		case path == "/echo":
			w.Header().Set("Content-Type", r.Header.Get("Content-Type"))
			_, _ = w.Write(b)
		default:
			_, _ = io.WriteString(w, "plain")
		}
	})
	ours, _ := newTransport(t)
	theirs := &http.Transport{Protocols: h2cOnly(), DisableCompression: true}
	t.Cleanup(theirs.CloseIdleConnections)

	type request struct {
		name string
		make func() *http.Request
	}
	get := func(path string) func() *http.Request {
		return func() *http.Request { return newRequest(t, http.MethodGet, s.url+path, nil) }
	}
	requests := []request{
		{"GET", get("/plain")},
		{"GET sized", get("/sized")},
		{"HEAD", func() *http.Request { return newRequest(t, http.MethodHead, s.url+"/sized", nil) }},
		{"POST", func() *http.Request {
			req := newRequest(t, http.MethodPost, s.url+"/echo", strings.NewReader("posted body"))
			req.Header.Set("Content-Type", "text/x-test")
			return req
		}},
		{"PUT unknown length", func() *http.Request {
			return newRequest(t, http.MethodPut, s.url+"/echo", io.MultiReader(strings.NewReader("streamed")))
		}},
		{"DELETE", func() *http.Request { return newRequest(t, http.MethodDelete, s.url+"/plain", nil) }},
		{"204", get("/status/204")},
		{"304", get("/status/304")},
		{"404", get("/missing")},
		{"unknown status", get("/status/299")},
		{"big", get("/big")},
		{"trailers", get("/trailers")},
		{"request trailers", func() *http.Request {
			req := newRequest(t, http.MethodPost, s.url+"/plain", nil)
			req.Trailer = http.Header{"X-Req": nil}
			req.Body = &trailerBody{r: strings.NewReader("data"), set: func() { req.Trailer.Set("X-Req", "r") }}
			req.ContentLength = -1
			return req
		}},
		{"multi-valued headers", func() *http.Request {
			req := newRequest(t, http.MethodGet, s.url+"/multi", nil)
			req.Header["X-Multi"] = []string{"1", "2, 3", ""}
			req.Header.Set("Accept", "*/*")
			return req
		}},
		{"cookies", func() *http.Request {
			req := newRequest(t, http.MethodGet, s.url+"/multi", nil)
			req.AddCookie(&http.Cookie{Name: "a", Value: "1"})
			req.AddCookie(&http.Cookie{Name: "b", Value: "two words"})
			return req
		}},
		{"odd query", get("/plain/%7Efile%20name?q=a+b&r=%2F%3F%26&s=caf%C3%A9&t=!$'()*,;:@&u=&v")},
		{"Host override", func() *http.Request {
			req := newRequest(t, http.MethodGet, s.url+"/plain", nil)
			req.Host = "virtual.test"
			return req
		}},
	}

	do := func(rt http.RoundTripper, req *http.Request) (answered, received) {
		mu.Lock()
		last = received{}
		mu.Unlock()
		res, err := rt.RoundTrip(req)
		if err != nil {
			return answered{Err: err.Error()}, received{}
		}
		defer res.Body.Close()
		b, err := io.ReadAll(res.Body)
		a := answered{res.StatusCode, res.Status, res.Header.Clone(), summary(b), res.Trailer, res.ContentLength, ""}
		if err != nil {
			a.Err = err.Error()
		}
		a.Header.Del("Date")
		mu.Lock()
		defer mu.Unlock()
		return a, last
	}
	for _, r := range requests {
		t.Run(r.name, func(t *testing.T) {
			oursA, oursR := do(ours, r.make())
			theirsA, theirsR := do(theirs, r.make())
			if oursA.Err != "" || theirsA.Err != "" {
				t.Errorf("errors: ours %q, net/http's %q", oursA.Err, theirsA.Err)
			}
			// A status without a reason phrase: net/http leaves "299 ",
			// h2conn drops the trailing space; deliberately.
			theirsA.Status = strings.TrimSuffix(theirsA.Status, " ")
			diff(t, "answer", oursA, theirsA)
			diff(t, "request as the server saw it", oursR, theirsR)
		})
	}
}

// summary is a body short enough to print.
func summary(b []byte) string {
	if len(b) <= 64 {
		return string(b)
	}
	return fmt.Sprintf("%d bytes, sha256 %x", len(b), sha256.Sum256(b))
}

// diff reports the fields of two structs of the same type that differ.
func diff[T any](t *testing.T, what string, ours, theirs T) {
	t.Helper()
	o, th := fmt.Sprintf("%#v", ours), fmt.Sprintf("%#v", theirs)
	if o == th {
		return
	}
	t.Errorf("%s differs:\n  h2conn:   %s\n  net/http: %s", what, shorten(o), shorten(th))
}

func shorten(s string) string {
	if len(s) > 1500 {
		return s[:1500] + "…"
	}
	return s
}

// An answer's body is Ready when a Read would not wait: not while the
// upstream has sent nothing more, but once a part, or the end, has come.
func TestBodyReady(t *testing.T) {
	next := make(chan string)
	s := newH2Server(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		rc := http.NewResponseController(w)
		_ = rc.Flush()
		for part := range next {
			_, _ = io.WriteString(w, part)
			_ = rc.Flush()
		}
	})
	tr, _ := newTransport(t)
	res, err := tr.RoundTrip(newRequest(t, http.MethodGet, s.url+"/parts", nil))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body := res.Body.(interface{ Ready() bool })
	if body.Ready() {
		t.Fatal("Ready before the upstream sent any of the body")
	}
	next <- "one"
	poll.Until(t, waitLimit, "the part to arrive", body.Ready)
	got := make([]byte, 3)
	if _, err := io.ReadFull(res.Body, got); err != nil || string(got) != "one" {
		t.Fatalf("read %q, %v; want one", got, err)
	}
	if body.Ready() {
		t.Fatal("Ready with the part read and nothing more sent")
	}
	close(next)
	poll.Until(t, waitLimit, "the end to arrive", body.Ready)
	if n, err := res.Body.Read(got); n != 0 || err != io.EOF {
		t.Fatalf("after the end: %d, %v; want 0, EOF", n, err)
	}
}

// readyBody is a request body that says (Ready) whether a Read would wait,
// as the app side's does: first parts that have come, then a pipe that
// has not.
type readyBody struct {
	here [][]byte
	rest io.Reader // after here; nil: the end has come too
}

func (b *readyBody) Ready() bool { return len(b.here) > 0 || b.rest == nil }

func (b *readyBody) Read(p []byte) (int, error) {
	if len(b.here) > 0 {
		n := copy(p, b.here[0])
		if b.here[0] = b.here[0][n:]; len(b.here[0]) == 0 {
			b.here = b.here[1:]
		}
		return n, nil
	}
	if b.rest == nil {
		return 0, io.EOF
	}
	return b.rest.Read(p)
}

func (b *readyBody) Close() error { return nil }

// A body that has come whole goes with its request: one DATA frame that
// ends the stream, not an empty one after it. One that has come in part is
// sent as far as it has, and the rest from a goroutine: the answer can be
// read meanwhile. A longer one is sent whole.
func TestReadyBodyGoesWithItsRequest(t *testing.T) {
	type frame struct {
		n   int
		end bool
	}
	got := make(chan []frame, 1)
	s := newRawServer(t, func(_ int64, c *rawConn) {
		h := c.firstRequest(t)
		if h == nil {
			return
		}
		var frames []frame
		var body []byte
		answered := false
		for {
			f, err := c.next()
			if err != nil {
				t.Error(err)
				return
			}
			d, ok := f.(*http2.DataFrame)
			if !ok || d.StreamID != h.StreamID {
				continue
			}
			frames = append(frames, frame{len(d.Data()), d.StreamEnded()})
			body = append(body, d.Data()...)
			if !answered && h.PseudoValue("path") == "/part" {
				// The answer begins before the rest of the body has come.
				answered = true
				_ = c.writeHeaders(h.StreamID, false, ":status", "200")
			}
			if d.StreamEnded() {
				break
			}
		}
		got <- frames
		switch {
		case answered:
			_ = c.fr.WriteData(h.StreamID, true, body)
		case len(body) > 1<<10:
			_ = c.answer(h.StreamID, fmt.Sprintf("%d %x", len(body), sha256.Sum256(body)))
		default:
			_ = c.answer(h.StreamID, string(body))
		}
		_ = c.drain()
	})

	t.Run("whole", func(t *testing.T) {
		tr, _ := newTransport(t)
		req := newRequest(t, http.MethodPost, s.url+"/whole", &readyBody{here: [][]byte{[]byte("mess"), []byte("age")}})
		req.ContentLength = -1
		if _, body := fetch(t, tr, req); body != "message" {
			t.Errorf("echo %q, want message", body)
		}
		if frames := <-got; !slices.Equal(frames, []frame{{7, true}}) {
			t.Errorf("DATA frames %v, want one of 7 bytes that ends the stream", frames)
		}
	})
	t.Run("part", func(t *testing.T) {
		tr, _ := newTransport(t)
		pr, pw := io.Pipe()
		defer pw.Close()
		req := newRequest(t, http.MethodPost, s.url+"/part", &readyBody{here: [][]byte{[]byte("head")}, rest: pr})
		req.ContentLength = -1
		res, err := tr.RoundTrip(req) // must not wait for the pipe
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		if _, err := io.WriteString(pw, "tail"); err != nil {
			t.Fatal(err)
		}
		_ = pw.Close()
		if b, err := io.ReadAll(res.Body); err != nil || string(b) != "headtail" {
			t.Errorf("echo %q, %v; want headtail", b, err)
		}
		if frames := <-got; len(frames) < 2 || frames[0] != (frame{4, false}) {
			t.Errorf("DATA frames %v, want head's 4 bytes first, the rest after", frames)
		}
	})
	t.Run("longer than a chunk", func(t *testing.T) {
		tr, _ := newTransport(t)
		want := pattern(7, 40<<10)
		req := newRequest(t, http.MethodPost, s.url+"/long", &readyBody{here: [][]byte{slices.Clone(want)}})
		req.ContentLength = int64(len(want))
		if _, body := fetch(t, tr, req); body != fmt.Sprintf("%d %x", len(want), sha256.Sum256(want)) {
			t.Errorf("the upstream got %s; want %d bytes, %x", body, len(want), sha256.Sum256(want))
		}
		<-got
	})
}

// An upstream that gives a stream no window until it has seen it (an
// initial window of 0) still gets a body that has come: the HEADERS held
// back for its first frame go out before that frame waits for a window.
func TestReadyBodyWaitsForAWindowWithItsHeadersSent(t *testing.T) {
	s := newRawServer(t, func(_ int64, c *rawConn) {
		if err := c.handshake(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0}); err != nil {
			t.Error(err)
			return
		}
		h, err := c.headers()
		if err != nil {
			t.Error(err) // with the HEADERS held back for good, the deadline ends this wait
			return
		}
		if err := c.fr.WriteWindowUpdate(h.StreamID, 1<<16); err != nil {
			t.Error(err)
			return
		}
		body, err := c.body(h.StreamID)
		if err != nil {
			t.Error(err)
			return
		}
		_ = c.answer(h.StreamID, string(body))
		_ = c.drain()
	})
	tr, _ := newTransport(t)
	req := newRequest(t, http.MethodPost, s.url+"/", &readyBody{here: [][]byte{[]byte("message")}})
	req.ContentLength = 7
	if _, body := fetch(t, tr, req); body != "message" {
		t.Errorf("echo %q, want message", body)
	}
}
