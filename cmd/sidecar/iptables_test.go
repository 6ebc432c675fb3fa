package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/watertight/watertight/internal/netnstest"
	"github.com/watertight/watertight/iptables"
)

func TestIptablesFlags(t *testing.T) {
	var out, errb bytes.Buffer
	code := run([]string{"iptables", "--proxy-port", "70000", "--proxy-uid", "proxy", "--exclude-ports", "22,0",
		"--exclude-cidrs", "10.0.0.0/8,10.0.0.0/40", "--ipv6", "maybe"}, &out, &errb)
	if code != 1 {
		t.Errorf("bad flags: exit %d, want 1", code)
	}
	for _, want := range []string{
		`--proxy-port: "70000" is not a port number (1-65535)`,
		`--proxy-uid: "proxy" is not a numeric UID`,
		`--exclude-ports: "0" is not a port number (1-65535)`,
		`--exclude-cidrs: "10.0.0.0/40" is not a CIDR`,
		`--ipv6: "maybe" is not auto, true or false`,
	} {
		if !strings.Contains(errb.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, errb.String())
		}
	}
	if out.Len() != 0 {
		t.Errorf("bad flags printed on stdout: %q", out.String())
	}

	errb.Reset()
	if code := run([]string{"iptables", "--help"}, &out, &errb); code != 0 || !strings.Contains(errb.String(), "-exclude-cidrs") {
		t.Errorf("--help: %d %q", code, errb.String())
	}
	if code := run([]string{"iptables", "extra"}, &out, &errb); code != 2 {
		t.Errorf("stray argument: exit %d, want 2", code)
	}

	// --dry-run prints the exact restore input of each family, with no
	// iptables needed.
	out.Reset()
	code = run([]string{"iptables", "--dry-run", "--proxy-port", "15006", "--proxy-uid", "1337",
		"--exclude-ports", "22, 9090", "--exclude-cidrs", "10.0.0.0/8,fd00::/8"}, &out, &errb)
	o := iptables.Options{ProxyPort: 15006, ProxyUID: 1337, ExcludePorts: []uint16{22, 9090}}
	o.ExcludeCIDRs, _ = iptables.ParseCIDRs("10.0.0.0/8,fd00::/8")
	for _, want := range []string{
		"iptables-restore --noflush <<'EOF'\n" + iptables.Script(o, iptables.IPv4) + "EOF\n",
		"ip6tables-restore --noflush <<'EOF'\n" + iptables.Script(o, iptables.IPv6) + "EOF\n",
		"-A WATERTIGHT_OUTPUT -p tcp -j REDIRECT --to-ports 15006\n",
		"-A WATERTIGHT_OUTPUT -d fd00::/8 -j RETURN\n",
	} {
		if code != 0 || !strings.Contains(out.String(), want) {
			t.Errorf("--dry-run: exit %d, output lacks\n%s\n---- output:\n%s", code, want, out.String())
		}
	}
	out.Reset()
	run([]string{"iptables", "--dry-run", "--cleanup", "--ipv6", "false"}, &out, &errb)
	if !strings.Contains(out.String(), "iptables-restore --noflush <<'EOF'\n"+iptables.CleanupScript()+"EOF\n") ||
		strings.Contains(out.String(), "ip6tables") {
		t.Errorf("--dry-run --cleanup --ipv6 false:\n%s", out.String())
	}
}

