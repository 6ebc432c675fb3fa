package h2wire

import (
	"net/http"
	"reflect"
	"testing"
)

func TestValuesShareOneArray(t *testing.T) {
	h := make(http.Header, 4)
	values := make(Values, 4)
	backing := values // the array every first value must live in
	values.Add(h, "A", "1")
	values.Add(h, "B", "2")
	values.Add(h, "A", "3")
	values.Add(h, "C", "4")
	if want := (http.Header{"A": {"1", "3"}, "B": {"2"}, "C": {"4"}}); !reflect.DeepEqual(h, want) {
		t.Fatalf("header %v, want %v", h, want)
	}
	if &h["B"][0] != &backing[1] || &h["C"][0] != &backing[2] {
		t.Error("first values are not in the shared array, in order")
	}
	if cap(h["B"]) != 1 {
		t.Errorf("a first value's slice has capacity %d: an append would write over the next field's value", cap(h["B"]))
	}
}
