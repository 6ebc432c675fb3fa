package h1serve

import (
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/watertight/watertight/proxy/internal/rawio"
)

// A connection the loop hands to h2serve keeps the loop's raw I/O
// (proxy/internal/rawio): its new owner sees only replayConn's Read and
// Write, so a replayConn that fell back to net.Conn's would put every h2c
// read and write back in the scheduler's system-call state. Through it the
// bytes the loop had read come first, then the socket's, and writes reach
// the client.
func TestHandedOffConnKeepsRawIO(t *testing.T) {
	handed := make(chan net.Conn, 1)
	p := startPair(t, http.NotFoundHandler(), func(s *Server) {
		s.HandOffHTTP2 = func(c net.Conn) { handed <- c }
	})
	client, err := net.Dial("tcp", p.fast)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	const preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
	if _, err := io.WriteString(client, preface); err != nil {
		t.Fatal(err)
	}
	var c net.Conn
	select {
	case c = <-handed:
	case <-time.After(10 * time.Second):
		t.Fatal("the connection was never handed off")
	}
	defer c.Close()
	rc, ok := c.(*replayConn)
	if !ok {
		t.Fatalf("handed off a %T", c)
	}
	if _, ok := rc.r.(*rawio.Reader); !ok {
		t.Errorf("the handed-off connection reads through a %T, not a *rawio.Reader", rc.r)
	}
	if _, ok := rc.w.(*rawio.Writer); !ok {
		t.Errorf("the handed-off connection writes through a %T, not a *rawio.Writer", rc.w)
	}

	if _, err := client.Write([]byte("after")); err != nil {
		t.Fatal(err)
	}
	want := preface + "after"
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != want {
		t.Fatalf("read %q, %v; want %q", got, err, want)
	}
	if _, err := c.Write([]byte("back")); err != nil {
		t.Fatal(err)
	}
	back := make([]byte, 4)
	if _, err := io.ReadFull(client, back); err != nil || string(back) != "back" {
		t.Fatalf("the client read %q, %v; want %q", back, err, "back")
	}
}
