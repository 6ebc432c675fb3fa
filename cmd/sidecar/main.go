// Command sidecar is Watertight: a per-pod proxy that gives every outbound
// dependency its own compartment (concurrency pool, queue, timeout, metrics).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/watertight/watertight/admin"
	"github.com/watertight/watertight/demo"
	"github.com/watertight/watertight/proxy"
	"github.com/watertight/watertight/sidecar"
	"github.com/watertight/watertight/xds"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3".
var version = ""

const usage = `Watertight: a sidecar proxy that gives every outbound dependency its own
watertight compartment (weighted concurrency pool, bounded queue, timeout,
connection pool and metrics), so one slow dependency cannot sink the app.

Usage:
  sidecar run --config FILE [--admin ADDR] [--drain-timeout 15s]
  sidecar run --xds HOST:PORT --node-id ID [--admin ADDR]
  sidecar controlplane --listen ADDR --config-dir DIR [--admin ADDR]
  sidecar inject-webhook --tls-cert FILE --tls-key FILE --image IMAGE --xds-address HOST:PORT [--listen ADDR]
  sidecar iptables --proxy-port 15001 --proxy-uid 15337 [--exclude-ports 22,9090] [--exclude-cidrs 10.0.0.0/8] [--cleanup] [--dry-run]
  sidecar demo [--duration 30s]
  sidecar version

Commands:
  run       run the proxy on a YAML config file (reloaded on change and on SIGHUP),
            or on the config an xDS control plane serves
  controlplane  serve the configs of DIR to sidecars (and gRPC xDS clients) over ADS
  inject-webhook  the Kubernetes admission webhook that injects the sidecar into pods
  iptables  the init container's step: redirect the pod's outbound TCP to the proxy (or --cleanup)
  demo      run a self-contained demonstration of isolation, about 30 seconds
  version   print the version

Run 'sidecar COMMAND --help' for a command's flags.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch cmd, rest := args[0], args[1:]; cmd {
	case "run":
		err = runProxy(rest, stderr)
	case "iptables":
		err = runIptables(rest, stdout, stderr)
	case "demo":
		err = runDemo(rest, stdout, stderr)
	case "controlplane":
		err = runControlPlane(rest, stderr)
	case "inject-webhook":
		err = runInjectWebhook(rest, stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, "watertight sidecar", buildVersion())
	case "help", "--help", "-help", "-h":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "sidecar: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	default:
		fmt.Fprintln(stderr, "sidecar:", err)
		return 1
	}
}

var errUsage = errors.New("usage")

func newFlags(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: sidecar %s\n\nFlags:\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return errUsage
	}
	return nil
}

type logFlags struct{ level, format *string }

func addLogFlags(fs *flag.FlagSet, level string) logFlags {
	return logFlags{
		level:  fs.String("log-level", level, "log level: debug, info, warn or error"),
		format: fs.String("log-format", "text", "log format: text or json"),
	}
}

func (l logFlags) logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(*l.level)); err != nil {
		return nil, fmt.Errorf("--log-level: %q is not debug, info, warn or error", *l.level)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch strings.ToLower(*l.format) {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	default:
		return nil, fmt.Errorf("--log-format: %q is not text or json", *l.format)
	}
}

func runProxy(args []string, stderr io.Writer) error {
	fs := newFlags("run", "run (--config FILE | --xds HOST:PORT --node-id ID) [flags]", stderr)
	configPath := fs.String("config", "", "YAML config file; reloaded when it changes and on SIGHUP")
	xdsAddr := fs.String("xds", "", "xDS (ADS) control plane to take the config from, instead of --config")
	nodeID := fs.String("node-id", "", "this sidecar's node ID for the control plane (with --xds), e.g. <pod>.<namespace>")
	adminAddr := fs.String("admin", "", "admin address for /metrics /ready /healthz /config_dump (default: admin.address from the config, 127.0.0.1:15000)")
	drain := fs.Duration("drain-timeout", 15*time.Second, "on SIGTERM, how long in-flight requests get to finish")
	http1 := fs.String("upstream-http1", proxy.DefaultUpstreamHTTP1, "HTTP/1.1 client for cleartext upstreams: "+proxy.HTTP1Watertight+" (written for the sidecar) or "+proxy.HTTP1NetHTTP)
	serve1 := fs.String("downstream-http1", proxy.DefaultDownstreamHTTP1, "HTTP/1.1 server on the app side: "+proxy.HTTP1Watertight+" (a loop written for the sidecar, handing the rest to net/http) or "+proxy.HTTP1NetHTTP)
	http2 := fs.String("upstream-http2", proxy.DefaultUpstreamHTTP2, "h2c client for cleartext upstreams: "+proxy.HTTP1Watertight+" (written for the sidecar) or "+proxy.HTTP1NetHTTP+" (which leaves an upstream's http2.maxConcurrentStreams unapplied)")
	serve2 := fs.String("downstream-http2", proxy.DefaultDownstreamHTTP2, "h2c server on the app side, behind the "+proxy.HTTP1Watertight+" HTTP/1.1 server: "+proxy.HTTP1Watertight+" (written for the sidecar) or "+proxy.HTTP1NetHTTP)
	lane := fs.String("lane", proxy.LaneOn, "the plainest bodiless HTTP/1.1 and h2c requests, and h2c gRPC calls, served below net/http's types (docs/forwarding-path.md, steps 9, 10 and 14), behind the "+proxy.HTTP1Watertight+" servers: "+proxy.LaneOn+" or "+proxy.LaneOff)
	lf := addLogFlags(fs, "info")
	if err := parse(fs, args); err != nil {
		return err
	}
	switch {
	case *http2 != proxy.HTTP1Watertight && *http2 != proxy.HTTP1NetHTTP:
		fmt.Fprintf(stderr, "sidecar run: --upstream-http2: %q is neither %q nor %q\n", *http2, proxy.HTTP1Watertight, proxy.HTTP1NetHTTP)
		fs.Usage()
		return errUsage
	case *serve2 != proxy.HTTP1Watertight && *serve2 != proxy.HTTP1NetHTTP:
		fmt.Fprintf(stderr, "sidecar run: --downstream-http2: %q is neither %q nor %q\n", *serve2, proxy.HTTP1Watertight, proxy.HTTP1NetHTTP)
		fs.Usage()
		return errUsage
	case *http1 != proxy.HTTP1Watertight && *http1 != proxy.HTTP1NetHTTP:
		fmt.Fprintf(stderr, "sidecar run: --upstream-http1: %q is neither %q nor %q\n", *http1, proxy.HTTP1Watertight, proxy.HTTP1NetHTTP)
		fs.Usage()
		return errUsage
	case *serve1 != proxy.HTTP1Watertight && *serve1 != proxy.HTTP1NetHTTP:
		fmt.Fprintf(stderr, "sidecar run: --downstream-http1: %q is neither %q nor %q\n", *serve1, proxy.HTTP1Watertight, proxy.HTTP1NetHTTP)
		fs.Usage()
		return errUsage
	case *lane != proxy.LaneOn && *lane != proxy.LaneOff:
		fmt.Fprintf(stderr, "sidecar run: --lane: %q is neither %q nor %q\n", *lane, proxy.LaneOn, proxy.LaneOff)
		fs.Usage()
		return errUsage
	case (*configPath == "") == (*xdsAddr == ""):
		fmt.Fprintln(stderr, "sidecar run: give either --config FILE or --xds HOST:PORT")
		fs.Usage()
		return errUsage
	case *xdsAddr != "" && *nodeID == "":
		fmt.Fprintln(stderr, "sidecar run: --xds needs --node-id")
		fs.Usage()
		return errUsage
	}
	log, err := lf.logger(stderr)
	if err != nil {
		return err
	}
	slog.SetDefault(log)
	sidecar.TuneGC(os.Getenv)
	return sidecar.Run(context.Background(), sidecar.Options{
		ConfigPath:      *configPath,
		XDSAddress:      *xdsAddr,
		NodeID:          *nodeID,
		AdminAddress:    *adminAddr,
		DrainTimeout:    *drain,
		UpstreamHTTP1:   *http1,
		UpstreamHTTP2:   *http2,
		DownstreamHTTP1: *serve1,
		DownstreamHTTP2: *serve2,
		Lane:            *lane,
		Logger:          log,
	})
}

func runControlPlane(args []string, stderr io.Writer) error {
	fs := newFlags("controlplane", "controlplane --config-dir DIR [flags]", stderr)
	listen := fs.String("listen", ":18000", "ADS address to serve (state of the world and delta)")
	dir := fs.String("config-dir", "", "directory with default.yaml (every node) and nodes/<node-id>.yaml (one node); watched")
	adminAddr := fs.String("admin", "127.0.0.1:18001", "admin address for /metrics /ready /healthz /config_dump")
	lf := addLogFlags(fs, "info")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *dir == "" {
		fmt.Fprintln(stderr, "sidecar controlplane: --config-dir is required")
		fs.Usage()
		return errUsage
	}
	log, err := lf.logger(stderr)
	if err != nil {
		return err
	}
	slog.SetDefault(log)
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	cp, err := xds.NewControlPlane(xds.ControlPlaneOptions{Listen: *listen, ConfigDir: *dir, Logger: log, Registerer: reg})
	if err != nil {
		return err
	}
	adm, err := admin.Start(*adminAddr, admin.Handler(reg, cp))
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err = cp.Run(ctx)
	sctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	return errors.Join(err, adm.Shutdown(sctx))
}

func runDemo(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("demo", "demo [flags]", stderr)
	duration := fs.Duration("duration", 30*time.Second, "total length of the demo (two runs of half each)")
	lf := addLogFlags(fs, "warn")
	if err := parse(fs, args); err != nil {
		return err
	}
	log, err := lf.logger(stderr)
	if err != nil {
		return err
	}
	slog.SetDefault(log)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return demo.Run(ctx, demo.Options{Duration: *duration, Out: stdout, Logger: log})
}

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		v := bi.Main.Version
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				v += " (" + s.Value[:12] + ")"
			}
		}
		if v != "" {
			return v + " " + bi.GoVersion
		}
	}
	return "(devel)"
}
