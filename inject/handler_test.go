package inject

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"

	"github.com/watertight/watertight/internal/testcert"
)

var quiet = slog.New(slog.DiscardHandler)

const webhookHost = testcert.WebhookHost

// startWebhook runs the real server (Start with the real handler) on
// loopback with a certificate of ca, and a client that trusts only ca and
// verifies the Service name, as the API server does.
func startWebhook(t *testing.T, ca *testcert.CA) (base string, client *http.Client, certFile, keyFile string) {
	t.Helper()
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	ca.Issue(t, 100, certFile, keyFile)
	h, err := NewHandler(testOptions(), quiet)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := Start("127.0.0.1:0", certFile, keyFile, h, quiet)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: ca.Pool, ServerName: webhookHost},
		// New connections per request: each one is a handshake that
		// shows which certificate is served.
		DisableKeepAlives: true,
	}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return "https://" + srv.Addr().String(), &http.Client{Transport: tr, Timeout: 10 * time.Second}, certFile, keyFile
}

func readReview(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "admissionreview-pod.json"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func postReview(t *testing.T, client *http.Client, url string, body []byte) *admissionv1.AdmissionReview {
	t.Helper()
	// The API server adds ?timeout= to the configured path.
	resp, err := client.Post(url+"?timeout=5s", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("%s: %s %q: %s", url, resp.Status, resp.Header.Get("Content-Type"), data)
	}
	var out admissionv1.AdmissionReview
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&out); err != nil {
		t.Fatalf("response is not an AdmissionReview: %v\n%s", err, data)
	}
	return &out
}

// TestWebhookOverHTTPS sends the review the API server sends for a
// ReplicaSet's pod to the real HTTPS server and applies the patch it gets.
func TestWebhookOverHTTPS(t *testing.T) {
	base, client, _, _ := startWebhook(t, testcert.NewCA(t))
	body := readReview(t)
	var in admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &in); err != nil {
		t.Fatal(err)
	}

	out := postReview(t, client, base+PathNamespaceEnabled, body)
	if out.APIVersion != "admission.k8s.io/v1" || out.Kind != "AdmissionReview" || out.Request != nil {
		t.Fatalf("envelope %+v", out.TypeMeta)
	}
	r := out.Response
	if r == nil || r.UID != in.Request.UID || !r.Allowed || r.Result != nil {
		t.Fatalf("response %+v", r)
	}
	if r.PatchType == nil || *r.PatchType != admissionv1.PatchTypeJSONPatch || len(r.Patch) == 0 || len(r.Warnings) != 0 {
		t.Fatalf("patch type %v, %d patch bytes, warnings %q", r.PatchType, len(r.Patch), r.Warnings)
	}
	// The wire form is base64, as the API server expects for []byte.
	var raw struct {
		Response struct {
			Patch string `json:"patch"`
		} `json:"response"`
	}
	if err := json.Unmarshal(mustJSON(t, out), &raw); err != nil || strings.HasPrefix(raw.Response.Patch, "[") {
		t.Fatalf("patch not base64 on the wire: %v %q", err, raw.Response.Patch)
	}

	got := applyRawPatch(t, in.Request.Object.Raw, r.Patch)
	var names []string
	for _, c := range got.Spec.InitContainers {
		names = append(names, c.Name)
	}
	if want := []string{IptablesContainerName, ProxyContainerName, "migrate"}; !slices.Equal(names, want) {
		t.Fatalf("init containers %v, want %v", names, want)
	}
	checkIptables(t, got.Spec.InitContainers[0], []string{"--exclude-ports", "5432", "--exclude-cidrs", "10.96.0.1/32"})
	checkProxy(t, got.Spec.InitContainers[1])
	if got.Spec.SecurityContext.RunAsNonRoot == nil || !*got.Spec.SecurityContext.RunAsNonRoot ||
		got.Spec.Volumes[0].Name != "kube-api-access-x7k2p" || got.Labels["app"] != "checkout" {
		t.Error("the patch changed what it should not")
	}
	if got.Annotations[AnnotationStatus] != StatusInjected || got.Annotations[AnnotationExcludePorts] != "5432" {
		t.Errorf("annotations %v", got.Annotations)
	}

	// The same pod in a namespace that did not opt in: left alone.
	out = postReview(t, client, base+Path, body)
	if r := out.Response; r.UID != in.Request.UID || !r.Allowed || r.Patch != nil || r.PatchType != nil {
		t.Fatalf("namespace not enabled: %+v", r)
	}

	// The injected pod comes back (a reinvocation): nothing changes.
	in.Request.Object.Raw = mustJSON(t, got)
	out = postReview(t, client, base+PathNamespaceEnabled, mustJSON(t, &in))
	if r := out.Response; !r.Allowed || r.Patch != nil {
		t.Fatalf("re-injection patched: %+v", r)
	}

	// A bad annotation: allowed, unchanged, with a warning.
	var pod map[string]any
	if err := json.Unmarshal(readObject(t, body), &pod); err != nil {
		t.Fatal(err)
	}
	pod["metadata"].(map[string]any)["annotations"].(map[string]any)[AnnotationExcludeCIDRs] = "10.0.0.0/33"
	in.Request.Object.Raw = mustJSON(t, pod)
	out = postReview(t, client, base+PathNamespaceEnabled, mustJSON(t, &in))
	if r := out.Response; !r.Allowed || r.Patch != nil || len(r.Warnings) != 1 ||
		!strings.Contains(r.Warnings[0], `watertight.io/exclude-outbound-cidrs: "10.0.0.0/33"`) {
		t.Fatalf("bad annotation: %+v", r)
	}

	// The health endpoint for the Deployment's probes.
	resp, err := client.Get(base + PathHealth)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("healthz: %s", resp.Status)
	}
}

