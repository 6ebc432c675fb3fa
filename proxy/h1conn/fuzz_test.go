package h1conn

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"
)

// outcome is what a client made of an answer.
type outcome struct {
	err     error // from RoundTrip or from reading the body
	status  int
	header  http.Header
	body    []byte
	trailer http.Header
}

func fetchOutcome(ctx context.Context, rt http.RoundTripper, url string) outcome {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return outcome{err: err}
	}
	resp, err := rt.RoundTrip(req)
	if err != nil {
		return outcome{err: err}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return outcome{err: err}
	}
	return outcome{status: resp.StatusCode, header: resp.Header, body: body, trailer: resp.Trailer}
}

// FuzzResponseAgainstNetHTTP gives the same bytes, as the whole answer to a
// GET, to this transport and to net/http's, which parse it with the same
// http.ReadResponse but drive it differently (1xx loop, head limit, body
// hand-over, connection bookkeeping). Both must fail, or both must give
// the same status, header, body and trailer.
//
// Where they differ by design, the input is not compared:
//   - a final 101 Switching Protocols: net/http's Transport returns it as
//     the answer (golang.org/issue/26161); this one refuses it, since
//     requests that ask for an upgrade go to Fallback;
//   - more than max1xxResponses informational answers: this transport
//     refuses them, net/http's bounds only their total size.
//   - a head between this transport's default limit (1 MiB + 4 KiB) and
//     net/http's (10 MiB).
func FuzzResponseAgainstNetHTTP(f *testing.F) {
	for _, seed := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: abc\r\n\r\n",
		"HTTP/1.1 200 OK\r\n\r\nuntil the connection closes",
		"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nold",
		"HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n",
		"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\nraw",
		strings.Repeat("HTTP/1.1 103 Early Hints\r\n\r\n", 11) + "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 OK\r\n\r\n",
		"HTTP/1.1 2000 OK\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab",
		"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nabc",
		"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
		"",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, answer []byte) {
		srv := newRawServer(t, func(_ int64, c net.Conn, br *bufio.Reader) {
			if _, err := http.ReadRequest(br); err != nil {
				return
			}
			_, _ = c.Write(answer) // and close
		})
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()

		tr, _ := newTransport(t)
		std := &http.Transport{DisableCompression: true, DisableKeepAlives: true}
		defer std.CloseIdleConnections()
		got := fetchOutcome(ctx, tr, srv.url)
		want := fetchOutcome(ctx, std, srv.url)
		if ctx.Err() != nil {
			t.Fatalf("a client hung on an answer the server ended: h1conn %v, net/http %v", got.err, want.err)
		}

		switch {
		case want.err == nil && want.status == http.StatusSwitchingProtocols:
			return
		case got.err != nil && want.err == nil && strings.Contains(got.err.Error(), "informational responses"):
			return
		case errors.Is(got.err, errHeadTooLarge) && len(answer) > defaultMaxHeaderSize:
			return
		}
		if (got.err != nil) != (want.err != nil) {
			t.Fatalf("%q:\nh1conn:   %v\nnet/http: %v", answer, got.err, want.err)
		}
		if got.err != nil {
			return
		}
		if got.status != want.status {
			t.Errorf("%q: status %d, net/http %d", answer, got.status, want.status)
		}
		// Same parser, same map: net/http's Transport adds nor removes
		// anything when it decompresses nothing.
		if !reflect.DeepEqual(got.header, want.header) {
			t.Errorf("%q: header %v, net/http %v", answer, got.header, want.header)
		}
		if !bytes.Equal(got.body, want.body) {
			t.Errorf("%q: body %q, net/http %q", answer, got.body, want.body)
		}
		if !reflect.DeepEqual(got.trailer, want.trailer) {
			t.Errorf("%q: trailer %v, net/http %v", answer, got.trailer, want.trailer)
		}
	})
}
