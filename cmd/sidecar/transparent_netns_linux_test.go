package main

// The transparent mode end to end, for real: two network namespaces joined
// by a veth pair, "app" (the pod) and "up" (the rest of the cluster).
//
//	app 10.79.0.1, fd79::1                    up 10.79.0.2, fd79::2
//	  client (this process, root)  ──eth0──▶   :8080 HTTP, the upstream "backend"
//	  `sidecar iptables` (root)                :9090 HTTP, an excluded port
//	  `sidecar run` (UID 15337)                :8081 HTTP no upstream claims
//	    127.0.0.1:15001, [::1]:15001           :7000 TCP echo, no upstream
//	    admin 127.0.0.1:15000
//
// The client is a plain one: it dials the upstream's real address and knows
// nothing of the sidecar. The servers in "up" record what reached them:
// the Host, the sidecar's marks (x-request-timeout, which the sidecar sets
// on what it forwards through a compartment; x-watertight-passthrough, on
// what it passes through) and the peer address. A connection through the
// sidecar reaches the upstream from another source port than the client's
// own (the sidecar's connection), a direct one from the client's port.
//
// The processes are the real binary (this test binary re-executed, see
// TestMain): `sidecar iptables` through `ip netns exec` as root, `sidecar
// run` forked from a thread inside the app namespace with the credentials
// of UID 15337 (`ip netns exec` itself needs root).

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/watertight/watertight/internal/netnstest"
	"github.com/watertight/watertight/internal/testlog"
)

const (
	tpUpstreamPort = 8080 // the upstream "backend", by its endpoint (IPv4) and addresses (IPv6)
	tpExcludedPort = 9090 // --exclude-ports
	tpUnknownHTTP  = 8081 // HTTP to a destination no upstream has: passed through as HTTP
	tpEchoPort     = 7000 // not HTTP, no upstream: passed through as TCP
	tpProxyUID     = 15337
	tpAdmin        = "127.0.0.1:15000"
	// Generous: the sidecar is a race-enabled binary on a small, busy box.
	tpWait = 30 * time.Second
)

var (
	tpAppAddr4 = netip.MustParseAddr("10.79.0.1")
	tpUpAddr4  = netip.MustParseAddr("10.79.0.2")
	tpAppAddr6 = netip.MustParseAddr("fd79::1")
	tpUpAddr6  = netip.MustParseAddr("fd79::2")
)

