package migrate

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestServeRejectsHostileTargets: a request's root and target go through
// the tree's name rules before anything is received.
func TestServeRejectsHostileTargets(t *testing.T) {
	auth := tokenAuth(t)
	r := &fakeRestorer{}
	ts := startServer(t, ServerConfig{Auth: auth}, r)
	src := newSource(t)
	for _, req := range []Request{
		{Root: "/a", As: "/.hidden"}, {Root: "/a", As: "/x/with space"}, {Root: "/a", As: "/x/-y"},
		{Root: "/.hidden"}, {Root: "/a", As: "/x/\u202egnp.exe"}, {Root: "/a", As: "/" + strings.Repeat("n", 65)},
		{Root: "/a", As: "/"}, {Root: "/"},
	} {
		var hooks hookCounts
		_, _, err := Migrate(context.Background(), ts.addr, auth, src.migration(req, &hooks))
		var re *RemoteError
		if !errors.Is(err, ErrRejected) || !errors.As(err, &re) || !strings.Contains(re.Reason, "invalid request") {
			t.Errorf("%+v: err = %v, want ErrRejected with an invalid request", req, err)
		}
		if hooks.prepare.Load() != 0 {
			t.Errorf("%+v: source touched", req)
		}
	}
	if calls, _, _, _ := r.snapshot(); calls != 0 {
		t.Errorf("restorer called %d times", calls)
	}
	ts.assertClean(t)
}

// flood opens n TCP connections to addr that never say a word, and closes
// them when the test ends.
func flood(t *testing.T, addr string, n int) []net.Conn {
	t.Helper()
	conns := make([]net.Conn, 0, n)
	for range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("flood: %v", err)
		}
		conns = append(conns, c)
	}
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	return conns
}

// TestHandshakeFlood: 64 silent connections from the sender's own address
// (loopback) do not lock out an authenticated sender, which gets through
// at once rather than after the flood's handshake timeout.
func TestHandshakeFlood(t *testing.T) {
	auth := tokenAuth(t)
	r := &fakeRestorer{}
	ts := startServer(t, ServerConfig{Auth: auth}, r)
	flood(t, ts.addr, 64)
	time.Sleep(200 * time.Millisecond) // let the server accept them all
	for i := range 3 {
		start := time.Now()
		assertMigrates(t, ts, auth, fmt.Sprintf("/flooded%d", i))
		if d := time.Since(start); d > DefaultHandshakeTimeout/2 {
			t.Errorf("migration %d during the flood took %s", i, d)
		} else {
			t.Logf("migration %d during a flood of 64: %s", i, d.Round(time.Millisecond))
		}
	}
}

// TestHandshakeFloodBeyondLimits: a flood larger than the whole handshake
// set, from the sender's address, still lets a sender through.
func TestHandshakeFloodBeyondLimits(t *testing.T) {
	auth := tokenAuth(t)
	ts := startServer(t, ServerConfig{Auth: auth}, &fakeRestorer{})
	flood(t, ts.addr, 2*maxHandshakes+10)
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	assertMigrates(t, ts, auth, "/through")
	t.Logf("migration during a flood of %d: %s", 2*maxHandshakes+10, time.Since(start).Round(time.Millisecond))
	if !strings.Contains(ts.log.String(), "dropped before authenticating") {
		t.Error("the log does not say connections were dropped")
	}
}

