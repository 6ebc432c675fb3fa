package h2wire

import (
	"bytes"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// decodeAll decodes blocks in order with one decoder, as a peer does, and
// returns each block's fields.
func decodeAll(t *testing.T, dec *hpack.Decoder, blocks [][]byte) [][]hpack.HeaderField {
	t.Helper()
	var out [][]hpack.HeaderField
	for i, b := range blocks {
		fields, err := dec.DecodeFull(b)
		if err != nil {
			t.Fatalf("block %d (% x): %v", i, b, err)
		}
		out = append(out, fields)
	}
	return out
}

// noTable is an encoder whose table holds nothing (0 bytes): every field
// is a static entry or a literal not indexed.
func noTable() *smallTable { return &smallTable{} }

// Every field the encoder writes without a table is the field x/net's
// decoder reads back: static entries, static names, new names, values and
// names past one byte's length, never-indexed fields (which stay so); and
// the peer's table is empty throughout, for any SETTINGS_HEADER_TABLE_SIZE.
func TestStaticEncoderRoundTrip(t *testing.T) {
	long := strings.Repeat("v", 300)
	cases := []hpack.HeaderField{
		{Name: ":status", Value: "200"}, {Name: ":status", Value: "404"}, {Name: ":status", Value: "503"},
		{Name: ":method", Value: "GET"}, {Name: ":method", Value: "PUT"}, {Name: ":path", Value: "/"},
		{Name: ":path", Value: "/a?b=c"}, {Name: ":scheme", Value: "http"}, {Name: ":authority", Value: "example:80"},
		{Name: "accept-encoding", Value: "gzip, deflate"}, {Name: "accept-encoding", Value: "br"},
		{Name: "content-type", Value: "text/plain"}, {Name: "content-length", Value: "64"},
		{Name: "date", Value: "Tue, 24 Nov 2026 06:00:00 GMT"}, {Name: "www-authenticate", Value: "Basic"},
		{Name: "x-custom", Value: ""}, {Name: "x-long", Value: long}, {Name: strings.Repeat("n", 200), Value: "x"},
		{Name: "set-cookie", Value: "a=b", Sensitive: true}, {Name: "x-secret", Value: "s", Sensitive: true},
		{Name: ":status", Value: "200", Sensitive: true},
	}
	var blocks [][]byte
	zeroed := false
	for _, hf := range cases {
		b := []byte(nil)
		if !zeroed {
			b, zeroed = append(b, 0x20), true // a dynamic table size update to 0
		}
		blocks = append(blocks, noTable().appendField(b, hf.Name, hf.Value, hf.Sensitive))
	}
	for _, limit := range []uint32{0, 4096} {
		dec := hpack.NewDecoder(4096, nil)
		dec.SetAllowedMaxDynamicTableSize(limit)
		got := decodeAll(t, dec, blocks)
		for i, want := range cases {
			if len(got[i]) != 1 || got[i][0] != want {
				t.Errorf("limit %d: %+v came back as %+v", limit, want, got[i])
			}
		}
	}
	// A static entry is one byte; a static name is not spelt out.
	if b := noTable().appendField(nil, ":status", "200", false); !bytes.Equal(b, []byte{0x88}) {
		t.Errorf(":status 200 is % x, want 88", b)
	}
	if b := noTable().appendField(nil, "content-type", "x", false); !bytes.Equal(b, []byte{0x0f, 31 - 15, 1, 'x'}) {
		t.Errorf("content-type: x is % x, want the name as static index 31", b)
	}
}

// Every name the encoder finds in the static table is the name x/net's
// decoder finds at that index (RFC 7541, Appendix A).
func TestStaticIndexNames(t *testing.T) {
	names := []string{":authority", ":method", ":path", ":scheme", ":status", "accept-encoding", "content-type", "content-length", "date"}
	for name := range staticNames {
		names = append(names, name)
	}
	dec := hpack.NewDecoder(4096, nil)
	for _, name := range names {
		if idx, _ := staticIndex(name, "x"); idx == 0 {
			t.Errorf("%s: not in the static table", name)
		}
		got, err := dec.DecodeFull(noTable().appendField(nil, name, "x", false))
		if err != nil || len(got) != 1 || got[0].Name != name {
			t.Errorf("%s came back as %+v, %v", name, got, err)
		}
	}
}

// Integers at and around each prefix's limit round-trip (RFC 7541, 5.1),
// checked through the string lengths that use them.
func TestStaticEncoderLengths(t *testing.T) {
	dec := hpack.NewDecoder(4096, nil)
	dec.SetMaxStringLength(1 << 20)
	r := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{0, 1, 126, 127, 128, 254, 255, 256, 16383, 16384, 16511, 70000} {
		v := make([]byte, n)
		for i := range v {
			v[i] = byte('a' + r.IntN(26))
		}
		for _, name := range []string{"x-n", "content-type"} {
			got, err := dec.DecodeFull(noTable().appendField(nil, name, string(v), false))
			if err != nil || len(got) != 1 || got[0].Name != name || got[0].Value != string(v) {
				t.Fatalf("a value of %d bytes under %s: %v, %d fields", n, name, err, len(got))
			}
		}
	}
}

// Over a connection, the first block tells the peer the table's size, a
// field repeated in a later block is one byte, and after the peer allows no
// table at all the next block says so and a peer with no table reads it.
func TestSmallTableOverTheWire(t *testing.T) {
	c, _, peer := pipe(t)
	c.SmallTable()
	dec := hpack.NewDecoder(4096, nil)
	fr := http2.NewFramer(nil, peer)
	fr.ReadMetaHeaders = dec
	for id := uint32(1); id <= 7; id += 2 {
		if id == 5 {
			dec.SetAllowedMaxDynamicTableSize(0) // as if our peer had sent SETTINGS_HEADER_TABLE_SIZE 0
			c.Lock()
			c.SetHeaderTableSizeLocked(0)
			_ = c.Unlock()
		}
		c.Lock()
		c.StartBlock()
		c.Encode(":status", "200")
		c.Encode("content-type", "text/plain")
		c.EncodeLiteral("x-request-timeout", "5ms")
		block := append([]byte(nil), c.block...)
		c.WriteBlock(id, true)
		if err := c.Unlock(); err != nil {
			t.Fatal(err)
		}
		switch id {
		case 1: // a size update to 512 (001 11111, 481), :status 200, content-type with indexing (0x40|31), its value
			if !bytes.HasPrefix(block, []byte{0x3f, 0xe1, 0x03, 0x88, 0x5f, 0x0a}) {
				t.Errorf("stream 1: the block starts % x", block[:min(len(block), 8)])
			}
		case 3: // content-type from our table: index 62
			if !bytes.HasPrefix(block, []byte{0x88, 0x80 | 62}) {
				t.Errorf("stream 3: the block starts % x, want :status and content-type as one byte each", block[:min(len(block), 8)])
			}
		case 5: // the table is gone: an update to 0, then a literal not indexed
			if !bytes.HasPrefix(block, []byte{0x20, 0x88, 0x0f, 31 - 15}) {
				t.Errorf("stream 5: the block starts % x", block[:min(len(block), 8)])
			}
		}
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("stream %d: %v", id, err)
		}
		got := f.(*http2.MetaHeadersFrame).Fields
		want := []hpack.HeaderField{{Name: ":status", Value: "200"}, {Name: "content-type", Value: "text/plain"}, {Name: "x-request-timeout", Value: "5ms", Sensitive: true}}
		if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
			t.Errorf("stream %d: %+v, want %+v", id, got, want)
		}
	}
}