func TestTransparentInNetns(t *testing.T) {
	requireNetnsTools(t)
	ipv6 := netnstest.HasIPv6()
	app, upNS := netnstest.New(t, "app"), netnstest.New(t, "up")
	appAddrs := []netip.Prefix{netip.PrefixFrom(tpAppAddr4, 24)}
	upAddrs := []netip.Prefix{netip.PrefixFrom(tpUpAddr4, 24)}
	if ipv6 {
		appAddrs = append(appAddrs, netip.PrefixFrom(tpAppAddr6, 64))
		upAddrs = append(upAddrs, netip.PrefixFrom(tpUpAddr6, 64))
	}
	netnstest.Link(t, app, upNS, appAddrs, upAddrs)
	up := startUpstreams(t, upNS)
	c := &appClient{ns: app}
	at := func(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }
	backend4, backend6 := at(tpUpAddr4, tpUpstreamPort), at(tpUpAddr6, tpUpstreamPort)

	// Before any rules, the client reaches the upstream directly.
	c.wantDirect(t, up, backend4, "/before")

	// Someone else's rules (the CNI's, say), which must survive us.
	// (--ipv6 auto installs IPv6 rules, as the app namespace has IPv6; on a
	// kernel without IPv6 there is no ip6tables nat table to look at.)
	flags := []string{"--proxy-port", "15001", "--proxy-uid", strconv.Itoa(tpProxyUID), "--exclude-ports", strconv.Itoa(tpExcludedPort)}
	tables, save := natTables, "iptables-save -c -t nat && echo '---- ipv6' && ip6tables-save -c -t nat"
	nsSh(t, app, "iptables -t nat -A OUTPUT -d 192.0.2.1/32 -p tcp -j RETURN")
	if ipv6 {
		nsSh(t, app, "ip6tables -t nat -A OUTPUT -d 2001:db8::1/128 -p tcp -j RETURN")
	} else {
		flags = append(flags, "--ipv6", "false")
		tables, save = "iptables-save -t nat", "iptables-save -c -t nat"
	}
	before := nsSh(t, app, tables)

	// The init container's step: the real command, in the app namespace.
	want := "ipv4: outbound TCP redirected to port 15001 (chain WATERTIGHT_OUTPUT)\n"
	if ipv6 {
		want += "ipv6: outbound TCP redirected to port 15001 (chain WATERTIGHT_OUTPUT)\n"
	}
	if out := sidecarIn(t, app, 0, append([]string{"iptables"}, flags...)...); out != want {
		t.Fatalf("sidecar iptables: %q, want %q", out, want)
	}
	dials4, dials6 := c.redirectable(4), c.redirectable(6)

	// The proxy, as UID 15337. REDIRECT sends IPv4 to 127.0.0.1 and IPv6 to
	// ::1, so there is a transparent listener on each (deploy/k8s's config
	// listens on 127.0.0.1:15001 only: an IPv6 pod's connections would be
	// redirected to a port nobody listens on, and refused).
	listeners := `  - {name: redirected, address: "127.0.0.1:15001", mode: transparent, accessLog: {sample: 1}}` + "\n"
	if ipv6 {
		listeners += `  - {name: redirected6, address: "[::1]:15001", mode: transparent, accessLog: {sample: 1}}` + "\n"
	}
	cfg := fmt.Sprintf(`unknownHosts: passthrough
passthroughConnections: 2
listeners:
%supstreams:
  - name: backend
    endpoints: [%q]
    addresses: [%q]
    timeout: 30s
    bulkhead: {maxConcurrent: 2, maxQueue: 0}
`, listeners, backend4, backend6)
	sc := startSidecarAs(t, app, tpProxyUID, cfg)
	sc.waitReady(t, c)
	m0 := c.scrape(t)
	if got := m0.value("watertight_bulkhead_limit", "upstream", "backend"); got != 2 {
		t.Errorf("watertight_bulkhead_limit{upstream=backend} = %v, want 2", got)
	}

	// The plain client calls the upstream's real IP: the sidecar serves it
	// (its mark reaches the upstream, from the sidecar's own connection),
	// while the client's socket still says it is connected to the upstream.
	c.wantThroughSidecar(t, up, backend4, "/via-sidecar", tpAppAddr4)
	if ipv6 { // mapped by `addresses`, forwarded to the IPv4 endpoint
		c.wantThroughSidecar(t, up, backend6, "/via-sidecar6", tpAppAddr4)
	}
	oks := map[bool]float64{true: 2, false: 1}[ipv6]

	// The bulkhead applies: two requests hang in the upstream and hold the
	// pool (maxConcurrent 2); the third is refused at once (maxQueue 0).
	type result struct {
		r   *response
		err error
	}
	hung := make(chan result, 2)
	for i := range 2 {
		go func() {
			r, err := c.get(fmt.Sprintf("http://%s/hang-%d", backend4, i))
			hung <- result{r, err}
		}()
	}
	for range 2 {
		select {
		case <-up.entered:
		case r := <-hung:
			t.Fatalf("a hanging request returned early: %+v %v; sidecar logs:\n%s", r.r, r.err, sc.logs())
		case <-time.After(tpWait):
			t.Fatalf("the hanging requests never reached the upstream; sidecar logs:\n%s", sc.logs())
		}
	}
	if got := c.scrape(t).value("watertight_bulkhead_active", "upstream", "backend"); got != 2 {
		t.Errorf("with two requests hanging: watertight_bulkhead_active{upstream=backend} = %v, want 2", got)
	}
	third := c.mustGet(t, fmt.Sprintf("http://%s/hang-2", backend4))
	if third.status != http.StatusServiceUnavailable || third.header.Get("X-Watertight-Reason") != "bulkhead_full" {
		t.Errorf("third request: %d, x-watertight-reason %q, want 503 bulkhead_full; body %q", third.status, third.header.Get("X-Watertight-Reason"), third.body)
	}
	if hits := up.hitsFor("/hang-2"); len(hits) != 0 {
		t.Errorf("the refused request reached the upstream: %+v", hits)
	}
	up.releaseHung()
	for range 2 {
		select {
		case r := <-hung:
			if r.err != nil || r.r.status != http.StatusOK {
				t.Errorf("hanging request: %+v, %v", r.r, r.err)
			}
		case <-time.After(tpWait):
			t.Fatal("the hanging requests did not finish after the upstream answered")
		}
	}
	for i := range 2 {
		path := fmt.Sprintf("/hang-%d", i)
		if hits := up.hitsFor(path); len(hits) != 1 || !marked(hits[0]) {
			t.Errorf("%s: the upstream saw %+v, want one request with the sidecar's x-request-timeout", path, hits)
		}
	}
	oks += 2
	// The slots are released just before the result is counted: wait for both.
	m := c.scrapeUntil(t, fmt.Sprintf("an empty pool, %v requests ok and 1 bulkhead_full", oks), func(m metricsText) bool {
		return m.value("watertight_bulkhead_active", "upstream", "backend") == 0 &&
			m.value("watertight_requests_total", "upstream", "backend", "result", "ok") == oks &&
			m.value("watertight_requests_total", "upstream", "backend", "result", "bulkhead_full") == 1
	})
	total := m.value("watertight_requests_total", "upstream", "backend")
	if total != oks+1 {
		t.Errorf("watertight_requests_total{upstream=backend}, all results: %v, want %v (every request once)", total, oks+1)
	}

	// An excluded port bypasses the sidecar: no marks, not counted.
	c.wantDirect(t, up, at(tpUpAddr4, tpExcludedPort), "/excluded")

	// HTTP to a destination no upstream has is passed through as HTTP
	// (unknownHosts: passthrough): marked as such, no compartment.
	r := c.mustGet(t, fmt.Sprintf("http://%s/unknown-http", at(tpUpAddr4, tpUnknownHTTP)))
	if hits := up.hitsFor("/unknown-http"); r.status != http.StatusOK || len(hits) != 1 || hits[0].passthrough != "1" || hits[0].timeout != "" || hits[0].peer == r.local {
		t.Errorf("HTTP to an unknown destination: %d %q; the upstream saw %+v (client at %s), want one request passed through by the sidecar", r.status, r.body, hits, r.local)
	}

	// Plain TCP to an unknown destination is passed through as TCP, at most
	// passthroughConnections (2) at a time to one destination.
	echo := at(tpUpAddr4, tpEchoPort)
	var held []net.Conn
	for i := range 2 {
		conn, peer, err := c.echo(echo, fmt.Sprintf("tcp-%d", i))
		if err != nil {
			t.Fatalf("passthrough TCP %d: %v; sidecar logs:\n%s", i, err, sc.logs())
		}
		held = append(held, conn)
		if peer.Addr() != tpAppAddr4 || peer == addrPortOf(conn.LocalAddr()) {
			t.Errorf("passthrough TCP %d: the echo server saw %s, the client is %s: want the sidecar's own connection", i, peer, conn.LocalAddr())
		}
	}
	// The sidecar closes the third (EOF, or a reset when it closes before
	// reading everything); a timeout would mean it held it.
	if conn, peer, err := c.echo(echo, "tcp-over-limit"); err == nil {
		conn.Close()
		t.Errorf("a third passthrough connection to %s was let through (echo server saw %s)", echo, peer)
	} else if !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("a third passthrough connection to %s: %v, want it closed by the sidecar", echo, err)
	}
	if n := up.echoConns.Load(); n != 2 {
		t.Errorf("the echo server accepted %d connections, want 2", n)
	}
	for _, conn := range held {
		conn.Close()
	}
	// Once those end, the destination has room again.
	deadline := time.Now().Add(tpWait)
	for {
		conn, _, err := c.echo(echo, "tcp-again")
		if err == nil {
			conn.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("passthrough to %s still refused after the held connections closed: %v", echo, err)
		}
		time.Sleep(20 * time.Millisecond) // polling the sidecar's release of the slots, with a deadline
	}

	if got := c.scrape(t).value("watertight_requests_total", "upstream", "backend"); got != total {
		t.Errorf("excluded and passed-through traffic was counted: watertight_requests_total{upstream=backend} %v, was %v", got, total)
	}

	// No loop. The sidecar's own connections took the UID RETURN, and
	// REDIRECT caught exactly the client's connections (had a sidecar
	// connection been redirected back to it, the count would be higher,
	// the request would reach the sidecar twice and the upstream never).
	counts, err := exec.Command("ip", "netns", "exec", app, "sh", "-ec", save).Output()
	if err != nil {
		t.Fatalf("iptables-save -c: %v", err)
	}
	v4, v6, _ := strings.Cut(string(counts), ipv6Mark)
	uidReturn := fmt.Sprintf("-A WATERTIGHT_OUTPUT -m owner --uid-owner %d -j RETURN", tpProxyUID)
	redirect := "-A WATERTIGHT_OUTPUT -p tcp -j REDIRECT --to-ports 15001"
	t.Logf("IPv4 nat counters: UID RETURN %d, REDIRECT %d (client connections %d)", packets(t, v4, uidReturn), packets(t, v4, redirect), c.redirectable(4)-dials4)
	if n := packets(t, v4, uidReturn); n == 0 {
		t.Errorf("no connection took the rule %q:\n%s", uidReturn, v4)
	}
	if n, want := packets(t, v4, redirect), c.redirectable(4)-dials4; n != want {
		t.Errorf("IPv4 REDIRECT caught %d connections, the client made %d:\n%s", n, want, v4)
	}
	if ipv6 {
		t.Logf("IPv6 nat counters: UID RETURN %d, REDIRECT %d (client connections %d)", packets(t, v6, uidReturn), packets(t, v6, redirect), c.redirectable(6)-dials6)
		if n, want := packets(t, v6, redirect), c.redirectable(6)-dials6; n != want {
			t.Errorf("IPv6 REDIRECT caught %d connections, the client made %d:\n%s", n, want, v6)
		}
		if n := packets(t, v6, uidReturn); n != 0 {
			t.Errorf("the sidecar made %d IPv6 connections; its only endpoint is IPv4:\n%s", n, v6)
		}
	}
	// The sidecar saw each request once, and never its own.
	access := sc.accessLog(t)
	wantAccess := map[string]string{"/via-sidecar": "redirected", "/hang-0": "redirected", "/hang-1": "redirected",
		"/hang-2": "redirected", "/unknown-http": "redirected"}
	if ipv6 {
		wantAccess["/via-sidecar6"] = "redirected6"
	}
	if n := lines(access); n != len(wantAccess) {
		t.Errorf("access log has %d lines, want %d (one per request sent through the sidecar):\n%s", n, len(wantAccess), sc.stdout.String())
	}
	for path, listener := range wantAccess {
		if got := access[path]; len(got) != 1 || got[0] != listener {
			t.Errorf("access log for %s: listeners %q, want one line from %q", path, got, listener)
		}
	}

	// --cleanup restores the table exactly, and the client goes direct again.
	want = "ipv4: removed chain WATERTIGHT_OUTPUT and its jump from nat OUTPUT\n"
	if ipv6 {
		want += "ipv6: removed chain WATERTIGHT_OUTPUT and its jump from nat OUTPUT\n"
	}
	if out := sidecarIn(t, app, 0, append([]string{"iptables", "--cleanup"}, flags...)...); out != want {
		t.Errorf("sidecar iptables --cleanup: %q, want %q", out, want)
	}
	if got := nsSh(t, app, tables); got != before {
		t.Errorf("after --cleanup:\n%s\nbefore:\n%s", got, before)
	}
	c.wantDirect(t, up, backend4, "/after")
	if ipv6 {
		c.wantDirect(t, up, backend6, "/after6")
	}
	if got := c.scrape(t).value("watertight_requests_total", "upstream", "backend"); got != total {
		t.Errorf("after --cleanup the sidecar still counted requests: %v, was %v", got, total)
	}
	sc.stop(t)
	if n := lines(sc.accessLog(t)); n != len(wantAccess) {
		t.Errorf("after --cleanup the sidecar still saw requests: %d access-log lines, was %d", n, len(wantAccess))
	}
	// Every request for the upstream reached it once: the sidecar's own
	// connections went to the upstream, not back to the sidecar.
	sent := []string{"/before", "/via-sidecar", "/hang-0", "/hang-1", "/after"}
	if ipv6 {
		sent = append(sent, "/via-sidecar6", "/after6")
	}
	if n := up.count(tpUpstreamPort); n != len(sent) {
		t.Errorf("the upstream got %d requests, the client sent it %d that were not refused (%s)", n, len(sent), strings.Join(sent, " "))
	}
}

