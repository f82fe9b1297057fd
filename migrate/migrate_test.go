package migrate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cr-dev/cr/images"
)

func TestMigrateToken(t *testing.T) {
	auth := tokenAuth(t)
	r := &fakeRestorer{}
	ts := startServer(t, ServerConfig{Auth: auth}, r)
	src := newSource(t)
	var hooks hookCounts
	info, st, err := Migrate(context.Background(), ts.addr, auth, src.migration(Request{Root: "/a", As: "/b", CRVersion: "test"}, &hooks))
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Paths) != 1 || info.Paths[0] != "/b" || info.Pids["/b"] != 4242 || info.Elapsed != 5*time.Millisecond {
		t.Errorf("info = %+v", info)
	}
	calls, resumed, killed, readyErr := r.snapshot()
	if calls != 1 || !resumed || killed || readyErr != nil {
		t.Errorf("restorer: calls %d resumed %v killed %v readyErr %v", calls, resumed, killed, readyErr)
	}
	if r.as != "/b" || r.root != "/a" {
		t.Errorf("restorer got as %q root %q", r.as, r.root)
	}
	if !equalMaps(r.files, src.files) {
		t.Errorf("extracted %v, want %v", r.files, src.files)
	}
	if hooks.prepare.Load() != 1 || hooks.body.Load() != 1 || hooks.ready.Load() != 1 {
		t.Errorf("hooks: prepare %d body %d ready %d", hooks.prepare.Load(), hooks.body.Load(), hooks.ready.Load())
	}
	// The archive is incompressible: the wire carries at least its size.
	if st.ArchiveBytes < src.size || st.BytesSent < st.ArchiveBytes {
		t.Errorf("stats: archive %d bytes, sent %d, source %d", st.ArchiveBytes, st.BytesSent, src.size)
	}
	if st.Elapsed <= 0 || st.Transfer <= 0 {
		t.Errorf("stats: %+v", st)
	}
	lines := ts.log.waitLines(t, 1)
	if !strings.Contains(lines[0], "/a as /b: done") {
		t.Errorf("log: %q", lines[0])
	}
	ts.assertClean(t)
}

func TestMigrateMTLS(t *testing.T) {
	p := newPKI(t)
	r := &fakeRestorer{}
	ts := startServer(t, ServerConfig{Auth: p.server}, r)
	assertMigrates(t, ts, p.client, "/a")
	lines := ts.log.waitLines(t, 1)
	if !strings.Contains(lines[0], "(client) /a: done") {
		t.Errorf("log: %q", lines[0])
	}
	ts.assertClean(t)
}

// TestAuthRejected: a client with wrong or missing credentials is refused
// before its source is touched and before any image byte is accepted.
func TestAuthRejected(t *testing.T) {
	p := newPKI(t)
	other := newPKI(t) // another CA
	tokenServer := tokenAuth(t)
	wrongToken := tokenAuth(t)
	short := filepath.Join(t.TempDir(), "short")
	os.WriteFile(short, []byte("0123456789abcdef"), 0o600) // valid length, wrong value

	for _, tc := range []struct {
		name           string
		server, client Auth
		want           string
	}{
		{"wrong token", tokenServer, wrongToken, "refused our credentials"},
		{"other token", tokenServer, Auth{TokenFile: short}, "refused our credentials"},
		{"cert from another CA", p.server, Auth{CertFile: other.client.CertFile, KeyFile: other.client.KeyFile, CAFile: p.client.CAFile}, "certificate"},
		{"no client certificate", p.server, tokenServer, "certificate required"},
		{"server from another CA", p.server, other.client, "certificate"},
		{"mTLS client, token server", tokenServer, p.client, "certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &fakeRestorer{}
			ts := startServer(t, ServerConfig{Auth: tc.server}, r)
			src := newSource(t)
			var hooks hookCounts
			_, _, err := Migrate(context.Background(), ts.addr, tc.client, src.migration(Request{Root: "/a"}, &hooks))
			if !isAuthErr(err) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want ErrAuth with %q", err, tc.want)
			}
			if n := hooks.prepare.Load() + hooks.body.Load(); n != 0 {
				t.Errorf("source touched: %d hook calls", n)
			}
			if calls, _, _, _ := r.snapshot(); calls != 0 {
				t.Errorf("restorer called %d times", calls)
			}
			lines := ts.log.waitLines(t, 1)
			if !strings.Contains(lines[0], "authentication failed") {
				t.Errorf("log: %q", lines[0])
			}
			ts.assertClean(t)
			// The server goes on serving legitimate clients.
			client := tokenServer
			if tc.server.CertFile != "" {
				client = p.client
			}
			assertMigrates(t, ts, client, "/a")
		})
	}
}

