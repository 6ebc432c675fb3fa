package proxy

import (
	"encoding/base64"
	"encoding/binary"
	"net/http"
	"strconv"

	"github.com/watertight/watertight/config"
)

// fallbackServes says whether fb can answer a client: a gRPC client only in
// one of gRPC's forms (grpcStatus or grpcBody); an HTTP client only if fb
// says something in HTTP (a status, headers or a body), or has no gRPC form
// either (an empty 200 was asked for). A gRPC-only fallback must not turn an
// HTTP client's failure into an empty success.
func fallbackServes(fb *config.Fallback, grpc bool) bool {
	grpcForm := fb.GRPCBody != "" || fb.GRPCStatus != ""
	if grpc {
		return grpcForm
	}
	return fb.Status != 0 || fb.Body != "" || len(fb.Headers) > 0 || !grpcForm
}

// writeFallback answers with the upstream's configured fallback for cause,
// in the form the client understands, and says whether it did: a fallback
// with only HTTP fields cannot answer a gRPC client, which then gets the
// local reply instead.
func writeFallback(w http.ResponseWriter, r *http.Request, fb *config.Fallback, cause string) bool {
	if !fallbackServes(fb, isGRPC(r)) {
		return false
	}
	h := w.Header()
	if isGRPC(r) {
		switch {
		case fb.GRPCBody != "":
			// An OK answer carrying the configured message.
			payload, err := base64.StdEncoding.DecodeString(fb.GRPCBody)
			if err != nil {
				return false // validation rejects this; never send half a fallback
			}
			h.Set("Content-Type", "application/grpc")
			h.Set(HeaderFallback, cause)
			h.Set("Trailer", "Grpc-Status, Grpc-Message")
			w.WriteHeader(http.StatusOK)
			frame := make([]byte, 5, 5+len(payload))
			binary.BigEndian.PutUint32(frame[1:], uint32(len(payload)))
			_, _ = w.Write(append(frame, payload...))
			h.Set("Grpc-Status", "0")
			h.Set("Grpc-Message", "")
			return true
		case fb.GRPCStatus != "":
			code, _ := config.GRPCCode(fb.GRPCStatus)
			h.Set("Content-Type", "application/grpc")
			h.Set(HeaderFallback, cause)
			h.Set("Grpc-Status", strconv.Itoa(code))
			if fb.GRPCMessage != "" {
				h.Set("Grpc-Message", grpcEncodeMessage(fb.GRPCMessage))
			}
			w.WriteHeader(http.StatusOK)
			return true
		default:
			return false
		}
	}
	for k, v := range fb.Headers {
		h.Set(k, v)
	}
	h.Set(HeaderFallback, cause)
	if fb.Body != "" && h.Get("Content-Type") == "" {
		h.Set("Content-Type", "text/plain; charset=utf-8")
	}
	h.Set("Content-Length", strconv.Itoa(len(fb.Body)))
	status := fb.Status
	if status == 0 {
		status = http.StatusOK
	}
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = w.Write([]byte(fb.Body))
	}
	return true
}
