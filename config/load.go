package config

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"

	"go.yaml.in/yaml/v3"
)

// Parse decodes a YAML config, fills in defaults and validates it. Every
// problem found is reported, each naming its field path and value.
func Parse(data []byte) (*Config, error) {
	c, err := Decode(data)
	if err != nil {
		return nil, err
	}
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// Decode reads a YAML config strictly (unknown fields and wrongly typed
// values are errors, by field path) but neither fills in defaults nor
// validates: for configs that are merged before they are whole (the control
// plane's per-node files).
func Decode(data []byte) (*Config, error) {
	var root yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&root); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("reading YAML: %w", err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.New("reading YAML: the file holds more than one document")
	}
	c := &Config{}
	if root.Kind == 0 { // an empty file is an empty config
		return c, nil
	}
	v := &validator{}
	checkShape(&root, reflect.TypeFor[Config](), "", v)
	if err := v.err(); err != nil {
		return nil, err
	}
	if err := root.Decode(c); err != nil {
		return nil, fmt.Errorf("decoding config: %w", err)
	}
	return c, nil
}

// Load reads and parses the config file at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	c, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Version is a short content hash of the config in force: equal configs have
// equal versions whatever their source or formatting.
func (c *Config) Version() string {
	b, err := json.Marshal(c)
	if err != nil {
		// A Config is plain data; failing to marshal it is a programming error.
		panic(fmt.Sprintf("config: marshalling for version: %v", err))
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:6])
}

// decodeStrict decodes a node rejecting unknown fields (for custom
// unmarshalers, which yaml.v3 decodes without the caller's strictness).
func decodeStrict(n *yaml.Node, out any) error {
	b, err := yaml.Marshal(n)
	if err != nil {
		return err
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	return dec.Decode(out)
}
