package inject

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	"go.uber.org/goleak"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	testImage = "ghcr.io/watertight/watertight:test"
	testXDS   = "watertight-controlplane.watertight-system.svc:18000"
)

func testOptions() Options {
	return Options{
		Image:      testImage,
		XDSAddress: testXDS,
		ProxyResources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
			corev1.ResourceCPU:    resource.MustParse("50m"),
			corev1.ResourceMemory: resource.MustParse("64Mi"),
		}},
	}
}

var (
	enabledNS = Namespace{Name: "shop", Labels: map[string]string{LabelInject: LabelInjectEnabled}}
	plainNS   = Namespace{Name: "shop"}
)

func appPod(annotations map[string]string) *corev1.Pod {
	return &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{Kind: "Pod", APIVersion: "v1"},
		ObjectMeta: metav1.ObjectMeta{Name: "checkout-1", Namespace: "shop", Annotations: annotations},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "checkout", Image: "shop/checkout:1",
			Ports: []corev1.ContainerPort{{ContainerPort: 8080}},
		}}},
	}
}

// applyPatch applies ops to pod with an independent RFC 6902 implementation
// and decodes the result strictly: the patched pod must still be a Pod.
func applyPatch(t *testing.T, pod *corev1.Pod, ops []PatchOp) *corev1.Pod {
	t.Helper()
	doc, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	return applyRawPatch(t, doc, mustJSON(t, ops))
}

