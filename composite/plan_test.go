package composite

import (
	"net/http"
	"strings"
	"testing"

	"github.com/watertight/watertight/config"
)

// Compile refuses what validation refuses, naming the composite, node and
// field, for callers that did not validate (and an upstream the caller
// cannot reach).
func TestCompileNamesNodeAndField(t *testing.T) {
	up := func(name string) http.Handler {
		if name == "users" {
			return http.NotFoundHandler()
		}
		return nil
	}
	for _, tc := range []struct {
		nodes []config.CompositeNode
		want  string
	}{
		{[]config.CompositeNode{{Name: "a", Upstream: "nope", Path: "/a"}}, `composite "c": node "a" (nodes[0]).upstream: upstream "nope" does not exist`},
		{[]config.CompositeNode{{Name: "a", Upstream: "users", Path: "/a", Body: "{{nodes.b.body}}"}}, `node "a" (nodes[0]).body: {{nodes.b.body}}: no other node is called "b"`},
		{[]config.CompositeNode{{Name: "a", Upstream: "users", Path: "/a/{{request.path.id}}"}}, `node "a" (nodes[0]).path: {{request.path.id}}: the composite's path has no {id}`},
		{[]config.CompositeNode{{Name: "a", Upstream: "users", Path: "/a", Headers: map[string]string{"x": "{{nodes.a"}}}, `node "a" (nodes[0]).headers.x: "{{nodes.a" has a "{{" that is never closed`},
		{[]config.CompositeNode{
			{Name: "a", Upstream: "users", Path: "/a/{{nodes.b.status}}"},
			{Name: "b", Upstream: "users", Path: "/b/{{nodes.a.status}}"},
		}, `composite "c": node "a" is in a dependency cycle: a → b → a`},
	} {
		_, err := Compile(&config.Composite{Name: "c", Listener: "l", Path: "/c", Nodes: tc.nodes}, up, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("err = %v, want …%s…", err, tc.want)
		}
	}
}

func TestPathMatching(t *testing.T) {
	p, err := Compile(&config.Composite{Name: "c", Path: "/shop/{shop}/items/{item}", Nodes: []config.CompositeNode{{Name: "n", Upstream: "u", Path: "/"}}},
		func(string) http.Handler { return http.NotFoundHandler() }, nil)
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{
		"/shop/s1/items/i2":   "s1 i2",
		"/shop/s1/items/":     "",
		"/shop/s1/items":      "",
		"/shop/s1/items/i2/x": "",
		"/shop//items/i2":     "",
		"/shops/s1/items/i2":  "",
	} {
		params, ok := p.match(path)
		got := ""
		if ok {
			got = params["shop"] + " " + params["item"]
		}
		if got != want {
			t.Errorf("%s: %q, want %q", path, got, want)
		}
	}
}