// TestAuthRelay: a man in the middle that terminates TLS on both sides and
// relays the decrypted frames, even with the right token on both ends,
// cannot pass: the proofs are bound to each TLS channel.
func TestAuthRelay(t *testing.T) {
	auth := tokenAuth(t)
	r := &fakeRestorer{}
	ts := startServer(t, ServerConfig{Auth: auth}, r)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cert, err := selfSigned()
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(1)
	go func() {
		defer wg.Done()
		in, err := ln.Accept()
		if err != nil {
			return
		}
		defer in.Close()
		tin := tlsServer(in, cert)
		out, err := tlsDial(ts.addr)
		if err != nil {
			return
		}
		defer out.Close()
		var cw sync.WaitGroup
		cw.Add(1)
		go func() { defer cw.Done(); io.Copy(out, tin); out.Close() }()
		io.Copy(tin, out)
		tin.Close()
		cw.Wait()
	}()

	src := newSource(t)
	var hooks hookCounts
	_, _, err = Migrate(context.Background(), ln.Addr().String(), auth, src.migration(Request{Root: "/a"}, &hooks))
	if !isAuthErr(err) {
		t.Fatalf("through a relay: err = %v, want ErrAuth", err)
	}
	if hooks.prepare.Load() != 0 {
		t.Error("source touched")
	}
	if calls, _, _, _ := r.snapshot(); calls != 0 {
		t.Errorf("restorer called %d times", calls)
	}
	if l := ts.log.waitLines(t, 1); !strings.Contains(l[0], "wrong token proof") {
		t.Errorf("log: %q", l[0])
	}
}

// TestAuthFakeServer: a server that does not know the token (it accepts
// any proof) is detected before the source is touched.
func TestAuthFakeServer(t *testing.T) {
	auth := tokenAuth(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cert, err := selfSigned()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		nc, err := ln.Accept()
		if err != nil {
			return
		}
		defer nc.Close()
		tc := tlsServer(nc, cert)
		fc := newFrameConn(tc)
		if _, _, err := fc.recv(maxPreAuth, time.Now().Add(5*time.Second)); err != nil {
			return
		}
		nonce, _ := newNonce()
		fc.sendJSON(msgChallenge, challengeMsg{Nonce: nonce})
		if _, _, err := fc.recv(maxPreAuth, time.Now().Add(5*time.Second)); err != nil {
			return
		}
		fc.sendJSON(msgAuthOK, macMsg{MAC: make([]byte, 32)})
		io.Copy(io.Discard, tc)
	}()
	src := newSource(t)
	var hooks hookCounts
	_, _, err = Migrate(context.Background(), ln.Addr().String(), auth, src.migration(Request{Root: "/a"}, &hooks))
	if !isAuthErr(err) || !strings.Contains(err.Error(), "does not know the token") {
		t.Fatalf("err = %v, want ErrAuth: the server does not know the token", err)
	}
	if hooks.prepare.Load() != 0 {
		t.Error("source touched")
	}
	<-done
}

// TestPreAuthHostile: frames other than HELLO, or oversized, before
// authentication end the connection without a restore.
func TestPreAuthHostile(t *testing.T) {
	auth := tokenAuth(t)
	r := &fakeRestorer{}
	ts := startServer(t, ServerConfig{Auth: auth, HandshakeTimeout: 500 * time.Millisecond}, r)
	for i, tc := range []struct {
		name    string
		frame   []byte
		wantLog string
	}{
		{"data before auth", append([]byte{byte(msgData), 0, 0, 0, 4}, "abcd"...), "DATA frame, expected HELLO"},
		{"request before auth", append([]byte{byte(msgRequest), 0, 0, 0, 2}, "{}"...), "REQUEST frame, expected HELLO"},
		{"oversized hello", []byte{byte(msgHello), 0, 1, 0, 0}, "exceeds the limit of 1024"},
		{"unknown type", []byte{0x99, 0, 0, 0, 0}, "unknown frame"},
		{"silence", nil, "timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc0, err := tlsDial(ts.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer tc0.Close()
			if tc.frame != nil {
				tc0.Write(tc.frame)
			}
			start := time.Now()
			tc0.SetReadDeadline(time.Now().Add(5 * time.Second))
			io.Copy(io.Discard, tc0) // the server hangs up
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("server hung up after %s", d)
			}
			lines := ts.log.waitLines(t, i+1)
			if l := lines[i]; !strings.Contains(l, "authentication failed") || !strings.Contains(l, tc.wantLog) {
				t.Errorf("log: %q, want %q", l, tc.wantLog)
			}
		})
	}
	// Not even TLS.
	nc, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	nc.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	io.Copy(io.Discard, nc)
	nc.Close()
	if l := ts.log.waitLines(t, 6)[5]; !strings.Contains(l, "authentication failed: tls:") {
		t.Errorf("log: %q", l)
	}

	if calls, _, _, _ := r.snapshot(); calls != 0 {
		t.Errorf("restorer called %d times", calls)
	}
	ts.assertClean(t)
	assertMigrates(t, ts, auth, "/a")
}

