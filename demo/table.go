package demo

import (
	"fmt"
	"io"
	"time"

	"github.com/watertight/watertight/metrics"
)

// The live table: a header once per run, then every second one line per
// upstream and one for the app. Plain text with fixed-width columns, so it
// reads the same in a terminal, a CI log or a file.

const (
	rowFormat    = "%5s  %-16s %6s %9s %8s %12s %7s %8s %11s\n"
	appRowFormat = "%5s  %-16s %s\n"
)

func writeTableHeader(w io.Writer) {
	fmt.Fprintf(w, rowFormat, "t", "upstream", "ok/s", "refused/s", "failed/s", "active/limit", "queued", "p99", "met target")
}

// tableTick is what one line of the table is made of.
type tableTick struct {
	at       time.Duration // since the run began
	interval time.Duration // since the previous tick, for the rates
	reading  tickReading
	pools    []metrics.PoolReading
	shared   bool // one pool for all: its queue is everyone's
	backlog  int  // calls waiting for an app worker
	load     load
	events   []string // what changed in the scenario during this second
}

func writeTableTick(w io.Writer, t tableTick) {
	perSec := func(n int) string {
		return fmt.Sprintf("%.0f", float64(n)/t.interval.Seconds())
	}
	at := fmt.Sprintf("%ds", int(t.at.Round(time.Second)/time.Second))
	dropped := 0
	for i, s := range scenario {
		tl := &t.reading.tallies[i]
		dropped += tl.dropped
		pool, queued := "-", "-"
		if i < len(t.pools) {
			st := t.pools[i].Stats
			pool = fmt.Sprintf("%d/%d", st.Active, st.Limit)
			queued = fmt.Sprint(st.Queued)
			if t.shared {
				pool += "*"
				queued += "*"
			}
		}
		met := "-"
		if tl.calls > 0 {
			met = fmt.Sprintf("%.0f%%", tl.metShare())
		}
		fmt.Fprintf(w, rowFormat, at, s.name,
			perSec(tl.ok), perSec(tl.refused), perSec(tl.failed),
			pool, queued, fmtMs(tl.percentile(0.99)), met)
		at = ""
	}
	fmt.Fprintf(w, appRowFormat, "", "(app)", fmt.Sprintf("workers busy %d/%d, waiting for a worker %d/%d, dropped %s/s",
		t.reading.busy, t.load.workers, t.backlog, t.load.backlog, perSec(dropped)))
	// After the rows: a change that happened during this second shows from
	// the next rows on.
	for _, e := range t.events {
		fmt.Fprintf(w, "%5s  -- %s --\n", "", e)
	}
}

// writeTableLegend explains the columns once, before the first run.
func writeTableLegend(w io.Writer) {
	fmt.Fprintln(w, `Columns, per upstream and per second, as the app sees its calls:
  ok/s        answered 200 by the upstream
  refused/s   refused at once by the sidecar (pool and queue full, or queue wait over)
  failed/s    timed out or failed (calls the app dropped for want of a worker: see (app))
  active/limit, queued   the upstream's pool in the sidecar (* = the one shared pool)
  p99         latency from when the call was due, so waiting for an app worker counts
  met target  share of calls that succeeded within the upstream's latency target`)
}