func applyRawPatch(t *testing.T, doc, patchJSON []byte) *corev1.Pod {
	t.Helper()
	p, err := jsonpatch.DecodePatch(patchJSON)
	if err != nil {
		t.Fatalf("decoding the patch: %v\n%s", err, patchJSON)
	}
	out, err := p.Apply(doc)
	if err != nil {
		t.Fatalf("applying the patch: %v\n%s", err, patchJSON)
	}
	dec := json.NewDecoder(bytes.NewReader(out))
	dec.DisallowUnknownFields()
	var patched corev1.Pod
	if err := dec.Decode(&patched); err != nil {
		t.Fatalf("patched pod: %v\n%s", err, out)
	}
	return &patched
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestMutateDecides(t *testing.T) {
	hostNet := func(p *corev1.Pod) { p.Spec.HostNetwork = true }
	tests := []struct {
		name     string
		ns       Namespace
		ann      map[string]string
		edit     func(*corev1.Pod)
		inject   bool
		warnings []string // each warning must contain these, in order
	}{
		{name: "namespace label opts in", ns: enabledNS, inject: true},
		{name: "pod annotation opts in", ns: plainNS, ann: map[string]string{AnnotationInject: "true"}, inject: true},
		{name: "annotation read as a boolean", ns: plainNS, ann: map[string]string{AnnotationInject: " True "}, inject: true},
		{name: "nobody opted in", ns: plainNS},
		{name: "other namespace label value", ns: Namespace{Name: "x", Labels: map[string]string{LabelInject: "disabled"}}},
		{name: "pod opts out of its namespace", ns: enabledNS, ann: map[string]string{AnnotationInject: "false"}},
		{name: "pod opts out, no namespace", ns: plainNS, ann: map[string]string{AnnotationInject: "false"}},
		{name: "unreadable inject annotation", ns: enabledNS, ann: map[string]string{AnnotationInject: "maybe"},
			warnings: []string{`watertight.io/inject: "maybe" is not "true" or "false"; pod not injected`}},
		{name: "unreadable inject annotation, no namespace", ns: plainNS, ann: map[string]string{AnnotationInject: "yes please"},
			warnings: []string{`watertight.io/inject: "yes please"`}},
		{name: "already injected: status annotation", ns: enabledNS, ann: map[string]string{AnnotationStatus: StatusInjected}},
		{name: "already injected: proxy container", ns: enabledNS, edit: func(p *corev1.Pod) {
			p.Spec.InitContainers = []corev1.Container{{Name: ProxyContainerName}}
		}},
		{name: "already injected: iptables container", ns: enabledNS, edit: func(p *corev1.Pod) {
			p.Spec.InitContainers = []corev1.Container{{Name: IptablesContainerName}}
		}},
		{name: "hostNetwork in an enabled namespace: silently skipped", ns: enabledNS, edit: hostNet},
		{name: "hostNetwork that asked: skipped with a warning", ns: plainNS, ann: map[string]string{AnnotationInject: "true"}, edit: hostNet,
			warnings: []string{"watertight.io/inject: pods with hostNetwork are never injected"}},
		{name: "bad port", ns: enabledNS, ann: map[string]string{AnnotationExcludePorts: "22,abc"},
			warnings: []string{`watertight.io/exclude-outbound-ports: "22,abc": "abc" is not a port (1-65535); pod not injected`}},
		{name: "port out of range", ns: enabledNS, ann: map[string]string{AnnotationExcludePorts: "70000"},
			warnings: []string{`watertight.io/exclude-outbound-ports: "70000": "70000" is not a port`}},
		{name: "port zero", ns: enabledNS, ann: map[string]string{AnnotationExcludePorts: "0"},
			warnings: []string{`"0" is not a port`}},
		{name: "port range is not a port", ns: enabledNS, ann: map[string]string{AnnotationExcludePorts: "8000-8080"},
			warnings: []string{`"8000-8080" is not a port`}},
		{name: "bad CIDR", ns: enabledNS, ann: map[string]string{AnnotationExcludeCIDRs: "10.0.0.0/33"},
			warnings: []string{`watertight.io/exclude-outbound-cidrs: "10.0.0.0/33": "10.0.0.0/33" is not a CIDR; pod not injected`}},
		{name: "bad address", ns: enabledNS, ann: map[string]string{AnnotationExcludeCIDRs: "10.0.0.0/8,db.internal"},
			warnings: []string{`watertight.io/exclude-outbound-cidrs: "10.0.0.0/8,db.internal": "db.internal" is not a CIDR or an IP address`}},
		{name: "both bad: both named", ns: enabledNS, ann: map[string]string{AnnotationExcludePorts: "x", AnnotationExcludeCIDRs: "y"},
			warnings: []string{AnnotationExcludePorts, AnnotationExcludeCIDRs}},
		{name: "bad exclusions on a pod we leave alone: no warning", ns: plainNS, ann: map[string]string{AnnotationExcludePorts: "x"}},
		{name: "app declares the admin port", ns: enabledNS, edit: func(p *corev1.Pod) {
			p.Spec.Containers[0].Ports = append(p.Spec.Containers[0].Ports, corev1.ContainerPort{ContainerPort: AdminPort})
		}, warnings: []string{`container "checkout" declares port 15000, which the injected proxy needs; pod not injected`}},
		{name: "app declares the proxy port", ns: enabledNS, edit: func(p *corev1.Pod) {
			p.Spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: ProxyPort, Protocol: corev1.ProtocolTCP}}
		}, warnings: []string{"declares port 15001"}},
		{name: "a UDP port 15000 is no clash", ns: enabledNS, inject: true, edit: func(p *corev1.Pod) {
			p.Spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: AdminPort, Protocol: corev1.ProtocolUDP}}
		}},
		{name: "app runs as the proxy's UID: injected, warned", ns: enabledNS, inject: true, edit: func(p *corev1.Pod) {
			p.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsUser: ptr(int64(ProxyUID))}
		}, warnings: []string{`container "checkout" runs as UID 15337, the proxy's`}},
		{name: "container UID overrides the pod's", ns: enabledNS, inject: true, edit: func(p *corev1.Pod) {
			p.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsUser: ptr(int64(ProxyUID))}
			p.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{RunAsUser: ptr(int64(1000))}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod := appPod(tt.ann)
			if tt.edit != nil {
				tt.edit(pod)
			}
			before := mustJSON(t, pod)
			res := Mutate(pod, tt.ns, testOptions())
			if !bytes.Equal(before, mustJSON(t, pod)) {
				t.Fatal("Mutate modified its input")
			}
			if res.Injected != tt.inject || (len(res.Patch) > 0) != tt.inject {
				t.Fatalf("injected %v with %d ops (%s), want injected %v", res.Injected, len(res.Patch), res.Reason, tt.inject)
			}
			if res.Reason == "" {
				t.Error("no reason given")
			}
			if len(res.Warnings) != len(tt.warnings) {
				t.Fatalf("warnings %q, want %d like %q", res.Warnings, len(tt.warnings), tt.warnings)
			}
			for i, w := range tt.warnings {
				if !strings.Contains(res.Warnings[i], w) {
					t.Errorf("warning %q does not say %q", res.Warnings[i], w)
				}
				if strings.ContainsAny(res.Warnings[i], "\n\r") || len(res.Warnings[i]) > 256 {
					t.Errorf("warning %q: one short line, please", res.Warnings[i])
				}
			}
		})
	}
}

