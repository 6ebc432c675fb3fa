// Package h1serve is the sidecar's own HTTP/1.1 connection loop for the
// app side: the hot case of docs/forwarding-path.md, step 2a.
//
// Why by hand: net/http's server costs 13–30 µs of CPU per request on this
// machine over a loop that reads and writes with the same wire code
// (docs/benchmarks.md, run 8): a goroutine wake-up and a background read per
// request, and its response writer. No library serves HTTP/1.1 through
// net/http's own parser and types without that machinery.
//
// What it serves itself, on the connection's goroutine: HTTP/1.1 requests
// whose head fits the read buffer, without Upgrade, Expect, CONNECT or a
// chunked body, with a body of at most MaxInlineBody bytes, whose Connection
// field (if any) names only keep-alive, and whose Host and header fields
// net/http's server would accept. Everything else (the HTTP/2 preface, HTTP/1.0, malformed or
// large heads, upgrades, 100-continue, streamed uploads) goes to HandOff with
// the bytes of that request replayed, so net/http's server answers it exactly
// as it would have from the start. The request head is parsed by
// http.ReadRequest, so the wire format and its limits are the standard
// library's.
package h1serve

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/watertight/watertight/proxy/internal/h1head"
	"github.com/watertight/watertight/proxy/internal/rawio"
	"github.com/watertight/watertight/proxy/internal/reqctx"
)

// MaxInlineBody is the largest request body served here; larger ones are
// handed off (the same cut as the upstream client's, proxy/h1conn).
const MaxInlineBody = 64 << 10

// readBufferSize is the connection's read buffer, and so the largest head
// served here. net/http's server reads with 4 KiB too; longer heads (up to
// the listener's MaxHeaderBytes) are handed off.
const readBufferSize = 4 << 10

// watchEvery is how often the running requests are looked at, and how long
// one runs before its connection is watched for the client hanging up (see
// conn.watch). Fast requests never pay for the watch. One ticker per server,
// running only while requests do, instead of a timer per request: a timer
// armed and stopped per request cost 15–25 % of the sidecar's CPU at
// 2,000 req/s (the stopped timers still wake the idle thread). At 500 req/s
// the loop still costs about 15 % more CPU than net/http's server with a
// 10 ms or a 50 ms ticker (docs/benchmarks.md, runs 11–13): the ticker is
// not the whole story there. A client that hangs up is noticed within
// 100 ms.
const watchEvery = 50 * time.Millisecond

// Server serves HTTP/1.1 connections given to ServeConn.
type Server struct {
	// Handler answers the requests.
	Handler http.Handler
	// HandOff takes a connection this loop gives up on, reading first the
	// bytes it had read and not served. Required.
	HandOff func(net.Conn)
	// HandOffHTTP2, if set, takes the connections that open with the
	// HTTP/2 preface instead of HandOff, reading the preface first.
	HandOffHTTP2 func(net.Conn)
	// ConnContext returns the base context of a connection's requests.
	ConnContext func(context.Context, net.Conn) context.Context
	// HTTPServer is the net/http server that HandOff feeds. Requests carry
	// it under http.ServerContextKey, as its own do: ReverseProxy aborts a
	// broken answer (panics with http.ErrAbortHandler, so the connection
	// is cut rather than the body ended cleanly) only for requests that do.
	HTTPServer *http.Server
	// ReadHeaderTimeout bounds reading a request head, IdleTimeout the wait
	// for the next one.
	ReadHeaderTimeout time.Duration
	IdleTimeout       time.Duration

	mu    sync.Mutex
	conns map[*conn]struct{} // every connection the loop serves
	idle  chan struct{}      // closed and renewed whenever a connection leaves

	// A connection says it serves a request (conn.busy) and the server
	// shuts down or starts the watch with atomics, not under mu: a lock
	// and a map entry made and deleted per request were 1 % of the
	// sidecar's CPU at full load. Each side stores, then loads what the
	// other stores, so at least one of them sees the other (a shut-down
	// server closes only the connections it sees idle; a connection that
	// sees the server shutting stops itself).
	shutting atomic.Bool
	watching atomic.Bool // watchLoop runs

	// Lane, if set, is offered the plainest bodiless requests before the
	// Handler (lane.go).
	Lane Lane
}

