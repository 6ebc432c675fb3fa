package sidecar

import (
	"context"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// settle is how long the config directory must stay quiet before a reload:
// editors and kubelet write a file in several steps.
const settle = 100 * time.Millisecond

// watch reloads the config when its file changes. It watches the directory,
// not the file, because editors replace files and Kubernetes swaps a
// ConfigMap's symlink; Reload skips content that did not change.
func (s *Sidecar) watch(ctx context.Context) {
	defer close(s.watchDone)
	w, err := fsnotify.NewWatcher()
	if err != nil {
		s.log.Warn("cannot watch the config file; reload with SIGHUP", "error", err)
		return
	}
	defer w.Close()
	dir := filepath.Dir(s.opts.ConfigPath)
	if err := w.Add(dir); err != nil {
		s.log.Warn("cannot watch the config directory; reload with SIGHUP", "dir", dir, "error", err)
		return
	}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-w.Events:
			if !ok {
				return
			}
			if ev.Has(fsnotify.Chmod) && !ev.Has(fsnotify.Write) {
				continue
			}
			timer.Reset(settle)
		case err, ok := <-w.Errors:
			if !ok {
				return
			}
			s.log.Warn("config watch error", "error", err)
		case <-timer.C:
			_ = s.Reload() // logged and counted by Reload
		}
	}
}
