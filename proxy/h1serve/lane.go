package h1serve

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/watertight/watertight/proxy/internal/h1head"
	"github.com/watertight/watertight/proxy/internal/reqctx"
)

// Lane serves plain requests from the bytes of their heads, below
// net/http's types: a proxy's hot case without a request object, a header
// map or a response writer (docs/forwarding-path.md, step 9). The loop
// offers it every bodiless request whose head is plain (laneHead); what it
// declines, the Handler serves as before.
type Lane interface {
	// ServeLane serves x, and reports false, having written nothing, to
	// have the Handler serve it instead. It answers with x.AnswerHead and
	// x.AnswerBody, or through the writer of x.Materialize.
	ServeLane(x *Exchange) bool
}

// Exchange is one request offered to a Lane. It and the bytes it returns
// are valid until ServeLane returns.
type Exchange struct {
	c       *conn
	ctx     reqctx.Context
	st      *served // made by Materialize
	parent  context.Context
	started bool // the context was asked for: it runs, and the watch is armed
	head    []byte
	method  string
	target  []byte
	host    []byte
	fields  []byte // the field lines, each with its CRLF
	made    bool   // Materialize was called
	wrote   bool   // AnswerHead was called
	cut     bool   // the answer ended early: the connection closes
	held    int    // bytes the connection's writer held before the answer
	n       int64  // bytes of the answer written to it
}

// Method is the request's method, one of net/http's constants.
func (x *Exchange) Method() string { return x.method }

// Target is the request target, in origin form.
func (x *Exchange) Target() []byte { return x.target }

// Host is the Host field's value (exactly one, valid).
func (x *Exchange) Host() []byte { return x.host }

// Fields is the head's field lines, each "Name: value" and CRLF, plain
// (h1head.Plain): the Host among them, no Content-Length or
// Transfer-Encoding, a Connection naming at most keep-alive.
func (x *Exchange) Fields() []byte { return x.fields }

// ConnValue is the connection's context's value for key (ConnContext's),
// which asking does not take the request as Context does.
func (x *Exchange) ConnValue(key any) any { return x.parent.Value(key) }

// Context is the request's: it ends when the client hangs up, and carries
// the connection's values (ConnContext). A lane that asked for it has
// taken the request.
func (x *Exchange) Context() context.Context {
	if !x.started {
		x.started = true
		x.ctx.Start(x.parent, time.Time{}, nil)
		x.c.arm(nil, &x.ctx)
	}
	return &x.ctx
}

// Materialized reports whether Materialize was called: the answer is then
// the writer's, and AnswerHead may no longer be used.
func (x *Exchange) Materialized() bool { return x.made }

// AnswerHead writes a plain answer's head: the status line for status,
// the field lines (each "Name: value" and CRLF, valid ones, the caller's to
// have rid of hop-by-hop fields, with the Content-Length of the body), a
// Date unless hasDate. AnswerBody follows it. fields are copied before it
// returns: they may be in a buffer that is only the caller's until then.
func (x *Exchange) AnswerHead(status int, fields []byte, hasDate bool) error {
	if x.made {
		return errors.New("h1serve: AnswerHead after Materialize")
	}
	x.wrote = true
	c := x.c
	x.held = c.bw.Buffered()
	b := appendStatusLine(c.bw.AvailableBuffer(), status)
	x.n = int64(len(b) + len(fields))
	if _, err := c.bw.Write(b); err != nil {
		return x.cutAnswer(err)
	}
	if _, err := c.bw.Write(fields); err != nil {
		return x.cutAnswer(err)
	}
	b = c.bw.AvailableBuffer()
	if !hasDate {
		b = appendDate(b)
	}
	if c.s.shutting.Load() {
		b = append(b, "Connection: close\r\n"...)
	}
	b = append(b, "\r\n"...)
	x.n += int64(len(b))
	if _, err := c.bw.Write(b); err != nil {
		return x.cutAnswer(err)
	}
	return nil
}

// AnswerBody writes the plain answer's length bytes of body, read from
// body. An error cuts the answer: the connection closes, as when a Handler
// aborts, and what of the answer was still held goes nowhere (a client
// that got no byte of an answer knows it got none).
func (x *Exchange) AnswerBody(body io.Reader, length int64) error {
	if x.cut || length == 0 || x.method == http.MethodHead {
		return nil
	}
	m, err := io.CopyN(x.c.bw, body, length)
	x.n += m
	if err != nil {
		return x.cutAnswer(err)
	}
	return nil
}

// cutAnswer ends an answer that could not be written whole.
func (x *Exchange) cutAnswer(err error) error {
	x.cut = true
	if c := x.c; x.held == 0 && int64(c.bw.Buffered()) == x.n {
		c.bw.Reset(c.wr)
	}
	return err
}

