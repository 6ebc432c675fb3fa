// Package httpserver runs an http.Server on a listener in the background
// and stops it in the one right order: stop accepting, let requests in
// flight finish until a deadline, close what is left, wait for the serving
// goroutine. The admin port and the injection webhook both use it.
package httpserver

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
)

// Server is a running http.Server.
type Server struct {
	srv  *http.Server
	addr net.Addr
	done chan struct{}
}

// Serve serves srv on ln until Shutdown: over TLS when srv.TLSConfig is set
// (its certificates come from the config). A serving error is logged under
// name.
func Serve(ln net.Listener, srv *http.Server, log *slog.Logger, name string) *Server {
	s := &Server{srv: srv, addr: ln.Addr(), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		var err error
		if srv.TLSConfig != nil {
			err = srv.ServeTLS(ln, "", "")
		} else {
			err = srv.Serve(ln)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error(name+" stopped", "error", err)
		}
	}()
	return s
}

// Addr is the bound address.
func (s *Server) Addr() net.Addr { return s.addr }

// Shutdown stops accepting, lets the requests in flight finish until ctx
// ends, then closes what is left.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	if err != nil {
		_ = s.srv.Close()
	}
	<-s.done
	return err
}
