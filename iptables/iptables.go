// Package iptables installs the rules that send a pod's outbound TCP through
// the sidecar, as the injected init container does (`sidecar iptables`).
//
// The rules live in one chain of the nat table, WATERTIGHT_OUTPUT, entered
// from nat OUTPUT by one jump for TCP:
//
//	-A OUTPUT -p tcp -j WATERTIGHT_OUTPUT
//	-A WATERTIGHT_OUTPUT -m owner --uid-owner 15337 -j RETURN     the proxy's own connections
//	-A WATERTIGHT_OUTPUT -o lo -j RETURN                          anything delivered locally
//	-A WATERTIGHT_OUTPUT -d 127.0.0.0/8 -j RETURN                 loopback (::1/128 for IPv6)
//	-A WATERTIGHT_OUTPUT -d 10.0.0.0/8 -j RETURN                  each excluded CIDR
//	-A WATERTIGHT_OUTPUT -p tcp -m tcp --dport 22 -j RETURN       each excluded port
//	-A WATERTIGHT_OUTPUT -p tcp -j REDIRECT --to-ports 15001      everything else
//
// Why each RETURN: the proxy's own upstream connections would otherwise be
// redirected back to it, forever (the UID rule). Traffic the app sends to
// 127.0.0.1:9001 (an upstream-mode listener) or to its own pod IP never
// leaves the pod and must reach what it addressed, not the outbound port:
// locally delivered traffic is routed through lo, so "-o lo" covers
// 127.0.0.0/8, ::1 and the pod's own addresses alike (Istio returns on
// "-o lo" for the same reason); "-d 127.0.0.0/8" states the loopback case
// on its own, independent of routing. REDIRECT rewrites the destination to
// the primary address of the loopback interface, 127.0.0.1 (IPv4) or ::1
// (IPv6), port --proxy-port, so the proxy must listen there (or on the
// wildcard address) and recovers where the app was going with OriginalDst.
//
// IPv4 and IPv6 are separate rule sets (iptables, ip6tables); each excluded
// CIDR goes to its own family. `sidecar iptables --ipv6 auto` installs the
// IPv6 set when the pod has IPv6 (HasIPv6).
//
// Kernel: conntrack and NAT for both families, the owner match and the
// REDIRECT target (xt_owner, xt_REDIRECT; with the nf_tables backend, which
// Debian's iptables uses, through nft_compat and nft_chain_nat; with the
// legacy backend, iptable_nat and ip6table_nat). Both backends print the
// rules identically and accept the same restore input.
//
// The rules are a pure function of Options (Rules, Script), so they are
// tested exactly and printed by --dry-run; Runner applies and removes them
// with the real iptables-save and iptables-restore.
package iptables

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// Chain is the nat chain that holds all of Watertight's rules.
const Chain = "WATERTIGHT_OUTPUT"

// Defaults, as in the injected init container.
const (
	DefaultProxyPort = 15001
	DefaultProxyUID  = 15337
)

// Options are the rules' parameters; the zero values of the slices exclude
// nothing.
type Options struct {
	// ProxyPort is where outbound TCP is redirected: the proxy's
	// transparent listener, on 127.0.0.1 and ::1 (or the wildcard).
	ProxyPort uint16
	// ProxyUID is the UID the proxy runs as: its connections are not
	// redirected.
	ProxyUID uint32
	// ExcludePorts are destination ports that are never redirected.
	ExcludePorts []uint16
	// ExcludeCIDRs are destinations that are never redirected. IPv4
	// prefixes go into the IPv4 rules, IPv6 prefixes into the IPv6 rules.
	ExcludeCIDRs []netip.Prefix
}

// Validate reports options that cannot make valid rules.
func (o Options) Validate() error {
	var errs []error
	if o.ProxyPort == 0 {
		errs = append(errs, errors.New("proxy port: 0 is not a port number (1-65535)"))
	}
	if o.ProxyUID == 1<<32-1 {
		errs = append(errs, errors.New("proxy UID: 4294967295 is not a UID"))
	}
	for _, p := range o.ExcludePorts {
		if p == 0 {
			errs = append(errs, errors.New("excluded port: 0 is not a port number (1-65535)"))
		}
	}
	for _, c := range o.ExcludeCIDRs {
		if !c.IsValid() || c.Addr().Zone() != "" {
			errs = append(errs, fmt.Errorf("excluded CIDR: %q is not a CIDR", c))
		}
	}
	return errors.Join(errs...)
}

// ParsePort parses one port number, 1 to 65535.
func ParsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("%q is not a port number (1-65535)", s)
	}
	return uint16(n), nil
}

// ParseUID parses a numeric UID (names are not looked up: the init
// container's image need not know the proxy's user).
func ParseUID(s string) (uint32, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 32)
	if err != nil || n == 1<<32-1 {
		return 0, fmt.Errorf("%q is not a numeric UID", s)
	}
	return uint32(n), nil
}

