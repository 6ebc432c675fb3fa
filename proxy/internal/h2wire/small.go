package h2wire

import "golang.org/x/net/http2/hpack"

// smallTableSize is the dynamic table the app side's encoder keeps: a few
// entries, enough for the fields an answer repeats (content-type, server,
// cache-control), few enough to search one by one.
const smallTableSize = 512

// smallTable is the encoder's copy of the peer's dynamic table (RFC 7541,
// 2.3.2 and 4), searched linearly.
//
// Written by hand because x/net's hpack.Encoder looks every field up in
// its static and its dynamic table with four map lookups, hashing name and
// value, and adds new ones with more map writes: most of the cost of an
// answer's HEADERS, 4 % of the sidecar's user time at 2,000 req/s of h2c
// (docs/forwarding-path.md, step 11). With a handful of entries a string
// comparison each is cheaper, and the app's decoder still gets a repeated
// field as one byte it need not copy (without any table, Go's HTTP/2
// client made 3 allocations more an answer). Under the connection's write
// lock.
type smallTable struct {
	ents     []hpack.HeaderField // oldest first
	size     uint32              // the entries' size (4.1)
	max      uint32              // the table's size, as last told the peer
	limit    uint32              // the peer's SETTINGS_HEADER_TABLE_SIZE
	minLimit uint32              // the smallest limit since the last block
	owed     bool                // a dynamic table size update is owed
}

func newSmallTable() smallTable {
	// The peer starts with 4,096 bytes (RFC 9113, 6.5.2); the first block
	// tells it ours.
	return smallTable{max: 4096, limit: 4096, minLimit: 4096, owed: true}
}

// setLimit takes the peer's SETTINGS_HEADER_TABLE_SIZE.
func (t *smallTable) setLimit(v uint32) {
	t.limit, t.minLimit, t.owed = v, min(t.minLimit, v), true
}

// startBlock appends the size updates owed (6.3). If the limit was lower
// since the last block than where it ends, the table must have been
// emptied down to that (4.2): an update to 0 says so, and is the one
// x/net's decoder takes before another (it refuses a second update while
// its table holds anything).
func (t *smallTable) startBlock(b []byte) []byte {
	if !t.owed {
		return b
	}
	final := min(smallTableSize, t.limit)
	if low := min(smallTableSize, t.minLimit); low < final {
		b = t.resize(b, 0)
	}
	b = t.resize(b, final)
	t.minLimit, t.owed = t.limit, false
	return b
}

func (t *smallTable) resize(b []byte, max uint32) []byte {
	t.max = max
	t.evict(0)
	return appendInt(b, 5, 0x20, uint64(max))
}

// evict drops the oldest entries until room more fit.
func (t *smallTable) evict(room uint32) {
	n := 0
	for t.size+room > t.max && n < len(t.ents) {
		t.size -= entrySize(t.ents[n].Name, t.ents[n].Value)
		n++
	}
	if n > 0 {
		t.ents = append(t.ents[:0], t.ents[n:]...)
	}
}

func entrySize(name, value string) uint32 { return uint32(len(name) + len(value) + 32) }

// appendField appends the field to b: the static table's entry or ours
// when one has it whole, else a literal that goes into our table when it
// fits (6.2.1), not when never says it must not be indexed (6.2.3).
func (t *smallTable) appendField(b []byte, name, value string, never bool) []byte {
	idx, full := staticIndex(name, value)
	switch {
	case never:
		return appendLiteral(b, 4, 0x10, idx, name, value) // never indexed (6.2.3)
	case full:
		return appendInt(b, 7, 0x80, uint64(idx)) // indexed field (6.1)
	}
	for i := len(t.ents) - 1; i >= 0; i-- {
		if e := &t.ents[i]; e.Name == name && e.Value == value {
			return appendInt(b, 7, 0x80, uint64(61+len(t.ents)-i)) // indexed field (6.1)
		}
	}
	size := entrySize(name, value)
	if size > t.max {
		return appendLiteral(b, 4, 0x00, idx, name, value) // without indexing (6.2.2): it would empty the table
	}
	b = appendLiteral(b, 6, 0x40, idx, name, value) // with incremental indexing (6.2.1)
	t.evict(size)
	t.ents = append(t.ents, hpack.HeaderField{Name: name, Value: value})
	t.size += size
	return b
}
