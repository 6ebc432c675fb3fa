// Package inject is the Kubernetes admission webhook that adds Watertight to
// pods: the proxy as a native sidecar and, ahead of it, the init container
// that redirects the pod's outbound TCP to the proxy with iptables.
//
// The decision and the mutation are one pure function, [Mutate]: a pod, what
// is known of its namespace and the [Options] in, JSONPatch operations and
// warnings out. [NewHandler] serves it to the API server as
// admission.k8s.io/v1 AdmissionReviews; [Start] serves that over HTTPS with a
// certificate that is reloaded when its files change.
//
// A pod this package should not touch is never failed: whatever is wrong
// with it (an annotation it cannot read, host networking, a port the proxy
// needs) is answered with "allowed, unchanged" and a warning, which kubectl
// shows to whoever created the pod.
//
// The injected proxy is a native sidecar (an init container with
// restartPolicy: Always), which needs Kubernetes 1.29 or later (beta and on
// by default from 1.29; GA in 1.33). On older clusters the API server rejects
// the injected pod.
package inject

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Names that users, manifests and dashboards rely on (see DESIGN.md).
const (
	// LabelInject on a namespace, with value LabelInjectEnabled, injects
	// every pod of the namespace that does not opt out.
	LabelInject        = "watertight.io/inject"
	LabelInjectEnabled = "enabled"
	// AnnotationInject on a pod: "true" injects it wherever it runs,
	// "false" opts it out of its namespace's injection.
	AnnotationInject = "watertight.io/inject"
	// AnnotationExcludePorts and AnnotationExcludeCIDRs list, comma
	// separated, outbound destination ports and CIDRs that bypass the proxy.
	AnnotationExcludePorts = "watertight.io/exclude-outbound-ports"
	AnnotationExcludeCIDRs = "watertight.io/exclude-outbound-cidrs"
	// AnnotationStatus marks an injected pod; a pod carrying it is never
	// patched again.
	AnnotationStatus = "watertight.io/status"
	StatusInjected   = "injected"

	// The injected containers.
	IptablesContainerName = "watertight-iptables"
	ProxyContainerName    = "watertight-proxy"
	// AdminPortName names the proxy's admin port in the pod spec.
	AdminPortName = "wt-admin"

	// ProxyUID is the user the proxy runs as; the iptables rules let its
	// own traffic out untouched.
	ProxyUID = 15337
	// ProxyPort is where iptables redirects the pod's outbound TCP.
	ProxyPort = 15001
	// AdminPort serves /ready, /healthz, /metrics and /config_dump.
	AdminPort = 15000
	// AdminAddress is the proxy's admin bind address in a pod: every
	// address, because the kubelet's probes and Prometheus reach the pod IP,
	// not its loopback. Go listens on IPv6 too for 0.0.0.0.
	AdminAddress = "0.0.0.0:15000"
	// NodeID is the proxy's xDS node ID, <pod>.<namespace>, expanded by the
	// kubelet from the downward API variables set in the container.
	NodeID = "$(POD_NAME).$(POD_NAMESPACE)"
	// Binary is the command the injected containers run: the image must
	// have the sidecar binary on its PATH under this name (and, for the
	// iptables container, iptables-restore).
	Binary = "sidecar"
)

// Options are what the webhook puts into pods.
type Options struct {
	// Image is the Watertight image of both injected containers.
	Image string
	// ImagePullPolicy of the injected containers; empty: the cluster's
	// default for the image's tag.
	ImagePullPolicy corev1.PullPolicy
	// XDSAddress is the control plane's HOST:PORT, normally its Service:
	// watertight-controlplane.watertight-system.svc:18000.
	XDSAddress string
	// ProxyResources are the proxy container's requests (and limits, if
	// set). A native sidecar's requests add to the pod's for its whole life.
	ProxyResources corev1.ResourceRequirements
}