// Materialize makes the request and the response writer the Handler would
// have had, for what the lane leaves to net/http's types: an answer that
// is not plain, a local reply, a fallback. Once called, the answer is the
// writer's.
func (x *Exchange) Materialize() (http.ResponseWriter, *http.Request) {
	if x.made {
		return &x.st.resp, &x.st.req
	}
	x.made = true
	ctx := x.Context()
	st := new(served)
	x.st = st
	var req http.Request
	if !parseSimple(x.head, &req) { // laneHead took only what it parses
		panic("h1serve: a lane's head that parseSimple refuses")
	}
	req.RemoteAddr = x.c.remote
	st.req = *req.WithContext(ctx)
	st.resp = response{c: x.c, req: &st.req, contentLength: -1, held: x.c.held[:0]}
	return &st.resp, &st.req
}

// laneHead says whether head (a request head, whole) is one for the lane,
// and makes its Exchange: what parseSimple and serves take, without a
// body, an Expect or an Upgrade.
func laneHead(head []byte) *Exchange {
	line, fields, ok := h1head.CutLine(head)
	if !ok {
		return nil
	}
	method, target, ok := requestLine(line)
	if !ok || !validEscapes(line[target[0]:target[1]]) {
		return nil
	}
	fh, ok := h1head.Plain(fields)
	if !ok || fh.Hosts != 1 || fh.Lengths != 0 {
		return nil
	}
	var host []byte
	for rest := fields; ; {
		l, r, _ := h1head.CutLine(rest)
		if len(l) == 0 {
			break
		}
		rest = r
		name, value := h1head.Split(l)
		switch {
		case h1head.Is(name, "Host"):
			host = value
		case h1head.Is(name, "Expect"), h1head.Is(name, "Upgrade"):
			return nil
		}
	}
	if !httpguts.ValidHostHeader(string(host)) {
		return nil
	}
	return &Exchange{head: head, method: method, target: line[target[0]:target[1]], host: host, fields: fields[:len(fields)-2]}
}

// validEscapes: every '%' of the target's path starts an escape of two hex
// digits, as url.ParseRequestURI (parseSimple) requires; the query is not
// its to check.
func validEscapes(target []byte) bool {
	for i := 0; i < len(target) && target[i] != '?'; i++ {
		if target[i] == '%' {
			if i+2 >= len(target) || !isHex(target[i+1]) || !isHex(target[i+2]) {
				return false
			}
		}
	}
	return true
}

func isHex(c byte) bool { return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F' }

// serveLane offers the request in head to the Lane, and if it declines,
// to the Handler; it reports whether the connection can carry another.
// It reports false for taken when the head is not one for the lane, and
// nothing was done.
func (c *conn) serveLane(parent context.Context, head []byte) (taken, keep bool) {
	x := laneHead(head)
	if x == nil {
		return false, false
	}
	x.c, x.parent = c, parent
	// Consumed now, so that the watch may read the connection; the bytes
	// stay in the buffer, which nothing reads until the request is done.
	_, _ = c.br.Discard(len(head))
	_ = c.nc.SetReadDeadline(time.Time{})
	if !c.s.Lane.ServeLane(x) {
		var req http.Request
		parseSimple(head, &req) // laneHead took only what it parses
		if x.started {
			x.ctx.Cancel()
			c.disarm()
		}
		return true, c.serveRequest(parent, &req)
	}
	if !x.started { // an answer that did not need the context
		x.Context()
	}
	defer x.ctx.Cancel()
	if c.disarm() {
		return true, false // the client hung up
	}
	var err error
	switch {
	case x.made:
		w := &x.st.resp
		w.finish()
		if w.closeAfter {
			return true, false
		}
		err = w.err
	case x.cut:
		return true, false
	case x.wrote:
		err = c.bw.Flush()
	default:
		panic("h1serve: a lane took a request and did not answer it")
	}
	return true, err == nil && !c.s.shutting.Load()
}

// appendDate appends the Date field net/http's server adds.
func appendDate(b []byte) []byte {
	b = append(b, "Date: "...)
	b = time.Now().UTC().AppendFormat(b, http.TimeFormat)
	return append(b, "\r\n"...)
}

// appendStatusLine is net/http's server's status line for code.
func appendStatusLine(b []byte, code int) []byte {
	b = append(b, "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(code), 10)
	b = append(b, ' ')
	if text := http.StatusText(code); text != "" {
		b = append(b, text...)
	} else {
		b = append(b, "status code "...) // net/http's server's words
		b = strconv.AppendInt(b, int64(code), 10)
	}
	return append(b, "\r\n"...)
}
