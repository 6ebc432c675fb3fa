package h2serve

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/watertight/watertight/proxy/internal/h2wire"
)

// Lane serves plain requests from their decoded fields, below net/http's
// types: no http.Request, header map or URL is made for them
// (docs/forwarding-path.md, steps 10 and 14). The worker offers it every
// request whose fields are plain (take), with its body if it has one;
// what it declines, the Handler serves as before.
type Lane interface {
	// ServeLane serves x, and reports false, having done nothing with it,
	// to have the Handler serve it instead. It answers with x.AnswerHead,
	// x.AnswerBody and x.AnswerTrailers, or through the writer of
	// x.Materialize.
	ServeLane(x *Exchange) bool
}

// laneFields is how many regular fields a request may have and still be
// kept in its stream without an allocation of their own.
const laneFields = 12

// Exchange is one request offered to a Lane, valid until ServeLane returns.
type Exchange struct {
	st        *stream
	method    string
	authority string
	path      string
	fields    []hpack.HeaderField // regular, in the order they came
	arr       [laneFields]hpack.HeaderField
	made      bool // Materialize was called
	answered  bool // AnswerHead was called
	cut       bool // the answer could not be completed: the stream is reset

	// Informational answers may come from another goroutine (an upstream
	// client's reader) until the final one is chosen.
	mu    sync.Mutex
	final bool
}

// finalize ends Informational's turn.
func (x *Exchange) finalize() {
	x.mu.Lock()
	x.final = true
	x.mu.Unlock()
}

// Method is the request's :method.
func (x *Exchange) Method() string { return x.method }

// Authority is the request's :authority (never empty: a request with a
// Host field in its place is not the lane's).
func (x *Exchange) Authority() string { return x.authority }

// Path is the request's :path, which starts with '/' and holds only
// printable ASCII, with valid escapes before its query.
func (x *Exchange) Path() string { return x.path }

// Fields is the request's regular fields as they came: valid, in lower
// case, none connection-specific, no Host, Content-Length, Trailer,
// Expect, and at most one Cookie; a TE says trailers.
func (x *Exchange) Fields() []hpack.HeaderField { return x.fields }

// Body is the request's body, nil when its HEADERS ended the stream. Its
// length is unknown (a plain request has no Content-Length); it can tell
// whether a Read would wait (Ready), and ends with io.EOF. Closing it stops
// it: what the client sends after is discarded, and a Read waiting for it
// returns. It is closed when the Lane returns.
func (x *Exchange) Body() io.ReadCloser {
	if x.st.body == nil {
		return nil
	}
	return x.st.body
}

// Context is the request's: it ends when the stream does, and carries the
// connection's values (ConnContext).
func (x *Exchange) Context() context.Context { return &x.st.ctx }

// Materialized reports whether Materialize was called: the answer is then
// the writer's.
func (x *Exchange) Materialized() bool { return x.made }

// Materialize makes the request and the response writer the Handler would
// have had, for what the lane leaves to net/http's types. Once called, the
// answer is the writer's.
func (x *Exchange) Materialize() (http.ResponseWriter, *http.Request) {
	st := x.st
	if !x.made {
		x.made = true
		x.finalize()
		pseudo := [...]hpack.HeaderField{
			{Name: ":method", Value: x.method}, {Name: ":scheme", Value: "http"},
			{Name: ":authority", Value: x.authority}, {Name: ":path", Value: x.path},
		}
		var names h2wire.Names // the reader's cache is the reader's
		if err := buildRequest(st, &names, pseudo[:], x.fields, st.body == nil); err != nil {
			panic("h2serve: a lane's request that buildRequest refuses: " + err.Error()) // take took only what it takes
		}
		st.bindRequest()
	}
	return &st.rw, &st.req
}

// Informational sends an informational answer (1xx) with fields, as the
// writer sends one a Handler writes: without connection-specific fields
// or a Content-Length. It may be called from any goroutine, and does
// nothing once AnswerHead or Materialize was called.
func (x *Exchange) Informational(status int, fields []hpack.HeaderField) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.final {
		return
	}
	w := &x.st.rw
	c := w.c
	if w.alive() != nil {
		return
	}
	c.w.Lock()
	c.w.StartBlock()
	c.w.Encode(":status", h2wire.Status(status))
	for i := range fields {
		c.encodeRaw(&fields[i])
	}
	c.w.WriteBlock(w.st.id, false)
	_ = c.w.Unlock()
}

