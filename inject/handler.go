package inject

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net/http"
	"strings"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
)

// The webhook's paths. The webhook reads no namespaces (it has no RBAC):
// the MutatingWebhookConfiguration has one webhook per way of opting in,
// each with its own namespaceSelector and path, so the path says what the
// selector found.
const (
	// Path is for pods in namespaces without watertight.io/inject=enabled:
	// only pods annotated watertight.io/inject: "true" are injected. It is
	// the safe default: a webhook pointed here by mistake injects nobody
	// who did not ask.
	Path = "/inject"
	// PathNamespaceEnabled is for pods in namespaces labelled
	// watertight.io/inject=enabled: every pod is injected unless annotated
	// watertight.io/inject: "false".
	PathNamespaceEnabled = "/inject/namespace-enabled"
	// PathHealth answers 200 while the server runs (the Deployment's probes).
	PathHealth = "/healthz"
)

// maxBody bounds a request: the API server caps an object at about 1.5 MiB
// in etcd and a request body at 3 MiB; a review carries one pod.
const maxBody = 8 << 20

// NewHandler serves AdmissionReviews of pods at Path and
// PathNamespaceEnabled, and PathHealth.
//
// Client errors are answered 4xx with a plain-text reason, never 500: 405 for
// a method other than POST, 415 for a body that is not application/json,
// 413 for one over 8 MiB, 400 for one that is not an
// admission.k8s.io/v1 AdmissionReview with a request and a uid, or whose
// object is not a pod. The API server treats any of them as a failed call,
// which failurePolicy: Ignore turns into "admitted unchanged". A review of
// anything but the creation of a pod is allowed unchanged.
func NewHandler(o Options, log *slog.Logger) (http.Handler, error) {
	if err := o.Validate(); err != nil {
		return nil, fmt.Errorf("inject: %w", err)
	}
	if log == nil {
		log = slog.Default()
	}
	h := &handler{opts: o, log: log}
	mux := http.NewServeMux()
	mux.Handle(Path, h.admit(false))
	mux.Handle(PathNamespaceEnabled, h.admit(true))
	mux.HandleFunc(PathHealth, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	return mux, nil
}

type handler struct {
	opts Options
	log  *slog.Logger
}

// httpError is a client error: its status and the message sent back.
type httpError struct {
	status int
	msg    string
}

func (e *httpError) Error() string { return e.msg }

func clientError(status int, format string, args ...any) error {
	return &httpError{status: status, msg: fmt.Sprintf(format, args...)}
}

func (h *handler) admit(namespaceEnabled bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		review, err := h.review(w, r, namespaceEnabled)
		if err != nil {
			status, msg := http.StatusInternalServerError, "internal error"
			if he, ok := errors.AsType[*httpError](err); ok {
				status, msg = he.status, he.msg
			}
			h.log.Warn("admission review refused", "status", status, "error", err, "remote", r.RemoteAddr)
			if status == http.StatusMethodNotAllowed {
				w.Header().Set("Allow", http.MethodPost)
			}
			http.Error(w, msg, status)
			return
		}
		body, err := json.Marshal(review)
		if err != nil { // plain data: cannot happen
			h.log.Error("encoding admission response", "error", err)
			http.Error(w, "encoding the response failed", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	})
}

// review reads the AdmissionReview, decides, and returns the answer.
func (h *handler) review(w http.ResponseWriter, r *http.Request, namespaceEnabled bool) (*admissionv1.AdmissionReview, error) {
	if r.Method != http.MethodPost {
		return nil, clientError(http.StatusMethodNotAllowed, "method %s not allowed: POST an admission.k8s.io/v1 AdmissionReview", r.Method)
	}
	ct := r.Header.Get("Content-Type")
	if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
		return nil, clientError(http.StatusUnsupportedMediaType, "content type %q is not application/json", ct)
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	var in admissionv1.AdmissionReview
	if err := dec.Decode(&in); err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return nil, clientError(http.StatusRequestEntityTooLarge, "body larger than %d bytes", maxBody)
		}
		return nil, clientError(http.StatusBadRequest, "decoding the AdmissionReview: %v", err)
	}
	if dec.More() {
		return nil, clientError(http.StatusBadRequest, "decoding the AdmissionReview: data after the JSON object")
	}
	want := admissionv1.SchemeGroupVersion.String()
	if in.APIVersion != want || in.Kind != "AdmissionReview" {
		return nil, clientError(http.StatusBadRequest, "expected apiVersion %s, kind AdmissionReview; got apiVersion %q, kind %q", want, in.APIVersion, in.Kind)
	}
	req := in.Request
	if req == nil {
		return nil, clientError(http.StatusBadRequest, "the AdmissionReview has no request")
	}
	if req.UID == "" {
		return nil, clientError(http.StatusBadRequest, "the AdmissionReview's request has no uid")
	}
	resp, err := h.decide(req, namespaceEnabled)
	if err != nil {
		return nil, err
	}
	resp.UID = req.UID
	resp.Allowed = true
	return &admissionv1.AdmissionReview{TypeMeta: in.TypeMeta, Response: resp}, nil
}

func (h *handler) decide(req *admissionv1.AdmissionRequest, namespaceEnabled bool) (*admissionv1.AdmissionResponse, error) {
	log := h.log.With("uid", req.UID, "namespace", req.Namespace, "operation", req.Operation)
	isPod := req.Kind.Group == "" && req.Kind.Version == "v1" && req.Kind.Kind == "Pod" && req.SubResource == ""
	if !isPod || req.Operation != admissionv1.Create {
		// Misrouted (the webhook's rules say pods, CREATE): let it be.
		log.Warn("not the creation of a pod; allowed unchanged", "kind", req.Kind.String(), "subresource", req.SubResource)
		return &admissionv1.AdmissionResponse{}, nil
	}
	if raw := bytes.TrimSpace(req.Object.Raw); len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil, clientError(http.StatusBadRequest, "the request has no object")
	}
	var pod corev1.Pod
	if err := json.Unmarshal(req.Object.Raw, &pod); err != nil {
		return nil, clientError(http.StatusBadRequest, "the request's object is not a pod: %v", err)
	}
	if pod.Kind != "" && pod.Kind != "Pod" {
		return nil, clientError(http.StatusBadRequest, "the request's object is a %q, not a Pod", pod.Kind)
	}
	ns := Namespace{Name: req.Namespace}
	if ns.Name == "" {
		ns.Name = pod.Namespace
	}
	if namespaceEnabled {
		ns.Labels = map[string]string{LabelInject: LabelInjectEnabled}
	}
	res := Mutate(&pod, ns, h.opts)
	name := pod.Name
	if name == "" {
		name = pod.GenerateName + "*"
	}
	log.Info("admission", "pod", name, "injected", res.Injected, "reason", res.Reason,
		"warnings", strings.Join(res.Warnings, "; "), "dry_run", req.DryRun != nil && *req.DryRun)
	resp := &admissionv1.AdmissionResponse{Warnings: res.Warnings}
	if len(res.Patch) > 0 {
		patch, err := json.Marshal(res.Patch)
		if err != nil {
			return nil, fmt.Errorf("encoding the patch: %w", err)
		}
		pt := admissionv1.PatchTypeJSONPatch
		resp.Patch, resp.PatchType = patch, &pt
	}
	return resp, nil
}
