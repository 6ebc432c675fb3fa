package xds

import (
	"os"
	"reflect"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/watertight/watertight/config"
)

// Any config the YAML loader accepts must translate to Envoy resources and
// back to the same config (what the control plane serves is what the file
// said), and nothing on the way may panic, whatever the file holds.
func FuzzConfigRoundTrip(f *testing.F) {
	f.Add([]byte(everyField))
	f.Add([]byte(compositeConfig))
	for _, p := range []string{"../config/testdata/design.yaml", "../demo/demo.yaml"} {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		want, err := config.Parse(data)
		if err != nil {
			return
		}
		res, err := FromConfig(want)
		if err != nil {
			t.Fatalf("a valid config does not translate: %v\n%s", err, data)
		}
		got, _, err := Model(res)
		if err != nil {
			t.Fatalf("our own resources are refused: %v\n%s", err, data)
		}
		// nil and empty lists and maps mean the same in the config; YAML
		// gives the one, the translation the other.
		nilEmpty(reflect.ValueOf(got))
		nilEmpty(reflect.ValueOf(want))
		assertSame(t, got, want)
	})
}

// nilEmpty sets every empty slice and map reachable from v to nil.
func nilEmpty(v reflect.Value) {
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if !v.IsNil() {
			nilEmpty(v.Elem())
		}
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				nilEmpty(v.Field(i))
			}
		}
	case reflect.Slice:
		if v.Len() == 0 {
			if v.CanSet() {
				v.SetZero()
			}
			return
		}
		for i := range v.Len() {
			nilEmpty(v.Index(i))
		}
	case reflect.Map:
		if v.Len() == 0 && v.CanSet() {
			v.SetZero()
		}
	}
}

// What a control plane sends is untrusted: any resource, however mangled,
// is accepted or refused with a reason (a NACK), never a panic, and an
// accepted set is a valid config.
func FuzzModelOfMangledResources(f *testing.F) {
	cfg, err := config.Parse([]byte(everyField))
	if err != nil {
		f.Fatal(err)
	}
	base, err := FromConfig(cfg)
	if err != nil {
		f.Fatal(err)
	}
	all := func(r *Resources) []proto.Message {
		var ms []proto.Message
		for _, m := range r.Listeners {
			ms = append(ms, m)
		}
		for _, m := range r.Routes {
			ms = append(ms, m)
		}
		for _, m := range r.Clusters {
			ms = append(ms, m)
		}
		for _, m := range r.Endpoints {
			ms = append(ms, m)
		}
		for _, m := range r.Runtimes {
			ms = append(ms, m)
		}
		return ms
	}
	for i, m := range all(base) {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint16(i), b)
	}
	f.Fuzz(func(t *testing.T, which uint16, data []byte) {
		res := &Resources{
			Listeners: cloneAll(base.Listeners), Routes: cloneAll(base.Routes), Clusters: cloneAll(base.Clusters),
			Endpoints: cloneAll(base.Endpoints), Runtimes: cloneAll(base.Runtimes),
		}
		ms := all(res)
		m := ms[int(which)%len(ms)]
		proto.Reset(m)
		if proto.Unmarshal(data, m) != nil {
			return
		}
		got, _, err := Model(res)
		if err != nil {
			return // refused with a reason: a NACK
		}
		if err := got.Validate(); err != nil {
			t.Fatalf("accepted resources make an invalid config: %v", err)
		}
	})
}

func cloneAll[M proto.Message](ms []M) []M {
	out := make([]M, len(ms))
	for i, m := range ms {
		out[i] = proto.Clone(m).(M)
	}
	return out
}
