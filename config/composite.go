package config

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/watertight/watertight/composite/template"
)

// Composite is one composite call: a path on a listener where the sidecar
// answers by calling several upstreams itself, each node as soon as the
// nodes its templates refer to are done (docs/composite.md).
type Composite struct {
	Name string `yaml:"name" json:"name"`
	// Listener is the name of the listener the composite is served on.
	Listener string `yaml:"listener" json:"listener"`
	// Path is matched exactly, except for segments written {NAME}, which
	// match any one segment and are {{request.path.NAME}} in templates.
	Path string `yaml:"path" json:"path"`
	// Deadline bounds the whole composite, every node included (default 5s).
	Deadline Duration        `yaml:"deadline,omitempty" json:"deadline,omitempty"`
	Nodes    []CompositeNode `yaml:"nodes" json:"nodes"`
}

// CompositeNode is one upstream call of a composite.
type CompositeNode struct {
	Name     string `yaml:"name" json:"name"`
	Upstream string `yaml:"upstream" json:"upstream"`
	// Method defaults to GET, or POST when there is a body.
	Method string `yaml:"method,omitempty" json:"method,omitempty"`
	// Path, Headers and Body are templates (composite/template).
	Path    string            `yaml:"path" json:"path"`
	Headers map[string]string `yaml:"headers,omitempty" json:"headers,omitempty"`
	Body    string            `yaml:"body,omitempty" json:"body,omitempty"`
	// Critical nodes are strong dependencies: one failing fails the
	// composite. The others are weak: a failure yields the upstream's
	// fallback, or null.
	Critical bool `yaml:"critical,omitempty" json:"critical,omitempty"`
	// Timeout, when set, bounds this node's call within the deadline.
	Timeout Duration `yaml:"timeout,omitempty" json:"timeout,omitempty"`
	// OnMissingInput is what happens when a node this one refers to failed
	// or was skipped: "skip" (the default: this node is not called and is
	// null) or "null" (the references to it are null).
	OnMissingInput string `yaml:"onMissingInput,omitempty" json:"onMissingInput,omitempty"`
}

// Composite defaults and choices.
const (
	DefaultCompositeDeadline = 5 * time.Second
	OnMissingSkip            = "skip"
	OnMissingNull            = "null"
)

func (c *Composite) setDefaults() {
	if !c.Deadline.IsSet() {
		c.Deadline = D(DefaultCompositeDeadline)
	}
	for i := range c.Nodes {
		n := &c.Nodes[i]
		if n.Method == "" {
			n.Method = "GET"
			if n.Body != "" {
				n.Method = "POST"
			}
		}
		if n.OnMissingInput == "" {
			n.OnMissingInput = OnMissingSkip
		}
	}
}

// PathParams are the {NAME} segments of a composite path.
func PathParams(path string) []string {
	var out []string
	for _, seg := range strings.Split(path, "/") {
		if name, ok := pathParam(seg); ok {
			out = append(out, name)
		}
	}
	return out
}

func pathParam(seg string) (string, bool) {
	if len(seg) > 2 && seg[0] == '{' && seg[len(seg)-1] == '}' {
		return seg[1 : len(seg)-1], true
	}
	return "", false
}

func (c *Config) validateComposites(v *validator) {
	names := map[string]int{}
	served := map[string]string{} // listener + path shape → path of the first
	for i := range c.Composites {
		cp := &c.Composites[i]
		p := fmt.Sprintf("composites[%d]", i)
		v.name(names, "composites", i, p, cp.Name, validName, nameRule)
		if cp.Listener == "" {
			v.add(p+".listener", "is required (the name of the listener that serves the composite)")
		} else if !slices.ContainsFunc(c.Listeners, func(l Listener) bool { return l.Name == cp.Listener }) {
			v.add(p+".listener", "%q is not the name of any listener", cp.Listener)
		}
		params := validateCompositePath(v, p+".path", cp.Path)
		if cp.Path != "" {
			key := cp.Listener + " " + pathShape(cp.Path)
			if prev, ok := served[key]; ok {
				v.add(p+".path", "%q on listener %q is already served by %s", cp.Path, cp.Listener, prev)
			} else {
				served[key] = p
			}
		}
		cp.Deadline.check(v, p+".deadline")
		if cp.Deadline.Valid() && cp.Deadline.Duration <= 0 {
			v.add(p+".deadline", "%q must be more than 0", cp.Deadline.String())
		}
		if len(cp.Nodes) == 0 {
			v.add(p+".nodes", "name at least one node")
		}
		c.validateNodes(v, p, cp, params)
	}
}

// validateCompositePath checks a composite's path and returns its {NAME}s.
func validateCompositePath(v *validator, path, s string) []string {
	if s == "" {
		v.add(path, "is required")
		return nil
	}
	if !strings.HasPrefix(s, "/") || strings.ContainsAny(s, "?# \t") {
		v.add(path, "%q is not a path (it starts with \"/\" and has no query)", s)
		return nil
	}
	var params []string
	for _, seg := range strings.Split(s[1:], "/") {
		if strings.ContainsAny(seg, "{}") {
			name, ok := pathParam(seg)
			if !ok || !validParamName(name) {
				v.add(path, "%q: segment %q is neither plain nor a whole {NAME}", s, seg)
				continue
			}
			if slices.Contains(params, name) {
				v.add(path, "%q names {%s} twice", s, name)
			}
			params = append(params, name)
		}
	}
	return params
}

// pathShape is a path with its parameters' names blanked: "/a/{x}" and
// "/a/{y}" are the same route.
func pathShape(s string) string {
	segs := strings.Split(s, "/")
	for i, seg := range segs {
		if _, ok := pathParam(seg); ok {
			segs[i] = "{}"
		}
	}
	return strings.Join(segs, "/")
}

