package h1serve

import (
	"bytes"
	"net/http"
	"net/textproto"
	"testing"

	"github.com/watertight/watertight/proxy/internal/h1head"
)

// FuzzLaneHead: every head the lane is offered is one the loop would have
// served itself (parseSimple and serves take it), without a body, and the
// Exchange says of it what the http.Request would: method, target, Host and
// every field.
//
//	go test ./proxy/h1serve/ -run x -fuzz FuzzLaneHead
func FuzzLaneHead(f *testing.F) {
	for _, seed := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /a/b?c=d&e HTTP/1.1\r\nHost: a:80\r\nUser-Agent: x\r\nAccept: */*\r\n\r\n",
		"HEAD /%2F%41 HTTP/1.1\r\nhost: a\r\nconnection: keep-alive\r\n\r\n",
		"GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /a%2 HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /a?%zz HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
		"GET //a HTTP/1.1\r\nHost: a\r\n\r\n",
		"DELETE /x HTTP/1.1\r\nHost: [::1]:80\r\nX:  spaced  \r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n continued\r\n\r\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		n := headLength(raw)
		if n == 0 {
			return
		}
		head := raw[:n]
		x := laneHead(head)
		if x == nil {
			return
		}
		var req http.Request
		if !parseSimple(head, &req) {
			t.Fatalf("laneHead took %q, parseSimple does not", head)
		}
		if !serves(&req, head, true) {
			t.Fatalf("laneHead took %q, which the loop hands off", head)
		}
		if req.ContentLength != 0 {
			t.Fatalf("laneHead took %q, with a body", head)
		}
		if x.Method() != req.Method || string(x.Target()) != req.RequestURI || string(x.Host()) != req.Host {
			t.Fatalf("%q: lane %s %s host %q, request %s %s host %q", head, x.Method(), x.Target(), x.Host(), req.Method, req.RequestURI, req.Host)
		}
		h := http.Header{}
		for rest := x.Fields(); len(rest) > 0; {
			l, r, ok := h1head.CutLine(rest)
			if !ok {
				t.Fatalf("%q: fields %q do not end in CRLF", head, x.Fields())
			}
			rest = r
			name, value := h1head.Split(l)
			if k := textproto.CanonicalMIMEHeaderKey(string(name)); k != "Host" {
				h[k] = append(h[k], string(value))
			}
		}
		if len(h) != len(req.Header) {
			t.Fatalf("%q: lane fields %v, request header %v", head, h, req.Header)
		}
		for k, vv := range req.Header {
			if got := h[k]; len(got) != len(vv) || !bytes.Equal([]byte(joinAll(got)), []byte(joinAll(vv))) {
				t.Fatalf("%q: %s is %q through the lane, %q in the request", head, k, got, vv)
			}
		}
	})
}

func joinAll(vv []string) string {
	var b bytes.Buffer
	for _, v := range vv {
		b.WriteString(v)
		b.WriteByte(0)
	}
	return b.String()
}
