package h2serve

import (
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2/hpack"

	"github.com/watertight/watertight/proxy/internal/h2wire"
)

// responseWriter is a stream's http.ResponseWriter. Like net/http's, it
// holds up to writeBufferSize bytes of body until the handler flushes or
// returns: an answer finished by then gets a Content-Length and leaves with
// its HEADERS in one write.
type responseWriter struct {
	st     *stream
	c      *conn
	header http.Header
	head   bool // a HEAD request: the body is counted, not sent

	status      int
	wroteHeader bool    // the final status is chosen
	sentHeader  bool    // its HEADERS frame is on the wire
	fields      []field // the header as it was at WriteHeader
	fieldArr    [6]field
	valueArr    [8]string
	trailerKeys []string
	hasType     bool // Content-Type set (possibly to nothing)
	hasEncoding bool
	hasDate     bool
	declLen     int64   // the handler's Content-Length, or -1
	written     int64   // body bytes the handler wrote
	held        *[]byte // from buffers, while held
	heldLen     int     // body bytes held (for HEAD, counted: only sniffing needs the bytes)
	headersEnd  bool    // the HEADERS frame ended the stream
	done        bool
	noLength    bool // KeepLengthUnknown was called

	// A lane's answer (Exchange.AnswerHead), sent as it is instead of
	// fields.
	raw, rawTrailers []hpack.HeaderField
}

// field is one header name and its values, as the handler set them.
type field struct {
	key    string
	values []string
}

func (w *responseWriter) init(st *stream, head bool) {
	*w = responseWriter{st: st, c: st.c, head: head, declLen: -1}
}

func (w *responseWriter) Header() http.Header {
	if w.header == nil {
		w.header = http.Header{}
	}
	return w.header
}

// AdoptHeader makes h the answer's header in place of an empty one, so that
// a proxy passing an upstream's header on need not copy it into a map of
// its own. It is false, and changes nothing, once the header has fields or
// the status is set.
func (w *responseWriter) AdoptHeader(h http.Header) bool {
	if len(w.header) > 0 || w.wroteHeader || w.done {
		return false
	}
	w.header = h
	return true
}

// KeepLengthUnknown keeps the answer's length undeclared even if it ends
// before its first flush, when the writer would count it: a proxy passing
// on an answer of unknown length sends what its upstream sent, without
// flushing every write to keep it so (as ReverseProxy does).
func (w *responseWriter) KeepLengthUnknown() { w.noLength = true }

func (w *responseWriter) WriteHeader(code int) {
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code)) // as net/http's servers do
	}
	if w.wroteHeader || w.done {
		slog.Debug("h2serve: superfluous WriteHeader", "code", code)
		return
	}
	if code < 200 {
		w.informational(code)
		return
	}
	w.wroteHeader, w.status = true, code
	h := w.header
	// The header as it is now is what is sent, as net/http snapshots it:
	// the values are copied (into one array), since a handler may still
	// change a value in place.
	n := 0
	for _, vv := range h {
		n += len(vv)
	}
	// Typical answers fit the arrays the stream carries: no allocation.
	values, fields := w.valueArr[:0], w.fieldArr[:0]
	if n > len(w.valueArr) {
		values = make([]string, 0, n)
	}
	if len(h) > len(w.fieldArr) {
		fields = make([]field, 0, len(h))
	}
	w.fields = fields
	for k, vv := range h {
		switch k {
		case "Content-Length":
			if len(vv) > 0 {
				if n, err := strconv.ParseUint(vv[0], 10, 63); err == nil {
					w.declLen = int64(n)
				}
			}
			continue // sent from declLen (or counted; see finish)
		case "Trailer":
			for _, v := range vv {
				for k := range strings.SplitSeq(v, ",") {
					k = http.CanonicalHeaderKey(strings.TrimSpace(k))
					if httpguts.ValidTrailerHeader(k) && !slices.Contains(w.trailerKeys, k) {
						w.trailerKeys = append(w.trailerKeys, k)
					}
				}
			}
		case "Content-Type":
			w.hasType = true
		case "Content-Encoding":
			w.hasEncoding = len(vv) > 0 && vv[0] != ""
		case "Date":
			w.hasDate = true
		}
		if strings.HasPrefix(k, http.TrailerPrefix) {
			continue
		}
		start := len(values)
		values = append(values, vv...)
		w.fields = append(w.fields, field{k, values[start:len(values):len(values)]})
	}
}

