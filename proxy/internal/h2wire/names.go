package h2wire

import (
	"net/http"
	"strings"
)

// Names caches header names between their wire (lower-case) and canonical
// forms, as net/http's HTTP/2 code does: a connection sends the same few
// names again and again. Not safe for concurrent use.
type Names map[string]string

const maxCachedNames = 256

// Canonical is http.CanonicalHeaderKey(lower).
func (n *Names) Canonical(lower string) string {
	if v, ok := (*n)[lower]; ok {
		return v
	}
	v := http.CanonicalHeaderKey(lower)
	n.put(lower, v)
	return v
}

// Lower is strings.ToLower(canonical).
func (n *Names) Lower(canonical string) string {
	if v, ok := (*n)[canonical]; ok {
		return v
	}
	v := strings.ToLower(canonical)
	n.put(canonical, v)
	return v
}

func (n *Names) put(k, v string) {
	if *n == nil {
		*n = Names{}
	}
	if len(*n) < maxCachedNames {
		(*n)[k] = v
	}
}

// Values hands out the first value of each header field from one backing
// array, as net/textproto does: one allocation for the values of a whole
// header block instead of one per field. Make it with one slot per field
// of the block.
type Values []string

// Add appends v to h[k].
func (s *Values) Add(h http.Header, k, v string) {
	if vv, ok := h[k]; ok {
		h[k] = append(vv, v)
		return
	}
	vv := (*s)[:1:1]
	*s = (*s)[1:]
	vv[0] = v
	h[k] = vv
}
