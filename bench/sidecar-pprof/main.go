// Command sidecar-pprof is `sidecar run` plus a net/http/pprof listener on
// its own port, for `bench/run.sh --profile`. The request path is exactly the
// sidecar's (sidecar.Run with the same config file); only the profiling
// endpoint is added, on a port no benchmark request touches. It exists so
// that profiling needs no change to the sidecar's admin port.
package main

import (
	"context"
	"flag"
	"log"
	"log/slog"
	"net/http"
	_ "net/http/pprof" // registers /debug/pprof/ on http.DefaultServeMux
	"os"

	"github.com/watertight/watertight/sidecar"
)

func main() {
	configPath := flag.String("config", "", "sidecar YAML config file")
	pprofAddr := flag.String("pprof", "127.0.0.1:18090", "address for /debug/pprof/")
	downstream := flag.String("downstream-http1", "", "app-side HTTP/1.1 server, as sidecar run's flag (default: the sidecar's)")
	flag.Parse()

	go func() { log.Fatal(http.ListenAndServe(*pprofAddr, nil)) }()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	sidecar.TuneGC(os.Getenv) // as sidecar run does
	if err := sidecar.Run(context.Background(), sidecar.Options{ConfigPath: *configPath, Logger: logger, DownstreamHTTP1: *downstream}); err != nil {
		log.Fatal(err)
	}
}
