package h1serve

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/watertight/watertight/internal/poll"
	"github.com/watertight/watertight/proxy/internal/writertest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// pair serves one handler twice: through h1serve (handing off to a
// net/http server) and through a plain net/http server, so that tests can
// compare the two on the same bytes.
type pair struct {
	fast, std string // addresses
	handed    atomic.Int32
	srv       *Server
}

// watching reports whether any connection's client-gone watch is reading.
func (p *pair) watching() bool {
	p.srv.mu.Lock()
	defer p.srv.mu.Unlock()
	for c := range p.srv.conns {
		c.watchMu.Lock()
		running := c.watchDone != nil
		c.watchMu.Unlock()
		if running {
			return true
		}
	}
	return false
}

// chanListener is the net.Listener HandOff feeds.
type chanListener struct {
	conns chan net.Conn
	done  chan struct{}
	addr  net.Addr
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}
func (l *chanListener) Close() error   { return nil }
func (l *chanListener) Addr() net.Addr { return l.addr }

func startPair(t testing.TB, h http.Handler, tune ...func(*Server)) *pair {
	t.Helper()
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	std := &http.Server{Handler: h, Protocols: &protocols, ReadHeaderTimeout: 5 * time.Second}
	stdLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fastLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	handed := &chanListener{conns: make(chan net.Conn), done: make(chan struct{}), addr: fastLn.Addr()}
	p := &pair{fast: fastLn.Addr().String(), std: stdLn.Addr().String()}
	p.srv = &Server{
		Handler:           h,
		HTTPServer:        std,
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       time.Minute,
		HandOff: func(c net.Conn) {
			p.handed.Add(1)
			select {
			case handed.conns <- c:
			case <-handed.done:
				c.Close()
			}
		},
	}
	for _, f := range tune {
		f(p.srv)
	}
	serving := make(chan struct{}, 3)
	go func() { defer func() { serving <- struct{}{} }(); _ = std.Serve(stdLn) }()
	go func() { defer func() { serving <- struct{}{} }(); _ = std.Serve(handed) }()
	go func() {
		defer func() { serving <- struct{}{} }()
		for {
			c, err := fastLn.Accept()
			if err != nil {
				return
			}
			go p.srv.ServeConn(c)
		}
	}()
	t.Cleanup(func() {
		fastLn.Close()
		p.srv.Close()
		close(handed.done)
		std.Close()
		for range 3 {
			<-serving
		}
		// ServeConn returns once its connection is closed; wait for the
		// last of them so goleak sees none.
		poll.Until(t, 5*time.Second, "every connection to end after Close", func() bool {
			p.srv.mu.Lock()
			defer p.srv.mu.Unlock()
			return len(p.srv.conns) == 0
		})
	})
	return p
}

// exchange writes raw to addr and reads n answers, each as a normalised text
// (status, sorted headers without Date, body, trailers), then whether the
// server closed the connection.
func exchange(t *testing.T, addr, raw string, n int) []string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	var out []string
	for range n {
		req, _ := http.ReadRequest(bufio.NewReader(strings.NewReader(raw))) // for HEAD framing
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			out = append(out, "error: "+err.Error())
			return out
		}
		out = append(out, describe(resp))
	}
	_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := br.ReadByte(); errors.Is(err, io.EOF) {
		out = append(out, "closed")
	}
	return out
}

