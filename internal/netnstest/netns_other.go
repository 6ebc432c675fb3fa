//go:build !linux

package netnstest

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
)

var errNotLinux = errors.New("network namespaces are Linux only")

// In fails: network namespaces are Linux only (Require skips such tests).
func In(string, func() error) error { return errNotLinux }

// Listen fails t.
func Listen(t testing.TB, _, _, _ string) net.Listener { t.Helper(); t.Fatal(errNotLinux); return nil }

// DialContext fails.
func DialContext(string) func(context.Context, string, string) (net.Conn, error) {
	return func(context.Context, string, string) (net.Conn, error) { return nil, errNotLinux }
}

// MAC fails t.
func MAC(t testing.TB, _, _ string) string { t.Helper(); t.Fatal(errNotLinux); return "" }

// Link fails t.
func Link(t testing.TB, _, _ string, _, _ []netip.Prefix) { t.Helper(); t.Fatal(errNotLinux) }
