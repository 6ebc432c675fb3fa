package netnstest

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// In runs fn on an OS thread inside the named namespace. The thread is
// locked and never unlocked: when the goroutine ends, the runtime ends the
// thread, so no other goroutine ever runs in the namespace by accident.
func In(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		f, err := os.Open(filepath.Join("/run/netns", ns))
		if err != nil {
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Listen listens on addr in ns; the listener is closed when t ends.
func Listen(t testing.TB, ns, network, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	if err := In(ns, func() (err error) {
		ln, err = net.Listen(network, addr)
		return err
	}); err != nil {
		t.Fatalf("listen %s %s in %s: %v", network, addr, ns, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// DialContext dials from ns, as this process; it fits
// http.Transport.DialContext.
func DialContext(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (c net.Conn, err error) {
		err = In(ns, func() (err error) {
			c, err = new(net.Dialer).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// MAC is the hardware address of the interface dev in ns.
func MAC(t testing.TB, ns, dev string) string {
	t.Helper()
	var mac string
	if err := In(ns, func() error {
		ifc, err := net.InterfaceByName(dev)
		if err == nil {
			mac = ifc.HardwareAddr.String()
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return mac
}

// Link joins namespaces a and b with a veth pair, named eth0 on both
// sides, gives each side its addresses and brings the link up. IPv6
// addresses are added with nodad (usable at once, no duplicate address
// detection to wait for), and each side gets a static neighbour entry for
// each of the other's: neighbour discovery right after the link comes up
// loses the first solicitation (the peer has not joined the solicited-node
// group yet), and the first IPv6 connection would wait 1 s for a
// retransmission.
func Link(t testing.TB, a, b string, aAddrs, bAddrs []netip.Prefix) {
	t.Helper()
	IP(t, "link", "add", "eth0", "netns", a, "type", "veth", "peer", "name", "eth0", "netns", b)
	for ns, addrs := range map[string][]netip.Prefix{a: aAddrs, b: bAddrs} {
		for _, p := range addrs {
			args := []string{"-n", ns, "addr", "add", p.String(), "dev", "eth0"}
			if p.Addr().Is6() {
				args = append(args, "nodad")
			}
			IP(t, args...)
		}
	}
	IP(t, "-n", a, "link", "set", "eth0", "up")
	IP(t, "-n", b, "link", "set", "eth0", "up")
	neighbours := func(ns, mac string, of []netip.Prefix) {
		for _, p := range of {
			if p.Addr().Is6() {
				IP(t, "-n", ns, "neigh", "replace", p.Addr().String(), "lladdr", mac, "dev", "eth0", "nud", "permanent")
			}
		}
	}
	neighbours(a, MAC(t, b, "eth0"), bAddrs)
	neighbours(b, MAC(t, a, "eth0"), aAddrs)
}