// AnswerHead sets the answer's final status (200-999) and its fields:
// valid, in lower case, announcing no trailers; they are sent as they are
// but for the connection-specific ones and Content-Length, which says
// length (-1 for none). It may be called once, and not after Materialize.
// The fields must stay as they are until the answer has ended.
func (x *Exchange) AnswerHead(status int, fields []hpack.HeaderField, length int64) error {
	if x.made || x.answered {
		return errors.New("h2serve: AnswerHead after Materialize or AnswerHead")
	}
	x.answered = true
	x.finalize()
	w := &x.st.rw
	w.wroteHeader, w.status, w.raw, w.declLen = true, status, fields, length
	for i := range fields {
		switch hf := &fields[i]; hf.Name {
		case "content-type":
			w.hasType = true
		case "content-encoding":
			w.hasEncoding = hf.Value != ""
		case "date":
			w.hasDate = true
		}
	}
	return nil
}

// AnswerBody sends the answer's body, read from body to its end, as the
// writer sends what a Handler writes (held while it fits, its HEADERS
// with it). An answer of unknown length keeps it so, and what was written
// goes out before a read that would wait (one whose body cannot tell if
// it would: after every write): a proxy's answer leaves as its upstream's
// came, and a gRPC answer that came whole in one write. An error cuts the
// answer: the stream is reset, as when a Handler aborts, so that the
// client cannot take it for whole.
func (x *Exchange) AnswerBody(body io.Reader) (err error) {
	defer func() {
		if err != nil {
			x.cut = true
		}
	}()
	w := &x.st.rw
	r, _ := body.(interface{ Ready() bool })
	flushes := w.declLen < 0
	waits := func() bool { return flushes && (r == nil || !r.Ready()) }
	if flushes {
		w.noLength = true
	}
	if waits() {
		// The head goes out now, before the body has anything to say.
		if err := w.FlushError(); err != nil {
			return err
		}
	}
	bp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bp)
	buf := *bp
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				return err
			}
			if waits() {
				if err := w.FlushError(); err != nil {
					return err
				}
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// AnswerTrailers sets the trailers that end the answer (fields as for
// AnswerHead), valid until it has ended.
func (x *Exchange) AnswerTrailers(fields []hpack.HeaderField) { x.st.rw.rawTrailers = fields }

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// take says whether f (a request's HEADERS frame) is one for the lane,
// and keeps its fields in x if so: a request buildRequest takes as it
// comes, with the fields Fields promises.
func (x *Exchange) take(f *http2.MetaHeadersFrame) bool {
	pseudo, regular := h2wire.Split(f.Fields)
	method, scheme, authority, path, ok := pseudoValues(pseudo)
	if !ok || method == "" || method == http.MethodConnect || !validMethod(method) ||
		scheme != "http" || authority == "" || !lanePath(path) {
		return false
	}
	cookies := 0
	for i := range regular {
		hf := &regular[i]
		switch hf.Name {
		case "connection", "proxy-connection", "keep-alive", "transfer-encoding", "upgrade",
			"host", "content-length", "trailer", "expect":
			return false
		case "te":
			if hf.Value != "trailers" {
				return false
			}
		case "cookie":
			if cookies++; cookies > 1 {
				return false
			}
		}
	}
	x.method, x.authority, x.path = method, authority, path
	// A copy: the frame is the reader's, and reused.
	if len(regular) <= len(x.arr) {
		x.fields = x.arr[:copy(x.arr[:], regular)]
	} else {
		x.fields = append([]hpack.HeaderField(nil), regular...)
	}
	return true
}

// lanePath: a :path url.ParseRequestURI takes as it is: from '/', bytes
// from '!' to '~', and before the query every '%' starts an escape.
func lanePath(p string) bool {
	if p == "" || p[0] != '/' {
		return false
	}
	query := false
	for i := 0; i < len(p); i++ {
		switch b := p[i]; {
		case b < '!' || b > '~':
			return false
		case b == '?':
			query = true
		case b == '%' && !query:
			if i+2 >= len(p) || !isHex(p[i+1]) || !isHex(p[i+2]) {
				return false
			}
		}
	}
	return true
}

func isHex(c byte) bool { return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F' }

// encodeRaw encodes one field of a lane's answer as encodeField would
// the same field from a header map; the caller holds the write lock. A
// field the upstream sent never-indexed stays so (RFC 7541, 7.1.3), which
// a header map cannot say.
func (c *conn) encodeRaw(hf *hpack.HeaderField) {
	switch hf.Name {
	case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "content-length":
		return
	}
	if hf.Sensitive {
		c.w.EncodeLiteral(hf.Name, hf.Value)
		return
	}
	c.w.Encode(hf.Name, hf.Value)
}

// serveLane offers st's request to the Lane; it reports whether the Lane
// served it. One it declines is made into an http.Request for the
// Handler.
func (c *conn) serveLane(st *stream) bool {
	x := &st.x
	if c.s.Lane.ServeLane(x) {
		return true
	}
	if x.answered {
		panic("h2serve: a lane declined a request it answered")
	}
	x.Materialize()
	return false
}
