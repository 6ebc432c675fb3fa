package h1conn

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"reflect"
	"testing"
)

// Answers real upstreams send, which must take the fast way.
var plainAnswers = map[string]string{
	"net/http":   "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain; charset=utf-8\r\nDate: Mon, 23 Nov 2026 08:00:00 GMT\r\n\r\nhello",
	"nginx":      "HTTP/1.1 404 Not Found\r\nServer: nginx\r\nContent-Type: text/html\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nabc",
	"empty":      "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
	"no reason":  "HTTP/1.1 503\r\ncontent-length: 2\r\nx-a: 1\r\nX-A:  2 \t\r\nX-Empty:\r\n\r\nno",
	"odd reason": "HTTP/1.1 299 Fine\tby me \r\nContent-Length: 007\r\n\r\n1234567",
}

// Answers that http.ReadResponse must parse instead, each for one reason.
var unplainAnswers = map[string]string{
	"chunked":          "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
	"no length":        "HTTP/1.1 200 OK\r\nContent-Type: a\r\n\r\n",
	"two lengths":      "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
	"signed length":    "HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n",
	"huge length":      "HTTP/1.1 200 OK\r\nContent-Length: 1234567890123456789\r\n\r\n",
	"close":            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\n",
	"pragma":           "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nPragma: no-cache\r\n\r\n",
	"informational":    "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
	"no content":       "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
	"not modified":     "HTTP/1.1 304 Not Modified\r\nContent-Length: 4\r\n\r\n",
	"HTTP/1.0":         "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
	"two spaces":       "HTTP/1.1  200 OK\r\nContent-Length: 1\r\n\r\n",
	"short code":       "HTTP/1.1 20 OK\r\nContent-Length: 1\r\n\r\n",
	"glued reason":     "HTTP/1.1 200OK\r\nContent-Length: 1\r\n\r\n",
	"folded":           "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nX: a\r\n b\r\n\r\n",
	"bare LF":          "HTTP/1.1 200 OK\nContent-Length: 1\n\n",
	"space before :":   "HTTP/1.1 200 OK\r\nContent-Length : 1\r\n\r\n",
	"non-ASCII value":  "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nX: \xc3\xa9\r\n\r\n",
	"control in value": "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nX: a\x00\r\n\r\n",
}

func TestParseSimpleTakesPlainAnswers(t *testing.T) {
	for name, raw := range plainAnswers {
		t.Run(name, func(t *testing.T) {
			checkAgainstReadResponse(t, []byte(raw), http.MethodGet, true)
		})
	}
}

func TestParseSimpleLeavesTheRestToReadResponse(t *testing.T) {
	for name, raw := range unplainAnswers {
		t.Run(name, func(t *testing.T) {
			if n := bytes.Index([]byte(raw), crlf2); n >= 0 && parseSimple([]byte(raw[:n+4]), getRequest(http.MethodGet)) != nil {
				t.Fatalf("parseSimple took %q", raw)
			}
		})
	}
	// An answer to HEAD has no body whatever its length says.
	raw := plainAnswers["net/http"]
	if parseSimple([]byte(raw[:bytes.Index([]byte(raw), crlf2)+4]), getRequest(http.MethodHead)) != nil {
		t.Fatal("parseSimple took the answer to a HEAD request")
	}
}

// The point of it: the common answer's head in a handful of allocations
// (the Response, the head's string, the header map and its values'
// backing array), and its body read with no reader of net/http's.
func TestParseSimpleAnswerAllocations(t *testing.T) {
	raw := []byte(plainAnswers["net/http"])
	head := raw[:bytes.Index(raw, crlf2)+4]
	req := getRequest(http.MethodGet)
	allocs := testing.AllocsPerRun(100, func() {
		if parseSimple(head, req) == nil {
			t.Fatal("not taken")
		}
	})
	std := testing.AllocsPerRun(100, func() {
		if _, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(raw)), req); err != nil {
			t.Fatal(err)
		}
	})
	t.Logf("parseSimple %v allocations, http.ReadResponse %v (with its reader)", allocs, std)
	if allocs > 5 {
		t.Errorf("parseSimple made %v allocations, want at most 5", allocs)
	}
}

