package proxy

import (
	"context"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"time"
)

// accessRecord is one request's access-log line, filled in as the request
// goes down its path: the listener knows the app's side (status, bytes),
// the compartment the upstream's (endpoint, attempts, queue wait, result).
type accessRecord struct {
	start    time.Time
	listener string

	mu        sync.Mutex // hedged attempts fill it at once
	upstream  string
	composite string // a composite call answered it (its node calls are logged by nobody)
	endpoint  string
	result    string
	fallback  string
	attempts  int
	queueWait time.Duration

	// The listener's writer fills these, on the request's goroutine.
	status    int
	bytesOut  int64
	bytesIn   int64
	completed bool
}

type accessKey struct{}

func accessRecordOf(ctx context.Context) *accessRecord {
	rec, _ := ctx.Value(accessKey{}).(*accessRecord)
	return rec
}

// attempt notes one attempt sent to an endpoint.
func (rec *accessRecord) attempt(endpoint string) {
	rec.mu.Lock()
	rec.attempts++
	rec.endpoint = endpoint
	rec.mu.Unlock()
}

// waited notes time an attempt spent queued for a slot.
func (rec *accessRecord) waited(d time.Duration) {
	rec.mu.Lock()
	rec.queueWait += d
	rec.mu.Unlock()
}

func (rec *accessRecord) finish(upstream, result string) {
	rec.mu.Lock()
	rec.upstream, rec.result = upstream, result
	rec.mu.Unlock()
}

// accessLogger writes access-log lines as JSON, one per request.
type accessLogger struct{ log *slog.Logger }

func newAccessLogger(w io.Writer) *accessLogger {
	return &accessLogger{log: slog.New(slog.NewJSONHandler(w, nil))}
}

// sampled decides whether this request is logged.
func sampled(share float64) bool { return share >= 1 || rand.Float64() < share }

func (a *accessLogger) write(rec *accessRecord, r *http.Request) {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	result := rec.result
	if result == "" && rec.status != 0 {
		result = "local" // answered by the sidecar before any upstream (no route, CONNECT)
	}
	attrs := []slog.Attr{
		slog.String("listener", rec.listener),
		slog.String("method", r.Method),
		slog.String("authority", r.Host),
		slog.String("path", r.URL.Path),
		slog.String("protocol", r.Proto),
		slog.Int("status", rec.status),
		slog.String("result", result),
		slog.String("upstream", rec.upstream),
		slog.String("endpoint", rec.endpoint),
		slog.Float64("duration_ms", ms(time.Since(rec.start))),
		slog.Float64("queue_wait_ms", ms(rec.queueWait)),
		slog.Int("attempts", rec.attempts),
		slog.Int64("bytes_received", rec.bytesIn),
		slog.Int64("bytes_sent", rec.bytesOut),
	}
	if rec.fallback != "" {
		attrs = append(attrs, slog.String("fallback", rec.fallback))
	}
	if rec.composite != "" {
		attrs = append(attrs, slog.String("composite", rec.composite))
	}
	if !rec.completed {
		attrs = append(attrs, slog.Bool("aborted", true))
	}
	// The trace the app's request belongs to; the header itself passes
	// through untouched.
	if tp := r.Header.Get("Traceparent"); tp != "" {
		if parts := strings.Split(tp, "-"); len(parts) == 4 && len(parts[1]) == 32 {
			attrs = append(attrs, slog.String("trace_id", parts[1]))
		}
	}
	a.log.LogAttrs(context.Background(), slog.LevelInfo, "access", attrs...)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// loggingWriter notes what the app was sent. Unwrap lets
// http.ResponseController reach the connection (flushes, upgrades).
type loggingWriter struct {
	http.ResponseWriter
	rec *accessRecord
}

func (w *loggingWriter) WriteHeader(code int) {
	if w.rec.status == 0 && code >= 200 {
		w.rec.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *loggingWriter) Write(b []byte) (int, error) {
	if w.rec.status == 0 {
		w.rec.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.rec.bytesOut += int64(n)
	return n, err
}

func (w *loggingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// countingBody counts what the app sent.
type countingBody struct {
	io.ReadCloser
	rec *accessRecord
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.rec.mu.Lock()
	b.rec.bytesIn += int64(n)
	b.rec.mu.Unlock()
	return n, err
}
