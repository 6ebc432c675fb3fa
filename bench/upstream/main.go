// Command upstream is the benchmark's origin server: HTTP/1.1 and h2c (prior
// knowledge) on one port, answering every request with the same tiny body,
// optionally after a fixed delay. It does as little as possible so that the
// benchmark measures the proxies, not the origin. gRPC calls on the same
// port (h2c, Content-Type application/grpc...) go to gRPC's standard health
// service, which is what `fortio load -grpc` calls: the gRPC rows measure
// unary calls, trailers and all, through each proxy to a real gRPC server.
package main

import (
	"flag"
	"log"
	"net/http"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:18080", "listen address")
	size := flag.Int("size", 64, "response body size in bytes")
	delay := flag.Duration("delay", 0, "fixed delay before answering (0: none)")
	flag.Parse()

	body := []byte(strings.Repeat("x", *size))
	length := strconv.Itoa(len(body))
	// Served through net/http's HTTP/2 server (grpc.Server.ServeHTTP) rather
	// than a port of its own, so that every proxy reaches it as it reaches
	// the rest: the same address, connections and protocol.
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer()) // "" is SERVING
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/_proto" {
			// For the harness's sanity check: which protocol did the proxy
			// in front of us use to reach us?
			_, _ = w.Write([]byte(r.Proto + "\n"))
			return
		}
		if *delay > 0 {
			time.Sleep(*delay)
		}
		if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			gs.ServeHTTP(w, r)
			return
		}
		// Set the header map directly: Header().Set canonicalises the key on
		// every call, and the origin should cost as little as possible.
		hdr := w.Header()
		hdr["Content-Type"] = []string{"text/plain"}
		hdr["Content-Length"] = []string{length}
		_, _ = w.Write(body)
	})

	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Addr:              *addr,
		Handler:           h,
		Protocols:         &p,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       time.Hour,
		// As many streams per connection as the sidecar's listener allows, so
		// h2 clients that multiplex are never held back by the origin.
		HTTP2: &http.HTTP2Config{MaxConcurrentStreams: 4096},
	}
	log.Printf("upstream listening on %s (body %d bytes, delay %s)", *addr, *size, *delay)
	log.Fatal(srv.ListenAndServe())
}
