package h1conn

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/iotest"
	"time"

	"github.com/watertight/watertight/internal/poll"
	"github.com/watertight/watertight/proxy/internal/rawio"
)

// wait bounds every wait for what another goroutine (a server, the
// sweeper, a cancelled request) does.
const wait = 10 * time.Second

// countingRT is the tests' Fallback: a real net/http Transport that counts
// the requests handed to it.
type countingRT struct {
	*http.Transport
	n atomic.Int64
}

func (c *countingRT) RoundTrip(req *http.Request) (*http.Response, error) {
	c.n.Add(1)
	return c.Transport.RoundTrip(req)
}

// newTransport makes a Transport that dials with a net.Dialer and falls
// back on a counted net/http Transport. Its idle connections, and its
// fallback's, are closed when the test ends.
func newTransport(t *testing.T) (*Transport, *countingRT) {
	t.Helper()
	fb := &countingRT{Transport: &http.Transport{DisableCompression: true}}
	var d net.Dialer
	tr := &Transport{DialContext: d.DialContext, Fallback: fb, MaxIdlePerHost: 8}
	t.Cleanup(tr.CloseIdleConnections)
	return tr, fb
}

// server is an httptest server that counts the connections it opened and
// saw closed.
type server struct {
	*httptest.Server
	opened, closed atomic.Int64
}

func newServer(t *testing.T, h http.HandlerFunc) *server {
	t.Helper()
	s := &server{Server: httptest.NewUnstartedServer(h)}
	s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		switch st {
		case http.StateNew:
			s.opened.Add(1)
		case http.StateClosed, http.StateHijacked:
			s.closed.Add(1)
		}
	}
	s.Start()
	t.Cleanup(s.Close)
	return s
}

// rawServer is a TCP server on loopback that answers with hand-written
// bytes.
type rawServer struct {
	url      string // http://addr/
	addr     string // host:port, as the transport's pools know it
	accepted atomic.Int64

	wg     sync.WaitGroup
	mu     sync.Mutex
	closed bool
	conns  []net.Conn
}

// newRawServer serves every connection it accepts with serve, given the
// connection's number (from 1). A connection is closed when serve returns;
// all of them are when the test ends, which ends a serve that still reads.
func newRawServer(t *testing.T, serve func(n int64, c net.Conn, br *bufio.Reader)) *rawServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &rawServer{url: "http://" + ln.Addr().String() + "/", addr: ln.Addr().String()}
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n := s.accepted.Add(1)
			s.mu.Lock()
			if s.closed {
				s.mu.Unlock()
				_ = c.Close()
				return
			}
			s.conns = append(s.conns, c)
			s.wg.Go(func() {
				defer c.Close()
				serve(n, c, bufio.NewReader(c))
			})
			s.mu.Unlock()
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		s.mu.Lock()
		s.closed = true
		for _, c := range s.conns {
			_ = c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

// readRequest reads a request and its body.
func readRequest(br *bufio.Reader) (*http.Request, string, error) {
	req, err := http.ReadRequest(br)
	if err != nil {
		return nil, "", err
	}
	b, err := io.ReadAll(req.Body)
	return req, string(b), err
}

// nextMove waits for what the client does with a connection it has had its
// answer on: "closed" if it closes it, "sent more" if it sends a request.
func nextMove(br *bufio.Reader) string {
	_, err := br.ReadByte()
	switch {
	case err == nil:
		return "sent more"
	case errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET):
		return "closed"
	default:
		return err.Error()
	}
}

// recv receives from ch, failing t if nothing comes within wait.
func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(wait):
		t.Fatalf("timed out after %v waiting for %s", wait, what)
		var zero T
		return zero
	}
}

func newRequest(t *testing.T, ctx context.Context, method, url string, body io.Reader) *http.Request {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// fetch sends req and reads its answer to the end.
func fetch(t *testing.T, rt http.RoundTripper, req *http.Request) (*http.Response, string) {
	t.Helper()
	resp, err := rt.RoundTrip(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", req.Method, req.URL, err)
	}
	return resp, string(b)
}

// get fetches url, failing t if that takes longer than wait.
func get(t *testing.T, rt http.RoundTripper, url string) (*http.Response, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	return fetch(t, rt, newRequest(t, ctx, http.MethodGet, url, nil))
}

// roundTripWithin runs RoundTrip, failing t if it has not returned within
// wait.
func roundTripWithin(t *testing.T, rt http.RoundTripper, req *http.Request) (*http.Response, error) {
	t.Helper()
	type result struct {
		resp *http.Response
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		resp, err := rt.RoundTrip(req)
		ch <- result{resp, err}
	}()
	r := recv(t, ch, "RoundTrip to return")
	return r.resp, r.err
}

// idleCount is how many idle connections to addr tr keeps.
func idleCount(tr *Transport, addr string) int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return len(tr.pools[addr])
}

