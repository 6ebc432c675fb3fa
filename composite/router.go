package composite

import (
	"context"
	"net/http"
	"strings"
)

// Router finds the composite a listener serves on a path. A listener
// without composites has no Router (nil), and pays nothing for the feature.
type Router struct {
	exact    map[string]*Plan // paths without parameters
	patterns []*Plan          // in config order
}

// NewRouter routes to plans (one listener's); nil when there are none.
func NewRouter(plans []*Plan) *Router {
	if len(plans) == 0 {
		return nil
	}
	rt := &Router{exact: map[string]*Plan{}}
	for _, p := range plans {
		if len(p.params) == 0 {
			rt.exact["/"+strings.Join(p.path, "/")] = p
		} else {
			rt.patterns = append(rt.patterns, p)
		}
	}
	return rt
}

// Match is the composite served at r's path. The listener asks before it
// routes to an upstream: a composite's path wins over the upstream the Host
// names.
func (rt *Router) Match(r *http.Request) (Call, bool) {
	if rt == nil {
		return Call{}, false
	}
	path := r.URL.Path
	if p, ok := rt.exact[path]; ok {
		return Call{p, nil}, true
	}
	for _, p := range rt.patterns {
		if params, ok := p.match(path); ok {
			return Call{p, params}, true
		}
	}
	return Call{}, false
}

// Call is a composite with the path parameters of one request.
type Call struct {
	p      *Plan
	params map[string]string
}

func (c Call) ServeHTTP(w http.ResponseWriter, r *http.Request) { c.p.serve(w, r, c.params) }

// Name is the composite's name (for the listener's access log).
func (c Call) Name() string { return c.p.name }

type outcomeKey struct{}

// WithOutcome returns a context under which a composite served with it
// stores its outcome (ok, degraded, failed, canceled: the result label of
// watertight_composite_requests_total) in *dst when it ends: how the
// listener's access log learns it without reading the answer.
func WithOutcome(ctx context.Context, dst *string) context.Context {
	return context.WithValue(ctx, outcomeKey{}, dst)
}
