package iptables

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// Re-executed as a helper process (see netns_linux_test.go).
	if h := os.Getenv(helperEnv); h != "" {
		os.Exit(runHelper(h, os.Args[1:]))
	}
	goleak.VerifyTestMain(m)
}

func defaults() Options { return Options{ProxyPort: DefaultProxyPort, ProxyUID: DefaultProxyUID} }

func TestRulesDefault(t *testing.T) {
	want4 := []string{
		"-A WATERTIGHT_OUTPUT -m owner --uid-owner 15337 -j RETURN",
		"-A WATERTIGHT_OUTPUT -o lo -j RETURN",
		"-A WATERTIGHT_OUTPUT -d 127.0.0.0/8 -j RETURN",
		"-A WATERTIGHT_OUTPUT -p tcp -j REDIRECT --to-ports 15001",
		"-A OUTPUT -p tcp -j WATERTIGHT_OUTPUT",
	}
	if got := lines(Rules(defaults(), IPv4)); !slices.Equal(got, want4) {
		t.Errorf("IPv4 rules:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want4, "\n"))
	}
	want6 := slices.Clone(want4)
	want6[2] = "-A WATERTIGHT_OUTPUT -d ::1/128 -j RETURN"
	if got := lines(Rules(defaults(), IPv6)); !slices.Equal(got, want6) {
		t.Errorf("IPv6 rules:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want6, "\n"))
	}
}

func TestRulesExclusions(t *testing.T) {
	o := Options{
		ProxyPort:    15006,
		ProxyUID:     1337,
		ExcludePorts: []uint16{22, 9090},
		ExcludeCIDRs: []netip.Prefix{
			netip.MustParsePrefix("10.0.0.0/8"),
			netip.MustParsePrefix("fd00::/8"),
			netip.MustParsePrefix("192.168.1.7/32"),
			netip.MustParsePrefix("2001:db8::1/128"),
		},
	}
	want4 := []string{
		"-A WATERTIGHT_OUTPUT -m owner --uid-owner 1337 -j RETURN",
		"-A WATERTIGHT_OUTPUT -o lo -j RETURN",
		"-A WATERTIGHT_OUTPUT -d 127.0.0.0/8 -j RETURN",
		"-A WATERTIGHT_OUTPUT -d 10.0.0.0/8 -j RETURN",
		"-A WATERTIGHT_OUTPUT -d 192.168.1.7/32 -j RETURN",
		"-A WATERTIGHT_OUTPUT -p tcp -m tcp --dport 22 -j RETURN",
		"-A WATERTIGHT_OUTPUT -p tcp -m tcp --dport 9090 -j RETURN",
		"-A WATERTIGHT_OUTPUT -p tcp -j REDIRECT --to-ports 15006",
		"-A OUTPUT -p tcp -j WATERTIGHT_OUTPUT",
	}
	if got := lines(Rules(o, IPv4)); !slices.Equal(got, want4) {
		t.Errorf("IPv4 rules:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want4, "\n"))
	}
	want6 := []string{
		"-A WATERTIGHT_OUTPUT -m owner --uid-owner 1337 -j RETURN",
		"-A WATERTIGHT_OUTPUT -o lo -j RETURN",
		"-A WATERTIGHT_OUTPUT -d ::1/128 -j RETURN",
		"-A WATERTIGHT_OUTPUT -d fd00::/8 -j RETURN",
		"-A WATERTIGHT_OUTPUT -d 2001:db8::1/128 -j RETURN",
		"-A WATERTIGHT_OUTPUT -p tcp -m tcp --dport 22 -j RETURN",
		"-A WATERTIGHT_OUTPUT -p tcp -m tcp --dport 9090 -j RETURN",
		"-A WATERTIGHT_OUTPUT -p tcp -j REDIRECT --to-ports 15006",
		"-A OUTPUT -p tcp -j WATERTIGHT_OUTPUT",
	}
	if got := lines(Rules(o, IPv6)); !slices.Equal(got, want6) {
		t.Errorf("IPv6 rules:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want6, "\n"))
	}
}

func TestScripts(t *testing.T) {
	want := `*nat
:WATERTIGHT_OUTPUT - [0:0]
-A WATERTIGHT_OUTPUT -m owner --uid-owner 15337 -j RETURN
-A WATERTIGHT_OUTPUT -o lo -j RETURN
-A WATERTIGHT_OUTPUT -d 127.0.0.0/8 -j RETURN
-A WATERTIGHT_OUTPUT -p tcp -m tcp --dport 22 -j RETURN
-A WATERTIGHT_OUTPUT -p tcp -j REDIRECT --to-ports 15001
-A OUTPUT -p tcp -j WATERTIGHT_OUTPUT
COMMIT
`
	o := defaults()
	o.ExcludePorts = []uint16{22}
	if got := Script(o, IPv4); got != want {
		t.Errorf("Script:\n%s\nwant:\n%s", got, want)
	}
	wantCleanup := "*nat\n-D OUTPUT -p tcp -j WATERTIGHT_OUTPUT\n-F WATERTIGHT_OUTPUT\n-X WATERTIGHT_OUTPUT\nCOMMIT\n"
	if got := CleanupScript(); got != wantCleanup {
		t.Errorf("CleanupScript:\n%s\nwant:\n%s", got, wantCleanup)
	}
}

func TestParse(t *testing.T) {
	ports, err := ParsePorts(" 22, 9090,,22 ,65535,")
	if err != nil || !slices.Equal(ports, []uint16{22, 9090, 65535}) {
		t.Errorf("ParsePorts = %v, %v", ports, err)
	}
	if ports, err := ParsePorts(" , "); err != nil || ports != nil {
		t.Errorf("ParsePorts(\"\") = %v, %v", ports, err)
	}
	cidrs, err := ParseCIDRs("10.0.0.0/8, 10.1.2.3/16,192.168.1.7,fd00::/8,2001:db8::1,10.0.0.0/8")
	wantCIDRs := []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("10.1.0.0/16"),
		netip.MustParsePrefix("192.168.1.7/32"),
		netip.MustParsePrefix("fd00::/8"),
		netip.MustParsePrefix("2001:db8::1/128"),
	}
	if err != nil || !slices.Equal(cidrs, wantCIDRs) {
		t.Errorf("ParseCIDRs = %v, %v", cidrs, err)
	}
	if uid, err := ParseUID("15337"); err != nil || uid != 15337 {
		t.Errorf("ParseUID = %v, %v", uid, err)
	}
	for _, c := range []struct {
		name string
		err  error
		want string
	}{
		{"port 0", second(ParsePorts("0")), `"0" is not a port number (1-65535)`},
		{"port too big", second(ParsePorts("22,70000")), `"70000" is not a port number (1-65535)`},
		{"port not a number", second(ParsePorts("ssh")), `"ssh" is not a port number`},
		{"negative port", second(ParsePort("-1")), `"-1" is not a port number`},
		{"bad CIDR", second(ParseCIDRs("10.0.0.0/33")), `"10.0.0.0/33" is not a CIDR`},
		{"CIDR name", second(ParseCIDRs("10.0.0.0/8,example.com")), `"example.com" is not a CIDR`},
		{"CIDR zone", second(ParseCIDRs("fe80::1%eth0")), `"fe80::1%eth0" is not a CIDR`},
		{"UID name", second(ParseUID("proxy")), `"proxy" is not a numeric UID`},
		{"UID negative", second(ParseUID("-1")), `"-1" is not a numeric UID`},
		{"UID too big", second(ParseUID("4294967296")), `"4294967296" is not a numeric UID`},
		{"UID -1 as unsigned", second(ParseUID("4294967295")), `"4294967295" is not a numeric UID`},
		{"validate port", Options{ProxyUID: 1}.Validate(), "proxy port: 0 is not a port number"},
		{"validate excluded port", Options{ProxyPort: 1, ExcludePorts: []uint16{0}}.Validate(), "excluded port: 0"},
		{"validate CIDR", Options{ProxyPort: 1, ExcludeCIDRs: []netip.Prefix{{}}}.Validate(), "excluded CIDR"},
	} {
		if c.err == nil || !strings.Contains(c.err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.name, c.err, c.want)
		}
	}
	if err := defaults().Validate(); err != nil {
		t.Errorf("defaults: %v", err)
	}
}

func second[T any](_ T, err error) error { return err }

// A table with someone else's rules around ours, as iptables-save prints it.
const savedWithOthers = `# Generated by iptables-save v1.8.9 (nf_tables) on Sun Nov 22 16:10:36 2026
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [3:180]
:POSTROUTING ACCEPT [0:0]
:OTHER - [0:0]
:WATERTIGHT_OUTPUT - [0:0]
-A OUTPUT -d 192.0.2.1/32 -p tcp -j RETURN
-A OUTPUT -p tcp -j WATERTIGHT_OUTPUT
-A OUTPUT -j OTHER
-A OTHER -p udp -j RETURN
-A WATERTIGHT_OUTPUT -m owner --uid-owner 15337 -j RETURN
-A WATERTIGHT_OUTPUT -o lo -j RETURN
-A WATERTIGHT_OUTPUT -d 127.0.0.0/8 -j RETURN
-A WATERTIGHT_OUTPUT -p tcp -j REDIRECT --to-ports 15001
COMMIT
# Completed on Sun Nov 22 16:10:36 2026
`

func TestStateAndChanges(t *testing.T) {
	st := ParseState(savedWithOthers)
	if !st.HasChain || len(st.ChainRules) != 4 || !slices.Equal(st.Jumps, []string{"-A OUTPUT -p tcp -j WATERTIGHT_OUTPUT"}) {
		t.Fatalf("state: %+v", st)
	}
	if s := applyScript(defaults(), IPv4, st); s != "" {
		t.Errorf("rules in place: script\n%s\nwant none", s)
	}

	// Other options: the chain is redeclared (emptied) and refilled; the
	// jump, already there, is not added again.
	o := defaults()
	o.ExcludePorts = []uint16{22}
	want := "*nat\n:WATERTIGHT_OUTPUT - [0:0]\n" + strings.Join(lines(ChainRules(o, IPv4)), "\n") + "\nCOMMIT\n"
	if s := applyScript(o, IPv4, st); s != want {
		t.Errorf("changed options:\n%s\nwant:\n%s", s, want)
	}

	// Nothing there: the whole script.
	empty := ParseState("*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j OTHER\nCOMMIT\n")
	if s := applyScript(o, IPv4, empty); s != Script(o, IPv4) {
		t.Errorf("empty table:\n%s\nwant:\n%s", s, Script(o, IPv4))
	}
	if s := cleanupScript(empty); s != "" {
		t.Errorf("cleanup of an empty table: %q", s)
	}

	// Extra or foreign-looking jumps are deleted, one canonical one kept.
	dup := st
	dup.Jumps = []string{"-A OUTPUT -j WATERTIGHT_OUTPUT", Jump.String(), Jump.String()}
	want = "*nat\n:WATERTIGHT_OUTPUT - [0:0]\n" + strings.Join(lines(ChainRules(defaults(), IPv4)), "\n") +
		"\n-D OUTPUT -j WATERTIGHT_OUTPUT\n-D OUTPUT -p tcp -j WATERTIGHT_OUTPUT\nCOMMIT\n"
	if s := applyScript(defaults(), IPv4, dup); s != want {
		t.Errorf("duplicate jumps:\n%s\nwant:\n%s", s, want)
	}
	want = "*nat\n-D OUTPUT -j WATERTIGHT_OUTPUT\n-D OUTPUT -p tcp -j WATERTIGHT_OUTPUT\n-D OUTPUT -p tcp -j WATERTIGHT_OUTPUT\n" +
		"-F WATERTIGHT_OUTPUT\n-X WATERTIGHT_OUTPUT\nCOMMIT\n"
	if s := cleanupScript(dup); s != want {
		t.Errorf("cleanup:\n%s\nwant:\n%s", s, want)
	}
	if s := cleanupScript(st); s != CleanupScript() {
		t.Errorf("cleanup:\n%s\nwant:\n%s", s, CleanupScript())
	}
}

// fakeTools is a Runner whose "iptables" is a shell script: *-save prints the
// file save, *-restore appends its input to the file restored.
func fakeTools(t *testing.T, save string) (Runner, string) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "save"), []byte(save), 0o600); err != nil {
		t.Fatal(err)
	}
	sh := `cd "$0" || exit 9
case "$1" in
*-save) [ "$2 $3" = "-t nat" ] || exit 8; cat save ;;
*-restore) [ "$2" = "--noflush" ] || exit 7; echo "# $1" >>restored; cat >>restored ;;
*) exit 6 ;;
esac`
	return Runner{Wrap: []string{"sh", "-c", sh, dir}}, filepath.Join(dir, "restored")
}

