package h1serve

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// FuzzAnswerAgainstNetHTTP fuzzes the answer side: the input is a handler
// program (see decodeProgram), run behind the loop and behind net/http's
// server (startPair) on the same request, followed by a pipelined probe
// request whose answer shows whether the connection was kept. The normalised
// answers (normaliseAnswers: header order, chunk sizes and Date values do
// not count) must be equal, and so must what the handler itself saw: what
// Write, Flush, WriteHeader and the request body's Read returned to it.
//
// No program is skipped. What net/http's server logs and carries on from
// (a superfluous WriteHeader, an invalid Content-Length, a Content-Length
// with a Transfer-Encoding) is deterministic in what it sends, so it is
// compared; only the log is silenced. WriteHeader with a code outside
// 100–999 panics in both servers before any state changes: the program
// recovers and goes on (a panic leaving the handler is opAbort's). After
// opAbort only the heads and that the body is cut are compared, not where
// it is cut, which depends on each server's buffers.
//
//	go test ./proxy/h1serve/ -run x -fuzz FuzzAnswerAgainstNetHTTP -parallel 2
func FuzzAnswerAgainstNetHTTP(f *testing.F) {
	for _, seed := range []answerSeed{
		// Trailers: announced, and by prefix after a flush.
		{reqGET, []byte{opSet, vTrailerT1T2, opWriteHeader, st200, opWrite, w100Text, opSet, vXT1, opSet, vXT2}},
		{reqGET, []byte{opWrite, w100HTML, opFlush, 0, opSet, vLate}},
		// A body written on a 304 and a 204.
		{reqGET, []byte{opSet, vTypeText, opWriteHeader, st304, opWrite, w100Text}},
		{reqGET, []byte{opSet, vCLRight, opWriteHeader, st204, opWrite, w1Text, opFlush, 0}},
		// A wrong Content-Length: too long, too short, garbage.
		{reqGET, []byte{opSet, vCLWrong, opWrite, w100Text}},
		{reqGET, []byte{opSet, vCLSmall, opWrite, w100Text, opWrite, w1Text}},
		{reqGET, []byte{opSet, vCLGarbage, opWrite, w3000Bin}},
		// HEAD with a body, short and long.
		{reqHEAD, []byte{opWrite, w100HTML}},
		{reqHEAD, []byte{opWrite, w3000Text, opWrite, w100Text}},
		// 1xx before the final answer.
		{reqGET, []byte{opSet, vXASpaces, opWriteHeader, st103, opDel, dXA, opWriteHeader, st100, opWrite, w1Text}},
		// The request body, read in part, around a flush.
		{reqPOST, []byte{opRead, rPart, opWrite, w3000Text, opRead, rAll}},
		// Framing asked for by the handler.
		{reqGET, []byte{opSet, vTEIdentity, opWrite, w100Text}},
		{reqGET, []byte{opSet, vConnClose, opWrite, w70000Text, opAbort, 0}},
	} {
		f.Add(append([]byte{seed.req}, seed.prog...))
	}
	tr := &answerTraces{m: map[string][]string{}}
	p := startPair(f, http.HandlerFunc(tr.serve), func(s *Server) {
		// net/http's server logs what it makes of a handler's mistakes
		// (superfluous WriteHeader, bad Content-Length): only noise here.
		s.HTTPServer.ErrorLog = log.New(io.Discard, "", 0)
	})
	f.Fuzz(func(t *testing.T, in []byte) {
		in = in[:min(len(in), 1+2*maxOps)] // the rest would not be run
		req, prog := decodeProgram(in)
		if why := prog.knownDifference(req); why != "" {
			t.Skip(why)
		}
		raw := req.raw(in)
		want := answerExchange(t, p.std, raw)
		got := answerExchange(t, p.fast, raw)
		wantSaw, gotSaw := tr.take(p.std), tr.take(p.fast)
		if prog.aborts() {
			// Where an aborted answer is cut depends on how much each
			// server had buffered: only what got out before the body
			// (status line, header) counts. Not even that the body is cut:
			// the loop sends all it committed, net/http's server keeps up
			// to 2 KiB back, so a body written whole just before the abort
			// can arrive whole from the loop. (An abort from relay or
			// ReverseProxy comes from an answer that broke off: it is cut
			// either way.)
			want, got = withoutBodies(want), withoutBodies(got)
		}
		if got != want {
			t.Errorf("%s program %s\nh1serve answered\n%s\nnet/http answered\n%s\nhandler saw, h1serve: %q\nhandler saw, net/http: %q",
				req, prog, shorten(got), shorten(want), gotSaw, wantSaw)
		}
		if gotSaw != wantSaw {
			t.Errorf("%s program %s\nthe handler saw, under h1serve: %q\nand under net/http: %q", req, prog, gotSaw, wantSaw)
		}
	})
}

