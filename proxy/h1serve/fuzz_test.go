package h1serve

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// echoRequest answers with everything a handler can see of its request
// (but the client's address), so two servers that parse differently answer
// differently.
func echoRequest(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	var keys []string
	for k := range r.Header {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	fmt.Fprintf(&b, "%s %q %q %s host=%q close=%v cl=%d te=%q\n", r.Method, r.RequestURI, r.URL.String(), r.Proto,
		r.Host, r.Close, r.ContentLength, r.TransferEncoding)
	for _, k := range keys {
		fmt.Fprintf(&b, "%s: %q\n", k, r.Header[k])
	}
	fmt.Fprintf(&b, "body %q %v trailer %v\n", body, err, r.Trailer)
	w.Header().Set("Content-Type", "text/plain")
	io.WriteString(w, b.String())
}

// rawExchange writes raw, half-closes, and returns the answers the server
// sent until it closed, normalised: header order (net/http's server sorts,
// the loop does not) and Date do not count.
func rawExchange(t testing.TB, addr string, raw []byte) string {
	return normalise(raw, sendRaw(t, addr, raw))
}

// sendRaw writes raw, half-closes, and returns what the server sent until
// it closed.
func sendRaw(t testing.TB, addr string, raw []byte) []byte {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	go func() {
		_, _ = c.Write(raw)
		_ = c.(*net.TCPConn).CloseWrite()
	}()
	out, err := io.ReadAll(c)
	if err != nil && !isTimeout(err) && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "connection reset") {
		t.Fatalf("reading: %v", err)
	}
	return out
}

// requestMethods is the method of each request in raw, in order.
func requestMethods(raw []byte) []string {
	var methods []string
	rr := bufio.NewReader(bytes.NewReader(raw))
	for {
		req, err := http.ReadRequest(rr)
		if err != nil {
			break
		}
		methods = append(methods, req.Method)
		_, _ = io.Copy(io.Discard, req.Body)
	}
	return methods
}

// normalise parses the answers in out, taking each one's method from the
// requests in raw (a HEAD answer has no body).
func normalise(raw, out []byte) string {
	methods := requestMethods(raw)
	var b strings.Builder
	br := bufio.NewReader(bytes.NewReader(out))
	for i := 0; ; i++ {
		if _, err := br.Peek(1); err != nil {
			break
		}
		method := http.MethodGet
		if i < len(methods) {
			method = methods[i]
		}
		resp, err := http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			rest, _ := io.ReadAll(br)
			fmt.Fprintf(&b, "unparsed: %v %q\n", err, rest)
			break
		}
		b.WriteString(describe(resp))
	}
	return b.String()
}

// FuzzRequestAgainstNetHTTP: any bytes a client sends must get the same
// answers through the loop as through net/http's server alone, whether the
// loop serves them or hands them off.
//
//	go test ./proxy/h1serve/ -run x -fuzz FuzzRequestAgainstNetHTTP
func FuzzRequestAgainstNetHTTP(f *testing.F) {
	for _, seed := range []string{
		get,
		get + get,
		"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
		"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nab",
		"GET http://b/x?y=1 HTTP/1.1\r\nHost: a\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n continued\r\n\r\n",
		"GET / HTTP/1.1\nHost: a\n\n",
		"GET / HTTP/1.0\r\n\r\n",
		"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
		"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nT: v\r\n\r\n",
		"GET / HTTP/1.1\r\nhost: a\r\n\r\n",
		"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
	} {
		f.Add([]byte(seed))
	}
	p := startPair(f, http.HandlerFunc(echoRequest))
	f.Fuzz(func(t *testing.T, raw []byte) {
		want := rawExchange(t, p.std, raw)
		got := rawExchange(t, p.fast, raw)
		if got != want {
			t.Errorf("request %q\nh1serve answered\n%s\nnet/http answered\n%s", raw, got, want)
		}
	})
}
