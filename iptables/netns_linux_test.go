package iptables

// Kernel tests: real rules in real network namespaces.
//
// Two namespaces joined by a veth pair, "app" (the pod) and "up" (somewhere
// outside it). The rules are installed in app by Runner with Wrap {"ip",
// "netns", "exec", app}, the code path of `sidecar iptables` (whose own test
// runs the command itself). Listeners and dialers of this process live in a
// namespace because their socket was created there (netnstest.In, see
// package internal/netnstest); the helper runs as the proxy's UID there
// because it is started from a thread inside the namespace.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/watertight/watertight/internal/netnstest"
)

// requireNetns skips (or, with CI=true, fails) the test unless it can make
// namespaces and run the iptables tools.
func requireNetns(t *testing.T) {
	t.Helper()
	netnstest.Require(t, "ip", "iptables-save", "iptables-restore", "ip6tables-save", "ip6tables-restore")
}

// serve listens on addr in ns and answers every connection with one line,
// reply(conn), then closes it. Stopped when t ends.
func serve(t *testing.T, ns, network, addr string, reply func(*net.TCPConn) string) {
	t.Helper()
	var ln net.Listener
	if err := netnstest.In(ns, func() (err error) {
		ln, err = net.Listen(network, addr)
		return err
	}); err != nil {
		t.Fatalf("listen %s %s in %s: %v", network, addr, ns, err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				io.WriteString(c, reply(c.(*net.TCPConn))+"\n")
			})
		}
	})
}

func fixed(s string) func(*net.TCPConn) string { return func(*net.TCPConn) string { return s } }

// proxyReply is what a transparent proxy would do first: find where the
// connection was going.
func proxyReply(name string) func(*net.TCPConn) string {
	return func(c *net.TCPConn) string {
		dst, err := OriginalDst(c)
		if err != nil {
			return name + " error " + err.Error()
		}
		return name + " " + dst.String()
	}
}

// dial connects from ns, as this process (root), and returns the reply.
func dial(t *testing.T, ns string, addr netip.AddrPort) string {
	t.Helper()
	var reply string
	if err := netnstest.In(ns, func() (err error) {
		reply, err = dialAndRead(addr.String())
		return err
	}); err != nil {
		t.Fatalf("dial %s from %s: %v", addr, ns, err)
	}
	return reply
}

// dialAs connects from ns as a process running as uid (the test binary,
// re-executed as a helper), and returns the reply.
func dialAs(t *testing.T, ns, exe string, uid uint32, addr netip.AddrPort) string {
	t.Helper()
	var out []byte
	if err := netnstest.In(ns, func() (err error) {
		cmd := exec.Command(exe, addr.String())
		// Race-enabled binaries sleep 1 s at exit unless told otherwise.
		cmd.Env = append(os.Environ(), helperEnv+"=dial", "GORACE="+os.Getenv("GORACE")+" atexit_sleep_ms=0")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid, Groups: []uint32{}}}
		out, err = cmd.Output()
		if ee, ok := err.(*exec.ExitError); ok {
			err = fmt.Errorf("%w: %s", err, ee.Stderr)
		}
		return err
	}); err != nil {
		t.Fatalf("dial %s from %s as UID %d: %v", addr, ns, uid, err)
	}
	return strings.TrimSpace(string(out))
}

var counters = regexp.MustCompile(`\[\d+:\d+\]`)

// saved is `iptables-save -t nat` for f, without the comments (timestamps)
// and with packet counters zeroed, for comparing tables.
func saved(t *testing.T, r Runner, f Family) string {
	t.Helper()
	s, err := r.Save(context.Background(), f)
	if err != nil {
		t.Fatal(err)
	}
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if l != "" && !strings.HasPrefix(l, "#") {
			keep = append(keep, counters.ReplaceAllString(l, "[0:0]"))
		}
	}
	return strings.Join(keep, "\n")
}