// TestHandshakeBusyTold: a connection dropped from the handshake set after
// its TLS handshake is told that the server is busy, not cut off.
func TestHandshakeBusyTold(t *testing.T) {
	auth := tokenAuth(t)
	ts := startServer(t, ServerConfig{Auth: auth}, &fakeRestorer{})
	creds, err := auth.load()
	if err != nil {
		t.Fatal(err)
	}
	nc, err := net.DialTimeout("tcp", ts.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	cl := &client{counter: &countConn{Conn: nc}, idle: 5 * time.Second}
	cl.tc = tls.Client(cl.counter, creds.clientTLS("127.0.0.1"))
	cl.fc = newFrameConn(cl.tc)
	deadline := time.Now().Add(10 * time.Second)
	cl.fc.setDeadline(deadline)
	if err := cl.tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	// Fill the address's share with connections that also pass TLS and
	// then say nothing: the first one is now the oldest of them all.
	for range maxHandshakesPerHost - 1 {
		tc, err := tlsDial(ts.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer tc.Close()
	}
	time.Sleep(200 * time.Millisecond)
	flood(t, ts.addr, 1)
	err = cl.authenticate(context.Background(), creds, deadline)
	var re *RemoteError
	if !errors.As(err, &re) || !errors.Is(err, ErrRejected) || re.Reason != busyReason || re.Code != codeBusy {
		t.Fatalf("authenticate after being dropped: %v, want a rejection %q with code %q", err, busyReason, codeBusy)
	}
	t.Logf("the sender was told: %v", err)
}

// TestHandshakesPolicy: connections from one address push out only each
// other; the set never grows past its bounds; a full set drops from the
// address that holds the most, those still in TLS first.
func TestHandshakesPolicy(t *testing.T) {
	h := newHandshakes(8, 4)
	var mu sync.Mutex
	var evicted []*pendingConn
	add := func(host string, tlsDone bool) *pendingConn {
		pc := &pendingConn{host: host}
		pc.evict = func(bool) { mu.Lock(); evicted = append(evicted, pc); mu.Unlock() }
		h.enter(pc)
		if tlsDone {
			h.passedTLS(pc)
		}
		return pc
	}
	waitEvicted := func(n int) []*pendingConn {
		t.Helper()
		for range 200 {
			mu.Lock()
			got := append([]*pendingConn(nil), evicted...)
			mu.Unlock()
			if len(got) >= n {
				return got
			}
			time.Sleep(5 * time.Millisecond)
		}
		t.Fatalf("%d evicted, want %d", len(evicted), n)
		return nil
	}
	sender := add("10.0.0.1", true)
	for range 20 {
		add("10.0.0.66", false)
	}
	if got := waitEvicted(16); len(got) != 16 {
		t.Fatalf("%d evicted, want 16", len(got))
	}
	for _, pc := range waitEvicted(16) {
		if pc.host != "10.0.0.66" {
			t.Fatalf("a flood from 10.0.0.66 dropped a connection of %s", pc.host)
		}
	}
	if h.count() != 5 {
		t.Errorf("%d in the set, want 1 + 4", h.count())
	}
	// Fill the set from other addresses: the flooder pays.
	for i := range 3 {
		add(fmt.Sprintf("10.0.1.%d", i), false)
	}
	got := waitEvicted(16)
	if h.count() != 8 || len(got) != 16 {
		t.Errorf("set of %d after filling it, %d evicted", h.count(), len(got))
	}
	add("10.0.2.1", false)
	got = waitEvicted(17)
	if got[16].host != "10.0.0.66" {
		t.Errorf("a full set dropped %s, want the flooder's", got[16].host)
	}
	if !h.leave(sender) {
		t.Error("the sender was dropped")
	}
	if h.count() != 7 {
		t.Errorf("%d in the set after the sender left, want 7", h.count())
	}
	// Within one address: connections that never spoke go first, then
	// those still in TLS.
	h2 := newHandshakes(8, 3)
	nop := func(bool) {}
	a := &pendingConn{host: "x", evict: nop}
	b := &pendingConn{host: "x", evict: nop}
	c := &pendingConn{host: "x", evict: nop}
	h2.enter(a)
	a.talked.Store(true)
	h2.passedTLS(a)
	h2.enter(b)
	b.talked.Store(true)
	h2.enter(c)
	h2.enter(speaking("x"))
	if h2.leave(c) {
		t.Error("a silent connection outlived one that spoke")
	}
	h2.enter(speaking("x"))
	if h2.leave(b) {
		t.Error("a connection in TLS outlived the silent one")
	}
	if !h2.leave(a) {
		t.Error("the connection past TLS was dropped before those still in it")
	}
}

// speaking is a connection that sent something.
func speaking(host string) *pendingConn {
	pc := &pendingConn{host: host, evict: func(bool) {}}
	pc.talked.Store(true)
	return pc
}
