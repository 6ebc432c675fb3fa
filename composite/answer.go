package composite

import (
	"bytes"
	"encoding/json"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/watertight/watertight/metrics"
)

// Answer formats, chosen by the request's Accept header.
type format uint8

const (
	single format = iota // one JSON object once every node is done
	ndjson               // application/x-ndjson: one JSON object a line
	sse                  // text/event-stream: one event a segment
)

// Content types of the answers.
const (
	ContentTypeJSON   = "application/json"
	ContentTypeNDJSON = "application/x-ndjson"
	ContentTypeSSE    = "text/event-stream"
)

// ReasonFailed is the x-watertight-reason of a composite that failed.
const ReasonFailed = "composite_failed"

// answer writes a run's answer: as a single object, or as segments (the
// core once every critical node is done, one per weak node after that, and
// an end segment that says how many were sent and what failed).
type answer struct {
	w        http.ResponseWriter
	ru       *run
	format   format
	coreSent bool
	sent     []bool // the node's result went out in a segment
	segments int
	seen     []bool // the coordinator has processed the node's end
}

func newAnswer(w http.ResponseWriter, r *http.Request, ru *run) *answer {
	return &answer{w: w, ru: ru, format: formatOf(r), sent: make([]bool, len(ru.p.nodes)), seen: make([]bool, len(ru.p.nodes))}
}

func formatOf(r *http.Request) format {
	for _, v := range r.Header.Values("Accept") {
		for _, part := range strings.Split(v, ",") {
			mt, _, err := mime.ParseMediaType(strings.TrimSpace(part))
			if err != nil {
				continue
			}
			switch mt {
			case ContentTypeNDJSON:
				return ndjson
			case ContentTypeSSE:
				return sse
			}
		}
	}
	return single
}

// node is told, by the coordinator, of node i's end once every critical
// node is done (or, for i, whenever it ends after that).
func (a *answer) node(i int) {
	a.seen[i] = true
	if a.format == single {
		return
	}
	if !a.coreSent {
		a.core()
		return
	}
	if a.sent[i] {
		return
	}
	a.sent[i] = true
	seg := a.segment("node", []int{i})
	a.write("node", seg)
	a.ru.p.metrics.CompositeLaterSegment(a.ru.p.name, time.Since(a.ru.start))
}

// core sends the first segment: every node done so far, all the critical
// ones among them.
func (a *answer) core() {
	if a.format == single || a.coreSent {
		return
	}
	a.coreSent = true
	var done []int
	for i := range a.ru.p.nodes {
		if a.processed(i) {
			done = append(done, i)
			a.sent[i] = true
		}
	}
	h := a.w.Header()
	if a.format == sse {
		h.Set("Content-Type", ContentTypeSSE)
		h.Set("Cache-Control", "no-cache")
	} else {
		h.Set("Content-Type", ContentTypeNDJSON)
	}
	h.Set("X-Content-Type-Options", "nosniff")
	a.w.WriteHeader(http.StatusOK)
	a.write("core", a.segment("core", done))
	a.ru.p.metrics.CompositeFirstSegment(a.ru.p.name, time.Since(a.ru.start))
}

// processed: the coordinator has handled the node's end (its result may be
// read).
func (a *answer) processed(i int) bool {
	return a.seen[i] || a.ru.processed[i]
}

// finish ends the answer once no node is running.
func (a *answer) finish() {
	ru, p := a.ru, a.ru.p
	took := time.Since(ru.start)
	outcome := metrics.CompositeOK
	for i := range p.nodes {
		if ru.results[i].state != stOK {
			outcome = metrics.CompositeDegraded
		}
	}
	failed := ru.failed >= 0 || ru.critical < p.critical
	switch {
	case ru.clientGone():
		outcome = metrics.CompositeCanceled
	case failed:
		outcome = metrics.CompositeFailed
	}
	defer p.metrics.CompositeDone(p.name, outcome, took)
	if dst, ok := ru.client.Value(outcomeKey{}).(*string); ok && dst != nil {
		*dst = outcome
	}
	if outcome == metrics.CompositeCanceled {
		return // nobody is left to read it
	}
	if failed && !a.coreSent {
		a.fail()
		p.metrics.CompositeFirstSegment(p.name, took)
		return
	}
	if a.format == single {
		a.w.Header().Set("Content-Type", ContentTypeJSON)
		a.w.WriteHeader(http.StatusOK)
		all := make([]int, len(p.nodes))
		for i := range all {
			all[i] = i
		}
		var b bytes.Buffer
		a.object(&b, all, nil)
		b.WriteByte('\n')
		_, _ = a.w.Write(b.Bytes())
		p.metrics.CompositeFirstSegment(p.name, took)
		return
	}
	a.end(took)
}

// fail answers a composite that failed before any of it was sent.
func (a *answer) fail() {
	ru, p := a.ru, a.ru.p
	code, msg, node := http.StatusGatewayTimeout, "", ""
	if ru.failed >= 0 {
		res := ru.results[ru.failed]
		node = p.nodes[ru.failed].name
		code = res.httpCode
		msg = "critical node " + strconv.Quote(node) + " failed: " + res.err
	} else {
		msg = "the composite's deadline (" + p.deadline.String() + ") passed before its critical nodes were done"
		for i, n := range p.nodes {
			if n.critical && !a.processed(i) || n.critical && !ru.results[i].state.available() {
				node = n.name
				break
			}
		}
	}
	if code == 0 {
		code = http.StatusBadGateway
	}
	var b bytes.Buffer
	b.WriteString(`{"error":`)
	writeString(&b, msg)
	b.WriteString(`,"node":`)
	writeString(&b, node)
	b.WriteString(`,"_status":`)
	a.status(&b, a.all())
	b.WriteString("}\n")
	h := a.w.Header()
	h.Set("Content-Type", ContentTypeJSON)
	h.Set("X-Watertight-Reason", ReasonFailed)
	a.w.WriteHeader(code)
	_, _ = a.w.Write(b.Bytes())
}

