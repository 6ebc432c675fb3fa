package h2conn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"sync"
	"sync/atomic"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/watertight/watertight/proxy/internal/h2wire"
	"github.com/watertight/watertight/proxy/internal/reqctx"
)

// clientStream is one request and its answer. The fields below mu's line
// are under cc.mu.
type clientStream struct {
	cc    *clientConn
	id    uint32
	req   *http.Request
	trace *httptrace.ClientTrace
	head  bool
	resc  chan struct{} // closed once res or err is set
	// reqBody is the request's body (nil for none), reqTrailer its
	// trailers. reqBodyClosed: reqBody is closed once, when it is sent or
	// the stream ends first (a body writer blocked reading it must let go).
	reqBody       io.ReadCloser
	reqTrailer    http.Header
	reqBodyClosed atomic.Bool
	res           *http.Response
	body          responseBody

	err        error
	refused    bool // never processed by the upstream: may be sent again
	noBody     bool // HEAD, 204, 304: a Content-Length is not a promise
	answered   bool // the final HEADERS arrived
	remoteDone bool // the answer is complete
	sendDone   bool // the request is complete, or will not be
	held       bool // send left the HEADERS in the buffer for the body's first frame
	done       bool // out of cc.streams
	sendWindow int64
	recv       h2wire.Inflow
	declLen    int64
	got        int64
	buf        []byte
	bodyErr    error
	bodyClosed bool
	ready      sync.Cond
	trailer    http.Header // the answer's trailers as they arrive
	gotTrailer bool
	stopCtx    reqctx.Registration // the request context's watch

	// A raw stream's (RoundTripRaw): its answer is kept as it came, and
	// no http.Response is made unless asked for.
	raw        bool
	got1xx     func(int, []hpack.HeaderField) error
	status     int
	fields     []hpack.HeaderField
	length     int64
	rawNoBody  bool
	rawTrailer []hpack.HeaderField
}

// refusedError: the upstream never processed the request.
type refusedError struct{ err error }

func (e refusedError) Error() string { return e.err.Error() }
func (e refusedError) Unwrap() error { return e.err }

// roundTrip sends req on a stream reserved on cc.
func (cc *clientConn) roundTrip(req *http.Request) (*http.Response, error) {
	cs := cc.newStream(req.Method == http.MethodHead)
	cs.req, cs.trace = req, httptrace.ContextClientTrace(req.Context())
	hasBody := req.Body != nil && req.Body != http.NoBody
	contentLength := int64(0)
	if hasBody {
		cs.reqBody, cs.reqTrailer = req.Body, req.Trailer
		contentLength = req.ContentLength
		if contentLength == 0 {
			contentLength = -1 // unknown, as net/http reads it
		}
	}
	inline := cs.bodyHasCome()
	err := cc.send(req.Context(), cs, !hasBody, inline, func() error { return cc.encodeRequest(req, contentLength) })
	if err != nil {
		if _, refused := err.(refusedError); !refused {
			closeBody(req) // a refused request may go again, with its body
		}
		return nil, err
	}
	if cs.trace != nil && cs.trace.WroteHeaders != nil {
		cs.trace.WroteHeaders()
	}
	cs.sendBody(contentLength, inline)
	<-cs.resc
	if cs.res == nil {
		if cs.refused {
			return nil, refusedError{cs.err}
		}
		return nil, cs.err
	}
	return cs.res, nil
}

// bodyHasCome: the request has a body, some of which has come (a unary
// gRPC call's message). It is written on the caller's goroutine with the
// HEADERS held back for it: one write, and no goroutine for the body (see
// writeBody).
func (cs *clientStream) bodyHasCome() bool {
	return cs.reqBody != nil && bodyReady(cs.reqBody)
}

// sendBody sends the request's body once send has written its HEADERS
// (held back if inline), or marks a bodiless request sent.
func (cs *clientStream) sendBody(contentLength int64, inline bool) {
	switch {
	case inline:
		cs.writeBody(contentLength, 0, true)
	case cs.reqBody != nil:
		go cs.writeBody(contentLength, 0, false)
	default:
		cs.cc.mu.Lock()
		cs.sentAll()
		cs.cc.mu.Unlock()
	}
}

// newStream makes the stream of a request about to be sent on cc.
func (cc *clientConn) newStream(head bool) *clientStream {
	cs := &clientStream{cc: cc, head: head, resc: make(chan struct{}), declLen: -1, recv: h2wire.NewInflow(streamWindow)}
	cs.body.cs = cs
	cs.ready.L = &cc.mu
	return cs
}

