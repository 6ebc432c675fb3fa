package rawio

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/watertight/watertight/internal/poll"
)

// pair returns the two ends of a loopback TCP connection.
func pair(t testing.TB) (a, b *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listening: %v", err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	ac, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("dialling: %v", err)
	}
	bc, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { ac.Close(); bc.Close() })
	return ac.(*net.TCPConn), bc.(*net.TCPConn)
}

// A write larger than both socket buffers fills them, so it must wait in
// the poller for room (EAGAIN, then readiness) and carry on where it
// stopped; the reader sees every byte in order, then io.EOF itself.
func TestLargeWriteWaitsForRoomAndArrivesWhole(t *testing.T) {
	a, b := pair(t)
	if err := a.SetWriteBuffer(16 << 10); err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 8<<20)
	_, _ = rand.Read(data)
	written := make(chan error, 1)
	go func() {
		n, err := NewWriter(a).Write(data)
		if err == nil && n != len(data) {
			err = io.ErrShortWrite
		}
		_ = a.CloseWrite()
		written <- err
	}()
	var got bytes.Buffer
	r := NewReader(b)
	buf := make([]byte, 1500) // small reads: many calls, some finding nothing yet
	for {
		n, err := r.Read(buf)
		got.Write(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("read after %d bytes: %v", got.Len(), err)
		}
		if n == 0 {
			t.Fatal("Read returned 0 bytes and no error")
		}
	}
	if err := <-written; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("read %d bytes, not the %d written (or not the same)", got.Len(), len(data))
	}
}

func TestZeroByteReadTakesNothing(t *testing.T) {
	a, b := pair(t)
	if _, err := a.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	r := NewReader(b)
	if n, err := r.Read(nil); n != 0 || err != nil {
		t.Fatalf("Read(nil) = %d, %v; want 0, nil", n, err)
	}
	var one [1]byte
	if n, err := r.Read(one[:]); n != 1 || err != nil || one[0] != 'x' {
		t.Fatalf("Read = %d, %v, %q; want the byte written", n, err, one[:n])
	}
}

// The errors a caller sees are net.Conn's, word for word, for what the
// poller reports (a deadline, a closed connection) and for what the
// kernel does (a reset).
func TestErrorsAreNetConns(t *testing.T) {
	t.Run("read deadline", func(t *testing.T) {
		_, b := pair(t)
		_ = b.SetReadDeadline(time.Now().Add(-time.Second))
		want := readErr(b)
		got := readErr(NewReader(b))
		same(t, got, want)
		if ne, ok := got.(net.Error); !ok || !ne.Timeout() || !errors.Is(got, os.ErrDeadlineExceeded) {
			t.Fatalf("%v: not a timeout", got)
		}
	})
	// Writes: the Writer's, and WriteThenWait's through it, whose wait
	// must not let it past a write deadline.
	for _, wr := range writes {
		t.Run("write deadline/"+wr.name, func(t *testing.T) {
			a, _ := pair(t)
			_ = a.SetWriteDeadline(time.Now().Add(-time.Second))
			_, want := a.Write([]byte("x"))
			_, got := wr.write(a, []byte("x"))
			same(t, got, want)
		})
		t.Run("write after close/"+wr.name, func(t *testing.T) {
			a, _ := pair(t)
			_ = a.Close()
			_, got := wr.write(a, []byte("x"))
			_, want := a.Write([]byte("x"))
			same(t, got, want)
		})
		t.Run("write after reset/"+wr.name, func(t *testing.T) {
			a1, b1 := pair(t)
			a2, b2 := pair(t)
			for _, b := range []*net.TCPConn{b1, b2} {
				_ = b.SetLinger(0)
				_ = b.Close()
			}
			// Once the reset has reached each socket, a write fails with
			// EPIPE or ECONNRESET, the same for both.
			poll.Until(t, 10*time.Second, "the resets to arrive", func() bool {
				return !NewReader(a1).(*Reader).Idle() && !NewReader(a2).(*Reader).Idle()
			})
			_, want := a1.Write([]byte("x"))
			_, got := wr.write(a2, []byte("x"))
			same(t, addrless(got, a2), addrless(want, a1))
			var se *os.SyscallError
			if !errors.As(got, &se) || se.Syscall != "write" {
				t.Fatalf("%v: not an *os.SyscallError from write", got)
			}
		})
	}
	t.Run("read after close", func(t *testing.T) {
		_, b := pair(t)
		r := NewReader(b)
		_ = b.Close()
		same(t, readErr(r), readErr(b))
		if !errors.Is(readErr(r), net.ErrClosed) {
			t.Fatal("not net.ErrClosed")
		}
	})
	t.Run("reset", func(t *testing.T) {
		// Two pairs, one read through net.Conn and one through a Reader,
		// each reset by its peer (SO_LINGER 0 makes Close send RST).
		a1, b1 := pair(t)
		a2, b2 := pair(t)
		for _, a := range []*net.TCPConn{a1, a2} {
			_ = a.SetLinger(0)
			_ = a.Close()
		}
		want := readErr(b1)
		got := readErr(NewReader(b2))
		same(t, addrless(got, b2), addrless(want, b1))
		if !errors.Is(got, syscall.ECONNRESET) {
			t.Fatalf("%v: not ECONNRESET", got)
		}
		var se *os.SyscallError
		if !errors.As(got, &se) || se.Syscall != "read" {
			t.Fatalf("%v: not an *os.SyscallError from read", got)
		}
	})
	t.Run("end", func(t *testing.T) {
		a, b := pair(t)
		_ = a.Close()
		if err := readErr(NewReader(b)); err != io.EOF {
			t.Fatalf("read at the end = %v, want io.EOF itself", err)
		}
	})
}

