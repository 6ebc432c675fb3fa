package h2wire

// Inflow is one receive window, a connection's or a stream's: what the
// peer may still send, and what has been consumed and not yet given back.
// Give-backs are batched, one WINDOW_UPDATE per quarter window, so a
// stream of small DATA frames does not cost a frame back for each.
type Inflow struct {
	avail  int32 // what the peer may still send
	unsent int32 // consumed, not yet announced
	size   int32
}

// NewInflow is a window of size bytes.
func NewInflow(size int32) Inflow { return Inflow{avail: size, size: size} }

// Take counts n bytes received (padding included); false if the peer sent
// beyond the window, a FLOW_CONTROL_ERROR.
func (f *Inflow) Take(n int32) bool {
	if n > f.avail {
		return false
	}
	f.avail -= n
	return true
}

// Release gives n consumed bytes back and returns the increment to
// announce now, 0 while the batch is not full.
func (f *Inflow) Release(n int32) uint32 {
	f.unsent += n
	if f.unsent < f.size/4 {
		return 0
	}
	inc := f.unsent
	f.unsent = 0
	f.avail += inc
	return uint32(inc)
}

// WriteWindowUpdates announces a connection's and a stream's increments,
// either of which may be 0; it takes the lock itself.
func (c *Conn) WriteWindowUpdates(stream, connInc, streamInc uint32) {
	if connInc == 0 && streamInc == 0 {
		return
	}
	c.Lock()
	if connInc > 0 {
		_ = c.Framer.WriteWindowUpdate(0, connInc)
	}
	if streamInc > 0 {
		_ = c.Framer.WriteWindowUpdate(stream, streamInc)
	}
	_ = c.Unlock()
}
