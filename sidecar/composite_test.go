package sidecar

import (
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
)

func getPath(t *testing.T, addr, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		t.Fatalf("calling through the sidecar: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Composites come and go and change with the config file; a bad composite
// is refused by name and field while the last good one keeps serving.
func TestReloadWithComposites(t *testing.T) {
	a := upstream(t, "a", nil)
	listen := freePort(t)
	path := filepath.Join(t.TempDir(), "watertight.yaml")
	composite := func(p, nodePath string) string {
		return "composites:\n  - {name: c, listener: out, path: " + p + ", nodes: [{name: n, upstream: svc, path: \"" + nodePath + "\"}]}\n"
	}
	writeConfig(t, path, listen, a, composite("/one", "/x"))
	s := start(t, Options{ConfigPath: path})
	if code, body := getPath(t, listen, "/one"); code != 200 || !strings.HasPrefix(body, `{"n":"a","_status":{"n":{"result":"ok","status":200,"ms":`) {
		t.Fatalf("first config: %d %s", code, body)
	}

	writeConfig(t, path, listen, a, composite("/two", "/y"))
	eventually(t, "the new composite path", func() bool { code, _ := getPath(t, listen, "/two"); return code == 200 })
	if code, _ := getPath(t, listen, "/one"); code != http.StatusNotFound {
		t.Errorf("the old composite path still answers %d", code)
	}

	writeConfig(t, path, listen, a, composite("/three", "/{{nodes.n.status}}"))
	eventually(t, "the bad reload to be counted", func() bool {
		_, m := adminGet(t, s, "/metrics")
		return strings.Contains(m, `watertight_config_reloads_total{result="failure"} 1`)
	})
	err := s.Reload()
	if err == nil || !strings.Contains(err.Error(), `composites[0].nodes[0].path: {{nodes.n.status}}: node "n" refers to itself`) {
		t.Fatalf("Reload of the bad file: %v", err)
	}
	if code, _ := getPath(t, listen, "/two"); code != 200 {
		t.Errorf("the last good composite stopped answering: %d", code)
	}
	_, m := adminGet(t, s, "/metrics")
	if !strings.Contains(m, `watertight_composite_requests_total{composite="c",result="ok"}`) {
		t.Errorf("no composite metrics:\n%s", grep(m, "composite"))
	}
}
