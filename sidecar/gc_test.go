package sidecar

import (
	"runtime/debug"
	"testing"
)

func TestTuneGC(t *testing.T) {
	prev := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(prev) })

	env := map[string]string{}
	getenv := func(k string) string { return env[k] }
	if got := TuneGC(getenv); got != GCPercent {
		t.Fatalf("TuneGC without GOGC = %d, want %d", got, GCPercent)
	}
	if cur := debug.SetGCPercent(100); cur != GCPercent {
		t.Fatalf("the runtime's GC percent is %d after TuneGC, want %d", cur, GCPercent)
	}

	env["GOGC"] = "50" // the operator's choice, which the runtime already applied
	if got := TuneGC(getenv); got != 50 {
		t.Fatalf("TuneGC with GOGC=50 = %d, want 50", got)
	}
	if cur := debug.SetGCPercent(100); cur != 100 {
		t.Fatalf("TuneGC changed the GC percent (%d) although GOGC was set", cur)
	}
}