// TestKeepalive: a Prepare (the dump) and a restore that each last longer
// than the idle timeout do not break the connection: both sides send PING.
func TestKeepalive(t *testing.T) {
	auth := tokenAuth(t)
	r := &fakeRestorer{started: make(chan struct{}), block: make(chan struct{})}
	ts := startServer(t, ServerConfig{Auth: auth, IdleTimeout: 400 * time.Millisecond}, r)
	go func() { <-r.started; time.Sleep(1200 * time.Millisecond); close(r.block) }()
	src := newSource(t)
	var hooks hookCounts
	mig := src.migration(Request{Root: "/a"}, &hooks)
	prepare := mig.Prepare
	mig.Prepare = func(ctx context.Context) (int64, error) {
		time.Sleep(1200 * time.Millisecond)
		return prepare(ctx)
	}
	if _, _, err := Migrate(context.Background(), ts.addr, auth, mig); err != nil {
		t.Fatal(err)
	}
	ts.assertClean(t)
}

func TestServeRefusesWithoutAuth(t *testing.T) {
	dir := t.TempDir()
	p := newPKI(t)
	for _, a := range []Auth{
		{},
		{CertFile: p.server.CertFile, KeyFile: p.server.KeyFile}, // no CA
	} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		err = Serve(context.Background(), ln, ServerConfig{Auth: a, StagingDir: dir, Restorer: &fakeRestorer{}})
		if err == nil {
			t.Fatalf("Serve with %+v started", a)
		}
		if a == (Auth{}) && !errors.Is(err, ErrNoAuth) {
			t.Errorf("err = %v, want ErrNoAuth", err)
		}
		// Serve closed the listener.
		if _, err := net.Dial("tcp", ln.Addr().String()); err == nil {
			t.Error("listener still open")
		}
	}
	if _, _, err := Migrate(context.Background(), "127.0.0.1:1", Auth{}, Migration{Prepare: func(context.Context) (int64, error) { return 1, nil }, Body: func(context.Context, io.Writer) error { return nil }}); !errors.Is(err, ErrNoAuth) {
		t.Errorf("Migrate without auth: %v", err)
	}
}

func TestCheckRejects(t *testing.T) {
	auth := tokenAuth(t)
	r := &fakeRestorer{}
	ts := startServer(t, ServerConfig{Auth: auth, Check: func(req Request) error {
		if req.Target() == "/exists" {
			return fmt.Errorf("%w: /exists is there", ErrTargetExists)
		}
		return nil
	}}, r)
	src := newSource(t)
	for _, tc := range []struct {
		req  Request
		want string
	}{
		{Request{Root: "/a", As: "/exists"}, "target exists: /exists is there"},
		{Request{Root: "/a", Lazy: true}, "lazy migration is not enabled"},
		{Request{Root: "a/../b"}, "invalid request"},
		{Request{Root: "/a\n/b"}, "invalid request"},
	} {
		var hooks hookCounts
		_, _, err := Migrate(context.Background(), ts.addr, auth, src.migration(tc.req, &hooks))
		var re *RemoteError
		if !errors.Is(err, ErrRejected) || !errors.As(err, &re) || !strings.Contains(re.Reason, tc.want) {
			t.Errorf("%+v: err = %v, want ErrRejected %q", tc.req, err, tc.want)
		}
		if hooks.prepare.Load() != 0 {
			t.Errorf("%+v: source touched", tc.req)
		}
		// Only the existing target carries ErrTargetExists's code.
		if exists := tc.req.As == "/exists"; errors.Is(err, ErrTargetExists) != exists {
			t.Errorf("%+v: errors.Is(err, ErrTargetExists) = %v", tc.req, !exists)
		}
	}
	if calls, _, _, _ := r.snapshot(); calls != 0 {
		t.Errorf("restorer called %d times", calls)
	}
	ts.assertClean(t)
}