// send opens cs on the stream reserved on cc and writes its HEADERS frame,
// whose block encode fills (under the write lock); end says no body
// follows, hold that the body's first frames follow at once on this
// goroutine, which flushes the HEADERS with them. The context ends the
// stream. An error before the stream opened is a refusedError: the request
// may go again elsewhere.
func (cc *clientConn) send(ctx context.Context, cs *clientStream, end, hold bool, encode func() error) error {
	cc.lockWrite()
	cc.mu.Lock()
	cc.reserved--
	if cc.broken != nil || cc.goingAway || cc.w.Err() != nil || uint32(len(cc.streams)) >= cc.streamLimit() {
		cc.mu.Unlock()
		_ = cc.unlockWrite()
		return refusedError{fmt.Errorf("h2conn: connection to %s is closing", cc.addr)}
	}
	// The id is taken under the write lock: ids must reach the wire in
	// order.
	cs.id = cc.nextID
	cc.nextID += 2
	cs.sendWindow = int64(cc.peerWindow)
	cc.streams[cs.id] = cs
	cs.held = hold
	cc.watchReads()
	cs.stopCtx = reqctx.Register(ctx, func() { cs.cancel(context.Cause(ctx)) })
	cc.mu.Unlock()
	if err := encode(); err != nil {
		_ = cc.unlockWrite()
		cc.mu.Lock()
		cs.fail(err, false)
		cc.mu.Unlock()
		return err
	}
	cc.w.WriteBlock(cs.id, end)
	if hold {
		cc.w.Release() // a write error shows in the body's first write
		return nil
	}
	if err := cc.unlockWrite(); err != nil {
		cc.mu.Lock()
		cs.fail(err, false) // the caller learns it from resc
		cc.mu.Unlock()
	}
	return nil
}

// fail ends the stream with err; the caller holds cc.mu.
func (cs *clientStream) fail(err error, refused bool) {
	if cs.done {
		return
	}
	cc := cs.cc
	cs.done = true
	cs.abandonSending()
	delete(cc.streams, cs.id)
	cs.stopCtx.Stop()
	if !cs.answered {
		cs.err, cs.refused = err, refused
		close(cs.resc)
	} else if cs.bodyErr == nil || cs.bodyErr == io.EOF && !cs.remoteDone {
		cs.bodyErr = err
	}
	cs.ready.Broadcast()
	cc.window.Broadcast()
	cc.streamGone()
}

// cancel ends the stream because the caller gave up, and tells the
// upstream.
func (cs *clientStream) cancel(err error) {
	cc := cs.cc
	cc.mu.Lock()
	if cs.done {
		cc.mu.Unlock()
		return
	}
	cs.fail(err, false)
	cc.mu.Unlock()
	cc.lockWrite()
	_ = cc.fr.WriteRSTStream(cs.id, http2.ErrCodeCancel)
	_ = cc.unlockWrite()
}

// streamGone: a stream left; the caller holds cc.mu.
func (cc *clientConn) streamGone() {
	if len(cc.streams) > 0 {
		return
	}
	if cc.goingAway && cc.broken == nil {
		go cc.close(errors.New("went away"))
		return
	}
	cc.goIdle()
}

// endOfAnswer: the upstream ended its side; the caller holds cc.mu.
func (cs *clientStream) endOfAnswer() {
	if cs.declLen >= 0 && cs.got != cs.declLen && !cs.noBody {
		cs.fail(fmt.Errorf("h2conn: %s sent %d bytes of a %d-byte body", cs.cc.addr, cs.got, cs.declLen), false)
		return
	}
	cs.remoteDone = true
	if cs.bodyErr == nil {
		cs.bodyErr = io.EOF
	}
	cs.ready.Broadcast()
	cs.complete()
}

// sentAll: the request is complete; the caller holds cc.mu.
func (cs *clientStream) sentAll() {
	cs.sendDone = true
	cs.complete()
}

// stopSending: the upstream needs no more of the request; the caller holds
// cc.mu.
func (cs *clientStream) stopSending() {
	cs.abandonSending()
	cs.complete()
}

