package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"strconv"
	"time"

	"golang.org/x/net/http2/hpack"

	"github.com/watertight/watertight/metrics"
)

// Failure classification: the one place that decides whether an exchange
// was a system failure of the upstream (counted by metrics as
// upstream_error and, with the policies, by the breaker and outlier
// detection) or a success, which includes business errors: 4xx statuses and
// gRPC codes other than the five below. The sidecar's own rejections never
// reach here.

// grpcFailureCodes are the gRPC statuses that mean the upstream is unwell.
var grpcFailureCodes = [17]bool{
	2:  true, // UNKNOWN
	4:  true, // DEADLINE_EXCEEDED
	13: true, // INTERNAL
	14: true, // UNAVAILABLE
	15: true, // DATA_LOSS
}

// classifyResponse judges a complete response: its HTTP status, or for gRPC
// its grpc-status from the trailers (or the headers of a trailers-only answer).
func classifyResponse(resp *http.Response, grpc bool, fs *statusSet) metrics.Result {
	if grpc {
		v := resp.Trailer.Get("Grpc-Status")
		if v == "" {
			v = resp.Header.Get("Grpc-Status")
		}
		return classifyGRPC(resp.StatusCode, v, fs)
	}
	if fs.has(resp.StatusCode) {
		return metrics.UpstreamError
	}
	return metrics.OK
}

// classifyGRPC judges a complete gRPC answer by its grpc-status v ("" for
// none) and its HTTP status.
func classifyGRPC(status int, v string, fs *statusSet) metrics.Result {
	if v != "" {
		return grpcResult(v)
	}
	// No status at all: gRPC clients read that as INTERNAL (on 200) or
	// map the HTTP status; either way not a business answer.
	if status == http.StatusOK || fs.has(status) {
		return metrics.UpstreamError
	}
	return metrics.OK
}

// grpcResult judges a grpc-status value.
func grpcResult(v string) metrics.Result {
	code, err := strconv.Atoi(v)
	if err != nil || code < 0 || code >= len(grpcFailureCodes) || grpcFailureCodes[code] {
		return metrics.UpstreamError
	}
	return metrics.OK
}

// classifyHead judges an answer by its head alone: its HTTP status, or a
// gRPC status in the head of a trailers-only answer. For the decisions that
// must be made before the body is read (retry, fallback).
func classifyHead(resp *http.Response, grpc bool, fs *statusSet) metrics.Result {
	return classifyHeadStatus(resp.StatusCode, grpc, resp.Header.Get("Grpc-Status"), fs)
}

// classifyHeadStatus is classifyHead given the answer's status and the
// grpc-status in its head ("" for none).
func classifyHeadStatus(status int, grpc bool, v string, fs *statusSet) metrics.Result {
	if fs.has(status) || grpc && v != "" && grpcResult(v) == metrics.UpstreamError {
		return metrics.UpstreamError
	}
	return metrics.OK
}

// classifyFields judges a gRPC answer the lane took as fields (its head's,
// and the trailers that ended it), as classifyResponse judges one read
// whole and classifyHead one that was not.
func classifyFields(status int, head, trailers []hpack.HeaderField, whole bool, fs *statusSet) metrics.Result {
	v := firstField(head, "grpc-status")
	if !whole {
		return classifyHeadStatus(status, true, v, fs)
	}
	if t := firstField(trailers, "grpc-status"); t != "" {
		v = t
	}
	return classifyGRPC(status, v, fs)
}

// firstField is the value of the first field named name (in lower case),
// as Header.Get reads a header's.
func firstField(fields []hpack.HeaderField, name string) string {
	for i := range fields {
		if fields[i].Name == name {
			return fields[i].Value
		}
	}
	return ""
}

// statusSet is the HTTP statuses an upstream counts as failures
// (failureStatuses); nil means every 5xx.
type statusSet [10]uint64

func newStatusSet(codes []int) *statusSet {
	if len(codes) == 0 {
		return nil
	}
	var s statusSet
	for _, c := range codes {
		if c >= 0 && c < 640 {
			s[c/64] |= 1 << (c % 64)
		}
	}
	return &s
}

func (s *statusSet) has(code int) bool {
	if s == nil {
		return code >= 500
	}
	return code >= 0 && code < 640 && s[code/64]&(1<<(code%64)) != 0
}

// classifyError judges a request that got no response. parent is the app's
// request context, ctx the one with the compartment's deadline.
func classifyError(parent, ctx context.Context, err error) metrics.Result {
	switch {
	case parent.Err() != nil:
		return metrics.Canceled
	case deadlinePassed(ctx):
		return metrics.Timeout
	case errors.Is(ctx.Err(), context.Canceled):
		return metrics.Canceled // a hedge that lost the race
	case isConnectFailure(err):
		return metrics.UpstreamUnavailable
	default:
		return metrics.UpstreamError
	}
}

// deadlinePassed says whether ctx's deadline has come, even if its timer has
// not fired yet. The upstream was told the same deadline (grpc-timeout,
// x-request-timeout) and may give up on it first, by resetting the stream
// (grpc-go does) or answering DEADLINE_EXCEEDED: which of the two timers is
// noticed first must not turn the request's timeout into an upstream error.
func deadlinePassed(ctx context.Context) bool {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return true
	}
	dl, ok := ctx.Deadline()
	return ok && !time.Now().Before(dl)
}

// isConnectFailure: no connection could be made (refused, unreachable, DNS,
// TLS handshake), as opposed to one that broke while in use.
func isConnectFailure(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	var dns *net.DNSError
	var cert *tls.CertificateVerificationError
	var unknownCA x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var record tls.RecordHeaderError
	return errors.As(err, &dns) || errors.As(err, &cert) || errors.As(err, &unknownCA) ||
		errors.As(err, &hostname) || errors.As(err, &record)
}
