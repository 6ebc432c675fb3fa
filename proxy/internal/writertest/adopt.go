// Package writertest holds the checks that the sidecar's own response
// writers (proxy/h1serve's and proxy/h2serve's) share, so that both are held
// to one contract.
package writertest

import (
	"io"
	"net/http"
	"slices"
	"testing"
)

// AdoptHeader is a handler that hands its writer an upstream's header whole
// (see relay's headerAdopter), adds a field to it and answers 202 "ok". The
// writer must take the header while its own is empty and refuse a second
// one, and one after WriteHeader: Wait reports those refusals.
func AdoptHeader(t *testing.T) (h http.Handler, wait func()) {
	type adopter interface{ AdoptHeader(http.Header) bool }
	refused := make(chan bool, 2)
	h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a := w.(adopter)
		if !a.AdoptHeader(http.Header{"X-Up": {"1"}, "Content-Type": {"text/x-up"}}) {
			t.Error("AdoptHeader refused while the header was empty")
		}
		refused <- !a.AdoptHeader(http.Header{"X-Second": {"2"}})
		w.Header().Add("X-Up", "2") // the adopted map is the header now
		w.WriteHeader(http.StatusAccepted)
		refused <- !a.AdoptHeader(http.Header{})
		io.WriteString(w, "ok")
	})
	wait = func() {
		for range 2 {
			if !<-refused {
				t.Error("AdoptHeader took a header over fields already set, or after WriteHeader")
			}
		}
	}
	return h, wait
}

// CheckAdopted checks the answer AdoptHeader's handler gave.
func CheckAdopted(t *testing.T, res *http.Response) {
	t.Helper()
	if res.StatusCode != http.StatusAccepted || !slices.Equal(res.Header["X-Up"], []string{"1", "2"}) ||
		res.Header.Get("Content-Type") != "text/x-up" || res.Header.Get("X-Second") != "" {
		t.Errorf("answer %d %v; want 202 with the adopted header and the field added to it", res.StatusCode, res.Header)
	}
}
