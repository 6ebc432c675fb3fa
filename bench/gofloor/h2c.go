package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"

	"golang.org/x/net/http2/hpack"
)

// -mode h2c: the least a Go proxy can do for h2c clients and an HTTP/1.1
// upstream, the row nginx's h2c port is measured on. One goroutine per client
// connection, its streams served one after another where they are read (as
// nginx's event loop does; fortio's h2c callers have one stream open at a
// time each), the connection's own upstream connection, the answer's HEADERS
// and DATA in one write. Frames are read and written by hand because x/net's
// Framer allocates a frame per read; the floor should cost what the syscalls
// and the scheduler cost and little else. HPACK is x/net's.
//
// Like raw mode it forwards only what the benchmark sends: bodiless requests
// in one HEADERS frame, answers with a Content-Length that fit one DATA frame
// and the peer's windows. Anything else ends the connection.

const (
	frameData         = 0x0
	frameHeaders      = 0x1
	framePriority     = 0x2
	frameRSTStream    = 0x3
	frameSettings     = 0x4
	framePing         = 0x6
	frameGoAway       = 0x7
	frameWindowUpdate = 0x8

	flagEndStream  = 0x1
	flagAck        = 0x1
	flagEndHeaders = 0x4
	flagPadded     = 0x8
	flagPriority   = 0x20

	settingInitialWindow = 0x4
	settingMaxFrameSize  = 0x5

	defaultWindow   = 65535
	defaultMaxFrame = 16384
	preface         = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
)

// h2cConn is one client connection's state: what the peer allows and what is
// reused from stream to stream.
type h2cConn struct {
	client, upstream net.Conn
	cr, ur           *bufio.Reader

	dec *hpack.Decoder
	enc *hpack.Encoder
	blk bytes.Buffer // the encoder's output

	method, path, authority string
	fieldsOK                bool

	// The last answer's fields as strings, so that an answer like the one
	// before costs no allocation.
	status, length, contentType string
	fields                      [3]hpack.HeaderField

	connWindow   int64
	streamWindow int64 // SETTINGS_INITIAL_WINDOW_SIZE
	maxFrame     int

	payload, req, resp, out []byte
}

func forwardH2C(client, upstream net.Conn) error {
	c := &h2cConn{
		client: client, upstream: upstream,
		cr: bufio.NewReaderSize(client, 16<<10), ur: bufio.NewReaderSize(upstream, 16<<10),
		connWindow: defaultWindow, streamWindow: defaultWindow, maxFrame: defaultMaxFrame,
	}
	c.enc = hpack.NewEncoder(&c.blk)
	c.dec = hpack.NewDecoder(4096, c.field)
	var p [len(preface)]byte
	if _, err := io.ReadFull(c.cr, p[:]); err != nil || string(p[:]) != preface {
		return fmt.Errorf("reading the client preface: %w", errors.Join(err, errUnsupported))
	}
	if _, err := client.Write(appendFrame(nil, frameSettings, 0, 0, nil)); err != nil {
		return fmt.Errorf("writing the server preface: %w", err)
	}
	var hdr [9]byte
	for {
		if _, err := io.ReadFull(c.cr, hdr[:]); err != nil {
			return fmt.Errorf("reading a frame header: %w", err)
		}
		n := int(hdr[0])<<16 | int(hdr[1])<<8 | int(hdr[2])
		typ, flags, id := hdr[3], hdr[4], binary.BigEndian.Uint32(hdr[5:])&(1<<31-1)
		if n > defaultMaxFrame { // what we told the peer by not changing it
			return fmt.Errorf("a frame of %d bytes: %w", n, errUnsupported)
		}
		c.payload = append(c.payload[:0], make([]byte, n)...)
		if _, err := io.ReadFull(c.cr, c.payload); err != nil {
			return fmt.Errorf("reading a frame: %w", err)
		}
		var err error
		switch typ {
		case frameHeaders:
			err = c.serve(id, flags, c.payload)
		case frameSettings:
			err = c.settings(flags, c.payload)
		case framePing:
			if flags&flagAck == 0 && n == 8 {
				_, err = client.Write(appendFrame(c.out[:0], framePing, flagAck, 0, c.payload))
			}
		case frameWindowUpdate:
			if id == 0 && n == 4 {
				c.connWindow += int64(binary.BigEndian.Uint32(c.payload) & (1<<31 - 1))
			}
		case framePriority, frameRSTStream:
		case frameGoAway:
			return io.EOF
		default: // DATA, CONTINUATION, PUSH_PROMISE, unknown
			return fmt.Errorf("frame type %d: %w", typ, errUnsupported)
		}
		if err != nil {
			return err
		}
	}
}

func (c *h2cConn) settings(flags byte, p []byte) error {
	if flags&flagAck != 0 {
		return nil
	}
	if len(p)%6 != 0 {
		return fmt.Errorf("a SETTINGS frame of %d bytes: %w", len(p), errUnsupported)
	}
	for ; len(p) > 0; p = p[6:] {
		v := binary.BigEndian.Uint32(p[2:])
		switch binary.BigEndian.Uint16(p) {
		case settingInitialWindow:
			c.streamWindow = int64(v)
		case settingMaxFrameSize:
			c.maxFrame = int(v)
		}
	}
	if _, err := c.client.Write(appendFrame(c.out[:0], frameSettings, flagAck, 0, nil)); err != nil {
		return fmt.Errorf("acknowledging SETTINGS: %w", err)
	}
	return nil
}

