package proxy

// End-to-end gRPC through the sidecar: a real grpc-go client talks to a
// proxy.Server listener, which forwards to a real grpc-go server (h2c). The
// service is grpc-go's own interop TestService, so no protoc is needed.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/watertight/watertight/config"
	"github.com/watertight/watertight/metrics"
)

const (
	grpcUpstream = "grpcup"         // the upstream's name and only host
	grpcMaxMsg   = 16 << 20         // both ends accept the 4 MiB payloads plus framing
	grpcLong     = 20 * time.Second // bound on anything that should be quick
)

// grpcBackend is the upstream: grpc-go's interop TestService, with hooks a
// test can replace. The defaults are deterministic so the client can check
// every byte it gets back.
type grpcBackend struct {
	testgrpc.UnimplementedTestServiceServer
	unary  func(context.Context, *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error)
	output func(*testgrpc.StreamingOutputCallRequest, grpc.ServerStreamingServer[testgrpc.StreamingOutputCallResponse]) error
	input  func(grpc.ClientStreamingServer[testgrpc.StreamingInputCallRequest, testgrpc.StreamingInputCallResponse]) error
}

// grpcPattern is n deterministic bytes that differ with seed.
func grpcPattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*31) ^ seed ^ byte(i>>9)
	}
	return b
}

func grpcDigest(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// grpcStreamMsg is message i of a stream: its index, then a pattern, size bytes in all.
func grpcStreamMsg(i, size int) []byte {
	b := grpcPattern(size, byte(i))
	copy(b, fmt.Sprintf("%06d:", i))
	return b
}

// UnaryCall by default returns the digest of the request payload (as
// Username) and ResponseSize bytes of pattern 'r'.
func (b *grpcBackend) UnaryCall(ctx context.Context, req *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	if b.unary != nil {
		return b.unary(ctx, req)
	}
	return &testgrpc.SimpleResponse{
		Username: grpcDigest(req.GetPayload().GetBody()),
		Payload:  &testgrpc.Payload{Body: grpcPattern(int(req.GetResponseSize()), 'r')},
	}, nil
}

// StreamingOutputCall by default sends grpcStreamMsg(i, size) for each of the
// requested response parameters, in order.
func (b *grpcBackend) StreamingOutputCall(req *testgrpc.StreamingOutputCallRequest, stream grpc.ServerStreamingServer[testgrpc.StreamingOutputCallResponse]) error {
	if b.output != nil {
		return b.output(req, stream)
	}
	for i, p := range req.GetResponseParameters() {
		if err := stream.Send(&testgrpc.StreamingOutputCallResponse{Payload: &testgrpc.Payload{Body: grpcStreamMsg(i, int(p.GetSize()))}}); err != nil {
			return err
		}
	}
	return nil
}

// StreamingInputCall checks that message i is grpcStreamMsg(i, len) and sums the sizes.
func (b *grpcBackend) StreamingInputCall(stream grpc.ClientStreamingServer[testgrpc.StreamingInputCallRequest, testgrpc.StreamingInputCallResponse]) error {
	if b.input != nil {
		return b.input(stream)
	}
	total := 0
	for i := 0; ; i++ {
		req, err := stream.Recv()
		if err == io.EOF {
			return stream.SendAndClose(&testgrpc.StreamingInputCallResponse{AggregatedPayloadSize: int32(total)})
		}
		if err != nil {
			return err
		}
		body := req.GetPayload().GetBody()
		if !bytes.Equal(body, grpcStreamMsg(i, len(body))) {
			return status.Errorf(codes.InvalidArgument, "message %d arrived corrupted or out of order", i)
		}
		total += len(body)
	}
}

// FullDuplexCall answers each request at once with "pong:" + its payload.
func (b *grpcBackend) FullDuplexCall(stream grpc.BidiStreamingServer[testgrpc.StreamingOutputCallRequest, testgrpc.StreamingOutputCallResponse]) error {
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		body := append([]byte("pong:"), req.GetPayload().GetBody()...)
		if err := stream.Send(&testgrpc.StreamingOutputCallResponse{Payload: &testgrpc.Payload{Body: body}}); err != nil {
			return err
		}
	}
}

// grpcVariant is one way of reaching the upstream through the sidecar.
type grpcVariant struct {
	name, mode, protocol string
}

var (
	grpcAllVariants = []grpcVariant{
		{"proxy-http2", config.ModeProxy, config.ProtocolHTTP2},
		{"proxy-auto", config.ModeProxy, config.ProtocolAuto},
		{"upstream-http2", config.ModeUpstream, config.ProtocolHTTP2},
		{"upstream-auto", config.ModeUpstream, config.ProtocolAuto},
	}
	grpcSomeVariants = []grpcVariant{grpcAllVariants[0], grpcAllVariants[3]}
)