// Validate reports what is wrong with the options, all at once.
func (o Options) Validate() error {
	var errs []error
	if o.Image == "" {
		errs = append(errs, errors.New("image: required"))
	}
	switch o.ImagePullPolicy {
	case "", corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
	default:
		errs = append(errs, fmt.Errorf("image pull policy: %q is not Always, IfNotPresent or Never", o.ImagePullPolicy))
	}
	if host, port, err := net.SplitHostPort(o.XDSAddress); err != nil || host == "" {
		errs = append(errs, fmt.Errorf("xDS address: %q is not HOST:PORT", o.XDSAddress))
	} else if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		errs = append(errs, fmt.Errorf("xDS address: %q: port %q is not 1-65535", o.XDSAddress, port))
	}
	for name, q := range o.ProxyResources.Limits {
		if r, ok := o.ProxyResources.Requests[name]; ok && r.Cmp(q) > 0 {
			errs = append(errs, fmt.Errorf("proxy resources: %s request %s is above its limit %s", name, r.String(), q.String()))
		}
	}
	return errors.Join(errs...)
}

// Namespace is what is known of the pod's namespace. The webhook never reads
// namespaces from the API (it has no RBAC at all): the
// MutatingWebhookConfiguration's namespaceSelector tells it, by the path it
// calls, whether the namespace carries LabelInject=enabled.
type Namespace struct {
	Name   string
	Labels map[string]string
}

// Enabled says whether the namespace opted in to injection.
func (n Namespace) Enabled() bool { return n.Labels[LabelInject] == LabelInjectEnabled }

// PatchOp is one RFC 6902 JSON Patch operation.
type PatchOp struct {
	Op    string `json:"op"`
	From  string `json:"from,omitempty"` // "move" only
	Path  string `json:"path"`
	Value any    `json:"value,omitempty"`
}

// Result is the webhook's decision for one pod.
type Result struct {
	// Injected: Patch adds Watertight to the pod.
	Injected bool
	// Reason says, for the logs, why the pod was or was not injected.
	Reason string
	// Patch is empty when the pod is left as it is.
	Patch []PatchOp
	// Warnings go back to whoever created the pod (kubectl prints them).
	Warnings []string
}

// Mutate decides whether pod gets Watertight and, if so, returns the patch
// that adds it. It never modifies pod. A pod is injected when its namespace
// is enabled or it is annotated watertight.io/inject: "true", and it is not
// annotated "false", not injected already, not on the host's network, and
// every annotation of ours on it reads; otherwise it is left unchanged, with
// a warning when the cause is on the pod.
func Mutate(pod *corev1.Pod, ns Namespace, o Options) Result {
	ann := pod.Annotations
	if reason, done := alreadyInjected(pod); done {
		// Reinvoked (reinvocationPolicy: IfNeeded) after a later webhook
		// changed the pod: the only thing of ours it can have spoiled is
		// the order of the init containers.
		if ops := reorder(pod); len(ops) > 0 {
			return Result{Reason: reason + "; init containers put back in front", Patch: ops}
		}
		return Result{Reason: reason}
	}
	want, explicit := ns.Enabled(), false
	if v, ok := ann[AnnotationInject]; ok {
		b, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			return refuse("annotation "+AnnotationInject+" unreadable",
				fmt.Sprintf(`%s: %s is not "true" or "false"; pod not injected`, AnnotationInject, quote(v)))
		}
		want, explicit = b, true
	}
	switch {
	case !want && explicit:
		return Result{Reason: "opted out by annotation " + AnnotationInject}
	case !want:
		return Result{Reason: "neither the namespace nor the pod opted in"}
	case pod.Spec.HostNetwork:
		r := Result{Reason: "hostNetwork: the pod shares the node's network, whose traffic iptables rules would capture"}
		if explicit {
			r.Warnings = []string{fmt.Sprintf("%s: pods with hostNetwork are never injected (the iptables rules would capture the node's traffic); pod not injected", AnnotationInject)}
		}
		return r
	}
	if c, port, ok := portClash(pod); ok {
		return refuse(fmt.Sprintf("container %q declares port %d, which the proxy needs", c, port),
			fmt.Sprintf("watertight: container %q declares port %d, which the injected proxy needs; pod not injected", c, port))
	}
	var warnings []string
	ports, err := parsePorts(ann[AnnotationExcludePorts])
	if err != nil {
		warnings = append(warnings, fmt.Sprintf("%s: %s: %v; pod not injected", AnnotationExcludePorts, quote(ann[AnnotationExcludePorts]), err))
	}
	cidrs, err := parseCIDRs(ann[AnnotationExcludeCIDRs])
	if err != nil {
		warnings = append(warnings, fmt.Sprintf("%s: %s: %v; pod not injected", AnnotationExcludeCIDRs, quote(ann[AnnotationExcludeCIDRs]), err))
	}
	if len(warnings) > 0 {
		return Result{Reason: "exclusion annotation unreadable", Warnings: warnings}
	}
	for _, c := range runsAsProxyUID(pod) {
		warnings = append(warnings, fmt.Sprintf("watertight: container %q runs as UID %d, the proxy's: its outbound traffic bypasses the proxy", c, ProxyUID))
	}
	return Result{
		Injected: true,
		Reason:   "injected",
		Patch:    patch(pod, IptablesContainer(ports, cidrs, o), ProxyContainer(o)),
		Warnings: warnings,
	}
}