type answerSeed struct {
	req  byte
	prog []byte
}

// The fuzz input's first byte picks the request, and each two bytes after it
// one operation of the handler: an opcode and its argument. These constants
// name a few of them for the seeds.
const (
	reqGET, reqHEAD, reqPOST = 0, 1, 2

	opSet, opAdd, opDel, opWriteHeader, opWrite, opFlush, opRead, opReturn, opAbort = 0, 1, 2, 3, 4, 5, 6, 7, 8
	numOps                                                                          = 9

	// Arguments of opSet and opAdd (indexes in headerValues).
	vTypeText, vCLRight, vCLWrong, vCLSmall, vCLGarbage, vTEIdentity = 0, 3, 4, 5, 6, 10
	vTrailerT1T2, vConnClose, vXASpaces, vXT1, vXT2, vLate           = 14, 16, 21, 28, 29, 30
	// Arguments of opDel (indexes in headerNames).
	dXA = 7
	// Arguments of opWriteHeader (indexes in statuses).
	st200, st204, st304, st103, st100 = 0, 2, 4, 8, 9
	// Arguments of opWrite: size + len(writeSizes)*kind.
	w1Text, w100Text, w3000Text, w70000Text = 1, 2, 3, 4
	w100HTML, w3000Bin                      = 2 + 5, 3 + 10
	// Arguments of opRead.
	rAll, rPart = 0, 1
)

// maxOps bounds a program.
const maxOps = 12

const answerBody = "hello"

type answerRequest byte

func (r answerRequest) String() string {
	return [...]string{"GET", "HEAD", "POST"}[r]
}

// raw is the request carrying the program in its path, then the probe.
func (r answerRequest) raw(in []byte) []byte {
	target := "/prog/" + hex.EncodeToString(in)
	var b bytes.Buffer
	switch r {
	case reqGET, reqHEAD:
		fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: a\r\n\r\n", r, target)
	case reqPOST:
		fmt.Fprintf(&b, "POST %s HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s", target, len(answerBody), answerBody)
	}
	b.WriteString("GET /probe HTTP/1.1\r\nHost: a\r\n\r\n")
	return b.Bytes()
}

type answerOp struct {
	code, arg byte
}

type answerProgram []answerOp

// decodeProgram reads the request and the program from the fuzz input.
// Every byte string decodes to something: opcodes and arguments are taken
// modulo the size of their table.
func decodeProgram(in []byte) (answerRequest, answerProgram) {
	if len(in) == 0 {
		return reqGET, nil
	}
	req := answerRequest(in[0] % 3)
	var prog answerProgram
	for i := 1; i+1 < len(in) && len(prog) < maxOps; i += 2 {
		prog = append(prog, answerOp{in[i] % numOps, in[i+1]})
	}
	return req, prog
}

// written is how many bytes the program's writes add up to: the "right"
// Content-Length (though not all of them may be accepted).
func (prog answerProgram) written() int {
	n := 0
	for _, op := range prog {
		if op.code == opWrite {
			n += writeSizes[int(op.arg)%len(writeSizes)]
		}
	}
	return n
}

// aborts says whether the program ends in panic(http.ErrAbortHandler).
func (prog answerProgram) aborts() bool {
	for _, op := range prog {
		switch op.code {
		case opReturn:
			return false
		case opAbort:
			return true
		}
	}
	return false
}

// knownDifference names a way the loop answers differently from net/http's
// server on purpose, if the program reaches one. None of them can come from
// the sidecar's own handlers: they strip Transfer-Encoding and Connection
// from an upstream's answer (hop-by-hop), h1conn refuses an answer with an
// invalid Content-Length, and relay reads a request body before it answers.
// Each has its seed in testdata/fuzz/FuzzAnswerAgainstNetHTTP (d04, d05*,
// d11*, d15*), which now ends in this skip.
func (prog answerProgram) knownDifference(req answerRequest) string {
	answered := false
	for _, op := range prog {
		switch op.code {
		case opSet, opAdd:
			switch v := headerValues[int(op.arg)%len(headerValues)]; {
			case v.name == "Transfer-Encoding":
				return "the framing is the loop's to choose; net/http's server honours a Transfer-Encoding the handler sets"
			case v.name == "Connection" && (op.code == opAdd || v.value != "close" && v.value != "keep-alive"):
				return "the loop closes on any close token; net/http's server only on a first Connection value of close exactly"
			case v.name == "Content-Length" && (v.value == "x1" || v.value == "-1"):
				return "the loop drops an invalid Content-Length; net/http's server sends it on a HEAD answer"
			}
		case opWrite, opFlush:
			answered = true
		case opRead:
			if req == reqPOST && answered {
				return "the loop lets a handler read its body after answering (always full duplex); net/http's server closes it"
			}
		case opReturn, opAbort:
			return ""
		}
	}
	return ""
}