func TestSizeRejected(t *testing.T) {
	auth := tokenAuth(t)
	r := &fakeRestorer{}
	ts := startServer(t, ServerConfig{Auth: auth}, r)
	src := newSource(t)
	var hooks hookCounts
	mig := src.migration(Request{Root: "/a"}, &hooks)
	mig.Prepare = func(context.Context) (int64, error) { return 1 << 50, nil }
	_, _, err := Migrate(context.Background(), ts.addr, auth, mig)
	if !errors.Is(err, ErrRejected) || !strings.Contains(err.Error(), "too large") {
		t.Fatalf("err = %v, want ErrRejected: too large", err)
	}
	if hooks.body.Load() != 0 {
		t.Error("body streamed after a rejection")
	}
	ts.assertClean(t)
}

// TestDeclaredSizeEnforced: an archive larger than the size the sender
// declared is cut off, whatever its own headers say.
func TestDeclaredSizeEnforced(t *testing.T) {
	auth := tokenAuth(t)
	r := &fakeRestorer{}
	ts := startServer(t, ServerConfig{Auth: auth}, r)
	src := newSource(t)
	var hooks hookCounts
	mig := src.migration(Request{Root: "/a"}, &hooks)
	mig.Prepare = func(context.Context) (int64, error) { return 1 << 20, nil }
	_, _, err := Migrate(context.Background(), ts.addr, auth, mig)
	if !errors.Is(err, ErrRemote) || !strings.Contains(err.Error(), "exceeds limits") {
		t.Fatalf("err = %v, want ErrRemote: exceeds limits", err)
	}
	if calls, _, _, _ := r.snapshot(); calls != 0 {
		t.Errorf("restorer called %d times", calls)
	}
	ts.log.waitLines(t, 1)
	ts.assertClean(t)
	assertMigrates(t, ts, auth, "/a")
}

func TestPrepareAndBodyFailures(t *testing.T) {
	auth := tokenAuth(t)
	r := &fakeRestorer{}
	ts := startServer(t, ServerConfig{Auth: auth}, r)
	src := newSource(t)

	var hooks hookCounts
	mig := src.migration(Request{Root: "/a"}, &hooks)
	errDump := errors.New("dump failed: criu said no")
	mig.Prepare = func(context.Context) (int64, error) { return 0, errDump }
	if _, _, err := Migrate(context.Background(), ts.addr, auth, mig); err != errDump {
		t.Errorf("prepare failure: err = %v, want it unchanged", err)
	}
	if l := ts.log.waitLines(t, 1)[0]; !strings.Contains(l, "aborted by sender: dump failed: criu said no") {
		t.Errorf("log: %q", l)
	}

	mig = src.migration(Request{Root: "/a"}, &hooks)
	errRead := errors.New("read image: disk on fire")
	mig.Body = func(ctx context.Context, w io.Writer) error {
		w.Write(src.archive(t)[:2<<20]) // half an archive, then the failure
		return errRead
	}
	if _, _, err := Migrate(context.Background(), ts.addr, auth, mig); err != errRead {
		t.Errorf("body failure: err = %v, want it unchanged", err)
	}
	if l := ts.log.waitLines(t, 2)[1]; !strings.Contains(l, "aborted by sender: read image: disk on fire") {
		t.Errorf("log: %q", l)
	}
	if calls, _, _, _ := r.snapshot(); calls != 0 {
		t.Errorf("restorer called %d times", calls)
	}
	ts.assertClean(t)
	assertMigrates(t, ts, auth, "/a")
}

