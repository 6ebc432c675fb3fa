package rawio

import (
	"io"
	"testing"
)

// One request-sized write and its read on a loopback connection, through
// rawio and through net.Conn. What rawio saves is mostly not visible here
// (the monitor thread's wake-ups and P hand-offs under load, see
// docs/forwarding-path.md step 5); the benchmark shows it costs nothing
// per call and allocates nothing.
func BenchmarkWriteRead(b *testing.B) {
	msg := []byte("GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: fortio.org/fortio-1.68.2\r\n\r\n")
	for _, tc := range []struct {
		name string
		raw  bool
	}{{"rawio", true}, {"net.Conn", false}} {
		b.Run(tc.name, func(b *testing.B) {
			a, c := pair(b)
			var r io.Reader = c
			var w io.Writer = a
			if tc.raw {
				r, w = NewReader(c), NewWriter(a)
			}
			buf := make([]byte, len(msg))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := w.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(r, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