// The command itself, run in a network namespace: what it installs, that
// twice is harmless, that --dry-run changes nothing and prints a script
// that installs the same, and that --cleanup restores the table.
// (iptables/netns_linux_test.go proves what the rules do to connections.)
func TestIptablesCommandInNetns(t *testing.T) {
	requireNetnsTools(t)
	ns := newTestNetns(t)
	// A pod with IPv6 (--ipv6 auto installs IPv6 rules only then); a veth
	// pair, as this kernel may lack the dummy driver.
	nsSh(t, ns, "ip link add eth0 type veth peer name eth1 && ip addr add fd00::1/64 dev eth0 nodad && ip link set eth0 up")
	nsSh(t, ns, "iptables -t nat -A OUTPUT -d 192.0.2.1/32 -p tcp -j RETURN && ip6tables -t nat -A OUTPUT -d 2001:db8::1/128 -p tcp -j RETURN")
	before := nsSh(t, ns, natTables)

	flags := []string{"--proxy-port", "15001", "--proxy-uid", "15337", "--exclude-ports", "22,9090", "--exclude-cidrs", "10.0.0.0/8,fd00::/8"}
	dry := sidecarIn(t, ns, 0, append([]string{"iptables", "--dry-run"}, flags...)...)
	if got := nsSh(t, ns, natTables); got != before {
		t.Errorf("--dry-run changed the tables:\n%s\nwas:\n%s", got, before)
	}

	out := sidecarIn(t, ns, 0, append([]string{"iptables"}, flags...)...)
	if out != "ipv4: outbound TCP redirected to port 15001 (chain WATERTIGHT_OUTPUT)\n"+
		"ipv6: outbound TCP redirected to port 15001 (chain WATERTIGHT_OUTPUT)\n" {
		t.Errorf("output: %q", out)
	}
	installed := nsSh(t, ns, natTables)
	for _, want := range []string{
		"-A OUTPUT -d 192.0.2.1/32 -p tcp -j RETURN\n-A OUTPUT -p tcp -j WATERTIGHT_OUTPUT\n",
		"-A WATERTIGHT_OUTPUT -m owner --uid-owner 15337 -j RETURN\n-A WATERTIGHT_OUTPUT -o lo -j RETURN\n" +
			"-A WATERTIGHT_OUTPUT -d 127.0.0.0/8 -j RETURN\n-A WATERTIGHT_OUTPUT -d 10.0.0.0/8 -j RETURN\n" +
			"-A WATERTIGHT_OUTPUT -p tcp -m tcp --dport 22 -j RETURN\n-A WATERTIGHT_OUTPUT -p tcp -m tcp --dport 9090 -j RETURN\n" +
			"-A WATERTIGHT_OUTPUT -p tcp -j REDIRECT --to-ports 15001\n",
		"-A WATERTIGHT_OUTPUT -d ::1/128 -j RETURN\n-A WATERTIGHT_OUTPUT -d fd00::/8 -j RETURN\n",
	} {
		if !strings.Contains(installed, want) {
			t.Errorf("tables lack\n%s\n---- tables:\n%s", want, installed)
		}
	}

	out = sidecarIn(t, ns, 0, append([]string{"iptables"}, flags...)...)
	if out != "ipv4: rules already in place, nothing changed\nipv6: rules already in place, nothing changed\n" {
		t.Errorf("second run: %q", out)
	}
	if got := nsSh(t, ns, natTables); got != installed {
		t.Errorf("second run changed the tables:\n%s\nwas:\n%s", got, installed)
	}

	// The dry run's script, run by a shell in a namespace with the same
	// starting point, makes the same tables.
	ns2 := newTestNetns(t)
	nsSh(t, ns2, "iptables -t nat -A OUTPUT -d 192.0.2.1/32 -p tcp -j RETURN && ip6tables -t nat -A OUTPUT -d 2001:db8::1/128 -p tcp -j RETURN")
	nsSh(t, ns2, dry)
	if got := nsSh(t, ns2, natTables); got != installed {
		t.Errorf("the --dry-run script made\n%s\nthe command\n%s", got, installed)
	}

	out = sidecarIn(t, ns, 0, "iptables", "--cleanup")
	if out != "ipv4: removed chain WATERTIGHT_OUTPUT and its jump from nat OUTPUT\n"+
		"ipv6: removed chain WATERTIGHT_OUTPUT and its jump from nat OUTPUT\n" {
		t.Errorf("--cleanup output: %q", out)
	}
	if got := nsSh(t, ns, natTables); got != before {
		t.Errorf("after --cleanup:\n%s\nbefore:\n%s", got, before)
	}
	if out := sidecarIn(t, ns, 0, "iptables", "--cleanup"); out != "ipv4: nothing to remove\nipv6: nothing to remove\n" {
		t.Errorf("second --cleanup: %q", out)
	}

	// --ipv6 false leaves ip6tables alone.
	sidecarIn(t, ns, 0, "iptables", "--ipv6", "false")
	got, before6, _ := strings.Cut(nsSh(t, ns, natTables), ipv6Mark)
	if _, want6, _ := strings.Cut(before, ipv6Mark); before6 != want6 || !strings.Contains(got, "WATERTIGHT_OUTPUT") {
		t.Errorf("--ipv6 false: IPv4\n%s\nIPv6\n%s", got, before6)
	}
	sidecarIn(t, ns, 0, "iptables", "--cleanup", "--ipv6", "false")
	if got := nsSh(t, ns, natTables); got != before {
		t.Errorf("after --cleanup --ipv6 false:\n%s\nbefore:\n%s", got, before)
	}

	// Without ip6tables, a pod with IPv6 cannot be captured: an error
	// (with --ipv6 auto, true), unless --ipv6 false.
	bin := t.TempDir()
	for _, tool := range []string{"iptables-save", "iptables-restore"} {
		path, err := exec.LookPath(tool)
		if err == nil {
			err = os.Symlink(path, filepath.Join(bin, tool))
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"iptables"}, 1, "sidecar: ipv6: ip6tables-save -t nat: exec: \"ip6tables-save\": executable file not found in $PATH\n" +
			"(the pod has IPv6; --ipv6 false leaves its IPv6 traffic uncaptured)\n"},
		{[]string{"iptables", "--ipv6", "true"}, 1, "sidecar: ipv6: ip6tables-save -t nat: exec:"},
		{[]string{"iptables", "--ipv6", "false"}, 0, "ipv4: rules already in place, nothing changed\n"},
		{[]string{"iptables", "--cleanup"}, 0, "ipv4: removed chain WATERTIGHT_OUTPUT and its jump from nat OUTPUT\n" +
			"ipv6: skipped, ip6tables does not work here: ip6tables-save -t nat: exec: \"ip6tables-save\": executable file not found in $PATH (--ipv6=auto)\n"},
	} {
		cmd := sidecarInCmd(ns, c.args...)
		cmd.Env = append(cmd.Env, "PATH="+bin)
		out, _ := cmd.CombinedOutput()
		if cmd.ProcessState.ExitCode() != c.code || !strings.Contains(string(out), c.want) {
			t.Errorf("%v without ip6tables: exit %d, want %d; output lacks %q:\n%s", c.args, cmd.ProcessState.ExitCode(), c.code, c.want, out)
		}
	}
	if got := nsSh(t, ns, natTables); got != before {
		t.Errorf("after the last --cleanup:\n%s\nbefore:\n%s", got, before)
	}

	// A pod without IPv6: --ipv6 auto leaves ip6tables alone.
	ns4 := newTestNetns(t)
	before4 := nsSh(t, ns4, natTables)
	if out := sidecarIn(t, ns4, 0, "iptables"); out != "ipv4: outbound TCP redirected to port 15001 (chain WATERTIGHT_OUTPUT)\n"+
		"ipv6: skipped, no IPv6 address here but loopback and link-local (--ipv6=auto)\n" {
		t.Errorf("pod without IPv6: %q", out)
	}
	v4, v6, _ := strings.Cut(nsSh(t, ns4, natTables), ipv6Mark)
	if _, want6, _ := strings.Cut(before4, ipv6Mark); v6 != want6 || !strings.Contains(v4, "-A OUTPUT -p tcp -j WATERTIGHT_OUTPUT") {
		t.Errorf("pod without IPv6: IPv4\n%s\nIPv6\n%s", v4, v6)
	}
	if out := sidecarIn(t, ns4, 0, "iptables", "--cleanup"); out != "ipv4: removed chain WATERTIGHT_OUTPUT and its jump from nat OUTPUT\n"+
		"ipv6: nothing to remove\n" {
		t.Errorf("pod without IPv6, --cleanup: %q", out)
	}
	if got := nsSh(t, ns4, natTables); got != before4 {
		t.Errorf("pod without IPv6, after --cleanup:\n%s\nbefore:\n%s", got, before4)
	}
}