func refuse(reason, warning string) Result {
	return Result{Reason: reason, Warnings: []string{warning}}
}

// quote quotes an annotation value for a warning, shortened: the API server
// truncates long warnings, and the value is the user's.
func quote(v string) string {
	const max = 64
	if len(v) > max {
		v = v[:max] + "..."
	}
	return strconv.Quote(v)
}

// alreadyInjected: the status annotation, or either of our containers
// anywhere in the pod. Either way the pod is left as it is, so injecting an
// injected pod again changes nothing.
func alreadyInjected(pod *corev1.Pod) (string, bool) {
	if _, ok := pod.Annotations[AnnotationStatus]; ok {
		return "already injected (annotation " + AnnotationStatus + ")", true
	}
	for _, list := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, c := range list {
			if c.Name == ProxyContainerName || c.Name == IptablesContainerName {
				return fmt.Sprintf("already injected (container %q)", c.Name), true
			}
		}
	}
	return "", false
}

// reorder returns the patch that puts our two init containers back at the
// front of an injected pod's initContainers, iptables first, when a webhook
// called after ours inserted init containers ahead of them: those would run
// before the REDIRECT rules exist and before the proxy is up, so their
// traffic would silently bypass the compartments. A pod that has only one
// of ours (a user's own edit) is left alone: guessing is worse than nothing.
func reorder(pod *corev1.Pod) []PatchOp {
	ipt := slices.IndexFunc(pod.Spec.InitContainers, func(c corev1.Container) bool { return c.Name == IptablesContainerName })
	prx := slices.IndexFunc(pod.Spec.InitContainers, func(c corev1.Container) bool { return c.Name == ProxyContainerName })
	if ipt < 0 || prx < 0 || (ipt == 0 && prx == 1) {
		return nil
	}
	// JSON Patch move: removes then adds, so each index is read against the
	// array as the previous op left it.
	var ops []PatchOp
	if ipt != 0 {
		ops = append(ops, PatchOp{Op: "move", From: fmt.Sprintf("/spec/initContainers/%d", ipt), Path: "/spec/initContainers/0"})
		if prx < ipt {
			prx++
		}
	}
	if prx != 1 {
		ops = append(ops, PatchOp{Op: "move", From: fmt.Sprintf("/spec/initContainers/%d", prx), Path: "/spec/initContainers/1"})
	}
	return ops
}

// portClash finds a container of the pod that declares a port the proxy
// binds in the pod's network namespace. Declared ports are only a hint of
// what the app binds, but a hint worth heeding: the proxy could not start.
func portClash(pod *corev1.Pod) (string, int32, bool) {
	for _, list := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, c := range list {
			for _, p := range c.Ports {
				if (p.ContainerPort == AdminPort || p.ContainerPort == ProxyPort) &&
					(p.Protocol == "" || p.Protocol == corev1.ProtocolTCP) {
					return c.Name, p.ContainerPort, true
				}
			}
		}
	}
	return "", 0, false
}

