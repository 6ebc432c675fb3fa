package h1serve

import (
	"net/http"
	"net/textproto"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// bufferBeforeChunking is how much of a body of unknown length is held back
// so that a short answer still gets a Content-Length, as net/http's server
// does (it holds 2 KiB too).
const bufferBeforeChunking = 2048

// response is the http.ResponseWriter of one request. It follows net/http's
// server where a handler can tell: a Content-Length the handler set is
// honoured and enforced, a short body of unknown length gets one, a longer
// one or a flushed one is chunked, announced trailers follow a chunked body,
// Content-Type is sniffed when unset, and Date is added.
type response struct {
	c      *conn
	req    *http.Request
	header http.Header

	status        int
	wroteHeader   bool // a final status was set
	committed     bool // the status line and headers are in the write buffer
	noBody        bool // HEAD, or a status without a body
	chunked       bool
	contentLength int64 // as the handler declared it; -1 when it did not
	written       int64
	held          []byte // body held back while its length is unknown
	headBody      int64  // bytes a HEAD answer's handler wrote (not sent)
	closeAfter    bool
	err           error // the first write error

	// The header as it was at WriteHeader: like net/http's server, later
	// changes count only as trailers. It is kept serialised in the
	// connection's buffer (conn.fields), with what commit must know of it.
	hasType  bool     // Content-Type was set (even to nothing: no sniffing)
	hasDate  bool     // Date was set
	trailers []string // the Trailer header's values
	prefixed bool     // a trailer was set with http.TrailerPrefix
}

func (w *response) Header() http.Header {
	if w.header == nil {
		w.header = make(http.Header)
	}
	return w.header
}

// AdoptHeader makes h the answer's header in place of an empty one, so that
// a proxy passing an upstream's header on need not copy it into a map of
// its own. It is false, and changes nothing, once the header has fields or
// the status is set.
func (w *response) AdoptHeader(h http.Header) bool {
	if len(w.header) > 0 || w.wroteHeader {
		return false
	}
	w.header = h
	return true
}

func (w *response) WriteHeader(code int) {
	if w.wroteHeader {
		return
	}
	if code < 100 || code > 999 {
		panic("invalid WriteHeader code " + strconv.Itoa(code)) // as net/http's server
	}
	if code >= 100 && code <= 199 && code != http.StatusSwitchingProtocols {
		// An informational answer goes out at once, with the headers set
		// so far; the final one follows.
		w.writeStatusLine(code)
		w.write(appendFields(w.c.bw.AvailableBuffer(), w.header, omitLength))
		w.write([]byte("\r\n"))
		w.flush()
		return
	}
	w.wroteHeader, w.status = true, code
	w.noBody = w.req.Method == http.MethodHead || !bodyAllowed(code)
	h := w.header
	if cl := h.Get("Content-Length"); cl != "" {
		if n, err := strconv.ParseInt(cl, 10, 64); err == nil && n >= 0 {
			w.contentLength = n
		} else {
			h.Del("Content-Length")
		}
	}
	h.Del("Transfer-Encoding") // the framing is this writer's to choose
	_, w.hasType = h["Content-Type"]
	if ce := h["Content-Encoding"]; len(ce) > 0 && ce[0] != "" {
		w.hasType = true // net/http's server does not sniff an encoded body (Go issue 31753)
	}
	_, w.hasDate = h["Date"]
	w.trailers = h["Trailer"]
	w.prefixed = hasPrefixedTrailer(h)
	if httpguts.HeaderValuesContainsToken(h["Connection"], "close") {
		w.closeAfter = true
	}
	// A status without a body carries no length, and a 304 no type
	// either: net/http's server leaves them out (suppressedHeaders).
	omit := omitNone
	switch {
	case code == http.StatusNotModified:
		omit = omitType | omitLength
	case !bodyAllowed(code):
		omit = omitLength
	}
	w.c.fields = appendFields(w.c.fields[:0], h, omit)
}

// What appendFields leaves out.
const (
	omitNone   = 0
	omitLength = 1 << iota // Content-Length and Transfer-Encoding
	omitType               // Content-Type
)

func (w *response) Write(p []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if len(p) == 0 {
		return 0, nil // before any other check, as net/http's server
	}
	if w.noBody {
		if w.req.Method != http.MethodHead || !bodyAllowed(w.status) {
			return 0, http.ErrBodyNotAllowed
		}
		// HEAD: the body is not sent, but net/http's server counts it
		// against a declared length, and gives its length and type as it
		// would for GET when it can.
		w.written += int64(len(p))
		if w.contentLength >= 0 && w.written > w.contentLength {
			return 0, http.ErrContentLength
		}
		if !w.committed {
			if len(w.held) < sniffLen {
				w.held = append(w.held, p[:min(len(p), sniffLen-len(w.held))]...)
			}
			w.headBody += int64(len(p))
			if w.headBody > bufferBeforeChunking {
				w.commit(false)
			}
		}
		return len(p), nil
	}
	if w.err != nil {
		return 0, w.err
	}
	// A refused write still counts, as in net/http's server: every later
	// write is refused too, and the connection closes after the answer.
	w.written += int64(len(p))
	if w.contentLength >= 0 && w.written > w.contentLength {
		return 0, http.ErrContentLength
	}
	if !w.committed {
		// The first 2 KiB are held, with a declared length too: net/http's
		// server sniffs the type from all it holds when it commits.
		if len(w.held)+len(p) <= bufferBeforeChunking {
			w.held = append(w.held, p...)
			return len(p), nil
		}
		if !w.hasType {
			w.sniff(sniffPrefix(w.held, p))
		}
		w.commit(false)
	}
	w.writeBody(p)
	if w.err != nil {
		return 0, w.err
	}
	return len(p), nil
}

// Flush sends what is written so far; a body of unknown length is chunked
// from then on.
func (w *response) Flush() { _ = w.FlushError() }

func (w *response) FlushError() error {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.committed {
		w.commit(false)
	}
	w.flush()
	return w.err
}

// EnableFullDuplex: this loop lets a handler write while it reads the
// request body, always.
func (w *response) EnableFullDuplex() error { return nil }

// finish ends the answer once the handler returned.
func (w *response) finish() {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.committed {
		w.commit(true)
	}
	if w.chunked {
		w.write([]byte("0\r\n"))
		w.writeTrailers()
		w.write([]byte("\r\n"))
	}
	if !w.noBody && w.contentLength >= 0 && w.written != w.contentLength {
		w.closeAfter = true // the client counts on bytes that will not come
	}
	w.flush()
}

// commit writes the status line and the header of WriteHeader, deciding
// the framing: the declared length, the held body's length when the handler
// is done, or chunked.
func (w *response) commit(final bool) {
	if !w.hasType && len(w.held) > 0 {
		w.sniff(w.held)
	}
	w.committed = true
	w.writeStatusLine(w.status)
	w.write(w.c.fields)
	if w.noBody && final && w.headBody > 0 && w.contentLength < 0 && len(w.trailers) == 0 && !w.prefixed {
		w.writeField("Content-Length", strconv.FormatInt(w.headBody, 10))
	}
	if !w.noBody && w.contentLength < 0 {
		if final && len(w.trailers) == 0 && !w.prefixed {
			w.contentLength = int64(len(w.held))
			w.writeField("Content-Length", strconv.Itoa(len(w.held)))
		} else {
			w.chunked = true
			w.writeField("Transfer-Encoding", "chunked")
		}
	}
	if !w.hasDate {
		w.write(appendDate(w.c.bw.AvailableBuffer()))
	}
	if !w.closeAfter && w.c.s.shutting.Load() {
		w.closeAfter = true
		w.writeField("Connection", "close")
	}
	w.write([]byte("\r\n"))
	if len(w.held) > 0 {
		held := w.held
		w.held = nil
		if !w.noBody { // a HEAD answer's held bytes were only for sniffing
			w.writeBody(held)
		}
	}
}

// sniff sets the Content-Type net/http's server would, from the first bytes
// of the body.
func (w *response) sniff(p []byte) {
	w.hasType = true
	if w.committed {
		return
	}
	w.c.fields = appendField(w.c.fields, "Content-Type", http.DetectContentType(p))
}

func (w *response) writeStatusLine(code int) {
	w.write(appendStatusLine(w.c.bw.AvailableBuffer(), code))
}

// appendFields serialises h but for the fields omit names (a 1xx answer
// and a status without a body carry no framing fields). Like net/http's
// server, it drops a field with an invalid name and writes a CR or LF in a
// value as a space, so no field can smuggle in another.
func appendFields(b []byte, h http.Header, omit int) []byte {
	for k, vv := range h {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			continue
		}
		if omit&omitLength != 0 && (k == "Content-Length" || k == "Transfer-Encoding") ||
			omit&omitType != 0 && k == "Content-Type" || !httpguts.ValidHeaderFieldName(k) {
			continue
		}
		for _, v := range vv {
			b = appendField(b, k, v)
		}
	}
	return b
}

