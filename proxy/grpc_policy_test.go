package proxy

// The resilience policies as a real grpc-go client sees them through the
// sidecar: the breaker judges gRPC statuses, fallbacks answer in gRPC's own
// forms, and retries never replay a stream.

import (
	"context"
	"encoding/base64"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/watertight/watertight/config"
)

// grpcMDValue is key from the headers or the trailers (grpc-go reports a
// trailers-only answer's headers as trailers).
func grpcMDValue(hdr, trl metadata.MD, key string) string {
	if v := trl.Get(key); len(v) > 0 {
		return strings.Join(v, ",")
	}
	return strings.Join(hdr.Get(key), ",")
}

// metricValue reads a counter or gauge of the env's registry; 0 if absent.
func (e *grpcEnv) metricValue(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	m := findMetric(t, e.reg, name, labels)
	switch {
	case m == nil:
		return 0
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	default:
		return m.GetGauge().GetValue()
	}
}

func (e *grpcEnv) circuit(t *testing.T, state string) float64 {
	t.Helper()
	m := findMetric(t, e.reg, "watertight_circuit_state", map[string]string{"upstream": grpcUpstream, "state": state})
	if m == nil {
		t.Fatalf("no watertight_circuit_state{upstream=%q,state=%q}", grpcUpstream, state)
	}
	return m.GetGauge().GetValue()
}

func (e *grpcEnv) fallbacks(t *testing.T, cause string) float64 {
	t.Helper()
	return e.metricValue(t, "watertight_fallbacks_total", map[string]string{"upstream": grpcUpstream, "cause": cause})
}

func (e *grpcEnv) retries(t *testing.T) float64 {
	t.Helper()
	return e.metricValue(t, "watertight_retries_total", map[string]string{"upstream": grpcUpstream})
}

// grpcSwitchable's unary call answers with the code it is set to (OK: a
// normal answer) and counts the calls that reached it.
type grpcSwitchable struct {
	code  atomic.Uint32
	calls atomic.Int64
}

func (s *grpcSwitchable) backend() *grpcBackend {
	return &grpcBackend{unary: func(context.Context, *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
		s.calls.Add(1)
		if c := codes.Code(s.code.Load()); c != codes.OK {
			return nil, status.Errorf(c, "the backend answers %v", c)
		}
		return &testgrpc.SimpleResponse{Username: "backend"}, nil
	}}
}

