package h1conn

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"strings"
	"testing"
	"time"
)

// rawHead is a bodiless request head for RoundTripRaw.
func rawHead(method string) func([]byte) []byte {
	return func(b []byte) []byte { return append(b, method+" /x HTTP/1.1\r\nHost: up\r\n\r\n"...) }
}

// rawRoundTrip sends a bodiless request through RoundTripRaw and reads its
// answer as bytes when it is plain, as an http.Response otherwise.
func rawRoundTrip(t *testing.T, tr *Transport, addr, method string) (status int, fields, body string, plain bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	a, err := tr.RoundTripRaw(ctx, addr, method, rawHead(method))
	if err != nil {
		t.Fatalf("RoundTripRaw: %v", err)
	}
	status, length, f, plain := a.Plain()
	if !plain {
		resp, err := a.Response(&http.Request{Method: method}, nil)
		if err != nil {
			t.Fatalf("Response: %v", err)
		}
		b, err := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if err != nil {
			t.Fatalf("reading the body: %v", err)
		}
		return resp.StatusCode, "", string(b), false
	}
	fields = string(f) // before Body: it is the connection's buffer
	rc := a.Body()
	b, err := io.ReadAll(rc)
	_ = rc.Close()
	if err != nil {
		t.Fatalf("reading the body: %v", err)
	}
	if int64(len(b)) != length {
		t.Fatalf("body of %d bytes, Length %d", len(b), length)
	}
	return status, fields, string(b), true
}

func TestRawPlainAnswerReusesConnection(t *testing.T) {
	heads := make(chan string, 4)
	srv := newRawServer(t, func(_ int64, c net.Conn, br *bufio.Reader) {
		for {
			req, _, err := readRequest(br)
			if err != nil {
				return
			}
			heads <- req.Method + " " + req.RequestURI + " " + req.Host
			_, _ = io.WriteString(c, "HTTP/1.1 201 Created\r\nContent-Type: text/plain\r\nX-A: 1\r\nContent-Length: 5\r\n\r\nhello")
		}
	})
	tr, fb := newTransport(t)
	for range 2 {
		status, fields, body, plain := rawRoundTrip(t, tr, srv.addr, http.MethodGet)
		if !plain || status != 201 || body != "hello" || fields != "Content-Type: text/plain\r\nX-A: 1\r\nContent-Length: 5\r\n" {
			t.Fatalf("got plain %v, %d, fields %q, body %q", plain, status, fields, body)
		}
		if h := recv(t, heads, "the request"); h != "GET /x up" {
			t.Fatalf("the server got %q", h)
		}
	}
	wantConns(t, srv.accepted.Load(), 1)
	if fb.n.Load() != 0 {
		t.Errorf("the fallback carried %d requests", fb.n.Load())
	}
}

// Answers that are not plain are read by net/http's rules.
func TestRawAnswersThatAreNotPlain(t *testing.T) {
	cases := map[string]struct {
		method, answer, body string
		status               int
	}{
		"chunked":           {"GET", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", "abc", 200},
		"no content":        {"GET", "HTTP/1.1 204 No Content\r\n\r\n", "", 204},
		"head":              {"HEAD", "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", "", 200},
		"early hints first": {"GET", "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", "ok", 200},
		"connection close":  {"GET", "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", "ok", 200},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			srv := newRawServer(t, func(_ int64, conn net.Conn, br *bufio.Reader) {
				if _, _, err := readRequest(br); err == nil {
					_, _ = io.WriteString(conn, c.answer)
				}
			})
			tr, _ := newTransport(t)
			status, _, body, plain := rawRoundTrip(t, tr, srv.addr, c.method)
			if plain || status != c.status || body != c.body {
				t.Fatalf("plain %v, status %d, body %q; want not plain, %d, %q", plain, status, body, c.status, c.body)
			}
		})
	}
}

// Informational answers before a final one that is not plain reach the
// function Response is given.
func TestRawInformationalAnswersReachGot1xx(t *testing.T) {
	srv := newRawServer(t, func(_ int64, c net.Conn, br *bufio.Reader) {
		if _, _, err := readRequest(br); err == nil {
			_, _ = io.WriteString(c, "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	tr, _ := newTransport(t)
	a, err := tr.RoundTripRaw(t.Context(), srv.addr, http.MethodGet, rawHead(http.MethodGet))
	if err != nil {
		t.Fatal(err)
	}
	var hints []string
	resp, err := a.Response(&http.Request{Method: http.MethodGet}, func(code int, h textproto.MIMEHeader) error {
		hints = append(hints, h.Get("Link"))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if len(hints) != 1 || hints[0] != "</a>" {
		t.Fatalf("got1xx heard %q, want the one Link", hints)
	}
}

// A pooled connection the upstream dropped unanswered: GET goes again on a
// new one, DELETE (not idempotent) fails.
func TestRawStaleConnectionRetriedForIdempotentMethods(t *testing.T) {
	for _, c := range []struct {
		method  string
		retried bool
	}{{http.MethodGet, true}, {http.MethodDelete, false}} {
		t.Run(c.method, func(t *testing.T) {
			srv, got := newUnansweringServer(t)
			tr, _ := newTransport(t)
			rawRoundTrip(t, tr, srv.addr, http.MethodGet)
			a, err := tr.RoundTripRaw(t.Context(), srv.addr, c.method, rawHead(c.method))
			if c.retried {
				if err != nil {
					t.Fatalf("not retried: %v", err)
				}
				a.Close()
				wantConns(t, srv.accepted.Load(), 2)
				if n := len(got); n != 3 {
					t.Errorf("the server got %d requests, want 3", n)
				}
				return
			}
			if err == nil {
				a.Close()
				t.Fatal("a DELETE the server dropped unanswered succeeded")
			}
			if !errors.Is(err, errStale) {
				t.Errorf("error %v, want one that says the connection was stale", err)
			}
			wantConns(t, srv.accepted.Load(), 1)
		})
	}
}

// Close gives up on an answer: its connection is closed, not pooled.
func TestRawCloseClosesConnection(t *testing.T) {
	srv := newRawServer(t, func(_ int64, c net.Conn, br *bufio.Reader) {
		for {
			if _, _, err := readRequest(br); err != nil {
				return
			}
			_, _ = io.WriteString(c, okResponse)
		}
	})
	tr, _ := newTransport(t)
	a, err := tr.RoundTripRaw(t.Context(), srv.addr, http.MethodGet, rawHead(http.MethodGet))
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	if n := idleCount(tr, srv.addr); n != 0 {
		t.Fatalf("%d idle connections after Close, want 0", n)
	}
	rawRoundTrip(t, tr, srv.addr, http.MethodGet)
	wantConns(t, srv.accepted.Load(), 2)
}

// The context's end while the answer is awaited ends the wait with its
// cause, and the connection.
func TestRawCancelWhileWaitingForHead(t *testing.T) {
	srv, got := newHangingServer(t)
	tr, _ := newTransport(t)
	ctx, cancel := context.WithCancelCause(t.Context())
	cause := errors.New("the app went away")
	go func() {
		recv(t, got, "the request")
		cancel(cause)
	}()
	_, err := tr.RoundTripRaw(ctx, srv.addr, http.MethodGet, rawHead(http.MethodGet))
	if !errors.Is(err, cause) {
		t.Fatalf("error %v, want the cancellation's cause", err)
	}
	if !strings.Contains(err.Error(), srv.addr) {
		t.Errorf("error %q does not name the upstream", err)
	}
}
