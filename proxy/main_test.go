package proxy

import (
	"flag"
	"fmt"
	"io"
	"os"
	"testing"

	"go.uber.org/goleak"
	"google.golang.org/grpc/grpclog"
)

// upstreamHTTP1 runs the whole suite with either HTTP/1.1 client:
//
//	go test -race ./proxy/ -args -upstream-http1=watertight
var upstreamHTTP1 = flag.String("upstream-http1", DefaultUpstreamHTTP1,
	"the servers' HTTP/1.1 client for cleartext upstreams: "+HTTP1NetHTTP+" or "+HTTP1Watertight)

// downstreamHTTP1 runs it with either app-side HTTP/1.1 server:
//
//	go test -race ./proxy/ -args -downstream-http1=net/http
var downstreamHTTP1 = flag.String("downstream-http1", DefaultDownstreamHTTP1,
	"the servers' app-side HTTP/1.1 server: "+HTTP1NetHTTP+" or "+HTTP1Watertight)

// upstreamHTTP2 runs it with either h2c client:
//
//	go test -race ./proxy/ -args -upstream-http2=watertight
var upstreamHTTP2 = flag.String("upstream-http2", DefaultUpstreamHTTP2,
	"the servers' h2c client for cleartext upstreams: "+HTTP1NetHTTP+" or "+HTTP1Watertight)

// downstreamHTTP2 runs it with either app-side h2c server (behind the
// watertight HTTP/1.1 server; net/http's serves h2c itself):
//
//	go test -race ./proxy/ -args -downstream-http2=net/http
var downstreamHTTP2 = flag.String("downstream-http2", DefaultDownstreamHTTP2,
	"the servers' app-side h2c server: "+HTTP1NetHTTP+" or "+HTTP1Watertight)

// laneOn runs it with the lanes (lane.go, lane_h2.go) on or off:
//
//	go test -race ./proxy/ -args -lane=off
var laneOn = flag.String("lane", LaneOn, "the servers' lanes for the plainest HTTP/1.1 and h2c requests: "+LaneOn+" or "+LaneOff)

func TestMain(m *testing.M) {
	flag.Parse()
	for name, v := range map[string]string{"upstream-http1": *upstreamHTTP1, "downstream-http1": *downstreamHTTP1, "downstream-http2": *downstreamHTTP2, "upstream-http2": *upstreamHTTP2} {
		switch v {
		case HTTP1NetHTTP, HTTP1Watertight:
		default:
			fmt.Fprintf(os.Stderr, "-%s: %q is neither %q nor %q\n", name, v, HTTP1NetHTTP, HTTP1Watertight)
			os.Exit(2)
		}
	}
	if *laneOn != LaneOn && *laneOn != LaneOff {
		fmt.Fprintf(os.Stderr, "-lane: %q is neither %q nor %q\n", *laneOn, LaneOn, LaneOff)
		os.Exit(2)
	}
	// gRPC's interop cases (grpc_interop_test.go) report a failure with
	// grpclog's Fatal, which exits the process. Installed before any gRPC
	// activity (SetLoggerV2 is not safe to call later), this logger panics
	// instead, so the test that ran the case fails with the case's message;
	// everything else gRPC logs is dropped, as with grpc-go's default.
	grpclog.SetLoggerV2(panicOnFatal{grpclog.NewLoggerV2(io.Discard, io.Discard, io.Discard)})
	goleak.VerifyTestMain(m)
}

// interopFailure is what panicOnFatal panics with.
type interopFailure string

type panicOnFatal struct{ grpclog.LoggerV2 }

func (panicOnFatal) Fatal(args ...any) { panic(interopFailure(fmt.Sprint(args...))) }
func (panicOnFatal) Fatalln(args ...any) {
	panic(interopFailure(fmt.Sprintln(args...)))
}
func (panicOnFatal) Fatalf(format string, args ...any) {
	panic(interopFailure(fmt.Sprintf(format, args...)))
}