// waitIdleDead polls until the one idle connection to addr fails the
// liveness probe the transport runs before reusing it: what the upstream
// did to it (a close, unasked bytes) has reached this side's socket.
func waitIdleDead(t *testing.T, tr *Transport, addr string) {
	t.Helper()
	poll.Until(t, wait, "the idle connection to fail the liveness probe", func() bool {
		tr.mu.Lock()
		defer tr.mu.Unlock()
		idle := tr.pools[addr]
		return len(idle) == 1 && !idle[0].alive()
	})
}

func wantConns(t *testing.T, got, want int64) {
	t.Helper()
	if got != want {
		t.Errorf("the server saw %d connections, want %d", got, want)
	}
}

const okResponse = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

func TestKeepAliveReusesOneConnection(t *testing.T) {
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "hello") })
	tr, fb := newTransport(t)
	for i := range 20 {
		if _, body := get(t, tr, srv.URL); body != "hello" {
			t.Fatalf("request %d: body %q, want %q", i, body, "hello")
		}
	}
	wantConns(t, srv.opened.Load(), 1)
	if n := fb.n.Load(); n != 0 {
		t.Errorf("%d requests went to the fallback, want none", n)
	}
}

func TestContentLengthBodyReusesConnection(t *testing.T) {
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "5")
		_, _ = io.WriteString(w, "hello")
	})
	tr, _ := newTransport(t)
	for range 2 {
		resp, body := get(t, tr, srv.URL)
		if resp.ContentLength != 5 || body != "hello" {
			t.Fatalf("got Content-Length %d and body %q, want 5 and %q", resp.ContentLength, body, "hello")
		}
	}
	wantConns(t, srv.opened.Load(), 1)
}

func TestChunkedBodyFillsTrailersAtEOF(t *testing.T) {
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Checksum")
		_, _ = io.WriteString(w, "hello ")
		w.(http.Flusher).Flush()
		_, _ = io.WriteString(w, "world")
		w.Header().Set("X-Checksum", "abc")
	})
	tr, _ := newTransport(t)
	for range 2 {
		resp, err := tr.RoundTrip(newRequest(t, t.Context(), http.MethodGet, srv.URL, nil))
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(resp.TransferEncoding, []string{"chunked"}) {
			t.Errorf("Transfer-Encoding %q, want chunked", resp.TransferEncoding)
		}
		if v := resp.Trailer.Get("X-Checksum"); v != "" {
			t.Errorf("trailer X-Checksum %q before the body's end, want it announced only", v)
		}
		b, err := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if err != nil || string(b) != "hello world" {
			t.Fatalf("body %q, %v; want %q", b, err, "hello world")
		}
		if v := resp.Trailer.Get("X-Checksum"); v != "abc" {
			t.Errorf("trailer X-Checksum %q after EOF, want %q", v, "abc")
		}
	}
	wantConns(t, srv.opened.Load(), 1)
}

func TestCloseDelimitedBodyIsNotReused(t *testing.T) {
	moves := make(chan string, 2)
	srv := newRawServer(t, func(_ int64, c net.Conn, br *bufio.Reader) {
		if _, _, err := readRequest(br); err != nil {
			return
		}
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\n\r\nto the end")
		_ = c.(*net.TCPConn).CloseWrite() // the body's end; the server still listens
		moves <- nextMove(br)
	})
	tr, _ := newTransport(t)
	for range 2 {
		resp, body := get(t, tr, srv.url)
		if body != "to the end" || !resp.Close {
			t.Fatalf("body %q, Close %v; want %q and true", body, resp.Close, "to the end")
		}
		if m := recv(t, moves, "the client to close the connection"); m != "closed" {
			t.Fatalf("after a close-delimited body the client %s, want it to close the connection", m)
		}
	}
	wantConns(t, srv.accepted.Load(), 2)
}

func TestHeadResponseHasNoBodyAndReusesConnection(t *testing.T) {
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "5")
		_, _ = io.WriteString(w, "hello")
	})
	tr, _ := newTransport(t)
	for range 2 {
		resp, body := fetch(t, tr, newRequest(t, t.Context(), http.MethodHead, srv.URL, nil))
		if resp.ContentLength != 5 || body != "" {
			t.Fatalf("HEAD: Content-Length %d, body %q; want 5 and none", resp.ContentLength, body)
		}
	}
	wantConns(t, srv.opened.Load(), 1)
}

func TestNoContentAndNotModifiedReuseConnection(t *testing.T) {
	for _, code := range []int{http.StatusNoContent, http.StatusNotModified} {
		t.Run(strconv.Itoa(code), func(t *testing.T) {
			srv := newServer(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(code) })
			tr, _ := newTransport(t)
			for range 2 {
				if resp, body := get(t, tr, srv.URL); resp.StatusCode != code || body != "" {
					t.Fatalf("status %d, body %q; want %d and none", resp.StatusCode, body, code)
				}
			}
			wantConns(t, srv.opened.Load(), 1)
		})
	}
}