// describe reads resp to its end and returns what a client can tell of it:
// status, framing, the headers but Date (sorted), body, trailers.
func describe(resp *http.Response) string {
	body, err := io.ReadAll(resp.Body)
	s := fmt.Sprintf("%s %s content-length %d, chunked %v, close %v\n", resp.Proto, resp.Status, resp.ContentLength,
		slices.Contains(resp.TransferEncoding, "chunked"), resp.Close)
	var keys []string
	for k := range resp.Header {
		if k != "Date" {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		s += fmt.Sprintf("%s: %q\n", k, resp.Header[k])
	}
	s += fmt.Sprintf("body %q\n", body)
	if err != nil {
		s += "body error: " + err.Error() + "\n"
	}
	if len(resp.Trailer) > 0 {
		s += fmt.Sprintf("trailer %v\n", resp.Trailer)
	}
	return s
}

const get = "GET /p HTTP/1.1\r\nHost: a\r\n\r\n"

func TestSameAnswersAsNetHTTP(t *testing.T) {
	type tc struct {
		name    string
		h       http.HandlerFunc
		raw     string
		n       int
		handOff bool // served by net/http's server, not the loop
	}
	echo := func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %q %v host=%s", r.Method, r.URL, b, err, r.Host)
	}
	cases := []tc{
		{name: "content-length", n: 1, raw: get, h: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "5")
			io.WriteString(w, "hello")
		}},
		{name: "short body of unknown length", n: 1, raw: get, h: func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "hi there")
		}},
		{name: "long body of unknown length", n: 1, raw: get, h: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			io.WriteString(w, strings.Repeat("x", 5000))
		}},
		{name: "flushed", n: 1, raw: get, h: func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "a")
			w.(http.Flusher).Flush()
			io.WriteString(w, "b")
		}},
		{name: "no body written", n: 1, raw: get, h: func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusNotFound)
		}},
		{name: "HEAD with length", n: 1, raw: "HEAD /p HTTP/1.1\r\nHost: a\r\n\r\n", h: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "5")
			io.WriteString(w, "hello")
		}},
		{name: "HEAD without length", n: 1, raw: "HEAD /p HTTP/1.1\r\nHost: a\r\n\r\n", h: func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusOK)
		}},
		{name: "204", n: 1, raw: get, h: func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) }},
		{name: "304", n: 1, raw: get, h: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Etag", `"x"`)
			w.WriteHeader(http.StatusNotModified)
		}},
		{name: "sniffed content type", n: 1, raw: get, h: func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "<html><body>hi</body></html>")
		}},
		{name: "content type left out on purpose", n: 1, raw: get, h: func(w http.ResponseWriter, r *http.Request) {
			w.Header()["Content-Type"] = nil
			io.WriteString(w, "<html></html>")
		}},
		{name: "103 then 200", n: 1, raw: get, h: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Link", "</s.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			w.Header().Del("Link")
			io.WriteString(w, "done")
		}},
		{name: "announced trailers", n: 1, raw: get, h: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Trailer", "X-Sum")
			w.WriteHeader(http.StatusOK)
			io.WriteString(w, "body")
			w.Header().Set("X-Sum", "42")
		}},
		{name: "trailers by prefix", n: 1, raw: get, h: func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "body")
			w.(http.Flusher).Flush()
			w.Header().Set(http.TrailerPrefix+"X-Late", "yes")
		}},
		{name: "header values with line breaks", n: 1, raw: get, h: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Split", "a\r\nInjected: 1")
			w.Header()["X-Multi"] = []string{"1", "2"}
			io.WriteString(w, "ok")
		}},
		{name: "body longer than its Content-Length", n: 1, raw: get, h: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "2")
			if _, err := io.WriteString(w, "hello"); err != http.ErrContentLength {
				panic(fmt.Sprintf("writing past Content-Length: %v", err))
			}
		}},
		{name: "body shorter than its Content-Length", n: 1, raw: get, h: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "10")
			io.WriteString(w, "abc")
		}},
		{name: "handler closes", n: 1, raw: get, h: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Connection", "close")
			io.WriteString(w, "bye")
		}},
		{name: "request body", n: 1, raw: "POST /p?q=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", h: echo},
		{name: "unread request body, then another request", n: 2,
			raw: "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello" + get,
			h:   func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.Method) }},
		{name: "pipelined", n: 3, raw: get + get + "GET /q HTTP/1.1\r\nHost: b\r\n\r\n", h: echo},
		{name: "bare LF line ends", n: 1, raw: "GET /p HTTP/1.1\nHost: a\n\n", h: echo},
		{name: "absolute form", n: 1, raw: "GET http://b/p HTTP/1.1\r\nHost: a\r\n\r\n", h: echo},
		// Handed to net/http's server.
		{name: "HTTP/1.0", n: 1, handOff: true, raw: "GET /p HTTP/1.0\r\nHost: a\r\n\r\n", h: echo},
		{name: "Expect 100-continue", n: 1, handOff: true, raw: "POST /p HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi", h: echo},
		{name: "chunked request body", n: 1, handOff: true, raw: "POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n", h: echo},
		{name: "large request body", n: 1, handOff: true, raw: "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 70000\r\n\r\n" + strings.Repeat("b", 70000), h: echo},
		{name: "Connection close", n: 1, handOff: true, raw: "GET /p HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", h: echo},
		{name: "Connection keep-alive", n: 2, raw: "GET /p HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\n" + "GET /q HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive, keep-alive\r\n\r\n", h: echo},
		{name: "Connection other token", n: 1, handOff: true, raw: "GET /p HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\r\n", h: echo},
		{name: "Upgrade", n: 1, handOff: true, raw: "GET /p HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", h: echo},
		{name: "CONNECT", n: 1, handOff: true, raw: "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", h: echo},
		{name: "no Host", n: 1, handOff: true, raw: "GET /p HTTP/1.1\r\n\r\n", h: echo},
		{name: "two Hosts", n: 1, handOff: true, raw: "GET /p HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", h: echo},
		{name: "bad Host", n: 1, handOff: true, raw: "GET /p HTTP/1.1\r\nHost: a b\r\n\r\n", h: echo},
		{name: "bad header name", n: 1, handOff: true, raw: "GET /p HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n", h: echo},
		{name: "malformed request line", n: 1, handOff: true, raw: "NONSENSE\r\n\r\n", h: echo},
		{name: "head over the read buffer", n: 1, handOff: true, raw: "GET /p HTTP/1.1\r\nHost: a\r\nX-Big: " + strings.Repeat("v", 5000) + "\r\n\r\n", h: echo},
		{name: "served, then handed off", n: 2, handOff: true, raw: get + "GET /p HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", h: echo},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := startPair(t, c.h)
			want := exchange(t, p.std, c.raw, c.n)
			got := exchange(t, p.fast, c.raw, c.n)
			if !slices.Equal(got, want) {
				t.Errorf("h1serve answered\n%s\nnet/http answered\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			if handed := p.handed.Load() > 0; handed != c.handOff {
				t.Errorf("handed off: %v, want %v", handed, c.handOff)
			}
		})
	}
}