func TestRunnerWithFakeTools(t *testing.T) {
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	ctx := context.Background()
	r, restored := fakeTools(t, savedWithOthers)
	if changed, err := r.Apply(ctx, defaults(), IPv4); err != nil || changed {
		t.Errorf("Apply with the rules in place: %v, %v", changed, err)
	}
	if _, err := os.Stat(restored); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Apply with the rules in place ran iptables-restore: %v", err)
	}
	if removed, err := r.Cleanup(ctx, IPv6); err != nil || !removed {
		t.Errorf("Cleanup: %v, %v", removed, err)
	}
	if b, _ := os.ReadFile(restored); string(b) != "# ip6tables-restore\n"+CleanupScript() {
		t.Errorf("restored:\n%s", b)
	}
	if _, err := r.Apply(ctx, Options{}, IPv4); err == nil || !strings.Contains(err.Error(), "proxy port") {
		t.Errorf("Apply with invalid options: %v", err)
	}

	// A failing tool: the error names the command, says why, and shows the
	// input with line numbers.
	fail := Runner{Wrap: []string{"sh", "-c", `echo "Error occurred at line: 2" >&2; exit 2`, "fail"}}
	_, err := fail.Save(ctx, IPv6)
	if err == nil || !strings.Contains(err.Error(), "ip6tables-save -t nat: exit status 2: Error occurred at line: 2") {
		t.Errorf("failing save: %v", err)
	}
	_, err = fail.run(ctx, Script(defaults(), IPv4), "iptables-restore", "--noflush")
	if err == nil || !strings.Contains(err.Error(), "input was:\n   1  *nat\n   2  :WATERTIGHT_OUTPUT - [0:0]\n") {
		t.Errorf("failing restore: %v", err)
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Errorf("error does not wrap the exit error: %v", err)
	}
}
