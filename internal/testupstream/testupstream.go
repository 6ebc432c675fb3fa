// Package testupstream runs the plain HTTP servers that tests put behind
// the sidecar: on a loopback port, speaking HTTP/1.1 and h2c (prior
// knowledge), closed when the test ends.
package testupstream

import (
	"errors"
	"net"
	"net/http"
	"testing"
)

// Serve serves h on a loopback port until t ends and returns the address.
func Serve(t testing.TB, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: h, Protocols: &p}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("upstream: %v", err)
		}
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
	})
	return ln.Addr().String()
}