func lines(access map[string][]string) (n int) {
	for _, ls := range access {
		n += len(ls)
	}
	return n
}

// marked: the request came through a compartment of the sidecar, which
// tells the upstream the time left.
func marked(h hit) bool {
	return regexp.MustCompile(`^[0-9]+ms$`).MatchString(h.timeout) && h.passthrough == ""
}

// wantDirect: a GET of path at dst reaches the upstream straight from the
// client: one request, unmarked, from the client's own address and port.
func (c *appClient) wantDirect(t *testing.T, up *upstreams, dst netip.AddrPort, path string) {
	t.Helper()
	r := c.mustGet(t, fmt.Sprintf("http://%s%s", dst, path))
	hits := up.hitsFor(path)
	if r.status != http.StatusOK || len(hits) != 1 || hits[0].timeout != "" || hits[0].passthrough != "" || hits[0].peer != r.local || r.remote != dst {
		t.Errorf("GET %s%s: %d %q; the upstream saw %+v; client %s → %s: want one unmarked request straight from the client", dst, path, r.status, r.body, hits, r.local, r.remote)
	}
}

// wantThroughSidecar: a GET of path at dst is served by the sidecar: the
// upstream sees one request with the sidecar's mark, from the sidecar's own
// connection (from src, another port than the client's), and the client's
// socket still says it is connected to dst.
func (c *appClient) wantThroughSidecar(t *testing.T, up *upstreams, dst netip.AddrPort, path string, src netip.Addr) {
	t.Helper()
	r := c.mustGet(t, fmt.Sprintf("http://%s%s", dst, path))
	hits := up.hitsFor(path)
	if r.status != http.StatusOK || len(hits) != 1 || !marked(hits[0]) || hits[0].host != dst.String() ||
		hits[0].peer.Addr() != src || hits[0].peer == r.local || r.remote != dst {
		t.Errorf("GET %s%s: %d %q; the upstream saw %+v; client %s → %s: want one request marked by the sidecar, from its own connection", dst, path, r.status, r.body, hits, r.local, r.remote)
	}
}

