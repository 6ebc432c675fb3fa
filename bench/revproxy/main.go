// Command revproxy is the benchmark's floor: a bare net/http/httputil
// ReverseProxy to one upstream, with nothing of Watertight's (no routing,
// bulkhead, deadlines or metrics). Whatever Watertight costs beyond this is
// the price of its compartments.
//
// To be a fair floor it is set up the way the sidecar is: HTTP/1.1 and h2c on
// one port, the upstream protocol following the client's (HTTP/1.1 in →
// HTTP/1.1 out, h2c in → h2c out, like the sidecar's protocol "auto"), a
// large idle pool, no compression, and pooled copy buffers.
package main

import (
	"flag"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	_ "net/http/pprof" // only served when -pprof is set, on its own port
	"time"

	"github.com/watertight/watertight/bench/internal/copybuf"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:18082", "listen address")
	upstream := flag.String("upstream", "127.0.0.1:18080", "upstream host:port")
	bufPool := flag.Bool("buffer-pool", true, "recycle the 32 KiB copy buffers (as the sidecar does); false allocates one per response")
	pprofAddr := flag.String("pprof", "", "if set, serve /debug/pprof/ on this address (for bench/run.sh --profile)")
	flag.Parse()

	if *pprofAddr != "" {
		go func() { log.Fatal(http.ListenAndServe(*pprofAddr, nil)) }()
	}

	h1 := newProxy(*upstream, transport(false), *bufPool)
	h2 := newProxy(*upstream, transport(true), *bufPool)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 2 {
			h2.ServeHTTP(w, r)
			return
		}
		h1.ServeHTTP(w, r)
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
		HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: 4096},
	}
	log.Printf("revproxy listening on %s → %s", *addr, *upstream)
	log.Fatal(srv.ListenAndServe())
}

func newProxy(upstream string, t *http.Transport, bufPool bool) *httputil.ReverseProxy {
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = upstream
		},
		Transport: t,
	}
	if bufPool {
		rp.BufferPool = copybuf.Pool{}
	}
	return rp
}

// transport is one connection pool to the upstream: HTTP/1.1 only, or h2c
// (HTTP/2 with prior knowledge) only.
func transport(h2c bool) *http.Transport {
	var p http.Protocols
	if h2c {
		p.SetUnencryptedHTTP2(true)
	} else {
		p.SetHTTP1(true)
	}
	return &http.Transport{
		Protocols:           &p,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 4096,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
}
