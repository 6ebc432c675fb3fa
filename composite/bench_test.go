package composite_test

import (
	"io"
	"net/http"
	"testing"
)

// BenchmarkComposite is the sidecar's own cost of a composite: three nodes
// (a and b at once, c once both are done) on an upstream that answers at
// once, called over loopback; against the same three calls made by the
// client through the sidecar, one after the other.
func BenchmarkComposite(b *testing.B) {
	up := startUpstream(b, delayed(0, http.StatusOK, `{"id":1}`))
	s := startSidecar(b, listenerYAML+yamlUpstreams(map[string]string{"u": up.addr}, nil)+`
composites:
  - name: c
    listener: app
    path: /c
    nodes:
      - {name: a, upstream: u, critical: true, path: /a}
      - {name: b, upstream: u, critical: true, path: /b}
      - {name: c, upstream: u, critical: true, path: "/c/{{nodes.a.body.id}}/{{nodes.b.body.id}}"}
`)
	base := s.url(b)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	defer client.CloseIdleConnections()
	do := func(path, host string) {
		req, _ := http.NewRequest(http.MethodGet, base+path, nil)
		if host != "" {
			req.Host = host
		}
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
	b.Run("composite", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			do("/c", "")
		}
	})
	b.Run("three-calls-by-the-app", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			do("/a", "u")
			do("/b", "u")
			do("/c/1/1", "u")
		}
	})
}
