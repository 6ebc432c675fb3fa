package demo

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// compositePath is the demo config's composite.
const compositePath = "/product-page"

// probeComposite calls the demo's composite once as an app would for a
// product page, asking for the multi-segment answer, and says when each
// segment came. It is called at the end of a run, when recommendations
// hangs: the core (catalog, pricing) comes at once, recommendations when
// the composite's deadline cuts it off.
func probeComposite(ctx context.Context, addr string) string {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+compositePath+"?item=42", nil)
	if err != nil {
		return "composite call: " + err.Error()
	}
	req.Header.Set("Accept", "application/x-ndjson")
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return "composite call failed: " + err.Error()
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
		return fmt.Sprintf("composite %s failed after %s: %d %s", compositePath, fmtMs(time.Since(start)), resp.StatusCode, strings.TrimSpace(string(b)))
	}
	var parts []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		at := fmtMs(time.Since(start))
		var seg struct {
			Kind     string `json:"kind"`
			Node     string `json:"node"`
			Segments int    `json:"segments"`
			Status   map[string]struct {
				Result string `json:"result"`
				Cause  string `json:"cause"`
			} `json:"_status"`
		}
		if json.Unmarshal(sc.Bytes(), &seg) != nil {
			continue
		}
		switch seg.Kind {
		case "core":
			parts = append(parts, "core (item, price) after "+at)
		case "node":
			st := seg.Status[seg.Node]
			what := st.Result
			if st.Cause != "" {
				what += ": " + st.Cause
			}
			parts = append(parts, fmt.Sprintf("%s after %s (%s)", seg.Node, at, what))
		case "end":
			parts = append(parts, fmt.Sprintf("end after %s, %d segments", at, seg.Segments))
		}
	}
	return fmt.Sprintf("composite %s, multi-segment: %s", compositePath, strings.Join(parts, "; "))
}
