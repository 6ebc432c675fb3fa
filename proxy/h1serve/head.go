package h1serve

import (
	"net/http"
	"net/url"

	"github.com/watertight/watertight/proxy/internal/h1head"
)

// parseSimple parses the head of the plainest request into req, as
// http.ReadRequest would (head_test.go holds it to that, field by field,
// and to what it consumes), in half the allocations (see h1head). It
// reports false, having set nothing that matters, for anything else, which
// http.ReadRequest then parses: its parser is the reference, this only the
// fast way to its answer for the common case.
//
// The plainest request: "METHOD /target HTTP/1.1" with a common method and
// an origin-form target of visible ASCII, plain field lines (h1head.Plain),
// exactly one Host, no body (no Content-Length or Transfer-Encoding), and
// no Pragma or Connection but keep-alive (which ReadRequest would act on).
func parseSimple(head []byte, req *http.Request) bool {
	// head ends with the blank line (headLength found it).
	line, fields, ok := h1head.CutLine(head)
	if !ok {
		return false
	}
	method, target, ok := requestLine(line)
	if !ok {
		return false
	}
	hosts := 0
	n, ok := h1head.Plain(fields, func(name, value []byte) bool {
		switch {
		case h1head.Is(name, "Host"):
			hosts++
		case h1head.Is(name, "Connection"):
			return h1head.OnlyKeepAlive([]string{string(value)})
		case h1head.Is(name, "Content-Length"), h1head.Is(name, "Transfer-Encoding"), h1head.Is(name, "Pragma"):
			return false
		}
		return true
	})
	if !ok || hosts != 1 {
		return false
	}

	s := string(head)
	uri := s[target[0]:target[1]]
	u, err := url.ParseRequestURI(uri)
	if err != nil {
		return false
	}
	h, host := h1head.Header(head, s, len(line)+2, n-1, "Host")
	*req = http.Request{
		Method:     method,
		URL:        u,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     h,
		Body:       http.NoBody,
		Host:       host,
		RequestURI: uri,
	}
	return true
}

// requestLine splits "METHOD /target HTTP/1.1" and returns the method (one
// of the common ones, as a constant) and the target's bounds in the line.
func requestLine(line []byte) (method string, target [2]int, ok bool) {
	sp := 0
	for sp < len(line) && line[sp] != ' ' {
		sp++
	}
	for _, m := range methods {
		if string(line[:sp]) == m {
			method = m
		}
	}
	const proto = " HTTP/1.1"
	if method == "" || len(line) < sp+2+len(proto) || string(line[len(line)-len(proto):]) != proto {
		return "", target, false
	}
	t := line[sp+1 : len(line)-len(proto)]
	// Origin form only: "//" would read as an authority to some, and
	// anything past visible ASCII is left to net/http's rules.
	if t[0] != '/' || len(t) > 1 && t[1] == '/' {
		return "", target, false
	}
	for _, c := range t {
		if c <= ' ' || c >= 0x7f || c == '#' {
			return "", target, false
		}
	}
	return method, [2]int{sp + 1, sp + 1 + len(t)}, true
}

var methods = [...]string{
	http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut,
	http.MethodDelete, http.MethodOptions, http.MethodPatch,
}
