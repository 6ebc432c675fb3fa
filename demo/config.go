package demo

import (
	_ "embed"
	"fmt"
	"math"
	"os"
	"sort"
	"strings"

	"github.com/watertight/watertight/config"
)

// configYAML is shown to users as the example of a real config, so it is a
// YAML file rather than a Config built in Go.
//
//go:embed demo.yaml
var configYAML string

// listenerName is the demo config's one listener, which the app sends to.
const listenerName = "outbound"

// sidecarConfig is the embedded config with the upstreams' addresses filled
// in (endpoints maps upstream name to host:port), in the given isolation
// mode, with the budget and queues scaled like the load.
func sidecarConfig(endpoints map[string]string, isolation string, scale float64) (*config.Config, error) {
	var missing []string
	text := os.Expand(configYAML, func(name string) string {
		addr, ok := endpoints[name]
		if !ok {
			missing = append(missing, name)
		}
		return addr
	})
	if len(missing) > 0 {
		sort.Strings(missing)
		return nil, fmt.Errorf("filling in the demo config: no upstream address for %s", strings.Join(missing, ", "))
	}
	cfg, err := config.Parse([]byte(text))
	if err != nil {
		return nil, fmt.Errorf("parsing the demo config: %w", err)
	}
	cfg.Isolation = isolation
	if scale != 1 {
		cfg.Budget = scaled(cfg.Budget, scale)
		for i := range cfg.Upstreams {
			b := &cfg.Upstreams[i].Bulkhead
			// Rounded up: a queue of 0 would refuse at once, which is a
			// different policy, not a smaller one.
			b.MaxQueue = int(math.Ceil(float64(b.MaxQueue) * scale))
		}
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("validating the demo config with isolation %q: %w", isolation, err)
	}
	return cfg, nil
}
