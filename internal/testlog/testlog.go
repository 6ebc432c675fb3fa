// Package testlog holds what tests need to capture the log of components
// that write from their own goroutines: a locked buffer, and a logger whose
// output is shown only when the test fails.
package testlog

import (
	"bytes"
	"log/slog"
	"sync"
	"testing"
)

// Buffer is a bytes.Buffer safe for concurrent writers and readers (a
// component's log, a child process's output).
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// String is everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// Bytes is a copy of everything written so far.
func (b *Buffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.b.Bytes())
}

// New is a text logger at level into a Buffer, which is printed, under
// name, only if t fails. Call it first in a test, so that its cleanup runs
// last, after everything that logs has stopped.
func New(t testing.TB, name string, level slog.Level) (*slog.Logger, *Buffer) {
	t.Helper()
	buf := &Buffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s log:\n%s", name, buf.String())
		}
	})
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: level})), buf
}
