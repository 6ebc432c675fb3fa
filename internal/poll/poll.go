// Package poll waits in tests for a condition that something else makes
// true (a metric, a reload, a connection count) and that offers no channel
// to wait on.
package poll

import (
	"testing"
	"time"
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
