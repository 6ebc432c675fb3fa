// Package h2serve is the sidecar's own HTTP/2 server for the app side over
// cleartext (h2c with prior knowledge): the hot case of
// docs/forwarding-path.md, step 3.
//
// Why by hand: net/http's HTTP/2 server runs a request through four
// goroutines (the frame reader, the connection's serve loop, an
// asynchronous flusher and the handler) with a channel hand-off between
// each, and writes a response's HEADERS and DATA with a flush each, so a
// connection with one stream at a time pays two write system calls per
// answer (docs/benchmarks.md, run 21). Here the connection's goroutine reads
// and handles frames itself, the handler writes its frames straight into the
// connection's buffer under a lock, and an answer the handler finished
// before it flushed leaves in one write: HEADERS, DATA and trailers
// together. No library offers an HTTP/2 server without net/http's
// machinery; the wire work is golang.org/x/net/http2's Framer and hpack.
//
// It serves http.Handler with net/http's types and semantics for what the
// sidecar's handlers use: request bodies with flow control, trailers both
// ways, 1xx answers, 100-continue, Flush, content sniffing, Content-Length
// on answers finished before their first flush. It checks what RFC 9113
// asks a server to check (h2spec passes every case; proxy/h2serve's tests
// run it). Not served: server push, TLS (the app side is cleartext),
// extended CONNECT, and http.ResponseController's deadlines.
package h2serve

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"

	"github.com/watertight/watertight/proxy/internal/h2wire"
)

// Defaults for a Server's zero fields.
const (
	defaultMaxStreams   = 250
	defaultMaxHeader    = 1 << 20
	initialStreamWindow = 1 << 20 // what each stream may send before we read it
	initialConnWindow   = 1 << 20 // and all streams together
	// writeBufferSize is how much of an answer's body is held before its
	// HEADERS go (see responseWriter); net/http's HTTP/2 server holds 4 KiB
	// too.
	writeBufferSize = 4 << 10
	// defaultWindow is the window every HTTP/2 peer starts with.
	defaultWindow = 65535
	maxWindow     = 1<<31 - 1
)

// ClientPreface is what an HTTP/2 client sends first.
const ClientPreface = http2.ClientPreface

// Server serves HTTP/2 connections given to ServeConn.
type Server struct {
	// Handler answers the requests.
	Handler http.Handler
	// Lane, if set, is offered the plainest requests first (see Lane).
	Lane Lane
	// ConnContext returns the base context of a connection's requests.
	ConnContext func(context.Context, net.Conn) context.Context
	// HTTPServer is put under http.ServerContextKey in each request's
	// context, as net/http's servers do: ReverseProxy aborts a broken
	// answer (panics with http.ErrAbortHandler) only for requests that
	// carry it.
	HTTPServer *http.Server
	// MaxConcurrentStreams is advertised to clients and enforced; 250 if
	// zero.
	MaxConcurrentStreams uint32
	// MaxHeaderBytes bounds a request's header list (advertised as
	// SETTINGS_MAX_HEADER_LIST_SIZE); 1 MiB if zero. Longer lists are
	// answered 431.
	MaxHeaderBytes int
	// IdleTimeout closes a connection without streams for that long.
	IdleTimeout time.Duration

	mu       sync.Mutex
	conns    map[*conn]struct{}
	shutting bool
	idle     chan struct{} // closed and renewed whenever a connection ends or goes idle
}

// ServeConn serves c until it closes or the server shuts down. c's first
// bytes must be the client preface. It runs on the caller's goroutine and
// returns once every request of the connection has ended.
func (s *Server) ServeConn(nc net.Conn) {
	c := newConn(s, nc)
	if !s.track(c) {
		_ = nc.Close()
		return
	}
	defer s.untrack(c)
	c.serve()
}