// TestInjectedPodIsWhatDesignSays applies the patch and checks the pod
// against DESIGN.md's Kubernetes section, then injects the result again.
func TestInjectedPodIsWhatDesignSays(t *testing.T) {
	pod := appPod(map[string]string{
		AnnotationInject:       "true",
		AnnotationExcludePorts: " 22, 9090,22,",
		AnnotationExcludeCIDRs: "10.0.0.0/8, 192.168.1.10, fd00::1/8",
		"team":                 "payments",
	})
	pod.Spec.InitContainers = []corev1.Container{{Name: "migrate", Image: "shop/checkout:1"}, {Name: "seed", Image: "shop/seed:1"}}
	res := Mutate(pod, plainNS, testOptions())
	if !res.Injected || len(res.Warnings) != 0 {
		t.Fatalf("not injected cleanly: %+v", res)
	}
	got := applyPatch(t, pod, res.Patch)

	// Order: iptables, proxy, then the app's own init containers.
	var names []string
	for _, c := range got.Spec.InitContainers {
		names = append(names, c.Name)
	}
	if want := []string{IptablesContainerName, ProxyContainerName, "migrate", "seed"}; !slices.Equal(names, want) {
		t.Fatalf("init containers %v, want %v", names, want)
	}
	if len(got.Spec.Containers) != 1 || got.Spec.Containers[0].Name != "checkout" {
		t.Fatalf("app containers changed: %+v", got.Spec.Containers)
	}
	checkIptables(t, got.Spec.InitContainers[0], []string{"--exclude-ports", "22,9090", "--exclude-cidrs", "10.0.0.0/8,192.168.1.10/32,fd00::/8"})
	checkProxy(t, got.Spec.InitContainers[1])

	for k, v := range map[string]string{
		AnnotationStatus: StatusInjected, "team": "payments",
		"prometheus.io/scrape": "true", "prometheus.io/port": "15000", "prometheus.io/path": "/metrics",
	} {
		if got.Annotations[k] != v {
			t.Errorf("annotation %s = %q, want %q", k, got.Annotations[k], v)
		}
	}

	// Re-injecting an injected pod changes nothing.
	for _, ns := range []Namespace{plainNS, enabledNS} {
		again := Mutate(got, ns, testOptions())
		if again.Injected || len(again.Patch) != 0 || len(again.Warnings) != 0 {
			t.Errorf("second injection (%v): %+v", ns.Labels, again)
		}
	}
	// Even with the status annotation gone, the containers say it.
	delete(got.Annotations, AnnotationStatus)
	if again := Mutate(got, enabledNS, testOptions()); len(again.Patch) != 0 {
		t.Errorf("second injection without the annotation: %+v", again)
	}
}