// ServeConn serves c until it closes, is handed off, or the server shuts
// down. It runs on the caller's goroutine.
func (s *Server) ServeConn(nc net.Conn) {
	c := &conn{s: s, nc: nc, rd: rawio.NewReader(nc), remote: nc.RemoteAddr().String()}
	c.src.c = c
	c.br = bufio.NewReaderSize(&c.src, readBufferSize)
	c.wr = rawio.NewWriter(nc)
	c.bw = bufio.NewWriterSize(c.wr, readBufferSize)
	c.held = make([]byte, 0, bufferBeforeChunking)
	if !s.track(c) {
		_ = nc.Close()
		return
	}
	ctx := context.WithValue(context.Background(), http.ServerContextKey, s.HTTPServer)
	ctx = context.WithValue(ctx, http.LocalAddrContextKey, nc.LocalAddr())
	if s.ConnContext != nil {
		ctx = s.ConnContext(ctx, nc)
	}
	handedOff := c.serve(ctx)
	s.untrack(c)
	if !handedOff {
		_ = nc.Close()
	}
}

// Shutdown closes idle connections, lets the active ones finish their
// request, and waits for them until ctx ends; then it closes what is left.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.shutting.Store(true)
	s.mu.Unlock()
	for {
		s.mu.Lock()
		for c := range s.conns {
			if c.busy.Load() == 0 {
				_ = c.nc.Close()
			}
		}
		n, idle := len(s.conns), s.idleCh()
		s.mu.Unlock()
		if n == 0 {
			return nil
		}
		select {
		case <-idle:
		case <-ctx.Done():
			s.Close()
			return ctx.Err()
		}
	}
}

// Close closes every connection at once.
func (s *Server) Close() {
	s.mu.Lock()
	s.shutting.Store(true)
	for c := range s.conns {
		_ = c.nc.Close()
	}
	s.mu.Unlock()
}

func (s *Server) idleCh() chan struct{} {
	if s.idle == nil {
		s.idle = make(chan struct{})
	}
	return s.idle
}

// changed wakes Shutdown; the caller holds mu.
func (s *Server) changed() {
	if s.idle != nil {
		close(s.idle)
		s.idle = nil
	}
}

