// Package h2wire is what the sidecar's HTTP/2 server (proxy/h2serve) and
// client (proxy/h2conn) share of the wire: a connection's framing, written
// by many goroutines with their flushes shared, and a cache of header
// names. The frames and HPACK are golang.org/x/net/http2's.
package h2wire

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/watertight/watertight/proxy/internal/rawio"
)

// MinFrameSize is every peer's SETTINGS_MAX_FRAME_SIZE until it says more.
const MinFrameSize = 16384

// writeBufferSize holds frames until they are flushed together; net/http's
// HTTP/2 server and client use 4 KiB too.
const writeBufferSize = 4 << 10

// Conn is one connection's framing. Framer is read by one goroutine (the
// connection's reader) and written by any, under Lock.
type Conn struct {
	Framer *http2.Framer
	// Names is the writers' header-name cache; under Lock.
	Names Names

	nc       net.Conn
	wr       io.Writer // nc, written with raw system calls (proxy/internal/rawio)
	peer     string
	mu       sync.Mutex
	waiting  atomic.Int32 // writers holding or waiting for mu
	bw       *bufio.Writer
	enc      *hpack.Encoder
	table    *smallTable // the encoder when not nil, in enc's place (small.go)
	block    []byte
	err      error // the first write error: the connection is done
	maxFrame atomic.Uint32

	headers *headerReader // the reader's
}

// NewConn frames nc; peer names the other end in errors.
func NewConn(nc net.Conn, peer string) *Conn {
	c := &Conn{nc: nc, wr: rawio.NewWriter(nc), peer: peer}
	c.maxFrame.Store(MinFrameSize)
	c.bw = bufio.NewWriterSize(stickyWriter{c}, writeBufferSize)
	c.Framer = http2.NewFramer(c.bw, bufio.NewReaderSize(rawio.NewReader(nc), 4<<10))
	// One DATA frame reused for every read instead of one per frame: both
	// readers (h2serve's and h2conn's) copy a frame's data before they read
	// the next, as they must anyway (its bytes live in the Framer's buffer).
	c.Framer.SetReuseFrames()
	c.enc = hpack.NewEncoder(blockWriter{c})
	c.headers = newHeaderReader()
	return c
}

// ReadFrame reads the next frame for the connection's reader. A header
// block comes whole, HEADERS and CONTINUATION frames decoded together, as
// the Framer's own ReadFrame returns it when given ReadMetaHeaders (which
// must stay nil), checked the same way, within Framer.MaxHeaderListSize.
// The *http2.MetaHeadersFrame is the connection's own, reused: like a DATA
// frame, it is valid until the next ReadFrame.
func (c *Conn) ReadFrame() (http2.Frame, error) { return c.headers.next(c.Framer) }

// stickyWriter writes to the connection and keeps the first error; a
// failed write closes the connection, so that its reader ends too.
type stickyWriter struct{ c *Conn }

func (w stickyWriter) Write(p []byte) (int, error) {
	if w.c.err != nil {
		return 0, w.c.err
	}
	n, err := w.c.wr.Write(p)
	if err != nil {
		w.c.err = fmt.Errorf("writing to %s: %w", w.c.peer, err)
		_ = w.c.nc.Close()
	}
	return n, err
}

type blockWriter struct{ c *Conn }

func (b blockWriter) Write(p []byte) (int, error) {
	b.c.block = append(b.c.block, p...)
	return len(p), nil
}

// Lock takes the write side.
func (c *Conn) Lock() {
	c.waiting.Add(1)
	c.mu.Lock()
}

// Unlock flushes, unless another writer is already waiting: it will
// flush, and what both wrote leaves in one write. It returns the
// connection's write error, if any.
func (c *Conn) Unlock() error {
	var err error
	if c.waiting.Add(-1) == 0 {
		err = c.bw.Flush()
	}
	if c.err != nil {
		err = c.err // the first, which says what was being written to
	}
	c.mu.Unlock()
	return err
}

// Release gives up the write side without flushing, for a writer about to
// write again at once (a request's body after its HEADERS): its next
// Unlock sends both in one write. Another writer waiting flushes anyway.
func (c *Conn) Release() {
	c.waiting.Add(-1)
	c.mu.Unlock()
}

// WriteString writes raw bytes (the client preface); under Lock.
func (c *Conn) WriteString(s string) { _, _ = c.bw.WriteString(s) }

// Err is the connection's write error; under Lock.
func (c *Conn) Err() error { return c.err }

// SmallTable has the connection's header blocks encoded with a small
// dynamic table searched linearly (small.go) instead of x/net's encoder:
// for the app side, where the encoder's CPU counts more than a few bytes.
// Before the first block.
func (c *Conn) SmallTable() {
	t := newSmallTable()
	c.table = &t
}

// StartBlock begins a header block; under Lock.
func (c *Conn) StartBlock() {
	c.block = c.block[:0]
	if c.table != nil {
		c.block = c.table.startBlock(c.block)
	}
}

// Encode adds a field to the block; under Lock.
func (c *Conn) Encode(name, value string) {
	if c.table != nil {
		c.block = c.table.appendField(c.block, name, value, false)
		return
	}
	_ = c.enc.WriteField(hpack.HeaderField{Name: name, Value: value})
}

// EncodeLiteral adds a field without putting it in the HPACK table; under
// Lock. For values that change with every request (a deadline in
// milliseconds): indexed, each would be a new table entry evicting an older
// one, churning the encoder's lookup maps for nothing a later request could
// reuse.
func (c *Conn) EncodeLiteral(name, value string) {
	if c.table != nil {
		c.block = c.table.appendField(c.block, name, value, true)
		return
	}
	_ = c.enc.WriteField(hpack.HeaderField{Name: name, Value: value, Sensitive: true})
}

// WriteBlock writes the block as HEADERS and, past the peer's frame size,
// CONTINUATION frames; under Lock.
func (c *Conn) WriteBlock(id uint32, end bool) {
	_ = writeBlock(c.Framer, id, c.block, int(c.maxFrame.Load()), end)
}

// writeBlock writes block as a HEADERS frame and CONTINUATION frames of at
// most size bytes each.
func writeBlock(fr *http2.Framer, id uint32, block []byte, size int, end bool) error {
	first := block[:min(len(block), size)]
	block = block[len(first):]
	err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndStream: end, EndHeaders: len(block) == 0})
	for err == nil && len(block) > 0 {
		frag := block[:min(len(block), size)]
		block = block[len(frag):]
		err = fr.WriteContinuation(id, len(block) == 0, frag)
	}
	return err
}

// MaxFrame is the largest frame the peer reads.
func (c *Conn) MaxFrame() uint32 { return c.maxFrame.Load() }

// SetMaxFrame applies the peer's SETTINGS_MAX_FRAME_SIZE.
func (c *Conn) SetMaxFrame(v uint32) { c.maxFrame.Store(v) }

// SetHeaderTableSize applies the peer's SETTINGS_HEADER_TABLE_SIZE; it
// takes the lock itself.
func (c *Conn) SetHeaderTableSize(v uint32) {
	c.mu.Lock()
	c.SetHeaderTableSizeLocked(v)
	c.mu.Unlock()
}

// SetHeaderTableSizeLocked is SetHeaderTableSize under Lock.
func (c *Conn) SetHeaderTableSizeLocked(v uint32) {
	if c.table != nil {
		c.table.setLimit(v)
		return
	}
	c.enc.SetMaxDynamicTableSizeLimit(v)
}