// withoutBodies drops the body lines of normalised answers.
func withoutBodies(s string) string {
	var b strings.Builder
	for line := range strings.Lines(s) {
		if !strings.HasPrefix(line, `body "`) && !strings.HasPrefix(line, "body error") {
			b.WriteString(line)
		}
	}
	return b.String()
}

// headerValue is a header the program can set or add; nilValue makes it
// present without values, which suppresses Content-Type sniffing and Date.
type headerValue struct {
	name, value string
	nilValue    bool
}

// These Content-Length values stand for lengths computed from the program:
// the program's writes' total, more, and half.
const (
	clRight = "\x00right"
	clWrong = "\x00wrong"
	clSmall = "\x00small"
)

var headerValues = []headerValue{
	{name: "Content-Type", value: "text/plain"}, // 0
	{name: "Content-Type", value: ""},
	{name: "Content-Type", nilValue: true},
	{name: "Content-Length", value: clRight}, // 3
	{name: "Content-Length", value: clWrong},
	{name: "Content-Length", value: clSmall},
	{name: "Content-Length", value: "x1"},
	{name: "Content-Length", value: "-1"},
	{name: "Content-Length", value: "0"},
	{name: "Transfer-Encoding", value: "chunked"}, // 9
	{name: "Transfer-Encoding", value: "identity"},
	{name: "Transfer-Encoding", value: "gzip"},
	{name: "Content-Encoding", value: "gzip"}, // 12
	{name: "Trailer", value: "X-T1"},
	{name: "Trailer", value: "X-T1, X-T2"},
	{name: "Trailer", value: "Content-Length"},
	{name: "Connection", value: "close"}, // 16
	{name: "Connection", value: "keep-alive"},
	{name: "Connection", value: "Close"},
	{name: "Connection", value: "keep-alive, close"},
	{name: "Date", value: fixedDate}, // 20
	{name: "X-A", value: "a b  c"},   // 21
	{name: "X-A", value: "  padded\t"},
	{name: "X-A", value: "tab\tinside"},
	{name: "X-A", value: "\u00a0nbsp\u0085"},
	{name: "X-A", value: "line\r\nX-Injected: 1"},
	{name: "X-A", value: ""},
	{name: "X Bad", value: "invalid name"},
	{name: "X-T1", value: "t1"}, // 28
	{name: "X-T2", value: "t2"},
	{name: http.TrailerPrefix + "X-Late", value: "late"}, // 30
	{name: "Etag", value: `"e"`},
	{name: "Date", nilValue: true},
	{name: "Content-Range", value: "bytes 0-4/10"},
	{name: "Trailer", value: "Content-Type"}, // forbidden as a trailer, but the client takes it
}

const fixedDate = "Mon, 02 Jan 2006 15:04:05 GMT"

var headerNames = []string{
	"Content-Type", "Content-Length", "Transfer-Encoding", "Content-Encoding", "Trailer", "Connection", "Date",
	"X-A", "X-T1", "X-T2", http.TrailerPrefix + "X-Late", "X Bad",
}

// statuses include codes WriteHeader refuses with a panic, in both servers
// alike: the program recovers it and goes on.
var statuses = []int{200, 201, 204, 206, 304, 400, 404, 500, 103, 100, 199, 101, 999, 299, 600, 99, 1000, 0}

var writeSizes = []int{0, 1, 100, 3000, 70000}

var writeKinds = []string{"text", "html", "binary"}

func writeContent(size, kind int) []byte {
	var pattern string
	switch kind {
	case 0:
		pattern = "hello world "
	case 1:
		pattern = "<!DOCTYPE HTML><html><body>" + strings.Repeat("x", 60)
	default:
		pattern = "\x00\x01\x02\x03\xfe\xff"
	}
	return []byte(strings.Repeat(pattern, size/len(pattern)+1)[:size])
}

func (prog answerProgram) String() string {
	var parts []string
	for _, op := range prog {
		parts = append(parts, op.String())
		if op.code == opReturn || op.code == opAbort {
			break
		}
	}
	return "[" + strings.Join(parts, "; ") + "]"
}

