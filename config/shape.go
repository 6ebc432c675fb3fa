package config

import (
	"reflect"
	"strings"

	"go.yaml.in/yaml/v3"
)

// checkShape walks the YAML tree against the Go type it will decode into and
// reports unknown fields and wrongly typed scalars by field path.
//
// Why by hand: yaml.v3's KnownFields reports "line 7: field wieght not found
// in type config.Bulkhead", which names neither the path nor the value, and
// its type errors name Go types; DESIGN.md wants every config error to name the
// field path and the bad value.
func checkShape(n *yaml.Node, t reflect.Type, path string, v *validator) {
	if n == nil {
		return
	}
	if n.Kind == yaml.DocumentNode {
		for _, c := range n.Content {
			checkShape(c, t, path, v)
		}
		return
	}
	if n.Kind == yaml.AliasNode {
		checkShape(n.Alias, t, path, v)
		return
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n.Tag == "!!null" {
		return // an explicit null leaves the zero value
	}
	switch t {
	case reflect.TypeFor[Duration]():
		return // Duration keeps bad text for validation to report
	case reflect.TypeFor[Endpoint]():
		if n.Kind == yaml.ScalarNode {
			return
		}
	case reflect.TypeFor[Fallbacks]():
		if n.Kind == yaml.MappingNode { // the one-fallback short form
			checkShape(n, reflect.TypeFor[Fallback](), path, v)
			return
		}
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			v.add(path, "must be a mapping, not %s", describe(n))
			return
		}
		fields := yamlFields(t)
		for i := 0; i+1 < len(n.Content); i += 2 {
			key, val := n.Content[i].Value, n.Content[i+1]
			f, ok := fields[key]
			if !ok {
				v.add(join(path, key), "unknown field (known fields: %s)", strings.Join(fieldNames(t), ", "))
				continue
			}
			checkShape(val, f.Type, join(path, key), v)
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			v.add(path, "must be a list, not %s", describe(n))
			return
		}
		for i, c := range n.Content {
			checkShape(c, t.Elem(), path+"["+itoa(i)+"]", v)
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			v.add(path, "must be a mapping, not %s", describe(n))
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			checkShape(n.Content[i+1], t.Elem(), join(path, n.Content[i].Value), v)
		}
	case reflect.Int, reflect.Int32, reflect.Int64:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!int" {
			v.add(path, "%s is not a whole number", describe(n))
		}
	case reflect.Float64:
		if n.Kind != yaml.ScalarNode || (n.Tag != "!!int" && n.Tag != "!!float") {
			v.add(path, "%s is not a number", describe(n))
		}
	case reflect.Bool:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" {
			v.add(path, "%s is not true or false", describe(n))
		}
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			v.add(path, "must be a string, not %s", describe(n))
		}
	}
}

func describe(n *yaml.Node) string {
	if n.Kind == yaml.ScalarNode {
		return `"` + n.Value + `"`
	}
	return "a " + kindName(n.Kind)
}

func yamlFields(t reflect.Type) map[string]reflect.StructField {
	m := make(map[string]reflect.StructField, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		if name := yamlName(f); name != "" {
			m[name] = f
		}
	}
	return m
}

func fieldNames(t reflect.Type) []string {
	var names []string
	for i := range t.NumField() {
		if name := yamlName(t.Field(i)); name != "" {
			names = append(names, name)
		}
	}
	return names
}

func yamlName(f reflect.StructField) string {
	if !f.IsExported() {
		return ""
	}
	name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	if name == "-" {
		return ""
	}
	if name == "" {
		return strings.ToLower(f.Name)
	}
	return name
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}
