package xds

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/structpb"
)

const compositeConfig = `
listeners:
  - {name: app, address: 127.0.0.1:15001, mode: proxy}
upstreams:
  - {name: users, endpoints: ["127.0.0.1:8081"]}
composites:
  - name: home
    listener: app
    path: /home
    nodes:
      - {name: a, upstream: users, path: /a, critical: true}
      - {name: b, upstream: users, path: "/b/{{nodes.a.body.id}}"}
`

// Composites travel in the metadata of the listener that serves them;
// a bad one is refused (NACKed) naming that listener, the composite and
// the field.
func TestCompositesOverXDS(t *testing.T) {
	want := parse(t, compositeConfig)
	res, err := FromConfig(want)
	if err != nil {
		t.Fatal(err)
	}
	var meta *structpb.Struct
	for _, l := range res.Listeners {
		if l.GetName() == ListenerName("app") {
			meta = l.GetMetadata().GetFilterMetadata()[Namespace]
		}
	}
	comps := meta.GetFields()["composites"].GetListValue().GetValues()
	if len(comps) != 1 || comps[0].GetStructValue().GetFields()["name"].GetStringValue() != "home" {
		t.Fatalf("listener metadata: %v", meta)
	}
	got, warnings, err := Model(res)
	if err != nil || len(warnings) > 0 {
		t.Fatalf("model: %v %v", err, warnings)
	}
	assertSame(t, got, want)

	// A cycle, as a control plane might send it.
	nodes := comps[0].GetStructValue().GetFields()["nodes"].GetListValue().GetValues()
	nodes[0].GetStructValue().GetFields()["path"] = structpb.NewStringValue("/a/{{nodes.b.status}}")
	_, _, err = Model(res)
	if err == nil {
		t.Fatal("a composite with a cycle was accepted")
	}
	wantMsg := `listener "listener/app": metadata.filter_metadata["watertight"].composites[name="home"].nodes[0]: node "a" is in a dependency cycle: a → b → a`
	if !strings.Contains(err.Error(), wantMsg) {
		t.Errorf("err = %v\nwant …%s…", err, wantMsg)
	}
}

// A node's file replaces or adds composites by name, as it does upstreams.
func TestNodeFileMergesComposites(t *testing.T) {
	base := parse(t, compositeConfig)
	node := parse(t, `
listeners: [{name: app, address: 127.0.0.1:15001}]
upstreams: [{name: users, endpoints: ["127.0.0.1:8081"]}]
composites:
  - {name: home, listener: app, path: /home2, nodes: [{name: a, upstream: users, path: /x}]}
  - {name: extra, listener: app, path: /extra, nodes: [{name: a, upstream: users, path: /y}]}
`)
	got := merge(base, node)
	if len(got.Composites) != 2 || got.Composites[0].Path != "/home2" || got.Composites[1].Name != "extra" {
		t.Errorf("merged composites: %+v", got.Composites)
	}
	if base.Composites[0].Path != "/home" {
		t.Error("merge modified the default")
	}
}
