package h1serve

import (
	"io"
	"net/http"
	"net/url"
	"sync"

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
// an origin-form target of visible ASCII, plain fields (h1head.Plain),
// exactly one Host and at most one Content-Length. A body's length is in
// req.ContentLength and req.Body is nil: the caller gives it a fixedBody
// once the head is consumed.
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
	fh, ok := h1head.Plain(fields)
	if !ok || fh.Hosts != 1 || fh.Lengths > 1 {
		return false
	}

	s := string(head)
	uri := s[target[0]:target[1]]
	u, err := url.ParseRequestURI(uri)
	if err != nil {
		return false
	}
	h, host := h1head.Header(head, s, len(line)+2, fh.Fields-1, "Host")
	*req = http.Request{
		Method:        method,
		URL:           u,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        h,
		ContentLength: fh.Length,
		Host:          host,
		RequestURI:    uri,
	}
	if fh.Length == 0 {
		req.Body = http.NoBody
	}
	return true
}

// fixedBody is a plain request's body of known length, read off the
// connection's reader exactly as net/http's request body reads it (the
// fuzz test holds the two to the same bytes and errors): the end comes with
// the last bytes, an end before them is io.ErrUnexpectedEOF, Close reads
// what is left so that the next request starts clean, and a read after
// Close fails. Its own type because net/http's is unexported.
type fixedBody struct {
	mu     sync.Mutex
	src    io.LimitedReader
	sawEOF bool
	closed bool
}

func newFixedBody(r io.Reader, n int64) *fixedBody {
	return &fixedBody{src: io.LimitedReader{R: r, N: n}}
}

func (b *fixedBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	return b.readLocked(p)
}

func (b *fixedBody) readLocked(p []byte) (int, error) {
	if b.sawEOF {
		return 0, io.EOF
	}
	n, err := b.src.Read(p)
	if err == io.EOF {
		b.sawEOF = true
		if b.src.N > 0 {
			err = io.ErrUnexpectedEOF
		}
	}
	if err == nil && n > 0 && b.src.N == 0 {
		err = io.EOF
		b.sawEOF = true
	}
	return n, err
}

func (b *fixedBody) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	var err error
	if !b.sawEOF {
		_, err = io.Copy(io.Discard, readerFunc(b.readLocked))
	}
	b.closed = true
	return err
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

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
