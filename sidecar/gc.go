package sidecar

import (
	"runtime/debug"
	"strconv"
)

// GCPercent is the sidecar's garbage-collection target (GOGC) when the
// environment sets none.
//
// The sidecar's live heap is small (about 2 MB) and every request allocates
// a few KB, so at Go's default of 100 the collector runs every few hundred
// requests: at 8,000 req/s, 18 cycles a second and about 15 % of the
// process's CPU (GODEBUG=gctrace=1, docs/benchmarks.md run 15). At 200 it
// runs 2.4 times less often and spends a fifth of that, for about 3 MB more
// resident memory, well inside the 64 MiB the injector requests for the
// proxy. An operator's GOGC (or GOMEMLIMIT, which the runtime reads as
// always) still decides.
const GCPercent = 200

// TuneGC sets the collector's target to GCPercent unless getenv("GOGC")
// names one, and returns the target in force.
func TuneGC(getenv func(string) string) int {
	if v := getenv("GOGC"); v != "" {
		if n, err := strconv.Atoi(v); err == nil {
			return n
		}
		return -1 // "off", as the runtime reads it
	}
	debug.SetGCPercent(GCPercent)
	return GCPercent
}
