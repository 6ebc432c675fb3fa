package h1conn

import (
	"bufio"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"slices"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// writeHead writes the head of a bodiless request the way Request.Write
// does, byte for byte (head_test.go compares them), without its formatting
// and transfer-writer allocations: those were 3-5 % of the sidecar's CPU at
// full load (docs/benchmarks.md, run 14), and the standard library has no
// other way to write a request head. It reports false, having written
// nothing, for anything but the plain case, which Request.Write then takes.
func writeHead(bw *bufio.Writer, req *http.Request) bool {
	if (req.Body != nil && req.Body != http.NoBody) || req.ContentLength != 0 || req.Close ||
		len(req.TransferEncoding) > 0 || len(req.Trailer) > 0 || req.Method == http.MethodConnect ||
		req.URL.Opaque != "" || hasWriteHooks(req) {
		return false
	}
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	// Request.Write would punycode a non-ASCII host, blank an invalid one
	// and strip an IPv6 zone: leave those to it.
	if !isPlainASCII(host) || strings.HasPrefix(host, "[") || !httpguts.ValidHostHeader(host) {
		return false
	}
	path, query := req.URL.EscapedPath(), req.URL.RawQuery
	if path == "" {
		path = "/"
	}
	if hasCTL(path) || hasCTL(query) {
		return false // Request.Write refuses those; let it say so
	}
	ua := defaultUserAgent
	if v, ok := req.Header["User-Agent"]; ok {
		ua = ""
		if len(v) > 0 {
			ua = v[0]
		}
	}

	method := req.Method
	if method == "" {
		method = http.MethodGet
	}
	bw.WriteString(method)
	bw.WriteByte(' ')
	bw.WriteString(path)
	if req.URL.ForceQuery || query != "" {
		bw.WriteByte('?')
		bw.WriteString(query)
	}
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(host)
	bw.WriteString("\r\n")
	if ua != "" { // tested before trimming: a blank field is still sent, empty
		bw.WriteString("User-Agent: ")
		bw.WriteString(textproto.TrimString(headerNewlineToSpace.Replace(ua)))
		bw.WriteString("\r\n")
	}
	// Many servers expect a length for these, so Request.Write sends one.
	switch method {
	case http.MethodPost, http.MethodPut, http.MethodPatch:
		bw.WriteString("Content-Length: 0\r\n")
	}
	var stack [32]string
	keys := stack[:0]
	for k := range req.Header {
		switch k {
		case "Host", "User-Agent", "Content-Length", "Transfer-Encoding", "Trailer":
			continue
		}
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if !httpguts.ValidHeaderFieldName(k) {
			continue // Request.Write drops it too
		}
		for _, v := range req.Header[k] {
			v = textproto.TrimString(headerNewlineToSpace.Replace(v))
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(v)
			bw.WriteString("\r\n")
		}
	}
	bw.WriteString("\r\n")
	return true
}

// defaultUserAgent is Request.Write's for a request without the field.
const defaultUserAgent = "Go-http-client/1.1"

var headerNewlineToSpace = strings.NewReplacer("\n", " ", "\r", " ")

// hasWriteHooks: the request's client trace wants to hear of each field
// written, which only Request.Write tells.
func hasWriteHooks(req *http.Request) bool {
	t := httptrace.ContextClientTrace(req.Context())
	return t != nil && (t.WroteHeaderField != nil || t.WroteHeaders != nil || t.WroteRequest != nil)
}

func isPlainASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

func hasCTL(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] == 0x7f {
			return true
		}
	}
	return false
}