func (s *Server) track(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutting.Load() {
		return false
	}
	if s.conns == nil {
		s.conns = map[*conn]struct{}{}
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Server) untrack(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.changed()
	s.mu.Unlock()
}

// setActive marks c serving a request (or idle); it is false once the
// server shuts down, and the connection must stop: an idle one must not
// start another request, and one that finished its request is done.
func (s *Server) setActive(c *conn, active bool) bool {
	if !active {
		c.busy.Store(0)
		return !s.shutting.Load()
	}
	c.busy.Store(uint64(c.served) + 1)
	if s.shutting.Load() {
		c.busy.Store(0)
		return false
	}
	if !s.watching.Load() && s.watching.CompareAndSwap(false, true) {
		go s.watchLoop()
	}
	return true
}

// watchLoop starts the watch of every request running for longer than
// watchEvery: one its last tick saw running too. It ends once no request
// runs.
func (s *Server) watchLoop() {
	t := time.NewTicker(watchEvery)
	defer t.Stop()
	var slow []*conn
	for range t.C {
		slow = slow[:0]
		s.mu.Lock()
		if !s.runningSince(&slow) {
			// Stop, then look again: a request that began meanwhile either
			// sees the loop stopped and starts another, or is seen here.
			s.watching.Store(false)
			if !s.runningSince(&slow) || !s.watching.CompareAndSwap(false, true) {
				s.mu.Unlock()
				return
			}
		}
		s.mu.Unlock()
		for _, c := range slow {
			c.watch()
		}
	}
}

// runningSince reports whether a request runs, and adds to slow the
// connections whose request also ran at the last look; the caller holds
// mu and is the watch loop.
func (s *Server) runningSince(slow *[]*conn) bool {
	running := false
	for c := range s.conns {
		b := c.busy.Load()
		if b != 0 && b == c.seen {
			*slow = append(*slow, c)
		}
		c.seen = b
		running = running || b != 0
	}
	return running
}

// conn is one app connection.
type conn struct {
	s      *Server
	nc     net.Conn
	rd     io.Reader // nc, read and written with raw system calls (proxy/internal/rawio)
	wr     io.Writer
	remote string
	src    source
	br     *bufio.Reader
	bw     *bufio.Writer
	served int           // requests served on this connection
	busy   atomic.Uint64 // served+1 while a request runs, 0 while idle (see Server)
	seen   uint64        // busy at the watch loop's last look; the loop's own
	fields []byte        // the running answer's serialised header (see response)
	held   []byte        // room for the running answer's held body (see response.held)

	// The client-gone watch (see watch).
	watchMu   sync.Mutex
	armed     bool            // a request is running: watchLoop may start a watch
	body      *requestBody    // the running request's body
	ctx       *reqctx.Context // the running request's: ended when the client goes
	watchDone chan struct{}   // non-nil while a watch goroutine runs
	gone      bool            // the watch saw the client hang up
}

// serve runs the keep-alive loop; it reports whether the connection was
// handed off (and so is no longer this loop's to close).
func (c *conn) serve(ctx context.Context) (handedOff bool) {
	defer func() {
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler {
				slog.Error("panic serving a request", "remote", c.remote, "panic", v)
			}
			// What the answer had committed goes out before the
			// connection closes, as net/http's server sends it: a client
			// that got part of an answer knows the request arrived.
			_ = c.bw.Flush()
			handedOff = false
		}
	}()
	for {
		if c.s.IdleTimeout > 0 {
			_ = c.nc.SetReadDeadline(time.Now().Add(c.s.IdleTimeout))
		}
		// Like net/http's server, wait for 4 bytes before any request but
		// the first: fewer before the client closes end the connection
		// without an answer.
		need := 1
		if c.served > 0 {
			need = 4
		}
		if _, err := c.br.Peek(need); err != nil {
			return false // closed, idle too long, or shut down
		}
		if !c.s.setActive(c, true) {
			return false
		}
		if c.s.ReadHeaderTimeout > 0 {
			// A head that came whole needs no deadline to finish arriving
			// (it usually does come whole: one timer change fewer).
			if buf, _ := c.br.Peek(c.br.Buffered()); headLength(buf) == 0 {
				_ = c.nc.SetReadDeadline(time.Now().Add(c.s.ReadHeaderTimeout))
			}
		}
		head, err := c.peekHead()
		switch {
		case errors.Is(err, errHeadTooLarge):
			return c.handOff(nil) // net/http's server reads longer heads, or says 431
		case isTimeout(err):
			return false // a head too slow: net/http's server closes too
		case err != nil:
			return c.handOff(nil) // the client stopped mid-head: net/http's server says what it makes of it
		case c.served == 0 && bytes.HasPrefix(head, http2Preface):
			return c.handOff(nil)
		}
		if c.s.Lane != nil {
			if taken, keep := c.serveLane(ctx, head); taken {
				if !keep {
					return false
				}
				c.served++
				if !c.s.setActive(c, false) {
					return false
				}
				continue
			}
		}
		// The plainest heads are parsed here (head.go), the rest by
		// net/http. plain stays on this stack: serveRequest copies it.
		var plain http.Request
		req := &plain
		if parseSimple(head, &plain) {
			if !serves(req, head, true) {
				return c.handOff(nil) // nothing consumed yet
			}
			_, _ = c.br.Discard(len(head))
			if plain.Body == nil {
				plain.Body = newFixedBody(c.br, plain.ContentLength)
			}
		} else if req, err = http.ReadRequest(c.br); err != nil || !serves(req, head, false) {
			// head still holds the bytes ReadRequest consumed: it read
			// only what was buffered, so the buffer was not refilled.
			return c.handOff(head)
		}
		_ = c.nc.SetReadDeadline(time.Time{})
		if !c.serveRequest(ctx, req) {
			return false
		}
		c.served++
		if !c.s.setActive(c, false) {
			return false
		}
	}
}

var http2Preface = []byte("PRI * HTTP/2.0")

var errHeadTooLarge = errors.New("h1serve: request head larger than the read buffer")

// peekHead returns the buffered bytes up to the end of the next request
// head, reading more as needed, without consuming them.
func (c *conn) peekHead() ([]byte, error) {
	for {
		buf, _ := c.br.Peek(c.br.Buffered())
		if n := headLength(buf); n > 0 {
			return buf[:n], nil
		}
		if len(buf) == c.br.Size() {
			return nil, errHeadTooLarge
		}
		if _, err := c.br.Peek(len(buf) + 1); err != nil {
			return nil, err
		}
	}
}