// The HTTP/2 preface goes to net/http's server, which speaks h2c.
func TestH2CIsHandedOff(t *testing.T) {
	p := startPair(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.Proto) }))
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &protocols}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Get("http://" + p.fast + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "HTTP/2.0" || p.handed.Load() != 1 {
		t.Errorf("got %q, handed off %d times; want HTTP/2.0 through one hand-off", body, p.handed.Load())
	}
}

// A client that hangs up on a slow request cancels it, as with net/http's
// server: that is what frees the request's compartment slot.
// A client that hangs up mid-request cancels it, through the watch that
// starts once the request has run for a while; the watch loop ends when no
// request runs, and the next slow request starts it again.
func TestClientGoneCancelsTheRequest(t *testing.T) {
	started, canceled := make(chan struct{}), make(chan struct{})
	p := startPair(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		select {
		case <-r.Context().Done():
			canceled <- struct{}{}
		case <-time.After(10 * time.Second):
		}
	}))
	for i := range 2 {
		c, err := net.Dial("tcp", p.fast)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, get)
		<-started
		c.Close()
		select {
		case <-canceled:
		case <-time.After(5 * time.Second):
			t.Fatalf("request %d was not canceled when its client hung up", i+1)
		}
		poll.Until(t, 5*time.Second, "the watch loop to end with no request running", func() bool {
			return !p.srv.watching.Load()
		})
	}
	if p.handed.Load() != 0 {
		t.Error("the request was handed off")
	}
}