// grpcSetup describes one proxy in front of one backend.
type grpcSetup struct {
	grpcVariant
	timeout   time.Duration // the upstream's; 0: the default
	bulkhead  config.Bulkhead
	endpoint  string // instead of the backend's address (a dead upstream)
	authority string // what the client sends as :authority in mode proxy; "": the upstream's host
	// configure, if set, edits the upstream's config before defaults are
	// set and it is validated (policies: breaker, retry, fallback...).
	configure func(*config.Upstream)
}

type grpcEnv struct {
	srv    *Server
	reg    *metrics.Registry
	conn   *grpc.ClientConn
	client testgrpc.TestServiceClient
	taken  *atomic.Int64 // calls the lane took (lane_h2.go)
}

// grpcLaneTakes: the calls of a compartment without retries, hedges or
// fallbacks go through the lane, when it is on between the sidecar's own
// h2c server and client (the default; h2serve serves h2c behind h1serve,
// net/http's HTTP/1.1 server serves it itself).
func grpcLaneTakes() bool {
	return *laneOn == LaneOn && *downstreamHTTP1 == HTTP1Watertight && *downstreamHTTP2 == HTTP1Watertight &&
		*upstreamHTTP2 == HTTP1Watertight
}

// serveGRPC serves svc on a loopback port until the test ends and returns
// the address.
func serveGRPC(t *testing.T, svc testgrpc.TestServiceServer, opts ...grpc.ServerOption) string {
	t.Helper()
	gs := grpc.NewServer(opts...)
	testgrpc.RegisterTestServiceServer(gs, svc)
	return serveGRPCServer(t, gs)
}

// serveGRPCServer runs gs on a loopback port until the test or benchmark
// ends and returns the address.
func serveGRPCServer(t testing.TB, gs *grpc.Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = gs.Serve(ln)
	}()
	t.Cleanup(func() {
		gs.Stop()
		<-served
	})
	return ln.Addr().String()
}

// startGRPC starts the backend (unless s.endpoint replaces it), the proxy and
// a client connected to the proxy, all closed when the test ends.
func startGRPC(t *testing.T, s grpcSetup, b *grpcBackend) *grpcEnv {
	t.Helper()
	endpoint := s.endpoint
	if endpoint == "" {
		endpoint = serveGRPC(t, b, grpc.MaxRecvMsgSize(grpcMaxMsg), grpc.MaxSendMsgSize(grpcMaxMsg))
	}

	up := config.Upstream{
		Name:      grpcUpstream,
		Hosts:     []string{grpcUpstream},
		Protocol:  s.protocol,
		Endpoints: []config.Endpoint{{Address: endpoint}},
		Bulkhead:  s.bulkhead,
	}
	if s.timeout > 0 {
		up.Timeout = config.D(s.timeout)
	}
	if s.configure != nil {
		s.configure(&up)
	}
	lc := config.Listener{Name: "app", Address: "127.0.0.1:0", Mode: s.mode}
	if s.mode == config.ModeUpstream {
		lc.Upstream = grpcUpstream
	}
	cfg := &config.Config{
		Admin:     config.Admin{Address: "127.0.0.1:0"},
		Budget:    64,
		Listeners: []config.Listener{lc},
		Upstreams: []config.Upstream{up},
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	reg := metrics.New()
	taken := new(atomic.Int64)
	srv := NewServer(Options{Metrics: reg, DrainTimeout: time.Second, UpstreamHTTP1: *upstreamHTTP1, UpstreamHTTP2: *upstreamHTTP2, DownstreamHTTP1: *downstreamHTTP1, DownstreamHTTP2: *downstreamHTTP2, Lane: *laneOn,
		laneTaken: func() { taken.Add(1) }})
	if err := srv.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("proxy shutdown: %v", err)
		}
	})
	addr, ok := srv.Addr("app")
	if !ok {
		t.Fatal("no listener named app")
	}

	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(grpcMaxMsg), grpc.MaxCallSendMsgSize(grpcMaxMsg)),
	}
	if s.mode == config.ModeProxy {
		authority := s.authority
		if authority == "" {
			authority = grpcUpstream
		}
		opts = append(opts, grpc.WithAuthority(authority))
	}
	conn, err := grpc.NewClient(addr.String(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return &grpcEnv{srv: srv, reg: reg, conn: conn, client: testgrpc.NewTestServiceClient(conn), taken: taken}
}

// grpcCtx is a context for one test's calls: a hang fails the test instead of
// the whole run. It is cancelled by a timer rather than given a deadline, so
// that the client sends no grpc-timeout: the calls have no deadline of their own.
func grpcCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	stop := time.AfterFunc(grpcLong, cancel)
	t.Cleanup(func() {
		stop.Stop()
		cancel()
	})
	return ctx
}