func appendField(b []byte, k, v string) []byte {
	b = append(b, k...)
	b = append(b, ": "...)
	b = appendValue(b, v)
	return append(b, "\r\n"...)
}

func (w *response) writeField(k, v string) {
	w.write(appendField(w.c.bw.AvailableBuffer(), k, v))
}

// writeTrailers writes the trailers after a chunked body: the fields the
// Trailer header announced, and those set with http.TrailerPrefix.
func (w *response) writeTrailers() {
	for _, names := range w.trailers {
		for name := range strings.SplitSeq(names, ",") {
			name = textproto.CanonicalMIMEHeaderKey(strings.TrimSpace(name))
			w.writeTrailer(name, w.header[name])
		}
	}
	for k, vv := range w.header {
		if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok {
			w.writeTrailer(textproto.CanonicalMIMEHeaderKey(name), vv)
		}
	}
}

func (w *response) writeTrailer(name string, vv []string) {
	if name == "" || !httpguts.ValidTrailerHeader(name) {
		return // a field RFC 9110 forbids in trailers, which net/http's server drops too
	}
	for _, v := range vv {
		w.writeField(name, v)
	}
}

func appendValue(b []byte, v string) []byte {
	v = textproto.TrimString(v) // spaces and tabs only, as net/http's server trims
	// Two IndexByte, not ContainsAny, which builds its byte set per call.
	if strings.IndexByte(v, '\r') < 0 && strings.IndexByte(v, '\n') < 0 {
		return append(b, v...)
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c == '\r' || c == '\n' {
			c = ' '
		}
		b = append(b, c)
	}
	return b
}