// requireNetnsTools skips (or, with CI=true, fails) unless the test can make
// network namespaces and run the iptables tools.
func requireNetnsTools(t *testing.T) {
	t.Helper()
	netnstest.Require(t, "ip", "iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore")
}

// newTestNetns makes a network namespace, deleted when t ends.
func newTestNetns(t *testing.T) string {
	t.Helper()
	return netnstest.New(t, "cmd")
}

// sidecarInCmd is the command `sidecar ARGS...` inside the namespace: this
// test binary, which runs main() when re-executed (see TestMain).
func sidecarInCmd(ns string, args ...string) *exec.Cmd {
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, os.Args[0]}, args...)...)
	// Race-enabled binaries sleep 1 s at exit unless told otherwise.
	cmd.Env = append(os.Environ(), "WATERTIGHT_TEST_MAIN=1", "GORACE="+os.Getenv("GORACE")+" atexit_sleep_ms=0")
	return cmd
}

// sidecarIn runs `sidecar ARGS...` inside the namespace, wants exit code
// code, and returns its stdout.
func sidecarIn(t *testing.T, ns string, code int, args ...string) string {
	t.Helper()
	cmd := sidecarInCmd(ns, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, _ := cmd.Output()
	if got := cmd.ProcessState.ExitCode(); got != code {
		t.Fatalf("sidecar %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), got, code, out, stderr.String())
	}
	return string(out)
}

const ipv6Mark = "---- ipv6\n"

// natTables is a shell command printing both nat tables.
const natTables = "iptables-save -t nat && echo '---- ipv6' && ip6tables-save -t nat"

var saveNoise = regexp.MustCompile(`(?m)^#.*\n|\[\d+:\d+\]`)

// nsSh runs a shell script inside the namespace and returns its output
// without iptables-save's comments (timestamps) and counters.
func nsSh(t *testing.T, ns, script string) string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, "sh", "-ec", script).CombinedOutput()
	if err != nil {
		t.Fatalf("in %s: %s: %v\n%s", ns, script, err, out)
	}
	return saveNoise.ReplaceAllString(string(out), "")
}