// handOff gives the connection to HandOff, with every byte this loop read
// and did not serve put back in front of it: consumed (the head of a request
// parsed and then refused), what the buffer still holds, and a byte the
// watch kept.
func (c *conn) handOff(consumed []byte) bool {
	if err := c.bw.Flush(); err != nil {
		return false
	}
	_ = c.nc.SetReadDeadline(time.Time{})
	buffered, _ := c.br.Peek(c.br.Buffered())
	c.src.mu.Lock()
	pending := slices.Concat(consumed, buffered, c.src.pending)
	c.src.mu.Unlock()
	to := c.s.HandOff
	if c.s.HandOffHTTP2 != nil && c.served == 0 && bytes.HasPrefix(pending, http2Preface) {
		to = c.s.HandOffHTTP2
	}
	to(&replayConn{Conn: c.nc, pending: pending, r: c.rd, w: c.wr})
	return true
}

// serves says whether this loop answers req itself; see the package
// comment. The header checks are the ones net/http's server makes before
// calling a handler, so a request it would refuse is handed to it.
// plain says parseSimple made req: it took one unfolded Host line and only
// token names and values without controls, which spares the scans below.
func serves(req *http.Request, head []byte, plain bool) bool {
	// "OPTIONS *" is answered by net/http's server itself, not its handler.
	if req.ProtoMajor != 1 || req.ProtoMinor != 1 || req.Method == http.MethodConnect || req.Close || req.RequestURI == "*" ||
		len(req.TransferEncoding) > 0 || req.ContentLength < 0 || req.ContentLength > MaxInlineBody {
		return false
	}
	h := req.Header
	if len(h["Expect"]) > 0 || len(h["Upgrade"]) > 0 || !h1head.OnlyKeepAlive(h["Connection"]) {
		return false
	}
	if plain {
		return httpguts.ValidHostHeader(req.Host)
	}
	// http.ReadRequest drops the Host field (req.Host may come from an
	// absolute-form target instead); the server wants exactly one field,
	// and a valid one.
	// A folded field (obsolete line folding) is handed off too, so that
	// the Host line read here is the whole field.
	if n, host, folded := hostFields(head); n != 1 || folded || !httpguts.ValidHostHeader(string(host)) {
		return false
	}
	for k, vv := range h {
		if !httpguts.ValidHeaderFieldName(k) {
			return false
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return false
			}
		}
	}
	return true
}

// headLength is the length of the head at the start of buf, up to and
// including the blank line that ends it (CRLF or a bare LF, as net/http
// accepts), or 0 if buf does not hold a whole head.
func headLength(buf []byte) int {
	for i := bytes.IndexByte(buf, '\n'); i >= 0; {
		rest := buf[i+1:]
		switch {
		case len(rest) > 0 && rest[0] == '\n':
			return i + 2
		case len(rest) > 1 && rest[0] == '\r' && rest[1] == '\n':
			return i + 3
		}
		j := bytes.IndexByte(rest, '\n')
		if j < 0 {
			return 0
		}
		i += 1 + j
	}
	return 0
}

// hostFields counts the Host fields in a request head and returns the
// last one's value, and whether any field is folded onto a second line.
func hostFields(head []byte) (n int, value []byte, folded bool) {
	for line := range bytes.Lines(head) {
		if line[0] == ' ' || line[0] == '\t' {
			folded = true
		}
		if len(line) > 5 && line[4] == ':' && bytes.EqualFold(line[:4], []byte("host")) {
			n++
			value = bytes.Trim(line[5:], " \t\r\n") // as textproto trims
		}
	}
	return n, value, folded
}

// serveRequest runs the handler on req; it reports whether the connection
// can carry another request.
func (c *conn) serveRequest(parent context.Context, req *http.Request) bool {
	st := new(served)
	ctx := &st.ctx
	ctx.Start(parent, time.Time{}, nil)
	defer ctx.Cancel()
	req.RemoteAddr = c.remote
	var body *requestBody // nil when there is none: req.Body stays http.NoBody, as handlers expect
	if req.ContentLength > 0 {
		body = &st.body
		body.ReadCloser = req.Body
		req.Body = body
	}
	// req may be serve's stack copy: the handler gets st's. (The copy
	// WithContext makes stays on the stack.)
	st.req = *req.WithContext(ctx)
	r := &st.req
	w := &st.resp
	*w = response{c: c, req: r, contentLength: -1, held: c.held[:0]} // its header is made when asked for, or adopted
	c.arm(body, ctx)

	c.s.Handler.ServeHTTP(w, r)

	if c.disarm() {
		return false // the client hung up
	}
	w.finish()
	if w.err != nil || w.closeAfter {
		return false
	}
	if !body.finished() {
		// The handler answered without reading the whole body (at most
		// MaxInlineBody): read the rest so the next request starts clean.
		if c.s.ReadHeaderTimeout > 0 {
			_ = c.nc.SetReadDeadline(time.Now().Add(c.s.ReadHeaderTimeout))
		}
		if _, err := io.Copy(io.Discard, body); err != nil {
			return false
		}
	}
	return true // a shut-down server refuses the next request in setActive
}

