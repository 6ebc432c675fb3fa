package h2conn_test

import (
	"testing"

	"go.uber.org/goleak"
)

// Every test closes its servers and its Transport's idle connections, so a
// goroutine left behind is a read loop, timer or body writer the Transport
// never ended.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