func TestEarlyCloseClosesConnectionWithoutWaiting(t *testing.T) {
	moves := make(chan string, 2)
	srv := newRawServer(t, func(_ int64, c net.Conn, br *bufio.Reader) {
		if _, _, err := readRequest(br); err != nil {
			return
		}
		// 10 bytes of a million, and never the rest.
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n0123456789")
		moves <- nextMove(br)
	})
	tr, _ := newTransport(t)
	for range 2 {
		resp, err := tr.RoundTrip(newRequest(t, t.Context(), http.MethodGet, srv.url, nil))
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 10)
		if _, err := io.ReadFull(resp.Body, buf); err != nil {
			t.Fatal(err)
		}
		closed := make(chan error, 1)
		go func() { closed <- resp.Body.Close() }()
		if err := recv(t, closed, "Close to return"); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if _, err := resp.Body.Read(buf); err == nil {
			t.Error("Read after Close succeeded")
		}
		if m := recv(t, moves, "the client to close the connection"); m != "closed" {
			t.Fatalf("after an early Close the client %s, want it to close the connection", m)
		}
	}
	wantConns(t, srv.accepted.Load(), 2)
}

// newHangingServer reads a request, reports its method on the channel,
// and answers nothing until the client closes the connection.
func newHangingServer(t *testing.T) (*rawServer, <-chan string) {
	got := make(chan string, 4)
	srv := newRawServer(t, func(_ int64, c net.Conn, br *bufio.Reader) {
		req, _, err := readRequest(br)
		if err != nil {
			return
		}
		got <- req.Method
		_, _ = io.Copy(io.Discard, br)
	})
	return srv, got
}