// TestHostileStreams sends, after a successful authentication, archives and
// frames meant to escape, exhaust or confuse the receiver.
func TestHostileStreams(t *testing.T) {
	auth := tokenAuth(t)
	r := &fakeRestorer{}
	ts := startServer(t, ServerConfig{Auth: auth, IdleTimeout: 2 * time.Second}, r)
	valid := newSource(t).archive(t)

	for i, tc := range []struct {
		name    string
		size    int64
		send    func(cl *client)
		wantLog string
	}{
		{"path traversal", 1 << 20, func(cl *client) {
			cl.sendData(tarOf(t, tarEntry{name: "../escaped", body: "x"}), true)
		}, "unsafe image entry"},
		{"deep traversal", 1 << 20, func(cl *client) {
			cl.sendData(tarOf(t, tarEntry{name: "checkpoint/", dir: true}, tarEntry{name: "checkpoint/../../../escaped", body: "x"}), true)
		}, "unsafe image entry"},
		{"absolute path", 1 << 20, func(cl *client) {
			cl.sendData(tarOf(t, tarEntry{name: "/tmp/escaped", body: "x"}), true)
		}, "unsafe image entry"},
		{"symlink", 1 << 20, func(cl *client) {
			cl.sendData(tarOf(t, tarEntry{name: "link", link: "/etc/passwd"}), true)
		}, "symlink"},
		{"oversized entry", 1 << 20, func(cl *client) {
			cl.sendData(tarOf(t, tarEntry{name: "big", body: strings.Repeat("A", 2<<20)}), true)
		}, "exceeds limits"},
		{"garbage", 1 << 20, func(cl *client) {
			cl.sendData([]byte(strings.Repeat("garbage!", 4096)), true)
		}, "not a cr image"},
		{"corrupted archive", 16 << 20, func(cl *client) {
			b := append([]byte(nil), valid...)
			b[len(b)/2] ^= 0xff
			cl.sendData(b, true)
		}, "corrupt image"},
		{"cut mid-way", 16 << 20, func(cl *client) {
			cl.sendData(valid[:len(valid)/2], false)
			cl.tc.Close()
		}, "receive image"},
		{"absurd frame length", 16 << 20, func(cl *client) {
			cl.sendData(valid[:100<<10], false)
			cl.tc.Write([]byte{byte(msgData), 0xff, 0xff, 0xff, 0xff})
		}, "protocol violation: DATA frame of 4294967295 bytes"},
		{"unknown frame", 16 << 20, func(cl *client) {
			cl.tc.Write([]byte{0x7f, 0, 0, 0, 0})
		}, "protocol violation: unknown frame"},
		{"wrong END count", 16 << 20, func(cl *client) {
			cl.sendData(valid[:1000], false)
			cl.fc.sendJSON(msgEnd, endMsg{Bytes: 999})
		}, "END counts 999 bytes, 1000 were received"},
		{"commit out of turn", 16 << 20, func(cl *client) {
			cl.fc.send(msgCommit, nil)
		}, "COMMIT frame while receiving"},
		{"silence", 16 << 20, func(cl *client) {}, "timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cl := rawClient(t, ts.addr, auth)
			cl.begin(t, Request{Root: "/a"}, tc.size)
			stopPing := func() {}
			if tc.name != "silence" {
				stopPing = startPinger(cl.fc, 200*time.Millisecond)
			}
			tc.send(cl)
			reason := cl.serverError()
			stopPing()
			cl.tc.Close()
			lines := ts.log.waitLines(t, i+1)
			if l := lines[i]; !strings.Contains(l, "failed") || !strings.Contains(l, tc.wantLog) {
				t.Errorf("log: %q, want %q", l, tc.wantLog)
			}
			if tc.name != "cut mid-way" && tc.name != "silence" && !strings.Contains(reason, tc.wantLog) {
				t.Errorf("client told %q, want %q", reason, tc.wantLog)
			}
			if calls, _, _, _ := r.snapshot(); calls != 0 {
				t.Fatalf("restorer called %d times", calls)
			}
			ts.assertClean(t)
		})
	}
	assertMigrates(t, ts, auth, "/a")
}

func TestRestoreFailure(t *testing.T) {
	auth := tokenAuth(t)
	for _, tc := range []struct {
		name       string
		r          *fakeRestorer
		wantReady  int32
		wantReason string
	}{
		{"before ready", &fakeRestorer{failBefore: errors.New("criu restore: pid 42 is taken")}, 0, "restore: criu restore: pid 42 is taken"},
		{"after commit", &fakeRestorer{failAfter: errors.New("post-resume failed, tree killed")}, 1, "restore: post-resume failed, tree killed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, ServerConfig{Auth: auth}, tc.r)
			src := newSource(t)
			var hooks hookCounts
			_, _, err := Migrate(context.Background(), ts.addr, auth, src.migration(Request{Root: "/a"}, &hooks))
			var re *RemoteError
			if !errors.Is(err, ErrRemote) || !errors.As(err, &re) || re.Reason != tc.wantReason {
				t.Fatalf("err = %v, want ErrRemote %q", err, tc.wantReason)
			}
			if errors.Is(err, ErrInDoubt) {
				t.Error("error is also ErrInDoubt")
			}
			if hooks.ready.Load() != tc.wantReady {
				t.Errorf("OnReady called %d times, want %d", hooks.ready.Load(), tc.wantReady)
			}
			if l := ts.log.waitLines(t, 1)[0]; !strings.Contains(l, "failed: "+tc.wantReason) {
				t.Errorf("log: %q", l)
			}
			ts.assertClean(t)
		})
	}
}

