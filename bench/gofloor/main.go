// Command gofloor answers one question of issue 7: is Go itself the floor
// under the sidecar's HTTP/1.1 throughput, or is it what the sidecar does on
// top of Go? It is the least a Go HTTP/1.1 proxy can do per request on this
// machine, in two steps:
//
//   - -mode raw: one goroutine per client connection with its own upstream
//     connection; it reads the request head up to the blank line, writes it
//     upstream, reads the answer head and Content-Length bytes of body, and
//     writes them back in one write. No header maps, no http.Request, no
//     allocation per request once the buffers have grown. What is left is the
//     loopback syscalls and Go's netpoller: the floor for any Go proxy.
//   - -mode std: the same loop, but the request and answer go through the
//     standard library's wire code (http.ReadRequest, Request.Write,
//     http.ReadResponse, Response.Write). It measures what parsing into
//     net/http's types costs, without net/http's server, ReverseProxy or
//     anything of Watertight's.
//   - -mode srv: net/http's server, and a handler that sends the request it
//     was given through the sidecar's own HTTP/1.1 client (proxy/h1conn) and
//     copies the answer back. What the server costs over -mode std.
//   - -mode rp: the same with httputil.ReverseProxy as the handler, still on
//     h1conn. What ReverseProxy costs over -mode srv; what Watertight costs
//     over this is routing, compartments and metrics.
//   - -mode h2c: raw mode for h2c clients (h2c.go), the row where nginx's
//     h2c port passes requests to an HTTP/1.1 upstream.
//
// It is a measuring tool, not a proxy: raw mode forwards only what the
// benchmark sends (requests without a body, answers with a Content-Length)
// and drops the connection on anything else, so nothing is ever forwarded
// wrong. It is hand-written because no library is "the least Go can do".
package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:18097", "listen address")
	upstream := flag.String("upstream", "127.0.0.1:18080", "upstream host:port")
	mode := flag.String("mode", "raw", "raw (bytes only), std (net/http's wire code), srv (net/http's server + h1conn), rp (ReverseProxy + h1conn) or h2c (h2c clients, bytes only)")
	flag.Parse()

	fwd, loop := modes[*mode]
	h, server := handlers[*mode]
	if !loop && !server {
		fmt.Fprintf(os.Stderr, "gofloor: -mode %q: want raw, std, srv, rp or h2c\n", *mode)
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		slog.Error("listening", "addr", *addr, "err", err)
		os.Exit(1)
	}
	if server {
		err = newServer(h(*upstream)).Serve(ln)
	} else {
		err = serve(ln, *upstream, fwd)
	}
	slog.Error("serving", "err", err)
	os.Exit(1)
}

// A forwarder carries requests from client to upstream until either ends.
type forwarder func(client, upstream net.Conn) error

var modes = map[string]forwarder{"raw": forwardRaw, "std": forwardStd, "h2c": forwardH2C}

// serve accepts until ln is closed and gives each client its own upstream
// connection, dialled when the client connects.
func serve(ln net.Listener, upstream string, fwd forwarder) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			return fmt.Errorf("accepting: %w", err)
		}
		go func() {
			defer c.Close()
			u, err := net.Dial("tcp", upstream)
			if err != nil {
				slog.Warn("dialling the upstream", "upstream", upstream, "err", err)
				return
			}
			defer u.Close()
			if err := fwd(c, u); err != nil && !errors.Is(err, io.EOF) {
				slog.Debug("connection ended", "err", err)
			}
		}()
	}
}

var errUnsupported = errors.New("not what the benchmark sends")

