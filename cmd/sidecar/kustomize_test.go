package main

import (
	"iter"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/api/resmap"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/watertight/watertight/inject"
)

// kustomizeBuild renders dir as `kubectl apply -k dir` would, with
// kustomize's own engine.
func kustomizeBuild(t *testing.T, dir string) resmap.ResMap {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rm, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	return rm
}

func renderedDeployment(t *testing.T, rm resmap.ResMap, name string) *appsv1.Deployment {
	t.Helper()
	for _, r := range rm.Resources() {
		if r.GetKind() != "Deployment" || r.GetName() != name {
			continue
		}
		b, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		var d appsv1.Deployment
		if err := yaml.UnmarshalStrict(b, &d); err != nil {
			t.Fatalf("rendered Deployment %s: %v", name, err)
		}
		return &d
	}
	t.Fatalf("kustomize output has no Deployment %s", name)
	return nil
}

// The kustomization lists every manifest of the directory, renders without
// error to exactly the objects TestDeployManifests checks one by one, and an
// overlay's image tag reaches the image the webhook injects as well.
func TestKustomizeBuild(t *testing.T) {
	base, err := filepath.Abs(deployDir)
	if err != nil {
		t.Fatal(err)
	}
	rm := kustomizeBuild(t, base)

	m := loadManifests(t)
	var want []string
	add := func(kind string, names iter.Seq[string]) {
		for n := range names {
			want = append(want, kind+"/"+n)
		}
	}
	for _, o := range m.namespaces {
		want = append(want, "Namespace/"+o.Name)
	}
	add("ServiceAccount", maps.Keys(m.serviceAccounts))
	add("ConfigMap", maps.Keys(m.configMaps))
	add("Service", maps.Keys(m.services))
	add("Deployment", maps.Keys(m.deployments))
	add("PodDisruptionBudget", maps.Keys(m.pdbs))
	add("MutatingWebhookConfiguration", maps.Keys(m.webhookConfigs))
	var got []string
	for _, r := range rm.Resources() {
		got = append(got, r.GetKind()+"/"+r.GetName())
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("kustomize renders %v\nthe manifests hold %v", got, want)
	}

	// Every *.yaml of the directory is listed (a new manifest must not be
	// forgotten by `apply -k`).
	files, _ := filepath.Glob(filepath.Join(base, "*.yaml"))
	k, err := os.ReadFile(filepath.Join(base, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if b := filepath.Base(f); b != "kustomization.yaml" && !regexp.MustCompile(`(?m)^\s*-\s*`+regexp.QuoteMeta(b)+`\s*$`).Match(k) {
			t.Errorf("kustomization.yaml does not list %s", b)
		}
	}

	// The base: the webhook injects its own image.
	d := renderedDeployment(t, rm, "watertight-webhook")
	c := d.Spec.Template.Spec.Containers[0]
	if got := flagValue(t, expandArgs(t, c), "image"); got != c.Image {
		t.Errorf("base: webhook injects %q but runs %q", got, c.Image)
	}

	// An overlay pins a release: every container and the injected image
	// follow it.
	overlay := t.TempDir()
	rel, err := filepath.Rel(overlay, base)
	if err != nil {
		t.Fatal(err)
	}
	const pinned = "registry.example.com/watertight/watertight:v9.9.9"
	if err := os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), []byte(`apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - `+rel+`
images:
  - name: ghcr.io/watertight/watertight
    newName: registry.example.com/watertight/watertight
    newTag: v9.9.9
`), 0o644); err != nil {
		t.Fatal(err)
	}
	rm = kustomizeBuild(t, overlay)
	for _, name := range []string{"watertight-webhook", "watertight-controlplane"} {
		d := renderedDeployment(t, rm, name)
		for _, c := range d.Spec.Template.Spec.Containers {
			if c.Image != pinned {
				t.Errorf("overlay: %s container %s runs %q, want %q", name, c.Name, c.Image, pinned)
			}
		}
	}
	d = renderedDeployment(t, rm, "watertight-webhook")
	if got := flagValue(t, expandArgs(t, d.Spec.Template.Spec.Containers[0]), "image"); got != pinned {
		t.Errorf("overlay: the webhook injects %q, want the pinned %q", got, pinned)
	}
}

// The Dockerfile builds what the manifests and the injected pods run: the
// sidecar binary on PATH under the name the webhook puts in `command`, as
// the proxy's UID, with iptables-restore in the default image for the init
// container.
func TestDockerfile(t *testing.T) {
	b, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := string(b)
	stages := regexp.MustCompile(`(?m)^FROM `).Split(df, -1)[1:]
	if len(stages) < 2 {
		t.Fatalf("Dockerfile: want a build stage and a final stage, got %d stages", len(stages))
	}
	build, final := stages[0], stages[len(stages)-1]
	if !strings.Contains(build, "CGO_ENABLED=0 go build") || !strings.Contains(build, "./cmd/sidecar") {
		t.Errorf("build stage does not build a static ./cmd/sidecar:\n%s", build)
	}
	for i, s := range stages[1:] {
		if !strings.Contains(s, "/usr/local/bin/"+inject.Binary) {
			t.Errorf("stage %d does not install the binary as %s on PATH", i+1, inject.Binary)
		}
		if !regexp.MustCompile(`(?m)^USER 15337(:15337)?$`).MatchString(s) || inject.ProxyUID != 15337 {
			t.Errorf("stage %d does not run as the proxy's UID %d", i+1, inject.ProxyUID)
		}
	}
	if !strings.Contains(final, "install") || !strings.Contains(final, "iptables") {
		t.Errorf("the default (last) stage lacks iptables, which `sidecar iptables` runs:\n%s", final)
	}
}