// Shutdown tells every connection to take no new streams (GOAWAY), lets
// the running ones finish, and waits for them until ctx ends; then it
// closes what is left.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.shutting = true
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.goAway(http2.ErrCodeNo, "")
	}
	for {
		s.mu.Lock()
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
	s.shutting = true
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

func (s *Server) track(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutting {
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
	if s.idle != nil {
		close(s.idle)
		s.idle = nil
	}
	s.mu.Unlock()
}

func (s *Server) maxStreams() uint32 {
	if s.MaxConcurrentStreams == 0 {
		return defaultMaxStreams
	}
	return s.MaxConcurrentStreams
}

func (s *Server) maxHeaderBytes() uint32 {
	if s.MaxHeaderBytes <= 0 {
		return defaultMaxHeader
	}
	return uint32(s.MaxHeaderBytes)
}

// conn is one app connection. Its goroutine (serve) reads every frame and
// acts on it; handlers run on a goroutine per stream and write their frames
// themselves (see lockWrite).
type conn struct {
	s       *Server
	nc      net.Conn
	w       *h2wire.Conn // the framing: frames read here, written by all under w.Lock
	fr      *http2.Framer
	remote  string
	baseCtx context.Context
	names   h2wire.Names // the reader's header-name cache

	// The rest, under mu.
	mu         sync.Mutex
	window     sync.Cond // signalled when a send window grows or streams end
	streams    map[uint32]*stream
	maxID      uint32        // the highest stream the client opened
	running    int           // handlers running (reset streams' included)
	sendWindow int64         // what we may still send on the connection
	peerWindow int32         // the client's SETTINGS_INITIAL_WINDOW_SIZE
	recv       h2wire.Inflow // the connection's receive window
	started    bool          // our SETTINGS went out: a GOAWAY may follow
	goingAway  bool          // GOAWAY being sent: no new streams
	goAwaySent bool          // and sent: the connection may close once idle
	peerGone   bool          // the client sent GOAWAY
	closed     bool
	idleSince  time.Time
	idleTimer  *time.Timer
	handlers   sync.WaitGroup

	// work hands a new stream to an idle worker (see worker); only the
	// reader sends, and teardown closes it once the reader is done.
	work        chan *stream
	idleWorkers atomic.Int32
}

func newConn(s *Server, nc net.Conn) *conn {
	c := &conn{
		s:          s,
		nc:         nc,
		remote:     nc.RemoteAddr().String(),
		streams:    map[uint32]*stream{},
		sendWindow: defaultWindow,
		peerWindow: defaultWindow,
		recv:       h2wire.NewInflow(initialConnWindow),
		work:       make(chan *stream),
	}
	c.window.L = &c.mu
	c.w = h2wire.NewConn(nc, "the app at "+c.remote)
	c.w.SmallTable() // the app is on the pod's loopback: the encoder's CPU counts more than bytes
	c.fr = c.w.Framer
	c.fr.SetMaxReadFrameSize(h2wire.MinFrameSize) // the default SETTINGS_MAX_FRAME_SIZE, which we keep
	c.fr.MaxHeaderListSize = s.maxHeaderBytes()
	ctx := context.WithValue(context.Background(), http.ServerContextKey, s.HTTPServer)
	ctx = context.WithValue(ctx, http.LocalAddrContextKey, nc.LocalAddr())
	if s.ConnContext != nil {
		ctx = s.ConnContext(ctx, nc)
	}
	c.baseCtx = ctx
	return c
}

// serve reads the client's frames until the connection ends.
func (c *conn) serve() {
	defer c.teardown()
	if err := c.readPreface(); err != nil {
		slog.Debug("h2serve: no client preface", "remote", c.remote, "error", err)
		return
	}
	c.mu.Lock()
	c.started = true
	c.mu.Unlock()
	c.w.Lock()
	_ = c.fr.WriteSettings(
		http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: c.s.maxStreams()},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: initialStreamWindow},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: c.s.maxHeaderBytes()},
	)
	_ = c.fr.WriteWindowUpdate(0, initialConnWindow-defaultWindow)
	if err := c.w.Unlock(); err != nil {
		return
	}
	c.mu.Lock()
	c.goIdle()
	c.mu.Unlock()
	first := true
	for {
		f, err := c.w.ReadFrame()
		if err != nil {
			if !c.readFailed(err) {
				return
			}
			continue
		}
		if first {
			// The preface's SETTINGS frame comes first (RFC 9113, 3.4).
			if _, ok := f.(*http2.SettingsFrame); !ok {
				c.goAway(http2.ErrCodeProtocol, "expected SETTINGS first")
				return
			}
			first = false
		}
		if err := c.process(f); err != nil {
			if err == io.EOF {
				return // the client went away and nothing is left to answer
			}
			var se http2.StreamError
			if errors.As(err, &se) {
				c.resetStream(se.StreamID, se.Code)
				continue
			}
			c.goAway(errCode(err), err.Error())
			return
		}
	}
}