// TestGRPCBreakerCountsOnlySystemFailures: NOT_FOUND is a business answer and
// leaves the breaker closed however many there are; UNAVAILABLE is a system
// failure and opens it. Open, it answers UNAVAILABLE itself (reason
// circuit_open) without calling the backend; after openFor one good probe
// closes it.
func TestGRPCBreakerCountsOnlySystemFailures(t *testing.T) {
	const openFor = 600 * time.Millisecond
	for _, v := range grpcSomeVariants {
		t.Run(v.name, func(t *testing.T) {
			sw := &grpcSwitchable{}
			sw.code.Store(uint32(codes.NotFound))
			e := startGRPC(t, grpcSetup{grpcVariant: v, configure: func(u *config.Upstream) {
				u.CircuitBreaker = &config.CircuitBreaker{ConsecutiveFailures: 3,
					OpenFor: config.D(openFor), HalfOpenRequests: 1}
			}}, sw.backend())
			ctx := grpcCtx(t)

			// 20 NOT_FOUNDs in a row: each reaches the app as the backend's answer.
			for i := range 20 {
				var hdr, trl metadata.MD
				_, err := e.client.UnaryCall(ctx, &testgrpc.SimpleRequest{}, grpc.Header(&hdr), grpc.Trailer(&trl))
				if st := status.Convert(err); st.Code() != codes.NotFound || !strings.Contains(st.Message(), "the backend answers") {
					t.Fatalf("call %d: got %v %q, want the backend's NotFound", i, st.Code(), st.Message())
				}
				if r := grpcReason(hdr, trl); r != "" {
					t.Fatalf("call %d: the sidecar answered (%s): NOT_FOUND opened the breaker", i, r)
				}
			}
			if sw.calls.Load() != 20 {
				t.Fatalf("the backend saw %d calls, want 20", sw.calls.Load())
			}
			grpcEventually(t, 2*time.Second, "20 NOT_FOUNDs were not all counted as ok", func() bool { return e.requests(t, "ok") == 20 })
			if e.circuit(t, "closed") != 1 || e.circuit(t, "open") != 0 {
				t.Fatal("NOT_FOUND answers opened the breaker")
			}

			// Three UNAVAILABLEs in a row open it.
			sw.code.Store(uint32(codes.Unavailable))
			beforeOpen := time.Now()
			for i := range 3 {
				_, err := e.client.UnaryCall(ctx, &testgrpc.SimpleRequest{})
				if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "the backend answers") {
					t.Fatalf("failure %d: got %v %q, want the backend's Unavailable", i, st.Code(), st.Message())
				}
			}
			grpcEventually(t, 2*time.Second, "three UNAVAILABLEs did not open the breaker", func() bool { return e.circuit(t, "open") == 1 })
			if got := e.requests(t, "upstream_error"); got != 3 {
				t.Errorf("watertight_requests_total{result=upstream_error} = %v, want 3", got)
			}

			// Open: the sidecar answers, the backend is not called.
			calls := sw.calls.Load()
			sw.code.Store(uint32(codes.OK)) // the backend has recovered; the breaker does not know yet
			for range 3 {
				var hdr, trl metadata.MD
				_, err := e.client.UnaryCall(ctx, &testgrpc.SimpleRequest{}, grpc.Header(&hdr), grpc.Trailer(&trl))
				if time.Since(beforeOpen) > openFor*8/10 {
					t.Fatalf("the machine is too slow: openFor (%v) passed before the open breaker could be checked", openFor)
				}
				grpcWantLocalReply(t, err, hdr, trl, codes.Unavailable, "circuit_open", "circuit breaker is open")
			}
			if got := sw.calls.Load(); got != calls {
				t.Fatalf("an open breaker let %d calls reach the backend", got-calls)
			}
			if got := e.requests(t, "circuit_open"); got != 3 {
				t.Errorf("watertight_requests_total{result=circuit_open} = %v, want 3", got)
			}

			// After openFor, the first call through is the probe; it
			// succeeds and closes the breaker.
			var probeEnd time.Time
			grpcEventually(t, 10*openFor, "no probe was let through after openFor", func() bool {
				var hdr, trl metadata.MD
				_, err := e.client.UnaryCall(ctx, &testgrpc.SimpleRequest{}, grpc.Header(&hdr), grpc.Trailer(&trl))
				if err == nil {
					probeEnd = time.Now()
					return true
				}
				if r := grpcReason(hdr, trl); status.Code(err) != codes.Unavailable || r != "circuit_open" {
					t.Fatalf("waiting for the probe: got %v (reason %q)", err, r)
				}
				return false
			})
			// The breaker delays with ±10% jitter.
			if took := probeEnd.Sub(beforeOpen); took < openFor*8/10 {
				t.Errorf("a probe went through %v after the breaker opened, before openFor (%v)", took, openFor)
			}
			if got := sw.calls.Load(); got != calls+1 {
				t.Errorf("the backend saw %d calls since the breaker opened, want the 1 probe", got-calls)
			}
			grpcEventually(t, 2*time.Second, "a good probe did not close the breaker", func() bool { return e.circuit(t, "closed") == 1 })
			if e.circuit(t, "open") != 0 || e.circuit(t, "half_open") != 0 {
				t.Error("watertight_circuit_state reports two states at once")
			}
			for i := range 5 {
				if _, err := e.client.UnaryCall(ctx, &testgrpc.SimpleRequest{}); err != nil {
					t.Fatalf("closed again, call %d: %v", i, err)
				}
			}
			if got := sw.calls.Load(); got != calls+6 {
				t.Errorf("the backend saw %d calls since the breaker opened, want 6", got-calls)
			}
		})
	}
}

// grpcCause is how to make the sidecar answer a call itself for one cause.
type grpcCause struct {
	cause string
	// setup edits the test's setup and returns the backend (nil with a dead endpoint).
	setup func(t *testing.T, s *grpcSetup) *grpcBackend
	// provoke brings the compartment into the state where the next call gets cause.
	provoke func(t *testing.T, e *grpcEnv)
	// code and inMessage are what the local reply (no usable fallback) says.
	code      codes.Code
	inMessage string
	// upstreamAnswers: without a usable fallback the client gets the
	// upstream's own answer, not a local reply.
	upstreamAnswers bool
	// upstreamMayAnswer: without a usable fallback the upstream's own answer
	// (no x-watertight-reason) is as right as the local reply: a timeout the
	// upstream was told of and reached as soon as the sidecar.
	upstreamMayAnswer bool
}