// requests reads watertight_requests_total{upstream=grpcup,result=result}.
func (e *grpcEnv) requests(t *testing.T, result string) float64 {
	t.Helper()
	m := findMetric(t, e.reg, "watertight_requests_total", map[string]string{"upstream": grpcUpstream, "result": result})
	if m == nil {
		t.Fatalf("no watertight_requests_total{upstream=%q,result=%q}", grpcUpstream, result)
	}
	return m.GetCounter().GetValue()
}

// active is the upstream's pool's Active count.
func (e *grpcEnv) active(t *testing.T) int {
	t.Helper()
	for _, p := range e.srv.Pools() {
		if p.Upstream == grpcUpstream {
			return p.Stats.Active
		}
	}
	t.Fatalf("no pool for upstream %q", grpcUpstream)
	return 0
}

// grpcEventually polls cond until it holds or the deadline passes.
func grpcEventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", within, what)
		}
		time.Sleep(time.Millisecond) // polling interval, not synchronisation
	}
}

// --- 1. The data path: every kind of call, streamed, intact. ---

func TestGRPCUnary(t *testing.T) {
	for _, v := range grpcAllVariants {
		t.Run(v.name, func(t *testing.T) {
			e := startGRPC(t, grpcSetup{grpcVariant: v}, &grpcBackend{})
			ctx := grpcCtx(t)
			for i := range 3 { // several calls: the connection pools are reused
				body := grpcPattern(1000+i, 'q')
				resp, err := e.client.UnaryCall(ctx, &testgrpc.SimpleRequest{
					ResponseSize: int32(2000 + i),
					Payload:      &testgrpc.Payload{Body: body},
				})
				if err != nil {
					t.Fatalf("call %d: %v", i, err)
				}
				if got, want := resp.GetUsername(), grpcDigest(body); got != want {
					t.Errorf("call %d: the upstream saw a request payload with digest %s, sent %s", i, got, want)
				}
				if got := resp.GetPayload().GetBody(); !bytes.Equal(got, grpcPattern(2000+i, 'r')) {
					t.Errorf("call %d: response payload of %d bytes differs from what the upstream sent", i, len(got))
				}
			}
			if got := e.requests(t, "ok"); got != 3 {
				t.Errorf("watertight_requests_total{result=ok} = %v, want 3", got)
			}
			if got, want := e.taken.Load(), map[bool]int64{true: 3}[grpcLaneTakes()]; got != want {
				t.Errorf("the lane took %d calls, want %d", got, want)
			}
		})
	}
}

func TestGRPCServerStreaming(t *testing.T) {
	const n = 500
	for _, v := range grpcAllVariants {
		t.Run(v.name, func(t *testing.T) {
			e := startGRPC(t, grpcSetup{grpcVariant: v}, &grpcBackend{})
			req := &testgrpc.StreamingOutputCallRequest{}
			for i := range n {
				req.ResponseParameters = append(req.ResponseParameters, &testgrpc.ResponseParameters{Size: int32(16 + i*7%1000)})
			}
			stream, err := e.client.StreamingOutputCall(grpcCtx(t), req)
			if err != nil {
				t.Fatal(err)
			}
			got := 0
			for {
				resp, err := stream.Recv()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatalf("after %d messages: %v", got, err)
				}
				if want := grpcStreamMsg(got, 16+got*7%1000); !bytes.Equal(resp.GetPayload().GetBody(), want) {
					t.Fatalf("message %d: got %q…, want %q…", got, grpcHead(resp.GetPayload().GetBody()), grpcHead(want))
				}
				got++
			}
			if got != n {
				t.Fatalf("got %d messages, want %d", got, n)
			}
		})
	}
}

func grpcHead(b []byte) []byte { return b[:min(len(b), 10)] }

