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
}

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
	return n, err
}

func (c *conn) Write(p []byte) (int, error) {
	var n int
	var err error
	r, rok := c.r.(*rawio.Reader)
	w, wok := c.w.(*rawio.Writer)
	if c.whole && rok && wok {
		n, err = r.WriteThenWait(w, p)
	} else {
		n, err = c.w.Write(p)
	}
	c.written += int64(n)
	return n, err
}

// flush sends what the request left in the buffer. When that is the whole
// request, nothing can have answered it yet, so the write waits for the
// answer in the poller instead of the read that would find nothing
// (rawio.Reader.WriteThenWait): one system call less per exchange. The
// upstream sent nothing before it: get probed the connection.
func (c *conn) flush() error {
	c.whole = c.written == 0
	err := c.bw.Flush()
	c.whole = false
	return err
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
