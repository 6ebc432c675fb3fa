package inject

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const certScript = "../deploy/k8s/webhook-certs.sh"

func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s not installed: .ci/run must install it", tool)
			}
			t.Skipf("%s not installed", tool)
		}
	}
}

func pemCerts(t *testing.T, data []byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return out
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
}

// TestCertScriptServes: what deploy/k8s/webhook-certs.sh generates is
// served by the real server and verified, as the API server does, against
// the CA for the Service's DNS name.
func TestCertScriptServes(t *testing.T) {
	needTools(t, "bash", "openssl")
	dir := t.TempDir()
	cmd := exec.Command("bash", certScript, "--out", dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	h, err := NewHandler(testOptions(), quiet)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := Start("127.0.0.1:0", filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), h, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}()
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("ca.crt holds no certificate")
	}
	for _, name := range []string{webhookHost, "watertight-webhook.watertight-system.svc.cluster.local"} {
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: name}}
		client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
		out := postReview(t, client, "https://"+srv.Addr().String()+PathNamespaceEnabled, readReview(t))
		tr.CloseIdleConnections()
		if !out.Response.Allowed || len(out.Response.Patch) == 0 {
			t.Fatalf("%s: %+v", name, out.Response)
		}
	}
}

// fakeKubectl records what the script asks of kubectl and answers like a
// cluster holding the manifests of deploy/k8s.
const fakeKubectl = `#!/usr/bin/env bash
set -euo pipefail
printf '%s\n' "$*" >>"$LOG/calls"
case "$*" in
  *"create secret tls"*)
    while [ $# -gt 0 ]; do
      case "$1" in
        --cert) cp "$2" "$LOG/tls.crt"; shift ;;
        --key) cp "$2" "$LOG/tls.key"; shift ;;
      esac
      shift
    done
    echo "kind: Secret" ;;
  "apply -f -") cat >"$LOG/applied" ;;
  *"jsonpath={.webhooks[0].clientConfig.caBundle}"*) printf '%s' "$OLD_BUNDLE" ;;
  *"jsonpath={range .webhooks[*]}x{end}"*) printf 'xx' ;;
  patch*) printf '%s' "${@: -1}" >"$LOG/patch" ;;
  *) echo "unexpected: kubectl $*" >&2; exit 1 ;;
esac
`

// TestCertScriptProvisions runs the script's cluster path against a fake
// kubectl: the Secret gets a pair that the new CA verifies, and every
// webhook's caBundle becomes the new CA followed by the newest old one.
func TestCertScriptProvisions(t *testing.T) {
	needTools(t, "bash", "openssl", "base64", "awk")
	bin, logDir, old := t.TempDir(), t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(bin, "kubectl"), []byte(fakeKubectl), 0o755); err != nil {
		t.Fatal(err)
	}
	// The bundle in place: two older CAs, newest first.
	var oldBundle []byte
	for _, d := range []string{"a", "b"} {
		out := filepath.Join(old, d)
		if b, err := exec.Command("bash", certScript, "--out", out).CombinedOutput(); err != nil {
			t.Fatalf("%v\n%s", err, b)
		}
		ca, err := os.ReadFile(filepath.Join(out, "ca.crt"))
		if err != nil {
			t.Fatal(err)
		}
		oldBundle = append(oldBundle, ca...)
	}
	cmd := exec.Command("bash", certScript)
	cmd.Env = append(os.Environ(), "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"),
		"LOG="+logDir, "OLD_BUNDLE="+base64.StdEncoding.EncodeToString(oldBundle))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	calls, _ := os.ReadFile(filepath.Join(logDir, "calls"))
	if !strings.Contains(string(calls), "-n watertight-system create secret tls watertight-webhook-tls") ||
		!strings.Contains(string(calls), "patch mutatingwebhookconfiguration watertight-injector --type=json") {
		t.Errorf("kubectl calls:\n%s", calls)
	}
	if applied, _ := os.ReadFile(filepath.Join(logDir, "applied")); string(applied) != "kind: Secret\n" {
		t.Errorf("applied %q, want the Secret kubectl create printed", applied)
	}
	patchJSON, err := os.ReadFile(filepath.Join(logDir, "patch"))
	if err != nil {
		t.Fatal(err)
	}
	var ops []PatchOp
	if err := json.Unmarshal(patchJSON, &ops); err != nil || len(ops) != 2 {
		t.Fatalf("patch %s: %v", patchJSON, err)
	}
	for i, op := range ops {
		if want := "/webhooks/" + string(rune('0'+i)) + "/clientConfig/caBundle"; op.Op != "add" || op.Path != want || op.Value != ops[0].Value {
			t.Errorf("op %d: %+v", i, op)
		}
	}
	bundle, err := base64.StdEncoding.DecodeString(ops[0].Value.(string))
	if err != nil {
		t.Fatal(err)
	}
	cas, olds := pemCerts(t, bundle), pemCerts(t, oldBundle)
	if len(cas) != 2 || !cas[1].Equal(olds[0]) || cas[0].Equal(olds[0]) {
		t.Fatalf("bundle holds %d certificates; want the new CA, then the newest old one", len(cas))
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(logDir, "tls.crt"), filepath.Join(logDir, "tls.key"))
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cas[0])
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: webhookHost}); err != nil {
		t.Errorf("the Secret's certificate does not verify against the new CA: %v", err)
	}
	if !bytes.Contains(calls, []byte("--dry-run=client -o yaml")) {
		t.Errorf("the Secret is not created idempotently (create --dry-run | apply):\n%s", calls)
	}
}