// served is one request's state, in one allocation: its context, the
// request the handler gets, its body's reader and the response writer.
type served struct {
	ctx  reqctx.Context
	req  http.Request
	body requestBody
	resp response
}

// requestBody records when the request body has been read to its end: only
// then may the connection be watched for the client hanging up, since the
// watch would otherwise read the body's bytes.
type requestBody struct {
	io.ReadCloser
	mu   sync.Mutex
	done bool
}

func (b *requestBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.mu.Lock()
		b.done = true
		b.mu.Unlock()
	}
	return n, err
}

func (b *requestBody) finished() bool {
	if b == nil {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.done
}

// arm lets watchLoop watch the running request's connection (see watch).
func (c *conn) arm(body *requestBody, ctx *reqctx.Context) {
	c.watchMu.Lock()
	c.armed, c.body, c.ctx = true, body, ctx
	c.watchMu.Unlock()
}

// watch reads the connection while a slow request runs, as net/http's
// server does, so that a client that hangs up cancels its request and frees
// its compartment's slot. A byte that arrives instead (the next request) is
// kept for the reader. It watches only once the request body has been read
// to its end, since it would otherwise take the body's bytes.
func (c *conn) watch() {
	c.watchMu.Lock()
	defer c.watchMu.Unlock()
	if !c.armed || c.watchDone != nil || !c.body.finished() || c.br.Buffered() > 0 {
		return
	}
	done, ctx := make(chan struct{}), c.ctx
	c.watchDone = done
	go func() {
		defer close(done)
		var b [1]byte
		n, err := c.rd.Read(b[:])
		switch {
		case n == 1:
			c.src.keep(b[0])
		case err != nil && !isTimeout(err):
			c.watchMu.Lock()
			c.gone = true
			c.watchMu.Unlock()
			ctx.Cancel()
		}
	}()
}

// disarm ends the request's watch and reports whether it saw the client go.
func (c *conn) disarm() bool {
	c.watchMu.Lock()
	c.armed, c.body, c.ctx = false, nil, nil
	done := c.watchDone
	c.watchMu.Unlock()
	if done == nil {
		return false
	}
	_ = c.nc.SetReadDeadline(aLongTimeAgo) // wakes the watch's read
	<-done
	_ = c.nc.SetReadDeadline(time.Time{})
	c.watchMu.Lock()
	defer c.watchMu.Unlock()
	c.watchDone = nil
	return c.gone
}

var aLongTimeAgo = time.Unix(1, 0)

func isTimeout(err error) bool {
	if err == nil {
		return false // without errors.As, whose target would escape on every request
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// source is what the read buffer reads from: a byte the watch read, then the
// connection.
type source struct {
	c       *conn
	mu      sync.Mutex
	pending []byte
}

func (s *source) keep(b byte) {
	s.mu.Lock()
	s.pending = append(s.pending, b)
	s.mu.Unlock()
}

func (s *source) Read(p []byte) (int, error) {
	s.mu.Lock()
	if len(s.pending) > 0 {
		n := copy(p, s.pending)
		s.pending = s.pending[n:]
		s.mu.Unlock()
		return n, nil
	}
	s.mu.Unlock()
	return s.c.rd.Read(p)
}

// replayConn is a handed-off connection: its reads return the bytes the
// loop had read first. It reads and writes with the loop's raw I/O, which
// its new owner (h2serve for h2c, whose rawio can only see a replayConn's
// own Read and Write) would otherwise lose.
type replayConn struct {
	net.Conn
	pending []byte
	r       io.Reader
	w       io.Writer
}

func (r *replayConn) Read(p []byte) (int, error) {
	if len(r.pending) > 0 {
		n := copy(p, r.pending)
		r.pending = r.pending[n:]
		return n, nil
	}
	return r.r.Read(p)
}

func (r *replayConn) Write(p []byte) (int, error) { return r.w.Write(p) }

// NetConn returns the connection underneath (as tls.Conn's does), for code
// that looks at what kind of connection it has.
func (r *replayConn) NetConn() net.Conn { return r.Conn }
