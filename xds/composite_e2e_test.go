package xds_test

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
)

// A composite written in the control plane's directory reaches the sidecar
// over ADS and is served; a change to it is applied live; a bad one is
// refused by the control plane before it is pushed.
func TestCompositeOverADS(t *testing.T) {
	log, logs := testLog(t, "test")
	dir := t.TempDir()
	listen := freeAddr(t)
	users := httpUpstream(t, "users", nil)
	write := func(nodePath string) {
		writeFile(t, filepath.Join(dir, "default.yaml"), fmt.Sprintf(`
listeners: [{name: out, address: %q, mode: proxy}]
upstreams:
  - {name: users, endpoints: [%q]}
composites:
  - {name: page, listener: out, path: /page, nodes: [{name: u, upstream: users, critical: true, path: %q}]}
`, listen, users, nodePath))
	}
	write("/u")
	cpAddr := freeAddr(t)
	c := newClient(t)
	startControlPlane(t, dir, cpAddr, log.With("component", "controlplane"))
	s := startSidecar(t, cpAddr, "node-a", log)
	eventually(t, "/ready to turn 200", func() bool { return ready(t, c, s) })
	if r := mustGet(t, c, listen, "anything", "/page"); r.status != 200 || !strings.HasPrefix(r.body, `{"u":"users","_status":{"u":{"result":"ok"`) {
		t.Fatalf("composite over ADS: %d %q", r.status, r.body)
	}
	if got := s.Proxy().Config().Composites; len(got) != 1 || got[0].Nodes[0].Path != "/u" {
		t.Errorf("the sidecar's config: %+v", got)
	}

	write("/v/{{nodes.u.status}}") // refers to itself: the control plane refuses it
	eventually(t, "the control plane to refuse the bad composite", func() bool {
		return strings.Contains(logs.String(), `composites[0].nodes[0].path: {{nodes.u.status}}: node \"u\" refers to itself`)
	})
	if r := mustGet(t, c, listen, "anything", "/page"); r.status != 200 || s.Proxy().Config().Composites[0].Nodes[0].Path != "/u" {
		t.Errorf("after a bad composite: %d %q; the last good one must keep serving", r.status, r.body)
	}
	write("/w")
	eventually(t, "the changed composite", func() bool {
		cfg := s.Proxy().Config()
		return len(cfg.Composites) == 1 && cfg.Composites[0].Nodes[0].Path == "/w"
	})
	if n := nacks(t, s); n != 0 {
		t.Errorf("the sidecar NACKed %v updates", n)
	}
}
