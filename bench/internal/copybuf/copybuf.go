// Package copybuf recycles 32 KiB copy buffers for the benchmark's Go
// proxies, as the sidecar recycles ReverseProxy's: so that no floor they
// measure pays an allocation the sidecar does not.
package copybuf

import "sync"

var buffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// Pool is an httputil.BufferPool.
type Pool struct{}

func (Pool) Get() []byte  { return *buffers.Get().(*[]byte) }
func (Pool) Put(b []byte) { buffers.Put(&b) }