// TestInDoubt: when the connection dies after COMMIT and before DONE, the
// client does not guess.
func TestInDoubt(t *testing.T) {
	auth := tokenAuth(t)
	r := &fakeRestorer{}
	ts := startServer(t, ServerConfig{Auth: auth}, r)
	proxy := newCutProxy(t, ts.addr)
	r.afterReady = proxy.cut
	src := newSource(t)
	var hooks hookCounts
	_, _, err := Migrate(context.Background(), proxy.addr(), auth, src.migration(Request{Root: "/a"}, &hooks))
	if !errors.Is(err, ErrInDoubt) {
		t.Fatalf("err = %v, want ErrInDoubt", err)
	}
	if errors.Is(err, ErrRemote) {
		t.Error("error is also ErrRemote")
	}
	// The tree does run at the destination: resuming the source would
	// have made two copies.
	if _, resumed, killed, _ := r.snapshot(); !resumed || killed {
		t.Errorf("restorer: resumed %v killed %v", resumed, killed)
	}
	ts.log.waitLines(t, 1)
	ts.assertClean(t)
}

// TestInDoubtReported: a restorer that resumes without asking for the
// commit makes the server report the doubt.
func TestInDoubtReported(t *testing.T) {
	auth := tokenAuth(t)
	ts := startServer(t, ServerConfig{Auth: auth}, &fakeRestorer{skipReady: true})
	src := newSource(t)
	var hooks hookCounts
	_, _, err := Migrate(context.Background(), ts.addr, auth, src.migration(Request{Root: "/a"}, &hooks))
	if !errors.Is(err, ErrInDoubt) || !strings.Contains(err.Error(), "without asking for commit") {
		t.Fatalf("err = %v, want ErrInDoubt", err)
	}
	if hooks.ready.Load() != 0 {
		t.Error("OnReady called")
	}
}

func TestReadyTimeout(t *testing.T) {
	auth := tokenAuth(t)
	r := &fakeRestorer{}
	ts := startServer(t, ServerConfig{Auth: auth, ReadyTimeout: 300 * time.Millisecond}, r)
	src := newSource(t)
	var hooks hookCounts
	mig := src.migration(Request{Root: "/a"}, &hooks)
	mig.OnReady = func(RestoreInfo) error { time.Sleep(time.Second); return nil }
	_, _, err := Migrate(context.Background(), ts.addr, auth, mig)
	if !errors.Is(err, ErrRemote) || !strings.Contains(err.Error(), "no commit from the sender within 300ms") {
		t.Fatalf("err = %v, want ErrRemote: no commit", err)
	}
	if _, resumed, killed, readyErr := r.snapshot(); resumed || !killed || readyErr == nil {
		t.Errorf("restorer: resumed %v killed %v readyErr %v", resumed, killed, readyErr)
	}
	ts.log.waitLines(t, 1)
	ts.assertClean(t)
}

func TestOnReadyAbort(t *testing.T) {
	auth := tokenAuth(t)
	r := &fakeRestorer{}
	ts := startServer(t, ServerConfig{Auth: auth}, r)
	src := newSource(t)
	var hooks hookCounts
	mig := src.migration(Request{Root: "/a"}, &hooks)
	errNo := errors.New("changed my mind")
	mig.OnReady = func(RestoreInfo) error { return errNo }
	if _, _, err := Migrate(context.Background(), ts.addr, auth, mig); err != errNo {
		t.Fatalf("err = %v, want %v", err, errNo)
	}
	if l := ts.log.waitLines(t, 1)[0]; !strings.Contains(l, "aborted by sender: changed my mind") {
		t.Errorf("log: %q", l)
	}
	if _, resumed, killed, _ := r.snapshot(); resumed || !killed {
		t.Errorf("restorer: resumed %v killed %v", resumed, killed)
	}
	ts.assertClean(t)
}