// end sends the nodes never called (the composite's time ran out) and the
// segment that tells the client it has everything.
func (a *answer) end(took time.Duration) {
	ru, p := a.ru, a.ru.p
	var rest []int
	for i := range p.nodes {
		if !a.sent[i] {
			rest = append(rest, i)
			a.sent[i] = true
		}
	}
	var b bytes.Buffer
	a.segments++
	b.WriteString(`{"segment":`)
	b.WriteString(strconv.Itoa(a.segments))
	b.WriteString(`,"kind":"end","segments":`)
	b.WriteString(strconv.Itoa(a.segments))
	for _, st := range []state{stOK, stDegraded, stFailed, stSkipped, stCanceled} {
		b.WriteString(`,"` + st.String() + `":[`)
		first := true
		for i, n := range p.nodes {
			if ru.results[i].state == st {
				if !first {
					b.WriteByte(',')
				}
				first = false
				writeString(&b, n.name)
			}
		}
		b.WriteByte(']')
	}
	b.WriteString(`,"ms":`)
	b.WriteString(ms(took))
	if len(rest) > 0 {
		b.WriteString(`,"nodes":`)
		a.nodesObject(&b, rest)
		b.WriteString(`,"_status":`)
		a.status(&b, rest)
	}
	b.WriteByte('}')
	a.write("end", b.Bytes())
}

func (a *answer) all() []int {
	var out []int
	for i := range a.ru.p.nodes {
		if a.processed(i) {
			out = append(out, i)
		}
	}
	return out
}

// segment is a core or node segment: {"segment":N,"kind":K,"nodes":{...},"_status":{...}}.
func (a *answer) segment(kind string, nodes []int) []byte {
	a.segments++
	var b bytes.Buffer
	b.WriteString(`{"segment":`)
	b.WriteString(strconv.Itoa(a.segments))
	b.WriteString(`,"kind":"` + kind + `"`)
	if kind == "node" && len(nodes) == 1 {
		b.WriteString(`,"node":`)
		writeString(&b, a.ru.p.nodes[nodes[0]].name)
	}
	b.WriteString(`,"nodes":`)
	a.nodesObject(&b, nodes)
	b.WriteString(`,"_status":`)
	a.status(&b, nodes)
	b.WriteByte('}')
	return b.Bytes()
}

// object is the single answer: {"node": value, ..., "_status": {...}}.
func (a *answer) object(b *bytes.Buffer, nodes []int, _ []int) {
	b.WriteByte('{')
	for _, i := range nodes {
		writeString(b, a.ru.p.nodes[i].name)
		b.WriteByte(':')
		b.Write(a.ru.results[i].value())
		b.WriteByte(',')
	}
	b.WriteString(`"_status":`)
	a.status(b, nodes)
	b.WriteByte('}')
}

func (a *answer) nodesObject(b *bytes.Buffer, nodes []int) {
	b.WriteByte('{')
	for k, i := range nodes {
		if k > 0 {
			b.WriteByte(',')
		}
		writeString(b, a.ru.p.nodes[i].name)
		b.WriteByte(':')
		b.Write(a.ru.results[i].value())
	}
	b.WriteByte('}')
}

// status is {"node": {"result": ..., "status": ..., "ms": ..., "error": ..., "cause": ...}, ...}.
func (a *answer) status(b *bytes.Buffer, nodes []int) {
	b.WriteByte('{')
	for k, i := range nodes {
		res := &a.ru.results[i]
		if k > 0 {
			b.WriteByte(',')
		}
		writeString(b, a.ru.p.nodes[i].name)
		b.WriteString(`:{"result":"` + res.state.String() + `"`)
		if res.status != 0 {
			b.WriteString(`,"status":` + strconv.Itoa(res.status))
		}
		if res.started {
			b.WriteString(`,"ms":` + ms(res.took))
		}
		if res.cause != "" {
			b.WriteString(`,"cause":`)
			writeString(b, res.cause)
		}
		if res.err != "" {
			b.WriteString(`,"error":`)
			writeString(b, res.err)
		}
		if a.ru.p.nodes[i].critical {
			b.WriteString(`,"critical":true`)
		}
		b.WriteByte('}')
	}
	b.WriteByte('}')
}

// write sends one segment and flushes it.
func (a *answer) write(event string, seg []byte) {
	var b bytes.Buffer
	if a.format == sse {
		b.WriteString("event: " + event + "\ndata: ")
		b.Write(seg)
		b.WriteString("\n\n")
	} else {
		b.Write(seg)
		b.WriteByte('\n')
	}
	_, _ = a.w.Write(b.Bytes())
	_ = http.NewResponseController(a.w).Flush()
}

// value is the node's JSON in the answer: its answer (or its upstream's
// fallback), or null.
func (r *result) value() []byte {
	if r.out == nil || !r.state.available() {
		return []byte("null")
	}
	return r.out
}

func writeString(b *bytes.Buffer, s string) {
	j, _ := json.Marshal(s)
	b.Write(j)
}

func ms(d time.Duration) string {
	return strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', -1, 64)
}