func grpcCauses() []grpcCause {
	failing := func(code codes.Code) func(t *testing.T, s *grpcSetup) *grpcBackend {
		return func(*testing.T, *grpcSetup) *grpcBackend {
			return &grpcBackend{unary: func(context.Context, *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
				return nil, status.Errorf(code, "the backend answers %v", code)
			}}
		}
	}
	holding := func(b config.Bulkhead) func(t *testing.T, s *grpcSetup) *grpcBackend {
		return func(t *testing.T, s *grpcSetup) *grpcBackend {
			s.bulkhead = b
			release := make(chan struct{})
			t.Cleanup(func() { close(release) })
			return grpcHoldingBackend(release)
		}
	}
	// hold keeps the one slot taken until the test ends (its context ends it).
	hold := func(t *testing.T, e *grpcEnv) { grpcHoldStream(t, e) }
	return []grpcCause{
		{cause: "bulkhead_full", setup: holding(config.Bulkhead{MaxConcurrent: 1}), provoke: hold,
			code: codes.Unavailable, inMessage: "bulkhead full"},
		{cause: "queue_timeout", setup: holding(config.Bulkhead{MaxConcurrent: 1, MaxQueue: 1, MaxWait: config.D(50 * time.Millisecond)}), provoke: hold,
			code: codes.Unavailable, inMessage: "queue_timeout"},
		{cause: "circuit_open",
			setup: func(t *testing.T, s *grpcSetup) *grpcBackend {
				edit := s.configure
				s.configure = func(u *config.Upstream) {
					edit(u)
					u.CircuitBreaker = &config.CircuitBreaker{ConsecutiveFailures: 1, OpenFor: config.D(time.Hour)}
				}
				return failing(codes.Unavailable)(t, s)
			},
			provoke: func(t *testing.T, e *grpcEnv) {
				if _, err := e.client.UnaryCall(grpcCtx(t), &testgrpc.SimpleRequest{}); status.Code(err) != codes.Unavailable {
					t.Fatalf("the call that should open the breaker: %v", err)
				}
				grpcEventually(t, 2*time.Second, "the breaker did not open", func() bool { return e.circuit(t, "open") == 1 })
			},
			code: codes.Unavailable, inMessage: "circuit breaker is open"},
		{cause: "rate_limited",
			setup: func(t *testing.T, s *grpcSetup) *grpcBackend {
				edit := s.configure
				s.configure = func(u *config.Upstream) {
					edit(u)
					u.RateLimit = &config.RateLimit{RPS: 0.001, Burst: 1}
				}
				return &grpcBackend{}
			},
			provoke: func(t *testing.T, e *grpcEnv) {
				if _, err := e.client.UnaryCall(grpcCtx(t), &testgrpc.SimpleRequest{}); err != nil {
					t.Fatalf("the call that spends the only token: %v", err)
				}
			},
			code: codes.ResourceExhausted, inMessage: "rate limit"},
		{cause: "timeout",
			setup: func(t *testing.T, s *grpcSetup) *grpcBackend {
				s.timeout = 50 * time.Millisecond
				return &grpcBackend{unary: func(ctx context.Context, _ *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
					<-ctx.Done()
					return nil, status.FromContextError(ctx.Err()).Err()
				}}
			},
			code: codes.DeadlineExceeded, inMessage: "timeout", upstreamMayAnswer: true},
		{cause: "upstream_error", setup: failing(codes.Unavailable),
			code: codes.Unavailable, inMessage: "the backend answers Unavailable", upstreamAnswers: true},
		{cause: "upstream_unavailable",
			setup: func(t *testing.T, s *grpcSetup) *grpcBackend {
				s.endpoint = grpcDeadAddress(t)
				return nil
			},
			code: codes.Unavailable, inMessage: "upstream_unavailable"},
	}
}