// readFailed acts on a read error; it says whether reading goes on.
func (c *conn) readFailed(err error) bool {
	var se http2.StreamError
	var ce http2.ConnectionError
	switch {
	case errors.As(err, &se):
		// An invalid header block or frame on one stream: that stream
		// counts as opened (a later HEADERS must use a higher number)
		// and is refused.
		c.mu.Lock()
		if se.StreamID%2 == 1 && se.StreamID > c.maxID {
			c.maxID = se.StreamID
		}
		c.mu.Unlock()
		c.resetStream(se.StreamID, se.Code)
		return true
	case errors.Is(err, http2.ErrFrameTooLarge):
		c.goAway(http2.ErrCodeFrameSize, "frame larger than SETTINGS_MAX_FRAME_SIZE")
	case errors.As(err, &ce):
		reason := ""
		if d := c.fr.ErrorDetail(); d != nil {
			reason = d.Error()
		}
		c.goAway(http2.ErrCode(ce), reason)
	}
	return false // closed, or a broken connection
}

func errCode(err error) http2.ErrCode {
	var ce http2.ConnectionError
	if errors.As(err, &ce) {
		return http2.ErrCode(ce)
	}
	return http2.ErrCodeProtocol
}

func (c *conn) readPreface() error {
	var buf [len(http2.ClientPreface)]byte
	if _, err := io.ReadFull(c.nc, buf[:]); err != nil {
		return fmt.Errorf("reading the client preface: %w", err)
	}
	if string(buf[:]) != http2.ClientPreface {
		return fmt.Errorf("bad client preface %q", buf[:])
	}
	return nil
}

// connError is a connection error with the reason sent in the GOAWAY.
type connError struct {
	code   http2.ErrCode
	reason string
}

func (e connError) Error() string { return e.reason }

func (e connError) Unwrap() error { return http2.ConnectionError(e.code) }

func protocolError(format string, args ...any) error {
	return connError{http2.ErrCodeProtocol, fmt.Sprintf(format, args...)}
}

func streamError(id uint32, code http2.ErrCode) error {
	return http2.StreamError{StreamID: id, Code: code}
}

// process acts on one frame.
func (c *conn) process(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		return c.processHeaders(f)
	case *http2.DataFrame:
		return c.processData(f)
	case *http2.SettingsFrame:
		return c.processSettings(f)
	case *http2.WindowUpdateFrame:
		return c.processWindowUpdate(f)
	case *http2.RSTStreamFrame:
		return c.processReset(f)
	case *http2.PingFrame:
		if f.IsAck() {
			return nil
		}
		c.w.Lock()
		_ = c.fr.WritePing(true, f.Data)
		return c.w.Unlock()
	case *http2.PriorityFrame:
		if f.StreamDep == f.StreamID {
			return streamError(f.StreamID, http2.ErrCodeProtocol)
		}
		return nil // priorities are advice; the bulkheads decide
	case *http2.GoAwayFrame:
		c.mu.Lock()
		c.peerGone = true
		done := c.running == 0
		c.mu.Unlock()
		if done {
			return io.EOF // nothing left to answer
		}
		return nil
	case *http2.PushPromiseFrame:
		return protocolError("PUSH_PROMISE from a client")
	}
	return nil // unknown frame types are ignored (RFC 9113, 4.1)
}

