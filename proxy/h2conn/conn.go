package h2conn

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/watertight/watertight/proxy/internal/h2wire"
)

const (
	defaultWindow = 65535
	maxWindow     = 1<<31 - 1
	// What an upstream may send before we read it: per stream, and on the
	// connection (net/http's Transport uses 4 MiB and 1 GiB).
	streamWindow = 4 << 20
	connWindow   = 16 << 20
	// Until the upstream's SETTINGS say otherwise (net/http assumes 100
	// too).
	initialMaxStreams = 100
	maxHeaderList     = 10 << 20
	bodyChunk         = 16 << 10
)

// clientConn is one connection to an upstream. Its read loop reads every
// frame; the callers write their own frames under wmu.
type clientConn struct {
	t    *Transport
	addr string
	nc   net.Conn
	w    *h2wire.Conn // the framing: frames read by readLoop, written by all under w.Lock
	fr   *http2.Framer

	names h2wire.Names // the read loop's

	// The rest under mu.
	mu         sync.Mutex
	window     sync.Cond
	streams    map[uint32]*clientStream
	nextID     uint32
	reserved   int
	maxStreams uint32
	sendWindow int64
	peerWindow int32
	recv       h2wire.Inflow
	goingAway  bool  // GOAWAY received: no new streams
	broken     error // the connection is done
	idleSince  time.Time
	idleTimer  *time.Timer
	lastRead   atomic.Int64 // unix nanoseconds of the last frame read
	pingTimer  *time.Timer
	pinged     bool
	settled    bool          // the upstream's first SETTINGS came
	settledc   chan struct{} // closed then, or when the connection ends first
}

func newClientConn(t *Transport, addr string, nc net.Conn) (*clientConn, error) {
	cc := &clientConn{
		t: t, addr: addr, nc: nc,
		streams: map[uint32]*clientStream{}, nextID: 1,
		maxStreams: initialMaxStreams, sendWindow: defaultWindow, peerWindow: defaultWindow,
		recv: h2wire.NewInflow(connWindow), settledc: make(chan struct{}),
	}
	cc.window.L = &cc.mu
	cc.w = h2wire.NewConn(nc, addr)
	cc.fr = cc.w.Framer
	cc.fr.MaxHeaderListSize = maxHeaderList
	cc.lastRead.Store(time.Now().UnixNano())
	cc.lockWrite()
	cc.w.WriteString(http2.ClientPreface)
	_ = cc.fr.WriteSettings(
		http2.Setting{ID: http2.SettingEnablePush, Val: 0},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: streamWindow},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: maxHeaderList},
	)
	_ = cc.fr.WriteWindowUpdate(0, connWindow-defaultWindow)
	if err := cc.unlockWrite(); err != nil {
		return nil, fmt.Errorf("h2conn: starting HTTP/2 with %s: %w", addr, err)
	}
	// No idle clock yet: until the upstream's SETTINGS come, the
	// connection belongs to the request that dialled it, whose context
	// bounds the wait (Transport.open).
	return cc, nil
}

func (cc *clientConn) lockWrite()         { cc.w.Lock() }
func (cc *clientConn) unlockWrite() error { return cc.w.Unlock() }

// reserve takes a stream slot for a request about to be sent.
func (cc *clientConn) reserve() bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.goingAway || cc.broken != nil || cc.nextID > maxStreamID ||
		uint32(len(cc.streams)+cc.reserved) >= cc.streamLimit() {
		return false
	}
	cc.reserved++
	return true
}

const maxStreamID = 1<<31 - 1

// streamLimit is how many streams the connection may carry: the upstream's
// limit, or the transport's cap if lower. The caller holds cc.mu.
func (cc *clientConn) streamLimit() uint32 {
	if c := cc.t.MaxConcurrentStreams; c > 0 && c < cc.maxStreams {
		return c
	}
	return cc.maxStreams
}

// retireIfIdle marks the connection closed with err if it has no streams
// and none reserved, and reports whether it did. Marking under mu, in the
// same hold as the check, is what keeps a request from reserving a stream
// on a connection about to be closed under it; the caller closes it.
func (cc *clientConn) retireIfIdle(err error) bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.broken != nil || len(cc.streams) > 0 || cc.reserved > 0 {
		return false
	}
	cc.broken = err
	return true
}

