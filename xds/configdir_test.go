package xds

import (
	"reflect"
	"testing"

	"github.com/watertight/watertight/config"
)

// Every top-level field of a node file takes effect: a field added to
// config.Config and forgotten in merge fails here.
func TestMergeCarriesEveryTopLevelField(t *testing.T) {
	base := &config.Config{Admin: config.Admin{Address: "127.0.0.1:1"}, Budget: 1, UnknownHosts: "reject",
		Isolation: "per-upstream", PassthroughConnections: 1,
		Listeners: []config.Listener{{Name: "base-l"}}, Upstreams: []config.Upstream{{Name: "base-u"}},
		Composites: []config.Composite{{Name: "base-c"}}}
	node := &config.Config{Admin: config.Admin{Address: "127.0.0.1:2"}, Budget: 2, UnknownHosts: "passthrough",
		Isolation: "shared", PassthroughConnections: 2,
		Listeners: []config.Listener{{Name: "node-l"}}, Upstreams: []config.Upstream{{Name: "node-u"}},
		Composites: []config.Composite{{Name: "node-c"}}}
	got := reflect.ValueOf(*merge(base, node))
	nv := reflect.ValueOf(*node)
	for i := range got.NumField() {
		f := got.Type().Field(i)
		if nv.Field(i).IsZero() {
			t.Fatalf("test fixture: node file leaves %s unset; set it", f.Name)
		}
		switch g := got.Field(i); g.Kind() {
		case reflect.Slice: // merged by name: the node's entry is added
			if g.Len() != 2 || !reflect.DeepEqual(g.Index(1).Interface(), nv.Field(i).Index(0).Interface()) {
				t.Errorf("merge: %s = %+v, want the base's and the node's entries", f.Name, g.Interface())
			}
		default:
			if !reflect.DeepEqual(g.Interface(), nv.Field(i).Interface()) {
				t.Errorf("merge: %s = %+v, the node file said %+v", f.Name, g.Interface(), nv.Field(i).Interface())
			}
		}
	}
}