func forwardRaw(client, upstream net.Conn) error {
	cr, ur := bufio.NewReaderSize(client, 16<<10), bufio.NewReaderSize(upstream, 16<<10)
	var req, resp []byte
	for {
		var err error
		if req, err = readHead(cr, req[:0]); err != nil {
			return fmt.Errorf("reading the request head: %w", err)
		}
		if n, ok := contentLength(req); !ok || n != 0 || hasHeader(req, "transfer-encoding") {
			return fmt.Errorf("request with a body: %w", errUnsupported)
		}
		if _, err := upstream.Write(req); err != nil {
			return fmt.Errorf("writing the request: %w", err)
		}
		if resp, err = readHead(ur, resp[:0]); err != nil {
			return fmt.Errorf("reading the answer head: %w", err)
		}
		n, ok := contentLength(resp)
		if !ok || n < 0 || hasHeader(resp, "transfer-encoding") {
			return fmt.Errorf("answer without a Content-Length: %w", errUnsupported)
		}
		head := len(resp)
		resp = append(resp, make([]byte, n)...) // grows once, then reuses
		if _, err := io.ReadFull(ur, resp[head:]); err != nil {
			return fmt.Errorf("reading the answer body: %w", err)
		}
		if _, err := client.Write(resp); err != nil {
			return fmt.Errorf("writing the answer: %w", err)
		}
	}
}

func forwardStd(client, upstream net.Conn) error {
	cr, ur := bufio.NewReaderSize(client, 16<<10), bufio.NewReaderSize(upstream, 16<<10)
	cw, uw := bufio.NewWriterSize(client, 16<<10), bufio.NewWriterSize(upstream, 16<<10)
	for {
		req, err := http.ReadRequest(cr)
		if err != nil {
			return fmt.Errorf("reading the request: %w", err)
		}
		if err := req.Write(uw); err != nil {
			return fmt.Errorf("writing the request: %w", err)
		}
		if err := uw.Flush(); err != nil {
			return fmt.Errorf("writing the request: %w", err)
		}
		resp, err := http.ReadResponse(ur, req)
		if err != nil {
			return fmt.Errorf("reading the answer: %w", err)
		}
		err = resp.Write(cw)
		resp.Body.Close()
		if err != nil {
			return fmt.Errorf("writing the answer: %w", err)
		}
		if err := cw.Flush(); err != nil {
			return fmt.Errorf("writing the answer: %w", err)
		}
	}
}

// maxHead bounds a head as net/http's server does by default (1 MiB).
const maxHead = 1 << 20

// readHead appends lines from r to buf up to and including the blank line.
func readHead(r *bufio.Reader, buf []byte) ([]byte, error) {
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			if errors.Is(err, io.EOF) && len(buf) == 0 && len(line) == 0 {
				return nil, io.EOF // the peer closed between requests
			}
			return nil, err
		}
		buf = append(buf, line...)
		if len(buf) > maxHead {
			return nil, errors.New("head over 1 MiB")
		}
		if len(line) == 1 || len(line) == 2 && line[0] == '\r' { // "\n" or "\r\n": the blank line
			return buf, nil
		}
	}
}

// contentLength returns the head's Content-Length (0 when there is none) and
// false when it is repeated or not a number.
func contentLength(head []byte) (int, bool) {
	v, n := header(head, "content-length")
	switch n {
	case 0:
		return 0, true
	case 1:
		cl, err := strconv.Atoi(string(v)) // no allocation: the compiler elides the copy
		return cl, err == nil
	}
	return 0, false
}

func hasHeader(head []byte, name string) bool {
	_, n := header(head, name)
	return n > 0
}

// header finds the header named name (lower case) in head without
// allocating, and returns its trimmed value and how many times it occurs.
func header(head []byte, name string) ([]byte, int) {
	var value []byte
	count := 0
	lines := head
	if i := bytes.IndexByte(lines, '\n'); i >= 0 {
		lines = lines[i+1:] // past the request or status line
	}
	for len(lines) > 0 {
		line := lines
		if i := bytes.IndexByte(lines, '\n'); i >= 0 {
			line, lines = lines[:i], lines[i+1:]
		} else {
			lines = nil
		}
		colon := bytes.IndexByte(line, ':')
		if colon == len(name) && asciiEqualFold(line[:colon], name) {
			value = bytes.TrimSpace(line[colon+1:])
			count++
		}
	}
	return value, count
}

func asciiEqualFold(b []byte, lower string) bool {
	for i := range b {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}
