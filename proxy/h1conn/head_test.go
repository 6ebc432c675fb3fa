package h1conn

import (
	"bufio"
	"bytes"
	"context"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strings"
	"testing"
)

// headCase builds a request as the sidecar hands them to the transport.
func headCase(t testing.TB, method, target, host string, header http.Header) *http.Request {
	u, err := url.Parse(target)
	if err != nil {
		t.Skip()
	}
	return &http.Request{Method: method, URL: u, Host: host, Header: header, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1}
}

// compareHead writes req with writeHead and with Request.Write and reports
// whether writeHead took it; where it did, the bytes must be the same.
func compareHead(t testing.TB, req *http.Request) bool {
	t.Helper()
	var fast bytes.Buffer
	bw := bufio.NewWriter(&fast)
	took := writeHead(bw, req)
	_ = bw.Flush()
	if !took {
		if fast.Len() > 0 {
			t.Fatalf("writeHead declined %s %s but wrote %q", req.Method, req.URL, fast.String())
		}
		return false
	}
	var std bytes.Buffer
	if err := req.Write(&std); err != nil {
		t.Fatalf("writeHead wrote %q, Request.Write refused: %v", fast.String(), err)
	}
	if fast.String() != std.String() {
		t.Fatalf("writeHead wrote\n%q\nRequest.Write wrote\n%q", fast.String(), std.String())
	}
	return true
}

func TestWriteHeadMatchesRequestWrite(t *testing.T) {
	cases := []struct {
		method, target, host string
		header               http.Header
		fast                 bool
	}{
		{"GET", "http://10.0.0.1:80/", "svc", http.Header{}, true},
		{"", "http://10.0.0.1/a/b", "", nil, true},
		{"GET", "http://10.0.0.1/a%20b/c?x=1&y=%2F", "svc.ns:8080", http.Header{"Accept": {"*/*"}}, true},
		{"GET", "http://10.0.0.1/path?", "svc", http.Header{}, true},
		{"GET", "http://10.0.0.1/a%2fb", "svc", http.Header{}, true},
		{"GET", "http://10.0.0.1/ünï", "svc", http.Header{}, true},
		{"HEAD", "http://10.0.0.1/", "svc", http.Header{"User-Agent": {"app/1.0"}}, true},
		{"DELETE", "http://10.0.0.1/x", "svc", http.Header{"User-Agent": {""}}, true},
		{"OPTIONS", "http://10.0.0.1/x", "svc", http.Header{"User-Agent": {}}, true},
		{"POST", "http://10.0.0.1/x", "svc", http.Header{"User-Agent": {"  padded\t"}}, true},
		{"PATCH", "http://10.0.0.1/x", "svc", http.Header{
			"Zeta": {"z"}, "Alpha": {" a ", "b"}, "X-Empty": {""}, "X-None": {},
			"user-agent": {"lower"}, "Host": {"evil"}, "Content-Length": {"9"}, "Trailer": {"X"},
			"Transfer-Encoding": {"chunked"}, "X-Request-Timeout": {"14999ms"},
		}, true},
		{"GET", "http://10.0.0.1/", "svc", http.Header{"Bad Name": {"v"}, "Good": {"v"}}, true},
		{"GET", "http://10.0.0.1/", "[fe80::1%25eth0]:80", http.Header{}, false}, // zone
		{"GET", "http://10.0.0.1/", "bücher.example", http.Header{}, false},      // punycode
		{"GET", "http://10.0.0.1/", "a b", http.Header{}, false},                 // invalid Host
		{"CONNECT", "http://10.0.0.1/", "svc", http.Header{}, false},
	}
	took := 0
	for _, c := range cases {
		req := headCase(t, c.method, c.target, c.host, c.header)
		if got := compareHead(t, req); got != c.fast {
			t.Errorf("%s %s Host %q: writeHead took it %v, want %v", c.method, c.target, c.host, got, c.fast)
		} else if got {
			took++
		}
	}

	// What writeHead leaves to Request.Write.
	body := headCase(t, "POST", "http://10.0.0.1/", "svc", http.Header{})
	body.Body, body.ContentLength = http.NoBody, 5
	closing := headCase(t, "GET", "http://10.0.0.1/", "svc", http.Header{})
	closing.Close = true
	traced := headCase(t, "GET", "http://10.0.0.1/", "svc", http.Header{})
	traced = traced.WithContext(httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{WroteHeaders: func() {}}))
	opaque := headCase(t, "GET", "http://10.0.0.1/", "svc", http.Header{})
	opaque.URL.Opaque = "//other/x"
	for name, req := range map[string]*http.Request{"a body": body, "Connection: close": closing, "a trace hook": traced, "an opaque URL": opaque} {
		var buf bytes.Buffer
		bw := bufio.NewWriter(&buf)
		if writeHead(bw, req) {
			t.Errorf("writeHead took a request with %s", name)
		}
	}
}

// FuzzWriteHead: for any method, target, Host and fields, writeHead writes
// what Request.Write writes, or declines without writing.
//
//	go test ./proxy/h1conn/ -run x -fuzz FuzzWriteHead
func FuzzWriteHead(f *testing.F) {
	f.Add("GET", "http://10.0.0.1/a?b=c", "svc", "Accept: */*\nUser-Agent: x")
	f.Add("POST", "http://10.0.0.1/%7e", "svc:80", "user-agent: a\nB: \t c \nB: d")
	f.Add("", "http://h/", "", "Host: x\nContent-Length: 3")
	f.Fuzz(func(t *testing.T, method, target, host, fields string) {
		if !validToken(method) && method != "" {
			return // validate refuses those before writeHead
		}
		h := http.Header{}
		for line := range strings.Lines(fields) {
			k, v, _ := strings.Cut(strings.TrimRight(line, "\n"), ":")
			h[k] = append(h[k], v)
		}
		req := headCase(t, method, target, host, h)
		if req.URL.Host == "" || validate(req) != nil {
			return
		}
		compareHead(t, req)
	})
}

func validToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c >= 0x7f || strings.IndexByte("()<>@,;:\\\"/[]?={}", c) >= 0 {
			return false
		}
	}
	return true
}