func TestGRPCClientStreaming(t *testing.T) {
	const n = 300
	for _, v := range grpcAllVariants {
		t.Run(v.name, func(t *testing.T) {
			e := startGRPC(t, grpcSetup{grpcVariant: v}, &grpcBackend{})
			stream, err := e.client.StreamingInputCall(grpcCtx(t))
			if err != nil {
				t.Fatal(err)
			}
			want := 0
			for i := range n {
				size := 10 + i*13%3000
				if err := stream.Send(&testgrpc.StreamingInputCallRequest{Payload: &testgrpc.Payload{Body: grpcStreamMsg(i, size)}}); err != nil {
					t.Fatalf("send %d: %v", i, err)
				}
				want += size
			}
			resp, err := stream.CloseAndRecv()
			if err != nil {
				t.Fatal(err)
			}
			if got := int(resp.GetAggregatedPayloadSize()); got != want {
				t.Fatalf("upstream aggregated %d bytes, sent %d", got, want)
			}
		})
	}
}

// TestGRPCBidiPingPong sends each request only after the answer to the
// previous one arrived: if the sidecar buffered either direction until the
// stream ended, the exchange would deadlock (and the context would end it).
func TestGRPCBidiPingPong(t *testing.T) {
	const rounds = 50
	for _, v := range grpcAllVariants {
		t.Run(v.name, func(t *testing.T) {
			e := startGRPC(t, grpcSetup{grpcVariant: v}, &grpcBackend{})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			stream, err := e.client.FullDuplexCall(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for i := range rounds {
				ping := fmt.Appendf(nil, "ping %d", i)
				if err := stream.Send(&testgrpc.StreamingOutputCallRequest{Payload: &testgrpc.Payload{Body: ping}}); err != nil {
					t.Fatalf("round %d send: %v", i, err)
				}
				resp, err := stream.Recv()
				if err != nil {
					t.Fatalf("round %d: no answer before the next request (%v): the sidecar buffers the stream", i, err)
				}
				if got, want := string(resp.GetPayload().GetBody()), "pong:"+string(ping); got != want {
					t.Fatalf("round %d: got %q, want %q", i, got, want)
				}
			}
			if err := stream.CloseSend(); err != nil {
				t.Fatal(err)
			}
			if _, err := stream.Recv(); err != io.EOF {
				t.Fatalf("after CloseSend: got %v, want io.EOF (status OK)", err)
			}
		})
	}
}

func TestGRPCLargeMessages(t *testing.T) {
	const size = 4 << 20
	for _, v := range grpcSomeVariants {
		t.Run(v.name, func(t *testing.T) {
			e := startGRPC(t, grpcSetup{grpcVariant: v}, &grpcBackend{})
			body := grpcPattern(size, 'L')
			resp, err := e.client.UnaryCall(grpcCtx(t), &testgrpc.SimpleRequest{
				ResponseSize: size,
				Payload:      &testgrpc.Payload{Body: body},
			})
			if err != nil {
				t.Fatal(err)
			}
			if got, want := resp.GetUsername(), grpcDigest(body); got != want {
				t.Errorf("the upstream got a %d-byte payload with another digest (%s, want %s)", size, got, want)
			}
			if got := resp.GetPayload().GetBody(); len(got) != size || !bytes.Equal(got, grpcPattern(size, 'r')) {
				t.Errorf("response payload: %d bytes, want %d, intact: %v", len(got), size, bytes.Equal(got, grpcPattern(size, 'r')))
			}
		})
	}
}

// --- 2. Status, message, details, headers and trailers as the upstream sent them. ---

func TestGRPCStatusAndMetadata(t *testing.T) {
	const msg = "widget 42 not found: 100% gone, ünïcödé\nsecond line"
	detail := &testgrpc.EchoStatus{Code: 7, Message: "detail survives"}
	binTrailer := string([]byte{0, 1, 2, 0xfe, 0xff})
	cases := []struct {
		name         string
		sendsHeaders bool // else the upstream answers trailers-only
	}{
		{"headers-and-trailers", true},
		{"trailers-only", false},
	}
	for _, v := range grpcSomeVariants {
		for _, tc := range cases {
			t.Run(v.name+"/"+tc.name, func(t *testing.T) {
				b := &grpcBackend{unary: func(ctx context.Context, _ *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
					if tc.sendsHeaders {
						if err := grpc.SetHeader(ctx, metadata.Pairs("x-app-header", "h-value")); err != nil {
							return nil, err
						}
					}
					if err := grpc.SetTrailer(ctx, metadata.Pairs("x-app-trailer", "t-value", "x-app-trailer-bin", binTrailer)); err != nil {
						return nil, err
					}
					st, err := status.New(codes.NotFound, msg).WithDetails(detail)
					if err != nil {
						return nil, err
					}
					return nil, st.Err()
				}}
				e := startGRPC(t, grpcSetup{grpcVariant: v}, b)
				var hdr, trl metadata.MD
				_, err := e.client.UnaryCall(grpcCtx(t), &testgrpc.SimpleRequest{}, grpc.Header(&hdr), grpc.Trailer(&trl))
				st := status.Convert(err)
				if st.Code() != codes.NotFound || st.Message() != msg {
					t.Fatalf("got status %v %q, want NotFound %q", st.Code(), st.Message(), msg)
				}
				ds := st.Details()
				if len(ds) != 1 {
					t.Fatalf("got %d status details, want 1: %v", len(ds), ds)
				}
				if d, ok := ds[0].(*testgrpc.EchoStatus); !ok || d.GetCode() != 7 || d.GetMessage() != "detail survives" {
					t.Errorf("status detail: got %v", ds[0])
				}
				if got := trl.Get("x-app-trailer"); len(got) != 1 || got[0] != "t-value" {
					t.Errorf("trailer x-app-trailer: got %q (all trailers: %v)", got, trl)
				}
				if got := trl.Get("x-app-trailer-bin"); len(got) != 1 || got[0] != binTrailer {
					t.Errorf("trailer x-app-trailer-bin: got %q, want %q", got, binTrailer)
				}
				if tc.sendsHeaders {
					if got := hdr.Get("x-app-header"); len(got) != 1 || got[0] != "h-value" {
						t.Errorf("header x-app-header: got %q (all headers: %v)", got, hdr)
					}
				}
				if got := grpcReason(hdr, trl); got != "" {
					t.Errorf("the upstream's own answer carries x-watertight-reason %q", got)
				}
				// NOT_FOUND is a business answer: ok for the sidecar.
				if ok, failed := e.requests(t, "ok"), e.requests(t, "upstream_error"); ok != 1 || failed != 0 {
					t.Errorf("requests: ok=%v upstream_error=%v, want 1 and 0", ok, failed)
				}
			})
		}
	}

	// Metadata on a successful streaming call: headers before the data,
	// trailers after it.
	for _, v := range grpcSomeVariants {
		t.Run(v.name+"/streaming-ok", func(t *testing.T) {
			b := &grpcBackend{output: func(req *testgrpc.StreamingOutputCallRequest, stream grpc.ServerStreamingServer[testgrpc.StreamingOutputCallResponse]) error {
				if err := stream.SendHeader(metadata.Pairs("x-app-header", "stream-h")); err != nil {
					return err
				}
				for i := range 3 {
					if err := stream.Send(&testgrpc.StreamingOutputCallResponse{Payload: &testgrpc.Payload{Body: grpcStreamMsg(i, 100)}}); err != nil {
						return err
					}
				}
				stream.SetTrailer(metadata.Pairs("x-app-trailer", "stream-t"))
				return nil
			}}
			e := startGRPC(t, grpcSetup{grpcVariant: v}, b)
			stream, err := e.client.StreamingOutputCall(grpcCtx(t), &testgrpc.StreamingOutputCallRequest{})
			if err != nil {
				t.Fatal(err)
			}
			hdr, err := stream.Header()
			if err != nil {
				t.Fatal(err)
			}
			if got := hdr.Get("x-app-header"); len(got) != 1 || got[0] != "stream-h" {
				t.Errorf("header: got %q", got)
			}
			n := 0
			for {
				if _, err := stream.Recv(); err == io.EOF {
					break
				} else if err != nil {
					t.Fatal(err)
				}
				n++
			}
			if n != 3 {
				t.Errorf("got %d messages, want 3", n)
			}
			if got := stream.Trailer().Get("x-app-trailer"); len(got) != 1 || got[0] != "stream-t" {
				t.Errorf("trailer: got %q", got)
			}
		})
	}
}

// grpcReason is x-watertight-reason from the headers or the trailers (a
// trailers-only answer is reported as trailers by grpc-go).
func grpcReason(hdr, trl metadata.MD) string {
	if v := trl.Get("x-watertight-reason"); len(v) > 0 {
		return strings.Join(v, ",")
	}
	return strings.Join(hdr.Get("x-watertight-reason"), ",")
}

// --- 3. Deadlines. ---

// grpcRemainingBackend reports, as Username, the time its handler had left
// (in nanoseconds), or "none".
func grpcRemainingBackend() *grpcBackend {
	return &grpcBackend{unary: func(ctx context.Context, _ *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
		dl, ok := ctx.Deadline()
		if !ok {
			return &testgrpc.SimpleResponse{Username: "none"}, nil
		}
		return &testgrpc.SimpleResponse{Username: strconv.FormatInt(int64(time.Until(dl)), 10)}, nil
	}}
}

func TestGRPCDeadlinePropagation(t *testing.T) {
	cases := []struct {
		name            string
		upstreamTimeout time.Duration // 0: the default (15s)
		callerTimeout   time.Duration // 0: none
		max             time.Duration // the smaller of the two
	}{
		{"caller-300ms", 0, 300 * time.Millisecond, 300 * time.Millisecond},
		{"upstream-200ms-caller-none", 200 * time.Millisecond, 0, 200 * time.Millisecond},
		{"upstream-200ms-caller-5s", 200 * time.Millisecond, 5 * time.Second, 200 * time.Millisecond},
		{"upstream-2s-caller-300ms", 2 * time.Second, 300 * time.Millisecond, 300 * time.Millisecond},
	}
	for _, v := range grpcSomeVariants {
		for _, tc := range cases {
			t.Run(v.name+"/"+tc.name, func(t *testing.T) {
				e := startGRPC(t, grpcSetup{grpcVariant: v, timeout: tc.upstreamTimeout}, grpcRemainingBackend())
				ctx := grpcCtx(t)
				if tc.callerTimeout > 0 {
					var cancel context.CancelFunc
					ctx, cancel = context.WithTimeout(ctx, tc.callerTimeout)
					defer cancel()
				}
				resp, err := e.client.UnaryCall(ctx, &testgrpc.SimpleRequest{})
				if err != nil {
					t.Fatal(err)
				}
				if resp.GetUsername() == "none" {
					t.Fatal("the upstream's handler had no deadline: grpc-timeout was not passed on")
				}
				ns, err := strconv.ParseInt(resp.GetUsername(), 10, 64)
				if err != nil {
					t.Fatal(err)
				}
				left := time.Duration(ns)
				if left <= 0 || left > tc.max {
					t.Fatalf("the upstream had %v left, want more than 0 and at most %v", left, tc.max)
				}
			})
		}
	}
}

// TestGRPCUpstreamTimeout: an upstream that does not answer in time is cut
// off at the upstream's timeout (the client set none) with DEADLINE_EXCEEDED,
// counted as result timeout, and its slot comes back. Both before the
// response began (unary: grpc-go sends no headers before the answer) and in
// the middle of a stream.
//
// The upstream was passed the same deadline, so grpc-go's server gives up at
// about the same instant as the sidecar: it resets the stream and, if its
// handler honours its context, may answer DEADLINE_EXCEEDED itself. Whichever
// is noticed first, the app must see DEADLINE_EXCEEDED and the sidecar count
// a timeout. A handler that ignores its context cannot answer, so then the
// answer is always the sidecar's (x-watertight-reason: timeout).
func TestGRPCUpstreamTimeout(t *testing.T) {
	const timeout = 200 * time.Millisecond
	for _, v := range grpcSomeVariants {
		for _, call := range []string{"unary", "mid-stream"} {
			for _, honours := range []bool{true, false} {
				name := v.name + "/" + call + "/handler-ignores-ctx"
				if honours {
					name = v.name + "/" + call + "/handler-honours-ctx"
				}
				t.Run(name, func(t *testing.T) {
					stuck := make(chan struct{})
					wait := func(ctx context.Context) error {
						if honours {
							<-ctx.Done()
							return status.FromContextError(ctx.Err()).Err()
						}
						<-stuck
						return status.Error(codes.Aborted, "released at the end of the test")
					}
					b := &grpcBackend{
						unary: func(ctx context.Context, _ *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
							return nil, wait(ctx)
						},
						output: func(_ *testgrpc.StreamingOutputCallRequest, stream grpc.ServerStreamingServer[testgrpc.StreamingOutputCallResponse]) error {
							if err := stream.Send(&testgrpc.StreamingOutputCallResponse{Payload: &testgrpc.Payload{Body: grpcStreamMsg(0, 64)}}); err != nil {
								return err
							}
							return wait(stream.Context())
						},
					}
					e := startGRPC(t, grpcSetup{grpcVariant: v, timeout: timeout}, b)
					t.Cleanup(func() { close(stuck) })

					var hdr, trl metadata.MD
					start := time.Now()
					var err error
					if call == "unary" {
						_, err = e.client.UnaryCall(grpcCtx(t), &testgrpc.SimpleRequest{}, grpc.Header(&hdr), grpc.Trailer(&trl))
					} else {
						var stream grpc.ServerStreamingClient[testgrpc.StreamingOutputCallResponse]
						stream, err = e.client.StreamingOutputCall(grpcCtx(t), &testgrpc.StreamingOutputCallRequest{})
						if err != nil {
							t.Fatal(err)
						}
						if _, err := stream.Recv(); err != nil {
							t.Fatalf("first message: %v", err)
						}
						_, err = stream.Recv()
						hdr, _ = stream.Header()
						trl = stream.Trailer()
					}
					took := time.Since(start)
					if code := status.Code(err); code != codes.DeadlineExceeded {
						t.Fatalf("got %v (%v), want DeadlineExceeded", code, err)
					}
					if took < timeout || took > 2*time.Second {
						t.Errorf("the call ended after %v, want about %v", took, timeout)
					}
					reason := grpcReason(hdr, trl)
					if reason != "timeout" && !(honours && reason == "") { // "": the upstream's own DEADLINE_EXCEEDED
						t.Errorf("x-watertight-reason %q, want timeout", reason)
					}
					grpcEventually(t, 2*time.Second, "watertight_requests_total{result=timeout} is not 1", func() bool {
						return e.requests(t, "timeout") == 1
					})
					for _, r := range []string{"ok", "upstream_error", "canceled"} {
						if got := e.requests(t, r); got != 0 {
							t.Errorf("watertight_requests_total{result=%s} = %v, want 0", r, got)
						}
					}
					grpcEventually(t, 2*time.Second, "the slot was not given back", func() bool { return e.active(t) == 0 })
				})
			}
		}
	}
}

// --- 4. Local replies, as grpc-go decodes them. ---

// grpcHoldingBackend's StreamingOutputCall sends one message, then holds the
// stream open until release is closed, then sends one more and ends.
func grpcHoldingBackend(release <-chan struct{}) *grpcBackend {
	return &grpcBackend{output: func(_ *testgrpc.StreamingOutputCallRequest, stream grpc.ServerStreamingServer[testgrpc.StreamingOutputCallResponse]) error {
		if err := stream.Send(&testgrpc.StreamingOutputCallResponse{Payload: &testgrpc.Payload{Body: grpcStreamMsg(0, 64)}}); err != nil {
			return err
		}
		select {
		case <-release:
		case <-stream.Context().Done():
			return stream.Context().Err()
		}
		return stream.Send(&testgrpc.StreamingOutputCallResponse{Payload: &testgrpc.Payload{Body: grpcStreamMsg(1, 64)}})
	}}
}

// grpcHoldStream opens a held server stream and waits for its first message, so
// that it surely holds its slot.
func grpcHoldStream(t *testing.T, e *grpcEnv) grpc.ServerStreamingClient[testgrpc.StreamingOutputCallResponse] {
	t.Helper()
	stream, err := e.client.StreamingOutputCall(grpcCtx(t), &testgrpc.StreamingOutputCallRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatalf("first message of the held stream: %v", err)
	}
	return stream
}

// grpcFinishStream reads the held stream to its end.
func grpcFinishStream(t *testing.T, stream grpc.ServerStreamingClient[testgrpc.StreamingOutputCallResponse]) {
	t.Helper()
	n := 0
	for {
		_, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("held stream: %v", err)
		}
		n++
	}
	if n != 1 {
		t.Fatalf("held stream sent %d more messages, want 1", n)
	}
}