// TestGRPCFallbacks: every cause's fallback reaches a grpc-go client in both
// of gRPC's forms, a status with a message or an OK answer carrying a
// configured message, marked x-watertight-fallback and counted; a fallback
// with only HTTP fields is never sent to a gRPC client.
func TestGRPCFallbacks(t *testing.T) {
	v := grpcSomeVariants[0]
	for _, cc := range grpcCauses() {
		cause := cc.cause
		// start builds the upstream for cause with fallback fb.
		start := func(t *testing.T, fb config.Fallback) *grpcEnv {
			s := grpcSetup{grpcVariant: v, configure: func(u *config.Upstream) { u.Fallback = config.Fallbacks{fb} }}
			b := cc.setup(t, &s)
			e := startGRPC(t, s, b)
			if cc.provoke != nil {
				cc.provoke(t, e)
			}
			return e
		}
		// check asserts the metrics of the one call the sidecar answered.
		check := func(t *testing.T, e *grpcEnv, fallbacks float64) {
			t.Helper()
			if got := e.fallbacks(t, cause); got != fallbacks {
				t.Errorf("watertight_fallbacks_total{cause=%s} = %v, want %v", cause, got, fallbacks)
			}
			grpcEventually(t, 2*time.Second, "the call was not counted as "+cause, func() bool { return e.requests(t, cause) == 1 })
		}

		t.Run(cause+"/grpc-status", func(t *testing.T) {
			msg := "degraded: " + cause + ", 100% cached ✓"
			e := start(t, config.Fallback{On: []string{cause}, GRPCStatus: "FAILED_PRECONDITION", GRPCMessage: msg})
			var hdr, trl metadata.MD
			_, err := e.client.UnaryCall(grpcCtx(t), &testgrpc.SimpleRequest{}, grpc.Header(&hdr), grpc.Trailer(&trl))
			if st := status.Convert(err); st.Code() != codes.FailedPrecondition || st.Message() != msg {
				t.Fatalf("got %v %q, want the fallback's FailedPrecondition %q", st.Code(), st.Message(), msg)
			}
			if got := grpcMDValue(hdr, trl, "x-watertight-fallback"); got != cause {
				t.Errorf("x-watertight-fallback %q, want %q (headers %v, trailers %v)", got, cause, hdr, trl)
			}
			check(t, e, 1)
		})

		t.Run(cause+"/grpc-body", func(t *testing.T) {
			want := &testgrpc.SimpleResponse{Username: "fallback for " + cause, Payload: &testgrpc.Payload{Body: grpcPattern(300, 'f')}}
			raw, err := proto.Marshal(want)
			if err != nil {
				t.Fatal(err)
			}
			e := start(t, config.Fallback{On: []string{cause}, GRPCBody: base64.StdEncoding.EncodeToString(raw)})
			var hdr, trl metadata.MD
			got, err := e.client.UnaryCall(grpcCtx(t), &testgrpc.SimpleRequest{}, grpc.Header(&hdr), grpc.Trailer(&trl))
			if err != nil {
				t.Fatalf("got %v, want the fallback's OK answer", err)
			}
			if !proto.Equal(got, want) {
				t.Errorf("got %v, want the fallback's message %v", got, want)
			}
			if got := grpcMDValue(hdr, trl, "x-watertight-fallback"); got != cause {
				t.Errorf("x-watertight-fallback %q, want %q (headers %v, trailers %v)", got, cause, hdr, trl)
			}
			check(t, e, 1)
		})

		t.Run(cause+"/http-only", func(t *testing.T) {
			e := start(t, config.Fallback{On: []string{cause}, Status: 200,
				Headers: map[string]string{"Content-Type": "application/json"}, Body: `{"items":[]}`})
			var hdr, trl metadata.MD
			_, err := e.client.UnaryCall(grpcCtx(t), &testgrpc.SimpleRequest{}, grpc.Header(&hdr), grpc.Trailer(&trl))
			if got := grpcMDValue(hdr, trl, "x-watertight-fallback"); got != "" {
				t.Errorf("an HTTP fallback was sent to a gRPC client (x-watertight-fallback %q)", got)
			}
			if cc.upstreamAnswers {
				// No local reply: the upstream's own answer, untouched.
				st := status.Convert(err)
				if st.Code() != cc.code || st.Message() != cc.inMessage {
					t.Errorf("got %v %q, want the upstream's %v %q", st.Code(), st.Message(), cc.code, cc.inMessage)
				}
				if r := grpcReason(hdr, trl); r != "" {
					t.Errorf("the upstream's answer was replaced by a local reply (reason %q)", r)
				}
			} else if cc.upstreamMayAnswer && grpcReason(hdr, trl) == "" {
				if code := status.Code(err); code != cc.code {
					t.Errorf("got %v, want %v", err, cc.code)
				}
			} else {
				grpcWantLocalReply(t, err, hdr, trl, cc.code, cause, cc.inMessage)
			}
			check(t, e, 0)
		})
	}
}

