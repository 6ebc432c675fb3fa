package h2wire

import (
	"net/http"
	"strconv"
)

// Status is code, from 100 to 999, as a :status value ("200").
func Status(code int) string { return statuses[code-100].code }

// StatusLine is a response's Status for code as net/http's client says it:
// "200 OK", or "299" for a code without a text.
func StatusLine(code int) string { return statuses[code-100].line }

// statuses are made once: a strconv.Itoa and a concatenation per answer
// were allocations on every request.
var statuses = func() (t [900]struct{ code, line string }) {
	for i := range t {
		code := strconv.Itoa(100 + i)
		t[i].code, t[i].line = code, code
		if text := http.StatusText(100 + i); text != "" {
			t[i].line += " " + text
		}
	}
	return t
}()
