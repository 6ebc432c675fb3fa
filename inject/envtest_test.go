package inject

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"
)

// The webhook behind a real kube-apiserver and etcd (controller-runtime's
// envtest), with the MutatingWebhookConfiguration that deploy/k8s ships:
// the API server evaluates its selectors and matchConditions, calls the
// webhook over TLS, applies the JSON Patch, validates and stores the pod.
// What comes back from the API server is what a cluster would run.
//
// KUBEBUILDER_ASSETS names a directory with kube-apiserver and etcd;
// .ci/run builds kube-apiserver with tools/k8s/build-apiserver.sh and links
// Debian's etcd next to it. Without them the suite is skipped, and under
// CI=true it fails.

// recorder collects the warnings the API server passes back to the client
// (the webhook's admission warnings reach kubectl the same way).
type recorder struct {
	mu   sync.Mutex
	msgs []string
}

func (r *recorder) HandleWarningHeader(_ int, _ string, msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, msg)
}

func (r *recorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.msgs
	r.msgs = nil
	return m
}

func envtestAssets(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("KUBEBUILDER_ASSETS")
	missing := func(why string) {
		if os.Getenv("CI") == "true" {
			t.Fatalf("envtest: %s (.ci/run sets KUBEBUILDER_ASSETS from tools/k8s/build-apiserver.sh)", why)
		}
		t.Skipf("envtest: %s; run: export KUBEBUILDER_ASSETS=$(tools/k8s/build-apiserver.sh) && ln -sf $(command -v etcd) $KUBEBUILDER_ASSETS/", why)
	}
	if dir == "" {
		missing("KUBEBUILDER_ASSETS is not set")
	}
	for _, bin := range []string{"kube-apiserver", "etcd"} {
		if _, err := exec.LookPath(filepath.Join(dir, bin)); err != nil {
			missing(bin + " not in KUBEBUILDER_ASSETS=" + dir)
		}
	}
	return dir
}

// shippedWebhookConfig is deploy/k8s's MutatingWebhookConfiguration, as a
// user would apply it.
func shippedWebhookConfig(t *testing.T) *admissionregistrationv1.MutatingWebhookConfiguration {
	t.Helper()
	b, err := os.ReadFile("../deploy/k8s/30-mutatingwebhookconfiguration.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var c admissionregistrationv1.MutatingWebhookConfiguration
	if err := yaml.UnmarshalStrict(b, &c); err != nil {
		t.Fatalf("decoding the shipped webhook configuration: %v", err)
	}
	return &c
}

// prependerConfig is a second mutating webhook, called after ours (the API
// server orders configurations by name), that puts an init container of its
// own first: what a secret fetcher or another mesh's agent does. Ours has
// reinvocationPolicy IfNeeded, so the API server calls it again afterwards.
func prependerConfig(t *testing.T) *admissionregistrationv1.MutatingWebhookConfiguration {
	t.Helper()
	none := admissionregistrationv1.SideEffectClassNone
	fail := admissionregistrationv1.Fail
	path := "/prepend"
	return &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "zz-prepender"},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name:                    "prepend.example.com",
			AdmissionReviewVersions: []string{"v1"},
			SideEffects:             &none,
			FailurePolicy:           &fail,
			ClientConfig: admissionregistrationv1.WebhookClientConfig{
				Service: &admissionregistrationv1.ServiceReference{Namespace: "x", Name: "x", Path: &path},
			},
			Rules: []admissionregistrationv1.RuleWithOperations{{
				Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
				Rule:       admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}},
			}},
			ObjectSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"test/prepend": "yes"}},
		}},
	}
}

// prepend answers every review by adding an init container "vault" in
// front, once.
func prepend(w http.ResponseWriter, r *http.Request) {
	var review admissionv1.AdmissionReview
	if err := json.NewDecoder(r.Body).Decode(&review); err != nil || review.Request == nil {
		http.Error(w, "bad review", http.StatusBadRequest)
		return
	}
	var pod corev1.Pod
	if err := json.Unmarshal(review.Request.Object.Raw, &pod); err != nil {
		http.Error(w, "bad pod", http.StatusBadRequest)
		return
	}
	resp := &admissionv1.AdmissionResponse{UID: review.Request.UID, Allowed: true}
	if !slices.ContainsFunc(pod.Spec.InitContainers, func(c corev1.Container) bool { return c.Name == "vault" }) {
		vault := corev1.Container{Name: "vault", Image: "vault:1"}
		var op PatchOp
		if len(pod.Spec.InitContainers) == 0 {
			op = PatchOp{Op: "add", Path: "/spec/initContainers", Value: []corev1.Container{vault}}
		} else {
			op = PatchOp{Op: "add", Path: "/spec/initContainers/0", Value: vault}
		}
		resp.Patch, _ = json.Marshal([]PatchOp{op})
		pt := admissionv1.PatchTypeJSONPatch
		resp.PatchType = &pt
	}
	review.Response, review.Request = resp, nil
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(&review)
}

