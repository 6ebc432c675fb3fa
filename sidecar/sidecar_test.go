package sidecar

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/watertight/watertight/internal/poll"
	"github.com/watertight/watertight/internal/testupstream"
)

func TestMain(m *testing.M) {
	code := m.Run()
	// The tests' own client keeps idle connections; they are not leaks.
	http.DefaultTransport.(*http.Transport).CloseIdleConnections()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// upstream answers with its name (or h).
func upstream(t *testing.T, name string, h http.HandlerFunc) string {
	t.Helper()
	if h == nil {
		h = func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, name) }
	}
	return testupstream.Serve(t, h)
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func writeConfig(t *testing.T, path, listen, endpoint string, extra string) {
	t.Helper()
	doc := fmt.Sprintf(`
admin: {address: "127.0.0.1:0"}
listeners: [{name: out, address: %q, mode: proxy}]
upstreams:
  - name: svc
    endpoints: [%q]
%s`, listen, endpoint, extra)
	// Write then rename, as editors and kubelet do, so the watcher never
	// sees half a file.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func call(t *testing.T, addr string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
	req.Host = "svc"
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("calling through the sidecar: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	poll.Until(t, 10*time.Second, what, cond)
}

func adminGet(t *testing.T, s *Sidecar, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + s.AdminAddr().String() + path)
	if err != nil {
		t.Fatalf("admin %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func start(t *testing.T, o Options) *Sidecar {
	t.Helper()
	s, err := Start(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
	})
	return s
}

// TestReloadOnFileChangeKeepsLastGoodConfig: a changed file is applied; a
// broken one is logged and counted while the last good config keeps serving.
func TestReloadOnFileChangeKeepsLastGoodConfig(t *testing.T) {
	a, b := upstream(t, "a", nil), upstream(t, "b", nil)
	listen := freePort(t)
	path := filepath.Join(t.TempDir(), "watertight.yaml")
	writeConfig(t, path, listen, a, "")
	s := start(t, Options{ConfigPath: path})
	if code, body := call(t, listen); code != 200 || body != "a" {
		t.Fatalf("first config: %d %q", code, body)
	}
	v1 := s.Version()

	writeConfig(t, path, listen, b, "")
	eventually(t, "the changed file to be applied", func() bool { _, body := call(t, listen); return body == "b" })
	v2 := s.Version()
	if v2 == v1 {
		t.Fatal("version did not change")
	}

	writeConfig(t, path, listen, a, "    bulkhead: {maxWait: fast}\n")
	eventually(t, "the bad reload to be counted", func() bool {
		_, m := adminGet(t, s, "/metrics")
		return strings.Contains(m, `watertight_config_reloads_total{result="failure"} 1`)
	})
	if code, body := call(t, listen); code != 200 || body != "b" {
		t.Fatalf("after a bad file: %d %q, want the last good config (b)", code, body)
	}
	if s.Version() != v2 {
		t.Fatal("a bad file changed the version in force")
	}
	err := s.Reload()
	if err == nil || !strings.Contains(err.Error(), `upstreams[0].bulkhead.maxWait: "fast" is not a duration`) {
		t.Fatalf("Reload of the bad file: %v", err)
	}
	_, m := adminGet(t, s, "/metrics")
	if !strings.Contains(m, fmt.Sprintf(`watertight_config_info{source="file:%s",version="%s"} 1`, path, v2)) {
		t.Errorf("config_info does not show the version in force:\n%s", grep(m, "watertight_config"))
	}
	if strings.Count(m, "watertight_config_info{") != 1 {
		t.Errorf("more than one config_info series:\n%s", grep(m, "watertight_config_info"))
	}
}

func TestAdminEndpoints(t *testing.T) {
	listen := freePort(t)
	path := filepath.Join(t.TempDir(), "c.yaml")
	writeConfig(t, path, listen, upstream(t, "a", nil), "    bulkhead: {weight: 3, maxQueue: 7}\n")
	s := start(t, Options{ConfigPath: path})
	if code, body := adminGet(t, s, "/ready"); code != 200 || body != "ready\n" {
		t.Errorf("/ready: %d %q", code, body)
	}
	if code, _ := adminGet(t, s, "/healthz"); code != 200 {
		t.Errorf("/healthz: %d", code)
	}
	code, body := adminGet(t, s, "/config_dump")
	var dump struct {
		Version, Source string
		Config          struct {
			Budget    int
			Upstreams []struct {
				Name     string
				Bulkhead struct{ Weight, MaxQueue int }
				Timeout  string
			}
		}
	}
	if err := json.Unmarshal([]byte(body), &dump); err != nil || code != 200 {
		t.Fatalf("/config_dump: %d %v\n%s", code, err, body)
	}
	if dump.Version != s.Version() || dump.Source != "file:"+path || dump.Config.Budget != 1024 {
		t.Errorf("dump header: %+v", dump)
	}
	if u := dump.Config.Upstreams; len(u) != 1 || u[0].Bulkhead.Weight != 3 || u[0].Bulkhead.MaxQueue != 7 || u[0].Timeout != "15s" {
		t.Errorf("dumped upstreams: %+v", u)
	}
	if code, _ := adminGet(t, s, "/nope"); code != 404 {
		t.Errorf("unknown admin path: %d", code)
	}
	resp, err := http.Post("http://"+s.AdminAddr().String()+"/ready", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /ready: %d, want 405 (the admin port changes nothing)", resp.StatusCode)
	}
}

// TestGracefulShutdown: a stop lets in-flight requests finish, turns /ready
// to 503 and refuses new connections.
func TestGracefulShutdown(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	slow := upstream(t, "slow", func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-release
		_, _ = io.WriteString(w, "finished")
	})
	listen := freePort(t)
	path := filepath.Join(t.TempDir(), "c.yaml")
	writeConfig(t, path, listen, slow, "")
	s, err := Start(Options{ConfigPath: path})
	if err != nil {
		t.Fatal(err)
	}
	result := make(chan string, 1)
	go func() { _, body := call(t, listen); result <- body }()
	<-entered

	stopped := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		stopped <- s.Shutdown(ctx)
	}()
	eventually(t, "/ready to turn 503 while draining", func() bool { c, _ := adminGet(t, s, "/ready"); return c == 503 })
	eventually(t, "new connections to be refused", func() bool {
		conn, err := net.DialTimeout("tcp", listen, time.Second)
		if err == nil {
			conn.Close()
		}
		return err != nil
	})
	select {
	case err := <-stopped:
		t.Fatalf("shutdown returned (%v) with a request in flight", err)
	default:
	}
	close(release)
	if body := <-result; body != "finished" {
		t.Fatalf("in-flight request got %q", body)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
}