func restore(t *testing.T, r Runner, f Family, script string) {
	t.Helper()
	if _, err := r.run(context.Background(), script, f.Tool("-restore"), "--noflush"); err != nil {
		t.Fatal(err)
	}
}

// addrs are one family's addresses in the topology.
type addrs struct {
	upstream, excluded, own, loopback netip.Addr
	excludedCIDR                      netip.Prefix
	// someone else's rules in the app's nat table, which must survive us
	others string
}

var families = map[Family]addrs{
	IPv4: {
		upstream:     netip.MustParseAddr("10.77.0.2"),
		excluded:     netip.MustParseAddr("10.77.0.200"),
		own:          netip.MustParseAddr("10.77.0.1"),
		loopback:     netip.MustParseAddr("127.0.0.1"),
		excludedCIDR: netip.MustParsePrefix("10.77.0.128/25"),
		others: "*nat\n:OTHER - [0:0]\n-A OUTPUT -d 192.0.2.1/32 -p tcp -j RETURN\n-A OUTPUT -p udp -j OTHER\n" +
			"-A OTHER -p udp -m udp --dport 53 -j RETURN\n-A POSTROUTING -d 192.0.2.0/24 -j MASQUERADE\nCOMMIT\n",
	},
	IPv6: {
		upstream:     netip.MustParseAddr("fd77::2"),
		excluded:     netip.MustParseAddr("fd77::c8"),
		own:          netip.MustParseAddr("fd77::1"),
		loopback:     netip.MustParseAddr("::1"),
		excludedCIDR: netip.MustParsePrefix("fd77::80/121"),
		others: "*nat\n:OTHER - [0:0]\n-A OUTPUT -d 2001:db8::1/128 -p tcp -j RETURN\n-A OUTPUT -p udp -j OTHER\n" +
			"-A OTHER -p udp -m udp --dport 53 -j RETURN\n-A POSTROUTING -d 2001:db8::/64 -j MASQUERADE\nCOMMIT\n",
	},
}

const (
	upstreamPort = 8080
	excludedPort = 2222
	localPort    = 9001 // a listener of the app's own, like an upstream-mode listener of the proxy
	proxyPort    = 15001
	proxyPort2   = 15002 // a dual-stack listener, for the second set of options
	proxyUID     = 15337
)

// topology makes the app and upstream namespaces, their veth link and
// addresses (IPv6 too when the kernel has it), and the listeners.
func topology(t *testing.T) (app string, ipv6 bool) {
	app, up := netnstest.New(t, "app"), netnstest.New(t, "up")
	ipv6 = netnstest.HasIPv6()
	appAddrs := []netip.Prefix{netip.MustParsePrefix("10.77.0.1/24")}
	upAddrs := []netip.Prefix{netip.MustParsePrefix("10.77.0.2/24"), netip.MustParsePrefix("10.77.0.200/24")}
	if ipv6 {
		appAddrs = append(appAddrs, netip.MustParsePrefix("fd77::1/64"))
		upAddrs = append(upAddrs, netip.MustParsePrefix("fd77::2/64"), netip.MustParsePrefix("fd77::c8/64"))
	}
	netnstest.Link(t, app, up, appAddrs, upAddrs)

	wild := ":" // dual-stack where IPv6 exists
	serve(t, up, "tcp", fmt.Sprint(wild, upstreamPort), fixed("upstream"))
	serve(t, up, "tcp", fmt.Sprint(wild, excludedPort), fixed("upstream"))
	serve(t, app, "tcp", fmt.Sprint(wild, localPort), fixed("local"))
	// REDIRECT sends IPv4 to 127.0.0.1 and IPv6 to ::1: one plain socket
	// per family (AF_INET, AF_INET6) on proxyPort, and one dual-stack
	// socket (IPv4 arrives as ::ffff:127.0.0.1) on proxyPort2.
	serve(t, app, "tcp4", fmt.Sprint("127.0.0.1:", proxyPort), proxyReply("proxy"))
	if ipv6 {
		serve(t, app, "tcp6", fmt.Sprint("[::1]:", proxyPort), proxyReply("proxy"))
	}
	serve(t, app, "tcp", fmt.Sprint(wild, proxyPort2), proxyReply("proxy2"))
	return app, ipv6
}

