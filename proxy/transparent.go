package proxy

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/watertight/watertight/config"
	"github.com/watertight/watertight/iptables"
)

// Sniffing a connection of unknown destination: how long to wait for its
// first bytes, and the ports of protocols where the server speaks first
// (the client would send nothing and wait), which are passed through at once.
const sniffTimeout = 100 * time.Millisecond

var serverFirstPorts = map[uint16]bool{21: true, 25: true, 110: true, 143: true, 587: true, 3306: true}

// origDstKey carries a transparent connection's original destination in the
// requests' contexts.
type origDstKey struct{}

// acceptor stands between a listener's socket and its HTTP server. In mode
// transparent it sorts the connections iptables redirected to it: those to
// an upstream's address, or that speak HTTP, go to the server with their
// original destination attached; anything else is passed through as plain
// TCP (unknownHosts: passthrough) or closed. In the other modes it hands
// every connection straight on.
//
// Written by hand: no library sorts redirected connections; the HTTP
// serving after that is net/http's.
type acceptor struct {
	sock  net.Listener
	l     *listener
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once

	mu      sync.Mutex
	tunnels map[net.Conn]struct{} // both ends of every passthrough tunnel
	perDst  map[netip.AddrPort]int
	wg      sync.WaitGroup // the accept loop, sorting and tunnelling goroutines
}

func newAcceptor(sock net.Listener, l *listener) *acceptor {
	return &acceptor{sock: sock, l: l, conns: make(chan net.Conn), done: make(chan struct{}),
		tunnels: map[net.Conn]struct{}{}, perDst: map[netip.AddrPort]int{}}
}

// Accept implements net.Listener for the HTTP server.
func (a *acceptor) Accept() (net.Conn, error) {
	select {
	case c := <-a.conns:
		return c, nil
	case <-a.done:
		return nil, net.ErrClosed
	}
}

// Close stops accepting. Tunnels are closed by closeTunnels.
func (a *acceptor) Close() error {
	a.once.Do(func() { close(a.done) })
	return a.sock.Close()
}

func (a *acceptor) Addr() net.Addr { return a.sock.Addr() }

// start runs the accept loop on a goroutine counted in wg, like the sorting
// goroutines it starts: so their wg.Add never happens with the counter at
// zero (which would race with closeTunnels' Wait, and could start a sorting
// goroutine after closeTunnels returned), and closeTunnels waits for the
// loop too. The loop ends once the socket is closed, which the HTTP server
// does (Serve closes its listener on the way out) before shutdown gets to
// closeTunnels.
func (a *acceptor) start() { a.wg.Go(a.run) }

// run accepts from the socket until it is closed.
func (a *acceptor) run() {
	backoff := 5 * time.Millisecond
	for {
		c, err := a.sock.Accept()
		if err != nil {
			select {
			case <-a.done:
				return
			default:
			}
			// Out of file descriptors and the like: wait, as net/http does.
			slog.Warn("accept failed; retrying", "listener", a.l.name, "error", err, "in", backoff)
			select {
			case <-time.After(backoff):
			case <-a.done:
				return
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		rt := a.l.routes.Load()
		if rt.mode != config.ModeTransparent {
			a.serve(c)
			continue
		}
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			a.sort(c, rt)
		}()
	}
}

// serve gives an HTTP connection to the app-side HTTP/1.1 loop, if the
// listener has one (it hands on what it does not serve), or else to
// net/http's server.
func (a *acceptor) serve(c net.Conn) {
	if a.l.fast != nil {
		go a.l.fast.ServeConn(c)
		return
	}
	a.hand(c)
}

// hand gives a connection to net/http's server.
func (a *acceptor) hand(c net.Conn) {
	select {
	case a.conns <- c:
	case <-a.done:
		_ = c.Close()
	}
}

// sortedConn is a redirected connection with its original destination and
// the bytes read while sniffing it.
type sortedConn struct {
	net.Conn
	r   *bufio.Reader // nil when nothing was sniffed
	dst netip.AddrPort
}

func (c *sortedConn) Read(p []byte) (int, error) {
	if c.r != nil {
		return c.r.Read(p)
	}
	return c.Conn.Read(p)
}

func (a *acceptor) sort(c net.Conn, rt *routes) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		a.serve(c)
		return
	}
	dst, err := iptables.OriginalDst(tc)
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	local := addrPort(c.LocalAddr())
	if err != nil || dst == local {
		a.serve(c) // addressed to the sidecar itself: routed by Host
		return
	}
	if _, known := rt.addrs[dst]; known {
		a.serve(&sortedConn{Conn: c, dst: dst}) // an upstream's address: HTTP by config
		return
	}
	// An unknown destination: HTTP can still be placed by its Host.
	sc := &sortedConn{Conn: c, dst: dst}
	if !serverFirstPorts[dst.Port()] {
		sc.r = bufio.NewReader(c)
		_ = c.SetReadDeadline(time.Now().Add(sniffTimeout))
		head, _ := sc.r.Peek(4)
		_ = c.SetReadDeadline(time.Time{})
		if looksLikeHTTP(head) {
			a.serve(sc)
			return
		}
	}
	if !rt.passthrough {
		_ = c.Close()
		return
	}
	a.tunnel(sc, dst, rt.passthroughLimit)
}

