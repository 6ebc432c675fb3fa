package proxy

import (
	"net/http"
	"net/netip"
	"slices"
	"strings"

	"github.com/watertight/watertight/composite"
	"github.com/watertight/watertight/config"
)

// routes is one listener's view of a snapshot: what a request on it goes to.
type routes struct {
	mode             string
	upstream         *compartment                      // mode upstream
	hosts            map[string]*compartment           // modes proxy and transparent: HostKey → compartment
	addrs            map[netip.AddrPort][]*compartment // mode transparent: the addresses the app dials
	passthrough      bool                              // unknownHosts: passthrough
	passthroughLimit int                               // connections per destination
	accessLog        *config.AccessLog                 // nil: no access log
	composites       *composite.Router                 // nil: no composite on this listener
}

// route finds the compartment for r, or nil. A transparent listener's
// request goes by its original destination when an upstream has that
// address, the Host choosing between upstreams that share it; otherwise,
// and in mode proxy, by Host.
func (rt *routes) route(r *http.Request) *compartment {
	if rt.mode == config.ModeUpstream {
		return rt.upstream
	}
	dst, ok := r.Context().Value(origDstKey{}).(netip.AddrPort)
	return rt.routeTo(dst, ok, r.Host)
}

// routeTo is route for a request to host, on a connection whose original
// destination was dst (if known).
func (rt *routes) routeTo(dst netip.AddrPort, known bool, host string) *compartment {
	if rt.mode == config.ModeUpstream {
		return rt.upstream
	}
	if known {
		switch cands := rt.addrs[dst]; len(cands) {
		case 0:
		case 1:
			return cands[0]
		default:
			if c := lookupHost(rt.hosts, host); c != nil && slices.Contains(cands, c) {
				return c
			}
			return cands[0]
		}
	}
	return lookupHost(rt.hosts, host)
}

// lookupHost matches an authority first as written (host:port entries), then
// by host alone, case-insensitively and ignoring a trailing dot.
func lookupHost(hosts map[string]*compartment, authority string) *compartment {
	if c, ok := hosts[authority]; ok { // the common case: already canonical
		return c
	}
	key := strings.ToLower(authority)
	host := key
	if i := strings.LastIndexByte(key, ':'); i >= 0 && !strings.HasSuffix(key, "]") {
		host = key[:i]
	}
	host = strings.TrimSuffix(strings.TrimPrefix(strings.TrimSuffix(host, "]"), "["), ".")
	if c, ok := hosts[key]; ok {
		return c
	}
	return hosts[host]
}
