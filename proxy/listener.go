package proxy

import (
	"context"
	"errors"
	"log"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/watertight/watertight/composite"
	"github.com/watertight/watertight/proxy/h1serve"
	"github.com/watertight/watertight/proxy/h2serve"
)

// Server limits for the app-facing ports. The app is trusted more than the
// internet, but a stuck or buggy client must still not pin the sidecar.
const (
	maxHeaderBytes    = 60 << 10 // Envoy's default limit on request headers
	readHeaderTimeout = 10 * time.Second
	idleTimeout       = time.Hour // longer than app pools keep idle connections, to avoid close races
	maxStreams        = 4096      // HTTP/2 streams per connection; the bulkheads bound the real work
)

// listener is one bound port: an HTTP/1.1 and h2c (prior knowledge) server
// whose routes are swapped atomically by each config change.
type listener struct {
	name      string
	addr      net.Addr
	srv       *http.Server
	routes    atomic.Pointer[routes]
	pass      http.Handler // unknownHosts: passthrough
	log       *accessLogger
	acc       *acceptor
	fast      *h1serve.Server // the app-side HTTP/1.1 loop; nil when net/http's server takes everything
	h2        *h2serve.Server // the app-side h2c server behind fast; nil when net/http's serves h2c
	laneTaken func()          // Options.laneTaken
	done      chan struct{}
}

// newListener prepares a listener on ln; it serves once start is called
// (after its routes are set).
func newListener(name string, ln net.Listener, pass http.Handler, accessLog *accessLogger, errorLog *log.Logger, serve1, serve2 string, lane bool) *listener {
	l := &listener{name: name, addr: ln.Addr(), pass: pass, log: accessLog, done: make(chan struct{})}
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	l.srv = &http.Server{
		Handler:           l,
		Protocols:         &protocols,
		MaxHeaderBytes:    maxHeaderBytes,
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: maxStreams},
		ErrorLog:          errorLog,
		ConnContext:       connContext,
	}
	l.acc = newAcceptor(ln, l)
	if serve1 == HTTP1Watertight {
		l.fast = &h1serve.Server{
			Handler:           l,
			HandOff:           l.acc.hand,
			ConnContext:       connContext,
			HTTPServer:        l.srv,
			ReadHeaderTimeout: readHeaderTimeout,
			IdleTimeout:       idleTimeout,
		}
		if lane {
			l.fast.Lane = l
		}
		if serve2 == HTTP1Watertight {
			l.h2 = &h2serve.Server{
				Handler:              l,
				ConnContext:          connContext,
				HTTPServer:           l.srv,
				MaxConcurrentStreams: maxStreams,
				MaxHeaderBytes:       maxHeaderBytes,
				IdleTimeout:          idleTimeout,
			}
			if lane {
				l.h2.Lane = h2Lane{l}
			}
			// Its own goroutine: the loop lets go of the connection.
			l.fast.HandOffHTTP2 = func(c net.Conn) { go l.h2.ServeConn(c) }
		}
	}
	return l
}

// connContext attaches a transparent connection's original destination;
// a connection the app-side loop handed over is looked through.
func connContext(ctx context.Context, c net.Conn) context.Context {
	if nc, ok := c.(interface{ NetConn() net.Conn }); ok {
		c = nc.NetConn()
	}
	if sc, ok := c.(*sortedConn); ok {
		return context.WithValue(ctx, origDstKey{}, sc.dst)
	}
	return ctx
}

func (l *listener) start() {
	l.acc.start()
	go func() {
		defer close(l.done)
		if err := l.srv.Serve(l.acc); err != nil && !errors.Is(err, http.ErrServerClosed) {
			slog.Error("listener stopped", "listener", l.name, "address", l.addr.String(), "error", err)
		}
	}()
}

// ServeHTTP is the start of the request path: route, then the upstream's
// compartment does the rest.
func (l *listener) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rt := l.routes.Load()
	if rt.accessLog != nil && sampled(rt.accessLog.Sample) {
		rec := &accessRecord{start: time.Now(), listener: l.name}
		r = r.WithContext(context.WithValue(r.Context(), accessKey{}, rec))
		if r.Body != nil && r.Body != http.NoBody {
			r.Body = &countingBody{ReadCloser: r.Body, rec: rec}
		}
		w = &loggingWriter{ResponseWriter: w, rec: rec}
		defer l.log.write(rec, r)
		defer func() { rec.completed = true }() // not reached when the copy aborts
	}
	l.serve(w, r, rt)
}

func (l *listener) serve(w http.ResponseWriter, r *http.Request, rt *routes) {
	if r.Method == http.MethodConnect {
		writeLocalReply(w, r, reasonConnect, "CONNECT is not supported: send plain HTTP requests (the sidecar is not a tunnel)")
		return
	}
	if call, ok := rt.composites.Match(r); ok {
		// A composite's path wins over the upstream the Host names. Its
		// node calls go through the compartments as requests of their
		// own, so they must not write into this request's access record;
		// the record gets the composite's name and outcome instead.
		if rec := accessRecordOf(r.Context()); rec != nil {
			var outcome string
			ctx := context.WithValue(r.Context(), accessKey{}, (*accessRecord)(nil))
			r = r.WithContext(composite.WithOutcome(ctx, &outcome))
			defer func() {
				rec.mu.Lock()
				rec.composite, rec.result = call.Name(), outcome
				rec.mu.Unlock()
			}()
		}
		call.ServeHTTP(w, r)
		return
	}
	c := rt.route(r)
	if c == nil {
		if rt.passthrough && rt.mode != "upstream" {
			l.pass.ServeHTTP(w, r)
			return
		}
		writeLocalReply(w, r, reasonNoRoute, "no upstream for host "+quoteHost(r.Host))
		return
	}
	if r.ProtoMajor == 1 && r.ContentLength != 0 {
		// Let the upstream's answer stream back while the app is still
		// sending (HTTP/1.1 handlers are half duplex by default).
		_ = http.NewResponseController(w).EnableFullDuplex()
	}
	if relayable(r) {
		c.relay(w, r) // the hot case, past ReverseProxy
		return
	}
	c.proxy.ServeHTTP(w, r)
}

// shutdown stops accepting and waits for in-flight requests until ctx ends,
// then closes what is left.
func (l *listener) shutdown(ctx context.Context) error {
	// Both servers drain at once: the app-side loop's connections and those
	// it handed to net/http's server.
	fast, h2 := make(chan error, 1), make(chan error, 1)
	if l.fast != nil {
		go func() { fast <- l.fast.Shutdown(ctx) }()
	} else {
		fast <- nil
	}
	if l.h2 != nil {
		go func() { h2 <- l.h2.Shutdown(ctx) }()
	} else {
		h2 <- nil
	}
	err := l.srv.Shutdown(ctx)
	if err != nil {
		_ = l.srv.Close()
	}
	err = errors.Join(err, <-fast, <-h2)
	<-l.done
	return errors.Join(err, l.acc.closeTunnels(ctx))
}

func quoteHost(h string) string {
	if len(h) > 256 {
		h = h[:256] + "…"
	}
	return `"` + h + `"`
}
