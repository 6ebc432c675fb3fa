package iptables

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"slices"
	"strings"
)

// Runner applies and removes the rules with the real tools,
// iptables-save and iptables-restore (ip6tables-* for IPv6), found in PATH;
// which backend they drive (nf_tables or legacy) is the image's choice.
//
// Every change is one `iptables-restore --noflush` transaction, computed
// from one `iptables-save -t nat` read, rather than a series of
// `iptables -N/-A/-C/-D/-X` commands:
//
//   - Atomic. The chain, its rules and the jump into it appear together.
//     Rule-by-rule commands leave a window (and, when one fails midway, a
//     lasting state) where the jump exists but the proxy's UID RETURN does
//     not yet, and the proxy's own connections loop back into it.
//   - Idempotent. Declaring the chain empties it and its rules refill it, so
//     a rerun leaves one copy, and a rerun with other options replaces the
//     old rules instead of piling new ones on. The jump lives in nat OUTPUT,
//     a chain we do not own and must not flush, so it is added only when the
//     saved table lacks it (extra copies, should any exist, are deleted).
//     When the table already holds exactly the wanted rules nothing is
//     written at all.
//   - Exact cleanup. Only the jumps the saved table shows and our own chain
//     are deleted; --noflush leaves every other rule, chain and table alone.
//
// `iptables -C` checks would take a process per rule and still not be
// atomic. The read and the write are two steps; the init container is the
// only writer of a pod's nat table, so nothing changes in between.
type Runner struct {
	// Wrap, when set, is put in front of every command: {"ip", "netns",
	// "exec", "app"} acts inside the network namespace "app". Empty: run
	// the tools directly, in the caller's namespaces.
	Wrap []string
}

// State is what a nat table holds of Watertight's rules.
type State struct {
	HasChain   bool     // Chain exists
	ChainRules []string // its rules, as iptables-save prints them ("-A WATERTIGHT_OUTPUT ...")
	Jumps      []string // the rules of nat OUTPUT that jump to Chain, as printed
}

// ParseState reads State from `iptables-save -t nat` output.
func ParseState(save string) State {
	var st State
	for _, l := range strings.Split(save, "\n") {
		l = strings.TrimSpace(l)
		switch {
		case strings.HasPrefix(l, ":"+Chain+" "):
			st.HasChain = true
		case strings.HasPrefix(l, "-A "+Chain+" "):
			st.ChainRules = append(st.ChainRules, l)
		case strings.HasPrefix(l, "-A OUTPUT ") && jumpsTo(l, Chain):
			st.Jumps = append(st.Jumps, l)
		}
	}
	return st
}

func jumpsTo(rule, chain string) bool {
	f := strings.Fields(rule)
	for i := 0; i+1 < len(f); i++ {
		switch f[i] {
		case "-j", "--jump", "-g", "--goto":
			if f[i+1] == chain {
				return true
			}
		}
	}
	return false
}

// applyScript is the restore input that turns st into exactly the rules of
// o for f, or "" when st already is that.
func applyScript(o Options, f Family, st State) string {
	want := lines(ChainRules(o, f))
	jump := Jump.String()
	var fix []string
	kept := false
	for _, j := range st.Jumps {
		if j == jump && !kept {
			kept = true
			continue
		}
		fix = append(fix, deleteLine(j))
	}
	if st.HasChain && kept && len(fix) == 0 && slices.Equal(st.ChainRules, want) {
		return ""
	}
	ls := append([]string{declareChain}, want...)
	ls = append(ls, fix...)
	if !kept {
		ls = append(ls, jump)
	}
	return script(ls)
}

// cleanupScript is the restore input that removes what st shows of ours, or
// "" when there is nothing.
func cleanupScript(st State) string {
	var ls []string
	for _, j := range st.Jumps {
		ls = append(ls, deleteLine(j))
	}
	if st.HasChain {
		ls = append(ls, flushChain, deleteChain)
	}
	if len(ls) == 0 {
		return ""
	}
	return script(ls)
}

// Save returns `iptables-save -t nat` (or ip6tables-save) output. It fails
// when the tool is missing or the kernel has no nat table for f, which makes
// it the test of whether f can be used at all.
func (r Runner) Save(ctx context.Context, f Family) (string, error) {
	return r.run(ctx, "", f.Tool("-save"), "-t", "nat")
}

// State reads what the nat table of f holds of our rules.
func (r Runner) State(ctx context.Context, f Family) (State, error) {
	save, err := r.Save(ctx, f)
	if err != nil {
		return State{}, err
	}
	return ParseState(save), nil
}

// Apply makes the nat table of f hold exactly the rules of o (see Runner
// for how), and reports whether it had to change anything.
func (r Runner) Apply(ctx context.Context, o Options, f Family) (changed bool, err error) {
	if err := o.Validate(); err != nil {
		return false, err
	}
	st, err := r.State(ctx, f)
	if err != nil {
		return false, err
	}
	s := applyScript(o, f, st)
	if s == "" {
		return false, nil
	}
	if _, err := r.run(ctx, s, f.Tool("-restore"), "--noflush"); err != nil {
		return false, err
	}
	return true, nil
}

// Cleanup removes the jumps to Chain from nat OUTPUT and Chain itself, and
// nothing else; it reports whether there was anything to remove.
func (r Runner) Cleanup(ctx context.Context, f Family) (removed bool, err error) {
	st, err := r.State(ctx, f)
	if err != nil {
		return false, err
	}
	s := cleanupScript(st)
	if s == "" {
		return false, nil
	}
	if _, err := r.run(ctx, s, f.Tool("-restore"), "--noflush"); err != nil {
		return false, err
	}
	return true, nil
}

func (r Runner) run(ctx context.Context, stdin, name string, args ...string) (string, error) {
	argv := append(slices.Clone(r.Wrap), name)
	argv = append(argv, args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stdout, stderr bytes.Buffer
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		var more string
		if e := strings.TrimSpace(stderr.String()); e != "" {
			more = ": " + e
		}
		if stdin != "" {
			more += "\ninput was:\n" + numbered(stdin)
		}
		return "", fmt.Errorf("%s: %w%s", strings.Join(append([]string{name}, args...), " "), err, more)
	}
	return stdout.String(), nil
}

// numbered prefixes lines with their numbers, which iptables-restore's
// "Error occurred at line: N" refers to.
func numbered(s string) string {
	var b strings.Builder
	for i, l := range strings.Split(strings.TrimSuffix(s, "\n"), "\n") {
		fmt.Fprintf(&b, "%4d  %s\n", i+1, l)
	}
	return b.String()
}
