package xds

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/watertight/watertight/config"
)

// ConfigDir is the control plane's source of truth: DIR/default.yaml applies
// to every node, DIR/nodes/<node-id>.yaml replaces or adds listeners and
// upstreams (by name) for one node and overrides the top-level settings it
// sets. Every file is the sidecar's YAML schema.
type ConfigDir struct {
	Dir string
}

// dirState is one reading of a config directory: the decoded files, or the
// error each file gave.
type dirState struct {
	base      *config.Config            // default.yaml, decoded (no defaults yet)
	nodes     map[string]*config.Config // nodes/<id>.yaml, decoded
	nodeErrs  map[string]error          // nodes whose file is bad
	baseError error                     // default.yaml is bad

	// The config of nodes without a file of their own, built once: with
	// many nodes most of them have none.
	shared        *config.Config
	sharedVersion string
	sharedErr     error
}

// read decodes every file of the directory. A bad file is reported in the
// state with its path and field, never fatal to the others.
func (d ConfigDir) read() *dirState {
	st := &dirState{nodes: map[string]*config.Config{}, nodeErrs: map[string]error{}}
	st.base, st.baseError = decodeFile(filepath.Join(d.Dir, "default.yaml"), true)
	entries, err := os.ReadDir(filepath.Join(d.Dir, "nodes"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		st.baseError = errors.Join(st.baseError, fmt.Errorf("reading %s: %w", filepath.Join(d.Dir, "nodes"), err))
	}
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !(strings.HasSuffix(name, ".yaml") || strings.HasSuffix(name, ".yml")) || strings.HasPrefix(name, ".") {
			continue
		}
		id := strings.TrimSuffix(strings.TrimSuffix(name, ".yaml"), ".yml")
		c, err := decodeFile(filepath.Join(d.Dir, "nodes", name), false)
		if err != nil {
			st.nodeErrs[id] = err
			continue
		}
		st.nodes[id] = c
	}
	return st
}

func decodeFile(path string, missingOK bool) (*config.Config, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && missingOK {
		return &config.Config{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	c, err := config.Decode(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// forNode is the whole config of one node, not to be modified, and its
// version: default.yaml merged with the node's file, defaults set and
// validated. The error names the file(s).
func (st *dirState) forNode(dir, id string) (*config.Config, string, error) {
	if st.baseError != nil {
		return nil, "", st.baseError
	}
	if err := st.nodeErrs[id]; err != nil {
		return nil, "", err
	}
	if st.nodes[id] == nil {
		if st.shared == nil && st.sharedErr == nil {
			st.shared, st.sharedErr = st.build(dir, "")
			if st.sharedErr == nil {
				st.sharedVersion = st.shared.Version()
			}
		}
		return st.shared, st.sharedVersion, st.sharedErr
	}
	cfg, err := st.build(dir, id)
	if err != nil {
		return nil, "", err
	}
	return cfg, cfg.Version(), nil
}

func (st *dirState) build(dir, id string) (*config.Config, error) {
	cfg := merge(st.base, st.nodes[id])
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		files := filepath.Join(dir, "default.yaml")
		if st.nodes[id] != nil {
			files += " with " + filepath.Join(dir, "nodes", id+".yaml")
		}
		return nil, fmt.Errorf("%s: %w", files, err)
	}
	return cfg, nil
}

// merge overlays a node's file on the default: listeners, upstreams and
// composites by name (the node's replace, new ones are added), top-level settings where
// the node sets them. Neither input is modified.
func merge(base, node *config.Config) *config.Config {
	out := base.Clone()
	if node == nil {
		return out
	}
	node = node.Clone()
	if node.Admin.Address != "" {
		out.Admin = node.Admin
	}
	if node.Budget != 0 {
		out.Budget = node.Budget
	}
	if node.UnknownHosts != "" {
		out.UnknownHosts = node.UnknownHosts
	}
	if node.Isolation != "" {
		out.Isolation = node.Isolation
	}
	if node.PassthroughConnections != 0 {
		out.PassthroughConnections = node.PassthroughConnections
	}
	out.Listeners = mergeByName(out.Listeners, node.Listeners, func(l config.Listener) string { return l.Name })
	out.Upstreams = mergeByName(out.Upstreams, node.Upstreams, func(u config.Upstream) string { return u.Name })
	out.Composites = mergeByName(out.Composites, node.Composites, func(c config.Composite) string { return c.Name })
	return out
}

func mergeByName[T any](base, over []T, name func(T) string) []T {
	for _, o := range over {
		replaced := false
		for i := range base {
			if name(base[i]) == name(o) {
				base[i], replaced = o, true
			}
		}
		if !replaced {
			base = append(base, o)
		}
	}
	return base
}
