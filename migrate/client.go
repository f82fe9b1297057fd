package migrate

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Migration is what Migrate sends and the hooks it calls, in this order.
type Migration struct {
	// Request is sent once authentication succeeded; the receiver accepts
	// or rejects it before the source is touched.
	Request Request
	// Prepare runs once the receiver accepted the request: the caller
	// freezes and dumps the source here. It returns an upper bound of the
	// bytes the image's files hold once extracted. If it fails, Migrate
	// sends ABORT and returns its error unchanged.
	Prepare func(ctx context.Context) (size int64, err error)
	// Body writes the image archive to w. The receiver extracts it while it
	// arrives. If Body fails, Migrate sends ABORT and returns the error.
	Body func(ctx context.Context, w io.Writer) error
	// PreCopy, if set, runs when the receiver took the request's offer of
	// a pre-copy (Request.PreCopy), before Prepare: the caller sends the
	// file systems of the running source with send, the lowers in want
	// (those of Request.SendLowers the receiver lacks) and the uppers. If
	// it fails, Migrate sends ABORT and returns its error: the source was
	// not touched.
	PreCopy func(ctx context.Context, want []string, send SendLayer) error
	// OnReady, if set, runs when the receiver restored the tree and waits,
	// its tasks not yet resumed. An error aborts the migration (the
	// receiver kills what it restored); nil lets Migrate send COMMIT.
	OnReady func(info RestoreInfo) error
	// Pages (lazy migrations, required then) returns, once Prepare is
	// done, the sockets of the dump's page servers by manifest container
	// index. Migrate carries them to the receiver's lazy-pages daemons
	// until it returns, then closes them.
	Pages func() map[int]*os.File
	// OnResumed (lazy), if set, runs when the receiver reports the tree
	// running (DONE), while its memory still follows.
	OnResumed func(info RestoreInfo)
	// HandshakeTimeout bounds connecting, TLS, authentication and the
	// answer to the request (default 30s).
	HandshakeTimeout time.Duration
}

// DefaultClientHandshakeTimeout is the default Migration.HandshakeTimeout.
const DefaultClientHandshakeTimeout = 30 * time.Second

// Bounds on the idle timeout a receiver announces.
const (
	minIdle = 200 * time.Millisecond
	maxIdle = 24 * time.Hour
)

// Migrate sends a migration to the receiver at addr (HOST or HOST:PORT, port
// 7400 by default) and returns the receiver's report of the restored tree.
//
// The phases: connect and authenticate (a failure returns an error wrapping
// ErrAuth, before the source is touched); send the Request (a refusal wraps
// ErrRejected); Prepare; declare the size (a refusal wraps ErrRejected);
// stream Body; wait for READY; OnReady; send COMMIT; wait for DONE.
//
// Any error returned before COMMIT was sent means the receiver runs nothing
// of the tree: the caller resumes the source. A failure reported by the
// receiver wraps ErrRemote. After COMMIT, only DONE means success; a
// receiver's error wraps ErrRemote (the receiver killed what it restored),
// and a lost connection, a timeout or a cancelled ctx return an error
// wrapping ErrInDoubt: the tree may run at the destination, so the caller
// must neither resume nor remove the source.
func Migrate(ctx context.Context, addr string, auth Auth, mig Migration) (RestoreInfo, ClientStats, error) {
	start := time.Now()
	cl := &client{mig: mig}
	info, err := cl.run(ctx, addr, auth)
	cl.stats.Elapsed = time.Since(start)
	if cl.counter != nil {
		cl.stats.BytesSent = cl.counter.bytesWritten()
	}
	if cl.mux != nil {
		cl.stats.PageBytes = cl.mux.out.Load()
	}
	return info, cl.stats, err
}

type client struct {
	mig     Migration
	mux     *pageMux // lazy
	fc      *frameConn
	tc      *tls.Conn
	counter *countConn
	idle    time.Duration
	stats   ClientStats
}

// withPort adds the default port to an address without one.
func withPort(addr string) string {
	if _, _, err := net.SplitHostPort(addr); err == nil {
		return addr
	}
	return net.JoinHostPort(strings.Trim(addr, "[]"), DefaultPort)
}

