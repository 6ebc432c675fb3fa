package h1serve

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"reflect"
	"testing"
	"time"
)

// Heads real clients send, which must take the fast way.
var plainHeads = map[string]string{
	"fortio":  "GET / HTTP/1.1\r\nHost: 127.0.0.1:18081\r\nUser-Agent: fortio.org/fortio-1.68.2\r\n\r\n",
	"curl":    "GET /api/v1/items?id=7&x=%20 HTTP/1.1\r\nHost: orders\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n",
	"go":      "GET /x HTTP/1.1\r\nHost: orders:8080\r\nUser-Agent: Go-http-client/1.1\r\nAccept-Encoding: gzip\r\n\r\n",
	"java":    "DELETE /a/b HTTP/1.1\r\nConnection: keep-alive\r\nHost: orders\r\nuser-agent: Java-http-client/21\r\n\r\n",
	"repeats": "HEAD /%7Euser HTTP/1.1\r\nHost: a\r\nAccept: a\r\nAccept:  b \t\r\nX-Empty:\r\nX-Spaces:   \r\n\r\n",
	"json":    "POST /orders HTTP/1.1\r\nHost: orders\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"id\": 12345}",
	"short":   "PUT /a HTTP/1.1\r\nHost: a\r\ncontent-length: 007\r\n\r\nabc",
	"empty":   "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
}

// Heads that ReadRequest must parse instead: each is outside the plain
// case for one reason.
var unplainHeads = map[string]string{
	"two lengths":       "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
	"signed length":     "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n",
	"spaced length":     "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 2\r\n\r\n",
	"huge length":       "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1234567890123456789\r\n\r\n",
	"chunked":           "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
	"pragma":            "GET / HTTP/1.1\r\nHost: a\r\nPragma: no-cache\r\n\r\n",
	"close":             "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
	"upgrade token":     "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n\r\n",
	"no host":           "GET / HTTP/1.1\r\nAccept: */*\r\n\r\n",
	"two hosts":         "GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",
	"folded":            "GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n 2\r\n\r\n",
	"bare LF":           "GET / HTTP/1.1\nHost: a\n\n",
	"bare LF in head":   "GET / HTTP/1.1\r\nHost: a\nX: 1\r\n\r\n",
	"bare CR":           "GET / HTTP/1.1\r\nHost: a\rX: 1\r\n\r\n",
	"absolute form":     "GET http://b/x HTTP/1.1\r\nHost: a\r\n\r\n",
	"asterisk":          "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
	"double slash":      "GET //b/x HTTP/1.1\r\nHost: a\r\n\r\n",
	"HTTP/1.0":          "GET / HTTP/1.0\r\nHost: a\r\n\r\n",
	"CONNECT":           "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
	"odd method":        "PURGE / HTTP/1.1\r\nHost: a\r\n\r\n",
	"lower method":      "get / HTTP/1.1\r\nHost: a\r\n\r\n",
	"fragment":          "GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n",
	"two spaces":        "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
	"space before :":    "GET / HTTP/1.1\r\nHost: a\r\nX : 1\r\n\r\n",
	"non-ASCII value":   "GET / HTTP/1.1\r\nHost: a\r\nX: \xc3\xa9\r\n\r\n",
	"control in value":  "GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n",
	"bad escape":        "GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n",
	"no colon":          "GET / HTTP/1.1\r\nHost: a\r\nX\r\n\r\n",
	"empty name":        "GET / HTTP/1.1\r\nHost: a\r\n: v\r\n\r\n",
	"leading blank":     "\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
	"no blank line end": "GET / HTTP/1.1\r\nHost: a\r\n",
}

func TestParseSimpleTakesPlainHeads(t *testing.T) {
	for name, head := range plainHeads {
		t.Run(name, func(t *testing.T) {
			checkAgainstReadRequest(t, []byte(head), true)
		})
	}
}

func TestParseSimpleLeavesTheRestToReadRequest(t *testing.T) {
	for name, head := range unplainHeads {
		t.Run(name, func(t *testing.T) {
			var req http.Request
			if parseSimple([]byte(head), &req) {
				t.Fatalf("parseSimple took %q", head)
			}
		})
	}
}

// The point of it: the common head in a handful of allocations (the head's
// string, the URL, the header map and its values' backing array), where
// ReadRequest makes about a dozen.
func TestParseSimpleAllocations(t *testing.T) {
	head := []byte(plainHeads["curl"])
	var req http.Request
	allocs := testing.AllocsPerRun(100, func() {
		if !parseSimple(head, &req) {
			t.Fatal("not taken")
		}
	})
	std := testing.AllocsPerRun(100, func() {
		if _, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head))); err != nil {
			t.Fatal(err)
		}
	})
	t.Logf("parseSimple %v allocations, http.ReadRequest %v (with its reader)", allocs, std)
	if allocs > 5 {
		t.Errorf("parseSimple made %v allocations, want at most 5", allocs)
	}
}

