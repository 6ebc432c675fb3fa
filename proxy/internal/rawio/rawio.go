// Package rawio reads and writes a connected socket with raw system calls:
// the same non-blocking read(2) and write(2) net.Conn makes, waiting for
// readiness in the same runtime poller, but without telling the Go
// scheduler that the goroutine is in a system call.
//
// Why by hand: net.Conn enters the scheduler's system-call state around
// every read and write. On a proxy's core that state is what wakes the
// runtime's monitor thread (sysmon) out of its deep sleep and, when a
// loopback write runs the receiver's TCP input inline for longer than
// the monitor's 20 µs tick, has the monitor take the P away and hand it
// to another thread: context switches, futex wake-ups and a thread to
// reacquire the P on the way out, none of which buys anything on a
// non-blocking socket, whose calls return as soon as the kernel has
// copied the bytes (docs/forwarding-path.md, step 5). The runtime's own
// rule for raw system calls is that they must not block; a non-blocking
// socket's never do: with nothing to read or no room to write they return
// EAGAIN, and the wait happens in the poller, as net.Conn's does.
//
// What a caller sees is net.Conn's behaviour: the same bytes, io.EOF at
// the end, deadlines and Close honoured, and errors of the same form
// (*net.OpError around *os.SyscallError). The package's tests hold the
// two side by side.
package rawio

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"
)

// maxRW is internal/poll's cap on one call's bytes: some kernels refuse
// larger ones.
const maxRW = 1 << 30

// call is one connection's raw calls in one direction: the callback
// syscall.RawConn runs, made once, and the state it works on.
type call struct {
	nc  net.Conn
	raw syscall.RawConn
	fn  func(fd uintptr) bool
	p   []byte
	n   int
	err error
}

// init finds nc's file descriptor; false when it has none (a net.Pipe, a
// TLS connection), whose own Read and Write are then used.
func (c *call) init(nc net.Conn, fn func(fd uintptr) bool) bool {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	c.nc, c.raw, c.fn = nc, raw, fn
	return true
}

// do runs the callback on p through RawConn.Write (write) or Read, which
// hold the descriptor's lock, check the deadline and wait in the poller
// whenever the callback returns false.
func (c *call) do(p []byte, write bool, op string) (int, error) {
	c.p, c.n, c.err = p, 0, nil
	var err error
	if write {
		err = c.raw.Write(c.fn)
	} else {
		err = c.raw.Read(c.fn)
	}
	n := c.n
	c.p = nil
	if err == nil {
		err = c.err
	}
	if err != nil {
		return n, opError(c.nc, op, err)
	}
	return n, nil
}

// Reader reads one connection. It is not for concurrent use.
type Reader struct {
	call
	probing bool    // Idle's read: EAGAIN is the answer, not a reason to wait
	one     [1]byte // Idle's buffer, here so that it does not escape per call
	then    *Writer // WriteThenWait's writer, until its callback has written
	wp      []byte  // what it writes
	waited  bool    // it wrote them and waited: nothing to read here
	parked  bool    // the last Read found nothing at first and waited in the poller
}

// Writer writes one connection. It is not for concurrent use.
type Writer struct{ call }

// NewReader reads nc: raw reads when it has a file descriptor, nc's own
// Read otherwise.
func NewReader(nc net.Conn) io.Reader {
	r := &Reader{}
	if r.init(nc, r.read) {
		return r
	}
	return nc
}

// NewWriter writes nc: raw writes when it has a file descriptor, nc's own
// Write otherwise.
func NewWriter(nc net.Conn) io.Writer {
	w := &Writer{}
	if w.init(nc, w.write) {
		return w
	}
	return nc
}

// Read reads like net.Conn: at most len(p) bytes, once some are there.
func (r *Reader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil // net.Conn's answer too: a zero-byte read(2) would look like the end
	}
	if len(p) > maxRW {
		p = p[:maxRW]
	}
	r.parked = false
	n, err := r.do(p, false, "read")
	if err == nil && n == 0 {
		return 0, io.EOF
	}
	return n, err
}

// Waited reports whether the last Read found nothing at first and waited
// for the peer in the poller; false when its first read(2) found bytes
// (or the end, or an error).
func (r *Reader) Waited() bool { return r.parked }

// errAgain is what Idle's read found: nothing to take.
var errAgain = errors.New("nothing to read")

