// Package dirwatch calls back when files in a directory change, once the
// directory has been quiet for a moment. It watches directories, not files,
// because editors replace files and Kubernetes swaps a ConfigMap's symlink;
// and it waits for quiet because both write in several steps.
package dirwatch

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Settle is how long the directories must stay quiet before changed runs.
const Settle = 100 * time.Millisecond

// Run watches dirs until ctx ends and calls changed after each burst of
// changes. dirs[0] must exist; the others are watched from when they are
// created inside a watched directory (a config's optional subdirectory).
// The error says why watching could not start.
func Run(ctx context.Context, dirs []string, log *slog.Logger, changed func()) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watching %s: %w", dirs[0], err)
	}
	defer w.Close()
	if err := w.Add(dirs[0]); err != nil {
		return fmt.Errorf("watching %s: %w", dirs[0], err)
	}
	for _, d := range dirs[1:] {
		_ = w.Add(d) // may not exist yet: added when it appears
	}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if ev.Has(fsnotify.Chmod) && !ev.Has(fsnotify.Write) {
				continue
			}
			if ev.Has(fsnotify.Create) && slices.Contains(dirs[1:], ev.Name) {
				_ = w.Add(ev.Name)
			}
			timer.Reset(Settle)
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			log.Warn("config watch error", "error", err)
		case <-timer.C:
			changed()
		}
	}
}
