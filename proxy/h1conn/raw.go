package h1conn

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"

	"github.com/watertight/watertight/proxy/internal/h1head"
	"github.com/watertight/watertight/proxy/internal/reqctx"
)

// The lane's half of the client (docs/forwarding-path.md, step 9): a
// request sent as the bytes of its head, and its answer taken as bytes
// when it is plain, or as an http.Response when it is not. What is written
// and read on the wire, the pool, the liveness probe, the stale retry and
// the context's end are RoundTrip's; only net/http's types are left out.

// RawAnswer is the answer to a head RoundTripRaw sent. Its head waits,
// unread, in the connection's buffer: the caller takes it as bytes (Plain,
// then Body) or as an http.Response (Response), or gives up on it (Close).
// Exactly one of Body, Response and Close must be called.
type RawAnswer struct {
	t      *Transport
	c      *conn
	ctx    context.Context
	stop   reqctx.Registration
	method string
	head   int // the plain head's length, 0 if the answer is not plain
	status int
	length int64
	fields []byte // the plain head's field lines, in c's buffer
	b      body
}

// RoundTripRaw sends the head that head appends to the buffer it is given
// (the whole head of a bodiless request: request line, fields, blank line,
// the caller's to have made valid; written where the connection's writer
// buffers, so it is not copied) to addr on an idle or new connection, and
// returns once the answer has begun. A pooled
// connection the upstream had closed is replaced once, for a method that
// may go again (GET, HEAD, OPTIONS, TRACE), as RoundTrip does.
func (t *Transport) RoundTripRaw(ctx context.Context, addr, method string, head func([]byte) []byte) (*RawAnswer, error) {
	for retried := false; ; retried = true {
		c, err := t.get(ctx, addr)
		if err != nil {
			return nil, err
		}
		a, err := t.exchangeRaw(ctx, c, method, head)
		if err == nil {
			return a, nil
		}
		if !retried && c.reused && errors.Is(err, errStale) && idempotent(method) && ctx.Err() == nil {
			continue
		}
		return nil, err
	}
}

func (t *Transport) exchangeRaw(ctx context.Context, c *conn, method string, head func([]byte) []byte) (*RawAnswer, error) {
	stop := reqctx.Register(ctx, c.abort)
	c.written = 0
	_, err := c.bw.Write(head(c.bw.AvailableBuffer()))
	if err == nil {
		err = c.flush()
	}
	if err != nil {
		if c.written == 0 {
			err = fmt.Errorf("%w: %w", errStale, err)
		}
		return nil, t.fail(ctx, c, stop, "writing request to", err)
	}
	c.limit = t.maxHeaderBytes()
	if _, err := c.br.Peek(1); err != nil {
		if errors.Is(err, io.EOF) || isReset(err) {
			err = fmt.Errorf("%w: %w", errStale, io.ErrUnexpectedEOF)
		}
		return nil, t.fail(ctx, c, stop, "reading response head from", err)
	}
	a := &RawAnswer{t: t, c: c, ctx: ctx, stop: stop, method: method}
	a.parse()
	return a, nil
}

// parse finds out whether the answer's head, as far as it is buffered, is
// plain: what parseSimple takes (a final status with a body, plain fields,
// exactly one Content-Length) and the request was not HEAD.
func (a *RawAnswer) parse() {
	buf, _ := a.c.br.Peek(a.c.br.Buffered())
	n := bytes.Index(buf, crlf2)
	if n < 0 || a.method == http.MethodHead {
		return
	}
	line, fields, ok := h1head.CutLine(buf[:n+4])
	if !ok || !plainStatusLine(line) {
		return
	}
	code := int(line[9]-'0')*100 + int(line[10]-'0')*10 + int(line[11]-'0')
	if code < 200 || code == http.StatusNoContent || code == http.StatusNotModified {
		return
	}
	fh, ok := h1head.Plain(fields)
	if !ok || fh.Lengths != 1 {
		return
	}
	a.head, a.status, a.length = n+4, code, fh.Length
	a.fields = fields[:len(fields)-2] // without the blank line
}

// Plain reports whether the answer is plain, and if so its status, its
// length and its field lines (each ending in CRLF), as the upstream sent
// them: valid until Body is called.
func (a *RawAnswer) Plain() (status int, length int64, fields []byte, ok bool) {
	return a.status, a.length, a.fields, a.head > 0
}

// Body takes a plain answer's head and returns its body: the next Length
// bytes of the connection, read as RoundTrip's plain bodies are (the
// connection goes back to the pool at the end, and is closed on Close
// before it or when the context ends).
func (a *RawAnswer) Body() io.ReadCloser {
	_, _ = a.c.br.Discard(a.head)
	a.c.limit = noLimit
	if a.length == 0 {
		a.t.release(a.c, a.stop, true)
		return http.NoBody
	}
	a.b = body{t: a.t, c: a.c, ctx: a.ctx, stop: a.stop, keep: true, remaining: a.length}
	return &a.b
}

// Response reads the answer as RoundTrip would have, for req (which only
// its method and its part in the response matter for here), passing its
// informational answers to got1xx.
func (a *RawAnswer) Response(req *http.Request, got1xx func(int, textproto.MIMEHeader) error) (*http.Response, error) {
	return a.t.receive(a.ctx, a.c, req, a.stop, got1xx)
}

// Close gives up on the answer: its connection is closed.
func (a *RawAnswer) Close() {
	a.t.release(a.c, a.stop, false)
}

// idempotent: a bodiless request of this method may go again unchanged
// (replayable's rule, for a request that has no header map to look in).
func idempotent(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	return false
}
