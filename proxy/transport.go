package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/watertight/watertight/config"
	"github.com/watertight/watertight/proxy/h1conn"
	"github.com/watertight/watertight/proxy/h2conn"
)

// transports is an upstream's own connection pools: one per protocol it
// speaks to its endpoints. They are never shared with another upstream, so a
// dead upstream's hung connections cannot starve anyone else's dials.
type transports struct {
	key  transportKey
	h1   http.RoundTripper // HTTP/1.1 (or ALPN-negotiated, over TLS with auto)
	h2   http.RoundTripper // HTTP/2: h2c with prior knowledge, or h2 over TLS
	auto bool              // choose per request: HTTP/2 if the app spoke it or it is gRPC
}

// The HTTP/1.1 clients a server can use for cleartext upstreams
// (Options.UpstreamHTTP1).
const (
	// HTTP1NetHTTP is net/http's Transport.
	HTTP1NetHTTP = "net/http"
	// HTTP1Watertight is proxy/h1conn: requests written and answers read
	// on the request's own goroutine, net/http's Transport for the rest.
	HTTP1Watertight = "watertight"
)

// DefaultUpstreamHTTP1 is the HTTP/1.1 client of a server whose Options do
// not choose.
const DefaultUpstreamHTTP1 = HTTP1Watertight

// DefaultDownstreamHTTP1 is the app-side HTTP/1.1 server of a server whose
// Options do not name one: the sidecar's own loop, which hands what it does
// not serve to net/http's server (docs/forwarding-path.md, step 2a).
const DefaultDownstreamHTTP1 = HTTP1Watertight

// DefaultUpstreamHTTP2 is the h2c client of a server whose Options do not
// choose: proxy/h2conn, which hands what it does not take to net/http's
// (docs/forwarding-path.md, step 3).
const DefaultUpstreamHTTP2 = HTTP1Watertight

// DefaultDownstreamHTTP2 is the app-side h2c server of a server whose
// Options do not name one: proxy/h2serve (docs/forwarding-path.md, step 3),
// behind the app-side HTTP/1.1 loop, which recognises the preface. With
// net/http's HTTP/1.1 server on the app side, net/http serves h2c too.
const DefaultDownstreamHTTP2 = HTTP1Watertight

// transportKey is everything a connection pool depends on; upstreams whose
// key did not change keep their pools (and warm connections) across reloads.
type transportKey struct {
	upstream, protocol, sni, caFile string
	tls                             bool
	maxIdle                         int
	http1                           string // HTTP1NetHTTP or HTTP1Watertight
	http2                           string // the same, for h2c
	maxStreams                      uint32 // http2.maxConcurrentStreams: streams per h2c connection, 0 for the upstream's limit
}

func keyOf(u *config.Upstream, budget int, http1, http2 string) transportKey {
	k := transportKey{upstream: u.Name, protocol: u.Protocol, maxIdle: budget, http1: http1, http2: http2}
	if u.TLS != nil {
		k.tls, k.sni, k.caFile = true, u.TLS.SNI, u.TLS.CAFile
	}
	if u.HTTP2 != nil {
		k.maxStreams = uint32(u.HTTP2.MaxConcurrentStreams) // validated: 0..2^31-1
	}
	return k
}

func newTransports(k transportKey) (*transports, error) {
	var tlsConf *tls.Config
	if k.tls {
		tlsConf = &tls.Config{ServerName: k.sni, MinVersion: tls.VersionTLS12}
		if k.caFile != "" {
			pem, err := os.ReadFile(k.caFile)
			if err != nil {
				return nil, fmt.Errorf("tls.caFile: reading %q: %w", k.caFile, err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("tls.caFile: %q holds no PEM certificate", k.caFile)
			}
			tlsConf.RootCAs = pool
		}
	}
	mk := func(h1, h2 bool) *http.Transport {
		var p http.Protocols
		p.SetHTTP1(h1)
		if k.tls {
			p.SetHTTP2(h2)
		} else {
			p.SetUnencryptedHTTP2(h2)
		}
		return &http.Transport{
			Protocols: &p,
			DialContext: (&net.Dialer{
				Timeout:   5 * time.Second, // the request's deadline usually ends it sooner
				KeepAlive: 30 * time.Second,
			}).DialContext,
			TLSClientConfig: tlsConf.Clone(),
			// The bulkhead bounds requests in flight, so it bounds the
			// connections too; keep as many idle as the pod could use.
			MaxIdleConnsPerHost:   k.maxIdle,
			IdleConnTimeout:       90 * time.Second,
			TLSHandshakeTimeout:   5 * time.Second,
			ExpectContinueTimeout: time.Second,
			// A proxy must pass bodies as they are: no Accept-Encoding added,
			// no transparent gunzip.
			DisableCompression: true,
			HTTP2: &http.HTTP2Config{
				SendPingTimeout: 30 * time.Second, // find dead connections
				PingTimeout:     10 * time.Second,
			},
		}
	}
	// own puts h1conn in front of a cleartext HTTP/1.1 Transport, which
	// keeps what h1conn hands back (upgrades, Expect, streamed bodies).
	own := func(std *http.Transport) http.RoundTripper {
		if k.tls || k.http1 != HTTP1Watertight {
			return std
		}
		return &h1conn.Transport{
			DialContext:    std.DialContext,
			Fallback:       std,
			MaxIdlePerHost: k.maxIdle,
			IdleTimeout:    std.IdleConnTimeout,
		}
	}
	// own2 puts h2conn in front of a cleartext HTTP/2 Transport, which
	// keeps what h2conn hands back (Expect: 100-continue).
	own2 := func(std *http.Transport) http.RoundTripper {
		if k.tls || k.http2 != HTTP1Watertight {
			return std
		}
		return &h2conn.Transport{
			DialContext:     std.DialContext,
			Fallback:        std,
			IdleTimeout:     std.IdleConnTimeout,
			ReadIdleTimeout: std.HTTP2.SendPingTimeout,
			PingTimeout:     std.HTTP2.PingTimeout,

			MaxConcurrentStreams: k.maxStreams,
		}
	}
	t := &transports{key: k}
	switch {
	case k.protocol == config.ProtocolHTTP1:
		t.h1 = own(mk(true, false))
		t.h2 = t.h1
	case k.protocol == config.ProtocolHTTP2 && !k.tls:
		t.h2 = own2(mk(false, true))
		t.h1 = t.h2
	case k.protocol == config.ProtocolHTTP2:
		t.h2 = mk(false, true)
		t.h1 = t.h2
	case k.tls: // auto over TLS: ALPN decides
		t.h1 = mk(true, true)
		t.h2 = t.h1
	default: // auto over cleartext: follow the app
		t.h1, t.h2, t.auto = own(mk(true, false)), own2(mk(false, true)), true
	}
	return t, nil
}

// forRequest picks the connection pool for one request.
func (t *transports) forRequest(r *http.Request, grpc bool) http.RoundTripper {
	if t.auto && (r.ProtoMajor == 2 || grpc) {
		return t.h2
	}
	return t.h1
}

type idleCloser interface{ CloseIdleConnections() }

func (t *transports) closeIdle() {
	t.h1.(idleCloser).CloseIdleConnections()
	if t.h2 != t.h1 {
		t.h2.(idleCloser).CloseIdleConnections()
	}
}

func (t *transports) scheme() string {
	if t.key.tls {
		return "https"
	}
	return "http"
}
