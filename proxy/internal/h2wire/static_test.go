package h2wire

import (
	"bytes"
	"math/rand/v2"
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

// Every field the table-less encoder writes is the field x/net's decoder
// reads back: static entries, static names, new names, values and names
// past one byte's length, never-indexed fields (which stay so); and the
// peer's table is empty throughout, for any SETTINGS_HEADER_TABLE_SIZE.
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
			b, zeroed = append(b, tableSizeZero), true
		}
		blocks = append(blocks, appendStatic(b, hf.Name, hf.Value, hf.Sensitive))
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
	if b := appendStatic(nil, ":status", "200", false); !bytes.Equal(b, []byte{0x88}) {
		t.Errorf(":status 200 is % x, want 88", b)
	}
	if b := appendStatic(nil, "content-type", "x", false); !bytes.Equal(b, []byte{0x0f, 31 - 15, 1, 'x'}) {
		t.Errorf("content-type: x is % x, want the name as static index 31", b)
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
			got, err := dec.DecodeFull(appendStatic(nil, name, string(v), false))
			if err != nil || len(got) != 1 || got[0].Name != name || got[0].Value != string(v) {
				t.Fatalf("a value of %d bytes under %s: %v, %d fields", n, name, err, len(got))
			}
		}
	}
}

// Over a connection, the first block tells the peer the table is 0 bytes,
// and a peer that then allows no table at all reads every block; x/net's
// Framer checks the update against its SETTINGS_HEADER_TABLE_SIZE.
func TestWithoutTableOverTheWire(t *testing.T) {
	c, _, peer := pipe(t)
	c.WithoutTable()
	dec := hpack.NewDecoder(4096, nil)
	fr := http2.NewFramer(nil, peer)
	fr.ReadMetaHeaders = dec
	for id := uint32(1); id <= 5; id += 2 {
		if id == 3 {
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
		first := c.block[0] == tableSizeZero
		c.WriteBlock(id, true)
		if err := c.Unlock(); err != nil {
			t.Fatal(err)
		}
		if first != (id == 1) {
			t.Errorf("stream %d: the block starts with a table size update: %v, want only the first", id, first)
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

func BenchmarkEncodeAnswer(b *testing.B) {
	fields := []hpack.HeaderField{{Name: "content-type", Value: "text/plain; charset=utf-8"}, {Name: "date", Value: "Tue, 24 Nov 2026 06:00:00 GMT"}, {Name: "x-custom", Value: "abc"}}
	for _, noTable := range []bool{false, true} {
		name := "x/net"
		if noTable {
			name = "without-table"
		}
		b.Run(name, func(b *testing.B) {
			c := NewConn(&countingConn{}, "none")
			if noTable {
				c.WithoutTable()
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
