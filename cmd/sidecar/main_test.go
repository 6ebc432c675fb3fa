package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// The test binary doubles as the sidecar binary: re-executed with
// WATERTIGHT_TEST_MAIN=1 it runs main() with the remaining arguments, so the
// process-level behaviour (exit codes, signals) is tested for real. Only the
// test run itself checks for leaked goroutines (main() exits on its own).
func TestMain(m *testing.M) {
	if os.Getenv("WATERTIGHT_TEST_MAIN") == "1" {
		os.Args = append([]string{"sidecar"}, os.Args[1:]...)
		main()
		return
	}
	goleak.VerifyTestMain(m)
}

func sidecarCmd(t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "WATERTIGHT_TEST_MAIN=1")
	return cmd
}

func TestUsageAndVersion(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"version"}, &out, &errb); code != 0 || !strings.HasPrefix(out.String(), "watertight sidecar ") {
		t.Errorf("version: %d %q", code, out.String())
	}
	out.Reset()
	if code := run(nil, &out, &errb); code != 2 || !strings.Contains(errb.String(), "Usage:") {
		t.Errorf("no command: %d %q", code, errb.String())
	}
	errb.Reset()
	if code := run([]string{"frobnicate"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), `unknown command "frobnicate"`) {
		t.Errorf("unknown command: %d %q", code, errb.String())
	}
	errb.Reset()
	if code := run([]string{"run", "--help"}, &out, &errb); code != 0 || !strings.Contains(errb.String(), "-config") || !strings.Contains(errb.String(), "-drain-timeout") {
		t.Errorf("run --help: %d %q", code, errb.String())
	}
	errb.Reset()
	if code := run([]string{"run"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "give either --config FILE or --xds") {
		t.Errorf("run without --config: %d %q", code, errb.String())
	}
	errb.Reset()
	if code := run([]string{"run", "--config", "x.yaml", "--upstream-http1", "fasthttp"}, &out, &errb); code != 2 ||
		!strings.Contains(errb.String(), `--upstream-http1: "fasthttp" is neither "watertight" nor "net/http"`) {
		t.Errorf("bad --upstream-http1: %d %q", code, errb.String())
	}
	out.Reset()
	errb.Reset()
	if code := run([]string{"run", "--config", "x.yaml", "--downstream-http1", "fasthttp"}, &out, &errb); code != 2 ||
		!strings.Contains(errb.String(), `--downstream-http1: "fasthttp" is neither "watertight" nor "net/http"`) {
		t.Errorf("bad --downstream-http1: %d %q", code, errb.String())
	}
	errb.Reset()
	if code := run([]string{"run", "--config", "x.yaml", "--lane", "yes"}, &out, &errb); code != 2 ||
		!strings.Contains(errb.String(), `--lane: "yes" is neither "on" nor "off"`) {
		t.Errorf("bad --lane: %d %q", code, errb.String())
	}
	for _, flag := range []string{"--upstream-http2", "--downstream-http2"} {
		errb.Reset()
		if code := run([]string{"run", "--config", "x.yaml", flag, "grpc"}, &out, &errb); code != 2 ||
			!strings.Contains(errb.String(), flag+`: "grpc" is neither "watertight" nor "net/http"`) {
			t.Errorf("bad %s: %d %q", flag, code, errb.String())
		}
	}
	errb.Reset()
	if code := run([]string{"run", "--bogus"}, &out, &errb); code != 2 {
		t.Errorf("run --bogus: %d", code)
	}
	errb.Reset()
	if code := run([]string{"run", "--config", "x.yaml", "--log-level", "loud"}, &out, &errb); code != 1 || !strings.Contains(errb.String(), `--log-level: "loud"`) {
		t.Errorf("bad log level: %d %q", code, errb.String())
	}
}

func TestRunRejectsBadConfigNamingTheField(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(path, []byte("upstreams: [{name: a, endpoints: [\"h:1\"], bulkhead: {maxWait: fast}}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	code := run([]string{"run", "--config", path}, &out, &errb)
	if code != 1 || !strings.Contains(errb.String(), `upstreams[0].bulkhead.maxWait: "fast" is not a duration`) {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
}

// TestProcessServesAndExitsZeroOnSIGTERM runs the real process: it serves,
// and on SIGTERM it finishes the request in flight and exits 0.
func TestProcessServesAndExitsZeroOnSIGTERM(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	up := httpServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-release
		_, _ = io.WriteString(w, "done")
	}))
	listen, admin := freeAddr(t), freeAddr(t)
	path := filepath.Join(t.TempDir(), "c.yaml")
	cfg := fmt.Sprintf("listeners: [{name: app, address: %q, upstream: up}]\nupstreams: [{name: up, endpoints: [%q]}]\n", listen, up)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := sidecarCmd(t, "run", "--config", path, "--admin", admin, "--log-format", "json")
	var logs bytes.Buffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-exited
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + admin + "/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("sidecar never became ready; logs:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	body := make(chan string, 1)
	go func() {
		resp, err := http.Get("http://" + listen + "/")
		if err != nil {
			body <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		body <- string(b)
	}()
	<-entered
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	close(release)
	if got := <-body; got != "done" {
		t.Fatalf("in-flight request got %q", got)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit: %v; logs:\n%s", err, logs.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("sidecar did not exit after SIGTERM")
	}
	if !strings.Contains(logs.String(), `"msg":"stopped"`) {
		t.Errorf("no JSON stop log:\n%s", logs.String())
	}
}

func httpServer(t *testing.T, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