func (c *conn) processSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	// Applied and acknowledged under the write lock, so that nothing the
	// new settings allow (DATA a larger window lets go) leaves before the
	// ACK: a client may read frames before its ACK as sent under the old
	// settings (h2spec's 6.9.2/1 does, and failed now and then when a
	// worker's DATA overtook the ACK). Writers take the write lock before
	// mu, as here.
	c.w.Lock()
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return connError{errCode(err), fmt.Sprintf("invalid setting %v", s)}
		}
		switch s.ID {
		case http2.SettingInitialWindowSize:
			// Applied in order: a frame may carry it twice (RFC 9113,
			// 6.5.3).
			c.mu.Lock()
			delta := int64(s.Val) - int64(c.peerWindow)
			c.peerWindow = int32(s.Val)
			for _, st := range c.streams {
				st.sendWindow += delta
				if st.sendWindow > maxWindow {
					c.mu.Unlock()
					return connError{http2.ErrCodeFlowControl, "SETTINGS_INITIAL_WINDOW_SIZE overflows a stream's window"}
				}
			}
			c.window.Broadcast()
			c.mu.Unlock()
		case http2.SettingMaxFrameSize:
			c.w.SetMaxFrame(s.Val)
		case http2.SettingHeaderTableSize:
			c.w.SetHeaderTableSizeLocked(s.Val)
		}
		return nil
	})
	if err != nil {
		_ = c.w.Unlock()
		return err
	}
	_ = c.fr.WriteSettingsAck()
	return c.w.Unlock()
}

func (c *conn) processWindowUpdate(f *http2.WindowUpdateFrame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f.StreamID == 0 {
		c.sendWindow += int64(f.Increment)
		if c.sendWindow > maxWindow {
			return connError{http2.ErrCodeFlowControl, "connection window above 2^31-1"}
		}
		c.window.Broadcast()
		return nil
	}
	st := c.streams[f.StreamID]
	if st == nil {
		if c.idle(f.StreamID) {
			return protocolError("WINDOW_UPDATE on idle stream %d", f.StreamID)
		}
		return nil // a closed stream: the update may have crossed our end
	}
	st.sendWindow += int64(f.Increment)
	if st.sendWindow > maxWindow {
		return streamError(f.StreamID, http2.ErrCodeFlowControl)
	}
	c.window.Broadcast()
	return nil
}

func (c *conn) processReset(f *http2.RSTStreamFrame) error {
	c.mu.Lock()
	st := c.streams[f.StreamID]
	if st == nil {
		idle := c.idle(f.StreamID)
		c.mu.Unlock()
		if idle {
			return protocolError("RST_STREAM on idle stream %d", f.StreamID)
		}
		return nil
	}
	st.close(errClientReset)
	c.mu.Unlock()
	return nil
}

// idle says whether stream id was never opened; the caller holds mu.
func (c *conn) idle(id uint32) bool {
	return id%2 == 0 || id > c.maxID
}

var (
	errClientReset  = errors.New("h2serve: client reset the stream")
	errConnClosed   = errors.New("h2serve: connection closed")
	errStreamClosed = errors.New("h2serve: stream closed")
)

// resetStream sends RST_STREAM and ends the stream if it is open.
func (c *conn) resetStream(id uint32, code http2.ErrCode) {
	c.mu.Lock()
	if st := c.streams[id]; st != nil {
		st.close(fmt.Errorf("h2serve: stream reset (%v)", code))
	}
	c.mu.Unlock()
	c.w.Lock()
	_ = c.fr.WriteRSTStream(id, code)
	_ = c.w.Unlock()
}