// TestDrainTimeoutCutsOff: a request that outlives the drain is cut off and
// the stop still completes.
func TestDrainTimeoutCutsOff(t *testing.T) {
	entered := make(chan struct{})
	stuck := upstream(t, "stuck", func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-r.Context().Done()
	})
	listen := freePort(t)
	path := filepath.Join(t.TempDir(), "c.yaml")
	writeConfig(t, path, listen, stuck, "")
	s, err := Start(Options{ConfigPath: path})
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		req, _ := http.NewRequest("GET", "http://"+listen+"/", nil)
		req.Host = "svc"
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			_, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		got <- err
	}()
	<-entered
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("shutdown past the drain: %v, want deadline exceeded", err)
	}
	if err := <-got; err == nil {
		t.Fatal("the stuck request was not cut off")
	}
}

// TestRunStopsOnSignalAndReloadsOnSIGHUP drives Run as the binary does.
func TestRunStopsOnSignalAndReloadsOnSIGHUP(t *testing.T) {
	a, b := upstream(t, "a", nil), upstream(t, "b", nil)
	listen, admin := freePort(t), freePort(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "c.yaml")
	writeConfig(t, path, listen, a, "")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- Run(ctx, Options{ConfigPath: path, AdminAddress: admin, DrainTimeout: time.Second}) }()
	eventually(t, "ready", func() bool {
		resp, err := http.Get("http://" + admin + "/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	// Change the file behind the watcher's back: a symlink swap, as
	// Kubernetes does for ConfigMaps, then SIGHUP for good measure.
	next := filepath.Join(dir, "next.yaml")
	writeConfig(t, next, listen, b, "")
	if err := os.Rename(next, path); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the reload", func() bool { _, body := call(t, listen); return body == "b" })
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after SIGTERM: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not stop on SIGTERM")
	}
}

func TestStartRejectsBadConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(path, []byte("upstreams: [{name: x, endpoints: [nope]}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Start(Options{ConfigPath: path})
	if err == nil || !strings.Contains(err.Error(), `upstreams[0].endpoints[0]: "nope" is not host:port`) {
		t.Fatalf("got %v", err)
	}
	if _, err := Start(Options{}); err == nil {
		t.Fatal("started with no config")
	}
}

func grep(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