// grpcWantLocalReply checks a call the sidecar answered itself.
func grpcWantLocalReply(t *testing.T, err error, hdr, trl metadata.MD, code codes.Code, reason, inMessage string) {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != code {
		t.Fatalf("got %v (%q), want %v", st.Code(), st.Message(), code)
	}
	if !strings.Contains(st.Message(), inMessage) {
		t.Errorf("message %q does not mention %q", st.Message(), inMessage)
	}
	if got := grpcReason(hdr, trl); got != reason {
		t.Errorf("x-watertight-reason %q, want %q (headers %v, trailers %v)", got, reason, hdr, trl)
	}
}

func TestGRPCBulkheadFull(t *testing.T) {
	for _, v := range grpcSomeVariants {
		t.Run(v.name, func(t *testing.T) {
			release := make(chan struct{})
			e := startGRPC(t, grpcSetup{grpcVariant: v, bulkhead: config.Bulkhead{MaxConcurrent: 1, MaxQueue: 0}}, grpcHoldingBackend(release))
			held := grpcHoldStream(t, e)

			var hdr, trl metadata.MD
			_, err := e.client.UnaryCall(grpcCtx(t), &testgrpc.SimpleRequest{}, grpc.Header(&hdr), grpc.Trailer(&trl))
			grpcWantLocalReply(t, err, hdr, trl, codes.Unavailable, "bulkhead_full", "bulkhead full")
			if got := e.requests(t, "bulkhead_full"); got != 1 {
				t.Errorf("watertight_requests_total{result=bulkhead_full} = %v, want 1", got)
			}

			// The refusal took nothing: once the held stream ends, calls go through.
			close(release)
			grpcFinishStream(t, held)
			grpcEventually(t, 5*time.Second, "the slot was not given back", func() bool { return e.active(t) == 0 })
			if _, err := e.client.UnaryCall(grpcCtx(t), &testgrpc.SimpleRequest{}); err != nil {
				t.Fatalf("after the stream ended: %v", err)
			}
		})
	}
}

