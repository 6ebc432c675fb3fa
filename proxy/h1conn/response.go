package h1conn

import (
	"bytes"
	"io"
	"net/http"

	"github.com/watertight/watertight/proxy/internal/h1head"
)

// readResponse reads the answer's head from c: the plainest heads with
// parseSimple, the rest with http.ReadResponse, the reference. A nil body
// on a plain answer means the body is the next ContentLength bytes of c,
// for exchange's body to read (see body.readRaw).
// The plainest answers (parseSimple) come with room for their body's
// reader, in the same allocation; nil for the rest.
func readResponse(c *conn, req *http.Request) (*http.Response, *body, error) {
	// Wait for the first bytes, as ReadResponse would; then the head has
	// usually come whole.
	if _, err := c.br.Peek(1); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF // as ReadResponse says it
		}
		return nil, nil, err
	}
	buf, _ := c.br.Peek(c.br.Buffered())
	if n := bytes.Index(buf, crlf2); n >= 0 {
		if a := parseSimple(buf[:n+4], req); a != nil {
			_, _ = c.br.Discard(n + 4)
			return &a.resp, &a.body, nil
		}
	}
	resp, err := http.ReadResponse(c.br, req)
	return resp, nil, err
}

// answer is a plain answer's head and its body's reader, in one
// allocation.
type answer struct {
	resp http.Response
	body body
}

var crlf2 = []byte("\r\n\r\n")

// parseSimple parses the head of the plainest answer as http.ReadResponse
// would (response_test.go holds it to that, field by field), in half the
// allocations (see h1head), or returns nil for anything else.
//
// The plainest answer: "HTTP/1.1 NNN reason" with a final status that has
// a body (not 1xx, 204 or 304, and not to HEAD), plain fields
// (h1head.Plain) and exactly one Content-Length. Its Body is nil (the
// caller's to set, with the answer's body) unless the length is 0.
func parseSimple(head []byte, req *http.Request) *answer {
	line, fields, ok := h1head.CutLine(head)
	if !ok || req.Method == http.MethodHead || !plainStatusLine(line) {
		return nil
	}
	code := int(line[9]-'0')*100 + int(line[10]-'0')*10 + int(line[11]-'0')
	if code < 200 || code == http.StatusNoContent || code == http.StatusNotModified {
		return nil
	}
	fh, ok := h1head.Plain(fields)
	if !ok || fh.Lengths != 1 {
		return nil
	}
	s := string(head)
	h, _ := h1head.Header(head, s, len(line)+2, fh.Fields, "")
	a := new(answer)
	resp := &a.resp
	*resp = http.Response{
		Status:        s[9:len(line)],
		StatusCode:    code,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        h,
		ContentLength: fh.Length,
		Request:       req,
	}
	if fh.Length == 0 {
		resp.Body = http.NoBody
	}
	return a
}

// plainStatusLine: "HTTP/1.1 NNN", then nothing or a space and a reason of
// visible ASCII, spaces and tabs.
func plainStatusLine(l []byte) bool {
	if len(l) < 12 || string(l[:9]) != "HTTP/1.1 " || !isDigit(l[9]) || !isDigit(l[10]) || !isDigit(l[11]) {
		return false
	}
	if len(l) == 12 {
		return true
	}
	return l[12] == ' ' && h1head.Text(l[13:])
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }
