package h2wire

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// block is one header block on the wire: fields encoded with enc (or raw
// bytes), cut into HEADERS and CONTINUATION frames of at most cut bytes.
type block struct {
	fields []hpack.HeaderField
	raw    []byte
	cut    int
	end    bool // END_STREAM
}

// wire writes blocks as frames of stream 1, 3, 5..., one HPACK encoder
// for all, so later blocks refer to the table earlier ones filled.
func wire(t testing.TB, blocks ...block) []byte {
	t.Helper()
	var buf bytes.Buffer
	fr := http2.NewFramer(&buf, nil)
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for i, b := range blocks {
		hb.Reset()
		for _, f := range b.fields {
			if err := enc.WriteField(f); err != nil {
				t.Fatal(err)
			}
		}
		frag := hb.Bytes()
		if b.raw != nil {
			frag = b.raw
		}
		cut := b.cut
		if cut == 0 {
			cut = len(frag) + 1
		}
		if err := writeBlock(fr, uint32(2*i+1), frag, cut, b.end); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

// readers are x/net's Framer with ReadMetaHeaders, and a plain Framer
// with the headerReader, over the same bytes and limit.
func readers(p []byte, maxList uint32) (xnet func() (http2.Frame, error), ours func() (http2.Frame, error)) {
	xf := http2.NewFramer(nil, bytes.NewReader(p))
	xf.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	xf.MaxHeaderListSize = maxList
	of := http2.NewFramer(nil, bytes.NewReader(p))
	of.MaxHeaderListSize = maxList
	r := newHeaderReader()
	return xf.ReadFrame, func() (http2.Frame, error) { return r.next(of) }
}

func hf(name, value string) hpack.HeaderField { return hpack.HeaderField{Name: name, Value: value} }

var request = []hpack.HeaderField{hf(":method", "GET"), hf(":scheme", "http"), hf(":path", "/x"), hf(":authority", "up"), hf("user-agent", "test"), hf("accept", "*/*")}

// The same bytes read through x/net's ReadMetaHeaders and through the
// headerReader give the same frames, the same errors with the same codes
// and words, block after block.
func TestHeaderReaderMatchesXNet(t *testing.T) {
	long := strings.Repeat("v", 200)
	cases := []struct {
		name    string
		maxList uint32
		blocks  []block
	}{
		{"request", 0, []block{{fields: request, end: true}}},
		{"response", 0, []block{{fields: []hpack.HeaderField{hf(":status", "200"), hf("content-type", "text/plain")}}}},
		{"continuations", 0, []block{{fields: request, cut: 7}}},
		{"the table carries over", 0, []block{{fields: request}, {fields: request, end: true}, {fields: append(request[:4:4], hf("x-new", "1"))}}},
		{"pseudo after regular", 0, []block{{fields: []hpack.HeaderField{hf(":method", "GET"), hf("accept", "a"), hf(":path", "/")}}}},
		{"upper-case name", 0, []block{{fields: append(request[:4:4], hf("Accept", "a"))}}},
		{"invalid value", 0, []block{{fields: append(request[:4:4], hf("accept", "a\x01b"))}}},
		{"unknown pseudo", 0, []block{{fields: append(request[:4:4], hf(":foo", "a"))}}},
		{"duplicate pseudo", 0, []block{{fields: append(request[:4:4], hf(":path", "/y"))}}},
		{"request and response pseudos", 0, []block{{fields: append(request[:4:4], hf(":status", "200"))}}},
		// The pseudo-fields take 168 of 200 bytes (each counts 32 more than its text).
		{"over the list's limit", 200, []block{{fields: append(request[:4:4], hf("x-long", long[:40]))}}},
		{"a string over the list's limit", 100, []block{{fields: append(request[:4:4], hf("x-long", long))}}},
		{"far over the list's limit", 100, []block{{fields: append(request[:4:4], hf("x-long", strings.Repeat(long, 5)))}}},
		{"trailer within its own budget", 200, []block{{fields: append(request[:4:4], hf("trailer", "a, b, c"))}}},
		{"trailer over its own budget", 100, []block{{fields: append(request[:1:1], hf("trailer", "a, b, c"))}}},
		{"invalid, then a continuation", 0, []block{{fields: append([]hpack.HeaderField{hf("Bad", "1")}, request...), cut: 8}}},
		{"not hpack", 0, []block{{raw: []byte{0xff, 0xff, 0xff, 0xff}}}},
		{"cut mid-field", 0, []block{{raw: []byte{0x40, 0x0a, 'a'}}}},
		{"a block after an invalid one", 0, []block{{fields: append(request[:4:4], hf("Accept", "a"))}, {fields: request}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			xnet, ours := readers(wire(t, tc.blocks...), tc.maxList)
			for i := 0; ; i++ {
				xf, xerr := xnet()
				of, oerr := ours()
				if xerr == io.EOF {
					if oerr != io.EOF {
						t.Fatalf("frame %d: x/net at the end, ours %v, %v", i, of, oerr)
					}
					return
				}
				if !sameError(xerr, oerr) {
					t.Fatalf("frame %d: x/net's error %#v, ours %#v", i, xerr, oerr)
				}
				if xerr != nil {
					var se http2.StreamError
					if !errors.As(xerr, &se) {
						return // a connection error ends the connection
					}
					continue
				}
				xm, ok1 := xf.(*http2.MetaHeadersFrame)
				om, ok2 := of.(*http2.MetaHeadersFrame)
				if !ok1 || !ok2 {
					t.Fatalf("frame %d: x/net read %T, ours %T", i, xf, of)
				}
				if !reflect.DeepEqual(xm.Fields, om.Fields) || xm.Truncated != om.Truncated ||
					xm.StreamID != om.StreamID || xm.StreamEnded() != om.StreamEnded() {
					t.Fatalf("frame %d: x/net read %v (truncated %v, stream %d, ended %v), ours %v (%v, %d, %v)", i,
						xm.Fields, xm.Truncated, xm.StreamID, xm.StreamEnded(), om.Fields, om.Truncated, om.StreamID, om.StreamEnded())
				}
			}
		})
	}
}

// sameError: both nil, or the same type, code and words.
func sameError(a, b error) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return reflect.TypeOf(a) == reflect.TypeOf(b) && a.Error() == b.Error()
}

// The point of headerReader: a request's block, once the table holds its
// fields, is read with the Framer's one HEADERS frame and nothing more.
func TestHeaderReaderAllocations(t *testing.T) {
	const n = 200
	blocks := make([]block, n)
	for i := range blocks {
		blocks[i] = block{fields: request, end: true}
	}
	p := wire(t, blocks...)
	count := func(read func() (http2.Frame, error)) float64 {
		if _, err := read(); err != nil { // the first fills the table
			t.Fatal(err)
		}
		return testing.AllocsPerRun(n-2, func() {
			if _, err := read(); err != nil {
				t.Fatal(err)
			}
		})
	}
	xnet, ours := readers(p, 0)
	x, o := count(xnet), count(ours)
	if o > 1 || o >= x {
		t.Errorf("allocations per block: ours %v, x/net's %v; want at most 1, and fewer", o, x)
	}
	t.Logf("allocations per block: ours %v, x/net's %v", o, x)
}

// Split cuts a block as MetaHeadersFrame's PseudoFields and RegularFields
// do.
func TestSplit(t *testing.T) {
	p := func(n string) hpack.HeaderField { return hpack.HeaderField{Name: n, Value: "v"} }
	for _, fields := range [][]hpack.HeaderField{
		nil,
		{p(":status")},
		{p("a"), p("b")},
		{p(":method"), p(":path"), p("a")},
		{p(":method"), p("a"), p("b"), p("c")},
	} {
		mh := &http2.MetaHeadersFrame{Fields: fields}
		pseudo, regular := Split(fields)
		if got, want := pseudo, mh.PseudoFields(); len(got) != len(want) {
			t.Errorf("%v: %d pseudo-fields, PseudoFields %d", fields, len(got), len(want))
		}
		if got, want := regular, mh.RegularFields(); len(got) != len(want) || len(got) > 0 && &got[0] != &want[0] {
			t.Errorf("%v: %d regular fields, RegularFields %d", fields, len(got), len(want))
		}
	}
}
