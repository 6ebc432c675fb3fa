package h1conn

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/watertight/watertight/internal/poll"
)

// TestConcurrentMixNeverCrossesAnswers drives many goroutines through one
// Transport with every way a request can end: read to the end (length,
// chunked with trailers, close-delimited), closed early, cancelled after
// the head, cut by a deadline while the server still writes. A pooled
// connection handed back with anything of an old answer left on it would
// give some later request another request's body, so every body read to
// the end is checked against the one its request asked for. The race
// detector watches the pool and the body's states; goleak (TestMain) the
// context watchers.
func TestConcurrentMixNeverCrossesAnswers(t *testing.T) {
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		id := r.URL.Query().Get("id")
		body := strings.Repeat(id+";", 50)
		switch r.URL.Query().Get("kind") {
		case "length":
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			_, _ = io.WriteString(w, body)
		case "chunked":
			w.Header().Set("Trailer", "X-Id")
			for i := range 3 {
				_, _ = io.WriteString(w, body[i*len(body)/3:(i+1)*len(body)/3])
				w.(http.Flusher).Flush()
			}
			w.Header().Set("X-Id", id)
		case "close":
			w.Header().Set("Connection", "close")
			_, _ = io.WriteString(w, body)
		case "slow": // a first part, then nothing until the client goes
			w.Header().Set("Content-Length", strconv.Itoa(2*len(body)))
			_, _ = io.WriteString(w, body)
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		}
	})
	tr, fb := newTransport(t)
	tr.MaxIdlePerHost = 4 // fewer than the goroutines: the surplus is closed

	const workers, each = 12, 60
	kinds := []string{"length", "chunked", "close", "length-early-close", "cancel-after-head", "slow-deadline"}
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for i := range each {
				id := fmt.Sprintf("w%di%d", w, i)
				if err := oneOf(t.Context(), tr, srv.URL, id, kinds[rng.IntN(len(kinds))]); err != nil {
					errs <- fmt.Errorf("%s: %w", id, err)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := fb.n.Load(); n != 0 {
		t.Errorf("%d requests went to the fallback; all of these are h1conn's", n)
	}
	if n := idleCount(tr, srv.Listener.Addr().String()); n > tr.MaxIdlePerHost {
		t.Errorf("%d idle connections kept, MaxIdlePerHost is %d", n, tr.MaxIdlePerHost)
	}
	// Nothing is left open but the idle connections: once they are closed,
	// the server sees every connection it accepted closed.
	tr.CloseIdleConnections()
	poll.Until(t, wait, "the server to see every connection closed", func() bool {
		return srv.closed.Load() == srv.opened.Load()
	})
}

// oneOf sends one request of the given kind and checks what it got.
func oneOf(ctx context.Context, tr *Transport, base, id, kind string) error {
	serverKind := strings.SplitN(kind, "-", 2)[0]
	want := strings.Repeat(id+";", 50)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if kind == "slow-deadline" {
		ctx, cancel = context.WithTimeout(ctx, 20*time.Millisecond)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"?kind="+serverKind+"&id="+id, nil)
	if err != nil {
		return err
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		if kind == "slow-deadline" && ctx.Err() != nil {
			return nil // the deadline came before the head: fine
		}
		return fmt.Errorf("round trip: %w", err)
	}
	defer resp.Body.Close()
	switch kind {
	case "length-early-close":
		buf := make([]byte, 10)
		if _, err := io.ReadFull(resp.Body, buf); err != nil {
			return fmt.Errorf("reading the first bytes: %w", err)
		}
		if string(buf) != want[:10] {
			return fmt.Errorf("first bytes %q, want %q", buf, want[:10])
		}
		return resp.Body.Close()
	case "cancel-after-head":
		cancel()
		_, err := io.ReadAll(resp.Body)
		if err == nil {
			return nil // the whole answer was already buffered: fine
		}
		if ctx.Err() == nil {
			return fmt.Errorf("read failed without the cancel: %w", err)
		}
		return nil
	case "slow-deadline":
		got, err := io.ReadAll(resp.Body)
		if err == nil {
			return fmt.Errorf("a body the server never finished read to the end (%d bytes)", len(got))
		}
		if !strings.HasPrefix(want+want, string(got)) {
			return fmt.Errorf("a cut-off body that is not a prefix of its own answer: %q", got)
		}
		return nil
	}
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("reading the body: %w", err)
	}
	if string(got) != want {
		return fmt.Errorf("body %.40q…, want %.40q…", got, want)
	}
	if kind == "chunked" && resp.Trailer.Get("X-Id") != id {
		return fmt.Errorf("trailer X-Id %q, want %q", resp.Trailer.Get("X-Id"), id)
	}
	return nil
}
