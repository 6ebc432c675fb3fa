package h2wire

import (
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/watertight/watertight/internal/poll"
	"github.com/watertight/watertight/proxy/internal/rawio"
)

// countingConn counts the writes that reach the socket.
type countingConn struct {
	net.Conn
	writes atomic.Int32
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// pipe is a Conn over one end of a loopback TCP connection, and the other
// end.
func pipe(t *testing.T) (*Conn, *countingConn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer := <-accepted
	if peer == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { nc.Close(); peer.Close() })
	cc := &countingConn{Conn: nc}
	return NewConn(cc, "the test's peer"), cc, peer
}

// A writer that finds another waiting leaves the flush to it: both frames
// leave in one write.
func TestWritersShareAFlush(t *testing.T) {
	c, counted, peer := pipe(t)
	c.Lock()
	if err := c.Framer.WritePing(false, [8]byte{1}); err != nil {
		t.Fatal(err)
	}
	second := make(chan error, 1)
	go func() {
		c.Lock()
		_ = c.Framer.WritePing(false, [8]byte{2})
		second <- c.Unlock()
	}()
	poll.Until(t, 5*time.Second, "the second writer waits for the lock", func() bool { return c.waiting.Load() == 2 })
	if err := c.Unlock(); err != nil {
		t.Fatal(err)
	}
	if err := <-second; err != nil {
		t.Fatal(err)
	}
	if n := counted.writes.Load(); n != 1 {
		t.Fatalf("%d writes for two frames written back to back; want 1 (the first writer flushed though another was waiting)", n)
	}
	fr := http2.NewFramer(nil, peer)
	for want := byte(1); want <= 2; want++ {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		if p, ok := f.(*http2.PingFrame); !ok || p.Data[0] != want {
			t.Fatalf("frame %d: got %v", want, f)
		}
	}
}

// A header block larger than the peer's frame size goes as HEADERS and
// CONTINUATION frames that decode to the fields encoded.
func TestWriteBlockSplitsAtTheFrameSize(t *testing.T) {
	c, _, peer := pipe(t)
	long := strings.Repeat("v", 3*MinFrameSize)
	c.Lock()
	c.StartBlock()
	c.Encode(":status", "200")
	c.Encode("x-long", long)
	c.WriteBlock(1, true)
	if err := c.Unlock(); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(nil, peer)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	fr.MaxHeaderListSize = 1 << 20
	f, err := fr.ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	mh, ok := f.(*http2.MetaHeadersFrame)
	if !ok {
		t.Fatalf("got %T, want the HEADERS with its CONTINUATIONs", f)
	}
	if !mh.StreamEnded() || mh.PseudoValue("status") != "200" || len(mh.RegularFields()) != 1 || mh.RegularFields()[0].Value != long {
		t.Fatalf("decoded %d fields, END_STREAM %v", len(mh.Fields), mh.StreamEnded())
	}
}

// After a failed write every later one reports the first error, naming the
// peer, and the connection is closed so that its reader ends too.
func TestWriteErrorsStick(t *testing.T) {
	c, counted, peer := pipe(t)
	peer.Close()
	counted.Conn.Close()
	c.Lock()
	_ = c.Framer.WritePing(false, [8]byte{})
	err := c.Unlock()
	if err == nil || !strings.Contains(err.Error(), "the test's peer") {
		t.Fatalf("first write to a closed connection: %v", err)
	}
	c.Lock()
	if !errors.Is(c.Err(), net.ErrClosed) {
		t.Errorf("Err() = %v, want the first error", c.Err())
	}
	_ = c.Framer.WritePing(false, [8]byte{})
	if err2 := c.Unlock(); err2 == nil || err2.Error() != err.Error() {
		t.Fatalf("second write: %v, want the first error again", err2)
	}
	if _, rerr := counted.Conn.Read(make([]byte, 1)); rerr == nil || rerr == io.EOF {
		t.Fatalf("the connection was not closed: read %v", rerr)
	}
}

func TestNames(t *testing.T) {
	var n Names
	if got := n.Canonical("content-type"); got != "Content-Type" {
		t.Errorf("Canonical: %q", got)
	}
	if got := n.Lower("X-Request-Id"); got != "x-request-id" {
		t.Errorf("Lower: %q", got)
	}
	for i := range 2 * maxCachedNames {
		n.Lower("X-Name-" + strconv.Itoa(i))
	}
	if len(n) > maxCachedNames {
		t.Errorf("the cache grew to %d names; its bound is %d", len(n), maxCachedNames)
	}
	if got := n.Lower("X-Name-" + strconv.Itoa(2*maxCachedNames-1)); got != "x-name-"+strconv.Itoa(2*maxCachedNames-1) {
		t.Errorf("a name past the bound: %q", got)
	}
}

// A literal field reaches the peer as never indexed, so that a value that
// changes per request does not take over the HPACK table; the others are
// indexed, and a repeat is sent as a reference.
func TestEncodeLiteral(t *testing.T) {
	c, _, peer := pipe(t)
	fr := http2.NewFramer(nil, peer)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	for id := uint32(1); id <= 3; id += 2 {
		c.Lock()
		c.StartBlock()
		c.Encode(":status", "200")
		c.Encode("x-kept", "same")
		c.EncodeLiteral("x-request-timeout", strconv.Itoa(int(id))+"ms")
		c.WriteBlock(id, true)
		size := len(c.block)
		if err := c.Unlock(); err != nil {
			t.Fatal(err)
		}
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		var literal, kept hpack.HeaderField
		for _, hf := range f.(*http2.MetaHeadersFrame).RegularFields() {
			switch hf.Name {
			case "x-request-timeout":
				literal = hf
			case "x-kept":
				kept = hf
			}
		}
		if !literal.Sensitive || literal.Value != strconv.Itoa(int(id))+"ms" {
			t.Errorf("stream %d: the literal arrived as %+v, want never indexed", id, literal)
		}
		if kept.Sensitive || kept.Value != "same" {
			t.Errorf("stream %d: the indexed field arrived as %+v", id, kept)
		}
		if id == 3 && size > 1+1+1+len("x-request-timeout")+1+len("3ms") {
			t.Errorf("the second block is %d bytes: x-kept was not sent as a table reference", size)
		}
	}
}

// Over a socket the framing reads and writes with raw system calls
// (proxy/internal/rawio); frames cross both ways as before.
func TestSocketsUseRawIO(t *testing.T) {
	_, counted, peer := pipe(t)
	c := NewConn(counted.Conn, "the test's peer")
	if _, ok := c.wr.(*rawio.Writer); !ok {
		t.Fatalf("writes go through a %T, not a *rawio.Writer", c.wr)
	}
	c.Lock()
	_ = c.Framer.WritePing(false, [8]byte{1})
	if err := c.Unlock(); err != nil {
		t.Fatal(err)
	}
	pf := http2.NewFramer(peer, peer)
	f, err := pf.ReadFrame()
	if p, ok := f.(*http2.PingFrame); err != nil || !ok || p.Data[0] != 1 {
		t.Fatalf("the peer read %v, %v; want our PING", f, err)
	}
	if err := pf.WritePing(true, [8]byte{2}); err != nil {
		t.Fatal(err)
	}
	f, err = c.Framer.ReadFrame()
	if p, ok := f.(*http2.PingFrame); err != nil || !ok || p.Data[0] != 2 {
		t.Fatalf("read %v, %v; want the peer's PING", f, err)
	}
}