func checkIptables(t *testing.T, c corev1.Container, extraArgs []string) {
	t.Helper()
	if c.Image != testImage || !slices.Equal(c.Command, []string{Binary}) {
		t.Errorf("iptables image/command: %q %q", c.Image, c.Command)
	}
	want := append([]string{"iptables", "--proxy-port", "15001", "--proxy-uid", "15337"}, extraArgs...)
	if !slices.Equal(c.Args, want) {
		t.Errorf("iptables args %q, want %q", c.Args, want)
	}
	if c.RestartPolicy != nil {
		t.Errorf("iptables restartPolicy %v: it must be a plain init container", *c.RestartPolicy)
	}
	sc := c.SecurityContext
	switch {
	case sc == nil || sc.RunAsUser == nil || *sc.RunAsUser != 0:
		t.Errorf("iptables must run as root: %+v", sc)
	case sc.RunAsNonRoot == nil || *sc.RunAsNonRoot:
		t.Error("iptables must say runAsNonRoot: false, or a pod-level runAsNonRoot stops it")
	case sc.Privileged == nil || *sc.Privileged, sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
		t.Errorf("iptables must not be privileged: %+v", sc)
	case sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Add, []corev1.Capability{"NET_ADMIN", "NET_RAW"}) ||
		!slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}):
		t.Errorf("iptables capabilities: %+v", sc.Capabilities)
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("iptables resources: %+v", c.Resources)
	}
}

func checkProxy(t *testing.T, c corev1.Container) {
	t.Helper()
	if c.Image != testImage || !slices.Equal(c.Command, []string{Binary}) {
		t.Errorf("proxy image/command: %q %q", c.Image, c.Command)
	}
	if c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Errorf("proxy is not a native sidecar: restartPolicy %v", c.RestartPolicy)
	}
	want := []string{"run", "--xds", testXDS, "--node-id", "$(POD_NAME).$(POD_NAMESPACE)", "--admin", "0.0.0.0:15000"}
	if !slices.Equal(c.Args, want) {
		t.Errorf("proxy args %q, want %q", c.Args, want)
	}
	// The kubelet expands $(VAR) only for variables defined in the container.
	env := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom == nil || e.ValueFrom.FieldRef == nil {
			t.Errorf("env %s is not from the downward API", e.Name)
			continue
		}
		env[e.Name] = e.ValueFrom.FieldRef.FieldPath
	}
	if env["POD_NAME"] != "metadata.name" || env["POD_NAMESPACE"] != "metadata.namespace" || len(env) != 2 {
		t.Errorf("proxy env %v", env)
	}
	sc := c.SecurityContext
	switch {
	case sc == nil || sc.RunAsUser == nil || *sc.RunAsUser != ProxyUID:
		t.Errorf("proxy must run as %d: %+v", ProxyUID, sc)
	case sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot,
		sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem,
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation,
		sc.Privileged == nil || *sc.Privileged:
		t.Errorf("proxy security context: %+v", sc)
	case sc.Capabilities == nil || len(sc.Capabilities.Add) != 0 || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}):
		t.Errorf("proxy capabilities: %+v", sc.Capabilities)
	case sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault:
		t.Errorf("proxy seccomp: %+v", sc.SeccompProfile)
	}
	for name, p := range map[string]*corev1.Probe{"startup": c.StartupProbe, "readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
		wantPath := "/ready"
		if name == "liveness" {
			wantPath = "/healthz"
		}
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != wantPath || p.HTTPGet.Port.IntValue() != AdminPort {
			t.Errorf("%s probe: %+v", name, p)
		}
	}
	if len(c.Ports) != 1 || c.Ports[0].ContainerPort != AdminPort || c.Ports[0].Name != AdminPortName {
		t.Errorf("proxy ports %+v", c.Ports)
	}
	if c.Resources.Requests.Cpu().String() != "50m" || c.Resources.Requests.Memory().String() != "64Mi" {
		t.Errorf("proxy requests %v", c.Resources.Requests)
	}
}

