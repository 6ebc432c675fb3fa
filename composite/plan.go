// Package composite answers composite calls: one request from the app for
// which the sidecar makes several upstream calls itself, each through its
// upstream's compartment (bulkhead, breaker, timeout, fallback), starting
// every call the moment the calls it refers to are done, and answers with
// the core data first and the rest as it arrives (docs/composite.md).
//
// A composite is config (config.Composite). Compile turns it into a Plan:
// the templates parsed and the dependency graph inferred from their
// references (nobody writes edges). A Plan is immutable and belongs to one
// config snapshot; a run (exec.go) is one call of it.
package composite

import (
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/watertight/watertight/composite/template"
	"github.com/watertight/watertight/config"
	"github.com/watertight/watertight/metrics"
)

// Upstreams gives the handler through which a call reaches an upstream: its
// compartment, exactly as the listener uses it, so the call gets the
// upstream's bulkhead, breaker, retries, timeout and fallback. nil: no such
// upstream.
type Upstreams func(name string) http.Handler

// Plan is one compiled composite.
type Plan struct {
	name     string
	listener string
	path     []string // segments; "{}" matches any one
	params   []string // names of the {} segments, in order
	deadline time.Duration
	nodes    []*node
	critical int  // how many nodes are critical
	useBody  bool // some template reads the request body
	metrics  *metrics.Registry
}

type node struct {
	index      int
	name       string
	upstream   string
	handler    http.Handler
	method     string
	path       *template.Template
	headers    []header
	body       *template.Template // nil: no body
	critical   bool
	timeout    time.Duration
	nullInputs bool  // onMissingInput: null
	deps       []int // nodes this one refers to
	dependents []int // nodes that refer to this one
}

type header struct {
	name string
	t    *template.Template
}

// Compile builds the plan of a composite of a validated config. It fails
// only on what validation also rejects, or on an upstream the caller cannot
// reach (both name the node and field).
func Compile(c *config.Composite, up Upstreams, m *metrics.Registry) (*Plan, error) {
	if m == nil {
		m = metrics.New()
	}
	p := &Plan{name: c.Name, listener: c.Listener, deadline: c.Deadline.Duration, metrics: m}
	for _, seg := range strings.Split(strings.TrimPrefix(c.Path, "/"), "/") {
		if len(seg) > 2 && seg[0] == '{' && seg[len(seg)-1] == '}' {
			p.params = append(p.params, seg[1:len(seg)-1])
			seg = "{}"
		}
		p.path = append(p.path, seg)
	}
	if p.deadline <= 0 {
		p.deadline = config.DefaultCompositeDeadline
	}
	index := map[string]int{}
	for i, nc := range c.Nodes {
		index[nc.Name] = i
	}
	for i, nc := range c.Nodes {
		at := func(field string) string {
			return fmt.Sprintf("composite %q: node %q (nodes[%d]).%s", c.Name, nc.Name, i, field)
		}
		n := &node{
			index: i, name: nc.Name, upstream: nc.Upstream, method: nc.Method,
			critical: nc.Critical, timeout: nc.Timeout.Duration, nullInputs: nc.OnMissingInput == config.OnMissingNull,
		}
		if n.method == "" {
			n.method = http.MethodGet
		}
		if n.handler = up(nc.Upstream); n.handler == nil {
			return nil, fmt.Errorf("%s: upstream %q does not exist", at("upstream"), nc.Upstream)
		}
		type fieldRef struct {
			field string
			ref   *template.Ref
		}
		var refs []fieldRef
		parse := func(field, src string, mode template.Mode) (*template.Template, error) {
			t, err := template.Parse(src, mode)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", at(field), err)
			}
			for _, r := range t.Refs() {
				refs = append(refs, fieldRef{field, r})
			}
			return t, nil
		}
		var err error
		if n.path, err = parse("path", nc.Path, template.Path); err != nil {
			return nil, err
		}
		for _, name := range slices.Sorted(maps.Keys(nc.Headers)) {
			t, err := parse("headers."+name, nc.Headers[name], template.Header)
			if err != nil {
				return nil, err
			}
			n.headers = append(n.headers, header{http.CanonicalHeaderKey(name), t})
		}
		if nc.Body != "" {
			if n.body, err = parse("body", nc.Body, template.Body); err != nil {
				return nil, err
			}
		}
		for _, fr := range refs {
			r := fr.ref
			switch {
			case r.Node == "" && r.Part == template.PartBody:
				p.useBody = true
			case r.Node == "" && r.Part == template.PartPath && !slices.Contains(p.params, r.Name):
				return nil, fmt.Errorf("%s: {{%s}}: the composite's path has no {%s}", at(fr.field), r.Text, r.Name)
			case r.Node != "":
				j, ok := index[r.Node]
				if !ok || j == i {
					return nil, fmt.Errorf("%s: {{%s}}: no other node is called %q", at(fr.field), r.Text, r.Node)
				}
				if !slices.Contains(n.deps, j) {
					n.deps = append(n.deps, j)
				}
			}
		}
		if n.critical {
			p.critical++
		}
		p.nodes = append(p.nodes, n)
	}
	names := make([]string, len(p.nodes))
	deps := map[string][]string{}
	for _, n := range p.nodes {
		names[n.index] = n.name
		for _, d := range n.deps {
			deps[n.name] = append(deps[n.name], p.nodes[d].name)
			p.nodes[d].dependents = append(p.nodes[d].dependents, n.index)
		}
	}
	if cyc := template.Cycle(names, deps); cyc != nil {
		return nil, fmt.Errorf("composite %q: node %q is in a dependency cycle: %s", c.Name, cyc[0], strings.Join(cyc, " → "))
	}
	return p, nil
}

// Name is the composite's name.
func (p *Plan) Name() string { return p.name }

// Listener is the name of the listener that serves the composite.
func (p *Plan) Listener() string { return p.listener }

// match says whether path is the plan's, and gives its parameters.
func (p *Plan) match(path string) (map[string]string, bool) {
	rest := strings.TrimPrefix(path, "/")
	var params map[string]string
	for i, seg := range p.path {
		var got string
		if i == len(p.path)-1 {
			got, rest = rest, ""
			if strings.Contains(got, "/") {
				return nil, false
			}
		} else {
			var ok bool
			if got, rest, ok = strings.Cut(rest, "/"); !ok {
				return nil, false
			}
		}
		if seg != "{}" {
			if got != seg {
				return nil, false
			}
			continue
		}
		if got == "" {
			return nil, false
		}
		if params == nil {
			params = make(map[string]string, len(p.params))
		}
		params[p.params[len(params)]] = got
	}
	return params, true
}
