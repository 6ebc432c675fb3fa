// Package template is the small template language of composite calls: the
// {{...}} references a composite's nodes write in their path, headers and
// body, and the dependency graph those references imply.
//
// It is its own package, importing nothing of the sidecar's, so that config
// validation can check templates and find cycles (and name the field) with
// the same parser the executor runs, without config depending on the
// executor.
//
// Syntax. A template is text with references in double braces; spaces inside
// the braces are allowed. There is nothing else: no conditionals, no loops,
// no functions, so a template cannot do anything but copy values.
//
//	{{request.query.NAME}}      a query parameter of the composite request
//	{{request.header.NAME}}     a header of the composite request
//	{{request.path.NAME}}       a {NAME} segment of the composite's path
//	{{request.body}}            the composite request's JSON body, or a part:
//	{{request.body.a.b[0]}}
//	{{nodes.X.body}}            node X's JSON answer, or a part of it:
//	{{nodes.X.body.items[0].sku}}
//	{{nodes.X.status}}          node X's HTTP status (a number)
//	{{nodes.X.header.NAME}}     a header of node X's answer
//
// A reference to a node is an edge of the graph: the node whose template
// holds it starts once X is done. Nobody writes edges.
//
// How a value is written depends on where the reference is (Mode):
//   - in a path, before "?": the value's text, escaped as one path segment;
//     after "?": escaped as a query value;
//   - in a header: the value's text (CR, LF and NUL refused);
//   - in a body, outside a JSON string: the value as JSON (a string with its
//     quotes, an object as an object): {"sku": {{nodes.cart.body.items[0].sku}}};
//   - in a body, inside a JSON string literal: the value's text, escaped as
//     string content: {"q": "user-{{request.query.uid}}"}.
//
// A value's text: a string as is, a number or boolean as JSON writes it,
// null as "". Objects and arrays have no text: in a path or a header they
// are an error (in a body inside a string, their JSON is used).
package template

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/url"
	"strconv"
	"strings"
)

// Mode is where a template is used, which decides how values are written.
type Mode uint8

// Modes.
const (
	Path Mode = iota
	Header
	Body
)

// Parts of a reference: what of the request or of a node it names.
const (
	PartQuery  = "query"
	PartHeader = "header"
	PartPath   = "path"
	PartBody   = "body"
	PartStatus = "status"
)

// Ref is one {{...}} reference.
type Ref struct {
	Text  string // as written, without the braces, for messages
	Node  string // the node referred to; "" for the composite request
	Part  string // query, header, path (request only), body, status (nodes only)
	Name  string // the query parameter, header or path parameter
	Steps []Step // into a body
}

// Step is one step into a JSON value: a field or an index.
type Step struct {
	Key     string
	Index   int
	IsIndex bool
}

func (s Step) String() string {
	if s.IsIndex {
		return "[" + strconv.Itoa(s.Index) + "]"
	}
	return "." + s.Key
}

// Template is a parsed template.
type Template struct {
	src   string
	mode  Mode
	parts []part
}

type part struct {
	lit      string
	ref      *Ref
	inString bool // Body: inside a JSON string literal
	inQuery  bool // Path: after the "?"
}

// Parse reads a template used in mode.
func Parse(src string, mode Mode) (*Template, error) {
	// A header's written text may not hold CR, LF or NUL (values are checked
	// when rendered, and so is the config's own text, here).
	if mode == Header && strings.ContainsAny(src, "\r\n\x00") {
		return nil, fmt.Errorf("%q has a CR, LF or NUL, which a header value cannot hold", src)
	}
	t := &Template{src: src, mode: mode}
	var inString, escaped, inQuery bool
	track := func(lit string) {
		for i := 0; i < len(lit); i++ {
			c := lit[i]
			switch mode {
			case Body:
				switch {
				case escaped:
					escaped = false
				case inString && c == '\\':
					escaped = true
				case c == '"':
					inString = !inString
				}
			case Path:
				if c == '?' {
					inQuery = true
				}
			}
		}
	}
	rest := src
	for rest != "" {
		i := strings.Index(rest, "{{")
		if i < 0 {
			if strings.Contains(rest, "}}") {
				return nil, fmt.Errorf("%q has a \"}}\" without its \"{{\"", src)
			}
			t.parts = append(t.parts, part{lit: rest})
			track(rest)
			break
		}
		lit := rest[:i]
		if strings.Contains(lit, "}}") {
			return nil, fmt.Errorf("%q has a \"}}\" without its \"{{\"", src)
		}
		if lit != "" {
			t.parts = append(t.parts, part{lit: lit})
			track(lit)
		}
		end := strings.Index(rest[i+2:], "}}")
		if end < 0 {
			return nil, fmt.Errorf("%q has a \"{{\" that is never closed", src)
		}
		expr := strings.TrimSpace(rest[i+2 : i+2+end])
		ref, err := parseRef(expr)
		if err != nil {
			return nil, fmt.Errorf("{{%s}}: %w", expr, err)
		}
		t.parts = append(t.parts, part{ref: ref, inString: inString, inQuery: inQuery})
		rest = rest[i+2+end+2:]
	}
	return t, nil
}

