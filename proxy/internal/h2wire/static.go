package h2wire

// HPACK's static table and literals (RFC 7541), for the app side's
// encoder (small.go): a field is the static table's entry when its name
// and value are one, else a literal, under the static table's name when it
// has the name. Values are sent as they are, not Huffman coded: on the
// pod's loopback the bytes that saves are worth less than the CPU.

// appendLiteral appends a literal field (6.2): the representation's
// flags above a prefix-bit index of its name in the static table, or the
// name itself when idx is 0, then the value.
func appendLiteral(b []byte, prefix uint, flags byte, idx int, name, value string) []byte {
	if idx > 0 {
		b = appendInt(b, prefix, flags, uint64(idx))
	} else {
		b = append(b, flags)
		b = appendString(b, name)
	}
	return appendString(b, value)
}

// appendString appends s as a string literal, not Huffman coded (5.2).
func appendString(b []byte, s string) []byte {
	b = appendInt(b, 7, 0x00, uint64(len(s)))
	return append(b, s...)
}

// appendInt appends n as an integer with an n-bit prefix (5.1), the first
// byte's other bits being flags.
func appendInt(b []byte, prefix uint, flags byte, n uint64) []byte {
	max := uint64(1)<<prefix - 1
	if n < max {
		return append(b, flags|byte(n))
	}
	b = append(b, flags|byte(max))
	n -= max
	for n >= 128 {
		b = append(b, byte(n&0x7f)|0x80)
		n >>= 7
	}
	return append(b, byte(n))
}

// staticIndex is the static table's entry (Appendix A) for name, and
// whether it is for value too; 0 if the table does not have the name.
func staticIndex(name, value string) (int, bool) {
	switch name {
	case ":authority":
		return 1, false
	case ":method":
		switch value {
		case "GET":
			return 2, true
		case "POST":
			return 3, true
		}
		return 2, false
	case ":path":
		switch value {
		case "/":
			return 4, true
		case "/index.html":
			return 5, true
		}
		return 4, false
	case ":scheme":
		switch value {
		case "http":
			return 6, true
		case "https":
			return 7, true
		}
		return 6, false
	case ":status":
		switch value {
		case "200":
			return 8, true
		case "204":
			return 9, true
		case "206":
			return 10, true
		case "304":
			return 11, true
		case "400":
			return 12, true
		case "404":
			return 13, true
		case "500":
			return 14, true
		}
		return 8, false
	case "accept-encoding":
		return 16, value == "gzip, deflate"
	case "content-type": // the commonest of an answer's, ahead of the map
		return 31, false
	case "content-length":
		return 28, false
	case "date":
		return 33, false
	}
	if i, ok := staticNames[name]; ok {
		return i, false
	}
	return 0, false
}

// staticNames is the rest of the static table (staticIndex's switch has
// the others), whose entries have no value.
var staticNames = map[string]int{
	"accept-charset": 15, "accept-language": 17, "accept-ranges": 18, "accept": 19,
	"access-control-allow-origin": 20, "age": 21, "allow": 22, "authorization": 23,
	"cache-control": 24, "content-disposition": 25, "content-encoding": 26,
	"content-language": 27, "content-location": 29,
	"content-range": 30, "cookie": 32, "etag": 34,
	"expect": 35, "expires": 36, "from": 37, "host": 38, "if-match": 39,
	"if-modified-since": 40, "if-none-match": 41, "if-range": 42,
	"if-unmodified-since": 43, "last-modified": 44, "link": 45, "location": 46,
	"max-forwards": 47, "proxy-authenticate": 48, "proxy-authorization": 49,
	"range": 50, "referer": 51, "refresh": 52, "retry-after": 53, "server": 54,
	"set-cookie": 55, "strict-transport-security": 56, "transfer-encoding": 57,
	"user-agent": 58, "vary": 59, "via": 60, "www-authenticate": 61,
}
