package composite_test

import (
	"testing"

	"go.uber.org/goleak"
)

// Every test ends with no goroutine of a node call left behind.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