func (w *response) writeBody(p []byte) {
	if len(p) == 0 {
		return
	}
	if w.chunked {
		b := w.c.bw.AvailableBuffer()
		b = strconv.AppendInt(b, int64(len(p)), 16)
		b = append(b, "\r\n"...)
		w.write(b)
		w.write(p)
		w.write([]byte("\r\n"))
		return
	}
	w.write(p)
}

func (w *response) write(p []byte) {
	if w.err == nil {
		_, w.err = w.c.bw.Write(p)
	}
}

func (w *response) flush() {
	if w.err == nil {
		w.err = w.c.bw.Flush()
	}
}

// bodyAllowed reports whether a status may carry a body (RFC 9110).
func bodyAllowed(status int) bool {
	return (status < 100 || status > 199) && status != http.StatusNoContent && status != http.StatusNotModified
}

// hasPrefixedTrailer: the handler set a trailer with http.TrailerPrefix
// before WriteHeader, which makes the body chunked, as a Trailer field does
// (one set later still goes out, if the body is chunked anyway).
func hasPrefixedTrailer(h http.Header) bool {
	for k := range h {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			return true
		}
	}
	return false
}

// sniffLen is how much of a body net/http's server sniffs.
const sniffLen = 512

// sniffPrefix is what net/http's server sniffs when it commits: the first
// 512 bytes of what it holds and what is being written.
func sniffPrefix(held, p []byte) []byte {
	if len(held) == 0 {
		return p[:min(len(p), sniffLen)]
	}
	if len(held) >= sniffLen {
		return held[:sniffLen]
	}
	return append(held[:len(held):len(held)], p[:min(len(p), sniffLen-len(held))]...)
}