func (cl *client) run(ctx context.Context, addr string, auth Auth) (RestoreInfo, error) {
	mig := cl.mig
	if mig.Prepare == nil || mig.Body == nil {
		return RestoreInfo{}, errors.New("migrate: Prepare and Body are required")
	}
	if mig.Request.Lazy && mig.Pages == nil {
		return RestoreInfo{}, errors.New("migrate: a lazy migration needs Pages")
	}
	creds, err := auth.load()
	if err != nil {
		return RestoreInfo{}, err
	}
	hs := mig.HandshakeTimeout
	if hs <= 0 {
		hs = DefaultClientHandshakeTimeout
	}
	addr = withPort(addr)
	deadline := time.Now().Add(hs)
	d := net.Dialer{Deadline: deadline}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return RestoreInfo{}, fmt.Errorf("connect to %s: %w", addr, err)
	}
	defer nc.Close()
	cl.counter = &countConn{Conn: nc}
	cl.tc = tls.Client(cl.counter, creds.clientTLS(splitHost(addr)))
	cl.fc = newFrameConn(cl.tc)
	cl.fc.writeTTL = hs
	stop := context.AfterFunc(ctx, cl.fc.kill)
	defer stop()
	cl.fc.setDeadline(deadline)

	if err := cl.tc.HandshakeContext(ctx); err != nil {
		if ctx.Err() == nil && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)) {
			// cr serve drops a connection still in its TLS handshake when
			// too many connections are authenticating.
			err = fmt.Errorf("the receiver closed the connection during the TLS handshake (%v): it may be busy with other connections, or not be cr serve", err)
		}
		return RestoreInfo{}, cl.connError("connect to "+addr, ctx, err)
	}
	if err := cl.authenticate(ctx, creds, deadline); err != nil {
		return RestoreInfo{}, err
	}

	// The request, before the source is touched.
	if err := cl.fc.sendJSON(msgRequest, mig.Request); err != nil {
		return RestoreInfo{}, cl.connError("send request", ctx, err)
	}
	var acc acceptMsg
	if err := cl.expectAccept(ctx, time.Now().Add(hs), &acc); err != nil {
		return RestoreInfo{}, err
	}
	cl.idle = min(max(time.Duration(acc.IdleMillis)*time.Millisecond, minIdle), maxIdle)
	if acc.IdleMillis <= 0 {
		cl.idle = DefaultIdleTimeout
	}
	cl.fc.writeTTL = cl.idle
	stopPing := startPinger(cl.fc, cl.idle/4)
	defer stopPing()

	// The file systems, while the source runs.
	if err := cl.preCopy(ctx, acc); err != nil {
		cl.abort(err)
		return RestoreInfo{}, err
	}

	// Prepare: the caller freezes and dumps the source.
	t0 := time.Now()
	size, err := mig.Prepare(ctx)
	cl.stats.Prepare = time.Since(t0)
	if err == nil && size <= 0 {
		err = fmt.Errorf("prepare: invalid image size %d", size)
	}
	if err != nil {
		cl.abort(err)
		return RestoreInfo{}, err
	}
	if err := cl.fc.sendJSON(msgBegin, beginMsg{Size: size}); err != nil {
		return RestoreInfo{}, cl.connError("send BEGIN", ctx, err)
	}
	if err := cl.expectAccept(ctx, time.Now().Add(cl.idle), &acc); err != nil {
		return RestoreInfo{}, err
	}
	if mig.Request.Lazy {
		cl.mux = newPageMux(cl.fc)
		defer cl.mux.close()
		for i, conn := range mig.Pages() {
			cl.mux.attach(uint16(i), conn)
		}
	}

	// Stream the archive while a goroutine watches for the receiver's
	// frames: an ERROR stops the stream at once.
	frames, stopReader := cl.startReader()
	defer stopReader()
	t0 = time.Now()
	dw := &dataWriter{f: cl.fc}
	bw := bufio.NewWriterSize(dw, 256<<10)
	err = mig.Body(ctx, bw)
	if err == nil {
		err = bw.Flush()
	}
	cl.stats.ArchiveBytes = dw.n
	if err != nil {
		if ctx.Err() != nil {
			return RestoreInfo{}, fmt.Errorf("send image: %w", context.Cause(ctx))
		}
		if dw.err == nil {
			// The body failed here: tell the receiver.
			cl.abort(err)
			return RestoreInfo{}, err
		}
		// The connection failed: the receiver may have said why.
		select {
		case f := <-frames:
			if f.err == nil && f.t == msgError {
				return RestoreInfo{}, cl.remoteError(f.p, false)
			}
		case <-time.After(cl.idle):
		}
		return RestoreInfo{}, fmt.Errorf("send image: %w", dw.err)
	}
	if err := cl.fc.sendJSON(msgEnd, endMsg{Bytes: dw.n}); err != nil {
		return RestoreInfo{}, cl.connError("send END", ctx, err)
	}
	cl.stats.Transfer = time.Since(t0)

	// READY: the tree is restored at the destination, not resumed.
	t0 = time.Now()
	var info RestoreInfo
	if err := cl.await(ctx, frames, msgReady, &info, false); err != nil {
		return RestoreInfo{}, err
	}
	cl.stats.Restore = time.Since(t0)
	if mig.OnReady != nil {
		if err := mig.OnReady(info); err != nil {
			cl.abort(err)
			return RestoreInfo{}, err
		}
	}
	if cl.mux == nil {
		// Lazy: the page conversation goes on until COMPLETE, and
		// the receiver reads PINGs meanwhile.
		stopPing()
	}

	// COMMIT: from here on, only DONE (lazy: COMPLETE) tells where the
	// tree runs.
	t0 = time.Now()
	// A failed write may still have delivered COMMIT, and the receiver
	// may have reported its outcome already: only its answer decides.
	cl.fc.send(msgCommit, nil)
	info = RestoreInfo{}
	if err := cl.await(ctx, frames, msgDone, &info, true); err != nil {
		return RestoreInfo{}, err
	}
	cl.stats.Commit = time.Since(t0)
	if cl.mux == nil {
		return info, nil
	}
	// Lazy: the tree runs at the receiver, its memory follows. An ERROR
	// now means the receiver killed the tree (ErrRemote): the source
	// may run again.
	if mig.OnResumed != nil {
		mig.OnResumed(info)
	}
	t0 = time.Now()
	var comp completeMsg
	if err := cl.await(ctx, frames, msgComplete, &comp, true); err != nil {
		return RestoreInfo{}, err
	}
	cl.stats.Pages = time.Since(t0)
	return info, nil
}