func TestCancelWhileWaitingForHead(t *testing.T) {
	srv, got := newHangingServer(t)
	tr, _ := newTransport(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go func() {
		select {
		case <-got: // the request is out: now only its answer is awaited
			cancel()
		case <-ctx.Done():
		}
	}()
	resp, err := roundTripWithin(t, tr, newRequest(t, ctx, http.MethodGet, srv.url, nil))
	if err == nil {
		_ = resp.Body.Close()
		t.Fatal("RoundTrip succeeded against a server that never answers")
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("error %q does not wrap context.Canceled", err)
	}
}

func TestDeadlineWhileWaitingForHead(t *testing.T) {
	srv, _ := newHangingServer(t)
	tr, _ := newTransport(t)
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	resp, err := roundTripWithin(t, tr, newRequest(t, ctx, http.MethodGet, srv.url, nil))
	if err == nil {
		_ = resp.Body.Close()
		t.Fatal("RoundTrip succeeded against a server that never answers")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error %q does not wrap context.DeadlineExceeded", err)
	}
}

func TestCancelWhileReadingBody(t *testing.T) {
	srv := newRawServer(t, func(_ int64, c net.Conn, br *bufio.Reader) {
		if _, _, err := readRequest(br); err != nil {
			return
		}
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
		_, _ = io.Copy(io.Discard, br)
	})
	tr, _ := newTransport(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	resp, err := tr.RoundTrip(newRequest(t, ctx, http.MethodGet, srv.url, nil))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 10)
	if _, err := io.ReadFull(resp.Body, buf); err != nil {
		t.Fatal(err)
	}
	cancel()
	read := make(chan error, 1)
	go func() {
		_, err := resp.Body.Read(buf)
		read <- err
	}()
	if err := recv(t, read, "Read to return after the cancellation"); !errors.Is(err, context.Canceled) {
		t.Errorf("Read after cancellation: %v, want an error wrapping context.Canceled", err)
	}
}

// newClosingServer answers one request per connection, "ok" and the
// request's body, as a keep-alive answer, and then closes the connection.
func newClosingServer(t *testing.T) *rawServer {
	return newRawServer(t, func(_ int64, c net.Conn, br *bufio.Reader) {
		_, body, err := readRequest(br)
		if err != nil {
			return
		}
		_, _ = fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\nok%s", 2+len(body), body)
	})
}

func TestStaleIdleConnectionIsReplacedForGET(t *testing.T) {
	srv := newClosingServer(t)
	tr, _ := newTransport(t)
	get(t, tr, srv.url)
	waitIdleDead(t, tr, srv.addr)
	if _, body := get(t, tr, srv.url); body != "ok" {
		t.Fatalf("body %q, want ok", body)
	}
	wantConns(t, srv.accepted.Load(), 2)
}

func TestStaleIdleConnectionIsReplacedForPOST(t *testing.T) {
	// A POST is not replayable: it must find the connection dead before
	// writing, not learn it from a failed exchange.
	srv := newClosingServer(t)
	tr, _ := newTransport(t)
	get(t, tr, srv.url)
	waitIdleDead(t, tr, srv.addr)
	req := newRequest(t, t.Context(), http.MethodPost, srv.url, strings.NewReader("payload"))
	if _, body := fetch(t, tr, req); body != "okpayload" {
		t.Fatalf("body %q, want %q", body, "okpayload")
	}
	wantConns(t, srv.accepted.Load(), 2)
}

// newUnansweringServer answers the first request on its first connection
// and closes that connection when the second comes, unanswered, as a
// server whose idle timeout fired as the request arrived. Other
// connections are answered. It reports the methods it got.
func newUnansweringServer(t *testing.T) (*rawServer, <-chan string) {
	got := make(chan string, 4)
	srv := newRawServer(t, func(n int64, c net.Conn, br *bufio.Reader) {
		for i := 0; ; i++ {
			req, _, err := readRequest(br)
			if err != nil {
				return
			}
			got <- req.Method
			if n == 1 && i == 1 {
				return
			}
			_, _ = io.WriteString(c, okResponse)
		}
	})
	return srv, got
}

func TestGETRetriedWhenIdleConnectionClosesUnanswered(t *testing.T) {
	srv, got := newUnansweringServer(t)
	tr, _ := newTransport(t)
	get(t, tr, srv.url)
	if _, body := get(t, tr, srv.url); body != "ok" {
		t.Fatalf("body %q, want ok", body)
	}
	wantConns(t, srv.accepted.Load(), 2)
	if n := len(got); n != 3 {
		t.Errorf("the server got %d requests, want 3: the first, the unanswered, the retry", n)
	}
}

func TestPOSTNotRetriedWhenIdleConnectionClosesUnanswered(t *testing.T) {
	srv, got := newUnansweringServer(t)
	tr, _ := newTransport(t)
	get(t, tr, srv.url)
	req := newRequest(t, t.Context(), http.MethodPost, srv.url, strings.NewReader("payload"))
	resp, err := roundTripWithin(t, tr, req)
	if err == nil {
		_ = resp.Body.Close()
		t.Fatal("a POST the server dropped unanswered succeeded")
	}
	if m := recv(t, got, "the GET") + " " + recv(t, got, "the POST"); m != "GET POST" {
		t.Errorf("the server got %s, want GET POST", m)
	}
	wantConns(t, srv.accepted.Load(), 1)
	if n := len(got); n != 0 {
		t.Errorf("the server got %d more requests, want none", n)
	}
}

func TestConnectionCloseResponseIsNotReused(t *testing.T) {
	moves := make(chan string, 1)
	srv := newRawServer(t, func(_ int64, c net.Conn, br *bufio.Reader) {
		if _, _, err := readRequest(br); err != nil {
			return
		}
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
		moves <- nextMove(br) // the server leaves the closing to the client
	})
	tr, _ := newTransport(t)
	if resp, body := get(t, tr, srv.url); !resp.Close || body != "ok" {
		t.Fatalf("Close %v, body %q; want true and ok", resp.Close, body)
	}
	if m := recv(t, moves, "the client to close the connection"); m != "closed" {
		t.Fatalf("after Connection: close the client %s, want it to close the connection", m)
	}
	if n := idleCount(tr, srv.addr); n != 0 {
		t.Errorf("%d idle connections kept, want none", n)
	}
}

func TestInformationalResponseReachesTrace(t *testing.T) {
	srv := newRawServer(t, func(_ int64, c net.Conn, br *bufio.Reader) {
		if _, _, err := readRequest(br); err != nil {
			return
		}
		_, _ = io.WriteString(c, "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"+okResponse)
	})
	tr, _ := newTransport(t)
	var codes []int
	var links []string
	ctx := httptrace.WithClientTrace(t.Context(), &httptrace.ClientTrace{
		Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
			codes = append(codes, code)
			links = append(links, h.Get("Link"))
			return nil
		},
	})
	resp, body := fetch(t, tr, newRequest(t, ctx, http.MethodGet, srv.url, nil))
	if resp.StatusCode != http.StatusOK || body != "ok" {
		t.Errorf("final answer %d %q, want 200 ok", resp.StatusCode, body)
	}
	if !slices.Equal(codes, []int{103}) || !slices.Equal(links, []string{"</a>"}) {
		t.Errorf("trace saw codes %v with Link %q, want [103] with </a>", codes, links)
	}
}

