package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"

	"github.com/watertight/watertight/inject"
	"github.com/watertight/watertight/internal/testcert"
)

// serving writes a serving certificate for 127.0.0.1 and the webhook's
// names, and returns the pool that trusts it.
func serving(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	ca := testcert.NewCA(t)
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	ca.Issue(t, 2, certFile, keyFile)
	return certFile, keyFile, ca.Pool
}

func TestInjectWebhookFlags(t *testing.T) {
	certFile, keyFile, _ := serving(t, t.TempDir())
	base := []string{"inject-webhook", "--tls-cert", certFile, "--tls-key", keyFile, "--image", "img:1", "--xds-address", "cp:18000"}
	tests := []struct {
		name string
		args []string
		code int
		says string
	}{
		{"help", []string{"inject-webhook", "--help"}, 0, "-proxy-memory"},
		{"nothing", []string{"inject-webhook"}, 2, "--tls-cert is required"},
		{"no image", []string{"inject-webhook", "--tls-cert", certFile, "--tls-key", keyFile, "--xds-address", "cp:1"}, 2, "--image is required"},
		{"no xds", []string{"inject-webhook", "--tls-cert", certFile, "--tls-key", keyFile, "--image", "i"}, 2, "--xds-address is required"},
		{"stray argument", append(base, "extra"), 2, `unexpected argument "extra"`},
		{"bad quantity", append(base, "--proxy-cpu", "lots"), 1, `--proxy-cpu: "lots" is not a quantity like 50m or 64Mi`},
		{"negative quantity", append(base, "--proxy-memory-limit", "-1Mi"), 1, `--proxy-memory-limit: "-1Mi" is not a quantity`},
		{"request above limit", append(base, "--proxy-memory", "1Gi", "--proxy-memory-limit", "128Mi"), 1, "memory request 1Gi is above its limit 128Mi"},
		{"bad xds address", []string{"inject-webhook", "--tls-cert", certFile, "--tls-key", keyFile, "--image", "i", "--xds-address", "cp"}, 1, `"cp" is not HOST:PORT`},
		{"bad pull policy", append(base, "--image-pull-policy", "Sometimes"), 1, `"Sometimes" is not Always, IfNotPresent or Never`},
		{"bad log level", append(base, "--log-level", "loud"), 1, `--log-level: "loud"`},
		{"missing certificate", []string{"inject-webhook", "--tls-cert", filepath.Join(t.TempDir(), "no.crt"), "--tls-key", keyFile,
			"--image", "i", "--xds-address", "cp:1", "--listen", "127.0.0.1:0"}, 1, "TLS certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			if code := run(tt.args, &out, &errb); code != tt.code || !strings.Contains(errb.String(), tt.says) {
				t.Errorf("exit %d, stderr %q; want %d saying %q", code, errb.String(), tt.code, tt.says)
			}
		})
	}
	var out, errb bytes.Buffer
	if run([]string{"help"}, &out, &errb); !strings.Contains(out.String(), "sidecar inject-webhook --tls-cert FILE") {
		t.Errorf("usage does not list inject-webhook:\n%s", out.String())
	}
}

// TestInjectWebhookProcess runs the real subcommand as a process: it serves
// the API server's review over HTTPS and exits 0 on SIGTERM.
func TestInjectWebhookProcess(t *testing.T) {
	review, err := os.ReadFile(filepath.Join("..", "..", "inject", "testdata", "admissionreview-pod.json"))
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, pool := serving(t, t.TempDir())
	cmd := sidecarCmd(t, "inject-webhook", "--listen", "127.0.0.1:0", "--tls-cert", certFile, "--tls-key", keyFile,
		"--image", "ghcr.io/watertight/watertight:test", "--xds-address", "watertight-controlplane.watertight-system.svc:18000",
		"--log-format", "json")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The reader owns logs until readDone closes (at the process's EOF).
	var logs bytes.Buffer
	addrCh, readDone := make(chan string, 1), make(chan struct{})
	go func() {
		defer close(readDone)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			logs.Write(append(sc.Bytes(), '\n'))
			var l struct{ Msg, Address string }
			if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "inject webhook listening" {
				addrCh <- l.Address
			}
		}
	}()
	stopped := false
	defer func() {
		if !stopped {
			_ = cmd.Process.Kill()
			<-readDone
			_ = cmd.Wait()
			t.Logf("logs:\n%s", logs.String())
		}
	}()
	var addr string
	select {
	case addr = <-addrCh:
	case <-readDone:
		t.Fatal("the process ended before listening")
	case <-time.After(15 * time.Second):
		t.Fatal("the process did not say where it listens")
	}

	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	resp, err := client.Post("https://"+addr+inject.PathNamespaceEnabled+"?timeout=5s", "application/json", bytes.NewReader(review))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var out admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &out); resp.StatusCode != 200 || err != nil || out.Response == nil {
		t.Fatalf("%s: %v %s", resp.Status, err, body)
	}
	if r := out.Response; !r.Allowed || r.UID != "7f0b2cc4-5b1e-4c2a-9d7e-3c6f1f0a9b21" || r.PatchType == nil ||
		!bytes.Contains(r.Patch, []byte(`"--xds","watertight-controlplane.watertight-system.svc:18000"`)) ||
		!bytes.Contains(r.Patch, []byte(`"requests":{"cpu":"50m","memory":"64Mi"}`)) {
		t.Fatalf("response %+v, patch %s", r, r.Patch)
	}
	tr.CloseIdleConnections()

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-readDone:
	case <-time.After(15 * time.Second):
		t.Fatal("no exit after SIGTERM")
	}
	stopped = true
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v\nlogs:\n%s", err, logs.String())
	}
	for _, want := range []string{`"injected":true`, `"reason":"injected"`, "stopping"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("logs do not say %s:\n%s", want, logs.String())
		}
	}
}
