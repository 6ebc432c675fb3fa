package config

import (
	"errors"
	"strings"
	"testing"
	"time"
)

const compositeBase = `
listeners: [{name: app, address: "127.0.0.1:15001"}]
upstreams:
  - {name: users, endpoints: ["127.0.0.1:8081"]}
  - {name: carts, endpoints: ["127.0.0.1:8082"]}
composites:
`

func TestCompositeParsesWithDefaults(t *testing.T) {
	c, err := Parse([]byte(compositeBase + `
  - name: home
    listener: app
    path: /home/{uid}
    nodes:
      - {name: user, upstream: users, critical: true, path: "/users/{{request.path.uid}}"}
      - {name: cart, upstream: carts, path: /carts, body: '{"user": {{nodes.user.body.id}}}', timeout: 200ms}
`))
	if err != nil {
		t.Fatal(err)
	}
	cp := c.Composites[0]
	if cp.Deadline.Duration != DefaultCompositeDeadline || cp.Nodes[0].Method != "GET" || cp.Nodes[1].Method != "POST" ||
		cp.Nodes[1].OnMissingInput != OnMissingSkip || cp.Nodes[1].Timeout.Duration != 200*time.Millisecond {
		t.Errorf("defaults: %+v", cp)
	}
	if c.Clone().Version() != c.Version() {
		t.Error("clone changes the version")
	}
}

// Each bad composite is refused with the field path of the node and field.
func TestBadCompositesNameTheNodeAndField(t *testing.T) {
	cases := []struct {
		name, yaml, path, msg string
	}{
		{"cycle", `
  - name: c
    listener: app
    path: /c
    nodes:
      - {name: a, upstream: users, path: "/a/{{nodes.c.body.x}}"}
      - {name: b, upstream: users, path: "/b/{{nodes.a.status}}"}
      - {name: c, upstream: users, path: /c, headers: {x-b: "{{nodes.b.header.etag}}"}}
`, "composites[0].nodes[0]", `node "a" is in a dependency cycle: a → c → b → a`},
		{"unknown upstream", `
  - {name: c, listener: app, path: /c, nodes: [{name: a, upstream: nope, path: /a}]}
`, "composites[0].nodes[0].upstream", `"nope" is not the name of any upstream`},
		{"unknown node", `
  - {name: c, listener: app, path: /c, nodes: [{name: a, upstream: users, path: "/a", body: '{"x": {{nodes.ghost.body}}}'}]}
`, "composites[0].nodes[0].body", `{{nodes.ghost.body}}: there is no node "ghost" in composite "c"`},
		{"self reference", `
  - {name: c, listener: app, path: /c, nodes: [{name: a, upstream: users, path: "/a/{{nodes.a.status}}"}]}
`, "composites[0].nodes[0].path", `node "a" refers to itself`},
		{"bad template", `
  - {name: c, listener: app, path: /c, nodes: [{name: a, upstream: users, path: "/a/{{request.query.uid"}]}
`, "composites[0].nodes[0].path", `bad template: "/a/{{request.query.uid" has a "{{" that is never closed`},
		{"bad reference", `
  - {name: c, listener: app, path: /c, nodes: [{name: ok, upstream: users, path: /x}, {name: a, upstream: users, path: "/a/{{request.cookie.x}}"}]}
`, "composites[0].nodes[1].path", `request.cookie is not one of`},
		{"bad body step", `
  - {name: c, listener: app, path: /c, nodes: [{name: a, upstream: users, path: /a}, {name: b, upstream: users, path: /b, body: '{{nodes.a.body.items[x]}}'}]}
`, "composites[0].nodes[1].body", `[x] is not an index`},
		{"unknown path parameter", `
  - {name: c, listener: app, path: /c, nodes: [{name: a, upstream: users, path: "/a/{{request.path.id}}"}]}
`, "composites[0].nodes[0].path", `the composite's path "/c" has no {id}`},
		{"unknown listener", `
  - {name: c, listener: nope, path: /c, nodes: [{name: a, upstream: users, path: /a}]}
`, "composites[0].listener", `"nope" is not the name of any listener`},
		{"same path twice", `
  - {name: c, listener: app, path: "/c/{x}", nodes: [{name: a, upstream: users, path: /a}]}
  - {name: d, listener: app, path: "/c/{y}", nodes: [{name: a, upstream: users, path: /a}]}
`, "composites[1].path", `is already served by composites[0]`},
		{"duplicate node", `
  - {name: c, listener: app, path: /c, nodes: [{name: a, upstream: users, path: /a}, {name: a, upstream: users, path: /b}]}
`, "composites[0].nodes[1].name", `"a" is also the name of composites[0].nodes[0]`},
		{"reserved node name", `
  - {name: c, listener: app, path: /c, nodes: [{name: _status, upstream: users, path: /a}]}
`, "composites[0].nodes[0].name", `not start with '_'`},
		{"onMissingInput", `
  - {name: c, listener: app, path: /c, nodes: [{name: a, upstream: users, path: /a, onMissingInput: retry}]}
`, "composites[0].nodes[0].onMissingInput", `"retry" is not one of skip, null`},
		{"deadline", `
  - {name: c, listener: app, path: /c, deadline: soon, nodes: [{name: a, upstream: users, path: /a}]}
`, "composites[0].deadline", `"soon" is not a duration`},
		{"no nodes", `
  - {name: c, listener: app, path: /c, nodes: []}
`, "composites[0].nodes", `name at least one node`},
		{"node path", `
  - {name: c, listener: app, path: /c, nodes: [{name: a, upstream: users, path: "a"}]}
`, "composites[0].nodes[0].path", `must start with "/"`},
		{"unknown field", `
  - {name: c, listener: app, path: /c, nodes: [{name: a, upstream: users, path: /a, critcal: true}]}
`, "composites[0].nodes[0].critcal", `unknown field`},
		{"header value", `
  - {name: c, listener: app, path: /c, nodes: [{name: a, upstream: users, path: /a, headers: {"bad header": x}}]}
`, "composites[0].nodes[0].headers", `"bad header" is not a valid header name`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(compositeBase + tc.yaml))
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("err = %v, want a FieldError", err)
			}
			var ve *ValidationError
			found := false
			if errors.As(err, &ve) {
				for _, e := range ve.Errors {
					if e.Path == tc.path && strings.Contains(e.Msg, tc.msg) {
						found = true
					}
				}
			}
			if !found {
				t.Errorf("err = %v\nwant %s: …%s…", err, tc.path, tc.msg)
			}
		})
	}
}