func readObject(t *testing.T, review []byte) []byte {
	t.Helper()
	var in admissionv1.AdmissionReview
	if err := json.Unmarshal(review, &in); err != nil {
		t.Fatal(err)
	}
	return in.Request.Object.Raw
}

// TestCertificateReload: a renewed certificate is served from the next
// handshake on; a broken one leaves the previous one serving.
func TestCertificateReload(t *testing.T) {
	ca := testcert.NewCA(t)
	base, client, certFile, keyFile := startWebhook(t, ca)
	serial := func() int64 {
		t.Helper()
		resp, err := client.Get(base + PathHealth)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.TLS.PeerCertificates[0].SerialNumber.Int64()
	}
	if got := serial(); got != 100 {
		t.Fatalf("serving serial %d, want 100", got)
	}
	ca.Issue(t, 101, certFile, keyFile)
	if got := serial(); got != 101 {
		t.Fatalf("after renewal: serial %d, want 101", got)
	}
	// Half an update: a new key that does not match the certificate.
	good, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(t.TempDir(), "other")
	ca.Issue(t, 102, other+".crt", other+".key")
	otherKey, err := os.ReadFile(other + ".key")
	if err != nil {
		t.Fatal(err)
	}
	testcert.WriteAtomically(t, keyFile, otherKey)
	if got := serial(); got != 101 {
		t.Fatalf("mismatched pair: serial %d, want 101 kept", got)
	}
	testcert.WriteAtomically(t, keyFile, good)
	if got := serial(); got != 101 {
		t.Fatalf("restored pair: serial %d, want 101", got)
	}
	// A missing file at start is an error, not a server without a cert.
	if _, err := Start("127.0.0.1:0", filepath.Join(t.TempDir(), "none.crt"), keyFile, http.NotFoundHandler(), quiet); err == nil ||
		!strings.Contains(err.Error(), "TLS certificate") {
		t.Errorf("missing certificate: %v", err)
	}
}

// TestHandlerRefusesClientErrors: malformed input is a 4xx with a reason,
// never a 500 (and never a panic).
func TestHandlerRefusesClientErrors(t *testing.T) {
	h, err := NewHandler(testOptions(), quiet)
	if err != nil {
		t.Fatal(err)
	}
	good := readReview(t)
	withRequest := func(edit func(req map[string]any)) string {
		var m map[string]any
		if err := json.Unmarshal(good, &m); err != nil {
			t.Fatal(err)
		}
		edit(m["request"].(map[string]any))
		return string(mustJSON(t, m))
	}
	tests := []struct {
		name, method, ctype, body string
		status                    int
		says                      string
	}{
		{"GET", http.MethodGet, "", "", 405, "method GET not allowed"},
		{"no content type", http.MethodPost, "", string(good), 415, `content type "" is not application/json`},
		{"YAML", http.MethodPost, "application/yaml", string(good), 415, `"application/yaml" is not application/json`},
		{"not JSON", http.MethodPost, "application/json", "<xml/>", 400, "decoding the AdmissionReview"},
		{"truncated", http.MethodPost, "application/json", string(good[:len(good)/2]), 400, "decoding the AdmissionReview"},
		{"empty", http.MethodPost, "application/json", "", 400, "decoding the AdmissionReview"},
		{"two objects", http.MethodPost, "application/json", string(good) + "{}", 400, "data after the JSON object"},
		{"wrong kind", http.MethodPost, "application/json", `{"apiVersion":"admission.k8s.io/v1","kind":"Pod","request":{"uid":"x"}}`, 400,
			`expected apiVersion admission.k8s.io/v1, kind AdmissionReview; got apiVersion "admission.k8s.io/v1", kind "Pod"`},
		{"v1beta1", http.MethodPost, "application/json", strings.Replace(string(good), "admission.k8s.io/v1", "admission.k8s.io/v1beta1", 1), 400,
			`got apiVersion "admission.k8s.io/v1beta1"`},
		{"no request", http.MethodPost, "application/json", `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`, 400, "has no request"},
		{"no uid", http.MethodPost, "application/json", withRequest(func(r map[string]any) { delete(r, "uid") }), 400, "has no uid"},
		{"no object", http.MethodPost, "application/json", withRequest(func(r map[string]any) { delete(r, "object") }), 400, "has no object"},
		{"null object", http.MethodPost, "application/json", withRequest(func(r map[string]any) { r["object"] = nil }), 400, "has no object"},
		{"object not a pod", http.MethodPost, "application/json", withRequest(func(r map[string]any) {
			r["object"] = map[string]any{"kind": "Service", "apiVersion": "v1"}
		}), 400, `is a "Service", not a Pod`},
		{"object malformed", http.MethodPost, "application/json", withRequest(func(r map[string]any) {
			r["object"] = map[string]any{"spec": "none"}
		}), 400, "the request's object is not a pod"},
		{"too large", http.MethodPost, "application/json", `{"apiVersion":"` + strings.Repeat("a", maxBody) + `"}`, 413, "body larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(tt.method, PathNamespaceEnabled, strings.NewReader(tt.body))
			if tt.ctype != "" {
				req.Header.Set("Content-Type", tt.ctype)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tt.status || !strings.Contains(rec.Body.String(), tt.says) {
				t.Errorf("%d %q, want %d saying %q", rec.Code, rec.Body.String(), tt.status, tt.says)
			}
			if tt.status == 405 && rec.Header().Get("Allow") != "POST" {
				t.Errorf("Allow %q", rec.Header().Get("Allow"))
			}
		})
	}
}