// writes are the two ways to write a connection: Writer.Write, and
// Reader.WriteThenWait through it.
var writes = []struct {
	name  string
	write func(c *net.TCPConn, p []byte) (int, error)
}{
	{"Write", func(c *net.TCPConn, p []byte) (int, error) { return NewWriter(c).Write(p) }},
	{"WriteThenWait", func(c *net.TCPConn, p []byte) (int, error) {
		return NewReader(c).(*Reader).WriteThenWait(NewWriter(c).(*Writer), p)
	}},
}

// waitEnds are the two ways a wait in the poller ends without bytes: a
// deadline and a close, with the error a read then reports.
var waitEnds = []struct {
	name string
	end  func(c *net.TCPConn)
	is   error
}{
	{"deadline", func(c *net.TCPConn) { _ = c.SetReadDeadline(time.Unix(1, 0)) }, os.ErrDeadlineExceeded},
	{"close", func(c *net.TCPConn) { _ = c.Close() }, net.ErrClosed},
}

// A read parked in the poller wakes when a deadline passes or the
// connection closes: h1serve ends its client watch with the first, and
// shutdowns rely on the second.
func TestParkedReadWakes(t *testing.T) {
	for _, tc := range waitEnds {
		t.Run(tc.name, func(t *testing.T) {
			_, b := pair(t)
			done := make(chan error, 1)
			go func() { done <- readErr(NewReader(b)) }()
			// A read with nothing to take waits in the poller ("IO wait")
			// and not before.
			poll.Until(t, 10*time.Second, "the read to wait in the poller", func() bool {
				select {
				case err := <-done:
					t.Fatalf("read returned before anything happened: %v", err)
				default:
				}
				return poll.InIOWait("rawio.(*Reader).Read(") == 1
			})
			tc.end(b)
			if err := <-done; !errors.Is(err, tc.is) {
				t.Fatalf("woken read = %v, want %v", err, tc.is)
			}
		})
	}
}

