package proxy

import (
	"errors"
	"net"
	"strconv"
	"sync"
)

// withLoopback6 adds [::1] to a transparent listener on 127.0.0.1: iptables
// REDIRECT sends a pod's IPv6 connections to ::1, its IPv4 ones to
// 127.0.0.1, and a sidecar configured with the IPv4 address alone would
// refuse the former. Best effort: a pod without IPv6 keeps the one socket.
// Listening on 0.0.0.0/[::] instead would let other pods use the sidecar as
// a proxy with this pod's identity.
func withLoopback6(ln net.Listener) net.Listener {
	tcp, ok := ln.Addr().(*net.TCPAddr)
	if !ok || !tcp.IP.Equal(net.IPv4(127, 0, 0, 1)) {
		return ln
	}
	ln6, err := net.Listen("tcp6", net.JoinHostPort("::1", strconv.Itoa(tcp.Port)))
	if err != nil {
		return ln
	}
	return newMultiListener(ln, ln6)
}

// multiListener accepts from several sockets as one.
type multiListener struct {
	ls    []net.Listener
	conns chan net.Conn
	errs  chan error
	done  chan struct{}
	once  sync.Once
	wg    sync.WaitGroup
}

func newMultiListener(ls ...net.Listener) *multiListener {
	m := &multiListener{ls: ls, conns: make(chan net.Conn), errs: make(chan error, len(ls)), done: make(chan struct{})}
	for _, l := range ls {
		m.wg.Go(func() {
			for {
				c, err := l.Accept()
				if err != nil {
					m.errs <- err // buffered: one per socket
					return
				}
				select {
				case m.conns <- c:
				case <-m.done:
					_ = c.Close()
					return
				}
			}
		})
	}
	return m
}

func (m *multiListener) Accept() (net.Conn, error) {
	select {
	case c := <-m.conns:
		return c, nil
	case err := <-m.errs:
		return nil, err
	case <-m.done:
		return nil, net.ErrClosed
	}
}

func (m *multiListener) Close() error {
	var err error
	m.once.Do(func() {
		close(m.done)
		for _, l := range m.ls {
			err = errors.Join(err, l.Close())
		}
		m.wg.Wait()
	})
	return err
}

func (m *multiListener) Addr() net.Addr { return m.ls[0].Addr() }