// TestGRPCRetries: a unary call whose first attempt fails UNAVAILABLE is sent
// again, whole, and succeeds; a client stream that has sent messages is never
// sent again.
func TestGRPCRetries(t *testing.T) {
	for _, v := range grpcSomeVariants {
		t.Run(v.name, func(t *testing.T) {
			var (
				mu       sync.Mutex
				payloads []string // digest of each unary call's payload, in arrival order
				failNext atomic.Int64
				inputs   atomic.Int64
				got3     = make(chan struct{}, 1)
			)
			b := &grpcBackend{
				unary: func(_ context.Context, req *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
					mu.Lock()
					payloads = append(payloads, grpcDigest(req.GetPayload().GetBody()))
					mu.Unlock()
					if failNext.Add(-1) >= 0 {
						return nil, status.Error(codes.Unavailable, "the backend is restarting")
					}
					return &testgrpc.SimpleResponse{Username: grpcDigest(req.GetPayload().GetBody())}, nil
				},
				// Reads three messages, then fails UNAVAILABLE without an answer
				// begun (trailers-only, the form a retry could take back).
				input: func(stream grpc.ClientStreamingServer[testgrpc.StreamingInputCallRequest, testgrpc.StreamingInputCallResponse]) error {
					inputs.Add(1)
					for i := range 3 {
						if _, err := stream.Recv(); err != nil {
							return status.Errorf(codes.Internal, "message %d: %v", i, err)
						}
					}
					got3 <- struct{}{}
					return status.Error(codes.Unavailable, "the backend failed mid-stream")
				},
			}
			e := startGRPC(t, grpcSetup{grpcVariant: v, configure: func(u *config.Upstream) {
				u.Retry = &config.Retry{Attempts: 2, On: []string{"unavailable"},
					Backoff: config.Backoff{Base: config.D(time.Millisecond), Max: config.D(5 * time.Millisecond)}}
			}}, b)
			ctx := grpcCtx(t)
			takePayloads := func() []string {
				mu.Lock()
				defer mu.Unlock()
				p := payloads
				payloads = nil
				return p
			}

			// Fails once, then succeeds: one retry, the same payload twice.
			body := grpcPattern(2000, 'p')
			failNext.Store(1)
			resp, err := e.client.UnaryCall(ctx, &testgrpc.SimpleRequest{Payload: &testgrpc.Payload{Body: body}})
			if err != nil {
				t.Fatalf("a unary call failing once with 2 retries allowed: %v", err)
			}
			if resp.GetUsername() != grpcDigest(body) {
				t.Errorf("the answering attempt saw another payload")
			}
			if p := takePayloads(); len(p) != 2 || p[0] != grpcDigest(body) || p[1] != grpcDigest(body) {
				t.Errorf("the backend saw %d calls with payload digests %v, want 2 with %s", len(p), p, grpcDigest(body))
			}
			if got := e.retries(t); got != 1 {
				t.Errorf("watertight_retries_total = %v, want 1", got)
			}
			grpcEventually(t, 2*time.Second, "the call was not counted as ok", func() bool { return e.requests(t, "ok") == 1 })

			// Fails every time: 1 + 2 attempts, then the upstream's answer.
			failNext.Store(3)
			_, err = e.client.UnaryCall(ctx, &testgrpc.SimpleRequest{Payload: &testgrpc.Payload{Body: body}})
			if st := status.Convert(err); st.Code() != codes.Unavailable || st.Message() != "the backend is restarting" {
				t.Errorf("after the retries ran out: got %v %q, want the backend's Unavailable", st.Code(), st.Message())
			}
			if p := takePayloads(); len(p) != 3 {
				t.Errorf("the backend saw %d calls, want 3 (2 retries)", len(p))
			}
			if got := e.retries(t); got != 3 {
				t.Errorf("watertight_retries_total = %v, want 3", got)
			}

			// A client stream that has sent messages is never sent again.
			stream, err := e.client.StreamingInputCall(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for i := range 3 {
				if err := stream.Send(&testgrpc.StreamingInputCallRequest{Payload: &testgrpc.Payload{Body: grpcStreamMsg(i, 100)}}); err != nil {
					t.Fatalf("send %d: %v", i, err)
				}
			}
			select {
			case <-got3:
			case <-ctx.Done():
				t.Fatal("the backend never got three messages")
			}
			_, err = stream.CloseAndRecv()
			if st := status.Convert(err); st.Code() != codes.Unavailable || st.Message() != "the backend failed mid-stream" {
				t.Errorf("the stream: got %v %q, want the backend's Unavailable", st.Code(), st.Message())
			}
			if got := inputs.Load(); got != 1 {
				t.Errorf("the backend saw the stream %d times, want once", got)
			}
			if got := e.retries(t); got != 3 {
				t.Errorf("watertight_retries_total = %v after the stream, want still 3", got)
			}
			grpcEventually(t, 2*time.Second, "the failures were not counted", func() bool { return e.requests(t, "upstream_error") == 2 })
			grpcEventually(t, 2*time.Second, "the slots were not given back", func() bool { return e.active(t) == 0 })
		})
	}
}
