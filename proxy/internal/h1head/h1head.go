// Package h1head reads the field lines of the plainest HTTP/1.1 heads, the
// ones almost every app and upstream sends, into an http.Header with few
// allocations: one string for the whole head, which every name and value is
// cut from, one map and one backing array for the values. The app-side
// loop's request parser (h1serve) and the upstream client's response parser
// (h1conn) build on it; each holds its result to net/http's own parser with
// a differential fuzz test, and leaves every head that is not plain to it.
//
// Written by hand because net/http has no cheaper way to make its types
// from bytes, and net/textproto's reader allocates per line and value: that
// was a fifth of the sidecar's allocations per request at full load
// (docs/benchmarks.md, run 29).
package h1head

import (
	"bytes"
	"net/http"
	"strings"
)

// Head is what Plain learned of a head's fields.
type Head struct {
	Fields  int   // field lines
	Hosts   int   // Host fields
	Lengths int   // Content-Length fields
	Length  int64 // the value of the last of them
}

// Plain reports whether the field lines in b (after the start line, up to
// and including the blank line that ends the head) are all plain, and
// counts what the callers need to know: "Name: value" and CRLF, a token
// for a name directly followed by the colon, a value of visible ASCII,
// spaces and tabs (Text), and none of the fields net/http's parser acts on
// beyond storing them: Transfer-Encoding, Pragma (which adds
// Cache-Control), a Connection naming more than keep-alive, a
// Content-Length other than 1 to 18 digits. How many Host and
// Content-Length fields make a plain request or answer is the caller's to
// judge.
func Plain(b []byte) (Head, bool) {
	var h Head
	for {
		l, rest, ok := CutLine(b)
		if !ok {
			return Head{}, false
		}
		if len(l) == 0 {
			return h, len(rest) == 0
		}
		name, value, ok := field(l)
		if !ok {
			return Head{}, false
		}
		switch {
		case is(name, "Host"):
			h.Hosts++
		case is(name, "Content-Length"):
			h.Lengths++
			if h.Length, ok = length(value); !ok {
				return Head{}, false
			}
		case is(name, "Connection"):
			if !onlyKeepAlive(value) {
				return Head{}, false
			}
		case is(name, "Transfer-Encoding"), is(name, "Pragma"):
			return Head{}, false
		}
		h.Fields++
		b = rest
	}
}

// Header makes the header of the n plain field lines (Plain said so) that
// start at head[off:]; s is head as a string, which every name and value is
// cut from. The field named skip (canonical) is kept out of it and its first
// value returned, as http.ReadRequest does with Host.
func Header(head []byte, s string, off, n int, skip string) (h http.Header, skipped string) {
	h = make(http.Header, n)
	strs := make([]string, n) // one backing array for the first value of each name, as textproto does
	for {
		l, _, _ := CutLine(head[off:])
		if len(l) == 0 {
			return h, skipped
		}
		// Plain checked the line: only its parts are wanted here.
		colon := bytes.IndexByte(l, ':')
		k := http.CanonicalHeaderKey(s[off : off+colon]) // allocates only if not canonical already
		i, j := colon+1, len(l)
		for i < j && (l[i] == ' ' || l[i] == '\t') {
			i++
		}
		for j > i && (l[j-1] == ' ' || l[j-1] == '\t') {
			j--
		}
		v := s[off+i : off+j]
		switch vv, ok := h[k]; {
		case k == skip:
			if skipped == "" {
				skipped = v
			}
		case ok:
			h[k] = append(vv, v)
		default:
			vv, strs = strs[:1:1], strs[1:]
			vv[0] = v
			h[k] = vv
		}
		off += len(l) + 2
	}
}

// Is reports whether name is the field canonical names (case blind).
func Is(name []byte, canonical string) bool { return is(name, canonical) }

// Split cuts a field line Plain has passed into its name and its value,
// without the spaces and tabs around the value.
func Split(l []byte) (name, value []byte) {
	colon := bytes.IndexByte(l, ':')
	v := l[colon+1:]
	i, j := 0, len(v)
	for i < j && (v[i] == ' ' || v[i] == '\t') {
		i++
	}
	for j > i && (v[j-1] == ' ' || v[j-1] == '\t') {
		j--
	}
	return l[:colon], v[i:j]
}

// is reports whether name is the field canonical names (case blind, as
// canonicalisation is).
func is(name []byte, canonical string) bool {
	return len(name) == len(canonical) && strings.EqualFold(string(name), canonical)
}

// length reads a Content-Length value of 1 to 18 digits, which always fits
// an int64; anything else (signs, spaces, longer numbers) is the standard
// library's to judge.
func length(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// OnlyKeepAlive: a Connection field value that names nothing but
// keep-alive, as Java's, Node's and Python's clients send on every request.
// net/http acts on no such token of HTTP/1.1 (only on close, which sets
// Close, and on an h2c upgrade).
func OnlyKeepAlive(vv []string) bool {
	for _, v := range vv {
		if !onlyKeepAlive(v) {
			return false
		}
	}
	return true
}

// onlyKeepAlive is OnlyKeepAlive for one value, as text or as the head's
// bytes (no string made of them: Java's, Node's and Python's clients send
// the field on every request).
func onlyKeepAlive[T string | []byte](v T) bool {
	start := 0
	for i := 0; i <= len(v); i++ {
		if i < len(v) && v[i] != ',' {
			continue
		}
		t := v[start:i]
		for len(t) > 0 && isSpace(t[0]) {
			t = t[1:]
		}
		for len(t) > 0 && isSpace(t[len(t)-1]) {
			t = t[:len(t)-1]
		}
		if len(t) > 0 && !isKeepAlive(t) {
			return false
		}
		start = i + 1
	}
	return true
}

// isSpace is what textproto.TrimString trims.
func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }

func isKeepAlive[T string | []byte](t T) bool {
	const ka = "keep-alive"
	if len(t) != len(ka) {
		return false
	}
	for i := range len(ka) {
		if c := t[i]; c != ka[i] && !('A' <= c && c <= 'Z' && c+'a'-'A' == ka[i]) {
			return false
		}
	}
	return true
}

// CutLine cuts b at its first CRLF; it reports false for a bare CR or LF
// before it, or none at all.
func CutLine(b []byte) (line, rest []byte, ok bool) {
	i := bytes.IndexByte(b, '\n')
	if i < 1 || b[i-1] != '\r' || bytes.IndexByte(b[:i-1], '\r') >= 0 {
		return nil, nil, false
	}
	return b[:i-1], b[i+1:], true
}

// field splits a plain "Name: value" line into the name and the value
// without the spaces and tabs around it.
func field(l []byte) (name, value []byte, ok bool) {
	colon := -1
	for i, c := range l {
		if c == ':' {
			colon = i
			break
		}
		if !isTokenByte[c] {
			return nil, nil, false
		}
	}
	if colon <= 0 {
		return nil, nil, false
	}
	name, v := l[:colon], l[colon+1:]
	if !Text(v) {
		return nil, nil, false
	}
	i, j := 0, len(v)
	for i < j && (v[i] == ' ' || v[i] == '\t') {
		i++
	}
	for j > i && (v[j-1] == ' ' || v[j-1] == '\t') {
		j--
	}
	return name, v[i:j], true
}

// Text reports whether b is visible ASCII, spaces and tabs only: what a
// plain field value or reason phrase holds.
func Text(b []byte) bool {
	for _, c := range b {
		if (c < ' ' || c >= 0x7f) && c != '\t' {
			return false
		}
	}
	return true
}

// isTokenByte: the characters of a token (RFC 9110, 5.6.2), a field name's.
var isTokenByte = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()
