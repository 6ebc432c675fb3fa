package iptables

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strconv"

	"golang.org/x/sys/unix"
)

// ip6tSOOriginalDst is IP6T_SO_ORIGINAL_DST from
// <linux/netfilter_ipv6/ip6_tables.h>, which x/sys/unix does not define.
const ip6tSOOriginalDst = 80

// OriginalDst is where a connection that REDIRECT sent to the proxy was
// going, read from the kernel's connection tracking: getsockopt(SOL_IP,
// SO_ORIGINAL_DST) for IPv4, getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST) for
// IPv6. An IPv4 connection accepted by a dual-stack listener ("[::]:15001",
// local address ::ffff:127.0.0.1) is IPv4 for this purpose.
//
// A connection that was not redirected (someone dialled the proxy port
// directly) reports the address it reached, that is c.LocalAddr(): a proxy
// must treat that as "no original destination" rather than forward to
// itself. Without connection tracking in the namespace (no nat rules were
// ever installed) the error wraps unix.ENOENT.
func OriginalDst(c *net.TCPConn) (netip.AddrPort, error) {
	local, ok := c.LocalAddr().(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("original destination: local address %v is not TCP", c.LocalAddr())
	}
	ipv4 := local.AddrPort().Addr().Unmap().Is4()
	raw, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	var dst netip.AddrPort
	var opErr error
	err = raw.Control(func(fd uintptr) {
		// x/sys/unix has no getter for a sockaddr; these two return
		// structs at least as large as the sockaddr the kernel writes
		// (sockaddr_in: 16 bytes into IPv6Mreq's 20; sockaddr_in6: 28
		// bytes into IPv6MTUInfo's 32), and the kernel accepts any
		// buffer that large.
		if ipv4 {
			m, err := unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, unix.SO_ORIGINAL_DST)
			if err != nil {
				opErr = err
				return
			}
			b := m.Multiaddr[:] // struct sockaddr_in: family (host order), port, address
			if fam := binary.NativeEndian.Uint16(b[0:2]); fam != unix.AF_INET {
				opErr = fmt.Errorf("address family %d, want AF_INET", fam)
				return
			}
			dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), binary.BigEndian.Uint16(b[2:4]))
			return
		}
		m, err := unix.GetsockoptIPv6MTUInfo(int(fd), unix.SOL_IPV6, ip6tSOOriginalDst)
		if err != nil {
			opErr = err
			return
		}
		sa := m.Addr // struct sockaddr_in6; Port holds the network-order bytes
		if sa.Family != unix.AF_INET6 {
			opErr = fmt.Errorf("address family %d, want AF_INET6", sa.Family)
			return
		}
		port := binary.BigEndian.Uint16(binary.NativeEndian.AppendUint16(nil, sa.Port))
		addr := netip.AddrFrom16(sa.Addr)
		if sa.Scope_id != 0 {
			addr = addr.WithZone(strconv.FormatUint(uint64(sa.Scope_id), 10))
		}
		dst = netip.AddrPortFrom(addr, port)
	})
	if err == nil {
		err = opErr
	}
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	return dst, nil
}
