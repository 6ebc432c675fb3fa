// Package poll waits in tests for a condition that something else makes
// true (a metric, a reload, a connection count) and that offers no channel
// to wait on.
package poll

import (
	"bytes"
	"runtime"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// interval is how often the condition is asked: short next to what the
// tests wait for, long enough not to steal the CPU from what they wait on.
const interval = 2 * time.Millisecond

// Until asks cond until it holds, failing t when within passes first. It
// returns how long that took.
func Until(t testing.TB, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(interval) // the polling interval, not synchronisation
	}
	return time.Since(start)
}

// InIOWait counts the goroutines parked in the network poller ("IO wait")
// whose stacks hold every one of frames (as runtime.Stack prints them):
// how a test sees that a read waits where it should, and not before.
func InIOWait(frames ...string) int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		if !bytes.Contains(g, []byte("[IO wait")) {
			continue
		}
		all := true
		for _, f := range frames {
			all = all && bytes.Contains(g, []byte(f))
		}
		if all {
			n++
		}
	}
	return n
}

// Queued is how many bytes wait in the receive queue of c, a connected
// socket (FIONREAD, which is SIOCINQ on a socket): how a test knows that
// bytes are there before a read begins, rather than trusting loopback to
// have delivered them by the time a write returns.
func Queued(t testing.TB, c syscall.Conn) int {
	t.Helper()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n int32
	var errno syscall.Errno
	if err := raw.Control(func(fd uintptr) {
		_, _, errno = syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TIOCINQ, uintptr(unsafe.Pointer(&n)))
	}); err != nil || errno != 0 {
		t.Fatalf("asking the socket's receive queue (FIONREAD): %v %v", err, errno)
	}
	return int(n)
}