// packets is the packet counter of rule in `iptables-save -c` output: for
// the nat table, one packet per connection.
func packets(t *testing.T, save, rule string) int64 {
	t.Helper()
	for l := range strings.SplitSeq(save, "\n") {
		if counters, r, ok := strings.Cut(l, "] "); ok && r == rule && strings.HasPrefix(counters, "[") {
			n, err := strconv.ParseInt(strings.SplitN(counters[1:], ":", 2)[0], 10, 64)
			if err != nil {
				t.Fatalf("counters of %q: %v", l, err)
			}
			return n
		}
	}
	t.Fatalf("no rule %q in\n%s", rule, save)
	return 0
}

// ---- The upstream namespace: servers that record what reached them.

type hit struct {
	port        int
	path        string
	host        string
	timeout     string // x-request-timeout: set by the sidecar's compartment
	passthrough string // x-watertight-passthrough: set by the sidecar's passthrough
	peer        netip.AddrPort
}

func (h hit) String() string {
	return fmt.Sprintf("{port %d %s host %q x-request-timeout %q x-watertight-passthrough %q from %s}", h.port, h.path, h.host, h.timeout, h.passthrough, h.peer)
}

type upstreams struct {
	mu        sync.Mutex
	hits      []hit
	entered   chan string // a /hang request has arrived
	release   chan struct{}
	once      sync.Once
	echoConns atomic.Int64
}