// Waited tells a read that found its bytes at once from one that waited
// for them in the poller, and each Read tells its own.
func TestWaited(t *testing.T) {
	a, b := pair(t)
	r := NewReader(b).(*Reader)
	buf := make([]byte, 8)
	if _, err := a.Write([]byte("now")); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 10*time.Second, "the bytes to arrive", func() bool { return poll.Queued(t, b) == 3 })
	if n, err := r.Read(buf); err != nil || string(buf[:n]) != "now" {
		t.Fatalf("Read = %q, %v; want now", buf[:n], err)
	}
	if r.Waited() {
		t.Error("a read whose bytes were there says it waited")
	}
	done := make(chan error, 1)
	go func() {
		_, err := r.Read(buf)
		done <- err
	}()
	poll.Until(t, 10*time.Second, "the read to wait in the poller", func() bool {
		return poll.InIOWait("rawio.(*Reader).Read(") == 1
	})
	if _, err := a.Write([]byte("later")); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !r.Waited() {
		t.Error("a read that waited in the poller says it did not")
	}
}

// Idle answers without waiting: true on a quiet connection, false once the
// peer has sent something or closed it.
func TestIdle(t *testing.T) {
	a, b := pair(t)
	r := NewReader(b).(*Reader)
	if !r.Idle() {
		t.Fatal("a quiet connection is not idle")
	}
	if _, err := a.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 10*time.Second, "the unasked byte to make the connection not idle", func() bool { return !r.Idle() })

	a2, b2 := pair(t)
	r2 := NewReader(b2).(*Reader)
	_ = a2.Close()
	poll.Until(t, 10*time.Second, "the peer's close to make the connection not idle", func() bool { return !r2.Idle() })
	// Idle read without waiting; Read still reads the end after it.
	if err := readErr(r2); err != io.EOF {
		t.Fatalf("read after the close = %v, want io.EOF", err)
	}
}

// Without a file descriptor (a net.Pipe here) there is nothing raw to do:
// the connection itself is returned.
func TestWithoutAFileDescriptorTheConnItself(t *testing.T) {
	p1, p2 := net.Pipe()
	defer p1.Close()
	defer p2.Close()
	if r := NewReader(p1); r != io.Reader(p1) {
		t.Fatalf("NewReader(pipe) = %T", r)
	}
	if w := NewWriter(p1); w != io.Writer(p1) {
		t.Fatalf("NewWriter(pipe) = %T", w)
	}
}

