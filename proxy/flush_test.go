package proxy

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// part is one piece of an upstream's body; here says it had arrived before
// it was asked for (a Read of it would not wait).
type part struct {
	data string
	here bool
}

// scriptedBody is an answer's body that arrives as its parts say, and
// tells (Ready) as h2conn's does whether the next Read would wait; its end
// is the last part, with empty data. It and the writer below log what the
// copy does, in order.
type scriptedBody struct {
	parts []part
	log   *[]string
}

func (b *scriptedBody) Ready() bool { return len(b.parts) > 0 && b.parts[0].here }

func (b *scriptedBody) Read(p []byte) (int, error) {
	next := b.parts[0]
	b.parts = b.parts[1:]
	if next.data == "" {
		*b.log = append(*b.log, "end")
		return 0, io.EOF
	}
	*b.log = append(*b.log, "read "+next.data)
	return copy(p, next.data), nil
}

func (b *scriptedBody) Close() error { return nil }

// opaqueBody is the same body for a copier that cannot ask it.
type opaqueBody struct{ b *scriptedBody }

func (o opaqueBody) Read(p []byte) (int, error) { return o.b.Read(p) }
func (o opaqueBody) Close() error               { return nil }

type copyLog struct {
	*httptest.ResponseRecorder
	log *[]string
}

func (w copyLog) Write(p []byte) (int, error) {
	*w.log = append(*w.log, "write "+string(p))
	return w.ResponseRecorder.Write(p)
}

func (w copyLog) Flush() {
	*w.log = append(*w.log, "flush")
	w.ResponseRecorder.Flush()
}

// KeepLengthUnknown: the writer can leave the length undeclared (h2serve's
// can; a recorder has no length to declare).
func (w copyLog) KeepLengthUnknown() { *w.log = append(*w.log, "length unknown") }

// plainLog is a writer that cannot (net/http's servers).
type plainLog struct {
	http.ResponseWriter
	flush func()
}

func (w plainLog) Flush() { w.flush() }

// An answer of unknown length (a gRPC call's) is flushed before every read
// that would wait for the upstream, and only then: one that came whole
// leaves in one write over HTTP/2, its trailers with it; over HTTP/1.1 its
// trailers still need the chunked encoding a flush chooses. A body that
// cannot tell is flushed after every write, as ReverseProxy does.
func TestCopyFlushesOnlyBeforeAWait(t *testing.T) {
	whole := []part{{"msg", true}, {"", true}}
	streamed := []part{{"one", true}, {"two", false}, {"", false}}
	for _, tc := range []struct {
		name   string
		parts  []part
		opaque bool // the body cannot tell whether a read waits
		plain  bool // the writer cannot keep the length unknown
		proto  int
		want   string
	}{
		{"whole over HTTP/2", whole, false, false, 2, "length unknown, read msg, write msg, end"},
		{"whole over HTTP/1.1", whole, false, false, 1, "length unknown, read msg, write msg, end, flush"},
		{"streamed over HTTP/2", streamed, false, false, 2, "length unknown, read one, write one, flush, read two, write two, flush, end"},
		{"first part late", []part{{"one", false}, {"", true}}, false, false, 2, "length unknown, flush, read one, write one, end"},
		{"body that cannot tell", whole, true, false, 2, "flush, read msg, write msg, flush, end"},
		{"writer that cannot keep the length unknown", whole, false, true, 2, "flush, read msg, write msg, flush, end"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var log []string
			body := &scriptedBody{parts: tc.parts, log: &log}
			res := &http.Response{
				StatusCode: http.StatusOK, ContentLength: -1, Body: body,
				Header:  http.Header{"Content-Type": {"application/grpc"}},
				Trailer: http.Header{"Grpc-Status": {"0"}},
			}
			if tc.opaque {
				res.Body = opaqueBody{body}
			}
			req := httptest.NewRequest(http.MethodPost, "/pkg.Svc/Call", nil)
			req.ProtoMajor = tc.proto
			w := copyLog{httptest.NewRecorder(), &log}
			var app http.ResponseWriter = w
			if tc.plain {
				app = plainLog{w, w.Flush}
			}
			(&compartment{}).deliver(app, req, res)
			if got := strings.Join(log, ", "); got != tc.want {
				t.Errorf("copy did\n  %s\nwant\n  %s", got, tc.want)
			}
			if got := w.Result().Trailer.Get("Grpc-Status"); got != "0" {
				t.Errorf("trailer Grpc-Status %q, want 0", got)
			}
		})
	}
}

// The app's request body says whether a Read would wait through relay's
// and retry's wrappers, so that h2conn can send a body that has come with
// its request's head; a retry's reader replaying what it kept never waits.
func TestRequestBodyReadyThroughTheWrappers(t *testing.T) {
	var log []string
	app := &scriptedBody{parts: []part{{"msg", true}, {"more", false}, {"", false}}, log: &log}
	wrapped := &noopClose{r: app}
	if !wrapped.Ready() {
		t.Error("relay's wrapper: not Ready with the app's body ready")
	}
	if (&noopClose{r: strings.NewReader("x")}).Ready() {
		t.Error("relay's wrapper: Ready over a body that cannot tell")
	}
	req := httptest.NewRequest(http.MethodPost, "/", wrapped)
	rp := (&retryPolicy{limit: 1 << 10}).replayable(req)
	first := req.Body.(readier)
	if !first.Ready() {
		t.Fatal("first attempt: not Ready with the app's body ready")
	}
	buf := make([]byte, 16)
	if n, err := req.Body.Read(buf); n != 3 || err != nil {
		t.Fatalf("first attempt read %d, %v; want msg", n, err)
	}
	if first.Ready() {
		t.Error("first attempt: Ready with the app's next part not come")
	}
	retry := rp.next(req)
	if !retry.Body.(readier).Ready() {
		t.Error("the retry: not Ready with msg kept to replay")
	}
	if first.Ready() {
		t.Error("the first attempt's reader, cut off: Ready")
	}
}