// close ends the connection and every stream on it with err.
func (cc *clientConn) close(err error) {
	cc.mu.Lock()
	if cc.broken == nil {
		cc.broken = err
	}
	for _, cs := range cc.streams {
		cs.fail(fmt.Errorf("h2conn: connection to %s: %w", cc.addr, err), false)
	}
	if cc.idleTimer != nil {
		cc.idleTimer.Stop()
	}
	if cc.pingTimer != nil {
		cc.pingTimer.Stop()
	}
	if !cc.settled {
		cc.settled = true
		close(cc.settledc)
	}
	cc.window.Broadcast()
	cc.mu.Unlock()
	cc.t.forget(cc)
	_ = cc.nc.Close()
}

// readLoop reads the upstream's frames until the connection ends.
func (cc *clientConn) readLoop() {
	var err error
	defer func() { cc.close(err) }()
	for {
		var f http2.Frame
		f, err = cc.w.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				cc.resetStream(se.StreamID, se.Code, fmt.Errorf("h2conn: invalid answer from %s: %w", cc.addr, err))
				continue
			}
			if err == io.EOF {
				err = io.ErrUnexpectedEOF // a cut answer must not read as a clean end
			}
			err = fmt.Errorf("reading: %w", err)
			return
		}
		cc.lastRead.Store(time.Now().UnixNano())
		if err = cc.process(f); err != nil {
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				cc.lockWrite()
				_ = cc.fr.WriteGoAway(0, http2.ErrCode(ce), nil)
				_ = cc.unlockWrite()
			}
			return
		}
	}
}

func (cc *clientConn) process(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		return cc.processHeaders(f)
	case *http2.DataFrame:
		return cc.processData(f)
	case *http2.SettingsFrame:
		return cc.processSettings(f)
	case *http2.WindowUpdateFrame:
		cc.mu.Lock()
		defer cc.mu.Unlock()
		if f.StreamID == 0 {
			cc.sendWindow += int64(f.Increment)
			if cc.sendWindow > maxWindow {
				return http2.ConnectionError(http2.ErrCodeFlowControl)
			}
		} else if cs := cc.streams[f.StreamID]; cs != nil {
			cs.sendWindow += int64(f.Increment)
			if cs.sendWindow > maxWindow {
				cs.fail(fmt.Errorf("h2conn: %s overflowed a stream's window", cc.addr), false)
				go cc.resetStream(f.StreamID, http2.ErrCodeFlowControl, nil)
			}
		}
		cc.window.Broadcast()
	case *http2.RSTStreamFrame:
		cc.mu.Lock()
		if cs := cc.streams[f.StreamID]; cs != nil {
			err := error(http2.StreamError{StreamID: f.StreamID, Code: f.ErrCode})
			refused := f.ErrCode == http2.ErrCodeRefusedStream && !cs.answered
			if f.ErrCode == http2.ErrCodeNo && cs.remoteDone {
				// The answer is complete; the upstream needs no more of
				// the request (RFC 9113, 8.1).
				cs.stopSending()
			} else {
				cs.fail(fmt.Errorf("h2conn: %s reset the stream: %w", cc.addr, err), refused)
			}
		}
		cc.mu.Unlock()
	case *http2.PingFrame:
		if f.IsAck() {
			cc.mu.Lock()
			cc.pinged = false
			cc.mu.Unlock()
			return nil
		}
		cc.lockWrite()
		_ = cc.fr.WritePing(true, f.Data)
		return cc.unlockWrite()
	case *http2.GoAwayFrame:
		cc.mu.Lock()
		cc.goingAway = true
		for id, cs := range cc.streams {
			if id > f.LastStreamID {
				cs.fail(fmt.Errorf("h2conn: %s went away (GOAWAY %v)", cc.addr, f.ErrCode), true)
			}
		}
		last := len(cc.streams) == 0
		cc.mu.Unlock()
		cc.t.forget(cc)
		if last {
			return io.EOF
		}
	case *http2.PushPromiseFrame:
		return http2.ConnectionError(http2.ErrCodeProtocol) // we said SETTINGS_ENABLE_PUSH=0
	}
	return nil
}

func (cc *clientConn) processSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return err
		}
		// mu and wmu are never held together here: writers take wmu
		// and then mu.
		switch s.ID {
		case http2.SettingMaxConcurrentStreams:
			cc.mu.Lock()
			cc.maxStreams = s.Val
			cc.mu.Unlock()
		case http2.SettingInitialWindowSize:
			cc.mu.Lock()
			delta := int64(s.Val) - int64(cc.peerWindow)
			cc.peerWindow = int32(s.Val)
			for _, cs := range cc.streams {
				cs.sendWindow += delta
			}
			cc.window.Broadcast()
			cc.mu.Unlock()
		case http2.SettingMaxFrameSize:
			cc.w.SetMaxFrame(s.Val)
		case http2.SettingHeaderTableSize:
			cc.w.SetHeaderTableSize(s.Val)
		}
		return nil
	})
	if err != nil {
		return err
	}
	cc.lockWrite()
	_ = cc.fr.WriteSettingsAck()
	err = cc.unlockWrite()
	cc.mu.Lock()
	if !cc.settled {
		cc.settled = true
		close(cc.settledc)
	}
	cc.mu.Unlock()
	return err
}