// Refs are the template's references, in order.
func (t *Template) Refs() []*Ref {
	var out []*Ref
	for _, p := range t.parts {
		if p.ref != nil {
			out = append(out, p.ref)
		}
	}
	return out
}

// String is the template as written.
func (t *Template) String() string { return t.src }

// IsLiteral says the template has no references.
func (t *Template) IsLiteral() bool { return len(t.Refs()) == 0 }

func parseRef(expr string) (*Ref, error) {
	if expr == "" {
		return nil, fmt.Errorf("is empty")
	}
	r := &Ref{Text: expr}
	head, rest, _ := strings.Cut(expr, ".")
	switch head {
	case "request":
		part, name, _ := strings.Cut(rest, ".")
		if isBody(rest) {
			r.Part = PartBody
			steps, err := parseSteps(strings.TrimPrefix(rest, PartBody))
			if err != nil {
				return nil, err
			}
			r.Steps = steps
			return r, nil
		}
		switch part {
		case PartQuery, PartHeader, PartPath:
			if name == "" {
				return nil, fmt.Errorf("names no %s (write request.%s.NAME)", part, part)
			}
			if part != PartHeader && !validName(name) || part == PartHeader && !validHeaderName(name) {
				return nil, fmt.Errorf("%q is not a valid %s name", name, part)
			}
			r.Part, r.Name = part, name
			return r, nil
		}
		return nil, fmt.Errorf("request.%s is not one of request.query.NAME, request.header.NAME, request.path.NAME, request.body", part)
	case "nodes":
		node, tail, _ := strings.Cut(rest, ".")
		if node == "" || !validName(node) {
			return nil, fmt.Errorf("%q is not a node name (write nodes.NODE.body, nodes.NODE.status or nodes.NODE.header.NAME)", node)
		}
		r.Node = node
		part, name, _ := strings.Cut(tail, ".")
		if isBody(tail) {
			part = PartBody
		}
		switch part {
		case PartBody:
			r.Part = PartBody
			steps, err := parseSteps(strings.TrimPrefix(tail, PartBody))
			if err != nil {
				return nil, err
			}
			r.Steps = steps
		case PartStatus:
			if tail != PartStatus {
				return nil, fmt.Errorf("nodes.%s.status is a number and has no fields", node)
			}
			r.Part = PartStatus
		case PartHeader:
			if name == "" || !validHeaderName(name) {
				return nil, fmt.Errorf("%q is not a valid header name", name)
			}
			r.Part, r.Name = PartHeader, name
		default:
			return nil, fmt.Errorf("nodes.%s.%s is not one of nodes.%s.body, nodes.%s.status, nodes.%s.header.NAME", node, tail, node, node, node)
		}
		return r, nil
	}
	return nil, fmt.Errorf("%q is neither request nor nodes", head)
}

func isBody(s string) bool {
	return s == PartBody || strings.HasPrefix(s, PartBody+".") || strings.HasPrefix(s, PartBody+"[")
}

// parseSteps reads ".a.b[0].c" (possibly empty).
func parseSteps(s string) ([]Step, error) {
	var out []Step
	for s != "" {
		switch s[0] {
		case '.':
			s = s[1:]
			n := 0
			for n < len(s) && s[n] != '.' && s[n] != '[' {
				n++
			}
			key := s[:n]
			if !validName(key) {
				return nil, fmt.Errorf("%q is not a field name (letters, digits, '_' and '-')", key)
			}
			out = append(out, Step{Key: key})
			s = s[n:]
		case '[':
			end := strings.IndexByte(s, ']')
			if end < 0 {
				return nil, fmt.Errorf("%q has a \"[\" that is never closed", s)
			}
			i, err := strconv.Atoi(s[1:end])
			if err != nil || i < 0 {
				return nil, fmt.Errorf("[%s] is not an index (a whole number from 0)", s[1:end])
			}
			out = append(out, Step{Index: i, IsIndex: true})
			s = s[end+1:]
		default:
			return nil, fmt.Errorf("%q: expected \".field\" or \"[index]\"", s)
		}
	}
	return out, nil
}