func (op answerOp) String() string {
	a := int(op.arg)
	switch op.code {
	case opSet, opAdd:
		v := headerValues[a%len(headerValues)]
		verb := map[byte]string{opSet: "Set", opAdd: "Add"}[op.code]
		if v.nilValue {
			return fmt.Sprintf("Header()[%q] = nil", v.name)
		}
		return fmt.Sprintf("%s(%q, %q)", verb, v.name, strings.TrimPrefix(v.value, "\x00"))
	case opDel:
		return fmt.Sprintf("Del(%q)", headerNames[a%len(headerNames)])
	case opWriteHeader:
		return fmt.Sprintf("WriteHeader(%d)", statuses[a%len(statuses)])
	case opWrite:
		return fmt.Sprintf("Write(%d %s)", writeSizes[a%len(writeSizes)], writeKinds[a/len(writeSizes)%len(writeKinds)])
	case opFlush:
		return "Flush"
	case opRead:
		return [...]string{"ReadAll(Body)", "Read(Body, 2)"}[a%2]
	case opReturn:
		return "return"
	default:
		return "panic(ErrAbortHandler)"
	}
}

// answerTraces holds what the handler saw, per server (by local address).
type answerTraces struct {
	mu sync.Mutex
	m  map[string][]string
}

func (tr *answerTraces) take(addr string) string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	s := strings.Join(tr.m[addr], "; ")
	delete(tr.m, addr)
	return s
}

// serve runs the program in the request's path.
func (tr *answerTraces) serve(w http.ResponseWriter, r *http.Request) {
	in, err := hex.DecodeString(strings.TrimPrefix(r.URL.Path, "/prog/"))
	if err != nil || !strings.HasPrefix(r.URL.Path, "/prog/") {
		io.WriteString(w, "probe")
		return
	}
	var saw []string
	defer func() {
		tr.mu.Lock()
		tr.m[r.Context().Value(http.LocalAddrContextKey).(net.Addr).String()] = saw
		tr.mu.Unlock()
	}()
	_, prog := decodeProgram(in)
	right := prog.written()
	for _, op := range prog {
		a := int(op.arg)
		switch op.code {
		case opSet, opAdd:
			v := headerValues[a%len(headerValues)]
			if v.nilValue {
				w.Header()[v.name] = nil
				continue
			}
			value := v.value
			switch value {
			case clRight:
				value = strconv.Itoa(right)
			case clWrong:
				value = strconv.Itoa(right + 10)
			case clSmall:
				value = strconv.Itoa(right / 2)
			}
			if op.code == opSet {
				w.Header().Set(v.name, value)
			} else {
				w.Header().Add(v.name, value)
			}
		case opDel:
			w.Header().Del(headerNames[a%len(headerNames)])
		case opWriteHeader:
			// Both servers panic on a code outside 100–999, before
			// changing any state. A panic leaving the handler is covered
			// by opAbort; recovering here lets the program go on, so
			// what follows a refused code is compared too.
			code := statuses[a%len(statuses)]
			func() {
				defer func() {
					if v := recover(); v != nil {
						saw = append(saw, fmt.Sprintf("WriteHeader(%d) panicked: %v", code, v))
					}
				}()
				w.WriteHeader(code)
			}()
		case opWrite:
			size, kind := writeSizes[a%len(writeSizes)], a/len(writeSizes)%len(writeKinds)
			n, err := w.Write(writeContent(size, kind))
			saw = append(saw, fmt.Sprintf("Write(%d) = %d, %v", size, n, err))
		case opFlush:
			saw = append(saw, fmt.Sprintf("Flush = %v", http.NewResponseController(w).Flush()))
		case opRead:
			var b []byte
			var err error
			if a%2 == 0 {
				b, err = io.ReadAll(r.Body)
			} else {
				b = make([]byte, 2)
				var n int
				n, err = io.ReadFull(r.Body, b)
				b = b[:n]
			}
			saw = append(saw, fmt.Sprintf("read %q, %v", b, err))
		case opReturn:
			return
		case opAbort:
			saw = append(saw, "abort")
			panic(http.ErrAbortHandler)
		}
	}
}

// answerExchange is rawExchange, adding whether each answer carried Date
// fields and which (normalise leaves Date out, as its value differs from one
// second to the next).
func answerExchange(t *testing.T, addr string, raw []byte) string {
	out := sendRaw(t, addr, raw)
	var dates []string
	for line := range bytes.Lines(out) {
		if v, ok := bytes.CutPrefix(line, []byte("Date:")); ok {
			if string(bytes.TrimSpace(v)) == fixedDate {
				dates = append(dates, "fixed")
			} else {
				dates = append(dates, "now")
			}
		}
	}
	return normaliseAnswers(raw, out) + fmt.Sprintf("Date fields %v\n", dates)
}