// FuzzParseSimpleAgainstReadResponse: whatever answer head parseSimple
// takes, http.ReadResponse must take too and parse into the same Response
// (but the body, which the transport reads itself: the same length).
// FuzzResponseAgainstNetHTTP covers the bodies, end to end.
//
//	go test ./proxy/h1conn/ -run x -fuzz FuzzParseSimpleAgainstReadResponse
func FuzzParseSimpleAgainstReadResponse(f *testing.F) {
	for _, raw := range plainAnswers {
		f.Add([]byte(raw), false)
	}
	for _, raw := range unplainAnswers {
		f.Add([]byte(raw), true)
	}
	f.Fuzz(func(t *testing.T, raw []byte, head bool) {
		method := http.MethodGet
		if head {
			method = http.MethodHead
		}
		checkAgainstReadResponse(t, raw, method, false)
	})
}

func getRequest(method string) *http.Request {
	req, err := http.NewRequest(method, "http://upstream/", nil)
	if err != nil {
		panic(err)
	}
	return req
}

// checkAgainstReadResponse parses the answer head at the start of raw both
// ways and compares; mustTake says parseSimple has to take it.
func checkAgainstReadResponse(t *testing.T, raw []byte, method string, mustTake bool) {
	t.Helper()
	req := getRequest(method)
	n := bytes.Index(raw, crlf2)
	var got *http.Response
	if n >= 0 {
		if a := parseSimple(raw[:n+4], req); a != nil {
			got = &a.resp
		}
	}
	if got == nil {
		if mustTake {
			t.Fatalf("parseSimple did not take %q", raw)
		}
		return
	}
	src := bytes.NewReader(raw)
	br := bufio.NewReader(src)
	want, err := http.ReadResponse(br, req)
	if err != nil {
		t.Fatalf("parseSimple took %q, which http.ReadResponse refuses: %v", raw, err)
	}
	if consumed := len(raw) - br.Buffered() - src.Len(); consumed != n+4 {
		t.Errorf("http.ReadResponse consumed %d bytes of %q, parseSimple's head is %d", consumed, raw, n+4)
	}
	if (got.Body == http.NoBody) != (want.Body == http.NoBody) || (got.Body != nil && got.Body != http.NoBody) {
		t.Errorf("%q: parseSimple's body %#v, http.ReadResponse's %T", raw, got.Body, want.Body)
	}
	wantBody := want.Body
	got.Body, want.Body = nil, nil
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%q:\nparseSimple         %+v\nhttp.ReadResponse %+v", raw, got, want)
	}
	if b, err := io.ReadAll(wantBody); err == nil && int64(len(b)) != got.ContentLength {
		t.Errorf("%q: http.ReadResponse's body is %d bytes, parseSimple's length %d", raw, len(b), got.ContentLength)
	}
}

// The transport itself reads plain answers the fast way: the body comes
// straight off the connection (no reader of net/http's), and a chunked
// answer still gets net/http's.
func TestTransportReadsPlainAnswersItself(t *testing.T) {
	for _, tc := range []struct {
		name string
		h    http.HandlerFunc
		raw  bool
	}{
		{"plain", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "5")
			_, _ = io.WriteString(w, "hello")
		}, true},
		{"chunked", func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.WriteString(w, "hel")
			w.(http.Flusher).Flush()
			_, _ = io.WriteString(w, "lo")
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newServer(t, tc.h)
			tr, _ := newTransport(t)
			req, err := http.NewRequest(http.MethodGet, srv.URL, nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := tr.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, ok := resp.Body.(*body)
			if !ok {
				t.Fatalf("body %T", resp.Body)
			}
			if raw := b.rc == nil; raw != tc.raw {
				t.Errorf("read off the connection: %v, want %v", raw, tc.raw)
			}
			if got, err := io.ReadAll(resp.Body); err != nil || string(got) != "hello" {
				t.Errorf("body %q, %v", got, err)
			}
		})
	}
}
