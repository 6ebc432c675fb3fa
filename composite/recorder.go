package composite

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
)

// recorder is the http.ResponseWriter a node's call is answered into: the
// compartment's handler writes the upstream's answer, its fallback or its
// local reply here exactly as it would to the app.
type recorder struct {
	header   http.Header
	code     int
	wrote    bool
	body     bytes.Buffer
	overflow bool
}

var errTooLarge = errors.New("composite: node answer too large")

func (r *recorder) Header() http.Header { return r.header }

func (r *recorder) WriteHeader(code int) {
	if r.wrote || code < 200 { // 1xx: informational, the answer is still to come
		return
	}
	r.code, r.wrote = code, true
}

func (r *recorder) Write(p []byte) (int, error) {
	r.WriteHeader(http.StatusOK)
	if r.body.Len()+len(p) > maxNodeBody {
		r.overflow = true
		return 0, errTooLarge
	}
	return r.body.Write(p)
}

// Flush lets the ReverseProxy flush (streamed answers); nothing to do.
func (r *recorder) Flush() {}

func (r *recorder) status() int {
	if !r.wrote {
		return http.StatusOK
	}
	return r.code
}

// compact is b without insignificant space, so answers nest tidily.
func compact(b []byte) []byte {
	var out bytes.Buffer
	if err := json.Compact(&out, b); err != nil {
		return b
	}
	return out.Bytes()
}