// The next request arriving while a slow one runs is read by the watch and
// must reach the reader intact.
func TestNextRequestDuringASlowOne(t *testing.T) {
	release := make(chan struct{})
	var n atomic.Int32
	p := startPair(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			<-release
		}
		io.WriteString(w, r.Method+" "+r.URL.Path) // a lost byte would show in the method
	}))
	c, err := net.Dial("tcp", p.fast)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /first HTTP/1.1\r\nHost: a\r\n\r\n")
	poll.Until(t, 5*time.Second, "the slow request's connection to be watched", p.watching)
	io.WriteString(c, "GET /second HTTP/1.1\r\nHost: a\r\n\r\n")
	close(release)
	br := bufio.NewReader(c)
	for _, want := range []string{"GET /first", "GET /second"} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		if string(body) != want {
			t.Errorf("got %q, want %q", body, want)
		}
	}
}

// ReverseProxy aborts an answer it cannot finish with
// http.ErrAbortHandler: the connection must be cut, not the body ended as
// if complete; and a handler's panic must not take the server down.
func TestAbortAndPanicCutTheConnection(t *testing.T) {
	for _, v := range []any{http.ErrAbortHandler, "boom"} {
		p := startPair(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/ok" {
				io.WriteString(w, "fine")
				return
			}
			io.WriteString(w, "partial")
			w.(http.Flusher).Flush()
			panic(v)
		}))
		got := exchange(t, p.fast, get, 1)
		if len(got) == 0 || !strings.Contains(got[0], "body error: unexpected EOF") {
			t.Errorf("panic(%v): got %q; want the chunked body cut short", v, got)
		}
		if got := exchange(t, p.fast, "GET /ok HTTP/1.1\r\nHost: a\r\n\r\n", 1); len(got) == 0 || !strings.Contains(got[0], `body "fine"`) {
			t.Errorf("after panic(%v) the server answered %q", v, got)
		}
	}
}

func TestShutdownDrains(t *testing.T) {
	release, started := make(chan struct{}), make(chan struct{})
	p := startPair(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			close(started)
			<-release
		}
		io.WriteString(w, "done")
	}))
	idle, err := net.Dial("tcp", p.fast)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	io.WriteString(idle, get)
	idleBr := bufio.NewReader(idle)
	if resp, err := http.ReadResponse(idleBr, nil); err != nil {
		t.Fatal(err)
	} else {
		io.Copy(io.Discard, resp.Body)
	}
	active, err := net.Dial("tcp", p.fast)
	if err != nil {
		t.Fatal(err)
	}
	defer active.Close()
	io.WriteString(active, "GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
	<-started

	shut := make(chan error, 1)
	go func() { shut <- p.srv.Shutdown(context.Background()) }()
	// The idle connection is closed at once.
	_ = idle.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := idleBr.ReadByte(); !errors.Is(err, io.EOF) {
		t.Errorf("idle connection: read %v, want EOF", err)
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a request in flight", err)
	default:
	}
	close(release)
	resp, err := http.ReadResponse(bufio.NewReader(active), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if string(body) != "done" || !resp.Close {
		t.Errorf("in-flight request: %q, close %v; want it answered with Connection: close", body, resp.Close)
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

func TestShutdownGivesUpWhenItsContextEnds(t *testing.T) {
	started := make(chan struct{})
	p := startPair(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-r.Context().Done() // ends when Shutdown closes the connection
	}))
	c, err := net.Dial("tcp", p.fast)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, get)
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := p.srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown = %v, want the context's error", err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("the connection is still open after Shutdown gave up")
	}
}

func TestIdleTimeoutClosesTheConnection(t *testing.T) {
	p := startPair(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}),
		func(s *Server) { s.IdleTimeout = 20 * time.Millisecond })
	got := exchange(t, p.fast, get, 1) // reads for 100 ms after the answer
	if got[len(got)-1] != "closed" {
		t.Errorf("got %q; want the connection closed once idle", got)
	}
}

