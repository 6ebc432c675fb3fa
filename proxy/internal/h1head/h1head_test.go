package h1head

import (
	"net/http"
	"reflect"
	"testing"
)

func TestPlainAndHeader(t *testing.T) {
	head := "X-A: 1\r\nhost: h\r\nx-a:\t 2 \r\nEmpty:\r\nContent-Length: 0042\r\nConnection: keep-alive\r\n\r\n"
	fh, ok := Plain([]byte(head))
	if want := (Head{Fields: 6, Hosts: 1, Lengths: 1, Length: 42}); !ok || fh != want {
		t.Fatalf("Plain: %+v, %v; want %+v", fh, ok, want)
	}
	// The values without the spaces and tabs around them, names canonical.
	h, host := Header([]byte(head), head, 0, fh.Fields-1, "Host")
	want := http.Header{"X-A": {"1", "2"}, "Empty": {""}, "Content-Length": {"0042"}, "Connection": {"keep-alive"}}
	if !reflect.DeepEqual(h, want) || host != "h" {
		t.Errorf("Header: %v, Host %q", h, host)
	}
}

func TestPlainRefuses(t *testing.T) {
	for _, head := range []string{
		"X: 1\r\n",         // no blank line
		"X: 1\r\n\r\nmore", // bytes after it
		"X: 1\n\r\n",       // bare LF
		"X: 1\r\r\n\r\n",   // bare CR
		" X: 1\r\n\r\n",    // folded
		"X : 1\r\n\r\n",    // space before the colon
		": 1\r\n\r\n",      // no name
		"X\r\n\r\n",        // no colon
		"X: \x7f\r\n\r\n",  // DEL
		"X: \xff\r\n\r\n",  // obs-text
		"X(: 1\r\n\r\n",    // not a token
		// Fields net/http acts on: the standard library's to parse.
		"Transfer-Encoding: chunked\r\n\r\n",
		"pragma: no-cache\r\n\r\n",
		"Connection: close\r\n\r\n",
		"Connection: keep-alive, Upgrade\r\n\r\n",
		"Content-Length: +1\r\n\r\n",
		"Content-Length: 1 2\r\n\r\n",
		"Content-Length: 1234567890123456789\r\n\r\n",
		"Content-Length:\r\n\r\n",
	} {
		if _, ok := Plain([]byte(head)); ok {
			t.Errorf("Plain took %q", head)
		}
	}
}

func TestOnlyKeepAlive(t *testing.T) {
	for vv, want := range map[string]bool{
		"keep-alive": true, " Keep-Alive ,, keep-alive": true, "": true, "\tKEEP-ALIVE\t": true,
		"close": false, "keep-alive, Upgrade": false,
		"keep\ralive": false, "keep alive": false, "keep-alivee": false, "\u212aeep-alive": false,
	} {
		if got := OnlyKeepAlive([]string{vv}); got != want {
			t.Errorf("OnlyKeepAlive(%q) = %v", vv, got)
		}
		if got := onlyKeepAlive([]byte(vv)); got != want {
			t.Errorf("onlyKeepAlive of the bytes %q = %v", vv, got)
		}
	}
}