// TestSenderLostBeforeCommit: a sender that disappears during the restore
// makes the restore abort, and nothing resumes.
func TestSenderLostBeforeCommit(t *testing.T) {
	auth := tokenAuth(t)
	r := &fakeRestorer{started: make(chan struct{}), block: make(chan struct{})}
	defer close(r.block)
	ts := startServer(t, ServerConfig{Auth: auth}, r)
	src := newSource(t)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-r.started; cancel() }()
	var hooks hookCounts
	_, _, err := Migrate(ctx, ts.addr, auth, src.migration(Request{Root: "/a"}, &hooks))
	if !errors.Is(err, context.Canceled) || errors.Is(err, ErrInDoubt) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if l := ts.log.waitLines(t, 1)[0]; !strings.Contains(l, "sender lost before commit") {
		t.Errorf("log: %q", l)
	}
	if _, resumed, killed, _ := r.snapshot(); resumed || !killed {
		t.Errorf("restorer: resumed %v killed %v", resumed, killed)
	}
	ts.assertClean(t)
}

func TestConcurrencyLimit(t *testing.T) {
	auth := tokenAuth(t)
	r := &fakeRestorer{started: make(chan struct{}), block: make(chan struct{})}
	ts := startServer(t, ServerConfig{Auth: auth, MaxConcurrent: 1}, r)
	src := newSource(t)

	first := make(chan error, 1)
	go func() {
		var hooks hookCounts
		_, _, err := Migrate(context.Background(), ts.addr, auth, src.migration(Request{Root: "/a"}, &hooks))
		first <- err
	}()
	<-r.started

	for _, tc := range []struct {
		req  Request
		want string
	}{
		{Request{Root: "/a"}, "busy: a migration to /a is in progress"},
		{Request{Root: "/a", As: "/other"}, "busy: 1 migrations in progress"},
	} {
		var hooks hookCounts
		_, _, err := Migrate(context.Background(), ts.addr, auth, src.migration(tc.req, &hooks))
		if !errors.Is(err, ErrRejected) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("while busy: err = %v, want ErrRejected %q", err, tc.want)
		}
		if hooks.prepare.Load() != 0 {
			t.Error("source touched while busy")
		}
	}
	close(r.block)
	if err := <-first; err != nil {
		t.Fatalf("first migration: %v", err)
	}
	assertMigrates(t, ts, auth, "/other")
	ts.assertClean(t)
}

// TestShutdown: cancelling Serve aborts an uncommitted migration and
// returns.
func TestShutdown(t *testing.T) {
	auth := tokenAuth(t)
	r := &fakeRestorer{started: make(chan struct{}), block: make(chan struct{})}
	defer close(r.block)
	base := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- Serve(ctx, ln, ServerConfig{Auth: auth, StagingDir: base, Restorer: r}) }()

	src := newSource(t)
	go func() { <-r.started; cancel() }()
	var hooks hookCounts
	_, _, err = Migrate(context.Background(), ln.Addr().String(), auth, src.migration(Request{Root: "/a"}, &hooks))
	if err == nil || errors.Is(err, ErrInDoubt) {
		t.Fatalf("err = %v, want a failure before commit", err)
	}
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
	}
	if _, resumed, killed, _ := r.snapshot(); resumed || !killed {
		t.Errorf("restorer: resumed %v killed %v", resumed, killed)
	}
	if ents, _ := os.ReadDir(base); len(ents) != 0 {
		t.Errorf("staging not clean: %v", ents)
	}
}

// TestIdleTimeout: an authenticated client that goes silent is dropped.
func TestIdleTimeout(t *testing.T) {
	auth := tokenAuth(t)
	ts := startServer(t, ServerConfig{Auth: auth, IdleTimeout: 300 * time.Millisecond}, &fakeRestorer{})
	cl := rawClient(t, ts.addr, auth)
	start := time.Now()
	cl.serverError()
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("dropped after %s", d)
	}
	if l := ts.log.waitLines(t, 1)[0]; !strings.Contains(l, "waiting for request") || !strings.Contains(l, "timeout") {
		t.Errorf("log: %q", l)
	}
}

func TestStagingLeftoversRemoved(t *testing.T) {
	auth := tokenAuth(t)
	base := t.TempDir()
	old := filepath.Join(base, stagingPrefix+"123", "checkpoint")
	oldPre := filepath.Join(base, preCopyPrefix+"456", "upper", "0")
	for _, d := range []string{old, oldPre} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	keep := filepath.Join(base, "unrelated")
	os.WriteFile(keep, nil, 0o600)
	startServer(t, ServerConfig{Auth: auth, StagingDir: base}, &fakeRestorer{})
	for _, d := range []string{old, oldPre} {
		if _, err := os.Stat(filepath.Dir(d)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("leftover not removed: %v", err)
		}
	}
	if _, err := os.Stat(keep); err != nil {
		t.Errorf("unrelated file removed: %v", err)
	}
}