// ParsePorts parses a comma-separated list of ports ("22,9090"), as in the
// flag --exclude-ports and the annotation
// watertight.io/exclude-outbound-ports. Blanks and empty entries are
// ignored, duplicates dropped; "" is no ports.
func ParsePorts(s string) ([]uint16, error) {
	var out []uint16
	seen := map[uint16]bool{}
	for _, f := range splitList(s) {
		p, err := ParsePort(f)
		if err != nil {
			return nil, err
		}
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out, nil
}

// ParseCIDRs parses a comma-separated list of CIDRs ("10.0.0.0/8,fd00::/8"),
// as in the flag --exclude-cidrs and the annotation
// watertight.io/exclude-outbound-cidrs. A bare address is that one host
// (/32 or /128); host bits are cleared (10.1.2.3/8 is 10.0.0.0/8), as
// iptables does. Blanks and empty entries are ignored, duplicates dropped;
// "" is no CIDRs.
func ParseCIDRs(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	seen := map[netip.Prefix]bool{}
	for _, f := range splitList(s) {
		var p netip.Prefix
		var err error
		if strings.Contains(f, "/") {
			p, err = netip.ParsePrefix(f)
		} else {
			var a netip.Addr
			if a, err = netip.ParseAddr(f); err == nil && a.Zone() == "" {
				p = netip.PrefixFrom(a, a.BitLen())
			}
		}
		if err != nil || !p.IsValid() {
			return nil, fmt.Errorf("%q is not a CIDR (like 10.0.0.0/8 or fd00::/8) or an IP address", f)
		}
		if p = p.Masked(); !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out, nil
}

// splitList splits a comma-separated list, ignoring blanks around entries
// and empty entries (a trailing comma), as the injector reads annotations.
func splitList(s string) []string {
	var out []string
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// Family is an IP family, which has its own tables and tools.
type Family int

// The families.
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

func (f Family) String() string {
	if f == IPv6 {
		return "ipv6"
	}
	return "ipv4"
}

// Tool names the family's tool: Tool("-save") is "iptables-save" or
// "ip6tables-save".
func (f Family) Tool(suffix string) string {
	if f == IPv6 {
		return "ip6tables" + suffix
	}
	return "iptables" + suffix
}

func (f Family) has(a netip.Addr) bool { return a.Is4() == (f == IPv4) }

// Rule is one rule, appended to Chain with the match and target Args,
// written the way iptables-save prints it (so that a saved table can be
// compared with what we installed, line for line).
type Rule struct {
	Chain string
	Args  []string
}

// String is the rule as an iptables-restore line: "-A CHAIN ARGS...".
func (r Rule) String() string { return "-A " + r.Chain + " " + strings.Join(r.Args, " ") }

// Jump is the one rule Watertight adds outside its own chain: nat OUTPUT
// sends TCP to Chain. Only TCP enters the chain; UDP (DNS) and the rest are
// never touched.
var Jump = Rule{Chain: "OUTPUT", Args: []string{"-p", "tcp", "-j", Chain}}

// ChainRules are the rules of Chain for family f, in order: the RETURNs,
// then the REDIRECT.
func ChainRules(o Options, f Family) []Rule {
	rule := func(args ...string) Rule { return Rule{Chain: Chain, Args: args} }
	loopback := "127.0.0.0/8"
	if f == IPv6 {
		loopback = "::1/128"
	}
	rs := []Rule{
		rule("-m", "owner", "--uid-owner", strconv.FormatUint(uint64(o.ProxyUID), 10), "-j", "RETURN"),
		rule("-o", "lo", "-j", "RETURN"),
		rule("-d", loopback, "-j", "RETURN"),
	}
	for _, c := range o.ExcludeCIDRs {
		if f.has(c.Addr()) {
			rs = append(rs, rule("-d", c.Masked().String(), "-j", "RETURN"))
		}
	}
	for _, p := range o.ExcludePorts {
		rs = append(rs, rule("-p", "tcp", "-m", "tcp", "--dport", strconv.Itoa(int(p)), "-j", "RETURN"))
	}
	return append(rs, rule("-p", "tcp", "-j", "REDIRECT", "--to-ports", strconv.Itoa(int(o.ProxyPort))))
}

// Rules are all the rules for family f: the chain's, then the Jump into it.
func Rules(o Options, f Family) []Rule { return append(ChainRules(o, f), Jump) }

// Script is the iptables-restore input (for `iptables-restore --noflush`)
// that installs the rules of family f on a table that has none of them.
// Declaring the chain creates it, or empties it if it exists: a rerun
// replaces the chain's rules rather than adding to them. (Runner.Apply adds
// the jump only when it is missing.)
func Script(o Options, f Family) string {
	return script(append([]string{declareChain}, lines(Rules(o, f))...))
}

// CleanupScript is the iptables-restore input that removes the jump and the
// chain, for a table that has both (Runner.Cleanup writes only what is there).
func CleanupScript() string {
	return script([]string{deleteLine(Jump.String()), flushChain, deleteChain})
}

const (
	declareChain = ":" + Chain + " - [0:0]"
	flushChain   = "-F " + Chain
	deleteChain  = "-X " + Chain
)

// deleteLine turns an "-A CHAIN ARGS" line into the "-D CHAIN ARGS" that
// deletes that rule.
func deleteLine(add string) string { return "-D " + strings.TrimPrefix(add, "-A ") }

func lines(rs []Rule) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.String()
	}
	return out
}

func script(ls []string) string {
	var b strings.Builder
	b.WriteString("*nat\n")
	for _, l := range ls {
		b.WriteString(l + "\n")
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// HasIPv6 reports whether the network namespace of the calling thread (for
// the init container: the pod's) has an IPv6 address that reaches beyond
// it: one that is neither loopback nor link-local. A pod without one has no
// IPv6 traffic to capture.
func HasIPv6() (bool, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false, err
	}
	for _, a := range addrs {
		n, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Is6() && !ip.Is4In6() && !ip.IsLoopback() && !ip.IsLinkLocalUnicast() {
			return true, nil
		}
	}
	return false, nil
}
