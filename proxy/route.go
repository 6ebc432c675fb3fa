package proxy

import (
	"net/http"
	"strings"

	"github.com/watertight/watertight/config"
)

// routes is one listener's view of a snapshot: what a request on it goes to.
type routes struct {
	mode        string
	upstream    *compartment            // mode upstream
	hosts       map[string]*compartment // mode proxy: HostKey → compartment
	passthrough bool                    // unknownHosts: passthrough
}

// route finds the compartment for r, or nil.
func (rt *routes) route(r *http.Request) *compartment {
	if rt.mode == config.ModeUpstream {
		return rt.upstream
	}
	return lookupHost(rt.hosts, r.Host)
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
