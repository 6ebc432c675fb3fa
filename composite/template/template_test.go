package template

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
)

func values(t *testing.T) Resolver {
	t.Helper()
	var cart any
	dec := json.NewDecoder(strings.NewReader(`{"items":[{"sku":"a/b c","qty":2,"tags":["x"]}],"note":"say \"hi\"\n","none":null}`))
	dec.UseNumber()
	if err := dec.Decode(&cart); err != nil {
		t.Fatal(err)
	}
	return func(r *Ref) (any, error) {
		switch {
		case r.Node == "cart" && r.Part == PartBody:
			return Walk(cart, r.Steps, "cart's body")
		case r.Node == "cart" && r.Part == PartStatus:
			return json.Number("200"), nil
		case r.Node == "" && r.Part == PartQuery && r.Name == "uid":
			return "u 1&2", nil
		}
		return nil, errors.New("no such value")
	}
}

func TestRender(t *testing.T) {
	cases := []struct {
		src  string
		mode Mode
		want string
	}{
		{"/p/{{nodes.cart.body.items[0].sku}}?s={{ nodes.cart.body.items[0].sku }}&u={{request.query.uid}}", Path, "/p/a%2Fb%20c?s=a%2Fb+c&u=u+1%262"},
		{"/q/{{nodes.cart.body.items[0].qty}}/{{nodes.cart.status}}/{{nodes.cart.body.none}}", Path, "/q/2/200/"},
		{`{"sku": {{nodes.cart.body.items[0].sku}}, "item": {{nodes.cart.body.items[0]}}, "none": {{nodes.cart.body.none}}}`, Body,
			`{"sku": "a/b c", "item": {"qty":2,"sku":"a/b c","tags":["x"]}, "none": null}`},
		{`{"msg": "note: {{nodes.cart.body.note}} x{{nodes.cart.body.items[0].qty}}", "raw": "{{nodes.cart.body.items[0].tags}}", "esc": "a\"{{request.query.uid}}"}`, Body,
			`{"msg": "note: say \"hi\"\n x2", "raw": "[\"x\"]", "esc": "a\"u 1&2"}`},
		{"Bearer {{request.query.uid}}", Header, "Bearer u 1&2"},
		{"plain", Header, "plain"},
	}
	for _, tc := range cases {
		tp, err := Parse(tc.src, tc.mode)
		if err != nil {
			t.Fatalf("%s: %v", tc.src, err)
		}
		got, err := tp.Render(values(t))
		if err != nil {
			t.Fatalf("%s: %v", tc.src, err)
		}
		if got != tc.want {
			t.Errorf("%s\n got %s\nwant %s", tc.src, got, tc.want)
		}
		if tc.mode == Body {
			var v any
			if err := json.Unmarshal([]byte(got), &v); err != nil {
				t.Errorf("%s rendered to invalid JSON: %v", got, err)
			}
		}
	}
}

func TestRenderErrors(t *testing.T) {
	cases := []struct {
		src  string
		mode Mode
		want string
	}{
		{"/{{nodes.cart.body.items[3].sku}}", Path, "{{nodes.cart.body.items[3].sku}}: cart's body.items has 1 elements, no [3]"},
		{"/{{nodes.cart.body.items[0].price}}", Path, `cart's body.items[0] has no field "price"`},
		{"/{{nodes.cart.body.note.x}}", Path, "cart's body.note is a string, not an object"},
		{"/{{nodes.cart.body.items}}", Path, "is an array, which has no text to put in a path"},
		{"{{nodes.cart.body.items[0]}}", Header, "is an object, which has no text to put in a header"},
		{"{{nodes.cart.body.note}}", Header, "holds a line break"},
	}
	for _, tc := range cases {
		tp, err := Parse(tc.src, tc.mode)
		if err != nil {
			t.Fatal(err)
		}
		_, err = tp.Render(values(t))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want …%s…", tc.src, err, tc.want)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for src, want := range map[string]string{
		"/{{":                              "never closed",
		"/}}":                              `without its "{{"`,
		"{{}}":                             "is empty",
		"{{env.HOME}}":                     `"env" is neither request nor nodes`,
		"{{request.query}}":                "names no query",
		"{{nodes.a}}":                      "is not one of nodes.a.body",
		"{{nodes.a.status.x}}":             "has no fields",
		"{{nodes.a.body.x[1}}":             "never closed",
		"{{nodes.a.body..x}}":              "is not a field name",
		"{{nodes.a.header.bad:name}}":      "not a valid header name",
		"{{nodes.a b.body}}":               "is not a node name",
		"{{request.body.items[-1]}}":       "is not an index",
		"{{nodes.a.body.items[0]x}}":       `expected ".field" or "[index]"`,
		"{{request.header.x-user}} {{x}}}": "neither request nor nodes",
	} {
		_, err := Parse(src, Path)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err %v, want …%s…", src, err, want)
		}
	}
	tp, err := Parse("{{request.body}}/{{request.body.a[2].b}}/{{nodes.x.body[0]}}/{{nodes.y.header.ETag}}", Path)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range tp.Refs() {
		got = append(got, r.Node+":"+r.Part+":"+r.Name+":"+stepsString(r.Steps))
	}
	if strings.Join(got, " ") != ":body:: :body::.a[2].b x:body::[0] y:header:ETag:" {
		t.Errorf("refs: %v", got)
	}
}

func stepsString(s []Step) string {
	var b strings.Builder
	for _, st := range s {
		b.WriteString(st.String())
	}
	return b.String()
}

func TestCycle(t *testing.T) {
	if c := Cycle([]string{"a", "b", "c", "d", "e"}, map[string][]string{"d": {"a", "b"}, "e": {"c", "d"}}); c != nil {
		t.Errorf("the background's graph has no cycle, got %v", c)
	}
	if c := Cycle([]string{"a", "b", "c"}, map[string][]string{"a": {"b"}, "b": {"c"}, "c": {"b"}}); strings.Join(c, ",") != "b,c,b" {
		t.Errorf("cycle %v", c)
	}
}

func TestCycles(t *testing.T) {
	// Two cycles (b ⇄ c, and f → g → h → f), a node that depends on the
	// first through another (a → d → b), one that depends on the second
	// directly (e), and nodes that depend on no cycle (d is blocked, x is not).
	nodes := []string{"a", "b", "c", "d", "e", "f", "g", "h", "x"}
	deps := map[string][]string{
		"a": {"x", "d"}, "b": {"c"}, "c": {"b"}, "d": {"b"}, "e": {"h"},
		"f": {"g"}, "g": {"h"}, "h": {"f"},
	}
	cycles, blocked := Cycles(nodes, deps)
	if got := fmt.Sprint(cycles); got != "[[b c b] [f g h f]]" {
		t.Errorf("cycles %s", got)
	}
	if got := fmt.Sprint(blocked); got != "[{a [a d b] [b c b]} {d [d b] [b c b]} {e [e h] [f g h f]}]" {
		t.Errorf("blocked %s", got)
	}
	if c, b := Cycles([]string{"a", "b", "c", "d", "e"}, map[string][]string{"d": {"a", "b"}, "e": {"c", "d"}}); c != nil || b != nil {
		t.Errorf("the background's graph: cycles %v, blocked %v", c, b)
	}
}
