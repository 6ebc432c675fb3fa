package h2serve_test

import (
	"bytes"
	"net/http"
	"runtime"
	"strconv"
	"sync"
	"testing"

	"github.com/watertight/watertight/internal/poll"
)

// goroutineID is the running goroutine's number, from its stack's first
// line ("goroutine 42 [running]:").
func goroutineID() int {
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	f := bytes.Fields(buf)
	id, _ := strconv.Atoi(string(f[1]))
	return id
}

// workers counts the goroutines in the server's worker loop.
func workers() int { return inStacks("h2serve.(*conn).worker(") }

// idleWorkers counts the goroutines waiting for a connection's next stream.
func idleWorkers() int { return inStacks("h2serve.(*conn).nextStream(") }

// inStacks counts frame in every goroutine's stack (these frames are not
// recursive: one per goroutine).
func inStacks(frame string) int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return bytes.Count(buf, []byte(frame))
}

// A connection's streams one after another run on one goroutine, whose
// stack has grown already, rather than on a new one each.
func TestStreamsReuseAWorker(t *testing.T) {
	ids := make(chan int, 3)
	srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ids <- goroutineID()
	}))
	c := h2Client(t)
	for range 3 {
		get(t, c, srv.url)
		// The answer reaches the client before its worker is back waiting;
		// a stream that came in between would rightly get a new worker.
		poll.Until(t, waitLimit, "the worker waiting for the next stream", func() bool { return idleWorkers() == 1 })
	}
	first := recv(t, ids, "a handler")
	for range 2 {
		if id := recv(t, ids, "a handler"); id != first {
			t.Fatalf("handlers ran on goroutines %d and %d, want one worker", first, id)
		}
	}
}

// Past a burst a connection keeps at most maxIdleWorkers (16) waiting, and
// none once it ends.
func TestIdleWorkersAreBoundedAndEndWithTheConnection(t *testing.T) {
	const burst = 40
	release := make(chan struct{})
	var started sync.WaitGroup
	started.Add(burst)
	srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started.Done()
		<-release
	}))
	c := h2Client(t)
	var done sync.WaitGroup
	for range burst {
		done.Go(func() {
			res, err := c.Get(srv.url)
			if err != nil {
				t.Error(err) // not Fatal: this is not the test's goroutine
				return
			}
			res.Body.Close()
		})
	}
	started.Wait() // every handler on a worker of its own
	if n := workers(); n < burst {
		t.Fatalf("%d workers for %d running streams", n, burst)
	}
	close(release)
	done.Wait()
	poll.Until(t, waitLimit, "the idle workers past the bound to end", func() bool { return workers() <= 16 })
	if n := workers(); n == 0 {
		t.Fatal("no worker kept for the next streams")
	}
	c.CloseIdleConnections()
	poll.Until(t, waitLimit, "the workers to end with the connection", func() bool { return workers() == 0 })
}