// Neither a read and a write, nor Idle, nor WriteThenWait allocate: they
// run per request.
func TestNoAllocations(t *testing.T) {
	a, b := pair(t)
	r, w := NewReader(b), NewWriter(a)
	msg := []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	buf := make([]byte, 64)
	// WriteThenWait's peer echoes, so that its answer comes after the
	// request, as the method requires; the echo allocates nothing either.
	c, d := pair(t)
	go func() {
		var echo [64]byte
		for {
			n, err := d.Read(echo[:])
			if err != nil {
				return
			}
			if _, err := d.Write(echo[:n]); err != nil {
				return
			}
		}
	}()
	rc, wc := NewReader(c).(*Reader), NewWriter(c).(*Writer)
	allocs := testing.AllocsPerRun(200, func() {
		if !r.(*Reader).Idle() {
			t.Fatal("not idle between exchanges")
		}
		if _, err := w.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(r, buf[:len(msg)]); err != nil {
			t.Fatal(err)
		}
		if _, err := rc.WriteThenWait(wc, msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(rc, buf[:len(msg)]); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per write and read, want 0", allocs)
	}
}

func readErr(r io.Reader) error {
	var b [16]byte
	_, err := r.Read(b[:])
	return err
}

func same(t *testing.T, got, want error) {
	t.Helper()
	if got == nil || want == nil || got.Error() != want.Error() {
		t.Fatalf("error %q, net.Conn's %q", got, want)
	}
}

// addrless replaces c's addresses in err's text, for errors from two
// different connections.
func addrless(err error, c net.Conn) error {
	if err == nil {
		return nil
	}
	s := strings.ReplaceAll(err.Error(), c.LocalAddr().String(), "LOCAL")
	return errors.New(strings.ReplaceAll(s, c.RemoteAddr().String(), "REMOTE"))
}

// WriteThenWait sends the request and returns only once the answer is
// there to read, having waited in the poller rather than read first; the
// answer then reads whole.
func TestWriteThenWaitReturnsOnceTheAnswerIsThere(t *testing.T) {
	a, b := pair(t)
	r := NewReader(a).(*Reader)
	req, answer := []byte("GET / HTTP/1.1\r\n\r\n"), []byte("HTTP/1.1 204 No Content\r\n\r\n")
	type result struct {
		n   int
		err error
	}
	done := make(chan result, 1)
	go func() {
		n, err := r.WriteThenWait(NewWriter(a).(*Writer), req)
		done <- result{n, err}
	}()
	got := make([]byte, len(req))
	if _, err := io.ReadFull(b, got); err != nil || !bytes.Equal(got, req) {
		t.Fatalf("the peer read %q, %v; want the request", got, err)
	}
	poll.Until(t, 10*time.Second, "WriteThenWait to wait in the poller", func() bool {
		select {
		case res := <-done:
			t.Fatalf("WriteThenWait returned (%d, %v) before any answer", res.n, res.err)
		default:
		}
		return poll.InIOWait("rawio.(*Reader).WriteThenWait(") == 1
	})
	if _, err := b.Write(answer); err != nil {
		t.Fatal(err)
	}
	if res := <-done; res.n != len(req) || res.err != nil {
		t.Fatalf("WriteThenWait = %d, %v; want %d, nil", res.n, res.err, len(req))
	}
	buf := make([]byte, 64)
	n, err := r.Read(buf)
	if err != nil || !bytes.Equal(buf[:n], answer) {
		t.Fatalf("Read after the wait = %q, %v; want the answer", buf[:n], err)
	}
}

// A request larger than the socket buffers cannot go in one call: the
// rest is written waiting for room, every byte arrives in order, and the
// answer after it still reads.
func TestWriteThenWaitWithAFullSendBuffer(t *testing.T) {
	a, b := pair(t)
	if err := a.SetWriteBuffer(16 << 10); err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 8<<20)
	_, _ = rand.Read(data)
	go func() {
		got := make([]byte, len(data))
		if _, err := io.ReadFull(b, got); err != nil || !bytes.Equal(got, data) {
			_, _ = b.Write([]byte("bad"))
			return
		}
		_, _ = b.Write([]byte("ok!"))
	}()
	r := NewReader(a).(*Reader)
	if n, err := r.WriteThenWait(NewWriter(a).(*Writer), data); n != len(data) || err != nil {
		t.Fatalf("WriteThenWait = %d, %v; want %d, nil", n, err, len(data))
	}
	buf := make([]byte, 3)
	if _, err := io.ReadFull(r, buf); err != nil || string(buf) != "ok!" {
		t.Fatalf("the answer = %q, %v; want ok! (the peer got every byte in order)", buf, err)
	}
}

// A wait that ends without an answer (the connection closed, a deadline)
// reports nothing itself: the write succeeded, and the next Read meets
// the same end and says so as net.Conn would.
func TestWriteThenWaitLeavesTheWaitsEndToRead(t *testing.T) {
	for _, tc := range waitEnds {
		t.Run(tc.name, func(t *testing.T) {
			a, b := pair(t)
			r := NewReader(a).(*Reader)
			done := make(chan error, 1)
			go func() {
				n, err := r.WriteThenWait(NewWriter(a).(*Writer), []byte("ping"))
				if err == nil && n != 4 {
					err = io.ErrShortWrite
				}
				done <- err
			}()
			got := make([]byte, 4)
			if _, err := io.ReadFull(b, got); err != nil {
				t.Fatal(err)
			}
			poll.Until(t, 10*time.Second, "WriteThenWait to wait in the poller", func() bool {
				return poll.InIOWait("rawio.(*Reader).WriteThenWait(") == 1
			})
			tc.end(a)
			if err := <-done; err != nil {
				t.Fatalf("WriteThenWait = %v, want nil: the write was done", err)
			}
			if err := readErr(r); !errors.Is(err, tc.is) {
				t.Fatalf("Read after the wait = %v, want %v", err, tc.is)
			}
		})
	}
}