// TestHandlerLetsOtherRequestsBe: a review that is not the creation of a
// pod (the rules say it cannot happen) is allowed, unchanged.
func TestHandlerLetsOtherRequestsBe(t *testing.T) {
	h, err := NewHandler(testOptions(), quiet)
	if err != nil {
		t.Fatal(err)
	}
	good := readReview(t)
	for name, edit := range map[string]func(req map[string]any){
		"update": func(r map[string]any) { r["operation"] = "UPDATE" },
		"deployment": func(r map[string]any) {
			r["kind"] = map[string]any{"group": "apps", "version": "v1", "kind": "Deployment"}
		},
		"subresource": func(r map[string]any) { r["subResource"] = "ephemeralcontainers" },
	} {
		t.Run(name, func(t *testing.T) {
			var m map[string]any
			if err := json.Unmarshal(good, &m); err != nil {
				t.Fatal(err)
			}
			edit(m["request"].(map[string]any))
			req := httptest.NewRequest(http.MethodPost, PathNamespaceEnabled, bytes.NewReader(mustJSON(t, m)))
			req.Header.Set("Content-Type", "application/json; charset=utf-8")
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			var out admissionv1.AdmissionReview
			if err := json.Unmarshal(rec.Body.Bytes(), &out); rec.Code != 200 || err != nil || out.Response == nil ||
				!out.Response.Allowed || out.Response.Patch != nil || out.Response.UID == "" {
				t.Fatalf("%d %s", rec.Code, rec.Body.String())
			}
		})
	}
}

func TestNewHandlerValidatesOptions(t *testing.T) {
	if _, err := NewHandler(Options{}, quiet); err == nil || !strings.Contains(err.Error(), "image: required") {
		t.Fatalf("empty options: %v", err)
	}
}

// FuzzHandler: whatever arrives, the answer is 200 or a 4xx, never a 5xx
// or a panic; a 200 is an allowed review that answers the request's uid.
func FuzzHandler(f *testing.F) {
	good, err := os.ReadFile(filepath.Join("testdata", "admissionreview-pod.json"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"version":"v1","kind":"Pod"},"operation":"CREATE","object":{"metadata":{"annotations":{"watertight.io/inject":"true"}},"spec":{"hostNetwork":true}}}}`))
	f.Add([]byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"version":"v1","kind":"Pod"},"operation":"CREATE","object":null}}`))
	f.Add([]byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"version":"v1","kind":"Pod"},"operation":"CREATE","object":{"spec":{"initContainers":[{"name":"watertight-proxy"}]}}}}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`[]`))
	h, err := NewHandler(testOptions(), quiet)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, path := range []string{Path, PathNamespaceEnabled} {
			req := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code >= 500 {
				t.Fatalf("%d %s", rec.Code, rec.Body.String())
			}
			if rec.Code != 200 {
				continue
			}
			var out admissionv1.AdmissionReview
			if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil || out.Response == nil || !out.Response.Allowed || out.Response.UID == "" {
				t.Fatalf("200 but %v: %s", err, rec.Body.String())
			}
		}
	})
}
