package composite_test

import (
	"os"
	"strings"
	"testing"

	"github.com/watertight/watertight/config"
)

// The walk-through's config in docs/composite.md is valid as written.
func TestWalkThroughConfigParses(t *testing.T) {
	b, err := os.ReadFile("../docs/composite.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "```yaml\n")
	if !ok {
		t.Fatal("no yaml block in docs/composite.md")
	}
	block, _, _ := strings.Cut(rest, "```")
	cfg, err := config.Parse([]byte(block))
	if err != nil {
		t.Fatalf("the walk-through's config: %v", err)
	}
	if len(cfg.Composites) != 1 || len(cfg.Composites[0].Nodes) != 5 {
		t.Errorf("composites: %+v", cfg.Composites)
	}
}