func TestMoreThanTenInformationalResponsesFail(t *testing.T) {
	for _, n := range []int{10, 11} {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			srv := newRawServer(t, func(_ int64, c net.Conn, br *bufio.Reader) {
				if _, _, err := readRequest(br); err != nil {
					return
				}
				_, _ = io.WriteString(c, strings.Repeat("HTTP/1.1 103 Early Hints\r\n\r\n", n)+okResponse)
			})
			tr, _ := newTransport(t)
			resp, err := tr.RoundTrip(newRequest(t, t.Context(), http.MethodGet, srv.url, nil))
			if err == nil {
				_ = resp.Body.Close()
			}
			switch {
			case n <= 10 && err != nil:
				t.Fatalf("%d informational responses: %v, want the final answer", n, err)
			case n > 10 && err == nil:
				t.Fatalf("%d informational responses: status %d, want an error", n, resp.StatusCode)
			case n > 10 && !strings.Contains(err.Error(), "informational"):
				t.Errorf("error %q does not say what went wrong", err)
			}
		})
	}
}

func TestResponseHeadOverLimitFails(t *testing.T) {
	moves := make(chan string, 1)
	srv := newRawServer(t, func(_ int64, c net.Conn, br *bufio.Reader) {
		if _, _, err := readRequest(br); err != nil {
			return
		}
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nX-Big: "+strings.Repeat("a", 8<<10)+"\r\nContent-Length: 0\r\n\r\n")
		moves <- nextMove(br)
	})
	tr, _ := newTransport(t)
	tr.MaxResponseHeaderBytes = 4096
	resp, err := tr.RoundTrip(newRequest(t, t.Context(), http.MethodGet, srv.url, nil))
	if err == nil {
		_ = resp.Body.Close()
		t.Fatal("an 8 KiB head passed a 4 KiB limit")
	}
	if !strings.Contains(err.Error(), "limit") {
		t.Errorf("error %q does not mention the limit", err)
	}
	if m := recv(t, moves, "the client to close the connection"); m != "closed" {
		t.Errorf("after the oversized head the client %s, want it to close the connection", m)
	}
}

// newEchoServer answers with the request's body, and in X-Content-Length
// the length the request was sent with (-1: chunked).
func newEchoServer(t *testing.T) *server {
	return newServer(t, func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("X-Content-Length", strconv.FormatInt(r.ContentLength, 10))
		_, _ = w.Write(b)
	})
}

// echo sends req to an echo server and checks that the body came back
// whole and that fallback carried fallbackWant requests.
func echo(t *testing.T, tr *Transport, fb *countingRT, req *http.Request, payload string, fallbackWant int64) *http.Response {
	t.Helper()
	resp, body := fetch(t, tr, req)
	if body != payload {
		t.Errorf("the server got %d bytes, want the %d sent", len(body), len(payload))
	}
	if n := fb.n.Load(); n != fallbackWant {
		t.Errorf("%d requests went to the fallback, want %d", n, fallbackWant)
	}
	return resp
}

func TestUpgradeRequestGoesToFallback(t *testing.T) {
	srv := newEchoServer(t)
	tr, fb := newTransport(t)
	req := newRequest(t, t.Context(), http.MethodGet, srv.URL, nil)
	req.Header.Set("Upgrade", "example/1")
	echo(t, tr, fb, req, "", 1)
}

func TestExpectContinueGoesToFallback(t *testing.T) {
	srv := newEchoServer(t)
	tr, fb := newTransport(t)
	payload := strings.Repeat("x", 100)
	req := newRequest(t, t.Context(), http.MethodPost, srv.URL, strings.NewReader(payload))
	req.Header.Set("Expect", "100-continue")
	echo(t, tr, fb, req, payload, 1)
}

func TestUnknownLengthBodyGoesToFallback(t *testing.T) {
	srv := newEchoServer(t)
	tr, fb := newTransport(t)
	payload := strings.Repeat("x", 100)
	req := newRequest(t, t.Context(), http.MethodPost, srv.URL, io.NopCloser(strings.NewReader(payload)))
	req.ContentLength = -1
	if resp := echo(t, tr, fb, req, payload, 1); resp.Header.Get("X-Content-Length") != "-1" {
		t.Errorf("sent with length %s, want chunked", resp.Header.Get("X-Content-Length"))
	}
}

func TestLargeBodyGoesToFallback(t *testing.T) {
	srv := newEchoServer(t)
	tr, fb := newTransport(t)
	payload := strings.Repeat("x", MaxInlineBody+1)
	echo(t, tr, fb, newRequest(t, t.Context(), http.MethodPost, srv.URL, strings.NewReader(payload)), payload, 1)
}

func TestHTTPSGoesToFallback(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "secret")
	}))
	t.Cleanup(srv.Close)
	tr, fb := newTransport(t)
	fb.TLSClientConfig = srv.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
	if _, body := get(t, tr, srv.URL); body != "secret" {
		t.Errorf("body %q, want secret", body)
	}
	if n := fb.n.Load(); n != 1 {
		t.Errorf("%d requests went to the fallback, want 1", n)
	}
}