// abandonSending gives up sending the request; the caller holds cc.mu.
func (cs *clientStream) abandonSending() {
	if cs.sendDone {
		return
	}
	cs.sendDone = true
	cs.cc.window.Broadcast() // a body writer waiting for window
	if cs.reqBody != nil {
		// Its writer may be blocked reading it: closing is how it lets
		// go (as net/http's Transport does), and a RoundTripper closes
		// the body in any case. Not under mu: Close is the caller's code.
		go cs.closeReqBody()
	}
}

func (cs *clientStream) closeReqBody() {
	if cs.reqBodyClosed.CompareAndSwap(false, true) {
		_ = cs.reqBody.Close()
	}
}

// complete takes a stream done both ways out of the connection.
func (cs *clientStream) complete() {
	if cs.done || !cs.sendDone || !cs.remoteDone {
		return
	}
	cs.done = true
	delete(cs.cc.streams, cs.id)
	cs.cc.streamGone()
}

// writeBody sends the request body from sent bytes on, on its own
// goroutine: the answer may come (and be read) while the body is still
// going. Inline, it runs on the caller's goroutine after send held the
// HEADERS back, for as long as the body has come and is within one chunk;
// then it flushes what was held and goes on on a goroutine of its own, so
// that the caller may read the answer while a longer body is sent.
func (cs *clientStream) writeBody(contentLength, sent int64, inline bool) {
	cc, body := cs.cc, cs.reqBody
	bp := chunks.Get().(*[]byte)
	buf := *bp
	goesOn := false
	defer func() {
		chunks.Put(bp)
		if !goesOn {
			if inline {
				cs.flushHeld() // no frame of the body took the HEADERS out
			}
			cs.closeReqBody()
		}
	}()
	for {
		if inline && (sent >= bodyChunk || !bodyReady(body)) {
			cs.flushHeld() // before the body, or the rest of it, may wait
			goesOn = true
			go cs.writeBody(contentLength, sent, false)
			return
		}
		n, rerr := body.Read(buf)
		for rerr == nil && n < len(buf) && bodyReady(body) {
			// What else has come goes in the same frame, and so does the
			// end, when it has come too: END_STREAM on the last DATA frame,
			// not on an empty one after it.
			var m int
			m, rerr = body.Read(buf[n:])
			n += m
		}
		if rerr != nil && rerr != io.EOF {
			cs.cancel(fmt.Errorf("h2conn: reading the request body: %w", rerr))
			return
		}
		sent += int64(n)
		eof := rerr == io.EOF
		if eof && contentLength >= 0 && sent != contentLength || contentLength >= 0 && sent > contentLength {
			cs.cancel(fmt.Errorf("h2conn: ContentLength=%d with Body length %d", contentLength, sent))
			return
		}
		trailers := eof && hasTrailers(cs.reqTrailer)
		if !cs.writeData(buf[:n], eof && !trailers) {
			return // the stream ended meanwhile
		}
		if eof {
			if trailers {
				cc.lockWrite()
				cc.w.StartBlock()
				for k, vv := range cs.reqTrailer {
					name := cc.w.Names.Lower(http.CanonicalHeaderKey(k))
					for _, v := range vv {
						cc.w.Encode(name, v)
					}
				}
				cc.w.WriteBlock(cs.id, true)
				_ = cc.unlockWrite()
			}
			if cs.trace != nil && cs.trace.WroteRequest != nil {
				cs.trace.WroteRequest(httptrace.WroteRequestInfo{})
			}
			cc.mu.Lock()
			cs.sentAll()
			cc.mu.Unlock()
			return
		}
	}
}

// flushHeld sends the HEADERS send held back, if no frame has taken them
// out yet; on the goroutine that called send, before any other writes the
// body.
func (cs *clientStream) flushHeld() {
	cc := cs.cc
	cc.mu.Lock()
	held := cs.held
	cs.held = false
	cc.mu.Unlock()
	if held {
		cc.lockWrite()
		_ = cc.unlockWrite()
	}
}

// bodyReady says whether a Read of the request body would not wait: the
// app side's body can tell (h2serve's, through relay's wrappers); others
// cannot, and are sent from a goroutine.
func bodyReady(r io.Reader) bool {
	b, ok := r.(interface{ Ready() bool })
	return ok && b.Ready()
}

func hasTrailers(t http.Header) bool {
	for _, vv := range t {
		if len(vv) > 0 {
			return true
		}
	}
	return false
}