// resetStream fails a stream and tells the upstream.
func (cc *clientConn) resetStream(id uint32, code http2.ErrCode, err error) {
	cc.mu.Lock()
	if cs := cc.streams[id]; cs != nil {
		cs.fail(err, false)
	}
	cc.mu.Unlock()
	cc.lockWrite()
	_ = cc.fr.WriteRSTStream(id, code)
	_ = cc.unlockWrite()
}

func (cc *clientConn) processHeaders(f *http2.MetaHeadersFrame) error {
	cc.mu.Lock()
	cs := cc.streams[f.StreamID]
	if cs == nil {
		never := f.StreamID%2 == 0 || f.StreamID >= cc.nextID
		cc.mu.Unlock()
		if never {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		return nil // a stream we gave up on
	}
	if cs.answered {
		// Trailers.
		defer cc.mu.Unlock()
		if !f.StreamEnded() || len(f.PseudoFields()) > 0 {
			cs.fail(fmt.Errorf("h2conn: %s sent malformed trailers", cc.addr), false)
			go cc.resetStream(cs.id, http2.ErrCodeProtocol, nil)
			return nil
		}
		if cs.trailer == nil {
			cs.trailer = http.Header{}
		}
		for _, hf := range f.RegularFields() {
			k := cc.names.Canonical(hf.Name)
			cs.trailer[k] = append(cs.trailer[k], hf.Value)
		}
		if cs.raw {
			cs.rawTrailer = append(cs.rawTrailer, f.RegularFields()...) // a copy: the frame is reused
		}
		cs.gotTrailer = true
		cs.endOfAnswer()
		return nil
	}
	cc.mu.Unlock()
	status, err := strconv.Atoi(f.PseudoValue("status"))
	if err != nil || status < 100 || status > 999 || len(f.PseudoValue("status")) != 3 {
		cc.resetStream(f.StreamID, http2.ErrCodeProtocol, fmt.Errorf("h2conn: %s answered with a malformed :status %q", cc.addr, f.PseudoValue("status")))
		return nil
	}
	_, regular := h2wire.Split(f.Fields)
	if status < 200 {
		if f.StreamEnded() {
			cc.resetStream(f.StreamID, http2.ErrCodeProtocol, fmt.Errorf("h2conn: %s ended the stream with a %d", cc.addr, status))
			return nil
		}
		var err error
		switch {
		case cs.raw && cs.got1xx != nil:
			err = cs.got1xx(status, regular)
		case cs.trace != nil && cs.trace.Got1xxResponse != nil:
			h, _ := header(&cc.names, regular)
			err = cs.trace.Got1xxResponse(status, textproto.MIMEHeader(h))
		}
		if err != nil {
			cc.resetStream(f.StreamID, http2.ErrCodeCancel, err)
		}
		return nil
	}
	length := contentLength(regular, f.StreamEnded(), cs.head)
	var res *http.Response
	if cs.raw {
		// Kept for the caller, who reads them after the read loop has
		// read on: a copy.
		regular = append([]hpack.HeaderField(nil), regular...)
	} else {
		res = newResponse(&cc.names, cs.req, status, regular, length)
	}
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cs.done {
		return nil // failed meanwhile
	}
	cs.answered = true
	if length >= 0 {
		cs.declLen = length
	}
	cs.noBody = cs.head || status == http.StatusNoContent || status == http.StatusNotModified
	if f.StreamEnded() {
		cs.endOfAnswer()
	}
	// With a length promised and none sent, the body is the stream's, and
	// reading it says what went wrong.
	noBody := cs.noBody || f.StreamEnded() && cs.bodyErr == io.EOF
	if cs.raw {
		cs.status, cs.fields, cs.length, cs.rawNoBody = status, regular, length, noBody
	} else {
		if noBody {
			res.Body = http.NoBody
		} else {
			res.Body = &cs.body
		}
		cs.res = res
	}
	close(cs.resc)
	return nil
}

// contentLength is an answer's length as net/http's HTTP/2 Transport
// reads it from its fields: its one Content-Length, none for an answer
// that ended with its HEADERS (but to HEAD), else unknown (-1).
func contentLength(fields []hpack.HeaderField, ended, head bool) int64 {
	n, value := 0, ""
	for i := range fields {
		if hf := &fields[i]; hf.Name == "content-length" {
			n++
			value = hf.Value
		}
	}
	switch {
	case n == 1:
		if v, err := strconv.ParseUint(value, 10, 63); err == nil {
			return int64(v)
		}
	case n == 0 && ended && !head:
		return 0
	}
	return -1
}

// header makes an answer's header from its fields, and its announced
// trailers (Trailer, which the header does not keep).
func header(names *h2wire.Names, fields []hpack.HeaderField) (h, trailer http.Header) {
	h = make(http.Header, len(fields))
	values := make(h2wire.Values, len(fields))
	for _, hf := range fields {
		k := names.Canonical(hf.Name)
		if k == "Trailer" {
			for t := range strings.SplitSeq(hf.Value, ",") {
				if t = textproto.TrimString(t); t != "" && httpguts.ValidTrailerHeader(http.CanonicalHeaderKey(t)) {
					if trailer == nil {
						trailer = http.Header{}
					}
					trailer[http.CanonicalHeaderKey(t)] = nil
				}
			}
			continue
		}
		values.Add(h, k, hf.Value)
	}
	return h, trailer
}

// newResponse is the answer to req with status and fields, without its
// body.
func newResponse(names *h2wire.Names, req *http.Request, status int, fields []hpack.HeaderField, length int64) *http.Response {
	h, trailer := header(names, fields)
	return &http.Response{
		Status:        h2wire.StatusLine(status),
		StatusCode:    status,
		Proto:         "HTTP/2.0",
		ProtoMajor:    2,
		Header:        h,
		Trailer:       trailer,
		Request:       req,
		ContentLength: length,
	}
}

func (cc *clientConn) processData(f *http2.DataFrame) error {
	n := int32(f.Length)
	cc.mu.Lock()
	if !cc.recv.Take(n) {
		cc.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	// A frame the stream does not take still counted against the
	// connection, and is given back; a stream it was meant for is reset.
	refuse := func(code http2.ErrCode, why string) error {
		inc := cc.recv.Release(n)
		cc.mu.Unlock()
		cc.w.WriteWindowUpdates(0, inc, 0)
		if why != "" {
			cc.resetStream(f.StreamID, code, fmt.Errorf("h2conn: %s %s", cc.addr, why))
		}
		return nil
	}
	cs := cc.streams[f.StreamID]
	switch {
	case cs == nil || cs.remoteDone:
		return refuse(0, "") // a stream we gave up on, or one already ended
	case !cs.answered:
		return refuse(http2.ErrCodeProtocol, "sent DATA before HEADERS")
	case !cs.recv.Take(n):
		return refuse(http2.ErrCodeFlowControl, "sent beyond the stream's window")
	}
	data := f.Data()
	cs.got += int64(len(data))
	if cs.declLen >= 0 && cs.got > cs.declLen {
		return refuse(http2.ErrCodeProtocol, "sent more than its Content-Length")
	}
	unread := n - int32(len(data))
	if !cs.bodyClosed {
		cs.buf = append(cs.buf, data...)
		cs.ready.Broadcast()
	} else {
		unread = n
	}
	if f.StreamEnded() {
		cs.endOfAnswer()
	}
	connInc, streamInc := cc.recv.Release(unread), uint32(0)
	if unread > 0 && !cs.remoteDone {
		streamInc = cs.recv.Release(unread)
	}
	cc.mu.Unlock()
	cc.w.WriteWindowUpdates(f.StreamID, connInc, streamInc)
	return nil
}

// goIdle notes that the connection has no streams; the caller holds mu.
// One timer per connection, re-armed only when it fires.
func (cc *clientConn) goIdle() {
	if cc.t.IdleTimeout <= 0 || cc.broken != nil {
		return
	}
	cc.idleSince = time.Now()
	if cc.idleTimer == nil {
		cc.idleTimer = time.AfterFunc(cc.t.IdleTimeout, cc.idleCheck)
	}
}

func (cc *clientConn) idleCheck() {
	cc.mu.Lock()
	if cc.broken != nil {
		cc.mu.Unlock()
		return
	}
	if len(cc.streams)+cc.reserved > 0 {
		cc.idleTimer.Reset(cc.t.IdleTimeout)
		cc.mu.Unlock()
		return
	}
	if left := cc.t.IdleTimeout - time.Since(cc.idleSince); left > 0 {
		cc.idleTimer.Reset(left)
		cc.mu.Unlock()
		return
	}
	// Marked closed before mu is let go, so no request reserves a stream
	// on it in between (see retireIfIdle).
	err := errors.New("idle")
	cc.broken = err
	cc.mu.Unlock()
	cc.close(err)
}

// watchReads pings a connection whose streams have heard nothing for
// ReadIdleTimeout, and closes it if the ping is not answered within
// PingTimeout: a dead upstream host sends no RST. The caller holds mu.
func (cc *clientConn) watchReads() {
	if cc.t.ReadIdleTimeout <= 0 || cc.pingTimer != nil {
		return
	}
	cc.pingTimer = time.AfterFunc(cc.t.ReadIdleTimeout, cc.readCheck)
}

func (cc *clientConn) readCheck() {
	cc.mu.Lock()
	if cc.broken != nil {
		cc.mu.Unlock()
		return
	}
	if cc.pinged {
		cc.mu.Unlock()
		cc.close(fmt.Errorf("no answer to a PING within %v", cc.t.PingTimeout))
		return
	}
	since := time.Since(time.Unix(0, cc.lastRead.Load()))
	if len(cc.streams) == 0 {
		cc.pingTimer.Reset(cc.t.ReadIdleTimeout) // nothing waits: nothing to check yet
		cc.mu.Unlock()
		return
	}
	if since < cc.t.ReadIdleTimeout {
		cc.pingTimer.Reset(cc.t.ReadIdleTimeout - since)
		cc.mu.Unlock()
		return
	}
	cc.pinged = true
	wait := cc.t.PingTimeout
	if wait <= 0 {
		wait = 15 * time.Second
	}
	cc.pingTimer.Reset(wait)
	cc.mu.Unlock()
	cc.lockWrite()
	_ = cc.fr.WritePing(false, [8]byte{'w', 'a', 't', 'e', 'r'})
	_ = cc.unlockWrite()
}

// encodeRequest encodes req's header block into cc.hbuf; the caller holds
// the write lock. What is sent follows net/http's HTTP/2 Transport.
func (cc *clientConn) encodeRequest(req *http.Request, contentLength int64) error {
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	if !httpguts.ValidHostHeader(host) {
		return fmt.Errorf("h2conn: invalid Host %q", host)
	}
	path := req.URL.RequestURI()
	if path == "" {
		path = "/"
	}
	method := req.Method
	if method == "" {
		method = http.MethodGet
	}
	// Checked before anything is encoded: an error must leave the
	// encoder's table as the upstream's is.
	for k, vv := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return fmt.Errorf("h2conn: invalid header field name %q", k)
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return fmt.Errorf("h2conn: invalid value for header field %q", k)
			}
		}
	}
	cc.w.StartBlock()
	cc.w.Encode(":authority", host)
	cc.w.Encode(":method", method)
	cc.w.Encode(":path", path)
	cc.w.Encode(":scheme", "http")
	var trailers string
	if len(req.Trailer) > 0 {
		keys := make([]string, 0, len(req.Trailer))
		for k := range req.Trailer {
			keys = append(keys, http.CanonicalHeaderKey(k))
		}
		trailers = strings.Join(keys, ",")
		cc.w.Encode("trailer", trailers)
	}
	didUA := false
	for k, vv := range req.Header {
		switch k {
		case "Host", "Content-Length", "Connection", "Proxy-Connection", "Transfer-Encoding", "Upgrade", "Keep-Alive", "Trailer":
			continue
		case "Te":
			for _, v := range vv {
				if v == "trailers" {
					cc.w.Encode("te", v)
				}
			}
			continue
		case "User-Agent":
			didUA = true
			if len(vv) > 0 && vv[0] != "" {
				cc.w.Encode("user-agent", vv[0])
			}
			continue
		}
		name := cc.w.Names.Lower(k)
		encode := cc.w.Encode
		if k == "X-Request-Timeout" || k == "Grpc-Timeout" {
			encode = cc.w.EncodeLiteral // a new value every millisecond
		}
		for _, v := range vv {
			encode(name, v)
		}
	}
	if !didUA {
		cc.w.Encode("user-agent", "Go-http-client/2.0")
	}
	if contentLength > 0 || contentLength == 0 && (method == http.MethodPost || method == http.MethodPut || method == http.MethodPatch) {
		cc.w.Encode("content-length", strconv.FormatInt(contentLength, 10))
	}
	return nil
}