// goAway sends GOAWAY. With NO_ERROR it is the graceful kind: the running
// streams finish, and the connection closes once none is left. With an
// error the connection closes now.
func (c *conn) goAway(code http2.ErrCode, reason string) {
	c.mu.Lock()
	if c.goingAway && code == http2.ErrCodeNo {
		c.mu.Unlock()
		return
	}
	c.goingAway = true
	last, started := c.maxID, c.started
	c.mu.Unlock()
	if started {
		// Never before our SETTINGS: they are the first frame we send.
		c.w.Lock()
		_ = c.fr.WriteGoAway(last, code, []byte(reason))
		_ = c.w.Unlock()
	}
	if code != http2.ErrCodeNo {
		slog.Debug("h2serve: connection error", "remote", c.remote, "code", code, "reason", reason)
	}
	c.mu.Lock()
	c.goAwaySent = true
	done := c.running == 0
	c.mu.Unlock()
	if code != http2.ErrCodeNo || done {
		c.closeConn()
	}
}

// lingerTimeout bounds how long a closing connection reads what the client
// still sends, so that the kernel closes it cleanly.
const lingerTimeout = time.Second

// closeConn ends the connection after what is buffered: it flushes, closes
// our side, and gives the reader lingerTimeout to see the client's end
// (then serve tears the connection down). Closing at once with the
// client's bytes unread would make the kernel send a reset, which can
// destroy the GOAWAY and answers still in flight.
func (c *conn) closeConn() {
	// A writer stuck on a client that reads nothing gives up the lock.
	_ = c.nc.SetWriteDeadline(time.Now().Add(lingerTimeout))
	c.w.Lock()
	_ = c.w.Unlock() // flushes what is buffered
	closeWrite(c.nc)
	_ = c.nc.SetReadDeadline(time.Now().Add(lingerTimeout))
}

func closeWrite(nc net.Conn) {
	for {
		if cw, ok := nc.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
			return
		}
		u, ok := nc.(interface{ NetConn() net.Conn })
		if !ok {
			return
		}
		nc = u.NetConn() // the hand-off's replaying wrapper
	}
}

// teardown ends every stream, waits for their handlers, and closes the
// connection once the client has had its say (see closeConn).
func (c *conn) teardown() {
	close(c.work) // the reader is done: idle workers end
	c.mu.Lock()
	c.closed = true
	for _, st := range c.streams {
		st.close(errConnClosed)
	}
	if c.idleTimer != nil {
		c.idleTimer.Stop()
	}
	c.window.Broadcast()
	c.mu.Unlock()
	_ = c.nc.SetWriteDeadline(time.Now().Add(lingerTimeout)) // see closeConn
	c.w.Lock()
	_ = c.w.Unlock()
	closeWrite(c.nc)
	c.handlers.Wait()
	_ = c.nc.SetReadDeadline(time.Now().Add(lingerTimeout))
	_, _ = io.Copy(io.Discard, c.nc)
	_ = c.nc.Close()
}

// goIdle notes that the connection has no streams; the caller holds mu.
// One timer per connection, re-armed only when it fires: a timer per
// request costs more than the work it guards (proxy/h1serve's lesson).
func (c *conn) goIdle() {
	if c.s.IdleTimeout <= 0 || c.closed {
		return
	}
	c.idleSince = time.Now()
	if c.idleTimer == nil {
		c.idleTimer = time.AfterFunc(c.s.IdleTimeout, c.idleCheck)
	}
}

func (c *conn) idleCheck() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	if c.running > 0 {
		c.idleTimer.Reset(c.s.IdleTimeout)
		c.mu.Unlock()
		return
	}
	if left := c.s.IdleTimeout - time.Since(c.idleSince); left > 0 {
		c.idleTimer.Reset(left)
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	c.goAway(http2.ErrCodeNo, "idle")
}