// informational sends a 1xx answer now, with the header as it is (RFC
// 8297: the handler's header is not cleared).
func (w *responseWriter) informational(code int) {
	c := w.c
	if w.alive() != nil {
		return
	}
	c.w.Lock()
	c.w.StartBlock()
	c.w.Encode(":status", h2wire.Status(code))
	for k, vv := range w.header {
		if k == "Content-Length" || k == "Transfer-Encoding" {
			continue
		}
		c.encodeField(k, vv)
	}
	c.w.WriteBlock(w.st.id, false)
	_ = c.w.Unlock()
}

// write100Continue answers a request's Expect: 100-continue as its body is
// first read, unless the answer already started.
func (w *responseWriter) write100Continue() {
	c := w.c
	if w.alive() != nil {
		return
	}
	c.w.Lock()
	if !w.sentHeader {
		c.w.StartBlock()
		c.w.Encode(":status", "100")
		c.w.WriteBlock(w.st.id, false)
	}
	_ = c.w.Unlock()
}

func (w *responseWriter) bodyAllowed() bool {
	return w.status >= 200 && w.status != http.StatusNoContent && w.status != http.StatusNotModified
}

func (w *responseWriter) Write(p []byte) (int, error) {
	if w.done {
		return 0, errStreamClosed
	}
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.bodyAllowed() {
		return 0, http.ErrBodyNotAllowed
	}
	w.written += int64(len(p))
	if w.declLen >= 0 && w.written > w.declLen {
		return 0, http.ErrContentLength
	}
	if !w.sentHeader && w.heldLen+len(p) <= writeBufferSize {
		if w.held == nil {
			w.held = buffers.Get().(*[]byte)
		}
		*w.held = append(*w.held, p...)
		w.heldLen += len(p)
		return len(p), nil
	}
	if err := w.commit(p, false); err != nil { // for HEAD, sniffed and not sent
		return 0, err
	}
	return len(p), nil
}

func (w *responseWriter) Flush() { _ = w.FlushError() }

// FlushError sends the header and what is held now (http.ResponseController
// calls it).
func (w *responseWriter) FlushError() error {
	if w.done {
		return errStreamClosed
	}
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	return w.commit(nil, false)
}

// finish ends the answer once the handler has returned.
func (w *responseWriter) finish() {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	_ = w.commit(nil, true)
	w.done = true
}

// commit sends the HEADERS frame if it has not gone yet, the body held and
// then p, and with end the stream's end (trailers, or END_STREAM on the last
// frame). It all goes into the connection's buffer in one turn of the write
// lock when the flow-control windows allow, and so usually in one write.
func (w *responseWriter) commit(p []byte, end bool) error {
	c, st := w.c, w.st
	var trailers []field
	hasTrailers := false
	if end {
		trailers = w.trailers()
		hasTrailers = trailers != nil || len(w.rawTrailers) > 0
	}
	if !w.sentHeader && end && w.declLen < 0 && !w.noLength && w.bodyAllowed() && (w.heldLen > 0 || !w.head) {
		w.declLen = int64(w.heldLen) // the whole body is known
	}
	var held []byte
	if w.held != nil {
		held = *w.held
		defer w.release()
	}
	var sniffed string
	if !w.sentHeader && !w.hasType && !w.hasEncoding && w.bodyAllowed() && len(held)+len(p) > 0 {
		w.hasType = true
		sniffed = sniff(held, p)
	}
	if w.head {
		held, p = nil, nil // counted and sniffed, not sent
	}
	c.w.Lock()
	if err := w.alive(); err != nil {
		_ = c.w.Unlock()
		return err
	}
	if !w.sentHeader {
		w.sentHeader = true
		w.writeHeaders(end && len(held)+len(p) == 0 && !hasTrailers, sniffed)
	}
	w.heldLen = 0
	for i, data := range [2][]byte{held, p} {
		last := i == 1 || len(p) == 0
		for len(data) > 0 {
			n, err := st.take(len(data), c.w.MaxFrame(), false)
			if err != nil {
				_ = c.w.Unlock()
				return err
			}
			if n == 0 {
				// No window: let the others write while the client reads.
				maxFrame := c.w.MaxFrame()
				if err := c.w.Unlock(); err != nil {
					return err
				}
				if n, err = st.take(len(data), maxFrame, true); err != nil {
					return err
				}
				c.w.Lock()
			}
			_ = c.fr.WriteData(st.id, end && last && n == len(data) && !hasTrailers, data[:n])
			data = data[n:]
		}
	}
	if end {
		switch {
		case hasTrailers:
			c.w.StartBlock()
			for _, f := range trailers {
				c.encodeField(f.key, f.values)
			}
			for i := range w.rawTrailers {
				c.encodeRaw(&w.rawTrailers[i])
			}
			c.w.WriteBlock(st.id, true)
		case len(held)+len(p) == 0 && !w.headersEnd:
			_ = c.fr.WriteData(st.id, true, nil)
		}
		// Done both ways: the stream closes now, before the client can
		// read our END_STREAM and open the next one, not once the
		// handler's goroutine gets round to it.
		c.mu.Lock()
		if st.remoteDone && !st.ended {
			st.ended = true
			delete(c.streams, st.id)
			c.window.Broadcast()
		}
		c.mu.Unlock()
	}
	return c.w.Unlock()
}