func TestGRPCQueueTimeout(t *testing.T) {
	const maxWait = 50 * time.Millisecond
	for _, v := range grpcSomeVariants {
		t.Run(v.name, func(t *testing.T) {
			release := make(chan struct{})
			e := startGRPC(t, grpcSetup{grpcVariant: v, bulkhead: config.Bulkhead{MaxConcurrent: 1, MaxQueue: 1, MaxWait: config.D(maxWait)}}, grpcHoldingBackend(release))
			held := grpcHoldStream(t, e)

			var hdr, trl metadata.MD
			start := time.Now()
			_, err := e.client.UnaryCall(grpcCtx(t), &testgrpc.SimpleRequest{}, grpc.Header(&hdr), grpc.Trailer(&trl))
			took := time.Since(start)
			grpcWantLocalReply(t, err, hdr, trl, codes.Unavailable, "queue_timeout", "queue_timeout")
			if took < maxWait || took > 2*time.Second {
				t.Errorf("refused after %v, want after the %v maxWait", took, maxWait)
			}
			if got := e.requests(t, "queue_timeout"); got != 1 {
				t.Errorf("watertight_requests_total{result=queue_timeout} = %v, want 1", got)
			}
			close(release)
			grpcFinishStream(t, held)
		})
	}
}

func TestGRPCNoRoute(t *testing.T) {
	for _, v := range grpcAllVariants[:2] { // mode proxy routes by :authority
		t.Run(v.name, func(t *testing.T) {
			e := startGRPC(t, grpcSetup{grpcVariant: v, authority: "nobody.example:80"}, &grpcBackend{})
			var hdr, trl metadata.MD
			_, err := e.client.UnaryCall(grpcCtx(t), &testgrpc.SimpleRequest{}, grpc.Header(&hdr), grpc.Trailer(&trl))
			grpcWantLocalReply(t, err, hdr, trl, codes.Unimplemented, "no_route", "nobody.example")
		})
	}
}

