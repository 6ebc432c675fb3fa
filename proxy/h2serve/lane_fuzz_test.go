package h2serve

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/watertight/watertight/proxy/internal/h2wire"
)

// FuzzLaneTake: every request the lane is offered (take) is one
// buildRequest takes as the reader would, and the request Materialize
// makes from what the lane kept is the one the reader would have made from
// the frame: the lane may decline what the reader takes, never take what
// it refuses nor change what it means.
//
// The input is a header block as text: one "name: value" per line, the
// pseudo-fields first as a client sends them.
func FuzzLaneTake(f *testing.F) {
	for _, seed := range []string{
		":method: GET\n:scheme: http\n:authority: a.example\n:path: /\nuser-agent: x",
		":method: POST\n:scheme: http\n:authority: a.example\n:path: /a%2Fb?c=d\ncookie: a=1\nte: trailers",
		":method: GET\n:scheme: http\n:authority: a.example\n:path: /a?%zz\naccept: 1\naccept: 2",
		":method: GET\n:scheme: http\n:authority: a.example\n:path: /a%zz",
		":method: CONNECT\n:authority: a.example:443",
		":method: GET\n:scheme: https\n:path: /\nhost: a.example",
		":method: OPTIONS\n:scheme: http\n:authority: a\n:path: *",
		":method: GET\n:scheme: http\n:authority: a\n:path: /\ncontent-length: 0\ntrailer: x-t",
		":method: G T\n:scheme: http\n:authority: a\n:path: /",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, block string) {
		var fields []hpack.HeaderField
		for line := range strings.SplitSeq(block, "\n") {
			name, value, ok := strings.Cut(line[min(1, len(line)):], ":")
			if !ok {
				continue
			}
			name = line[:min(1, len(line))] + name
			fields = append(fields, hpack.HeaderField{Name: name, Value: strings.TrimPrefix(value, " ")})
		}
		frame := &http2.MetaHeadersFrame{
			HeadersFrame: &http2.HeadersFrame{FrameHeader: http2.FrameHeader{Type: http2.FrameHeaders, Flags: http2.FlagHeadersEndStream | http2.FlagHeadersEndHeaders, StreamID: 1}},
			Fields:       fields,
		}
		// What the reader refuses before a request is made of the block:
		// a pseudo-field after a regular one, or one twice.
		seen, regular := map[string]bool{}, false
		for _, hf := range fields {
			switch {
			case !strings.HasPrefix(hf.Name, ":"):
				regular = true
			case regular || seen[hf.Name]:
				return
			default:
				seen[hf.Name] = true
			}
		}
		var x Exchange
		if !x.take(frame) {
			return
		}
		c := &conn{remote: "192.0.2.1:1234"}
		read := &stream{c: c}
		var names h2wire.Names
		if err := buildRequest(read, &names, frame.PseudoFields(), frame.RegularFields(), true); err != nil {
			t.Fatalf("the lane took %q, which the reader refuses: %v", block, err)
		}
		kept := &stream{c: c}
		x.st = kept
		x.Materialize()
		if a, b := dumpBuilt(&read.req), dumpBuilt(&kept.req); a != b {
			t.Errorf("for %q the reader made\n%s\nand the lane's Materialize\n%s", block, a, b)
		}
	})
}

func dumpBuilt(r *http.Request) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %q %s host %q url %#v length %d nobody %v trailer %v remote %q\n",
		r.Method, r.RequestURI, r.Proto, r.Host, *r.URL, r.ContentLength, r.Body == http.NoBody, r.Trailer, r.RemoteAddr)
	for _, k := range slices.Sorted(func(yield func(string) bool) {
		for k := range r.Header {
			if !yield(k) {
				return
			}
		}
	}) {
		fmt.Fprintf(&b, "%s: %q\n", k, r.Header[k])
	}
	return b.String()
}