func TestSmallBodyIsWrittenInline(t *testing.T) {
	srv := newEchoServer(t)
	tr, fb := newTransport(t)
	payload := strings.Repeat("x", 100)
	req := newRequest(t, t.Context(), http.MethodPost, srv.URL, strings.NewReader(payload))
	if resp := echo(t, tr, fb, req, payload, 0); resp.Header.Get("X-Content-Length") != "100" {
		t.Errorf("sent with length %s, want 100", resp.Header.Get("X-Content-Length"))
	}
}

// closeRecorder is a request body that records its Close.
type closeRecorder struct {
	io.Reader
	closed atomic.Bool
}

func (c *closeRecorder) Close() error {
	c.closed.Store(true)
	return nil
}

func TestInvalidHeaderIsRefusedBeforeWriting(t *testing.T) {
	for name, field := range map[string][2]string{
		"name":  {"Bad Name", "v"},
		"value": {"X-Ok", "a\r\nInjected: yes"},
	} {
		t.Run(name, func(t *testing.T) {
			var requests atomic.Int64
			srv := newServer(t, func(w http.ResponseWriter, r *http.Request) { requests.Add(1) })
			tr, fb := newTransport(t)
			body := &closeRecorder{Reader: strings.NewReader("hello")}
			req := newRequest(t, t.Context(), http.MethodPost, srv.URL, body)
			req.ContentLength = 5
			req.Header[field[0]] = []string{field[1]}
			resp, err := tr.RoundTrip(req)
			if err == nil {
				_ = resp.Body.Close()
				t.Fatalf("header %q: %q was sent", field[0], field[1])
			}
			if !body.closed.Load() {
				t.Error("RoundTrip did not close the request body")
			}
			if c, r, f := srv.opened.Load(), requests.Load(), fb.n.Load(); c+r+f != 0 {
				t.Errorf("the server saw %d connections and %d requests, the fallback %d requests; want none", c, r, f)
			}
		})
	}
}

func TestUnsolicitedBytesWithAnswerCloseConnection(t *testing.T) {
	srv := newRawServer(t, func(n int64, c net.Conn, br *bufio.Reader) {
		if _, _, err := readRequest(br); err != nil {
			return
		}
		if n == 1 {
			_, _ = io.WriteString(c, okResponse+"unasked")
		} else {
			_, _ = io.WriteString(c, okResponse)
		}
		_, _ = io.Copy(io.Discard, br)
	})
	tr, _ := newTransport(t)
	for range 2 {
		if _, body := get(t, tr, srv.url); body != "ok" {
			t.Fatalf("body %q, want ok", body)
		}
	}
	wantConns(t, srv.accepted.Load(), 2)
}

func TestUnsolicitedBytesOnIdleConnectionCloseIt(t *testing.T) {
	send := make(chan struct{})
	ctx := t.Context()
	srv := newRawServer(t, func(n int64, c net.Conn, br *bufio.Reader) {
		for {
			if _, _, err := readRequest(br); err != nil {
				return
			}
			_, _ = io.WriteString(c, okResponse)
			if n == 1 {
				select {
				case <-send: // once the connection is idle
					_, _ = io.WriteString(c, "unasked")
				case <-ctx.Done():
					return
				}
			}
		}
	})
	tr, _ := newTransport(t)
	get(t, tr, srv.url)
	send <- struct{}{}
	waitIdleDead(t, tr, srv.addr)
	if _, body := get(t, tr, srv.url); body != "ok" {
		t.Fatalf("body %q, want ok", body)
	}
	wantConns(t, srv.accepted.Load(), 2)
}

// newIdleWatchServer answers one request per connection and reports the
// client's next move on it.
func newIdleWatchServer(t *testing.T) (*rawServer, <-chan string) {
	moves := make(chan string, 4)
	srv := newRawServer(t, func(_ int64, c net.Conn, br *bufio.Reader) {
		if _, _, err := readRequest(br); err != nil {
			return
		}
		_, _ = io.WriteString(c, okResponse)
		moves <- nextMove(br)
	})
	return srv, moves
}

func TestIdleSweepClosesExpiredConnections(t *testing.T) {
	srv, moves := newIdleWatchServer(t)
	tr, _ := newTransport(t)
	tr.IdleTimeout = 50 * time.Millisecond
	get(t, tr, srv.url)
	if m := recv(t, moves, "the sweeper to close the idle connection"); m != "closed" {
		t.Fatalf("the idle connection was not closed: the client %s", m)
	}
	tr.mu.Lock()
	pools, sweeper := len(tr.pools), tr.sweeper
	tr.mu.Unlock()
	if pools != 0 || sweeper != nil {
		t.Errorf("after the sweep: %d endpoints pooled, sweeper %v; want none and nil", pools, sweeper)
	}
}

