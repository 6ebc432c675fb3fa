package composite

import (
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

// Handler is the composite served at r's path, or nil. The listener asks
// before it routes to an upstream: a composite's path wins over the
// upstream the Host names.
func (rt *Router) Handler(r *http.Request) http.Handler {
	if rt == nil {
		return nil
	}
	path := r.URL.Path
	if p, ok := rt.exact[path]; ok {
		return call{p, nil}
	}
	for _, p := range rt.patterns {
		if params, ok := p.match(path); ok {
			return call{p, params}
		}
	}
	return nil
}

// call is a plan with the path parameters of one request.
type call struct {
	p      *Plan
	params map[string]string
}

func (c call) ServeHTTP(w http.ResponseWriter, r *http.Request) { c.p.serve(w, r, c.params) }