func startUpstreams(t *testing.T, ns string) *upstreams {
	u := &upstreams{entered: make(chan string, 16), release: make(chan struct{})}
	for _, port := range []int{tpUpstreamPort, tpExcludedPort, tpUnknownHTTP} {
		ln := netnstest.Listen(t, ns, "tcp", fmt.Sprintf(":%d", port)) // dual-stack
		srv := &http.Server{Handler: u.handler(port), ReadHeaderTimeout: tpWait}
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = srv.Serve(ln)
		}()
		t.Cleanup(func() {
			_ = srv.Close()
			<-done
		})
	}
	ln := netnstest.Listen(t, ns, "tcp", fmt.Sprintf(":%d", tpEchoPort))
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.echoConns.Add(1)
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				peer := addrPortOf(c.RemoteAddr())
				s := bufio.NewScanner(c)
				for s.Scan() {
					if _, err := fmt.Fprintf(c, "%s %s\n", peer, s.Text()); err != nil {
						return
					}
				}
			})
		}
	})
	t.Cleanup(u.releaseHung) // first of these cleanups (they run last first)
	return u
}

func (u *upstreams) handler(port int) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		peer, _ := netip.ParseAddrPort(r.RemoteAddr)
		u.mu.Lock()
		u.hits = append(u.hits, hit{port: port, path: r.URL.Path, host: r.Host, timeout: r.Header.Get("X-Request-Timeout"),
			passthrough: r.Header.Get("X-Watertight-Passthrough"), peer: netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port())})
		u.mu.Unlock()
		if strings.HasPrefix(r.URL.Path, "/hang") {
			u.entered <- r.URL.Path
			select {
			case <-u.release:
			case <-r.Context().Done():
			}
		}
		fmt.Fprintf(w, "port %d: %s\n", port, r.URL.Path)
	})
}