// TestPatchShapes covers the JSON Patch subtleties: an absent array or map
// is added whole; keys with "/" are escaped.
func TestPatchShapes(t *testing.T) {
	t.Run("no init containers, no annotations", func(t *testing.T) {
		pod := appPod(nil)
		res := Mutate(pod, enabledNS, testOptions())
		if len(res.Patch) != 2 || res.Patch[0].Path != "/spec/initContainers" || res.Patch[1].Path != "/metadata/annotations" {
			t.Fatalf("patch %s", mustJSON(t, res.Patch))
		}
		got := applyPatch(t, pod, res.Patch)
		if len(got.Spec.InitContainers) != 2 || got.Spec.InitContainers[0].Name != IptablesContainerName ||
			got.Spec.InitContainers[1].Name != ProxyContainerName {
			t.Fatalf("init containers %+v", got.Spec.InitContainers)
		}
		checkIptables(t, got.Spec.InitContainers[0], nil)
		checkProxy(t, got.Spec.InitContainers[1])
		if got.Annotations[AnnotationStatus] != StatusInjected || got.Annotations["prometheus.io/scrape"] != "true" {
			t.Errorf("annotations %v", got.Annotations)
		}
	})
	t.Run("empty array and map present in the JSON", func(t *testing.T) {
		doc := []byte(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","annotations":{}},
			"spec":{"initContainers":[],"containers":[{"name":"app","image":"app"}]}}`)
		var pod corev1.Pod
		if err := json.Unmarshal(doc, &pod); err != nil {
			t.Fatal(err)
		}
		res := Mutate(&pod, enabledNS, testOptions())
		got := applyRawPatch(t, doc, mustJSON(t, res.Patch))
		if len(got.Spec.InitContainers) != 2 || got.Annotations[AnnotationStatus] != StatusInjected {
			t.Fatalf("got %+v %v", got.Spec.InitContainers, got.Annotations)
		}
	})
	t.Run("the app's prometheus annotations win", func(t *testing.T) {
		pod := appPod(map[string]string{"prometheus.io/scrape": "true", "prometheus.io/port": "8080"})
		res := Mutate(pod, enabledNS, testOptions())
		for _, op := range res.Patch {
			if strings.Contains(op.Path, "prometheus.io") {
				t.Errorf("overwrote the app's annotation: %+v", op)
			}
		}
		got := applyPatch(t, pod, res.Patch)
		if got.Annotations["prometheus.io/port"] != "8080" || got.Annotations["prometheus.io/path"] != "" {
			t.Errorf("annotations %v", got.Annotations)
		}
		wantPath := "/metadata/annotations/watertight.io~1status"
		if !slices.ContainsFunc(res.Patch, func(op PatchOp) bool { return op.Path == wantPath }) {
			t.Errorf("no op at %s in %s", wantPath, mustJSON(t, res.Patch))
		}
	})
	t.Run("image pull policy and limits are passed on", func(t *testing.T) {
		o := testOptions()
		o.ImagePullPolicy = corev1.PullAlways
		o.ProxyResources.Limits = corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")}
		pod := appPod(nil)
		got := applyPatch(t, pod, Mutate(pod, enabledNS, o).Patch)
		for _, c := range got.Spec.InitContainers[:2] {
			if c.ImagePullPolicy != corev1.PullAlways {
				t.Errorf("%s pull policy %q", c.Name, c.ImagePullPolicy)
			}
		}
		if got.Spec.InitContainers[1].Resources.Limits.Memory().String() != "256Mi" {
			t.Errorf("limits %v", got.Spec.InitContainers[1].Resources.Limits)
		}
	})
}

func TestEscapePointer(t *testing.T) {
	for in, want := range map[string]string{
		"watertight.io/status": "watertight.io~1status",
		"a~b/c":                "a~0b~1c",
		"~1":                   "~01",
		"plain":                "plain",
	} {
		if got := escapePointer(in); got != want {
			t.Errorf("escapePointer(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestOptionsValidate(t *testing.T) {
	if err := testOptions().Validate(); err != nil {
		t.Fatal(err)
	}
	o := Options{XDSAddress: "controlplane", ImagePullPolicy: "Sometimes", ProxyResources: corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("2")},
		Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1")},
	}}
	err := o.Validate()
	if err == nil {
		t.Fatal("bad options accepted")
	}
	for _, want := range []string{"image: required", `"Sometimes" is not Always`, `"controlplane" is not HOST:PORT`, "cpu request 2 is above its limit 1"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q does not say %q", err, want)
		}
	}
	o = testOptions()
	o.XDSAddress = "cp:0"
	if err := o.Validate(); err == nil || !strings.Contains(err.Error(), `port "0" is not 1-65535`) {
		t.Errorf("port 0: %v", err)
	}
}

// reinvocationPolicy: IfNeeded calls the webhook again after a later
// webhook changed the pod. Whatever it inserted, ours end up first again,
// everybody else's keep their relative order, and a third call is a no-op.
func TestReinvocationPutsOurInitContainersBackInFront(t *testing.T) {
	names := func(p *corev1.Pod) []string {
		var n []string
		for _, c := range p.Spec.InitContainers {
			n = append(n, c.Name)
		}
		return n
	}
	injected := func(t *testing.T, initNames ...string) *corev1.Pod {
		pod := appPod(nil)
		for _, n := range initNames {
			pod.Spec.InitContainers = append(pod.Spec.InitContainers, corev1.Container{Name: n, Image: n})
		}
		res := Mutate(pod, enabledNS, testOptions())
		if !res.Injected {
			t.Fatalf("not injected: %s", res.Reason)
		}
		return applyPatch(t, pod, res.Patch)
	}
	for _, tc := range []struct {
		name  string
		edit  func(p *corev1.Pod) // what the later webhook did
		want  []string
		moved bool
	}{
		{name: "nothing changed", edit: func(*corev1.Pod) {}, want: []string{IptablesContainerName, ProxyContainerName, "app-init"}},
		{name: "one prepended", edit: func(p *corev1.Pod) {
			p.Spec.InitContainers = slices.Insert(p.Spec.InitContainers, 0, corev1.Container{Name: "vault", Image: "v"})
		}, want: []string{IptablesContainerName, ProxyContainerName, "vault", "app-init"}, moved: true},
		{name: "two prepended", edit: func(p *corev1.Pod) {
			p.Spec.InitContainers = slices.Insert(p.Spec.InitContainers, 0, corev1.Container{Name: "a", Image: "a"}, corev1.Container{Name: "b", Image: "b"})
		}, want: []string{IptablesContainerName, ProxyContainerName, "a", "b", "app-init"}, moved: true},
		{name: "one between ours", edit: func(p *corev1.Pod) {
			p.Spec.InitContainers = slices.Insert(p.Spec.InitContainers, 1, corev1.Container{Name: "x", Image: "x"})
		}, want: []string{IptablesContainerName, ProxyContainerName, "x", "app-init"}, moved: true},
		{name: "ours swapped", edit: func(p *corev1.Pod) {
			ic := p.Spec.InitContainers
			ic[0], ic[1] = ic[1], ic[0]
		}, want: []string{IptablesContainerName, ProxyContainerName, "app-init"}, moved: true},
		{name: "ours at the end", edit: func(p *corev1.Pod) {
			ic := p.Spec.InitContainers
			p.Spec.InitContainers = append([]corev1.Container{ic[2], {Name: "z", Image: "z"}}, ic[0], ic[1])
		}, want: []string{IptablesContainerName, ProxyContainerName, "app-init", "z"}, moved: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := injected(t, "app-init")
			tc.edit(pod)
			res := Mutate(pod, enabledNS, testOptions())
			if res.Injected || len(res.Warnings) > 0 {
				t.Fatalf("reinvocation injected again or warned: %+v", res)
			}
			if got := len(res.Patch) > 0; got != tc.moved {
				t.Fatalf("patch %s, want a move: %v", mustJSON(t, res.Patch), tc.moved)
			}
			got := pod
			if tc.moved {
				got = applyPatch(t, pod, res.Patch)
			}
			if !slices.Equal(names(got), tc.want) {
				t.Fatalf("init containers %v, want %v (patch %s)", names(got), tc.want, mustJSON(t, res.Patch))
			}
			if again := Mutate(got, enabledNS, testOptions()); len(again.Patch) > 0 {
				t.Fatalf("third call patched again: %s", mustJSON(t, again.Patch))
			}
		})
	}
}