// normaliseAnswers is normalise with two changes. An informational (1xx)
// answer comes before the final answer to the same request, so it does not
// move on to the next request's method (which says whether an answer has a
// body). And a head net/http's client refuses (a field it cannot parse, an
// unsupported Transfer-Encoding, a forbidden trailer) is read again without
// the fields in the way, which are listed: otherwise the rest of the bytes
// would be compared raw, with header order and chunk sizes counting.
func normaliseAnswers(raw, out []byte) string {
	methods := requestMethods(raw)
	var b strings.Builder
	for i := 0; len(out) > 0; {
		method := http.MethodGet
		if i < len(methods) {
			method = methods[i]
		}
		desc, n, code, err := readAnswer(out, method)
		if err != nil {
			fmt.Fprintf(&b, "unparsed: %v, head %q\n", err, sortedHead(out))
			break
		}
		out = out[n:]
		if code < 100 || code > 199 || code == http.StatusSwitchingProtocols {
			i++
		}
		b.WriteString(desc)
	}
	return b.String()
}

// readAnswer reads the answer at the start of out, dropping the header lines
// the client refuses; it returns the answer's description, length and
// status.
func readAnswer(out []byte, method string) (string, int, int, error) {
	desc, n, code, err := describeAnswer(out, method)
	end := bytes.Index(out, []byte("\r\n\r\n"))
	if err == nil || end < 0 {
		return desc, n, code, err
	}
	head := strings.SplitAfter(string(out[:end+2]), "\r\n")
	head = head[:len(head)-1] // SplitAfter's empty last element
	var dropped []string
	for err != nil {
		kept := slices.DeleteFunc(slices.Clone(head), func(line string) bool {
			if refused(err, strings.TrimSpace(line)) {
				dropped = append(dropped, strings.TrimSpace(line))
				return true
			}
			return false
		})
		if len(kept) == len(head) {
			return "", 0, 0, err
		}
		head = kept
		buf := append([]byte(strings.Join(head, "")), out[end+2:]...)
		desc, n, code, err = describeAnswer(buf, method)
		n += len(out) - len(buf)
	}
	slices.Sort(dropped)
	return fmt.Sprintf("%sdropped for the client: %q\n", desc, dropped), n, code, nil
}

// refused says whether line is the one err, from http.ReadResponse, is
// about.
func refused(err error, line string) bool {
	msg := err.Error()
	quoted := ""
	if i := strings.Index(msg, `"`); i >= 0 {
		quoted, _ = strconv.Unquote(msg[i:])
	}
	name, value, _ := strings.Cut(line, ":")
	value = strings.TrimSpace(value)
	switch {
	case strings.Contains(msg, "malformed MIME header line"):
		return line == strings.TrimSpace(quoted)
	case strings.Contains(msg, "trailer key"), strings.Contains(msg, "Trailer key"):
		return strings.EqualFold(name, "Trailer") && strings.Contains(strings.ToLower(value), strings.ToLower(quoted))
	case strings.Contains(msg, "transfer encoding"):
		return strings.EqualFold(name, "Transfer-Encoding") && value != "chunked"
	case strings.Contains(msg, "Content-Length"):
		return strings.EqualFold(name, "Content-Length") && value == quoted
	}
	return false
}

// describeAnswer parses one answer at the start of out and reads its body.
func describeAnswer(out []byte, method string) (string, int, int, error) {
	r := bytes.NewReader(out)
	br := bufio.NewReader(r)
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		return "", 0, 0, err
	}
	desc := describe(resp)
	return desc, len(out) - r.Len() - br.Buffered(), resp.StatusCode, nil
}

// sortedHead is the head at the start of out, its fields sorted and without
// Date.
func sortedHead(out []byte) string {
	head, _, _ := bytes.Cut(out, []byte("\r\n\r\n"))
	lines := strings.Split(string(head), "\r\n")
	lines = slices.DeleteFunc(lines, func(l string) bool { return strings.HasPrefix(l, "Date:") })
	if len(lines) > 1 {
		slices.Sort(lines[1:])
	}
	return strings.Join(lines, "\r\n")
}

// shorten keeps a failure's message readable when bodies are long.
func shorten(s string) string {
	var b strings.Builder
	for line := range strings.Lines(s) {
		if len(line) > 400 {
			line = fmt.Sprintf("%s…(%d bytes)…%s", line[:200], len(line), line[len(line)-100:])
		}
		b.WriteString(line)
	}
	return b.String()
}