func TestGRPCUpstreamUnavailable(t *testing.T) {
	for _, v := range grpcSomeVariants {
		t.Run(v.name, func(t *testing.T) {
			e := startGRPC(t, grpcSetup{grpcVariant: v, endpoint: grpcDeadAddress(t)}, nil)
			var hdr, trl metadata.MD
			_, err := e.client.UnaryCall(grpcCtx(t), &testgrpc.SimpleRequest{}, grpc.Header(&hdr), grpc.Trailer(&trl))
			grpcWantLocalReply(t, err, hdr, trl, codes.Unavailable, "upstream_unavailable", "upstream_unavailable")
			if got := e.requests(t, "upstream_unavailable"); got != 1 {
				t.Errorf("watertight_requests_total{result=upstream_unavailable} = %v, want 1", got)
			}
			if got := e.active(t); got != 0 {
				t.Errorf("pool active = %d after a failed connect, want 0", got)
			}
		})
	}
}

// grpcDeadAddress is a local address nothing listens on.
func grpcDeadAddress(t *testing.T) string { return deadAddress(t) }

// --- 5. A stream holds its slot for as long as it lasts. ---

func TestGRPCStreamHoldsSlot(t *testing.T) {
	for _, v := range grpcSomeVariants {
		t.Run(v.name, func(t *testing.T) {
			release := make(chan struct{})
			e := startGRPC(t, grpcSetup{grpcVariant: v}, grpcHoldingBackend(release))
			if got := e.active(t); got != 0 {
				t.Fatalf("active = %d before any call", got)
			}
			held := grpcHoldStream(t, e)
			// The response headers and a message went by: the slot must still be taken.
			if got := e.active(t); got != 1 {
				t.Fatalf("active = %d while a stream is open, want 1", got)
			}
			close(release)
			grpcFinishStream(t, held)
			grpcEventually(t, 5*time.Second, "the stream's slot was not given back", func() bool { return e.active(t) == 0 })
			grpcEventually(t, 5*time.Second, "the stream was not counted as ok", func() bool { return e.requests(t, "ok") == 1 })
		})
	}
}
