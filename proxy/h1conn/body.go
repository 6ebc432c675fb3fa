package h1conn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/watertight/watertight/proxy/internal/reqctx"
)

var errBodyClosed = errors.New("h1conn: read on closed response body")

const (
	bodyOpen int32 = iota
	bodyEOF
	bodyClosed
)

// body is a response body read from its connection. The connection is the
// body's until the end (then it goes back to the pool) or until Close or
// the context's end (then it is closed: what is left of the answer is not
// worth reading, and may never come).
type body struct {
	t   *Transport
	c   *conn
	ctx context.Context
	rc  io.ReadCloser // http.ReadResponse's: framing and trailers; nil for a plain answer
	// remaining is what a plain answer's body (readResponse) still has to
	// come from c: read here, with no reader of net/http's in between.
	remaining int64
	stop      reqctx.Registration // the context watcher's
	keep      bool                // the connection may carry another request
	state     atomic.Int32
}

func (b *body) Read(p []byte) (int, error) {
	switch b.state.Load() {
	case bodyEOF:
		return 0, io.EOF // rc is no longer ours to touch
	case bodyClosed:
		return 0, errBodyClosed
	}
	var n int
	var err error
	if b.rc != nil {
		n, err = b.rc.Read(p)
	} else {
		n, err = b.readRaw(p)
	}
	switch {
	case err == io.EOF:
		if b.state.CompareAndSwap(bodyOpen, bodyEOF) {
			b.t.release(b.c, b.stop, b.keep)
		}
	case err != nil:
		if b.ctx.Err() != nil {
			err = context.Cause(b.ctx)
		}
		err = fmt.Errorf("reading response body from %s: %w", b.c.addr, err)
		if b.state.CompareAndSwap(bodyOpen, bodyClosed) {
			b.t.release(b.c, b.stop, false)
		}
	}
	return n, err
}

// readRaw reads a plain answer's body of known length as net/http's body
// would: the end comes with the last bytes, and an end before them is
// io.ErrUnexpectedEOF.
func (b *body) readRaw(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if int64(len(p)) > b.remaining {
		p = p[:b.remaining]
	}
	n, err := b.c.br.Read(p)
	b.remaining -= int64(n)
	switch {
	case err == io.EOF && b.remaining > 0:
		err = io.ErrUnexpectedEOF
	case err == nil && b.remaining == 0:
		err = io.EOF
	}
	return n, err
}

// Close before the end closes the connection; it does not drain what is
// left, as the standard library's client body would, since a stuck upstream
// may never send it.
func (b *body) Close() error {
	if b.state.CompareAndSwap(bodyOpen, bodyClosed) {
		b.t.release(b.c, b.stop, false)
	}
	return nil
}