func TestRedirectInNetns(t *testing.T) {
	requireNetns(t)
	app, ipv6 := topology(t)
	exe := netnstest.PublicExecutable(t)
	r := Runner{Wrap: []string{"ip", "netns", "exec", app}}
	ctx := context.Background()
	if has, err := hasIPv6In(app); err != nil || has != ipv6 {
		t.Errorf("HasIPv6 in the app namespace = %v, %v; want %v", has, err, ipv6)
	}

	for _, f := range []Family{IPv4, IPv6} {
		t.Run(f.String(), func(t *testing.T) {
			if f == IPv6 && !ipv6 {
				t.Skip("the kernel has no IPv6")
			}
			a := families[f]
			other := IPv6
			if f == IPv6 {
				other = IPv4
			}
			at := func(addr netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(addr, port) }
			expect := func(what, got, want string) {
				t.Helper()
				if got != want {
					t.Errorf("%s: got %q, want %q", what, got, want)
				}
			}
			up := at(a.upstream, upstreamPort)

			restore(t, r, f, a.others)
			before, beforeOther := saved(t, r, f), saved(t, r, other)
			expect("before the rules", dial(t, app, up), "upstream")

			o := Options{
				ProxyPort:    proxyPort,
				ProxyUID:     proxyUID,
				ExcludePorts: []uint16{excludedPort},
				ExcludeCIDRs: []netip.Prefix{families[IPv4].excludedCIDR, families[IPv6].excludedCIDR},
			}
			if changed, err := r.Apply(ctx, o, f); err != nil || !changed {
				t.Fatalf("Apply: %v, %v", changed, err)
			}
			installed := saved(t, r, f)
			st := ParseState(installed)
			if !st.HasChain || !slices.Equal(st.ChainRules, lines(ChainRules(o, f))) || !slices.Equal(st.Jumps, []string{Jump.String()}) {
				t.Errorf("saved table holds\n%s\nwant the chain\n%s\nand one jump", installed, strings.Join(lines(ChainRules(o, f)), "\n"))
			}
			for _, l := range strings.Split(before, "\n") {
				if !strings.Contains(installed, l) {
					t.Errorf("line %q of the table before is gone:\n%s", l, installed)
				}
			}

			// The app's outbound TCP goes to the proxy, which knows where it was going.
			expect("app to upstream", dial(t, app, up), "proxy "+up.String())
			expect("another UID to upstream", dialAs(t, app, exe, proxyUID+1, up), "proxy "+up.String())
			// ...except the proxy's own, excluded ports and CIDRs, and local traffic.
			expect("proxy UID to upstream", dialAs(t, app, exe, proxyUID, up), "upstream")
			expect("excluded port", dial(t, app, at(a.upstream, excludedPort)), "upstream")
			expect("excluded CIDR", dial(t, app, at(a.excluded, upstreamPort)), "upstream")
			expect("loopback", dial(t, app, at(a.loopback, localPort)), "local")
			expect("own pod address", dial(t, app, at(a.own, localPort)), "local")
			// Dialled directly, the proxy port is not redirected, and the
			// original destination is the proxy's own address.
			self := at(a.loopback, proxyPort)
			expect("proxy port directly", dial(t, app, self), "proxy "+self.String())
			expect("other family untouched", saved(t, r, other), beforeOther)

			// Twice is harmless: nothing is written, one copy of everything.
			if changed, err := r.Apply(ctx, o, f); err != nil || changed {
				t.Errorf("second Apply: %v, %v", changed, err)
			}
			expect("table after the second Apply", saved(t, r, f), installed)
			// A stray second jump (someone ran the old rules by hand) is removed.
			restore(t, r, f, "*nat\n"+Jump.String()+"\nCOMMIT\n")
			if changed, err := r.Apply(ctx, o, f); err != nil || !changed {
				t.Errorf("Apply over a duplicate jump: %v, %v", changed, err)
			}
			expect("table after healing a duplicate jump", saved(t, r, f), installed)

			// Other options replace the rules, leaving nothing of the old ones.
			o2 := Options{ProxyPort: proxyPort2, ProxyUID: proxyUID}
			if changed, err := r.Apply(ctx, o2, f); err != nil || !changed {
				t.Fatalf("Apply with other options: %v, %v", changed, err)
			}
			if st := ParseState(saved(t, r, f)); !slices.Equal(st.ChainRules, lines(ChainRules(o2, f))) || len(st.Jumps) != 1 {
				t.Errorf("after other options: %+v", st)
			}
			expect("no longer excluded port", dial(t, app, at(a.upstream, excludedPort)), "proxy2 "+at(a.upstream, excludedPort).String())
			expect("no longer excluded CIDR", dial(t, app, at(a.excluded, upstreamPort)), "proxy2 "+at(a.excluded, upstreamPort).String())
			expect("proxy UID, other options", dialAs(t, app, exe, proxyUID, up), "upstream")

			// Cleanup restores the table exactly, and twice is harmless.
			if removed, err := r.Cleanup(ctx, f); err != nil || !removed {
				t.Fatalf("Cleanup: %v, %v", removed, err)
			}
			expect("table after Cleanup", saved(t, r, f), before)
			if removed, err := r.Cleanup(ctx, f); err != nil || removed {
				t.Errorf("second Cleanup: %v, %v", removed, err)
			}
			expect("table after the second Cleanup", saved(t, r, f), before)
			expect("other family after Cleanup", saved(t, r, other), beforeOther)
			expect("after Cleanup", dial(t, app, up), "upstream")
		})
	}
}