// field is the decoder's callback: it keeps the three pseudo-fields the
// upstream's request line and Host need.
func (c *h2cConn) field(f hpack.HeaderField) {
	switch f.Name {
	case ":method":
		c.method = f.Value
	case ":path":
		c.path = f.Value
	case ":authority":
		c.authority = f.Value
	case ":scheme":
	default:
		if f.Name == "" || f.Name[0] == ':' {
			c.fieldsOK = false
		}
	}
}

// serve forwards the stream a HEADERS frame opened and writes its answer.
func (c *h2cConn) serve(id uint32, flags byte, p []byte) error {
	if flags&flagEndHeaders == 0 || flags&flagEndStream == 0 {
		return fmt.Errorf("stream %d: CONTINUATION or a request body: %w", id, errUnsupported)
	}
	if flags&flagPadded != 0 {
		if len(p) == 0 || int(p[0]) >= len(p) {
			return fmt.Errorf("stream %d: bad padding: %w", id, errUnsupported)
		}
		p = p[1 : len(p)-int(p[0])]
	}
	if flags&flagPriority != 0 {
		if len(p) < 5 {
			return fmt.Errorf("stream %d: short priority: %w", id, errUnsupported)
		}
		p = p[5:]
	}
	c.method, c.path, c.authority, c.fieldsOK = "", "", "", true
	if _, err := c.dec.Write(p); err != nil {
		return fmt.Errorf("stream %d: decoding its fields: %w", id, err)
	}
	if err := c.dec.Close(); err != nil {
		return fmt.Errorf("stream %d: decoding its fields: %w", id, err)
	}
	if !c.fieldsOK || c.method == "" || c.path == "" || c.authority == "" {
		return fmt.Errorf("stream %d: missing or unknown pseudo-fields: %w", id, errUnsupported)
	}
	c.req = append(c.req[:0], c.method...)
	c.req = append(c.req, ' ')
	c.req = append(c.req, c.path...)
	c.req = append(c.req, " HTTP/1.1\r\nHost: "...)
	c.req = append(c.req, c.authority...)
	c.req = append(c.req, "\r\n\r\n"...)
	if _, err := c.upstream.Write(c.req); err != nil {
		return fmt.Errorf("writing the request: %w", err)
	}
	var err error
	if c.resp, err = readHead(c.ur, c.resp[:0]); err != nil {
		return fmt.Errorf("reading the answer head: %w", err)
	}
	n, ok := contentLength(c.resp)
	if !ok || n < 0 || hasHeader(c.resp, "transfer-encoding") || len(c.resp) < 12 {
		return fmt.Errorf("answer without a Content-Length: %w", errUnsupported)
	}
	if c.method == "HEAD" {
		n = 0
	}
	if n > c.maxFrame || int64(n) > c.connWindow || int64(n) > c.streamWindow {
		return fmt.Errorf("an answer of %d bytes: more than a frame or a window: %w", n, errUnsupported)
	}
	head := len(c.resp)
	c.resp = append(c.resp, make([]byte, n)...) // grows once, then reuses
	if _, err := io.ReadFull(c.ur, c.resp[head:]); err != nil {
		return fmt.Errorf("reading the answer body: %w", err)
	}

	c.blk.Reset()
	fields := c.fields[:2]
	fields[0] = hpack.HeaderField{Name: ":status", Value: reuse(&c.status, c.resp[9:12])} // "HTTP/1.1 200 ..."
	fields[1] = hpack.HeaderField{Name: "content-length", Value: reuse(&c.length, strconv.AppendInt(c.payload[:0], int64(n), 10))}
	if ct, k := header(c.resp[:head], "content-type"); k == 1 {
		fields = append(fields, hpack.HeaderField{Name: "content-type", Value: reuse(&c.contentType, ct)})
	}
	for _, f := range fields {
		if err := c.enc.WriteField(f); err != nil {
			return fmt.Errorf("encoding the answer: %w", err)
		}
	}
	end := byte(flagEndHeaders)
	if n == 0 {
		end |= flagEndStream
	}
	c.out = appendFrame(c.out[:0], frameHeaders, end, id, c.blk.Bytes())
	if n > 0 {
		c.out = appendFrame(c.out, frameData, flagEndStream, id, c.resp[head:])
		c.connWindow -= int64(n)
	}
	if _, err := c.client.Write(c.out); err != nil {
		return fmt.Errorf("writing the answer: %w", err)
	}
	return nil
}

// reuse returns *s if it holds b, else stores b there as a new string.
func reuse(s *string, b []byte) string {
	if *s != string(b) {
		*s = string(b)
	}
	return *s
}

func appendFrame(b []byte, typ, flags byte, id uint32, payload []byte) []byte {
	n := len(payload)
	b = append(b, byte(n>>16), byte(n>>8), byte(n), typ, flags)
	b = binary.BigEndian.AppendUint32(b, id)
	return append(b, payload...)
}
