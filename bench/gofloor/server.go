package main

import (
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"time"

	"github.com/watertight/watertight/bench/internal/copybuf"
	"github.com/watertight/watertight/proxy/h1conn"
)

// The server modes: net/http's server in front of the sidecar's HTTP/1.1
// client, with or without ReverseProxy.
var handlers = map[string]func(upstream string) http.Handler{"srv": forwardHandler, "rp": reverseProxy}

// newServer is net/http's server as the sidecar configures it for HTTP/1.1.
func newServer(h http.Handler) *http.Server {
	var p http.Protocols
	p.SetHTTP1(true)
	return &http.Server{Handler: h, Protocols: &p, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Hour}
}

// client is h1conn as the sidecar sets it up: net/http's Transport behind it
// for what h1conn hands back.
func client() *h1conn.Transport {
	std := &http.Transport{MaxIdleConnsPerHost: 4096, DisableCompression: true}
	d := &net.Dialer{Timeout: 5 * time.Second}
	return &h1conn.Transport{DialContext: d.DialContext, Fallback: std, MaxIdlePerHost: 4096}
}

// forwardHandler sends the server's request itself upstream: no clone, no
// hop-by-hop clean-up, the answer's headers taken over as they are. Enough
// for the benchmark's traffic, and the least a handler can do.
func forwardHandler(upstream string) http.Handler {
	t := client()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.URL.Scheme, r.URL.Host, r.RequestURI = "http", upstream, ""
		resp, err := t.RoundTrip(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		h := w.Header()
		for k, v := range resp.Header {
			h[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		buf := copybuf.Pool{}.Get()
		defer copybuf.Pool{}.Put(buf)
		_, _ = io.CopyBuffer(w, resp.Body, buf)
	})
}

func reverseProxy(upstream string) http.Handler {
	target := &url.URL{Scheme: "http", Host: upstream}
	return &httputil.ReverseProxy{
		Rewrite:    func(pr *httputil.ProxyRequest) { pr.SetURL(target) },
		Transport:  client(),
		BufferPool: copybuf.Pool{},
	}
}