func TestListenAndServe(t *testing.T) {
	if err := ListenAndServe(context.Background(), ServerConfig{StagingDir: t.TempDir(), Restorer: &fakeRestorer{}}); !errors.Is(err, ErrNoAuth) {
		t.Errorf("without auth: %v", err)
	}
	auth := tokenAuth(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- ListenAndServe(ctx, ServerConfig{Listen: "127.0.0.1:0", Auth: auth, StagingDir: t.TempDir(), Restorer: &fakeRestorer{}})
	}()
	time.Sleep(100 * time.Millisecond)
	cancel()
	if err := <-done; err != nil {
		t.Errorf("after cancel: %v", err)
	}
	if err := ListenAndServe(context.Background(), ServerConfig{Listen: "256.0.0.1:1", Auth: auth, StagingDir: t.TempDir(), Restorer: &fakeRestorer{}}); err == nil || !strings.Contains(err.Error(), "listen") {
		t.Errorf("bad address: %v", err)
	}
}

// BenchmarkMigrate measures a migration of 256 MiB of incompressible data
// over loopback: TLS, framing, the pipe and the extraction to disk.
func BenchmarkMigrate(b *testing.B) {
	auth := Auth{TokenFile: filepath.Join(b.TempDir(), "token")}
	if err := WriteToken(auth.TokenFile); err != nil {
		b.Fatal(err)
	}
	src := b.TempDir()
	ck := filepath.Join(src, "checkpoint")
	os.Mkdir(ck, 0o755)
	const size = 256 << 20
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i*7 + i>>11)
	}
	os.WriteFile(filepath.Join(ck, "pages-1.img"), data, 0o600)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, ln, ServerConfig{Auth: auth, StagingDir: b.TempDir(), Restorer: RestorerFunc(
			func(_ context.Context, job *Job) (RestoreInfo, error) {
				return RestoreInfo{Paths: []string{job.As}}, job.Ready(RestoreInfo{})
			})})
	}()
	defer func() { cancel(); <-done }()
	b.SetBytes(size)
	b.ResetTimer()
	for b.Loop() {
		_, _, err := Migrate(context.Background(), ln.Addr().String(), auth, Migration{
			Request: Request{Root: "/a"},
			Prepare: func(context.Context) (int64, error) { return size, nil },
			Body: func(ctx context.Context, w io.Writer) error {
				m := &images.Manifest{Root: "/a", Containers: []images.Container{{Path: "/", Dir: "checkpoint"}}}
				_, err := images.WriteArchive(ctx, w, src, m, images.WriteOptions{Compression: images.CompressionNone})
				return err
			},
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}

// TestCommitOutOfOrder: a COMMIT that comes while the restore is running
// but before READY, or one with a payload, is refused with a reason that
// says which (the receiver once said "COMMIT frame, expected COMMIT"),
// and the restored tree is killed, never resumed.
func TestCommitOutOfOrder(t *testing.T) {
	auth := tokenAuth(t)
	for _, tc := range []struct {
		name    string
		ready   bool
		payload []byte
		want    string
	}{
		{"before ready", false, nil, "protocol violation: COMMIT frame before READY"},
		{"with payload", true, []byte("xy"), "protocol violation: COMMIT frame with a 2-byte payload, expected none"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			block := make(chan struct{})
			started := make(chan struct{})
			r := &fakeRestorer{started: started, block: block}
			ts := startServer(t, ServerConfig{Auth: auth}, r)
			valid := newSource(t).archive(t)
			cl := rawClient(t, ts.addr, auth)
			cl.begin(t, Request{Root: "/a"}, 16<<20)
			cl.sendData(valid, true)
			<-started
			if tc.ready {
				close(block)
				if ft, _, err := cl.fc.recv(maxControl, time.Now().Add(5*time.Second)); err != nil || ft != msgReady {
					t.Fatalf("got %v %v, want READY", ft, err)
				}
			}
			cl.fc.send(msgCommit, tc.payload)
			reason := cl.serverError()
			if !tc.ready {
				close(block)
			}
			cl.tc.Close()
			if !strings.HasSuffix(reason, tc.want) {
				t.Errorf("client told %q, want it to end in %q", reason, tc.want)
			}
			if _, resumed, _, _ := r.snapshot(); resumed {
				t.Error("the restored tree was resumed")
			}
			ts.log.waitLines(t, 1)
			ts.assertClean(t)
		})
	}
}
