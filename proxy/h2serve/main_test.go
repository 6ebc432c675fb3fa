package h2serve_test

import (
	"testing"

	"go.uber.org/goleak"
)

// Every test waits for its connections' goroutines and handlers to end, so
// a goroutine left behind is a stream or connection that never finished.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
