package sidecar

import (
	"context"
	"path/filepath"

	"github.com/watertight/watertight/internal/dirwatch"
)

// watch reloads the config when its file changes (Reload skips content
// that did not change).
func (s *Sidecar) watch(ctx context.Context) {
	defer close(s.watchDone)
	dir := filepath.Dir(s.opts.ConfigPath)
	if err := dirwatch.Run(ctx, []string{dir}, s.log, func() { _ = s.Reload() }); err != nil { // Reload logs and counts
		s.log.Warn("cannot watch the config file; reload with SIGHUP", "error", err)
	}
}