func TestEnvtestAPIServerInjectsPods(t *testing.T) {
	assets := envtestAssets(t)

	wh := envtest.WebhookInstallOptions{
		MutatingWebhooks: []*admissionregistrationv1.MutatingWebhookConfiguration{
			shippedWebhookConfig(t), prependerConfig(t),
		},
		LocalServingHost: "127.0.0.1",
	}
	// Certificates and a port for the webhook, and the configurations
	// rewritten from the Service to that URL with the CA as caBundle.
	if err := wh.PrepWithoutInstalling(); err != nil {
		t.Fatalf("envtest: preparing the webhook install: %v", err)
	}
	defer func() { _ = wh.Cleanup() }()
	// envtest joins host and Service path with one slash too many
	// ("https://h:p//inject"); Go's ServeMux would answer that with a
	// redirect, which the API server does not follow.
	for _, c := range wh.MutatingWebhooks {
		for i := range c.Webhooks {
			if u := c.Webhooks[i].ClientConfig.URL; u != nil {
				fixed := strings.Replace(*u, "//", "/", 2)
				fixed = strings.Replace(fixed, "https:/", "https://", 1)
				c.Webhooks[i].ClientConfig.URL = &fixed
			}
		}
	}

	env := &envtest.Environment{
		BinaryAssetsDirectory:   assets,
		ControlPlaneStopTimeout: 30 * time.Second,
	}
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("envtest: starting kube-apiserver and etcd from %s: %v", assets, err)
	}
	defer func() {
		if err := env.Stop(); err != nil {
			t.Errorf("envtest: stopping: %v", err)
		}
	}()

	// The webhook, as `sidecar inject-webhook` runs it, on envtest's port
	// with envtest's certificate; the prepender beside it.
	h, err := NewHandler(testOptions(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/", h)
	mux.HandleFunc("/prepend", prepend)
	addr := net.JoinHostPort(wh.LocalServingHost, strconv.Itoa(wh.LocalServingPort))
	srv, err := Start(addr, filepath.Join(wh.LocalServingCertDir, "tls.crt"), filepath.Join(wh.LocalServingCertDir, "tls.key"), mux, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("starting the webhook on %s: %v", addr, err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}()

	// Installs the configurations and waits until the API server has them.
	if err := wh.Install(cfg); err != nil {
		t.Fatalf("envtest: installing the webhook configurations: %v", err)
	}

	warnings := &recorder{}
	cfg = rest.CopyConfig(cfg)
	cfg.WarningHandler = warnings
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.CoreV1().RESTClient().(*rest.RESTClient).Client.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	mkns := func(name string, labels map[string]string) {
		t.Helper()
		_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("creating namespace %s: %v", name, err)
		}
	}
	mkns("shop", map[string]string{LabelInject: LabelInjectEnabled})
	mkns("plain", nil)
	mkns("watertight-system", map[string]string{LabelInject: LabelInjectEnabled})

	create := func(t *testing.T, ns, name string, ann, labels map[string]string, edit func(*corev1.Pod)) *corev1.Pod {
		t.Helper()
		pod := appPod(ann)
		pod.TypeMeta = metav1.TypeMeta{}
		pod.Name, pod.Namespace, pod.Labels = name, ns, labels
		if edit != nil {
			edit(pod)
		}
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatalf("creating pod %s/%s: %v", ns, name, err)
		}
		// Read back: what etcd holds, not the create call's echo.
		got, err := cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("reading pod %s/%s back: %v", ns, name, err)
		}
		return got
	}
	initNames := func(p *corev1.Pod) []string {
		var n []string
		for _, c := range p.Spec.InitContainers {
			n = append(n, c.Name)
		}
		return n
	}
	injected := []string{IptablesContainerName, ProxyContainerName}
	uninjected := func(t *testing.T, p *corev1.Pod) {
		t.Helper()
		if len(p.Spec.InitContainers) != 0 || p.Annotations[AnnotationStatus] != "" {
			t.Fatalf("pod %s/%s was injected: init containers %v, annotations %v", p.Namespace, p.Name, initNames(p), p.Annotations)
		}
	}

	t.Run("labelled namespace: sidecar, init container and exclusions", func(t *testing.T) {
		p := create(t, "shop", "checkout-1", map[string]string{
			AnnotationExcludePorts: "5432, 6379",
			AnnotationExcludeCIDRs: "10.96.0.0/12,169.254.169.254",
		}, nil, nil)
		if got := initNames(p); !slices.Equal(got, injected) {
			t.Fatalf("init containers %v, want %v", got, injected)
		}
		// The same checks as the unit tests, now on what the API server
		// defaulted, validated and stored.
		checkIptables(t, p.Spec.InitContainers[0], []string{"--exclude-ports", "5432,6379", "--exclude-cidrs", "10.96.0.0/12,169.254.169.254/32"})
		checkProxy(t, p.Spec.InitContainers[1])
		if rp := p.Spec.InitContainers[1].RestartPolicy; rp == nil || *rp != corev1.ContainerRestartPolicyAlways {
			t.Errorf("proxy restartPolicy %v, want Always (a native sidecar)", rp)
		}
		if p.Annotations[AnnotationStatus] != StatusInjected || p.Annotations["prometheus.io/port"] != strconv.Itoa(AdminPort) {
			t.Errorf("annotations %v", p.Annotations)
		}
		if len(p.Spec.Containers) != 1 || p.Spec.Containers[0].Name != "checkout" {
			t.Errorf("app containers changed: %+v", p.Spec.Containers)
		}
		if w := warnings.take(); len(w) != 0 {
			t.Errorf("warnings %q", w)
		}
	})

	t.Run("labelled namespace, pod opted out", func(t *testing.T) {
		uninjected(t, create(t, "shop", "opted-out", map[string]string{AnnotationInject: "false"}, nil, nil))
		uninjected(t, create(t, "shop", "opted-out-label", nil, map[string]string{LabelInject: "false"}, nil))
	})

	t.Run("plain namespace: only pods that ask", func(t *testing.T) {
		uninjected(t, create(t, "plain", "untouched", nil, nil, nil))
		p := create(t, "plain", "asked", map[string]string{AnnotationInject: "true"}, nil, nil)
		if got := initNames(p); !slices.Equal(got, injected) {
			t.Fatalf("init containers %v, want %v", got, injected)
		}
	})

	t.Run("the control plane's own namespace is never injected", func(t *testing.T) {
		uninjected(t, create(t, "watertight-system", "controlplane", map[string]string{AnnotationInject: "true"}, nil, nil))
	})

	t.Run("bad annotation: admitted unchanged, with a warning", func(t *testing.T) {
		warnings.take()
		uninjected(t, create(t, "shop", "bad-ports", map[string]string{AnnotationExcludePorts: "22,abc"}, nil, nil))
		w := warnings.take()
		if !slices.ContainsFunc(w, func(s string) bool {
			return strings.Contains(s, AnnotationExcludePorts) && strings.Contains(s, `"abc" is not a port`)
		}) {
			t.Fatalf("warnings %q, want one naming %s and the bad value", w, AnnotationExcludePorts)
		}
	})

	t.Run("hostNetwork pods are skipped", func(t *testing.T) {
		uninjected(t, create(t, "shop", "hostnet", nil, nil, func(p *corev1.Pod) { p.Spec.HostNetwork = true }))
	})

	t.Run("a later webhook's init container: reinvoked, ours back in front", func(t *testing.T) {
		p := create(t, "shop", "with-vault", nil, map[string]string{"test/prepend": "yes"}, func(p *corev1.Pod) {
			p.Spec.InitContainers = []corev1.Container{{Name: "migrate", Image: "shop/migrate:1"}}
		})
		want := []string{IptablesContainerName, ProxyContainerName, "vault", "migrate"}
		if got := initNames(p); !slices.Equal(got, want) {
			t.Fatalf("init containers %v, want %v", got, want)
		}
	})
}
