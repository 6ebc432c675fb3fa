package h2conn

import (
	"context"
	"errors"
	"io"
	"net/http"

	"golang.org/x/net/http2/hpack"

	"github.com/watertight/watertight/proxy/internal/h2wire"
)

// The lane's half of the client (docs/forwarding-path.md, steps 10 and
// 14): a request sent from its fields (and a gRPC call's body after them,
// as RoundTrip sends one), and its answer kept as the fields
// it came with, with no http.Request to read them from and no header map
// made for the answer unless the caller asks for an http.Response. The
// pool, the streams, flow control, the refused-stream retries and the
// context's end are RoundTrip's.

// Encoder takes a header block's fields: the client's HPACK encoder, under
// the connection's write lock.
type Encoder interface {
	// Encode adds a field, indexed as HPACK sees fit.
	Encode(name, value string)
	// EncodeLiteral adds a field never indexed: for a value that changes
	// with every request (a deadline), which would only churn the table.
	EncodeLiteral(name, value string)
}

// RawRequest is a request given as its fields, and its body if it has one.
type RawRequest struct {
	Method    string
	Authority string
	Path      string // with the query: the :path as it goes
	// Fields encodes the regular fields, which must be valid, in lower
	// case, and none of them connection-specific (RFC 9113, 8.2.2). It
	// may be called more than once: once per connection tried.
	Fields func(Encoder)
	// Body, if not nil, is sent as it comes, its length unknown: inline
	// with the HEADERS while it is Ready (see bodyReady), from a goroutine
	// of its own after that. It is closed once sent, or when the request
	// fails or the stream ends first.
	Body io.ReadCloser
	// Got1xx, if set, is given each informational answer, on the
	// connection's reader, its fields valid during the call; an error
	// cancels the stream.
	Got1xx func(status int, fields []hpack.HeaderField) error
}

// RawAnswer is the answer to a RawRequest: its status and fields as they
// came, its body, and once that ended its trailers. Exactly one of Body,
// Response and Close must be called; the body must be closed.
type RawAnswer struct{ cs *clientStream }

// RoundTripRaw sends r to addr and returns once its answer's HEADERS have
// come. A request the upstream refused before processing it goes again on
// another connection, as RoundTrip's do, if none of its body was taken:
// a request without one, or refused before its stream opened.
func (t *Transport) RoundTripRaw(ctx context.Context, addr string, r *RawRequest) (RawAnswer, error) {
	for try := 0; ; try++ {
		cc, err := t.conn(ctx, addr)
		if err != nil {
			closeRaw(r)
			return RawAnswer{}, err
		}
		a, err := cc.roundTripRaw(ctx, r)
		var ref refusedError
		if err != nil && errors.As(err, &ref) && try < maxRetries && ctx.Err() == nil {
			continue
		}
		if err != nil {
			closeRaw(r) // a RoundTripper closes the body it was given
		}
		return a, err
	}
}

func closeRaw(r *RawRequest) {
	if r.Body != nil {
		_ = r.Body.Close()
	}
}

func (cc *clientConn) roundTripRaw(ctx context.Context, r *RawRequest) (RawAnswer, error) {
	cs := cc.newStream(r.Method == http.MethodHead)
	cs.raw, cs.got1xx, cs.reqBody = true, r.Got1xx, r.Body
	inline := cs.bodyHasCome()
	err := cc.send(ctx, cs, r.Body == nil, inline, func() error {
		w := cc.w
		w.StartBlock()
		w.Encode(":authority", r.Authority)
		w.Encode(":method", r.Method)
		w.Encode(":path", r.Path)
		w.Encode(":scheme", "http")
		r.Fields(w)
		return nil
	})
	if err != nil {
		return RawAnswer{}, err // refused before the stream opened: the body is untouched
	}
	cs.sendBody(-1, inline)
	<-cs.resc
	if !cs.answered {
		if cs.refused && r.Body == nil {
			return RawAnswer{}, refusedError{cs.err}
		}
		return RawAnswer{}, cs.err
	}
	return RawAnswer{cs: cs}, nil
}

// Status is the answer's status (final: informational answers went to
// Got1xx).
func (a RawAnswer) Status() int { return a.cs.status }

// Fields is the answer's regular fields as the upstream sent them (valid
// names in lower case, valid values), Content-Length among them.
func (a RawAnswer) Fields() []hpack.HeaderField { return a.cs.fields }

// Length is the body's length as net/http reads it: its Content-Length, 0
// for an answer that ended with its HEADERS, -1 if unknown.
func (a RawAnswer) Length() int64 { return a.cs.length }

// Body is the answer's body, read as RoundTrip's are: closing it before
// its end resets the stream.
func (a RawAnswer) Body() io.ReadCloser {
	if a.cs.rawNoBody {
		return http.NoBody
	}
	return &a.cs.body
}

// Trailers is the trailers that followed the body, once Body has read to
// its end.
func (a RawAnswer) Trailers() []hpack.HeaderField {
	cc := a.cs.cc
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return a.cs.rawTrailer
}

// Response makes the http.Response RoundTrip would have returned for req,
// with the body to read.
func (a RawAnswer) Response(req *http.Request) *http.Response {
	cs := a.cs
	var names h2wire.Names // the read loop's cache is the read loop's
	res := newResponse(&names, req, cs.status, cs.fields, cs.length)
	cc := cs.cc
	cc.mu.Lock()
	cs.res = res // for the trailers, which the body's end copies into it
	cc.mu.Unlock()
	res.Body = a.Body()
	return res
}

// Close gives up on the answer: the stream is reset unless it is done.
func (a RawAnswer) Close() { _ = a.cs.body.Close() }
