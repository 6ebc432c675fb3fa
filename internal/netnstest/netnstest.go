// Package netnstest is test support for kernel tests in real network
// namespaces: making namespaces and the veth links between them, running
// code and starting processes inside one, and a copy of the test binary
// that other UIDs may run. Tests that use it need root, iproute2 and
// (usually) iptables; Require skips them without, except under CI=true
// where it fails them.
//
// How this process acts inside a namespace: In runs a function on a
// goroutine locked to an OS thread that has entered the namespace. A socket
// keeps the namespace it was created in, whatever thread uses it later, so
// only the socket() calls themselves (Listen, Dial) need to happen inside;
// goroutines started from there do NOT inherit the namespace (they run on
// other threads). A process started from that thread is forked from it and
// so starts inside the namespace, without `ip netns exec` (which needs root)
// — that is how a test runs a process there as another UID.
package netnstest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
)

// Require skips t (or, with CI=true, fails it) unless this process is root
// on Linux and every tool is in PATH.
func Require(t testing.TB, tools ...string) {
	t.Helper()
	var missing []string
	if runtime.GOOS != "linux" {
		missing = append(missing, "Linux")
	}
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := "kernel test needs root, iproute2 and iptables (apt-get install -y iptables iproute2); missing: " + strings.Join(missing, ", ")
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

var seq atomic.Int64

// New makes a network namespace with lo up, named after role, this process
// and a counter (unique per call), and deletes it when t ends.
func New(t testing.TB, role string) string {
	t.Helper()
	name := fmt.Sprintf("wt-%s-%d-%d", role, os.Getpid(), seq.Add(1))
	IP(t, "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	IP(t, "-n", name, "link", "set", "lo", "up")
	return name
}

// IP runs `ip ARGS...` and fails t if it fails.
func IP(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// HasIPv6 reports whether the kernel has IPv6.
func HasIPv6() bool {
	_, err := os.Stat("/proc/sys/net/ipv6")
	return err == nil
}

// PublicExecutable is a copy of the running test binary that any UID can
// execute (the go tool builds it in a directory only its owner may enter),
// in a directory of its own (mode 0755) that is removed when t ends. Files
// a process of another UID must read can go in the same directory.
func PublicExecutable(t testing.TB) (exe string) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "watertight-netnstest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	exe = filepath.Join(dir, filepath.Base(self))
	b, err := os.ReadFile(self)
	if err == nil {
		err = os.WriteFile(exe, b, 0o755)
	}
	if err == nil {
		err = os.Chmod(dir, 0o755)
	}
	if err != nil {
		t.Fatal(err)
	}
	return exe
}