func validName(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

// Resolver gives the value a reference names: a JSON value as
// encoding/json decodes it with UseNumber (string, json.Number, bool, nil,
// map[string]any, []any). An error says why there is none.
type Resolver func(*Ref) (any, error)

// Error is a reference that could not be rendered.
type Error struct {
	Ref string // as written
	Err error
}

func (e *Error) Error() string { return "{{" + e.Ref + "}}: " + e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// Render writes the template with every reference's value.
func (t *Template) Render(resolve Resolver) (string, error) {
	if len(t.parts) == 1 && t.parts[0].ref == nil {
		return t.parts[0].lit, nil
	}
	var b strings.Builder
	for _, p := range t.parts {
		if p.ref == nil {
			b.WriteString(p.lit)
			continue
		}
		v, err := resolve(p.ref)
		if err != nil {
			return "", &Error{Ref: p.ref.Text, Err: err}
		}
		s, err := t.write(p, v)
		if err != nil {
			return "", &Error{Ref: p.ref.Text, Err: err}
		}
		b.WriteString(s)
	}
	return b.String(), nil
}

func (t *Template) write(p part, v any) (string, error) {
	switch t.mode {
	case Body:
		if !p.inString {
			return marshal(v)
		}
		s, ok := text(v)
		if !ok {
			j, err := marshal(v)
			if err != nil {
				return "", err
			}
			s = j
		}
		q, err := marshal(s)
		if err != nil {
			return "", err
		}
		return q[1 : len(q)-1], nil // the content of a JSON string
	case Header:
		s, ok := text(v)
		if !ok {
			return "", fmt.Errorf("is %s, which has no text to put in a header", kind(v))
		}
		if strings.ContainsAny(s, "\r\n\x00") {
			return "", fmt.Errorf("holds a line break or NUL, which cannot go in a header")
		}
		return s, nil
	default:
		s, ok := text(v)
		if !ok {
			return "", fmt.Errorf("is %s, which has no text to put in a path", kind(v))
		}
		if p.inQuery {
			return url.QueryEscape(s), nil
		}
		return url.PathEscape(s), nil
	}
}

// text is a scalar's text.
func text(v any) (string, bool) {
	switch x := v.(type) {
	case nil:
		return "", true
	case string:
		return x, true
	case json.Number:
		return x.String(), true
	case bool:
		return strconv.FormatBool(x), true
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64), true
	case int:
		return strconv.Itoa(x), true
	}
	return "", false
}

func marshal(v any) (string, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return "", err
	}
	return strings.TrimSuffix(b.String(), "\n"), nil
}

func kind(v any) string {
	switch v.(type) {
	case map[string]any:
		return "an object"
	case []any:
		return "an array"
	case nil:
		return "null"
	case string:
		return "a string"
	case json.Number, float64, int:
		return "a number"
	case bool:
		return "a boolean"
	}
	return fmt.Sprintf("a %T", v)
}

// Walk follows steps into a JSON value; name is what v is, for messages
// ("cart's body"). The error says where the path stops.
func Walk(v any, steps []Step, name string) (any, error) {
	at := name
	for _, s := range steps {
		switch {
		case s.IsIndex:
			arr, ok := v.([]any)
			if !ok {
				return nil, fmt.Errorf("%s is %s, not an array", at, kind(v))
			}
			if s.Index >= len(arr) {
				return nil, fmt.Errorf("%s has %d elements, no [%d]", at, len(arr), s.Index)
			}
			v = arr[s.Index]
		default:
			obj, ok := v.(map[string]any)
			if !ok {
				return nil, fmt.Errorf("%s is %s, not an object", at, kind(v))
			}
			x, ok := obj[s.Key]
			if !ok {
				return nil, fmt.Errorf("%s has no field %q", at, s.Key)
			}
			v = x
		}
		at += s.String()
	}
	return v, nil
}
