package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// start runs gofloor in front of h and returns its URL and how many
// connections the upstream accepted.
func start(t *testing.T, mode string, h http.HandlerFunc) (string, *atomic.Int32) {
	t.Helper()
	up := httptest.NewUnstartedServer(h)
	conns := new(atomic.Int32)
	up.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	up.Start()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	var srv *http.Server
	if h, ok := handlers[mode]; ok {
		srv = newServer(h(up.Listener.Addr().String()))
		go func() { done <- srv.Serve(ln) }()
	} else {
		go func() { done <- serve(ln, up.Listener.Addr().String(), modes[mode]) }()
	}
	t.Cleanup(func() {
		want := net.ErrClosed
		if srv != nil {
			srv.Close()
			want = http.ErrServerClosed
		} else {
			ln.Close()
		}
		if err := <-done; !errors.Is(err, want) {
			t.Errorf("serving ended with %v, want %v", err, want)
		}
		// Closing the upstream's side ends every forwarding goroutine, even one a
		// failed test left waiting.
		up.CloseClientConnections()
		up.Close()
	})
	return "http://" + ln.Addr().String(), conns
}

func testClient(t *testing.T) *http.Client {
	tr := &http.Transport{MaxConnsPerHost: 1, DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	// A mutation that forwards what it cannot frame hangs instead of failing; the
	// timeout turns that into a failure.
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func TestForwardsKeepAliveRequests(t *testing.T) {
	for _, mode := range []string{"raw", "std", "srv", "rp"} {
		t.Run(mode, func(t *testing.T) {
			url, conns := start(t, mode, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("X-Path", r.URL.Path)
				fmt.Fprintf(w, "answer to %s %s", r.Method, r.URL.Path)
			})
			c := testClient(t)
			for i := range 5 {
				path := fmt.Sprintf("/r%d", i)
				resp, err := c.Get(url + path)
				if err != nil {
					t.Fatalf("GET %s: %v", path, err)
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil {
					t.Fatalf("reading %s: %v", path, err)
				}
				if want := "answer to GET " + path; string(body) != want || resp.Header.Get("X-Path") != path {
					t.Fatalf("GET %s: got %q (X-Path %q), want %q", path, body, resp.Header.Get("X-Path"), want)
				}
			}
			if n := conns.Load(); n != 1 {
				t.Errorf("upstream saw %d connections for 5 keep-alive requests, want 1", n)
			}
		})
	}
}

// wantDropped fails t unless what was sent got no answer: the mode must
// end the connection on what it cannot frame rather than forward it wrong.
func wantDropped(t *testing.T, what string, resp *http.Response, err error) {
	t.Helper()
	if err == nil {
		resp.Body.Close()
		t.Fatalf("%s got %s, want the connection dropped", what, resp.Status)
	}
}

// The bytes-only modes forward only what the benchmark sends; anything
// else must end the connection rather than be forwarded wrong.
func TestDropsWhatItCannotFrame(t *testing.T) {
	for mode, client := range map[string]func(*testing.T) *http.Client{"raw": testClient, "h2c": h2cClient} {
		t.Run(mode+"/request body", func(t *testing.T) {
			reached := new(atomic.Int32)
			url, _ := start(t, mode, func(w http.ResponseWriter, r *http.Request) { reached.Add(1) })
			resp, err := client(t).Post(url, "text/plain", strings.NewReader("body"))
			wantDropped(t, "POST with a body", resp, err)
			if reached.Load() != 0 {
				t.Error("a request with a body reached the upstream")
			}
		})
	}
	t.Run("raw/chunked answer", func(t *testing.T) {
		url, _ := start(t, "raw", func(w http.ResponseWriter, r *http.Request) {
			w.Write([]byte("part"))
			w.(http.Flusher).Flush() // no Content-Length: chunked
		})
		resp, err := testClient(t).Get(url)
		wantDropped(t, "chunked answer", resp, err)
	})
	t.Run("h2c/answer larger than a frame", func(t *testing.T) {
		url, _ := start(t, "h2c", func(w http.ResponseWriter, r *http.Request) {
			w.Write(make([]byte, defaultMaxFrame+1))
		})
		resp, err := h2cClient(t).Get(url)
		wantDropped(t, fmt.Sprintf("an answer of %d bytes", defaultMaxFrame+1), resp, err)
	})
	t.Run("h2c/HTTP/1.1 client", func(t *testing.T) {
		url, _ := start(t, "h2c", func(w http.ResponseWriter, r *http.Request) {})
		resp, err := testClient(t).Get(url)
		wantDropped(t, "an HTTP/1.1 request", resp, err)
	})
}

func TestHeader(t *testing.T) {
	head := []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\ncontent-LENGTH:  12 \r\n\r\n")
	if n, ok := contentLength(head); !ok || n != 12 {
		t.Errorf("contentLength = %d, %v; want 12, true", n, ok)
	}
	twice := []byte("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n")
	if _, ok := contentLength(twice); ok {
		t.Error("a repeated Content-Length was accepted")
	}
	if _, ok := contentLength([]byte("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n")); ok {
		t.Error("a Content-Length that is not a number was accepted")
	}
	if n, ok := contentLength([]byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n")); !ok || n != 0 {
		t.Errorf("no Content-Length: got %d, %v; want 0, true", n, ok)
	}
	if hasHeader(head, "content-type-x") || !hasHeader(head, "content-type") {
		t.Error("hasHeader matched a prefix or missed an exact name")
	}
}

// h2cClient speaks h2c with prior knowledge, one connection at most.
func h2cClient(t *testing.T) *http.Client {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &p, MaxConnsPerHost: 1, DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func TestH2CForwardsToHTTP1(t *testing.T) {
	url, conns := start(t, "h2c", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/x-"+r.Method)
		w.WriteHeader(200 + len(r.URL.Path)%3)
		fmt.Fprintf(w, "%s %s %s via %s", r.Method, r.URL.Path, r.Proto, r.Host)
	})
	c := h2cClient(t)
	host := strings.TrimPrefix(url, "http://")
	for i := range 20 { // past the HPACK tables' first entries, on both sides
		path := fmt.Sprintf("/r%d", i)
		method := http.MethodGet
		if i%5 == 4 {
			method = http.MethodHead
		}
		req, _ := http.NewRequest(method, url+path, nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("reading %s: %v", path, err)
		}
		want := fmt.Sprintf("%s %s HTTP/1.1 via %s", method, path, host)
		if method == http.MethodHead {
			want = ""
		}
		if resp.ProtoMajor != 2 || string(body) != want || resp.StatusCode != 200+len(path)%3 || resp.Header.Get("Content-Type") != "text/x-"+method {
			t.Fatalf("%s %s: got %s %d %q (%q), want HTTP/2 %d %q", method, path, resp.Proto, resp.StatusCode, body, resp.Header.Get("Content-Type"), 200+len(path)%3, want)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("upstream saw %d connections for one client connection, want 1", n)
	}
}
