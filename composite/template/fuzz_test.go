package template

import (
	"encoding/json"
	"strings"
	"testing"
)

// Templates come from config and values from upstream answers and the
// composite's request, all untrusted: parsing and rendering must never panic,
// a header never gets CR, LF or NUL, and a body whose template is valid JSON
// with every reference replaced by null stays valid JSON whatever the values.
func FuzzParseAndRender(f *testing.F) {
	for _, seed := range []struct {
		src   string
		mode  uint8
		value string
	}{
		{"/users/{{request.query.uid}}", uint8(Path), `"a/b c"`},
		{"/q?x={{nodes.a.body.items[0].sku}}&y=1", uint8(Path), `{"k":1}`},
		{"{{request.header.authorization}}", uint8(Header), `"Bearer x\r\ny"`},
		{`{"sku": {{nodes.cart.body.items[0].sku}}, "n": "for {{nodes.u.body.name}}"}`, uint8(Body), `"q\"uote\\"`},
		{`{"a": {{ nodes.x.status }}}`, uint8(Body), `503`},
		{`{"a": "\"{{nodes.x.body}}"}`, uint8(Body), `[1,{"b":null}]`},
		{"{{", uint8(Path), `""`},
		{"}}{{x}}", uint8(Header), `null`},
		{"{{nodes..body}}", uint8(Body), `true`},
		{"{{nodes.a.body[99999999999999999999]}}", uint8(Body), `1`},
	} {
		f.Add(seed.src, seed.mode, seed.value)
	}
	f.Fuzz(func(t *testing.T, src string, mode uint8, value string) {
		m := Mode(mode % 3)
		tpl, err := Parse(src, m)
		if err != nil {
			return
		}
		var v any
		dec := json.NewDecoder(strings.NewReader(value))
		dec.UseNumber()
		if dec.Decode(&v) != nil {
			v = value // not JSON: a string value
		}
		out, err := tpl.Render(func(*Ref) (any, error) { return v, nil })
		if err != nil {
			return
		}
		if m == Header && strings.ContainsAny(out, "\r\n\x00") {
			t.Fatalf("header %q rendered with CR, LF or NUL: %q", src, out)
		}
		if m == Body {
			withNull, err := tpl.Render(func(*Ref) (any, error) { return nil, nil })
			if err == nil && json.Valid([]byte(withNull)) && !json.Valid([]byte(out)) {
				t.Fatalf("body %q is JSON with null values but not with %s: %q", src, value, out)
			}
		}
	})
}
