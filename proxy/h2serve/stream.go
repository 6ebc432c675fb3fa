package h2serve

import (
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/watertight/watertight/proxy/internal/h2wire"
	"github.com/watertight/watertight/proxy/internal/reqctx"
)

// stream is one request and its answer. The handler's side (rw, req) is
// the handler's; the rest is under c.mu.
type stream struct {
	c  *conn
	id uint32

	remoteDone bool          // END_STREAM received: half closed (remote)
	ended      bool          // closed: reset, or done both ways; out of c.streams
	err        error         // why it ended before its time
	sendWindow int64         // what we may still send on it
	recv       h2wire.Inflow // its receive window
	declLen    int64         // the request's Content-Length, or -1
	gotLen     int64
	trailer    http.Header    // the request's trailers, as they arrive
	body       *body          // nil when the request has none
	ctx        reqctx.Context // the request's: it ends with the stream

	rw  responseWriter
	req http.Request // the handler gets &req
	url url.URL

	lane bool     // offered to the Lane first, with x
	x    Exchange // the Lane's view of it
}

// close ends the stream early (a reset, or the connection's end); the
// caller holds c.mu.
func (st *stream) close(err error) {
	if st.ended {
		return
	}
	st.ended, st.err = true, err
	delete(st.c.streams, st.id)
	st.ctx.Cancel()
	if st.body != nil && st.body.err == nil {
		st.body.err = err
		st.body.ready.Broadcast()
	}
	st.c.window.Broadcast()
}

// processHeaders opens a stream, or takes a stream's trailers.
func (c *conn) processHeaders(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	if id%2 == 0 {
		return protocolError("HEADERS on even stream %d", id)
	}
	c.mu.Lock()
	if st := c.streams[id]; st != nil {
		err := c.trailers(st, f)
		c.mu.Unlock()
		return err
	}
	if id <= c.maxID {
		c.mu.Unlock()
		return connError{http2.ErrCodeStreamClosed, "HEADERS on closed stream " + strconv.FormatUint(uint64(id), 10)}
	}
	c.maxID = id
	// Streams whose answer is complete do not count, though their
	// handlers may still be returning; those of reset streams are bounded
	// apart (a client resetting streams as fast as it opens them must not
	// pile up handlers).
	max := int(c.s.maxStreams())
	refuse := c.goingAway || c.closed || len(c.streams) >= max || c.running >= 2*max
	c.mu.Unlock()
	if f.HasPriority() && f.Priority.StreamDep == id {
		return streamError(id, http2.ErrCodeProtocol)
	}
	if refuse {
		return streamError(id, http2.ErrCodeRefusedStream)
	}
	if f.Truncated {
		// Too long a header list: answered as net/http's server does.
		c.w.Lock()
		c.w.StartBlock()
		c.w.Encode(":status", "431")
		c.w.WriteBlock(id, true)
		if !f.StreamEnded() {
			_ = c.fr.WriteRSTStream(id, http2.ErrCodeNo)
		}
		return c.w.Unlock()
	}
	st := &stream{c: c, id: id, declLen: -1, recv: h2wire.NewInflow(initialStreamWindow)}
	method := ""
	if c.s.Lane != nil && st.x.take(f) {
		// The request is made on the worker, if the Lane declines it.
		st.lane, st.x.st, method = true, st, st.x.method
		if !f.StreamEnded() {
			st.newBody(false)
		}
	} else {
		pseudo, regular := h2wire.Split(f.Fields)
		if err := buildRequest(st, &c.names, pseudo, regular, f.StreamEnded()); err != nil {
			if err == errMalformed {
				return streamError(id, http2.ErrCodeProtocol)
			}
			return err
		}
		st.bindRequest()
		method = st.req.Method
	}
	st.ctx.Start(c.baseCtx, time.Time{}, nil)
	st.rw.init(st, method == http.MethodHead)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return errConnClosed
	}
	st.sendWindow = int64(c.peerWindow)
	st.remoteDone = f.StreamEnded()
	c.streams[id] = st
	c.running++
	c.handlers.Add(1)
	c.mu.Unlock()
	select {
	case c.work <- st: // an idle worker takes it
	default:
		go c.worker(st)
	}
	return nil
}

// workerStreams is how many streams a worker serves before it ends, so that
// a stack one large request grew is given back now and then (grpc-go's
// serverWorkerResetThreshold).
const workerStreams = 1 << 16

// maxIdleWorkers is how many workers a connection keeps waiting for
// streams; past a burst, the others end rather than hold their stacks.
const maxIdleWorkers = 16