// authenticate runs the client's side of HELLO, CHALLENGE, AUTH, AUTH_OK.
func (cl *client) authenticate(ctx context.Context, creds *credentials, deadline time.Time) error {
	hello := helloMsg{Proto: ProtocolVersion, Mode: creds.mode}
	var ekm []byte
	if creds.mode == modeToken {
		var err error
		if ekm, err = channelBinding(cl.tc.ConnectionState()); err != nil {
			return err
		}
		if hello.Nonce, err = newNonce(); err != nil {
			return err
		}
	}
	if err := cl.fc.sendJSON(msgHello, hello); err != nil {
		return cl.connError("authenticate", ctx, err)
	}
	var mac macMsg
	if creds.mode == modeToken {
		var ch challengeMsg
		if err := cl.recvAuth(ctx, deadline, msgChallenge, &ch); err != nil {
			return err
		}
		if len(ch.Nonce) != nonceLen {
			return fmt.Errorf("authenticate: %w", protocolErrorf("CHALLENGE nonce of %d bytes", len(ch.Nonce)))
		}
		proof := tokenMAC(creds.token, macClient, ekm, hello.Nonce, ch.Nonce)
		if err := cl.fc.sendJSON(msgAuth, macMsg{MAC: proof}); err != nil {
			return cl.connError("authenticate", ctx, err)
		}
		if err := cl.recvAuth(ctx, deadline, msgAuthOK, &mac); err != nil {
			return err
		}
		want := tokenMAC(creds.token, macServer, ekm, hello.Nonce, ch.Nonce)
		if !hmac.Equal(mac.MAC, want) {
			return fmt.Errorf("%w: the server does not know the token", ErrAuth)
		}
		return nil
	}
	return cl.recvAuth(ctx, deadline, msgAuthOK, &mac)
}

// recvAuth reads a frame of type want during authentication; ERROR is the
// server refusing us.
func (cl *client) recvAuth(ctx context.Context, deadline time.Time, want msgType, v any) error {
	t, p, err := cl.fc.recv(maxPreAuth, deadline)
	if err != nil {
		return cl.connError("authenticate", ctx, err)
	}
	switch t {
	case want:
		if err := decode(t, p, v); err != nil {
			return fmt.Errorf("authenticate: %w", err)
		}
		return nil
	case msgError:
		var m reasonMsg
		if err := decode(t, p, &m); err != nil {
			return fmt.Errorf("authenticate: %w", err)
		}
		if m.Reason == ErrAuth.Error() {
			return fmt.Errorf("%w: the server refused our credentials", ErrAuth)
		}
		return &RemoteError{Kind: ErrRejected, Reason: sanitize(m.Reason), Code: m.Code}
	default:
		return fmt.Errorf("authenticate: %w", protocolErrorf("%s frame, expected %s", t, want))
	}
}

