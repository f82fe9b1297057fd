package migrate

import (
	"net"
	"sync"
	"sync/atomic"
)

// Bounds on the connections that have not authenticated yet. A new
// connection is never refused for their number: when its address already
// holds maxHandshakesPerHost of them, or the server maxHandshakes, one of
// that address (or of the address that holds the most) is dropped to make
// room: the oldest that never sent a byte, else the oldest still in its
// TLS handshake, else the oldest, which is told that the server is busy.
// Silent connections therefore cannot keep an authenticated sender out:
// from other addresses they only ever push out each other, and from the
// sender's own address they go first, since a sender speaks at once (its
// TLS ClientHello).
const (
	maxHandshakes        = 256
	maxHandshakesPerHost = 32
)

// Connection states in the handshake set.
const (
	hsPending = iota
	hsLeft    // authenticated or failed: no longer in the set
	hsEvicted // dropped to make room
)

// pendingConn is a connection in its handshake.
type pendingConn struct {
	host    string
	talked  atomic.Bool // a byte arrived from the peer
	state   int         // under handshakes.mu
	tlsDone bool        // under handshakes.mu: past the TLS handshake
	// evict drops the connection; it runs on a goroutine of its own.
	evict func(tlsDone bool)
}

// handshakes is the set of connections in their handshake, by address,
// oldest first.
type handshakes struct {
	mu      sync.Mutex
	byHost  map[string][]*pendingConn
	total   int
	max     int
	perHost int
}

func newHandshakes(max, perHost int) *handshakes {
	return &handshakes{byHost: make(map[string][]*pendingConn), max: max, perHost: perHost}
}

// hostKey is the address a connection counts against: the IP, or the
// /64 of an IPv6 address (one host often holds a whole /64).
func hostKey(a net.Addr) string {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return a.String()
	}
	if ta.IP.To4() == nil {
		return ta.IP.Mask(net.CIDRMask(64, 128)).String() + "/64"
	}
	return ta.IP.String()
}

// enter adds pc, dropping another connection first if the set is full.
func (h *handshakes) enter(pc *pendingConn) {
	h.mu.Lock()
	var victim *pendingConn
	switch {
	case len(h.byHost[pc.host]) >= h.perHost:
		victim = h.pick(pc.host)
	case h.total >= h.max:
		most := ""
		for host, l := range h.byHost {
			if len(l) > len(h.byHost[most]) {
				most = host
			}
		}
		victim = h.pick(most)
	}
	if victim != nil {
		victim.state = hsEvicted
		h.remove(victim)
	}
	h.byHost[pc.host] = append(h.byHost[pc.host], pc)
	h.total++
	tlsDone := victim != nil && victim.tlsDone
	h.mu.Unlock()
	if victim != nil {
		go victim.evict(tlsDone)
	}
}

// pick returns host's oldest connection that never said a word, else its
// oldest still in TLS, else its oldest.
func (h *handshakes) pick(host string) *pendingConn {
	l := h.byHost[host]
	for _, pc := range l {
		if !pc.talked.Load() {
			return pc
		}
	}
	for _, pc := range l {
		if !pc.tlsDone {
			return pc
		}
	}
	if len(l) > 0 {
		return l[0]
	}
	return nil
}

func (h *handshakes) remove(pc *pendingConn) {
	l := h.byHost[pc.host]
	for i, c := range l {
		if c == pc {
			l = append(l[:i:i], l[i+1:]...)
			h.total--
			break
		}
	}
	if len(l) == 0 {
		delete(h.byHost, pc.host)
	} else {
		h.byHost[pc.host] = l
	}
}

// passedTLS marks pc past its TLS handshake; false if it was dropped.
func (h *handshakes) passedTLS(pc *pendingConn) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	pc.tlsDone = true
	return pc.state == hsPending
}

// leave takes pc out of the set; false if it had been dropped.
func (h *handshakes) leave(pc *pendingConn) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if pc.state != hsPending {
		return pc.state == hsLeft
	}
	pc.state = hsLeft
	h.remove(pc)
	return true
}

// count is the number of connections in their handshake.
func (h *handshakes) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.total
}

// talkConn marks its pendingConn once a byte arrives.
type talkConn struct {
	net.Conn
	pc *pendingConn
}

func (c *talkConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && !c.pc.talked.Load() {
		c.pc.talked.Store(true)
	}
	return n, err
}