func validParamName(s string) bool {
	return s != "" && !strings.ContainsAny(s, ".") && validName(s)
}

// validNodeName: a node's name is a step in a template reference
// ({{nodes.NAME.body}}), and "_" starts the answer's own keys (_status).
func validNodeName(s string) bool { return validParamName(s) && !strings.HasPrefix(s, "_") }

func (c *Config) validateNodes(v *validator, p string, cp *Composite, params []string) {
	index := map[string]int{}
	for j, n := range cp.Nodes {
		np := fmt.Sprintf("%s.nodes[%d]", p, j)
		v.name(index, p+".nodes", j, np, n.Name, validNodeName, "may hold only letters, digits, '_' and '-', and not start with '_'")
	}
	deps := map[string][]string{}
	var order []string
	for j := range cp.Nodes {
		n := &cp.Nodes[j]
		np := fmt.Sprintf("%s.nodes[%d]", p, j)
		if n.Upstream == "" {
			v.add(np+".upstream", "is required")
		} else if c.Upstream(n.Upstream) == nil {
			v.add(np+".upstream", "%q is not the name of any upstream", n.Upstream)
		}
		if !httpguts.ValidHeaderFieldName(n.Method) { // a method is a token, as a header name is
			v.add(np+".method", "%q is not an HTTP method", n.Method)
		}
		oneOf(v, np+".onMissingInput", n.OnMissingInput, OnMissingSkip, OnMissingNull)
		n.Timeout.check(v, np+".timeout")
		var refs []*template.Ref
		check := func(field, src string, mode template.Mode) {
			t, err := template.Parse(src, mode)
			if err != nil {
				v.add(field, "bad template: %v", err)
				return
			}
			refs = append(refs, t.Refs()...)
			for _, r := range t.Refs() {
				switch {
				case r.Node == "" && r.Part == template.PartPath && !slices.Contains(params, r.Name):
					v.add(field, "{{%s}}: the composite's path %q has no {%s}", r.Text, cp.Path, r.Name)
				case r.Node == n.Name:
					v.add(field, "{{%s}}: node %q refers to itself", r.Text, n.Name)
				case r.Node != "" && index[r.Node] == 0:
					v.add(field, "{{%s}}: there is no node %q in composite %q", r.Text, r.Node, cp.Name)
				}
			}
		}
		if n.Path == "" || !strings.HasPrefix(n.Path, "/") {
			v.add(np+".path", "%q must start with \"/\"", n.Path)
		} else {
			check(np+".path", n.Path, template.Path)
		}
		for _, name := range slices.Sorted(maps.Keys(n.Headers)) {
			if !httpguts.ValidHeaderFieldName(name) {
				v.add(np+".headers", "%q is not a valid header name", name)
				continue
			}
			check(np+".headers."+name, n.Headers[name], template.Header)
		}
		if n.Body != "" {
			check(np+".body", n.Body, template.Body)
		}
		if n.Name == "" || index[n.Name] != j+1 {
			continue // no name, or a bad one: already refused
		}
		order = append(order, n.Name)
		for _, r := range refs {
			if r.Node != "" && r.Node != n.Name && index[r.Node] > 0 && !slices.Contains(deps[n.Name], r.Node) {
				deps[n.Name] = append(deps[n.Name], r.Node)
			}
		}
	}
	at := func(name string) string { return fmt.Sprintf("%s.nodes[%d]", p, index[name]-1) }
	cycles, blocked := template.Cycles(order, deps)
	for _, cyc := range cycles {
		v.add(at(cyc[0]), "node %q is in a dependency cycle: %s", cyc[0], strings.Join(cyc, " → "))
	}
	for _, b := range blocked {
		v.add(at(b.Node), "node %q is unreachable: it depends on node %q (%s), which is in the dependency cycle %s",
			b.Node, b.Path[len(b.Path)-1], strings.Join(b.Path, " → "), strings.Join(b.Cycle, " → "))
	}
	validateWeakInputs(v, p, cp, order, deps, index)
}

// validateWeakInputs refuses a critical node that would fail the composite
// because a weak node failed. A node whose input failed or was skipped is
// skipped unless it takes onMissingInput: "null", and a skipped critical
// node fails the composite; so a weak node's failure reaches the composite
// exactly when a chain of skips leads from it to a critical node. On every
// such chain, the first critical node after the last weak one is a critical
// node that skips and takes a weak node as a direct input: that node is
// refused (a critical node further up the chain depends on a critical one,
// whose failure fails the composite anyway, and is not).
func validateWeakInputs(v *validator, p string, cp *Composite, order []string, deps map[string][]string, index map[string]int) {
	node := func(name string) *CompositeNode { return &cp.Nodes[index[name]-1] }
	for _, name := range order {
		n := node(name)
		if !n.Critical || (n.OnMissingInput != "" && n.OnMissingInput != OnMissingSkip) {
			continue
		}
		var weak []string
		for _, d := range deps[name] {
			if !node(d).Critical {
				weak = append(weak, strconv.Quote(d))
			}
		}
		if len(weak) == 0 {
			continue
		}
		what, which, fix := "weak node "+weak[0], weak[0], weak[0]
		if len(weak) > 1 {
			what, which, fix = "weak nodes "+strings.Join(weak, ", "), "one of them", "them"
		}
		v.add(fmt.Sprintf("%s.nodes[%d].critical", p, index[name]-1),
			"critical node %q takes %s as input with onMissingInput: skip: if %s failed, %q would be skipped and fail the composite; "+
				"make %s critical, or set onMissingInput: \"null\" on %q", name, what, which, name, fix, name)
	}
}