// connError describes a failed read or write: the context's cancellation,
// a TLS certificate problem (ErrAuth), or the I/O error.
func (cl *client) connError(what string, ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %w", what, context.Cause(ctx))
	}
	if isCertError(err) {
		return fmt.Errorf("%w: %v", ErrAuth, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// isCertError reports whether err is a certificate that failed
// verification, here or at the peer (a TLS alert).
func isCertError(err error) bool {
	var ve *tls.CertificateVerificationError
	if errors.As(err, &ve) {
		return true
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "remote error" && oe.Err != nil {
		s := oe.Err.Error()
		return strings.Contains(s, "certificate") || strings.Contains(s, "access denied")
	}
	return false
}

// expectAccept reads the answer to REQUEST or BEGIN.
func (cl *client) expectAccept(ctx context.Context, deadline time.Time, acc *acceptMsg) error {
	for {
		t, p, err := cl.fc.recv(maxControl, deadline)
		if err != nil {
			return cl.connError("wait for answer", ctx, err)
		}
		switch t {
		case msgPing:
			continue
		case msgAccept:
			return decode(t, p, acc)
		case msgReject:
			var m reasonMsg
			if err := decode(t, p, &m); err != nil {
				return err
			}
			return &RemoteError{Kind: ErrRejected, Reason: sanitize(m.Reason), Code: m.Code}
		case msgError:
			return cl.remoteError(p, false)
		default:
			return protocolErrorf("%s frame, expected ACCEPT", t)
		}
	}
}

// remoteError turns an ERROR payload into a *RemoteError.
func (cl *client) remoteError(p []byte, committed bool) error {
	var m reasonMsg
	if err := decode(msgError, p, &m); err != nil {
		if committed {
			return fmt.Errorf("%w: %v", ErrInDoubt, err)
		}
		return err
	}
	kind := ErrRemote
	if m.InDoubt {
		kind = ErrInDoubt
	}
	return &RemoteError{Kind: kind, Reason: sanitize(m.Reason)}
}

// abort tells the receiver why the sender gives up; best effort.
func (cl *client) abort(err error) {
	cl.fc.sendJSON(msgAbort, reasonMsg{Reason: sanitize(err.Error())})
}

// startReader reads the receiver's frames in a goroutine, dropping PINGs,
// until an error, ERROR or DONE. On ERROR it makes pending writes fail, so
// that a Body blocked on a receiver that gave up returns.
func (cl *client) startReader() (<-chan frame, func()) {
	frames := make(chan frame, 4)
	quit := make(chan struct{})
	limit, last := uint32(maxControl), msgDone
	if cl.mux != nil {
		limit, last = maxData, msgComplete
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			t, p, err := cl.fc.recv(limit, time.Now().Add(cl.idle))
			if err == nil && t == msgPing {
				if err = expectEmpty(t, p); err == nil {
					continue
				}
			}
			if err == nil && t == msgPages && cl.mux != nil {
				if err = cl.mux.deliver(p); err == nil {
					continue
				}
			}
			select {
			case frames <- frame{t: t, p: append([]byte(nil), p...), err: err}:
			case <-quit:
				return
			}
			if err != nil || t == last || t == msgError {
				if t == msgError {
					cl.fc.killWrites()
				}
				return
			}
		}
	}()
	return frames, func() {
		close(quit)
		cl.fc.kill()
		wg.Wait()
	}
}

// await waits for a frame of type want (READY or DONE) and decodes it into
// v. Once committed, every failure but the receiver's own report is
// ErrInDoubt.
func (cl *client) await(ctx context.Context, frames <-chan frame, want msgType, v any, committed bool) error {
	inDoubt := func(err error) error {
		if committed {
			return fmt.Errorf("%w: %v", ErrInDoubt, err)
		}
		return err
	}
	var f frame
	select {
	case f = <-frames:
	case <-ctx.Done():
		// An answer that arrived meanwhile still counts.
		select {
		case f = <-frames:
		default:
			return inDoubt(fmt.Errorf("wait for %s: %w", want, context.Cause(ctx)))
		}
	}
	switch {
	case f.err != nil:
		if ctx.Err() != nil {
			return inDoubt(fmt.Errorf("wait for %s: %w", want, context.Cause(ctx)))
		}
		return inDoubt(fmt.Errorf("wait for %s: %w", want, f.err))
	case f.t == want:
		if err := decode(f.t, f.p, v); err != nil {
			return inDoubt(err)
		}
		return nil
	case f.t == msgError:
		return cl.remoteError(f.p, committed)
	default:
		return inDoubt(protocolErrorf("%s frame, expected %s", f.t, want))
	}
}
