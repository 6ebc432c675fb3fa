package h2wire

import "testing"

func TestStatus(t *testing.T) {
	for code, want := range map[int][2]string{100: {"100", "100 Continue"}, 200: {"200", "200 OK"}, 299: {"299", "299"}, 999: {"999", "999"}} {
		if got := [2]string{Status(code), StatusLine(code)}; got != want {
			t.Errorf("%d: %q, want %q", code, got, want)
		}
	}
}
