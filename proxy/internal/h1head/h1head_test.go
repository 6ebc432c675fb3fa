package h1head

import (
	"net/http"
	"reflect"
	"testing"
)

func TestPlainAndHeader(t *testing.T) {
	head := "X-A: 1\r\nhost: h\r\nx-a:\t 2 \r\nEmpty:\r\n\r\n"
	var names []string
	n, ok := Plain([]byte(head), func(name, value []byte) bool {
		names = append(names, string(name)+"="+string(value))
		return true
	})
	if !ok || n != 4 {
		t.Fatalf("Plain: %d fields, %v", n, ok)
	}
	if want := []string{"X-A=1", "host=h", "x-a=2", "Empty="}; !reflect.DeepEqual(names, want) {
		t.Errorf("visited %q, want %q", names, want)
	}
	h, host := Header([]byte(head), head, 0, n-1, "Host")
	if want := (http.Header{"X-A": {"1", "2"}, "Empty": {""}}); !reflect.DeepEqual(h, want) || host != "h" {
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
	} {
		if _, ok := Plain([]byte(head), func(_, _ []byte) bool { return true }); ok {
			t.Errorf("Plain took %q", head)
		}
	}
	if _, ok := Plain([]byte("X: 1\r\n\r\n"), func(_, _ []byte) bool { return false }); ok {
		t.Error("Plain took a field its visitor refused")
	}
}

func TestOnlyKeepAlive(t *testing.T) {
	for vv, want := range map[string]bool{"keep-alive": true, " Keep-Alive ,, keep-alive": true, "": true, "close": false, "keep-alive, Upgrade": false} {
		if got := OnlyKeepAlive([]string{vv}); got != want {
			t.Errorf("OnlyKeepAlive(%q) = %v", vv, got)
		}
	}
}