// Thousands of blocks of fields drawn from a pool (repeats, values too
// large for the table, never-indexed ones) with the peer's table limit
// changed now and then, some twice between blocks: one x/net decoder, as
// strict about size updates as the limits it was given, reads every field
// back. A table out of step with the decoder's would show as a wrong field.
func TestSmallTableRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	names := []string{"content-type", "date", "server", "x-a", "x-b", "cache-control", "set-cookie", "x-long"}
	values := []string{"", "1", "text/plain", "Tue, 24 Nov 2026 07:40:00 GMT", strings.Repeat("w", 100), strings.Repeat("z", 600)}
	var tab smallTable = newSmallTable()
	dec := hpack.NewDecoder(4096, nil)
	dec.SetMaxStringLength(1 << 20)
	for block := 0; block < 5000; block++ {
		if r.IntN(20) == 0 {
			for range 1 + r.IntN(2) { // once or twice before the block
				limit := []uint32{0, 64, 100, 256, 512, 4096}[r.IntN(6)]
				tab.setLimit(limit)
				dec.SetAllowedMaxDynamicTableSize(limit)
			}
		}
		var want []hpack.HeaderField
		b := tab.startBlock(nil)
		for range 1 + r.IntN(6) {
			hf := hpack.HeaderField{Name: names[r.IntN(len(names))], Value: values[r.IntN(len(values))], Sensitive: r.IntN(8) == 0}
			if r.IntN(10) == 0 {
				hf.Value = strconv.Itoa(r.IntN(1000)) // a value seen rarely
			}
			want = append(want, hf)
			b = tab.appendField(b, hf.Name, hf.Value, hf.Sensitive)
		}
		got, err := dec.DecodeFull(b)
		if err != nil {
			t.Fatalf("block %d: %v", block, err)
		}
		if len(got) != len(want) {
			t.Fatalf("block %d: %d fields, want %d", block, len(got), len(want))
		}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("block %d field %d: %+v, want %+v", block, i, got[i], want[i])
			}
		}
		if tab.size > tab.max {
			t.Fatalf("block %d: the table holds %d bytes, more than its %d", block, tab.size, tab.max)
		}
	}
}

func BenchmarkEncodeAnswer(b *testing.B) {
	fields := []hpack.HeaderField{{Name: "content-type", Value: "text/plain; charset=utf-8"}, {Name: "date", Value: "Tue, 24 Nov 2026 06:00:00 GMT"}, {Name: "x-custom", Value: "abc"}}
	for _, small := range []bool{false, true} {
		name := "x/net"
		if small {
			name = "small-table"
		}
		b.Run(name, func(b *testing.B) {
			c := NewConn(&countingConn{}, "none")
			if small {
				c.SmallTable()
			}
			b.ReportAllocs()
			for b.Loop() {
				c.StartBlock()
				c.Encode(":status", "200")
				for _, f := range fields {
					c.Encode(f.Name, f.Value)
				}
				c.Encode("content-length", "64")
			}
		})
	}
}