// writeData sends p in DATA frames as the windows allow, the last with
// END_STREAM if end. It is false if the stream ended first.
func (cs *clientStream) writeData(p []byte, end bool) bool {
	cc := cs.cc
	for len(p) > 0 || end {
		cc.mu.Lock()
		for {
			if cs.sendDone || cc.broken != nil {
				cc.mu.Unlock()
				return false
			}
			if len(p) == 0 || min(cc.sendWindow, cs.sendWindow) > 0 {
				break
			}
			if cs.held {
				// The HEADERS send held back must not wait for a window
				// with this frame: the upstream may give the stream one
				// only once it has seen it (an initial window of 0).
				cc.mu.Unlock()
				cs.flushHeld()
				cc.mu.Lock()
				continue
			}
			cc.window.Wait()
		}
		cs.held = false // this frame's write takes them out
		maxFrame := int64(cc.w.MaxFrame())
		n := int(min(int64(len(p)), cc.sendWindow, cs.sendWindow, maxFrame))
		cc.sendWindow -= int64(n)
		cs.sendWindow -= int64(n)
		cc.mu.Unlock()
		last := n == len(p)
		cc.lockWrite()
		_ = cc.fr.WriteData(cs.id, end && last, p[:n])
		err := cc.unlockWrite()
		if err != nil {
			return false
		}
		p = p[n:]
		if last {
			return true
		}
	}
	return true
}

var chunks = sync.Pool{New: func() any { b := make([]byte, bodyChunk); return &b }}

// responseBody is the answer's body as the stream receives it.
type responseBody struct{ cs *clientStream }

var errBodyClosed = errors.New("h2conn: read on closed response body")

func (b *responseBody) Read(p []byte) (int, error) {
	cs := b.cs
	cc := cs.cc
	cc.mu.Lock()
	for len(cs.buf) == 0 && cs.bodyErr == nil && !cs.bodyClosed {
		cs.ready.Wait()
	}
	if cs.bodyClosed {
		cc.mu.Unlock()
		return 0, errBodyClosed
	}
	if len(cs.buf) == 0 {
		err := cs.bodyErr
		if err == io.EOF && cs.gotTrailer && cs.res != nil { // a raw stream's are kept raw too
			// Into the announced keys, which stay even if unsent.
			if cs.res.Trailer == nil {
				cs.res.Trailer = http.Header{}
			}
			for k, vv := range cs.trailer {
				cs.res.Trailer[k] = vv
			}
			cs.gotTrailer = false
		}
		cs.stopCtx.Stop()
		cc.mu.Unlock()
		return 0, err
	}
	n := copy(p, cs.buf)
	cs.buf = cs.buf[n:]
	if len(cs.buf) == 0 {
		cs.buf = cs.buf[:0:0]
	}
	connInc, streamInc := cc.recv.Release(int32(n)), uint32(0)
	if !cs.remoteDone && !cs.done {
		streamInc = cs.recv.Release(int32(n))
	}
	cc.mu.Unlock()
	cc.w.WriteWindowUpdates(cs.id, connInc, streamInc)
	return n, nil
}

// Ready says whether a Read now would return without waiting for the
// upstream: some of the body is here, or its end (or failure) is. A copier
// that flushes what it wrote before every wait asks it, so that an answer
// that came whole (a gRPC call's HEADERS, message and trailers) leaves in
// one write rather than one a frame.
func (b *responseBody) Ready() bool {
	cs := b.cs
	cs.cc.mu.Lock()
	defer cs.cc.mu.Unlock()
	return len(cs.buf) > 0 || cs.bodyErr != nil || cs.bodyClosed
}

// Close before the end resets the stream: nobody will read the rest.
func (b *responseBody) Close() error {
	cs := b.cs
	cc := cs.cc
	cc.mu.Lock()
	if cs.bodyClosed {
		cc.mu.Unlock()
		return nil
	}
	cs.bodyClosed = true
	inc := cc.recv.Release(int32(len(cs.buf)))
	cs.buf = nil
	reset := !cs.done && !cs.remoteDone
	if reset {
		cs.fail(errBodyClosed, false)
	}
	cs.stopCtx.Stop()
	cs.ready.Broadcast()
	cc.mu.Unlock()
	cc.w.WriteWindowUpdates(0, inc, 0)
	if reset {
		cc.lockWrite()
		_ = cc.fr.WriteRSTStream(cs.id, http2.ErrCodeCancel)
		_ = cc.unlockWrite()
	}
	return nil
}