// OriginalDst of a connection in a namespace without connection tracking
// (no nat rules, ever) fails with ENOENT, as documented.
func TestOriginalDstWithoutConntrack(t *testing.T) {
	requireNetns(t)
	ns := netnstest.New(t, "noct")
	var ln net.Listener
	var c net.Conn
	if err := netnstest.In(ns, func() (err error) {
		if ln, err = net.Listen("tcp4", "127.0.0.1:0"); err != nil {
			return err
		}
		c, err = net.Dial("tcp4", ln.Addr().String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if dst, err := OriginalDst(s.(*net.TCPConn)); !errors.Is(err, unix.ENOENT) {
		t.Errorf("OriginalDst = %v, %v; want ENOENT", dst, err)
	}
}

func hasIPv6In(ns string) (has bool, err error) {
	err = netnstest.In(ns, func() (err error) {
		has, err = HasIPv6()
		return err
	})
	return has, err
}

// Loopback and link-local addresses are not IPv6 enough.
func TestHasIPv6LinkLocalOnly(t *testing.T) {
	requireNetns(t)
	ns := netnstest.New(t, "ll")
	netnstest.IP(t, "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
	netnstest.IP(t, "-n", ns, "addr", "add", "fe80::1/64", "dev", "eth0", "nodad")
	netnstest.IP(t, "-n", ns, "link", "set", "eth0", "up")
	if has, err := hasIPv6In(ns); err != nil || has {
		t.Errorf("HasIPv6 with ::1 and fe80::1 = %v, %v; want false", has, err)
	}
	netnstest.IP(t, "-n", ns, "addr", "add", "2001:db8::1/64", "dev", "eth0", "nodad")
	if has, err := hasIPv6In(ns); err != nil || !has {
		t.Errorf("HasIPv6 with 2001:db8::1 = %v, %v; want true", has, err)
	}
}
