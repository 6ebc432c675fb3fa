package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/watertight/watertight/inject"
)

// injectWebhookConfig is the inject-webhook command line, parsed.
type injectWebhookConfig struct {
	listen, certFile, keyFile string
	opts                      inject.Options
	log                       *slog.Logger
}

func parseInjectWebhook(args []string, stderr io.Writer) (*injectWebhookConfig, error) {
	fs := newFlags("inject-webhook", "inject-webhook --tls-cert FILE --tls-key FILE --image IMAGE --xds-address HOST:PORT [flags]", stderr)
	c := &injectWebhookConfig{}
	fs.StringVar(&c.listen, "listen", ":9443", "HTTPS address serving "+inject.Path+" and "+inject.PathNamespaceEnabled+" (and "+inject.PathHealth+")")
	fs.StringVar(&c.certFile, "tls-cert", "", "PEM certificate (chain) file; reloaded when it changes")
	fs.StringVar(&c.keyFile, "tls-key", "", "PEM private key file; reloaded when it changes")
	fs.StringVar(&c.opts.Image, "image", "", "Watertight image of the injected containers")
	pullPolicy := fs.String("image-pull-policy", "", "image pull policy of the injected containers: Always, IfNotPresent or Never (default: the cluster's)")
	fs.StringVar(&c.opts.XDSAddress, "xds-address", "", "the control plane's HOST:PORT the injected proxies take their config from")
	cpu := fs.String("proxy-cpu", "50m", "the injected proxy's CPU request")
	mem := fs.String("proxy-memory", "64Mi", "the injected proxy's memory request")
	cpuLimit := fs.String("proxy-cpu-limit", "", "the injected proxy's CPU limit (default: none)")
	memLimit := fs.String("proxy-memory-limit", "", "the injected proxy's memory limit (default: none)")
	lf := addLogFlags(fs, "info")
	if err := parse(fs, args); err != nil {
		return nil, err
	}
	for _, req := range []struct{ flag, value string }{
		{"--tls-cert", c.certFile}, {"--tls-key", c.keyFile}, {"--image", c.opts.Image}, {"--xds-address", c.opts.XDSAddress},
	} {
		if req.value == "" {
			fmt.Fprintf(stderr, "sidecar inject-webhook: %s is required\n", req.flag)
			fs.Usage()
			return nil, errUsage
		}
	}
	c.opts.ImagePullPolicy = corev1.PullPolicy(*pullPolicy)
	var errs []error
	quantity := func(flag, v string, into corev1.ResourceList, name corev1.ResourceName) {
		if v == "" {
			return
		}
		q, err := resource.ParseQuantity(v)
		if err != nil || q.Sign() < 0 {
			errs = append(errs, fmt.Errorf("%s: %q is not a quantity like 50m or 64Mi", flag, v))
			return
		}
		into[name] = q
	}
	c.opts.ProxyResources = corev1.ResourceRequirements{Requests: corev1.ResourceList{}, Limits: corev1.ResourceList{}}
	quantity("--proxy-cpu", *cpu, c.opts.ProxyResources.Requests, corev1.ResourceCPU)
	quantity("--proxy-memory", *mem, c.opts.ProxyResources.Requests, corev1.ResourceMemory)
	quantity("--proxy-cpu-limit", *cpuLimit, c.opts.ProxyResources.Limits, corev1.ResourceCPU)
	quantity("--proxy-memory-limit", *memLimit, c.opts.ProxyResources.Limits, corev1.ResourceMemory)
	if len(c.opts.ProxyResources.Limits) == 0 {
		c.opts.ProxyResources.Limits = nil
	}
	if len(c.opts.ProxyResources.Requests) == 0 {
		c.opts.ProxyResources.Requests = nil
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if err := c.opts.Validate(); err != nil {
		return nil, err
	}
	var err error
	if c.log, err = lf.logger(stderr); err != nil {
		return nil, err
	}
	return c, nil
}

func runInjectWebhook(args []string, stderr io.Writer) error {
	c, err := parseInjectWebhook(args, stderr)
	if err != nil {
		return err
	}
	slog.SetDefault(c.log)
	h, err := inject.NewHandler(c.opts, c.log)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	srv, err := inject.Start(c.listen, c.certFile, c.keyFile, h, c.log)
	if err != nil {
		return err
	}
	c.log.Info("inject webhook listening", "address", srv.Addr().String(), "image", c.opts.Image, "xds_address", c.opts.XDSAddress)
	<-ctx.Done()
	c.log.Info("stopping: finishing the reviews in flight")
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}