// FuzzParseSimpleAgainstReadRequest: whatever parseSimple takes, it must
// parse into exactly the Request http.ReadRequest makes of the same bytes,
// consuming exactly the head; and ReadRequest must not refuse it.
//
//	go test ./proxy/h1serve/ -run x -fuzz FuzzParseSimpleAgainstReadRequest
func FuzzParseSimpleAgainstReadRequest(f *testing.F) {
	for _, h := range plainHeads {
		f.Add([]byte(h + "GET / HTTP/1.1\r\n"))
	}
	for _, h := range unplainHeads {
		f.Add([]byte(h))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		checkAgainstReadRequest(t, raw, false)
	})
}

// checkAgainstReadRequest parses the request at the start of raw both ways
// and compares the heads, what each consumed, and the bodies: read whole,
// and read in part then closed (Close reads the rest). mustTake says
// parseSimple has to take it.
func checkAgainstReadRequest(t *testing.T, raw []byte, mustTake bool) {
	t.Helper()
	n := headLength(raw)
	var probe http.Request
	if n == 0 || !parseSimple(raw[:n], &probe) {
		if mustTake {
			t.Fatalf("parseSimple did not take %q", raw)
		}
		return
	}
	for _, part := range []int{-1, 1} { // the whole body; one byte, then Close
		got, gotRest := parseOurs(raw, n)
		src := bytes.NewReader(raw)
		br := bufio.NewReaderSize(src, readBufferSize)
		want, err := http.ReadRequest(br)
		if err != nil {
			t.Fatalf("parseSimple took %q, which http.ReadRequest refuses: %v", raw, err)
		}
		if consumed := len(raw) - br.Buffered() - src.Len(); consumed != n {
			t.Errorf("http.ReadRequest consumed %d bytes of %q, parseSimple's head is %d", consumed, raw, n)
		}
		gotBody, wantBody := got.Body, want.Body
		if (gotBody == http.NoBody) != (wantBody == http.NoBody) {
			t.Fatalf("%q: parseSimple's body %T, http.ReadRequest's %T", raw, gotBody, wantBody)
		}
		got.Body, want.Body = nil, nil
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%q:\nparseSimple    %+v\nURL %+v\nhttp.ReadRequest %+v\nURL %+v", raw, *got, *got.URL, *want, *want.URL)
		}
		g, gerr := readPart(gotBody, part)
		w, werr := readPart(wantBody, part)
		if !bytes.Equal(g, w) || gerr != werr {
			t.Errorf("%q, reading %d: parseSimple's body gave %q, %v; http.ReadRequest's %q, %v", raw, part, g, gerr, w, werr)
		}
		if cerr, werr := gotBody.Close(), wantBody.Close(); cerr != werr {
			t.Errorf("%q: Close gave %v and %v", raw, cerr, werr)
		}
		if _, gerr := gotBody.Read(make([]byte, 1)); gotBody != http.NoBody && gerr != http.ErrBodyReadAfterClose {
			t.Errorf("%q: a read after Close gave %v", raw, gerr)
		}
		if g, w := restOf(gotRest), restOf(br); g != w {
			t.Errorf("%q, reading %d: after the body parseSimple's reader holds %q, http.ReadRequest's %q", raw, part, g, w)
		}
	}
}

// parseOurs is what the loop does: parseSimple on the head, then the body
// off a reader of what follows.
func parseOurs(raw []byte, n int) (*http.Request, *bufio.Reader) {
	var req http.Request
	parseSimple(raw[:n], &req)
	br := bufio.NewReaderSize(bytes.NewReader(raw[n:]), readBufferSize)
	if req.Body == nil {
		req.Body = newFixedBody(br, req.ContentLength)
	}
	return &req, br
}

// readPart reads n bytes of b, or all of it for n < 0.
func readPart(b io.Reader, n int) ([]byte, error) {
	if n < 0 {
		return io.ReadAll(b)
	}
	p := make([]byte, n)
	k, err := b.Read(p)
	return p[:k], err
}

func restOf(br *bufio.Reader) string {
	b, _ := io.ReadAll(br)
	return string(b)
}

// The loop itself takes plain requests the fast way: a handler sees a body
// read by fixedBody, and a request net/http must parse (here folded) still
// gets net/http's.
func TestLoopParsesPlainRequestsItself(t *testing.T) {
	kinds := make(chan string, 2)
	p := startPair(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		kind := "net/http"
		if rb, ok := r.Body.(*requestBody); ok {
			if _, ok := rb.ReadCloser.(*fixedBody); ok {
				kind = "fixedBody"
			}
		}
		kinds <- kind
	}))
	for raw, want := range map[string]string{
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc":               "fixedBody",
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nX: 1\r\n 2\r\n\r\nabc": "net/http",
	} {
		sendRaw(t, p.fast, []byte(raw))
		if got := recvKind(t, kinds); got != want {
			t.Errorf("%q reached the handler through %s, want %s", raw, got, want)
		}
	}
}

func recvKind(t *testing.T, kinds <-chan string) string {
	t.Helper()
	select {
	case k := <-kinds:
		return k
	case <-time.After(10 * time.Second):
		t.Fatal("the handler never ran")
		return ""
	}
}