// worker runs st's handler, then those of the connection's next streams
// while it has them. A goroutine per stream started each handler on a small
// stack that grew, copied, through the request path on every request:
// 8-10 % of the sidecar's CPU at h2c max load (runtime.newstack and
// copystack, docs/benchmarks.md run 29). grpc-go's server keeps workers for
// the same reason. Idle workers end with the connection (teardown closes
// work).
func (c *conn) worker(st *stream) {
	for n := 1; ; n++ {
		c.runHandler(st)
		var ok bool
		if n == workerStreams {
			return
		}
		if st, ok = c.nextStream(); !ok {
			return
		}
	}
}

// nextStream waits for the connection's next stream as one of at most
// maxIdleWorkers idle workers; false says the worker ends instead.
func (c *conn) nextStream() (*stream, bool) {
	defer c.idleWorkers.Add(-1)
	if c.idleWorkers.Add(1) > maxIdleWorkers {
		return nil, false
	}
	st, ok := <-c.work
	return st, ok
}

// trailers takes a request's trailers; the caller holds c.mu.
func (c *conn) trailers(st *stream, f *http2.MetaHeadersFrame) error {
	if st.remoteDone {
		return streamError(st.id, http2.ErrCodeStreamClosed)
	}
	if !f.StreamEnded() || len(f.PseudoFields()) > 0 {
		return streamError(st.id, http2.ErrCodeProtocol)
	}
	for _, hf := range f.RegularFields() {
		k := c.names.Canonical(hf.Name)
		if !httpguts.ValidTrailerHeader(k) {
			return streamError(st.id, http2.ErrCodeProtocol)
		}
		if st.trailer != nil {
			if _, declared := st.trailer[k]; declared {
				st.trailer[k] = append(st.trailer[k], hf.Value)
			}
		}
	}
	return c.endOfRequest(st)
}

// endOfRequest marks the request complete; the caller holds c.mu.
func (c *conn) endOfRequest(st *stream) error {
	if st.declLen >= 0 && st.gotLen != st.declLen {
		return streamError(st.id, http2.ErrCodeProtocol)
	}
	st.remoteDone = true
	if b := st.body; b != nil && b.err == nil {
		b.err = errEOF
		b.ready.Broadcast()
	}
	return nil
}

// processData takes a DATA frame for a request body.
func (c *conn) processData(f *http2.DataFrame) error {
	id, n := f.StreamID, int32(f.Length) // flow control counts the padding too
	c.mu.Lock()
	if c.idle(id) {
		c.mu.Unlock()
		return protocolError("DATA on idle stream %d", id)
	}
	if !c.recv.Take(n) {
		c.mu.Unlock()
		return connError{http2.ErrCodeFlowControl, "DATA beyond the connection's window"}
	}
	// A frame the stream refuses still counted against the connection,
	// and is given back.
	refuse := func(code http2.ErrCode) error {
		inc := c.recv.Release(n)
		c.mu.Unlock()
		c.w.WriteWindowUpdates(0, inc, 0)
		return streamError(id, code)
	}
	st := c.streams[id]
	if st == nil || st.remoteDone {
		return refuse(http2.ErrCodeStreamClosed)
	}
	if !st.recv.Take(n) {
		return refuse(http2.ErrCodeFlowControl)
	}
	data := f.Data()
	st.gotLen += int64(len(data))
	if st.declLen >= 0 && st.gotLen > st.declLen {
		return refuse(http2.ErrCodeProtocol)
	}
	// The padding, and data nobody will read, go back at once.
	unread := n - int32(len(data))
	if b := st.body; b != nil && !b.closed {
		b.buf = append(b.buf, data...)
		b.ready.Broadcast()
	} else {
		unread = n
	}
	var err error
	if f.StreamEnded() {
		err = c.endOfRequest(st)
	}
	connInc, streamInc := c.recv.Release(unread), uint32(0)
	if unread > 0 && !st.remoteDone {
		streamInc = st.recv.Release(unread)
	}
	c.mu.Unlock()
	c.w.WriteWindowUpdates(id, connInc, streamInc)
	return err
}

// bindRequest gives st's request its context, the stream's.
func (st *stream) bindRequest() {
	st.req = *st.req.WithContext(&st.ctx) // the copy WithContext makes stays on the stack
}

