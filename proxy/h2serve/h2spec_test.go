package h2serve_test

import (
	"bytes"
	"context"
	"encoding/xml"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2/hpack"

	"github.com/watertight/watertight/proxy/h2serve"
)

// h2specReport is the part of h2spec's JUnit report the test reads.
type h2specReport struct {
	Suites []struct {
		Package string `xml:"package,attr"`
		Name    string `xml:"name,attr"`
		Cases   []struct {
			Package   string    `xml:"package,attr"`
			ClassName string    `xml:"classname,attr"`
			Failure   *struct{} `xml:"failure"`
			Error     *struct {
				Content string `xml:",innerxml"`
			} `xml:"error"`
			Skipped *struct{} `xml:"skipped"`
		} `xml:"testcase"`
	} `xml:"testsuite"`
}

// TestH2spec runs the HTTP/2 conformance suite h2spec against h2serve
// directly, with no HTTP/1 front: the invalid-preface case (3.5/2) is then
// h2serve's to pass too.
func TestH2spec(t *testing.T) {
	bin, err := exec.LookPath("h2spec")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("h2spec is not on PATH (.ci/run installs it): %v", err)
		}
		t.Skip("h2spec is not installed: go install github.com/summerwind/h2spec/cmd/h2spec@latest, and put $(go env GOPATH)/bin on PATH")
	}
	// Through the Handler alone, and with a Lane that answers every
	// request it is offered (the bodiless ones).
	for _, lane := range []bool{false, true} {
		t.Run(map[bool]string{false: "handler", true: "lane"}[lane], func(t *testing.T) { runH2spec(t, bin, lane) })
	}
}

func runH2spec(t *testing.T, bin string, lane bool) {
	srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "h2spec")
	}), func(s *h2serve.Server) {
		if !lane {
			return
		}
		s.Lane = laneFunc(func(x *h2serve.Exchange) bool {
			// The body first, as the Handler reads it: an answer before the
			// body has ended ends the stream (RST_STREAM NO_ERROR), and the
			// cases that go on sending on a stream they left open (6.9.1/3:
			// WINDOW_UPDATEs past 2^31-1, expecting FLOW_CONTROL_ERROR) would
			// race with that end and fail about one run in ten.
			if b := x.Body(); b != nil {
				_, _ = io.Copy(io.Discard, b)
			}
			_ = x.AnswerHead(200, []hpack.HeaderField{{Name: "content-type", Value: "text/plain"}}, 6)
			_ = x.AnswerBody(strings.NewReader("h2spec"))
			return true
		})
	})
	_, port, err := net.SplitHostPort(srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	report := filepath.Join(t.TempDir(), "h2spec.xml")
	// Cases that expect no answer wait for h2spec's timeout, so the whole
	// run takes a few seconds; a hang is bounded by the context.
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-h", "127.0.0.1", "-p", port, "-o", "5", "--junit-report", report)
	out, runErr := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("h2spec did not finish in time:\n%s", out)
	}
	raw, err := os.ReadFile(report)
	if err != nil {
		t.Fatalf("no report (%v); h2spec: %v\n%s", err, runErr, out)
	}
	// An error's text may quote the bytes h2spec read, control characters
	// that XML does not allow.
	raw = bytes.Map(func(r rune) rune {
		if r < 0x20 && r != '\t' && r != '\n' && r != '\r' {
			return '?'
		}
		return r
	}, raw)
	var r h2specReport
	if err := xml.Unmarshal(raw, &r); err != nil {
		t.Fatalf("reading the report: %v", err)
	}
	var failed []string
	passed := map[string]bool{}
	total := 0
	for _, s := range r.Suites {
		for i, c := range s.Cases {
			// h2spec names a case by its group and its place in it.
			id := s.Package + "/" + strconv.Itoa(i+1)
			total++
			switch {
			case c.Failure != nil:
				failed = append(failed, fmt.Sprintf("%s %s", id, c.ClassName))
			case c.Error != nil:
				failed = append(failed, fmt.Sprintf("%s %s: %s", id, c.ClassName, strings.TrimSpace(c.Error.Content)))
			case c.Skipped == nil:
				passed[id] = true
			}
		}
	}
	if len(failed) > 0 {
		t.Errorf("h2spec: %d of %d cases failed:\n%s\n\n%s", len(failed), total, strings.Join(failed, "\n"), out)
	}
	if total < 100 {
		t.Errorf("h2spec ran %d cases, want the whole suite (about 146):\n%s", total, out)
	}
	if !passed["http2/3.5/2"] {
		t.Errorf("h2spec's http2/3.5/2 (invalid connection preface) did not pass")
	}
	if runErr != nil && len(failed) == 0 {
		t.Errorf("h2spec: %v with no failed case in its report:\n%s", runErr, out)
	}
}
