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
		{"header value with a line break", `
  - {name: c, listener: app, path: /c, nodes: [{name: a, upstream: users, path: /a, headers: {x-a: "v\r\nx-injected: 1"}}]}
`, "composites[0].nodes[0].headers.x-a", `has a CR, LF or NUL, which a header value cannot hold`},
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

// errorsOf parses a composite of compositeBase and gives its validation
// errors.
func errorsOf(t *testing.T, composites string) []*FieldError {
	t.Helper()
	_, err := Parse([]byte(compositeBase + composites))
	var ve *ValidationError
	if err != nil && !errors.As(err, &ve) {
		t.Fatalf("err = %v, want a ValidationError", err)
	}
	if ve == nil {
		return nil
	}
	return ve.Errors
}

// wantExactly checks that errs are want (field path → message), each path
// reported once, and nothing else.
func wantExactly(t *testing.T, errs []*FieldError, want map[string]string) {
	t.Helper()
	got := map[string]string{}
	for _, e := range errs {
		if _, dup := got[e.Path]; dup {
			t.Errorf("%s reported twice: %q and %q", e.Path, got[e.Path], e.Msg)
		}
		got[e.Path] = e.Msg
	}
	for path, msg := range want {
		if got[path] != msg {
			t.Errorf("%s: %q\nwant %q", path, got[path], msg)
		}
	}
	for path, msg := range got {
		if _, ok := want[path]; !ok {
			t.Errorf("unexpected %s: %s", path, msg)
		}
	}
}

// A node in no cycle that depends on one, directly or through other nodes,
// can never run: it is refused as unreachable, naming itself, the path to
// the cycle and the cycle, besides the cycle's own error. Nodes that do not
// depend on the cycle are not named, and each cycle is reported once.
func TestNodeDependingOnACycleIsUnreachable(t *testing.T) {
	errs := errorsOf(t, `
  - name: c
    listener: app
    path: /c
    nodes:
      - {name: ok, upstream: users, path: /ok}
      - {name: a, upstream: users, path: "/a/{{nodes.b.status}}"}
      - {name: b, upstream: users, path: "/b/{{nodes.a.status}}/{{nodes.ok.status}}"}
      - {name: d, upstream: carts, path: "/d/{{nodes.b.status}}"}
      - {name: e, upstream: carts, path: "/e/{{nodes.ok.status}}", body: '{{nodes.d.body}}'}
      - {name: x, upstream: users, path: "/x/{{nodes.y.status}}"}
      - {name: y, upstream: users, path: "/y/{{nodes.x.status}}"}
`)
	want := map[string]string{
		"composites[0].nodes[1]": `node "a" is in a dependency cycle: a → b → a`,
		"composites[0].nodes[3]": `node "d" is unreachable: it depends on node "b" (d → b), which is in the dependency cycle a → b → a`,
		"composites[0].nodes[4]": `node "e" is unreachable: it depends on node "b" (e → d → b), which is in the dependency cycle a → b → a`,
		"composites[0].nodes[5]": `node "x" is in a dependency cycle: x → y → x`,
	}
	wantExactly(t, errs, want)
}

// A critical node with onMissingInput: skip (the default) that takes a weak
// node as input is refused: the weak node's failure would skip it and so
// fail the composite. onMissingInput is the dependent's own setting, so the
// error lands on the critical node that skips, whether the weak node is its
// direct input or further down a chain of skipping weak nodes; a critical
// node that depends on the weak one only through another critical node is
// not named (that one's failure fails the composite anyway). With
// onMissingInput: "null", or with every input critical, it is accepted.
func TestCriticalNodeSkippingOnAWeakInputIsRefused(t *testing.T) {
	errs := errorsOf(t, `
  - name: c
    listener: app
    path: /c
    nodes:
      - {name: w, upstream: users, path: /w}
      - {name: x, upstream: users, path: "/x/{{nodes.w.status}}"}
      - {name: core, upstream: users, critical: true, path: /core}
      - {name: k, upstream: carts, critical: true, path: "/k/{{nodes.x.status}}/{{nodes.core.status}}"}
      - {name: top, upstream: carts, critical: true, path: "/top/{{nodes.k.status}}"}
      - {name: both, upstream: carts, critical: true, onMissingInput: skip, path: "/b/{{nodes.w.status}}/{{nodes.x.status}}"}
      - {name: tolerant, upstream: carts, critical: true, onMissingInput: "null", path: "/t/{{nodes.w.status}}"}
`)
	want := map[string]string{
		"composites[0].nodes[3].critical": `critical node "k" takes weak node "x" as input with onMissingInput: skip: if "x" failed, "k" would be skipped and fail the composite; make "x" critical, or set onMissingInput: "null" on "k"`,
		"composites[0].nodes[5].critical": `critical node "both" takes weak nodes "w", "x" as input with onMissingInput: skip: if one of them failed, "both" would be skipped and fail the composite; make them critical, or set onMissingInput: "null" on "both"`,
	}
	wantExactly(t, errs, want)

	// Fixed either way, it is accepted.
	for _, fix := range []string{
		`{name: x, upstream: users, critical: true, path: "/x/{{nodes.w.status}}", onMissingInput: "null"}`,
		`{name: x, upstream: users, path: "/x/{{nodes.w.status}}"}, {name: k, upstream: carts, critical: true, onMissingInput: "null", path: "/k/{{nodes.x.status}}"}`,
	} {
		doc := `
  - name: c
    listener: app
    path: /c
    nodes: [{name: w, upstream: users, path: /w}, ` + fix + `]
`
		if errs := errorsOf(t, doc); len(errs) != 0 {
			t.Errorf("%s: %v", fix, errs)
		}
	}
}
