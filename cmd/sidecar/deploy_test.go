package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"cel.dev/cel-go/cel"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"

	"github.com/watertight/watertight/config"
	"github.com/watertight/watertight/inject"
)

// The manifests of deploy/k8s (not its subdirectories: the Grafana dashboard
// and the Prometheus rules are not Kubernetes objects of k8s.io/api).
const deployDir = "../../deploy/k8s"

const systemNamespace = "watertight-system"

// manifests holds every object of deploy/k8s/*.yaml, decoded strictly into
// its k8s.io/api type.
type manifests struct {
	namespaces      []*corev1.Namespace
	serviceAccounts map[string]*corev1.ServiceAccount
	configMaps      map[string]*corev1.ConfigMap
	services        map[string]*corev1.Service
	deployments     map[string]*appsv1.Deployment
	pdbs            map[string]*policyv1.PodDisruptionBudget
	webhookConfigs  map[string]*admissionregistrationv1.MutatingWebhookConfiguration
}

// loadManifests splits each file into its documents and decodes each one
// strictly (unknown or duplicate fields are errors) into the type its
// apiVersion and kind name. A kind without a type here fails the test.
func loadManifests(t *testing.T) *manifests {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(deployDir, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in %s: %v", deployDir, err)
	}
	m := &manifests{
		serviceAccounts: map[string]*corev1.ServiceAccount{}, configMaps: map[string]*corev1.ConfigMap{},
		services: map[string]*corev1.Service{}, deployments: map[string]*appsv1.Deployment{},
		pdbs: map[string]*policyv1.PodDisruptionBudget{}, webhookConfigs: map[string]*admissionregistrationv1.MutatingWebhookConfiguration{},
	}
	for _, f := range files {
		if filepath.Base(f) == "kustomization.yaml" {
			continue // kustomize's, not the API server's (TestKustomizeBuild)
		}
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(data), -1) {
			where := fmt.Sprintf("%s document %d", filepath.Base(f), i)
			var tm metav1.TypeMeta
			if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
				t.Fatalf("%s: %v", where, err)
			}
			if tm.Kind == "" && strings.TrimSpace(stripComments(doc)) == "" {
				continue
			}
			// The Kubernetes scheme's strict decoder (what `kubectl apply
			// --validate=strict` and the API server's field validation use):
			// unknown and duplicate fields are errors.
			decoded, _, err := strictDecoder.Decode([]byte(doc), nil, nil)
			if err != nil {
				t.Fatalf("%s (%s): %v", where, tm.Kind, err)
			}
			var obj metav1.Object
			switch o := decoded.(type) {
			case *corev1.Namespace:
				m.namespaces, obj = append(m.namespaces, o), o
			case *corev1.ServiceAccount:
				m.serviceAccounts[o.Name], obj = o, o
			case *corev1.ConfigMap:
				m.configMaps[o.Name], obj = o, o
			case *corev1.Service:
				m.services[o.Name], obj = o, o
			case *appsv1.Deployment:
				m.deployments[o.Name], obj = o, o
			case *policyv1.PodDisruptionBudget:
				m.pdbs[o.Name], obj = o, o
			case *admissionregistrationv1.MutatingWebhookConfiguration:
				m.webhookConfigs[o.Name], obj = o, o
			default:
				t.Fatalf("%s: apiVersion %q kind %q: no check for it in this test (RBAC objects are not expected either: nothing calls the API)", where, tm.APIVersion, tm.Kind)
			}
			if obj.GetName() == "" {
				t.Fatalf("%s: no name", where)
			}
			if tm.Kind != "Namespace" && tm.Kind != "MutatingWebhookConfiguration" && obj.GetNamespace() != systemNamespace {
				t.Errorf("%s %s: namespace %q, want %s", tm.Kind, obj.GetName(), obj.GetNamespace(), systemNamespace)
			}
			for k, v := range obj.GetLabels() {
				if errs := append(validation.IsQualifiedName(k), validation.IsValidLabelValue(v)...); len(errs) > 0 {
					t.Errorf("%s %s: label %s=%s: %v", tm.Kind, obj.GetName(), k, v, errs)
				}
			}
		}
	}
	return m
}

// strictDecoder decodes any object of client-go's scheme (every built-in
// kind), strictly.
var strictDecoder = serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict).UniversalDeserializer()