func TestCloseIdleConnectionsClosesAtOnce(t *testing.T) {
	srv, moves := newIdleWatchServer(t)
	tr, _ := newTransport(t)
	get(t, tr, srv.url)
	tr.CloseIdleConnections()
	if m := recv(t, moves, "CloseIdleConnections to close the idle connection"); m != "closed" {
		t.Fatalf("the idle connection was not closed: the client %s", m)
	}
}

func TestCloseIdleConnectionsReachesFallback(t *testing.T) {
	srv := newEchoServer(t)
	tr, fb := newTransport(t)
	req := newRequest(t, t.Context(), http.MethodGet, srv.URL, nil)
	req.Header.Set("Upgrade", "example/1")
	echo(t, tr, fb, req, "", 1)
	tr.CloseIdleConnections()
	poll.Until(t, wait, "the fallback's idle connection to close", func() bool { return srv.closed.Load() == 1 })
}

func TestMaxIdlePerHostClosesTheSurplus(t *testing.T) {
	const n = 5
	var arrived atomic.Int64
	allIn := make(chan struct{})
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		if arrived.Add(1) == n {
			close(allIn)
		}
		select {
		case <-allIn: // every request has its own connection
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, "ok")
	})
	tr, _ := newTransport(t)
	tr.MaxIdlePerHost = 2
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for range n {
		req := newRequest(t, t.Context(), http.MethodGet, srv.URL, nil)
		wg.Go(func() {
			resp, err := tr.RoundTrip(req)
			if err == nil {
				_, err = io.ReadAll(resp.Body)
				_ = resp.Body.Close()
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	poll.Until(t, wait, "3 of the 5 connections to close", func() bool { return srv.closed.Load() == n-2 })
	wantConns(t, srv.opened.Load(), n)
	if got := idleCount(tr, strings.TrimPrefix(srv.URL, "http://")); got != 2 {
		t.Errorf("%d idle connections kept, want 2", got)
	}
	tr.CloseIdleConnections()
	poll.Until(t, wait, "the 2 idle connections to close", func() bool { return srv.closed.Load() == n })
}

// Bugs: each test below failed when it was written; see the report.

func TestEmptyMethodIsSentAsGET(t *testing.T) {
	// http.Request: "For client requests, an empty string means GET";
	// net/http's Transport sends it so, and replayable treats "" as GET.
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, r.Method) })
	tr, _ := newTransport(t)
	u, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	req := (&http.Request{URL: u, Header: make(http.Header)}).WithContext(t.Context())
	if _, body := fetch(t, tr, req); body != http.MethodGet {
		t.Errorf("the server got method %q, want GET", body)
	}
}

func TestEmptyPortDialsDefaultPort(t *testing.T) {
	// RFC 3986 section 3.2.3: an empty port is the scheme's default, as
	// url.URL.Port and net/http's Transport read it.
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })
	tr, _ := newTransport(t)
	asked := make(chan string, 1)
	var d net.Dialer
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		select {
		case asked <- addr:
		default: // a second dial: the first is what is checked
		}
		return d.DialContext(ctx, network, srv.Listener.Addr().String())
	}
	// Not http.NewRequest, which drops an empty port: a URL set by hand,
	// as a ReverseProxy Director or Rewrite sets one.
	u, err := url.Parse("http://upstream.test:/")
	if err != nil {
		t.Fatal(err)
	}
	req := newRequest(t, t.Context(), http.MethodGet, srv.URL, nil)
	req.URL, req.Host = u, ""
	fetch(t, tr, req)
	if addr := recv(t, asked, "a dial"); addr != "upstream.test:80" {
		t.Errorf("dialled %q, want upstream.test:80", addr)
	}
}

func TestRequestBodyReadErrorIsReturned(t *testing.T) {
	// A request body that fails is the request's fault, not the
	// upstream's: net/http's Transport returns an error wrapping the body's
	// own (it unwraps Request.Write's requestBodyReadError, which has no
	// Unwrap method).
	srv := newEchoServer(t)
	tr, _ := newTransport(t)
	errGone := errors.New("the client went away")
	body := io.MultiReader(strings.NewReader("abc"), iotest.ErrReader(errGone))
	req := newRequest(t, t.Context(), http.MethodPost, srv.URL, body)
	req.ContentLength = 10
	resp, err := tr.RoundTrip(req)
	if err == nil {
		_ = resp.Body.Close()
		t.Fatal("a failing request body was sent")
	}
	if !errors.Is(err, errGone) {
		t.Errorf("error %q does not wrap the body's error", err)
	}
}