// Idle reports whether the connection has nothing to read and the peer
// has not closed it, without waiting: one read of a byte that finds
// nothing. A byte it does find is consumed, so it is for connections
// that are dropped when it says false (an HTTP/1.1 client's idle
// connection, whose server may have closed it or sent something unasked).
func (r *Reader) Idle() bool {
	// Not through do: its error would be dressed (allocated) per request.
	r.probing, r.p, r.n, r.err = true, r.one[:], 0, nil
	err := r.raw.Read(r.fn)
	r.probing, r.p = false, nil
	return err == nil && r.err == errAgain
}

// WriteThenWait writes p, a whole request, through w (w.Write, the same
// connection's Writer) and then waits until the connection has something
// to read, or has ended, without reading: the read(2) a Read right after
// the write would make finds nothing, since the peer cannot have answered
// a request it has not had. That read was one of every HTTP/1.1
// exchange's system calls.
//
// Why the wait loses nothing: RawConn.Read forgets the descriptor's
// readiness before it calls back, and p is written in the callback, after
// that. Every byte of the answer arrives after the write began, so the
// poller sees it arrive after the forgetting. Bytes the peer sent before
// p, unasked, would not wake the wait: the caller must know there are
// none (h1conn asks Idle before it reuses a connection).
//
// It returns what w.Write returns. An error of the wait itself (a read
// deadline, a close) is left to the next Read, which meets it again; when
// the wait cannot even begin, p is written all the same.
func (r *Reader) WriteThenWait(w *Writer, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil // nothing asked, so nothing to wait for
	}
	r.then, r.wp, r.waited, r.n, r.err = w, p, false, 0, nil
	_ = r.raw.Read(r.fn)
	n, err, wrote := r.n, r.err, r.then == nil
	r.then, r.wp, r.waited = nil, nil, false
	if !wrote {
		return w.Write(p)
	}
	return n, err
}

func (r *Reader) read(fd uintptr) bool {
	if r.then != nil || r.waited {
		return r.writeThenWait()
	}
	for {
		n, errno := Read(fd, r.p)
		switch errno {
		case 0:
			r.n = n
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			if r.probing {
				r.err = errAgain
				return true
			}
			r.parked = true
			return false // the poller waits for readability, then calls again
		default:
			r.err = os.NewSyscallError("read", errno)
			return true
		}
	}
}

// writeThenWait is WriteThenWait's callback: write (waiting for room in
// the poller, if need be, as Writer does), ask the poller to wait for
// readability (false), then, woken, stop without reading.
func (r *Reader) writeThenWait() bool {
	if r.waited {
		return true
	}
	w := r.then
	r.then = nil
	r.n, r.err = w.Write(r.wp)
	r.waited = r.err == nil
	return !r.waited
}

// Write writes all of p like net.Conn: on a full send buffer it waits for
// room in the poller, and it stops early only on an error.
func (w *Writer) Write(p []byte) (int, error) { return w.do(p, true, "write") }

func (w *Writer) write(fd uintptr) bool {
	for w.n < len(w.p) {
		rest := w.p[w.n:]
		if len(rest) > maxRW {
			rest = rest[:maxRW]
		}
		n, errno := Write(fd, rest)
		switch errno {
		case 0:
			if n == 0 {
				w.err = io.ErrUnexpectedEOF // as internal/poll answers a write of nothing
				return true
			}
			w.n += n
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false // the poller waits for room, then calls again
		default:
			w.err = os.NewSyscallError("write", errno)
			return true
		}
	}
	return true
}

// opError dresses err as net.Conn's Read and Write do. The poller's own
// errors (a deadline, a closed connection) come back from syscall.RawConn
// already as *net.OpError with Op "raw-read" or "raw-write".
func opError(nc net.Conn, op string, err error) error {
	if oe, ok := err.(*net.OpError); ok {
		oe.Op = op
		return oe
	}
	local := nc.LocalAddr()
	return &net.OpError{Op: op, Net: local.Network(), Source: local, Addr: nc.RemoteAddr(), Err: err}
}

// Read is read(2) on fd without the scheduler's system-call state; fd
// must be non-blocking.
func Read(fd uintptr, p []byte) (int, syscall.Errno) {
	n, _, errno := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	return int(n), errno
}

// Write is write(2) on fd without the scheduler's system-call state; fd
// must be non-blocking.
func Write(fd uintptr, p []byte) (int, syscall.Errno) {
	n, _, errno := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	return int(n), errno
}