func (u *upstreams) releaseHung() { u.once.Do(func() { close(u.release) }) }

// count is the number of requests the server on port got.
func (u *upstreams) count(port int) (n int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, h := range u.hits {
		if h.port == port {
			n++
		}
	}
	return n
}

func (u *upstreams) hitsFor(path string) []hit {
	u.mu.Lock()
	defer u.mu.Unlock()
	var out []hit
	for _, h := range u.hits {
		if h.path == path {
			out = append(out, h)
		}
	}
	return out
}

// ---- The app namespace: a plain client, as root.

type appClient struct {
	ns    string
	dials [2]atomic.Int64 // connections to addresses REDIRECT applies to, IPv4 and IPv6
}

// dial connects from the app namespace, counting the connections the rules
// redirect (not loopback, not the excluded port).
func (c *appClient) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if ap, err := netip.ParseAddrPort(addr); err == nil && !ap.Addr().IsLoopback() && ap.Port() != tpExcludedPort {
		c.dials[map[bool]int{true: 0, false: 1}[ap.Addr().Is4()]].Add(1)
	}
	return netnstest.DialContext(c.ns)(ctx, network, addr)
}

// redirectable is how many connections to addresses the rules redirect the
// client has made, of IP version v.
func (c *appClient) redirectable(v int) int64 { return c.dials[map[int]int{4: 0, 6: 1}[v]].Load() }

