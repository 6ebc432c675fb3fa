package proxy

import "testing"

// The authorities an app uses for the sidecar itself, whose Host the
// compartment rewrites to the upstream's; any other is the app's to keep.
func TestIsLocalAuthority(t *testing.T) {
	for host, want := range map[string]bool{
		"":                       true,
		"localhost":              true,
		"localhost:8080":         true,
		"127.0.0.1":              true,
		"127.0.0.1:18081":        true,
		"127.1.2.3:80":           true,
		"[::1]:80":               true,
		"::1":                    true,
		"[::ffff:127.0.0.1]:80":  true,
		"0.0.0.0:80":             true,
		"[::]:80":                true,
		"[::ffff:0.0.0.0]:80":    true,
		"[fe80::1%25lo]:80":      false,
		"[::1%lo]:80":            true,
		"10.0.0.1:80":            false,
		"payments":               false,
		"payments.svc:8080":      false,
		"localhost.example.com":  false,
		"[2001:db8::1]:443":      false,
		"128.0.0.1":              false,
		"not a host at all:80":   false,
		"[::ffff:10.0.0.1]:8080": false,
	} {
		if got := isLocalAuthority(host); got != want {
			t.Errorf("isLocalAuthority(%q) = %v, want %v", host, got, want)
		}
	}
}
