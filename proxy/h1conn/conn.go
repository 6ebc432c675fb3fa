package h1conn

import (
	"bufio"
	"context"
	"errors"
	"io"
	"math"
	"net"
	"syscall"
	"time"

	"github.com/watertight/watertight/proxy/internal/rawio"
)

const noLimit = math.MaxInt64

var errHeadTooLarge = errors.New("response head larger than the limit")

// conn is one connection to an endpoint, used by one request at a time.
// Its buffers live as long as it does.
type conn struct {
	addr      string
	nc        net.Conn
	r         io.Reader // nc, read and written with raw system calls (proxy/internal/rawio)
	w         io.Writer
	br        *bufio.Reader
	bw        *bufio.Writer
	abort     func() // closes nc; a method value made once, not per request
	reused    bool
	idleSince time.Time

	limit   int64 // bytes the next reads may still take (the head limit)
	written int64 // bytes written for the current request
	whole   bool  // the next write carries the whole request (flush)

	// How a whole request's answer is awaited (flush).
	early  uint8 // credit for answers that were there as the write returned: read first while > 0
	writes uint8 // whole requests written while early is 0, to sample every sampleEvery-th
	sample bool  // the next Read tells whether this request's answer was early
}

// An early answer adds earlyCredit (up to maxEarly), a late one takes one
// away: the connection reads first while more than a third of its answers
// are early. The costs are uneven: reading first when the answer is late
// costs a read that finds nothing, waiting when it is early costs a park
// and a poll on the request's path. While answers come late, one whole
// request in sampleEvery is still read first, to notice when they come
// early again.
const (
	earlyCredit = 2
	maxEarly    = 8
	sampleEvery = 16
)

func (t *Transport) dial(ctx context.Context, addr string) (*conn, error) {
	nc, err := t.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err // net.OpError "dial" names the address
	}
	c := &conn{addr: addr, nc: nc, r: rawio.NewReader(nc), w: rawio.NewWriter(nc), limit: noLimit}
	c.br = bufio.NewReader(c)
	c.bw = bufio.NewWriter(c)
	c.abort = c.close
	return c, nil
}

func (c *conn) Read(p []byte) (int, error) {
	if c.limit <= 0 {
		return 0, errHeadTooLarge
	}
	if int64(len(p)) > c.limit {
		p = p[:c.limit]
	}
	n, err := c.r.Read(p)
	c.limit -= int64(n)
	if c.sample {
		c.sample = false
		if r, ok := c.r.(*rawio.Reader); ok && !r.Waited() {
			c.early = min(c.early+earlyCredit, maxEarly)
		} else if c.early > 0 {
			c.early--
		}
	}
	return n, err
}

func (c *conn) Write(p []byte) (int, error) {
	var n int
	var err error
	r, rok := c.r.(*rawio.Reader)
	w, wok := c.w.(*rawio.Writer)
	switch {
	case c.whole && rok && wok && !c.readFirst():
		n, err = r.WriteThenWait(w, p)
	case c.whole && rok && wok:
		n, err = w.Write(p)
		c.sample = err == nil
	default:
		n, err = c.w.Write(p)
	}
	c.written += int64(n)
	return n, err
}

// flush sends what the request left in the buffer. When that is the whole
// request, nothing can have answered it yet, so the write may wait for the
// answer in the poller instead of a read that would find nothing
// (rawio.Reader.WriteThenWait): one system call less per exchange. The
// upstream sent nothing before it: get probed the connection.
//
// But an upstream on the same host often answers while the write is still
// in the kernel: the write wakes it, it takes the CPU, and its answer is in
// the socket when the write returns. Then the wait costs more than the read
// it saves: the goroutine parks, and the scheduler must poll to find it
// ready again, a few µs later, on every request (at 2,000 req/s this was a
// third of the sidecar's added p50, docs/forwarding-path.md, step 15). So
// the connection reads first while its answers are early, and waits while
// they are late (earlyCredit).
func (c *conn) flush() error {
	c.whole = c.written == 0
	err := c.bw.Flush()
	c.whole = false
	return err
}

// readFirst says whether this whole request's answer is read at once after
// the write rather than awaited in the poller (flush).
func (c *conn) readFirst() bool {
	if c.early > 0 {
		return true
	}
	c.writes++
	return c.writes%sampleEvery == 1
}

func (c *conn) close() { _ = c.nc.Close() }

// alive says whether an idle connection can carry a request: the upstream
// has neither closed it nor sent anything unasked. net/http's Transport
// learns this from a read goroutine parked on every idle connection; one
// non-blocking read when the connection is taken costs a syscall instead.
// A connection without a file descriptor cannot be asked and is taken.
func (c *conn) alive() bool {
	r, ok := c.r.(*rawio.Reader)
	return !ok || r.Idle()
}

// isReset: the peer reset the connection.
func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}