func TestStatusBelow100IsNotInformational(t *testing.T) {
	// Informational is 100 to 199, as net/http's Transport reads it (it
	// returns a 099 as the answer). Found by FuzzResponseAgainstNetHTTP.
	srv := newRawServer(t, func(_ int64, c net.Conn, br *bufio.Reader) {
		if _, _, err := readRequest(br); err != nil {
			return
		}
		_, _ = io.WriteString(c, "HTTP/1.1 099 Odd\r\nContent-Length: 2\r\n\r\nok")
	})
	tr, _ := newTransport(t)
	var codes []int
	ctx := httptrace.WithClientTrace(t.Context(), &httptrace.ClientTrace{
		Got1xxResponse: func(code int, _ textproto.MIMEHeader) error {
			codes = append(codes, code)
			return nil
		},
	})
	resp, err := tr.RoundTrip(newRequest(t, ctx, http.MethodGet, srv.url, nil))
	if len(codes) != 0 {
		t.Errorf("the trace was given %v as informational", codes)
	}
	if err != nil {
		t.Fatalf("RoundTrip: %v; want the 099 answer, as net/http gives it", err)
	}
	defer resp.Body.Close()
	if b, err := io.ReadAll(resp.Body); resp.StatusCode != 99 || string(b) != "ok" || err != nil {
		t.Errorf("got %d %q (%v), want 99 ok", resp.StatusCode, b, err)
	}
}

// The upstream connections read and write with raw system calls
// (proxy/internal/rawio), the liveness probe included: the guard that
// keeps the request path out of the scheduler's system-call state.
func TestConnectionsUseRawIO(t *testing.T) {
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "hello") })
	tr, _ := newTransport(t)
	if _, body := get(t, tr, srv.URL); body != "hello" {
		t.Fatalf("body %q", body)
	}
	addr := strings.TrimPrefix(srv.URL, "http://")
	tr.mu.Lock()
	idle := slices.Clone(tr.pools[addr])
	tr.mu.Unlock()
	if len(idle) != 1 {
		t.Fatalf("%d idle connections to %s, want 1", len(idle), addr)
	}
	if _, ok := idle[0].r.(*rawio.Reader); !ok {
		t.Errorf("the connection reads through a %T, not a *rawio.Reader", idle[0].r)
	}
	if _, ok := idle[0].w.(*rawio.Writer); !ok {
		t.Errorf("the connection writes through a %T, not a *rawio.Writer", idle[0].w)
	}
	if !idle[0].alive() {
		t.Error("an idle connection the upstream keeps open failed the liveness probe")
	}
}

// A request sent whole waits for its answer in the poller, inside the
// write (rawio.Reader.WriteThenWait), rather than reading a socket that
// cannot hold an answer yet; a request that went out in parts (a body
// past the buffer) reads first, as before, and both get their answers.
// While the upstream answers late, a whole request waits for its answer in
// the poller without the read that would find nothing, but for one in
// sampleEvery, which reads first to learn whether answers come early
// again; a request written in parts always reads first.
func TestWholeRequestWaitsForTheAnswerWithoutReading(t *testing.T) {
	answer := make(chan struct{})
	srv := newRawServer(t, func(_ int64, c net.Conn, br *bufio.Reader) {
		for {
			if _, _, err := readRequest(br); err != nil {
				return
			}
			select {
			case <-answer:
			case <-t.Context().Done():
				return
			}
			_, _ = io.WriteString(c, okResponse)
		}
	})
	for _, tc := range []struct {
		name string
		body string
		// where the i-th request on the connection waits for its answer
		waitIn func(i int) string
	}{
		{"whole", "", func(i int) string {
			if i%sampleEvery == 0 {
				return "rawio.(*Reader).Read("
			}
			return "rawio.(*Reader).WriteThenWait("
		}},
		{"in parts", strings.Repeat("x", 8<<10), func(int) string { return "rawio.(*Reader).Read(" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr, _ := newTransport(t)
			before := srv.accepted.Load()
			for i := range sampleEvery + 2 {
				var body io.Reader
				if tc.body != "" {
					body = strings.NewReader(tc.body)
				}
				req := newRequest(t, t.Context(), http.MethodPost, srv.url, body)
				type result struct {
					body string
					err  error
				}
				done := make(chan result, 1)
				go func() {
					resp, err := tr.RoundTrip(req)
					if err != nil {
						done <- result{"", err}
						return
					}
					b, err := io.ReadAll(resp.Body)
					_ = resp.Body.Close()
					done <- result{string(b), err}
				}()
				waitIn := tc.waitIn(i)
				poll.Until(t, wait, fmt.Sprintf("request %d to wait in %s", i, waitIn), func() bool {
					return poll.InIOWait(waitIn, "h1conn.(*Transport).exchange") == 1
				})
				answer <- struct{}{}
				if r := recv(t, done, "the answer"); r.err != nil || r.body != "ok" {
					t.Fatalf("answer %q, %v; want ok", r.body, r.err)
				}
			}
			if n := srv.accepted.Load() - before; n != 1 {
				t.Errorf("%d connections, want the requests on one", n)
			}
		})
	}
}