// runsAsProxyUID lists the app's containers that run as the proxy's UID:
// the iptables rules let that UID's traffic out directly.
func runsAsProxyUID(pod *corev1.Pod) []string {
	var podUID *int64
	if sc := pod.Spec.SecurityContext; sc != nil {
		podUID = sc.RunAsUser
	}
	var names []string
	for _, list := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, c := range list {
			uid := podUID
			if c.SecurityContext != nil && c.SecurityContext.RunAsUser != nil {
				uid = c.SecurityContext.RunAsUser
			}
			if uid != nil && *uid == ProxyUID {
				names = append(names, c.Name)
			}
		}
	}
	return names
}

// parsePorts reads "22, 9090": destination ports, 1-65535. Empty items (a
// trailing comma) are ignored; duplicates are dropped. The result is the
// comma-separated list the iptables command takes.
func parsePorts(v string) (string, error) {
	var out []string
	for item := range strings.SplitSeq(v, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		p, err := strconv.ParseUint(item, 10, 16)
		if err != nil || p == 0 {
			return "", fmt.Errorf("%s is not a port (1-65535)", quote(item))
		}
		if s := strconv.FormatUint(p, 10); !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return strings.Join(out, ","), nil
}

// parseCIDRs reads "10.0.0.0/8, 192.168.1.10": CIDRs or single addresses,
// IPv4 or IPv6. Each is passed on in canonical form (host bits cleared, a
// single address as /32 or /128).
func parseCIDRs(v string) (string, error) {
	var out []string
	for item := range strings.SplitSeq(v, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		var p netip.Prefix
		if strings.Contains(item, "/") {
			var err error
			if p, err = netip.ParsePrefix(item); err != nil {
				return "", fmt.Errorf("%s is not a CIDR", quote(item))
			}
		} else {
			a, err := netip.ParseAddr(item)
			if err != nil || a.Zone() != "" {
				return "", fmt.Errorf("%s is not a CIDR or an IP address", quote(item))
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if s := p.Masked().String(); !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return strings.Join(out, ","), nil
}

// IptablesContainer is the init container that installs the redirect:
// `sidecar iptables --proxy-port 15001 --proxy-uid 15337 [--exclude-ports
// P,...] [--exclude-cidrs C,...]`. It runs as root with NET_ADMIN and
// NET_RAW and nothing else; it must not be non-root even when the pod's
// securityContext says runAsNonRoot, so it says so itself.
func IptablesContainer(excludePorts, excludeCIDRs string, o Options) corev1.Container {
	args := []string{"iptables",
		"--proxy-port", strconv.Itoa(ProxyPort),
		"--proxy-uid", strconv.Itoa(ProxyUID)}
	if excludePorts != "" {
		args = append(args, "--exclude-ports", excludePorts)
	}
	if excludeCIDRs != "" {
		args = append(args, "--exclude-cidrs", excludeCIDRs)
	}
	return corev1.Container{
		Name:            IptablesContainerName,
		Image:           o.Image,
		ImagePullPolicy: o.ImagePullPolicy,
		Command:         []string{Binary},
		Args:            args,
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{
				corev1.ResourceCPU:    resource.MustParse("10m"),
				corev1.ResourceMemory: resource.MustParse("16Mi"),
			},
			Limits: corev1.ResourceList{
				corev1.ResourceCPU:    resource.MustParse("100m"),
				corev1.ResourceMemory: resource.MustParse("64Mi"),
			},
		},
		SecurityContext: &corev1.SecurityContext{
			RunAsUser:                ptr(int64(0)),
			RunAsGroup:               ptr(int64(0)),
			RunAsNonRoot:             ptr(false),
			Privileged:               ptr(false),
			AllowPrivilegeEscalation: ptr(false),
			// iptables takes a lock file under /run.
			ReadOnlyRootFilesystem: ptr(false),
			Capabilities: &corev1.Capabilities{
				Add:  []corev1.Capability{"NET_ADMIN", "NET_RAW"},
				Drop: []corev1.Capability{"ALL"},
			},
		},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
}

// ProxyContainer is the native sidecar: `sidecar run --xds ADDR --node-id
// $(POD_NAME).$(POD_NAMESPACE) --admin 0.0.0.0:15000` as UID 15337.
//
// Its startup probe is /ready: the kubelet starts the next init container
// (the app's own, then the app) only once a native sidecar has started, so
// the app never runs before the proxy has its config. The readiness probe
// keeps the pod out of its Services while the proxy is not ready (and while
// it drains at the end); liveness restarts a proxy that stopped answering.
func ProxyContainer(o Options) corev1.Container {
	probe := func(path string, period, failures int32) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Path: path, Port: intstr.FromInt32(AdminPort), Scheme: corev1.URISchemeHTTP,
			}},
			PeriodSeconds:    period,
			TimeoutSeconds:   2,
			SuccessThreshold: 1,
			FailureThreshold: failures,
		}
	}
	return corev1.Container{
		Name:            ProxyContainerName,
		Image:           o.Image,
		ImagePullPolicy: o.ImagePullPolicy,
		Command:         []string{Binary},
		Args:            []string{"run", "--xds", o.XDSAddress, "--node-id", NodeID, "--admin", AdminAddress},
		RestartPolicy:   ptr(corev1.ContainerRestartPolicyAlways),
		Env: []corev1.EnvVar{
			{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.name"}}},
			{Name: "POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.namespace"}}},
		},
		Ports:     []corev1.ContainerPort{{Name: AdminPortName, ContainerPort: AdminPort, Protocol: corev1.ProtocolTCP}},
		Resources: o.ProxyResources,
		// Up to 5 minutes for the first config before the kubelet restarts
		// the proxy; the pod waits in Init meanwhile.
		StartupProbe:   probe("/ready", 1, 300),
		ReadinessProbe: probe("/ready", 5, 3),
		LivenessProbe:  probe("/healthz", 10, 3),
		SecurityContext: &corev1.SecurityContext{
			RunAsUser:                ptr(int64(ProxyUID)),
			RunAsGroup:               ptr(int64(ProxyUID)),
			RunAsNonRoot:             ptr(true),
			Privileged:               ptr(false),
			AllowPrivilegeEscalation: ptr(false),
			ReadOnlyRootFilesystem:   ptr(true),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
}

// Prometheus's conventional scrape annotations, added only to pods that
// carry none of them: the app's own metrics annotations win.
var promAnnotations = [][2]string{
	{"prometheus.io/scrape", "true"},
	{"prometheus.io/port", strconv.Itoa(AdminPort)},
	{"prometheus.io/path", "/metrics"},
}

// patch adds the two init containers first (iptables, then the proxy,
// then the app's own) and the annotations.
func patch(pod *corev1.Pod, iptables, proxy corev1.Container) []PatchOp {
	var ops []PatchOp
	if len(pod.Spec.InitContainers) == 0 {
		// Adding under an absent (or empty) array needs the array itself.
		ops = append(ops, PatchOp{Op: "add", Path: "/spec/initContainers", Value: []corev1.Container{iptables, proxy}})
	} else {
		ops = append(ops,
			PatchOp{Op: "add", Path: "/spec/initContainers/0", Value: iptables},
			PatchOp{Op: "add", Path: "/spec/initContainers/1", Value: proxy})
	}
	add := [][2]string{{AnnotationStatus, StatusInjected}}
	if !slices.ContainsFunc(promAnnotations, func(a [2]string) bool { _, ok := pod.Annotations[a[0]]; return ok }) {
		add = append(add, promAnnotations...)
	}
	if len(pod.Annotations) == 0 {
		m := make(map[string]string, len(add))
		for _, a := range add {
			m[a[0]] = a[1]
		}
		ops = append(ops, PatchOp{Op: "add", Path: "/metadata/annotations", Value: m})
	} else {
		for _, a := range add {
			ops = append(ops, PatchOp{Op: "add", Path: "/metadata/annotations/" + escapePointer(a[0]), Value: a[1]})
		}
	}
	return ops
}

// escapePointer escapes a JSON Pointer reference token (RFC 6901): "~"
// first, then "/".
func escapePointer(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}

func ptr[T any](v T) *T { return &v }
