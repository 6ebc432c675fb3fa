package config

import (
	"encoding/json"
	"fmt"
	"time"

	"go.yaml.in/yaml/v3"
)

// Duration is a Go duration string in the YAML ("25ms", "1.5s").
//
// Decoding never fails on a bad value: the raw text is kept so that
// validation can report it with its full field path
// (`upstreams[1].bulkhead.maxWait: "fast" is not a duration`), which the YAML
// decoder itself cannot do.
type Duration struct {
	time.Duration
	raw string // the text as written when it did not parse; "" when it did
	set bool   // written in the config (so "0s" can differ from "absent")
}

// D makes a Duration from a time.Duration (for code that builds configs).
func D(d time.Duration) Duration { return Duration{Duration: d, set: true} }

// IsSet says whether the duration was given (a default applies when not).
func (d Duration) IsSet() bool { return d.set }

// UnmarshalYAML implements yaml.Unmarshaler.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		*d = Duration{raw: fmt.Sprintf("<%s>", kindName(n.Kind)), set: true}
		return nil
	}
	d.parse(n.Value)
	return nil
}

// UnmarshalJSON accepts a duration string (as the xDS metadata carries it).
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		*d = Duration{raw: string(b), set: true}
		return nil
	}
	d.parse(s)
	return nil
}

func (d *Duration) parse(s string) {
	v, err := time.ParseDuration(s)
	if err != nil {
		*d = Duration{raw: s, set: true}
		return
	}
	*d = Duration{Duration: v, set: true}
}

// MarshalYAML writes the duration back as a string.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// Valid says whether the duration parsed (it may still be negative).
func (d Duration) Valid() bool { return d.raw == "" }

// String is the Go duration string, or the invalid text as written.
func (d Duration) String() string {
	if d.raw != "" {
		return d.raw
	}
	return d.Duration.String()
}

// check reports a bad duration at path; negative durations are bad too.
func (d Duration) check(v *validator, path string) {
	switch {
	case d.raw != "":
		v.add(path, "%q is not a duration (use Go syntax like \"250ms\" or \"2s\")", d.raw)
	case d.Duration < 0:
		v.add(path, "%q must not be negative", d.Duration.String())
	}
}

func kindName(k yaml.Kind) string {
	switch k {
	case yaml.MappingNode:
		return "mapping"
	case yaml.SequenceNode:
		return "sequence"
	default:
		return "non-scalar"
	}
}