// alive says why the stream can take no more frames, if it cannot.
func (w *responseWriter) alive() error {
	c, st := w.c, w.st
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errConnClosed
	}
	if st.ended {
		if st.err != nil {
			return st.err
		}
		return errStreamClosed
	}
	return nil
}

// writeHeaders encodes and writes the answer's HEADERS frame; the caller
// holds the write lock.
func (w *responseWriter) writeHeaders(end bool, sniffed string) {
	c := w.c
	c.w.StartBlock()
	c.w.Encode(":status", h2wire.Status(w.status))
	for _, f := range w.fields {
		c.encodeField(f.key, f.values)
	}
	for i := range w.raw {
		c.encodeRaw(&w.raw[i])
	}
	if sniffed != "" {
		c.w.Encode("content-type", sniffed)
	}
	if w.declLen >= 0 && w.bodyAllowed() {
		c.w.Encode("content-length", strconv.FormatInt(w.declLen, 10))
	}
	if !w.hasDate {
		c.w.Encode("date", httpDate())
	}
	c.w.WriteBlock(w.st.id, end)
	w.headersEnd = end
}

// sniff is the Content-Type of a body that starts with a and then b, from
// its first 512 bytes, as net/http's servers judge it.
func sniff(a, b []byte) string {
	const n = 512
	if len(a) >= n || len(b) == 0 {
		return http.DetectContentType(a)
	}
	if len(a) == 0 {
		return http.DetectContentType(b)
	}
	var buf [n]byte
	k := copy(buf[:], a)
	k += copy(buf[k:], b)
	return http.DetectContentType(buf[:k])
}

// trailers collects the trailers the handler set: the announced ones and
// those named with http.TrailerPrefix. Nil when there are none to send.
func (w *responseWriter) trailers() []field {
	var out []field
	for _, k := range w.trailerKeys {
		if vv := w.header[k]; len(vv) > 0 {
			out = append(out, field{k, vv})
		}
	}
	for k, vv := range w.header {
		if strings.HasPrefix(k, http.TrailerPrefix) && len(vv) > 0 {
			out = append(out, field{strings.TrimPrefix(k, http.TrailerPrefix), vv})
		}
	}
	return out
}

// take reserves up to n bytes of send window for st, at most maxFrame;
// with block it waits for window, else it may return 0.
func (st *stream) take(n int, maxFrame uint32, block bool) (int, error) {
	c := st.c
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		if c.closed {
			return 0, errConnClosed
		}
		if st.ended {
			if st.err != nil {
				return 0, st.err
			}
			return 0, errStreamClosed
		}
		avail := min(int64(n), c.sendWindow, st.sendWindow, int64(maxFrame))
		if avail > 0 {
			c.sendWindow -= avail
			st.sendWindow -= avail
			return int(avail), nil
		}
		if !block {
			return 0, nil
		}
		c.window.Wait()
	}
}

// encodeField encodes one header field of the handler's, as net/http's
// server would send it: lower-case, without connection-specific fields or
// invalid names and values. The caller holds the write lock.
func (c *conn) encodeField(k string, vv []string) {
	switch k {
	case "Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "Upgrade":
		return // not HTTP/2's (RFC 9113, 8.2.2)
	}
	if !httpguts.ValidHeaderFieldName(k) {
		return
	}
	name := c.w.Names.Lower(k)
	for _, v := range vv {
		if httpguts.ValidHeaderFieldValue(v) {
			c.w.Encode(name, v)
		}
	}
}

// httpDate is the Date value, formatted once a second.
func httpDate() string {
	now := time.Now()
	if d := lastDate.Load(); d != nil && d.sec == now.Unix() {
		return d.text
	}
	d := &date{sec: now.Unix(), text: now.UTC().Format(http.TimeFormat)}
	lastDate.Store(d)
	return d.text
}

type date struct {
	sec  int64
	text string
}

var lastDate atomic.Pointer[date]

// The held bodies: a buffer per answer in flight, reused.
var buffers = sync.Pool{New: func() any { b := make([]byte, 0, writeBufferSize); return &b }}

// release returns the held buffer once its bytes are in the connection's.
func (w *responseWriter) release() {
	*w.held = (*w.held)[:0]
	buffers.Put(w.held)
	w.held = nil
}
