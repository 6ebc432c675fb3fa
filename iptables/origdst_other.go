//go:build !linux

package iptables

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// OriginalDst needs Linux's connection tracking; elsewhere it fails with
// errors.ErrUnsupported.
func OriginalDst(*net.TCPConn) (netip.AddrPort, error) {
	return netip.AddrPort{}, fmt.Errorf("original destination: %w", errors.ErrUnsupported)
}
