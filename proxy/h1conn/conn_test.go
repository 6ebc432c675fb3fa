package h1conn

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"

	"github.com/watertight/watertight/internal/poll"
)

// A connection whose answers are there as soon as the request is written
// reads them first; once they come late for long enough, it waits for them
// in the poller again. Driven by hand on one connection, so that "there"
// and "late" are facts, not timing: an early answer is in the socket
// before the read begins, a late one is sent once the read waits.
func TestReadsFirstWhileAnswersAreEarly(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	tr, _ := newTransport(t)
	c, err := tr.dial(t.Context(), ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	peer, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	pr := bufio.NewReader(peer)

	const req, ans = "GET / HTTP/1.1\r\nHost: a\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
	// write sends a whole request, as a round trip does.
	write := func() error {
		c.written = 0
		if _, err := c.bw.WriteString(req); err != nil {
			return err
		}
		return c.flush()
	}
	// readAnswer reads the answer through the connection, as the head's
	// reader does.
	readAnswer := func() error {
		buf := make([]byte, len(ans))
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != ans {
			return fmt.Errorf("read %q, %v; want the answer", buf, err)
		}
		return nil
	}
	// exchange writes a whole request and reads its answer, which the peer
	// sends before the read (early) or once the exchange waits in waitIn.
	exchange := func(i int, early bool, waitIn string) {
		t.Helper()
		if early {
			// The write must return without waiting for the answer (a
			// connection that would wait cannot be given an early one),
			// then the answer is in the socket before the read begins.
			written := make(chan error, 1)
			go func() { written <- write() }()
			if err := recv(t, written, fmt.Sprintf("request %d written without waiting for its answer", i)); err != nil {
				t.Fatal(err)
			}
			takeRequest(t, pr, req)
			if _, err := io.WriteString(peer, ans); err != nil {
				t.Fatal(err)
			}
			poll.Until(t, wait, "the answer in the socket", func() bool { return poll.Queued(t, c.nc.(syscall.Conn)) == len(ans) })
			if err := readAnswer(); err != nil {
				t.Fatalf("request %d: %v", i, err)
			}
			return
		}
		done := make(chan error, 1)
		go func() {
			if err := write(); err != nil {
				done <- err
				return
			}
			done <- readAnswer()
		}()
		takeRequest(t, pr, req)
		poll.Until(t, wait, fmt.Sprintf("request %d to wait in %s", i, waitIn), func() bool {
			return poll.InIOWait(waitIn, "h1conn.TestReadsFirstWhileAnswersAreEarly") == 1
		})
		if _, err := io.WriteString(peer, ans); err != nil {
			t.Fatal(err)
		}
		if err := recv(t, done, "the answer"); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	const read, waitWritten = "rawio.(*Reader).Read(", "rawio.(*Reader).WriteThenWait("

	exchange(0, true, "") // a new connection reads first, and its answer is early
	if c.early != earlyCredit {
		t.Fatalf("after an early answer early = %d, want %d", c.early, earlyCredit)
	}
	for i := 1; i <= earlyCredit; i++ { // late answers use the credit up, reading first
		exchange(i, false, read)
	}
	if c.early != 0 {
		t.Fatalf("after %d late answers early = %d, want 0", earlyCredit, c.early)
	}
	for i := range sampleEvery - 1 { // then wait in the poller, but for the sample
		exchange(earlyCredit+1+i, false, waitWritten)
	}
	exchange(earlyCredit+sampleEvery, true, "") // the sample: read first, and early again
	if c.early != earlyCredit {
		t.Fatalf("after a sampled early answer early = %d, want %d", c.early, earlyCredit)
	}
	for i := range maxEarly { // early answers add credit up to maxEarly
		exchange(earlyCredit+sampleEvery+1+i, true, "")
	}
	if c.early != maxEarly {
		t.Fatalf("after many early answers early = %d, want %d", c.early, maxEarly)
	}
}

// takeRequest reads one request from the peer's side and checks it.
func takeRequest(t *testing.T, pr *bufio.Reader, want string) {
	t.Helper()
	buf := make([]byte, len(want))
	if _, err := io.ReadFull(pr, buf); err != nil || string(buf) != want {
		t.Fatalf("the peer read %q, %v; want %q", buf, err, want)
	}
}