func stripComments(doc string) string {
	var b strings.Builder
	for line := range strings.SplitSeq(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

func (m *manifests) deployment(t *testing.T, name string) (*appsv1.Deployment, corev1.Container) {
	t.Helper()
	d := m.deployments[name]
	if d == nil || len(d.Spec.Template.Spec.Containers) != 1 {
		t.Fatalf("deployment %s with one container: %+v", name, d)
	}
	return d, d.Spec.Template.Spec.Containers[0]
}

func (m *manifests) service(t *testing.T, name string) *corev1.Service {
	t.Helper()
	s := m.services[name]
	if s == nil || len(s.Spec.Ports) != 1 {
		t.Fatalf("service %s with one port: %+v", name, s)
	}
	return s
}

// containerPort resolves a Service's or probe's target port in a container.
func containerPort(t *testing.T, c corev1.Container, p intstr.IntOrString) int32 {
	t.Helper()
	if p.Type == intstr.Int {
		return p.IntVal
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return cp.ContainerPort
		}
	}
	t.Fatalf("container %s has no port named %q", c.Name, p.StrVal)
	return 0
}

func portOf(t *testing.T, addr string) int32 {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("%q: %v", addr, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		t.Fatalf("%q: %v", addr, err)
	}
	return int32(p)
}

// expandArgs is c.Args as the kubelet passes them: $(VAR) replaced by the
// container's env var VAR (literal values only, which is all the manifests
// use), $$ by $.
func expandArgs(t *testing.T, c corev1.Container) []string {
	t.Helper()
	env := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			env[e.Name] = e.Value
		}
	}
	ref := regexp.MustCompile(`\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)
	out := make([]string, len(c.Args))
	for i, a := range c.Args {
		out[i] = ref.ReplaceAllStringFunc(a, func(m string) string {
			if m == "$$" {
				return "$"
			}
			v, ok := env[m[2:len(m)-1]]
			if !ok {
				t.Errorf("container %s: %s refers to no env var (the kubelet would pass it literally)", c.Name, m)
			}
			return v
		})
	}
	return out
}

// flagValue is the value after --name in args.
func flagValue(t *testing.T, args []string, name string) string {
	t.Helper()
	for i, a := range args {
		if a == "--"+name && i+1 < len(args) {
			return args[i+1]
		}
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v
		}
	}
	t.Fatalf("no --%s in %q", name, args)
	return ""
}

// TestDeployManifests decodes deploy/k8s strictly and checks that its names,
// ports, paths and flags agree with each other and with the code.
func TestDeployManifests(t *testing.T) {
	m := loadManifests(t)
	if len(m.namespaces) != 1 || m.namespaces[0].Name != systemNamespace ||
		m.namespaces[0].Labels["pod-security.kubernetes.io/enforce"] != "restricted" {
		t.Fatalf("namespaces %+v", m.namespaces)
	}

	// The control plane: its Service, its listen port and its config.
	cpDep, cp := m.deployment(t, "watertight-controlplane")
	cpSvc := m.service(t, "watertight-controlplane")
	if !slices.Equal(cp.Command, []string{inject.Binary}) || cp.Args[0] != "controlplane" {
		t.Fatalf("control plane command %q %q", cp.Command, cp.Args)
	}
	listen := portOf(t, flagValue(t, cp.Args, "listen"))
	if got := containerPort(t, cp, cpSvc.Spec.Ports[0].TargetPort); got != listen || cpSvc.Spec.Ports[0].Name != "grpc" {
		t.Errorf("control plane Service targets %d (%s), it listens on %d", got, cpSvc.Spec.Ports[0].Name, listen)
	}
	configDir := flagValue(t, cp.Args, "config-dir")
	cm := mountedConfigMap(t, cpDep, cp, configDir, m)
	cfg, err := config.Parse([]byte(cm.Data["default.yaml"]))
	if err != nil {
		t.Fatalf("ConfigMap %s default.yaml: %v", cm.Name, err)
	}
	if !slices.ContainsFunc(cfg.Listeners, func(l config.Listener) bool {
		return l.Mode == config.ModeTransparent && portOf(t, l.Address) == inject.ProxyPort
	}) || cfg.UnknownHosts != "passthrough" {
		t.Errorf("default.yaml: no transparent listener on the port iptables redirects to (%d) passing the rest through: %+v", inject.ProxyPort, cfg.Listeners)
	}
	checkAdminProbes(t, cp, flagValue(t, cp.Args, "admin"))

	// The webhook: its flags parse with the real flag set and point at
	// the control plane's Service, its own image and its Secret.
	whDep, wh := m.deployment(t, "watertight-webhook")
	whSvc := m.service(t, "watertight-webhook")
	if !slices.Equal(wh.Command, []string{inject.Binary}) || wh.Args[0] != "inject-webhook" {
		t.Fatalf("webhook command %q %q", wh.Command, wh.Args)
	}
	var stderr bytes.Buffer
	c, err := parseInjectWebhook(expandArgs(t, wh)[1:], &stderr)
	if err != nil {
		t.Fatalf("webhook args %q: %v\n%s", wh.Args, err, stderr.String())
	}
	if c.opts.Image != wh.Image {
		t.Errorf("the webhook injects %q but runs %q: keep them one release", c.opts.Image, wh.Image)
	}
	if cp.Image != wh.Image {
		t.Errorf("control plane image %q, webhook image %q", cp.Image, wh.Image)
	}
	if want := fmt.Sprintf("%s.%s.svc:%d", cpSvc.Name, cpSvc.Namespace, cpSvc.Spec.Ports[0].Port); c.opts.XDSAddress != want {
		t.Errorf("--xds-address %q, want the control plane Service %q", c.opts.XDSAddress, want)
	}
	if c.opts.ProxyResources.Requests.Cpu().String() != "50m" || c.opts.ProxyResources.Requests.Memory().String() != "64Mi" {
		t.Errorf("proxy requests %v", c.opts.ProxyResources.Requests)
	}
	if got := containerPort(t, wh, whSvc.Spec.Ports[0].TargetPort); got != portOf(t, c.listen) || whSvc.Spec.Ports[0].Port != 443 {
		t.Errorf("webhook Service %d → %d, the webhook listens on %s", whSvc.Spec.Ports[0].Port, got, c.listen)
	}
	secret := mountedSecret(t, whDep, wh, filepath.Dir(c.certFile))
	if filepath.Dir(c.keyFile) != filepath.Dir(c.certFile) || filepath.Base(c.certFile) != corev1.TLSCertKey || filepath.Base(c.keyFile) != corev1.TLSPrivateKeyKey {
		t.Errorf("--tls-cert %s --tls-key %s: not the tls.crt/tls.key of one kubernetes.io/tls Secret", c.certFile, c.keyFile)
	}
	for _, p := range []*corev1.Probe{wh.ReadinessProbe, wh.LivenessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != inject.PathHealth || p.HTTPGet.Scheme != corev1.URISchemeHTTPS ||
			containerPort(t, wh, p.HTTPGet.Port) != portOf(t, c.listen) {
			t.Errorf("webhook probe %+v", p)
		}
	}
	if pdb := m.pdbs["watertight-webhook"]; pdb == nil || !selects(t, pdb.Spec.Selector, whDep.Spec.Template.Labels) {
		t.Error("no PodDisruptionBudget for the webhook's pods")
	}

	// The script provisions what the manifests use.
	script, err := os.ReadFile(filepath.Join(deployDir, "webhook-certs.sh"))
	if err != nil {
		t.Fatal(err)
	}
	whc := m.webhookConfigs["watertight-injector"]
	if whc == nil || len(m.webhookConfigs) != 1 {
		t.Fatalf("MutatingWebhookConfigurations %v", m.webhookConfigs)
	}
	for name, want := range map[string]string{"NAMESPACE": systemNamespace, "SERVICE": whSvc.Name, "SECRET": secret, "WEBHOOK_CONFIG": whc.Name} {
		if !strings.Contains(string(script), fmt.Sprintf("%s=${%s:-%s}", name, name, want)) {
			t.Errorf("webhook-certs.sh: %s does not default to %q", name, want)
		}
	}

	checkWebhooks(t, whc, whSvc)

	// Watertight's own pods: never injected, no API access, restricted.
	for _, d := range []*appsv1.Deployment{cpDep, whDep} {
		checkOwnPod(t, d, m)
	}
	for _, s := range []*corev1.Service{cpSvc, whSvc} {
		var d *appsv1.Deployment
		for _, dep := range m.deployments {
			if labels.SelectorFromSet(s.Spec.Selector).Matches(labels.Set(dep.Spec.Template.Labels)) {
				d = dep
			}
		}
		if d == nil {
			t.Errorf("Service %s selects no Deployment's pods", s.Name)
		}
	}
}

func mountedConfigMap(t *testing.T, d *appsv1.Deployment, c corev1.Container, path string, m *manifests) *corev1.ConfigMap {
	t.Helper()
	v := mountedVolume(t, d, c, path)
	if v.ConfigMap == nil || m.configMaps[v.ConfigMap.Name] == nil {
		t.Fatalf("%s is not a ConfigMap of the manifests: %+v", path, v)
	}
	return m.configMaps[v.ConfigMap.Name]
}

func mountedSecret(t *testing.T, d *appsv1.Deployment, c corev1.Container, path string) string {
	t.Helper()
	v := mountedVolume(t, d, c, path)
	if v.Secret == nil {
		t.Fatalf("%s is not a Secret: %+v", path, v)
	}
	return v.Secret.SecretName
}

func mountedVolume(t *testing.T, d *appsv1.Deployment, c corev1.Container, path string) corev1.Volume {
	t.Helper()
	for _, vm := range c.VolumeMounts {
		if vm.MountPath != path {
			continue
		}
		for _, v := range d.Spec.Template.Spec.Volumes {
			if v.Name == vm.Name {
				return v
			}
		}
	}
	t.Fatalf("deployment %s mounts nothing at %s", d.Name, path)
	return corev1.Volume{}
}

// checkAdminProbes: the admin listens where the kubelet reaches it and the
// probes and the scrape annotations name its port.
func checkAdminProbes(t *testing.T, c corev1.Container, admin string) {
	t.Helper()
	if host, _, _ := net.SplitHostPort(admin); host != "0.0.0.0" && host != "" {
		t.Errorf("%s: --admin %s is unreachable for the kubelet's probes", c.Name, admin)
	}
	for _, p := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe} {
		if p == nil || p.HTTPGet == nil || containerPort(t, c, p.HTTPGet.Port) != portOf(t, admin) {
			t.Errorf("%s: probe %+v not on the admin port %s", c.Name, p, admin)
		}
	}
}

func selects(t *testing.T, s *metav1.LabelSelector, set map[string]string) bool {
	t.Helper()
	sel, err := metav1.LabelSelectorAsSelector(s)
	if err != nil {
		t.Fatalf("selector %+v: %v", s, err)
	}
	return sel.Matches(labels.Set(set))
}

func checkOwnPod(t *testing.T, d *appsv1.Deployment, m *manifests) {
	t.Helper()
	pod := d.Spec.Template
	if !selects(t, d.Spec.Selector, pod.Labels) {
		t.Errorf("%s: the selector does not select its own pods", d.Name)
	}
	if pod.Annotations[inject.AnnotationInject] != "false" || pod.Labels[inject.LabelInject] != "false" {
		t.Errorf("%s: not opted out of injection", d.Name)
	}
	sa := m.serviceAccounts[pod.Spec.ServiceAccountName]
	if sa == nil || sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken ||
		pod.Spec.AutomountServiceAccountToken == nil || *pod.Spec.AutomountServiceAccountToken {
		t.Errorf("%s: ServiceAccount %q must exist and mount no token (it has no RBAC)", d.Name, pod.Spec.ServiceAccountName)
	}
	psc := pod.Spec.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.SeccompProfile == nil ||
		psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault || pod.Spec.HostNetwork {
		t.Errorf("%s: pod security context is not restricted: %+v", d.Name, psc)
	}
	for _, c := range pod.Spec.Containers {
		sc := c.SecurityContext
		if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
			sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0 ||
			sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Errorf("%s/%s: container security context is not restricted: %+v", d.Name, c.Name, sc)
		}
		if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
			t.Errorf("%s/%s: no resource requests", d.Name, c.Name)
		}
		for _, p := range c.Ports {
			if errs := validation.IsValidPortName(p.Name); len(errs) > 0 {
				t.Errorf("%s/%s: port name %q: %v", d.Name, c.Name, p.Name, errs)
			}
		}
		checkFlagsExist(t, c)
	}
}

// checkFlagsExist: every --flag a container passes is one its subcommand
// defines (as its --help lists them).
func checkFlagsExist(t *testing.T, c corev1.Container) {
	t.Helper()
	var out, help bytes.Buffer
	if code := run([]string{c.Args[0], "--help"}, &out, &help); code != 0 {
		t.Fatalf("%s: sidecar %s --help: exit %d", c.Name, c.Args[0], code)
	}
	for _, a := range c.Args[1:] {
		name, ok := strings.CutPrefix(a, "--")
		if !ok {
			continue
		}
		name, _, _ = strings.Cut(name, "=")
		if !regexp.MustCompile(`(?m)^\s+-` + regexp.QuoteMeta(name) + `\b`).MatchString(help.String()) {
			t.Errorf("%s: sidecar %s has no flag --%s", c.Name, c.Args[0], name)
		}
	}
}

// checkWebhooks: the MutatingWebhookConfiguration calls the webhook's
// Service on the paths the handler serves, with the selectors and
// conditions that make each path's promise true.
func checkWebhooks(t *testing.T, whc *admissionregistrationv1.MutatingWebhookConfiguration, svc *corev1.Service) {
	t.Helper()
	paths := map[string]*admissionregistrationv1.MutatingWebhook{}
	for i := range whc.Webhooks {
		w := &whc.Webhooks[i]
		s := w.ClientConfig.Service
		if s == nil || s.Name != svc.Name || s.Namespace != svc.Namespace || s.Port == nil || *s.Port != svc.Spec.Ports[0].Port || s.Path == nil {
			t.Fatalf("%s: clientConfig %+v does not call Service %s/%s:%d", w.Name, w.ClientConfig, svc.Namespace, svc.Name, svc.Spec.Ports[0].Port)
		}
		if w.ClientConfig.URL != nil || len(w.ClientConfig.CABundle) != 0 {
			t.Errorf("%s: caBundle must be the empty placeholder the script or cert-manager fills", w.Name)
		}
		// The API server's rule: each path segment a DNS-1123 subdomain.
		for seg := range strings.SplitSeq(strings.TrimPrefix(*s.Path, "/"), "/") {
			if errs := validation.IsDNS1123Subdomain(seg); len(errs) > 0 {
				t.Errorf("%s: path %s: %v", w.Name, *s.Path, errs)
			}
		}
		paths[*s.Path] = w
		switch {
		case !slices.Equal(w.AdmissionReviewVersions, []string{"v1"}):
			t.Errorf("%s: admissionReviewVersions %v", w.Name, w.AdmissionReviewVersions)
		case w.SideEffects == nil || *w.SideEffects != admissionregistrationv1.SideEffectClassNone:
			t.Errorf("%s: sideEffects %v", w.Name, deref(w.SideEffects))
		case w.FailurePolicy == nil || *w.FailurePolicy != admissionregistrationv1.Ignore:
			t.Errorf("%s: failurePolicy %v, want Ignore: never block pod creation", w.Name, deref(w.FailurePolicy))
		case w.ReinvocationPolicy == nil || *w.ReinvocationPolicy != admissionregistrationv1.IfNeededReinvocationPolicy:
			t.Errorf("%s: reinvocationPolicy %v", w.Name, deref(w.ReinvocationPolicy))
		case w.TimeoutSeconds == nil || *w.TimeoutSeconds < 1 || *w.TimeoutSeconds > 10:
			t.Errorf("%s: timeoutSeconds %v", w.Name, deref(w.TimeoutSeconds))
		case len(w.Rules) != 1 || !slices.Equal(w.Rules[0].Operations, []admissionregistrationv1.OperationType{admissionregistrationv1.Create}) ||
			!slices.Equal(w.Rules[0].APIGroups, []string{""}) || !slices.Equal(w.Rules[0].APIVersions, []string{"v1"}) ||
			!slices.Equal(w.Rules[0].Resources, []string{"pods"}):
			t.Errorf("%s: rules %+v, want CREATE of v1 pods", w.Name, w.Rules)
		}
	}
	ns, pod := paths[inject.PathNamespaceEnabled], paths[inject.Path]
	if ns == nil || pod == nil || len(paths) != 2 {
		t.Fatalf("webhooks on %v, want %s and %s", slices.Sorted(maps.Keys(paths)), inject.PathNamespaceEnabled, inject.Path)
	}

	// Which namespaces reach which path.
	nsLabels := func(name string, enabled bool) map[string]string {
		l := map[string]string{"kubernetes.io/metadata.name": name}
		if enabled {
			l[inject.LabelInject] = inject.LabelInjectEnabled
		}
		return l
	}
	for _, tc := range []struct {
		labels      map[string]string
		toNS, toPod bool
		what        string
	}{
		{nsLabels("shop", true), true, false, "an enabled namespace"},
		{nsLabels("shop", false), false, true, "a namespace without the label"},
		{map[string]string{"kubernetes.io/metadata.name": "x", inject.LabelInject: "disabled"}, false, true, "a namespace labelled otherwise"},
		{nsLabels(systemNamespace, true), false, false, "watertight-system, even labelled"},
		{nsLabels(systemNamespace, false), false, false, "watertight-system"},
	} {
		if got := selects(t, ns.NamespaceSelector, tc.labels); got != tc.toNS {
			t.Errorf("%s: namespace webhook called %v, want %v", tc.what, got, tc.toNS)
		}
		if got := selects(t, pod.NamespaceSelector, tc.labels); got != tc.toPod {
			t.Errorf("%s: pod webhook called %v, want %v", tc.what, got, tc.toPod)
		}
	}
	for _, w := range []*admissionregistrationv1.MutatingWebhook{ns, pod} {
		if selects(t, w.ObjectSelector, map[string]string{inject.LabelInject: "false", "app": "x"}) ||
			!selects(t, w.ObjectSelector, map[string]string{"app": "x"}) {
			t.Errorf("%s: objectSelector %+v", w.Name, w.ObjectSelector)
		}
	}

	// Which pods of the other namespaces reach /inject: matchConditions,
	// evaluated with CEL as the API server does.
	if len(ns.MatchConditions) != 0 {
		t.Errorf("%s: matchConditions would hide pods of enabled namespaces", ns.Name)
	}
	for _, tc := range []struct {
		annotations map[string]string
		call        bool
	}{
		{nil, false},
		{map[string]string{}, false},
		{map[string]string{"team": "x"}, false},
		{map[string]string{inject.AnnotationInject: "true"}, true},
		{map[string]string{inject.AnnotationInject: "maybe"}, true}, // to be told it is not read
		{map[string]string{inject.AnnotationInject: "false"}, false},
	} {
		if got := matchConditions(t, pod.MatchConditions, tc.annotations); got != tc.call {
			t.Errorf("pod annotated %v: webhook called %v, want %v", tc.annotations, got, tc.call)
		}
	}
}

// deref shows what a pointer field holds, or <nil>.
func deref[T any](p *T) any {
	if p == nil {
		return "<nil>"
	}
	return *p
}

// matchConditions evaluates the conditions for a pod with these
// annotations: all must be true for the API server to call the webhook.
func matchConditions(t *testing.T, conds []admissionregistrationv1.MatchCondition, annotations map[string]string) bool {
	t.Helper()
	if len(conds) == 0 {
		t.Fatal("no matchConditions: every pod of every namespace would be sent")
	}
	env, err := cel.NewEnv(
		cel.Variable("object", cel.DynType),
		cel.Variable("oldObject", cel.DynType),
		cel.Variable("request", cel.DynType),
	)
	if err != nil {
		t.Fatal(err)
	}
	pod := corev1.Pod{
		TypeMeta:   metav1.TypeMeta{Kind: "Pod", APIVersion: "v1"},
		ObjectMeta: metav1.ObjectMeta{GenerateName: "app-", Namespace: "shop", Annotations: annotations},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app"}}},
	}
	var object map[string]any
	b, _ := json.Marshal(pod)
	if err := json.Unmarshal(b, &object); err != nil {
		t.Fatal(err)
	}
	for _, c := range conds {
		ast, iss := env.Compile(c.Expression)
		if iss.Err() != nil {
			t.Fatalf("matchCondition %s: %v", c.Name, iss.Err())
		}
		prg, err := env.Program(ast)
		if err != nil {
			t.Fatal(err)
		}
		out, _, err := prg.Eval(map[string]any{"object": object, "oldObject": nil, "request": map[string]any{}})
		if err != nil {
			t.Fatalf("matchCondition %s on %v: %v", c.Name, annotations, err)
		}
		if v, ok := out.Value().(bool); !ok {
			t.Fatalf("matchCondition %s is not a bool: %v", c.Name, out)
		} else if !v {
			return false
		}
	}
	return true
}
