package proxy

import (
	"log"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"time"
)

// headerPassthrough marks requests the sidecar passed through untouched, so
// that one which comes back (its Host pointed at the sidecar itself) is
// refused instead of looping.
const headerPassthrough = "X-Watertight-Passthrough"

// newPassthrough forwards requests for hosts no upstream claims, as they are,
// to the host they name, with no compartment and no policy
// (unknownHosts: passthrough). It has its own connection pool.
func newPassthrough(errorLog *log.Logger) http.Handler {
	var p http.Protocols
	p.SetHTTP1(true)
	t := &http.Transport{
		Protocols:             &p,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			for _, h := range forwardingHeaders {
				if v, ok := pr.In.Header[h]; ok {
					pr.Out.Header[h] = v
				}
			}
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = pr.In.Host
			if dst, ok := pr.In.Context().Value(origDstKey{}).(netip.AddrPort); ok {
				pr.Out.URL.Host = dst.String() // where the app was going, whatever its Host says
			}
			pr.Out.Header.Set(headerPassthrough, "1")
		},
		Transport:  t,
		BufferPool: bufferPool{},
		ErrorLog:   errorLog,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			writeLocalReply(w, r, reasonUpstreamUnavailable, "passthrough to "+quoteHost(r.Host)+": "+err.Error())
		},
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get(headerPassthrough) != "" {
			writeLocalReply(w, r, reasonLoop, "passthrough request came back to the sidecar: host "+quoteHost(r.Host)+" points at it")
			return
		}
		if _, redirected := r.Context().Value(origDstKey{}).(netip.AddrPort); r.Host == "" && !redirected {
			writeLocalReply(w, r, reasonNoRoute, "request has no Host to pass through to")
			return
		}
		rp.ServeHTTP(w, r)
	})
}
