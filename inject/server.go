package inject

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/watertight/watertight/internal/httpserver"
)

// Server is the webhook's running HTTPS server.
type Server = httpserver.Server

// Start listens on addr and serves h over TLS with the certificate and key
// in certFile and keyFile (PEM). They are read now, and a failure is an
// error; afterwards a change of either file (a renewed Secret, cert-manager)
// is picked up at the next TLS handshake.
func Start(addr, certFile, keyFile string, h http.Handler, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.Default()
	}
	certs, err := NewCertReloader(certFile, keyFile, log)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("inject: listening on %q: %w", addr, err)
	}
	return httpserver.Serve(ln, &http.Server{
		Handler: h,
		TLSConfig: &tls.Config{
			MinVersion:     tls.VersionTLS12,
			GetCertificate: certs.GetCertificate,
		},
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}, log, "webhook server"), nil
}

// CertReloader serves a certificate from files and reloads it when they
// change: at each TLS handshake it reads both files (a few KiB; the API
// server keeps its connections) and parses them again if their bytes
// changed. That catches every kind of update, a Secret volume's symlink
// swap, cert-manager's renewal or a file copied in place, with no watcher
// goroutine and no reliance on modification times. A pair that does not
// load (half written, a key that does not match) is logged once and the
// previous certificate keeps serving.
type CertReloader struct {
	certFile, keyFile string
	log               *slog.Logger

	mu      sync.Mutex
	cert    *tls.Certificate
	certPEM []byte // of the pair last tried
	keyPEM  []byte
}

// NewCertReloader loads the pair; failing to is an error.
func NewCertReloader(certFile, keyFile string, log *slog.Logger) (*CertReloader, error) {
	if log == nil {
		log = slog.Default()
	}
	c := &CertReloader{certFile: certFile, keyFile: keyFile, log: log}
	certPEM, keyPEM, err := c.read()
	if err != nil {
		return nil, fmt.Errorf("inject: TLS certificate: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("inject: TLS certificate %s, key %s: %w", certFile, keyFile, err)
	}
	c.cert, c.certPEM, c.keyPEM = &cert, certPEM, keyPEM
	return c, nil
}

func (c *CertReloader) read() (certPEM, keyPEM []byte, err error) {
	if certPEM, err = os.ReadFile(c.certFile); err != nil {
		return nil, nil, err
	}
	if keyPEM, err = os.ReadFile(c.keyFile); err != nil {
		return nil, nil, err
	}
	return certPEM, keyPEM, nil
}

// GetCertificate is for tls.Config.GetCertificate.
func (c *CertReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	certPEM, keyPEM, err := c.read()
	if err != nil || (bytes.Equal(certPEM, c.certPEM) && bytes.Equal(keyPEM, c.keyPEM)) {
		// Unchanged, or missing for a moment in the middle of an update.
		return c.cert, nil
	}
	c.certPEM, c.keyPEM = certPEM, keyPEM // tried once per change, not at every handshake
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		c.log.Warn("TLS certificate changed but does not load; serving the previous one",
			"cert", c.certFile, "key", c.keyFile, "error", err)
		return c.cert, nil
	}
	c.cert = &cert
	c.log.Info("TLS certificate reloaded", "cert", c.certFile)
	return c.cert, nil
}
