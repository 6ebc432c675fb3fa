package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/watertight/watertight/iptables"
)

const iptablesSynopsis = "iptables [--proxy-port 15001] [--proxy-uid 15337] [--exclude-ports 22,9090] " +
	"[--exclude-cidrs 10.0.0.0/8] [--ipv6 auto|true|false] [--cleanup] [--dry-run]"

// runIptables is the injected init container's step: it sends the pod's
// outbound TCP to the proxy (see package iptables for the rules and how
// they are applied). Its flags mirror the pod annotations
// watertight.io/exclude-outbound-ports and watertight.io/exclude-outbound-cidrs.
//
// IPv6: with --ipv6 auto (the default) the IPv6 rules are installed when
// the pod has IPv6, that is an IPv6 address other than loopback and
// link-local (the CNI has configured the pod's interfaces before any init
// container runs); a pod without one has no IPv6 traffic to capture. A pod
// that has IPv6 but where ip6tables fails is an error, not a silent bypass
// of the proxy. --ipv6 true installs them regardless, --ipv6 false never
// touches ip6tables. --cleanup removes the IPv6 rules wherever ip6tables
// works (unless --ipv6 false).
func runIptables(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("iptables", iptablesSynopsis, stderr)
	port := fs.String("proxy-port", strconv.Itoa(iptables.DefaultProxyPort), "port of the proxy's transparent listener (on 127.0.0.1 and ::1): outbound TCP is redirected to it")
	uid := fs.String("proxy-uid", strconv.Itoa(iptables.DefaultProxyUID), "numeric UID the proxy runs as: its connections are not redirected")
	exPorts := fs.String("exclude-ports", "", "comma-separated destination ports never redirected (annotation watertight.io/exclude-outbound-ports)")
	exCIDRs := fs.String("exclude-cidrs", "", "comma-separated destination CIDRs (or addresses) never redirected, IPv4 and IPv6 (annotation watertight.io/exclude-outbound-cidrs)")
	ipv6 := fs.String("ipv6", "auto", "IPv6 rules with ip6tables too: auto (when the pod has an IPv6 address beyond loopback and link-local), true or false")
	cleanup := fs.Bool("cleanup", false, "remove the rules instead: the chain "+iptables.Chain+" and its jump from nat OUTPUT, nothing else")
	dryRun := fs.Bool("dry-run", false, "print the iptables-restore input as a shell script and change nothing")
	if err := parse(fs, args); err != nil {
		return err
	}

	var o iptables.Options
	var errs []error
	flagErr := func(name string, err error) {
		if err != nil {
			errs = append(errs, fmt.Errorf("--%s: %w", name, err))
		}
	}
	var err error
	o.ProxyPort, err = iptables.ParsePort(*port)
	flagErr("proxy-port", err)
	o.ProxyUID, err = iptables.ParseUID(*uid)
	flagErr("proxy-uid", err)
	o.ExcludePorts, err = iptables.ParsePorts(*exPorts)
	flagErr("exclude-ports", err)
	o.ExcludeCIDRs, err = iptables.ParseCIDRs(*exCIDRs)
	flagErr("exclude-cidrs", err)
	mode := strings.ToLower(*ipv6)
	if mode != "auto" {
		if b, err := strconv.ParseBool(mode); err != nil {
			errs = append(errs, fmt.Errorf("--ipv6: %q is not auto, true or false", *ipv6))
		} else {
			mode = strconv.FormatBool(b)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}

	families := []iptables.Family{iptables.IPv4}
	if mode != "false" {
		families = append(families, iptables.IPv6)
	}
	if *dryRun {
		printDryRun(stdout, o, families, mode, *cleanup)
		return nil
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	r := iptables.Runner{}
	for _, f := range families {
		if f == iptables.IPv6 && mode == "auto" {
			skip, err := skipIPv6(ctx, r, *cleanup)
			if err != nil {
				return err
			}
			if skip != "" {
				fmt.Fprintf(stdout, "%s: skipped, %s (--ipv6=auto)\n", f, skip)
				continue
			}
		}
		if *cleanup {
			removed, err := r.Cleanup(ctx, f)
			if err != nil {
				return fmt.Errorf("%s: %w", f, err)
			}
			if removed {
				fmt.Fprintf(stdout, "%s: removed chain %s and its jump from nat OUTPUT\n", f, iptables.Chain)
			} else {
				fmt.Fprintf(stdout, "%s: nothing to remove\n", f)
			}
			continue
		}
		changed, err := r.Apply(ctx, o, f)
		if err != nil {
			if f == iptables.IPv6 && mode == "auto" {
				err = fmt.Errorf("%w\n(the pod has IPv6; --ipv6 false leaves its IPv6 traffic uncaptured)", err)
			}
			return fmt.Errorf("%s: %w", f, err)
		}
		if changed {
			fmt.Fprintf(stdout, "%s: outbound TCP redirected to port %d (chain %s)\n", f, o.ProxyPort, iptables.Chain)
		} else {
			fmt.Fprintf(stdout, "%s: rules already in place, nothing changed\n", f)
		}
	}
	return nil
}

// skipIPv6 says why --ipv6 auto leaves IPv6 alone, or "" to go ahead:
// installing, when the pod has IPv6; cleaning up, when ip6tables works.
func skipIPv6(ctx context.Context, r iptables.Runner, cleanup bool) (string, error) {
	if cleanup {
		if _, err := r.Save(ctx, iptables.IPv6); err != nil {
			return "ip6tables does not work here: " + firstLine(err.Error()), nil
		}
		return "", nil
	}
	has, err := iptables.HasIPv6()
	if err != nil {
		return "", fmt.Errorf("ipv6: looking for IPv6 addresses: %w", err)
	}
	if !has {
		return "no IPv6 address here but loopback and link-local", nil
	}
	return "", nil
}

// printDryRun prints what would be applied as a shell script, without
// looking at the tables.
func printDryRun(w io.Writer, o iptables.Options, families []iptables.Family, mode string, cleanup bool) {
	if cleanup {
		fmt.Fprintf(w, "# Removes the jump from nat OUTPUT to %s and the chain; only what exists is deleted.\n", iptables.Chain)
	} else {
		fmt.Fprintf(w, "# Redirects outbound TCP to port %d, except UID %d, loopback and exclusions.\n", o.ProxyPort, o.ProxyUID)
		fmt.Fprintln(w, "# `sidecar iptables` reads the table first: on a rerun it replaces the chain's rules and adds the jump only if missing.")
	}
	for _, f := range families {
		if f == iptables.IPv6 && mode == "auto" {
			fmt.Fprintln(w, "# IPv6 (--ipv6=auto): only in a pod with an IPv6 address beyond loopback and link-local.")
		}
		s := iptables.Script(o, f)
		if cleanup {
			s = iptables.CleanupScript()
		}
		fmt.Fprintf(w, "%s --noflush <<'EOF'\n%sEOF\n", f.Tool("-restore"), s)
	}
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}
