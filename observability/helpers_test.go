package observability

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/encoding/protodelim"

	"github.com/watertight/watertight/config"
	"github.com/watertight/watertight/internal/poll"
	"github.com/watertight/watertight/internal/testlog"
	"github.com/watertight/watertight/internal/testupstream"
	"github.com/watertight/watertight/sidecar"
)

// The files under test, relative to this package's directory.
var (
	rulesFile     = filepath.Join("..", "deploy", "k8s", "prometheus", "watertight-rules.yaml")
	rulesTestFile = filepath.Join("..", "deploy", "k8s", "prometheus", "watertight-rules.test.yaml")
	dashboardFile = filepath.Join("..", "deploy", "k8s", "grafana", "watertight-dashboard.json")
	runbookFile   = filepath.Join("..", "docs", "runbook.md")
	docFile       = filepath.Join("..", "docs", "observability.md")
)

// wait bounds every poll: generous, for a loaded 2-core machine under -race.
const wait = 20 * time.Second

// requireTool finds a binary the test needs. Missing, it skips the test, or
// fails it under CI=true: in CI a missing tool is a failure, never a skip.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	msg := fmt.Sprintf("%s not found on PATH (Debian: apt-get install prometheus; .ci/run installs it)", name)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + "; CI=true, so this is a failure")
	}
	t.Skip(msg + "; skipping (set CI=true to make this a failure)")
	return ""
}

// testLog is a logger whose output is shown only if the test fails. Call it
// first, so that its cleanup runs last.
func testLog(t *testing.T, name string) *slog.Logger {
	t.Helper()
	log, _ := testlog.New(t, name, slog.LevelInfo)
	return log
}

// startUpstream serves h on a loopback port until the test ends.
func startUpstream(t *testing.T, h http.Handler) string {
	t.Helper()
	return testupstream.Serve(t, h)
}

// okHandler answers at once.
var okHandler = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })

// slowHandler answers after d, or when the request or the test ends.
func slowHandler(t *testing.T, d time.Duration) http.Handler {
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) }) // runs before the server's Close (LIFO)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tm := time.NewTimer(d) // the upstream's latency, not synchronisation
		defer tm.Stop()
		select {
		case <-tm.C:
			_, _ = io.WriteString(w, "slow ok")
		case <-r.Context().Done():
		case <-stop:
		}
	})
}

// startSidecar runs a sidecar with the YAML config doc (admin and listeners
// on loopback port 0).
func startSidecar(t *testing.T, doc string, log *slog.Logger) *sidecar.Sidecar {
	t.Helper()
	cfg, err := config.Parse([]byte(doc))
	if err != nil {
		t.Fatalf("test config: %v\n%s", err, doc)
	}
	s, err := sidecar.Start(sidecar.Options{Config: cfg, AdminAddress: "127.0.0.1:0", DrainTimeout: 2 * time.Second, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("sidecar shutdown: %v", err)
		}
	})
	return s
}

// listenerAddr is the bound address of the sidecar's named listener.
func listenerAddr(t *testing.T, s *sidecar.Sidecar, name string) string {
	t.Helper()
	a, ok := s.Proxy().Addr(name)
	if !ok {
		t.Fatalf("no listener %q", name)
	}
	return a.String()
}

// newClient is an HTTP client of the test's own, closed when it ends.
func newClient(t *testing.T) *http.Client {
	t.Helper()
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 15 * time.Second}
}

// do sends one request and returns its status and x-watertight-reason.
func do(c *http.Client, method, url, host string, hdr http.Header) (int, string, error) {
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		return 0, "", err
	}
	if host != "" {
		req.Host = host
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, resp.Header.Get("x-watertight-reason"), nil
}

// Exposition formats to ask /metrics for.
const (
	acceptText  = "text/plain;version=0.0.4"
	acceptProto = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited"
)

// scrape fetches url with the given Accept header.
func scrape(t *testing.T, url, accept string) (body []byte, contentType string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", accept)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("scraping %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scraping %s: %d %v", url, resp.StatusCode, err)
	}
	return b, resp.Header.Get("Content-Type")
}

// families scrapes url in the protobuf format, which carries everything the
// text format does plus native histograms.
func families(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	body, ct := scrape(t, url, acceptProto)
	if !strings.HasPrefix(ct, "application/vnd.google.protobuf") {
		t.Fatalf("asked %s for protobuf, got %q", url, ct)
	}
	out := map[string]*dto.MetricFamily{}
	r := bufio.NewReader(bytes.NewReader(body))
	for {
		mf := &dto.MetricFamily{}
		err := protodelim.UnmarshalFrom(r, mf)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("decoding %s: %v", url, err)
		}
		out[mf.GetName()] = mf
	}
}

// metricsURL is the sidecar's /metrics.
func metricsURL(s *sidecar.Sidecar) string { return "http://" + s.AdminAddr().String() + "/metrics" }

// labelNames are the sorted label names of a family's first series.
func labelNames(mf *dto.MetricFamily) []string {
	var out []string
	if len(mf.GetMetric()) == 0 {
		return nil
	}
	for _, lp := range mf.GetMetric()[0].GetLabel() {
		out = append(out, lp.GetName())
	}
	sort.Strings(out)
	return out
}

// labelValue is one label of a series.
func labelValue(m *dto.Metric, name string) string {
	for _, lp := range m.GetLabel() {
		if lp.GetName() == name {
			return lp.GetValue()
		}
	}
	return ""
}

// eventually polls cond until it holds or wait passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	poll.Until(t, wait, what, cond)
}

// readFile reads a file of the repository.
func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