type response struct {
	status        int
	header        http.Header
	body          string
	local, remote netip.AddrPort // the client's socket: its address and the peer it believes it has
}

func (r *response) String() string {
	return fmt.Sprintf("{%d x-watertight-reason %q %q client %s → %s}", r.status, r.header.Get("X-Watertight-Reason"), r.body, r.local, r.remote)
}

// get does a GET on a connection of its own (so each request is one
// connection: counted, and seen from its own port).
func (c *appClient) get(url string) (*response, error) {
	var mu sync.Mutex
	r := &response{}
	tr := &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := c.dial(ctx, network, addr)
			if err == nil {
				mu.Lock()
				r.local, r.remote = addrPortOf(conn.LocalAddr()), addrPortOf(conn.RemoteAddr())
				mu.Unlock()
			}
			return conn, err
		},
	}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: tpWait}).Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	mu.Lock()
	defer mu.Unlock()
	r.status, r.header, r.body = resp.StatusCode, resp.Header, string(b)
	return r, err
}

func (c *appClient) mustGet(t *testing.T, url string) *response {
	t.Helper()
	r, err := c.get(url)
	if err != nil {
		t.Fatalf("GET %s from the app namespace: %v", url, err)
	}
	return r
}

// echo connects to dst, sends one line of plain (not HTTP) bytes, and
// returns the connection and the peer the echo server says it saw.
func (c *appClient) echo(dst netip.AddrPort, line string) (net.Conn, netip.AddrPort, error) {
	ctx, cancel := context.WithTimeout(context.Background(), tpWait)
	defer cancel()
	conn, err := c.dial(ctx, "tcp", dst.String())
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	fail := func(err error) (net.Conn, netip.AddrPort, error) {
		conn.Close()
		return nil, netip.AddrPort{}, err
	}
	if err := conn.SetDeadline(time.Now().Add(tpWait)); err != nil {
		return fail(err)
	}
	if _, err := fmt.Fprintf(conn, "\x00\x01%s\n", line); err != nil {
		return fail(err)
	}
	reply, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return fail(fmt.Errorf("no echo: %w", err))
	}
	peer, echoed, _ := strings.Cut(strings.TrimSuffix(reply, "\n"), " ")
	if echoed != "\x00\x01"+line {
		return fail(fmt.Errorf("echo %q, want %q", echoed, line))
	}
	p, err := netip.ParseAddrPort(peer)
	if err != nil {
		return fail(err)
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, p, nil
}

// metricsText is a Prometheus text exposition.
type metricsText string