// buildRequest builds st.req (without its context) from a request's
// pseudo-fields and regular fields, names caching their canonical forms,
// checking what RFC 9113 (8.2 and 8.3) asks a server to check.
func buildRequest(st *stream, names *h2wire.Names, pseudo, regular []hpack.HeaderField, ended bool) error {
	c := st.c
	bad := errMalformed
	method, scheme, authority, path, ok := pseudoValues(pseudo)
	if !ok {
		return bad // :protocol (extended CONNECT is not offered), :status
	}
	if method == "" || !validMethod(method) {
		return bad
	}
	connect := method == http.MethodConnect
	if connect {
		if scheme != "" || path != "" || authority == "" {
			return bad
		}
	} else if scheme == "" || path == "" || path[0] != '/' && path != "*" {
		return bad
	}
	h := make(http.Header, len(regular))
	values := make(h2wire.Values, len(regular))
	var cookies []string
	for i := range regular {
		hf := &regular[i]
		switch hf.Name {
		case "connection", "proxy-connection", "keep-alive", "transfer-encoding", "upgrade":
			return bad // connection-specific (RFC 9113, 8.2.2)
		case "te":
			if hf.Value != "trailers" {
				return bad
			}
		case "cookie":
			// Split crumbs are joined again (RFC 9113, 8.2.3).
			cookies = append(cookies, hf.Value)
			continue
		}
		values.Add(h, names.Canonical(hf.Name), hf.Value)
	}
	if len(cookies) > 0 {
		h["Cookie"] = []string{strings.Join(cookies, "; ")}
	}
	if authority == "" {
		authority = h.Get("Host")
	}
	r := &st.req
	if connect {
		st.url = url.URL{Host: authority}
		r.RequestURI = authority
	} else {
		u, err := url.ParseRequestURI(path)
		if err != nil {
			return bad
		}
		st.url = *u
		r.RequestURI = path
	}
	r.Method, r.URL, r.Header, r.Host = method, &st.url, h, authority
	r.Proto, r.ProtoMajor, r.ProtoMinor = "HTTP/2.0", 2, 0
	r.RemoteAddr = c.remote
	if vv, ok := h["Trailer"]; ok {
		for _, v := range vv {
			for k := range strings.SplitSeq(v, ",") {
				switch k = http.CanonicalHeaderKey(strings.TrimSpace(k)); k {
				case "Transfer-Encoding", "Trailer", "Content-Length", "":
				default:
					if st.trailer == nil {
						st.trailer, r.Trailer = http.Header{}, http.Header{}
					}
					st.trailer[k], r.Trailer[k] = nil, nil
				}
			}
		}
		delete(h, "Trailer")
	}
	if vv := h["Content-Length"]; len(vv) > 0 {
		for _, v := range vv[1:] {
			if v != vv[0] {
				return bad
			}
		}
		n, err := strconv.ParseUint(vv[0], 10, 63)
		if err != nil {
			return bad
		}
		st.declLen = int64(n)
	}
	if ended {
		if st.declLen > 0 {
			return bad // a length promised and no body sent
		}
		r.Body = http.NoBody
		r.ContentLength = 0
	} else {
		if st.body == nil { // a lane's request has had its body since its HEADERS
			st.newBody(h.Get("Expect") == "100-continue")
		}
		r.Body = st.body
		r.ContentLength = st.declLen
	}
	if r.Body == http.NoBody {
		r.Trailer = nil
	}
	return nil
}

// pseudoValues reads a request's pseudo-fields; false for one a request
// does not have here.
func pseudoValues(pseudo []hpack.HeaderField) (method, scheme, authority, path string, ok bool) {
	for i := range pseudo {
		hf := &pseudo[i] // not a copy of each field: on every request's path
		switch hf.Name {
		case ":method":
			method = hf.Value
		case ":scheme":
			scheme = hf.Value
		case ":authority":
			authority = hf.Value
		case ":path":
			path = hf.Value
		default:
			return "", "", "", "", false
		}
	}
	return method, scheme, authority, path, true
}

func validMethod(m string) bool {
	for i := 0; i < len(m); i++ {
		if !httpguts.IsTokenRune(rune(m[i])) {
			return false
		}
	}
	return true
}

// errMalformed is a malformed request (RFC 9113, 8.1.1): processHeaders
// resets its stream with PROTOCOL_ERROR. One value, not an error made per
// request.
var errMalformed = errors.New("h2serve: malformed request")