// A connection that never sends a request is closed once idle too, and one
// that keeps sending is not: each request starts its idle time again.
func TestIdleTimeoutCountsFromTheLastRequest(t *testing.T) {
	const idle = 150 * time.Millisecond
	p := startPair(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}),
		func(s *Server) { s.IdleTimeout = idle })

	silent, err := net.Dial("tcp", p.fast)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	_ = silent.SetReadDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	if _, err := silent.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("a silent connection: %v; want it closed", err)
	}
	if took := time.Since(start); took < idle {
		t.Errorf("a silent connection was closed after %v, before its idle timeout %v", took, idle)
	}

	busy, err := net.Dial("tcp", p.fast)
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	_ = busy.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(busy)
	start = time.Now()
	for time.Since(start) < 3*idle {
		if _, err := io.WriteString(busy, get); err != nil {
			t.Fatalf("after %v of requests: %v", time.Since(start), err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("after %v of requests every idle/5: %v; want the connection kept", time.Since(start), err)
		}
		resp.Body.Close()
		time.Sleep(idle / 5) // the gap between requests is what is under test
	}
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("after the last request: %v; want the connection closed once idle", err)
	}
}

// A proxy's handler can hand the writer an upstream's header whole, while
// the writer's own is empty; after that, or once a field is set, it cannot.
func TestAdoptHeader(t *testing.T) {
	h, wait := writertest.AdoptHeader(t)
	p := startPair(t, h)
	c, err := net.Dial("tcp", p.fast)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, get)
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	writertest.CheckAdopted(t, res)
	if body, _ := io.ReadAll(io.LimitReader(res.Body, 2)); string(body) != "ok" {
		t.Errorf("body %q, want ok", body)
	}
	wait()
}

// Each answer on a connection holds its short body back in the
// connection's one buffer: the next answer must not see the last one's
// bytes, nor change them before they went out.
func TestHeldBodiesOnOneConnection(t *testing.T) {
	var n atomic.Int32
	p := startPair(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body := strings.Repeat("ab", 300) // held and sniffed: no type, no length
		if n.Add(1)%2 == 0 {
			body = "z"
		}
		io.WriteString(w, body)
	}))
	got := exchange(t, p.fast, get+get+get, 3)
	for i, want := range []string{strings.Repeat("ab", 300), "z", strings.Repeat("ab", 300)} {
		if len(got) <= i || !strings.Contains(got[i], fmt.Sprintf("body %q", want)) {
			t.Fatalf("answer %d: %q; want body of %d bytes", i, got, len(want))
		}
	}
}

func TestHeadLength(t *testing.T) {
	for in, want := range map[string]int{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\nrest": 27,
		"GET / HTTP/1.1\nHost: a\n\nrest":       24,
		"GET / HTTP/1.1\r\nHost: a\r\n":         0,
		"GET / HTTP/1.1\r\nHost: a\n\r\n":       26,
		"":                                      0,
	} {
		if got := headLength([]byte(in)); got != want {
			t.Errorf("headLength(%q) = %d, want %d", in, got, want)
		}
	}
}

// TestReadHeaderTimeout: a head that stops arriving halfway is given up on
// (the connection closed without an answer, as net/http's server does); a
// head that arrives in pieces within the time is served.
func TestReadHeaderTimeout(t *testing.T) {
	p := startPair(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }),
		func(s *Server) { s.ReadHeaderTimeout = 100 * time.Millisecond })
	dial := func() (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", p.fast)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		return c, bufio.NewReader(c)
	}

	c, br := dial()
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n") // and nothing more
	start := time.Now()
	if b, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("a stalled head got %q, %v; want the connection closed", b, err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("the stalled head was given up on after %v", took)
	}

	c, br = dial()
	io.WriteString(c, "GET / HTTP/1.1\r\n")
	time.Sleep(20 * time.Millisecond) // a pause well inside the timeout: the head comes in two pieces
	io.WriteString(c, "Host: a\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("a head in two pieces: %v, %v", resp, err)
	}
}