var seriesLine = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$`)
var labelPair = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)

// value is the sum of the series of name whose labels include the given
// name, value pairs.
func (m metricsText) value(name string, labels ...string) float64 {
	var sum float64
	for l := range strings.SplitSeq(string(m), "\n") {
		g := seriesLine.FindStringSubmatch(l)
		if g == nil || g[1] != name {
			continue
		}
		have := map[string]string{}
		for _, p := range labelPair.FindAllStringSubmatch(g[2], -1) {
			have[p[1]] = p[2]
		}
		match := true
		for i := 0; i+1 < len(labels); i += 2 {
			match = match && have[labels[i]] == labels[i+1]
		}
		if v, err := strconv.ParseFloat(g[3], 64); match && err == nil {
			sum += v
		}
	}
	return sum
}

// scrape reads /metrics from inside the app namespace.
func (c *appClient) scrape(t *testing.T) metricsText {
	t.Helper()
	r := c.mustGet(t, "http://"+tpAdmin+"/metrics")
	if r.status != http.StatusOK {
		t.Fatalf("/metrics: %d %s", r.status, r.body)
	}
	return metricsText(r.body)
}

// scrapeUntil scrapes until ok (the metrics of a finished request may be
// written just after its response).
func (c *appClient) scrapeUntil(t *testing.T, what string, ok func(metricsText) bool) metricsText {
	t.Helper()
	deadline := time.Now().Add(tpWait)
	for {
		m := c.scrape(t)
		if ok(m) {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s; metrics:\n%s", tpWait, what, m)
		}
		time.Sleep(20 * time.Millisecond) // polling, with a deadline
	}
}

// ---- The sidecar process.

type sidecarProc struct {
	cmd            *exec.Cmd
	stdout, stderr testlog.Buffer
	exited         chan struct{}
	err            error // of Wait, once exited is closed
}

// startSidecarAs runs `sidecar run --config FILE --admin 127.0.0.1:15000`
// in ns as uid; it is killed when t ends unless stopped before.
func startSidecarAs(t *testing.T, ns string, uid uint32, cfg string) *sidecarProc {
	t.Helper()
	exe := netnstest.PublicExecutable(t)
	dir := filepath.Dir(exe)
	path := filepath.Join(dir, "sidecar.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &sidecarProc{exited: make(chan struct{})}
	p.cmd = exec.Command(exe, "run", "--config", path, "--admin", tpAdmin, "--log-level", "debug")
	p.cmd.Dir = dir
	// Race-enabled binaries sleep 1 s at exit unless told otherwise.
	p.cmd.Env = append(os.Environ(), "WATERTIGHT_TEST_MAIN=1", "GORACE="+os.Getenv("GORACE")+" atexit_sleep_ms=0")
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid, Groups: []uint32{}}}
	// Forked from a thread inside ns, the process starts there.
	if err := netnstest.In(ns, p.cmd.Start); err != nil {
		t.Fatalf("starting the sidecar in %s: %v", ns, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	})
	return p
}

func (p *sidecarProc) logs() string { return p.stderr.String() }

// waitReady polls /ready from inside the app namespace.
func (p *sidecarProc) waitReady(t *testing.T, c *appClient) {
	t.Helper()
	deadline := time.Now().Add(tpWait)
	for {
		r, err := c.get("http://" + tpAdmin + "/ready")
		if err == nil && r.status == http.StatusOK {
			return
		}
		select {
		case <-p.exited:
			t.Fatalf("the sidecar exited: %v; logs:\n%s", p.err, p.logs())
		case <-time.After(20 * time.Millisecond): // polling, with a deadline
		}
		if time.Now().After(deadline) {
			t.Fatalf("the sidecar was not ready after %v (last: %+v, %v); logs:\n%s", tpWait, r, err, p.logs())
		}
	}
}

// stop sends SIGTERM and wants a clean exit (a race report would make it 66).
func (p *sidecarProc) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.exited:
		if p.err != nil {
			t.Errorf("sidecar exit: %v; logs:\n%s", p.err, p.logs())
		}
	case <-time.After(tpWait):
		t.Errorf("the sidecar did not exit after SIGTERM; logs:\n%s", p.logs())
	}
}

// accessLog is the sidecar's access log so far: for each path, the
// listeners of its lines.
func (p *sidecarProc) accessLog(t *testing.T) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for l := range strings.SplitSeq(p.stdout.String(), "\n") {
		var rec struct{ Msg, Listener, Path string }
		if l == "" {
			continue
		}
		if err := json.Unmarshal([]byte(l), &rec); err != nil || rec.Msg != "access" {
			t.Errorf("sidecar stdout: not an access-log line: %q (%v)", l, err)
			continue
		}
		out[rec.Path] = append(out[rec.Path], rec.Listener)
	}
	return out
}

func addrPortOf(a net.Addr) netip.AddrPort {
	if t, ok := a.(*net.TCPAddr); ok {
		ap := t.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}