// runHandler serves st on a worker's goroutine.
func (c *conn) runHandler(st *stream) {
	defer c.handlers.Done()
	completed := false
	defer func() {
		if !completed {
			if v := recover(); v != nil && v != http.ErrAbortHandler {
				slog.Error("h2serve: panic serving a request", "remote", c.remote, "panic", v, "stack", string(debug.Stack()))
			}
			// The answer is cut, not ended: the client must see that.
			c.resetStream(st.id, http2.ErrCodeInternal)
		}
		c.handlerDone(st)
	}()
	if !st.lane || !c.serveLane(st) {
		c.s.Handler.ServeHTTP(&st.rw, &st.req)
	}
	if st.x.cut {
		// A lane's answer that broke: as a Handler's abort, the client
		// must see it cut.
		c.resetStream(st.id, http2.ErrCodeInternal)
	} else {
		st.rw.finish()
	}
	completed = true
}

// handlerDone ends the stream for good once its handler has returned.
func (c *conn) handlerDone(st *stream) {
	c.mu.Lock()
	var connInc uint32
	if b := st.body; b != nil && !b.closed {
		b.closed = true
		connInc = c.recv.Release(int32(len(b.buf)))
		b.buf = nil
		b.ready.Broadcast() // a reader the handler left behind
	}
	stillSending := !st.ended && !st.remoteDone
	if !st.ended {
		st.ended = true
		delete(c.streams, st.id)
	}
	st.ctx.Cancel()
	c.running--
	closeNow := false
	if c.running == 0 {
		c.goIdle()
		closeNow = c.goAwaySent || c.peerGone
	}
	c.window.Broadcast()
	c.mu.Unlock()
	if connInc > 0 || stillSending {
		c.w.Lock()
		if connInc > 0 {
			_ = c.fr.WriteWindowUpdate(0, connInc)
		}
		if stillSending {
			// The answer is complete; the client may stop sending
			// (RFC 9113, 8.1).
			_ = c.fr.WriteRSTStream(st.id, http2.ErrCodeNo)
		}
		_ = c.w.Unlock()
	}
	if closeNow {
		c.closeConn()
	}
}

// newBody gives st the body its DATA frames will fill.
func (st *stream) newBody(needsContinue bool) {
	st.body = &body{st: st, needsContinue: needsContinue}
	st.body.ready.L = &st.c.mu
}

// errEOF ends a request body that ended cleanly.
var errEOF = io.EOF

// body is a request body: DATA frames the reader appended, read by the
// handler. Under c.mu.
type body struct {
	st            *stream
	buf           []byte
	err           error // errEOF once the request ended, or why it broke
	closed        bool  // the handler closed it or returned
	needsContinue bool
	ready         sync.Cond
}

var errBodyClosed = errors.New("h2serve: request body closed")

func (b *body) Read(p []byte) (int, error) {
	st := b.st
	c := st.c
	c.mu.Lock()
	if b.needsContinue {
		b.needsContinue = false
		c.mu.Unlock()
		st.rw.write100Continue()
		c.mu.Lock()
	}
	for len(b.buf) == 0 && b.err == nil && !b.closed {
		b.ready.Wait()
	}
	if b.closed {
		c.mu.Unlock()
		return 0, errBodyClosed
	}
	if len(b.buf) == 0 {
		err := b.err
		if err == errEOF && st.trailer != nil {
			// The trailers are the handler's to read once the body ends.
			for k, vv := range st.trailer {
				st.req.Trailer[k] = vv
			}
			st.trailer = nil // copied once
		}
		c.mu.Unlock()
		return 0, err
	}
	n := copy(p, b.buf)
	b.buf = b.buf[n:]
	if len(b.buf) == 0 {
		b.buf = b.buf[:0:0] // let the frame-sized array go
	}
	connInc, streamInc := c.recv.Release(int32(n)), uint32(0)
	if !st.remoteDone && !st.ended {
		streamInc = st.recv.Release(int32(n))
	}
	c.mu.Unlock()
	c.w.WriteWindowUpdates(st.id, connInc, streamInc)
	return n, nil
}

// Ready says whether a Read would not wait for the client: some of the
// body has come, or its end, or it is closed. A proxy that sends a body
// which has come whole with the request's head in one write asks it
// (h2conn).
func (b *body) Ready() bool {
	c := b.st.c
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(b.buf) > 0 || b.err != nil || b.closed
}

func (b *body) Close() error {
	c := b.st.c
	c.mu.Lock()
	var inc uint32
	if !b.closed {
		b.closed = true
		inc = c.recv.Release(int32(len(b.buf)))
		b.buf = nil
		b.ready.Broadcast()
	}
	c.mu.Unlock()
	c.w.WriteWindowUpdates(0, inc, 0)
	return nil
}