// looksLikeHTTP: the first bytes are an HTTP/1 method token or the start of
// HTTP/2's preface ("PRI *"). TLS, and the binary protocols, start otherwise.
func looksLikeHTTP(head []byte) bool {
	if len(head) < 4 {
		return false
	}
	for i, b := range head {
		if !(b >= 'A' && b <= 'Z' || b == ' ' && i >= 3) {
			return false
		}
	}
	return true
}

// tunnel passes a connection through to its original destination as plain
// TCP, under the per-destination connection limit.
func (a *acceptor) tunnel(c *sortedConn, dst netip.AddrPort, limit int) {
	a.mu.Lock()
	select {
	case <-a.done:
		a.mu.Unlock()
		_ = c.Close()
		return
	default:
	}
	if a.perDst[dst] >= limit {
		a.mu.Unlock()
		slog.Warn("passthrough refused: too many connections to one destination", "listener", a.l.name, "destination", dst.String(), "limit", limit)
		_ = c.Close()
		return
	}
	a.perDst[dst]++
	a.tunnels[c] = struct{}{}
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		if a.perDst[dst]--; a.perDst[dst] == 0 {
			delete(a.perDst, dst)
		}
		delete(a.tunnels, c)
		a.mu.Unlock()
		_ = c.Close()
	}()

	up, err := net.DialTimeout("tcp", dst.String(), 5*time.Second)
	if err != nil {
		slog.Debug("passthrough dial failed", "destination", dst.String(), "error", err)
		return
	}
	a.mu.Lock()
	a.tunnels[up] = struct{}{}
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		delete(a.tunnels, up)
		a.mu.Unlock()
		_ = up.Close()
	}()
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		_, _ = io.Copy(up, c)
		closeWrite(up)
	}()
	_, _ = io.Copy(c, up)
	closeWrite(c.Conn)
	<-copied
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	} else {
		_ = c.Close()
	}
}

// closeTunnels waits for the passthrough tunnels to end until ctx does, then
// closes what is left, and waits for every goroutine the acceptor started.
func (a *acceptor) closeTunnels(ctx context.Context) error {
	finished := make(chan struct{})
	go func() { a.wg.Wait(); close(finished) }()
	var err error
	select {
	case <-finished:
		return nil
	case <-ctx.Done():
		err = ctx.Err()
	}
	a.mu.Lock()
	for c := range a.tunnels {
		_ = c.Close()
	}
	a.mu.Unlock()
	<-finished
	return err
}

func addrPort(a net.Addr) netip.AddrPort {
	if t, ok := a.(*net.TCPAddr); ok {
		ap := t.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}
